#!/usr/bin/env python3
"""Prints which top-level modules of src/ import which (crate:: paths in non-test code)
and any import circle among them. Run from the repository root: python3 scripts/module_map.py"""
import os,re,collections,sys
root='src'
mods=set()
for f in os.listdir(root):
    if f.endswith('.rs') and f not in ('lib.rs','main.rs'): mods.add(f[:-3])
    elif os.path.isdir(os.path.join(root,f)): mods.add(f)
deps=collections.defaultdict(set)
for dp,dn,fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs') or f=='tests.rs' or f.endswith('_tests.rs'): continue
        path=os.path.join(dp,f)
        rel=os.path.relpath(path,root)
        top=rel.split('/')[0].replace('.rs','')
        if top in ('lib','main'): continue
        txt=open(path).read()
        # strip tests
        i=txt.find('#[cfg(test)]')
        if i>=0: txt=txt[:i]
        for m in re.findall(r'crate::([a-z_0-9]+)',txt):
            if m in mods and m!=top: deps[top].add(m)
for k in sorted(mods):
    print(k,'->',' '.join(sorted(deps[k])))
# find SCCs
import itertools
idx={};low={};st=[];on=set();res=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in deps[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v: break
        if len(comp)>1: res.append(comp)
for v in sorted(mods):
    if v not in idx: sc(v)
print("CYCLES:",res)
