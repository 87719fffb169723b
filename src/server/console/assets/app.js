// stackgate token console. No framework, no build step: the gateway serves this file as
// it is. Everything the page shows that came from the API is put in with textContent,
// never as HTML. The authtoken lives in `authtoken` below and nowhere else (no URL, no
// storage, no cookie); a secret lives only in the one-time window's field until "Done".
'use strict';

(function () {
  const TOKENS = 'api/v3/stacks/management_tokens';
  const DAY = 86400000;
  const WARN_DAYS = 7;

  /** The signed-in user's authtoken: in this variable only. */
  let authtoken = null;
  let user = null;
  let stacks = [];
  let stack = null;
  let tokens = [];
  /** The token being edited (null: a new one). */
  let editing = null;
  // The body the edit form showed when it opened: on save only the fields that differ
  // from it are sent, so what the form cannot show (an expiry instant, a branch entry's
  // acl) is kept as stored.
  let opened = null;
  /** Where focus returns when a dialog closes. */
  let returnFocus = null;
  let confirmAction = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // ---- API ---------------------------------------------------------------------------

  /** One call to the console's API; the answer's JSON (or {}) with its status. */
  async function api(method, path, apiKey, body) {
    const headers = { Accept: 'application/json', authtoken: authtoken };
    if (apiKey) headers.api_key = apiKey;
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      return { ok: false, status: 0, data: { error_message: 'The gateway could not be reached.' } };
    }
    let data = {};
    try {
      data = await resp.json();
    } catch (e) {
      data = {};
    }
    return { ok: resp.ok, status: resp.status, data: data || {} };
  }

  function message(res) {
    return (res.data && res.data.error_message) || ('The request failed (HTTP ' + res.status + ').');
  }

  // ---- views -------------------------------------------------------------------------

  function show(view) {
    for (const id of ['view-signin', 'view-stacks', 'view-tokens']) $(id).hidden = id !== view;
    const signedIn = authtoken !== null;
    $('sign-out').hidden = !signedIn;
    $('who').hidden = !signedIn;
    const heading = $(view).querySelector('h1');
    if (heading) {
      heading.tabIndex = -1;
      heading.focus();
    }
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  async function signIn(ev) {
    ev.preventDefault();
    const input = $('authtoken');
    const err = $('err-authtoken');
    err.textContent = '';
    input.removeAttribute('aria-invalid');
    if (!input.value) {
      err.textContent = 'Enter your authtoken.';
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    authtoken = input.value;
    input.value = '';
    const res = await api('GET', 'api/stacks');
    if (!res.ok) {
      authtoken = null;
      err.textContent = message(res);
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    user = res.data.user;
    stacks = res.data.stacks || [];
    $('who').textContent = 'Signed in as ' + (user.email || user.uid);
    renderStacks();
    show('view-stacks');
  }

  function signOut() {
    authtoken = null;
    user = null;
    stacks = [];
    stack = null;
    tokens = [];
    $('stack-list').replaceChildren();
    $('token-rows').replaceChildren();
    notice('');
    show('view-signin');
    $('authtoken').focus();
  }

  function renderStacks() {
    const list = $('stack-list');
    list.replaceChildren();
    for (const s of stacks) {
      const role = s.role.replace('_', ' ');
      const button = el('button', { type: 'button', class: 'stack-card', 'data-api-key': s.api_key },
        el('span', { class: 'stack-name', text: s.name || s.api_key }),
        el('span', { class: 'muted mono', text: s.api_key }),
        el('span', { class: 'badge' + (s.manages_tokens ? ' badge-ok' : ''), text: role }),
        s.manages_tokens ? null : el('span', { class: 'muted', text: 'Only owners and admins manage tokens.' }));
      button.addEventListener('click', () => openStack(s));
      list.append(el('li', {}, button));
    }
    $('stacks-empty').hidden = stacks.length > 0;
  }

  async function openStack(s) {
    stack = s;
    notice('');
    $('tokens-title').textContent = 'Management Tokens · ' + (s.name || s.api_key);
    show('view-tokens');
    await loadTokens();
  }

  async function loadTokens() {
    const res = await api('GET', TOKENS, stack.api_key);
    const box = $('tokens-error');
    if (!res.ok) {
      tokens = [];
      box.textContent = message(res);
      box.hidden = false;
      $('new-token').disabled = true;
      $('token-table').hidden = true;
      $('tokens-empty').hidden = true;
      $('tokens-summary').textContent = '';
      return;
    }
    box.hidden = true;
    $('new-token').disabled = false;
    // Oldest first (config tokens have no creation time), ties by name: a stable order.
    tokens = (res.data.tokens || []).sort((a, b) =>
      (a.created_at || '').localeCompare(b.created_at || '') || a.name.localeCompare(b.name));
    renderTokens();
  }

  // ---- the token list ----------------------------------------------------------------

  function expiryTime(expires) {
    if (!expires) return null;
    const t = Date.parse(/^\d{4}-\d{2}-\d{2}$/.test(expires) ? expires + 'T00:00:00Z' : expires);
    return Number.isNaN(t) ? null : t;
  }

  function scopeParts(t) {
    const modules = [];
    let read = false;
    let write = false;
    let branches = [];
    let aliases = [];
    for (const e of t.scope || []) {
      if (e.module === 'branch') branches = branches.concat(e.branches || []);
      else if (e.module === 'branch_alias') aliases = aliases.concat(e.branch_aliases || []);
      else {
        modules.push(e.module);
        read = read || !!(e.acl && e.acl.read);
        write = write || !!(e.acl && e.acl.write);
      }
    }
    return { modules, read, write, branches, aliases, all: branches.includes('$all') };
  }

  /** A table cell whose content is one block (on narrow screens it sits beside its label). */
  function cell(label, ...children) {
    return el('td', { 'data-label': label }, el('div', { class: 'cell' }, ...children));
  }

  function renderTokens() {
    const rows = $('token-rows');
    rows.replaceChildren();
    const max = stack.organization.max_tokens_per_stack;
    $('tokens-summary').textContent = tokens.length + ' of ' + max + ' tokens used';
    $('token-table').hidden = tokens.length === 0;
    $('tokens-empty').hidden = tokens.length > 0;
    const now = Date.now();
    for (const t of tokens) {
      const sp = scopeParts(t);
      const access = [sp.read ? 'Read' : null, sp.write ? 'Write' : null].filter(Boolean).join(' + ') || 'No access';
      const scope = el('div', {},
        el('div', { text: sp.all ? 'All Branches' : 'Specific branches' }),
        sp.all || !sp.branches.length ? null : el('div', { class: 'muted', text: 'Branches: ' + sp.branches.join(', ') }),
        sp.aliases.length ? el('div', { class: 'muted', text: 'Aliases: ' + sp.aliases.join(', ') }) : null,
        el('div', {}, el('span', { class: 'badge' + (sp.write ? ' badge-warn' : ''), text: access }),
          sp.modules.length === 1 && sp.modules[0] === '$all' ? null
            : el('span', { class: 'muted', text: ' modules: ' + sp.modules.join(', ') })));

      const at = expiryTime(t.expires_on);
      const expiry = el('div', {});
      if (!t.expires_on) {
        expiry.append(el('div', { text: 'Never' }));
      } else {
        expiry.append(el('div', { text: t.expires_on }));
        const days = at === null ? null : Math.ceil((at - now) / DAY);
        if (days !== null && days <= 0) expiry.append(el('span', { class: 'badge badge-bad', text: 'Expired' }));
        else if (days !== null) {
          expiry.append(el('div', { class: 'muted', text: days + (days === 1 ? ' day left' : ' days left') }));
          if (days <= WARN_DAYS) expiry.append(el('span', { class: 'badge badge-warn', text: 'Expires soon' }));
        }
        if (t.is_email_notification_enabled) expiry.append(el('div', { class: 'muted', text: 'Email notice 7 days before' }));
      }

      const org = stack.organization;
      const rates = t.rate_limit
        ? t.rate_limit.read_per_second + ' read / ' + t.rate_limit.write_per_second + ' write per second'
        : "Organization's (" + org.read_per_second + ' read / ' + org.write_per_second + ' write per second)';

      const u = t.usage || {};
      const usage = el('div', {},
        el('div', { text: u.last_used_at ? 'Last used ' + u.last_used_at.replace('T', ' ').replace('Z', ' UTC') : 'Never used' }),
        el('div', { class: 'muted', text: (u.forwarded || 0) + ' forwarded · ' + (u.refused || 0) + ' refused · ' + (u.rate_limited || 0) + ' rate-limited' }));

      const status = el('div', {},
        el('span', { class: 'badge ' + (t.enabled === false ? 'badge-bad' : 'badge-ok'), text: t.enabled === false ? 'Suspended' : 'Enabled' }),
        t.origin === 'config' ? el('div', { class: 'muted', text: 'From the config file' }) : null,
        t.previous_token_expires_at ? el('div', { class: 'muted', text: 'Old token works until ' + t.previous_token_expires_at }) : null);

      const actions = el('div', { class: 'actions' });
      if (t.origin !== 'config') {
        const label = (verb) => verb + ' ' + t.name;
        const add = (text, cls, fn) => {
          const b = el('button', { type: 'button', class: 'btn btn-small ' + cls, 'aria-label': label(text), 'data-action': text.toLowerCase(), text });
          b.addEventListener('click', (ev) => { returnFocus = ev.currentTarget; fn(t); });
          actions.append(b);
        };
        add('Edit', '', openEdit);
        add(t.enabled === false ? 'Resume' : 'Suspend', '', toggleEnabled);
        add('Regenerate', '', askRegenerate);
        add('Delete', 'btn-danger-ghost', askDelete);
      }

      rows.append(el('tr', { 'data-uid': t.uid },
        cell('Name', el('strong', { text: t.name }), t.description ? el('div', { class: 'muted', text: t.description }) : null,
          el('div', { class: 'muted mono small', text: t.uid })),
        cell('Scope', scope),
        cell('Expiry', expiry),
        cell('Rate limits', rates),
        cell('Usage', usage),
        cell('Status', status),
        cell('Actions', actions)));
    }
  }

  // ---- the create / edit form --------------------------------------------------------

  const FIELDS = ['name', 'description', 'scope', 'permissions', 'expiry', 'rates'];
  const FIELD_INPUT = {
    name: 'f-name', description: 'f-description', scope: 'f-scope-some', permissions: 'f-read',
    expiry: 'f-expires-on', rates: 'f-rate-read',
  };

  /** Which form field an API error key belongs to (null: the form as a whole). */
  function fieldOf(key) {
    const k = key.replace(/^token\./, '');
    if (/^name\b/.test(k)) return 'name';
    if (/^description\b/.test(k)) return 'description';
    if (/^scope/.test(k)) return /acl|module/.test(k) ? 'permissions' : 'scope';
    if (/^(expires_on|is_email_notification_enabled)\b/.test(k)) return 'expiry';
    if (/^rate_limit/.test(k)) return 'rates';
    return null;
  }

  function clearErrors() {
    for (const f of FIELDS) {
      $('err-' + f).textContent = '';
      $(FIELD_INPUT[f]).removeAttribute('aria-invalid');
    }
    $('err-form').textContent = '';
    $('err-form').hidden = true;
  }

  function fieldError(field, text) {
    const p = $('err-' + field);
    p.textContent = p.textContent ? p.textContent + ' ' + text : text;
    $(FIELD_INPUT[field]).setAttribute('aria-invalid', 'true');
  }

  function formError(text) {
    const box = $('err-form');
    box.textContent = box.textContent ? box.textContent + ' ' + text : text;
    box.hidden = false;
  }

  /** The words a message from the API starts with ("is required." -> "Name is required."). */
  function subject(key) {
    const k = key.replace(/^token\./, '');
    const names = [
      [/^name$/, 'Name'], [/^description$/, 'Description'], [/^expires_on$/, 'Expiry date'],
      [/^is_email_notification_enabled$/, 'Email notice'], [/read_per_second$/, 'Read requests per second'],
      [/write_per_second$/, 'Write requests per second'], [/^rate_limit$/, 'Rate limits'],
      [/branch_aliases$/, 'Aliases'], [/branches$/, 'Branches'], [/acl/, 'Permissions'],
    ];
    for (const [re, name] of names) if (re.test(k)) return name + ' ';
    return '';
  }

  /** Shows the API's validation messages next to their fields; focuses the first. */
  function showApiErrors(res) {
    const errors = (res.data && res.data.errors) || {};
    const keys = Object.keys(errors);
    if (!keys.length) formError(message(res));
    let first = null;
    for (const key of keys) {
      const field = fieldOf(key);
      const text = (errors[key] || []).map((m) => subject(key) + m).join(' ');
      if (field) {
        fieldError(field, text);
        first = first || FIELD_INPUT[field];
      } else {
        formError(key === 'token' ? text : key + ' ' + text);
      }
    }
    if (!$('err-form').hidden) $('err-form').focus();
    else if (first) $(first).focus();
  }

  function syncForm() {
    const some = $('f-scope-some').checked;
    for (const box of $('scope-list').querySelectorAll('input')) box.disabled = !some;
    const dated = $('f-expiry-date').checked;
    $('f-expires-on').disabled = !dated;
    $('f-notify').disabled = !dated;
    if (!dated) $('f-notify').checked = false;
    $('expiry-kept').hidden = !dated || !$('expiry-kept').textContent;
    const custom = $('f-rate-custom').checked;
    $('f-rate-read').disabled = !custom;
    $('f-rate-write').disabled = !custom;
  }

  function fillScopeList(selectedBranches, selectedAliases) {
    const list = $('scope-list');
    list.replaceChildren();
    for (const b of stack.branches) {
      const id = 'f-branch-' + b;
      list.append(el('div', { class: 'choice' },
        el('input', { type: 'checkbox', id, name: 'branch', value: b, checked: selectedBranches.includes(b) }),
        el('label', { for: id, text: 'Branch ' + b })));
    }
    for (const [alias, target] of Object.entries(stack.aliases || {})) {
      const id = 'f-alias-' + alias;
      list.append(el('div', { class: 'choice' },
        el('input', { type: 'checkbox', id, name: 'alias', value: alias, checked: selectedAliases.includes(alias) }),
        el('label', { for: id, text: 'Alias ' + alias + ' (→ ' + target + ')' })));
    }
  }

  function openForm(t) {
    editing = t;
    const org = stack.organization;
    $('token-form').reset();
    $('expiry-kept').textContent = '';
    clearErrors();
    $('token-dialog-title').textContent = t ? 'Edit ' + t.name : 'New Management Token';
    $('token-submit').textContent = t ? 'Save' : 'Generate Token';
    $('f-rate-org-label').textContent = "Use the organization's limits (" + org.read_per_second + ' read / ' +
      org.write_per_second + ' write requests per second)';
    $('f-rate-read').max = org.read_per_second;
    $('f-rate-write').max = org.write_per_second;
    const sp = t ? scopeParts(t) : { branches: ['main'], aliases: [], read: true, write: false, all: false, modules: ['$all'] };
    fillScopeList(sp.all ? [] : sp.branches, sp.aliases);
    $(sp.all ? 'f-scope-all' : 'f-scope-some').checked = true;
    $('f-read').checked = sp.read;
    $('f-write').checked = sp.write;
    const finer = !(sp.modules.length === 1 && sp.modules[0] === '$all');
    $('f-read').disabled = finer;
    $('f-write').disabled = finer;
    $('err-permissions').textContent = finer ? 'This token grants modules ' + sp.modules.join(', ') +
      '; they are kept as they are (change them with the CLI).' : '';
    if (t) {
      $('f-name').value = t.name;
      $('f-description').value = t.description || '';
      if (t.expires_on) {
        $('f-expiry-date').checked = true;
        $('f-expires-on').value = t.expires_on.slice(0, 10);
      }
      const instant = t.expires_on && !/^\d{4}-\d{2}-\d{2}$/.test(t.expires_on);
      $('expiry-kept').textContent = instant ? 'Now ' + t.expires_on + ': kept unless you choose another date.' : '';
      $('f-notify').checked = !!t.is_email_notification_enabled;
      if (t.rate_limit) {
        $('f-rate-custom').checked = true;
        $('f-rate-read').value = t.rate_limit.read_per_second;
        $('f-rate-write').value = t.rate_limit.write_per_second;
      }
    } else {
      $('f-rate-read').value = org.read_per_second;
      $('f-rate-write').value = org.write_per_second;
    }
    syncForm();
    if (t && t.expires_on) $('f-notify').checked = !!t.is_email_notification_enabled;
    opened = t ? formBody().token : null;
    openDialog('token-dialog', 'f-name');
  }

  function openEdit(t) {
    openForm(t);
  }

  function numberOrRaw(value) {
    return /^\d+$/.test(value) ? Number(value) : value;
  }

  /** The request body in the API's shape, from the form. */
  function formBody() {
    const entries = [];
    const sp = editing ? scopeParts(editing) : null;
    if (sp && !(sp.modules.length === 1 && sp.modules[0] === '$all')) {
      for (const e of editing.scope) if (e.module !== 'branch' && e.module !== 'branch_alias') entries.push(e);
    } else {
      entries.push({ module: '$all', acl: { read: $('f-read').checked, write: $('f-write').checked } });
    }
    // A branch entry's acl is not read by the gateway, nor shown: an edit keeps the stored one.
    const keptAcl = (module) => {
      const stored = editing && editing.scope.find((e) => e.module === module);
      return (stored && stored.acl) || { read: true };
    };
    if ($('f-scope-all').checked) {
      entries.push({ module: 'branch', branches: ['$all'], acl: keptAcl('branch') });
    } else {
      const picked = (name) => Array.from($('scope-list').querySelectorAll('input[name="' + name + '"]:checked')).map((i) => i.value);
      const branches = picked('branch');
      const aliases = picked('alias');
      if (branches.length) entries.push({ module: 'branch', branches, acl: keptAcl('branch') });
      if (aliases.length) entries.push({ module: 'branch_alias', branch_aliases: aliases, acl: keptAcl('branch_alias') });
    }
    const dated = $('f-expiry-date').checked;
    return {
      token: {
        name: $('f-name').value.trim(),
        description: $('f-description').value,
        scope: entries,
        expires_on: dated ? $('f-expires-on').value : null,
        is_email_notification_enabled: dated && $('f-notify').checked,
        rate_limit: $('f-rate-custom').checked
          ? { read_per_second: numberOrRaw($('f-rate-read').value), write_per_second: numberOrRaw($('f-rate-write').value) }
          : null,
      },
    };
  }

  /** The fields of `now` whose value differs from `before`'s. */
  function changedFields(now, before) {
    const changed = {};
    for (const [key, value] of Object.entries(now)) {
      if (JSON.stringify(value) !== JSON.stringify(before[key])) changed[key] = value;
    }
    return changed;
  }

  async function submitForm(ev) {
    ev.preventDefault();
    clearErrors();
    if (!$('f-read').disabled && !$('f-read').checked && !$('f-write').checked) {
      fieldError('permissions', 'Choose Read, Write or both.');
      $('f-read').focus();
      return;
    }
    const body = editing ? { token: changedFields(formBody().token, opened) } : formBody();
    // The e-mail notice goes with the date it is for: the form shows a notice stored
    // without a date as off, and what it shows is what is saved with a new date.
    if (editing && 'expires_on' in body.token) {
      body.token.is_email_notification_enabled = formBody().token.is_email_notification_enabled;
    }
    if (editing && !Object.keys(body.token).length) {
      closeDialog('token-dialog');
      notice('Nothing changed.');
      return;
    }
    const submit = $('token-submit');
    submit.disabled = true;
    const res = editing
      ? await api('PUT', TOKENS + '/' + encodeURIComponent(editing.uid), stack.api_key, body)
      : await api('POST', TOKENS, stack.api_key, body);
    submit.disabled = false;
    if (!res.ok) {
      showApiErrors(res);
      return;
    }
    closeDialog('token-dialog');
    notice(res.data.notice || 'Saved.');
    if (!editing) showSecret(res.data.token);
    await loadTokens();
  }

  // ---- suspend, regenerate, delete ---------------------------------------------------

  async function toggleEnabled(t) {
    const res = await api('PUT', TOKENS + '/' + encodeURIComponent(t.uid), stack.api_key, { token: { enabled: t.enabled === false } });
    if (!res.ok) {
      const box = $('tokens-error');
      box.textContent = message(res);
      box.hidden = false;
      return;
    }
    notice((t.enabled === false ? 'Resumed ' : 'Suspended ') + t.name + '.');
    await loadTokens();
    const again = document.querySelector('tr[data-uid="' + t.uid + '"] button[data-action="' + (t.enabled === false ? 'suspend' : 'resume') + '"]');
    if (again) again.focus();
  }

  function ask(title, text, okText, action) {
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okText;
    $('confirm-error').hidden = true;
    confirmAction = action;
    openDialog('confirm-dialog', 'confirm-cancel');
  }

  function askRegenerate(t) {
    ask('Regenerate ' + t.name + '?', 'A new token is generated and shown once. The current token stops working at once.',
      'Regenerate', async () => {
        const res = await api('POST', TOKENS + '/' + encodeURIComponent(t.uid) + '/regenerate', stack.api_key);
        if (!res.ok) return res;
        notice(res.data.notice || 'Regenerated.');
        closeDialog('confirm-dialog', true);
        showSecret(res.data.token);
        await loadTokens();
        return null;
      });
  }

  function askDelete(t) {
    ask('Delete ' + t.name + '?', 'Everything using this token loses access at once. This cannot be undone.',
      'Delete', async () => {
        const res = await api('DELETE', TOKENS + '/' + encodeURIComponent(t.uid), stack.api_key);
        if (!res.ok) return res;
        notice(res.data.notice || 'Deleted.');
        returnFocus = $('new-token');
        closeDialog('confirm-dialog');
        await loadTokens();
        return null;
      });
  }

  async function confirmed() {
    if (!confirmAction) return;
    const ok = $('confirm-ok');
    ok.disabled = true;
    const failed = await confirmAction();
    ok.disabled = false;
    if (failed) {
      $('confirm-error').textContent = message(failed);
      $('confirm-error').hidden = false;
    } else {
      confirmAction = null;
    }
  }

  // ---- the one-time window -----------------------------------------------------------

  function showSecret(token) {
    $('secret-api-key').value = stack.api_key;
    $('secret-token').value = token.token;
    $('copy-status').textContent = '';
    openDialog('secret-dialog', 'secret-token');
    $('secret-token').select();
  }

  /** Forgets the secret: the field is emptied, so it is nowhere in the page. */
  function forgetSecret() {
    $('secret-token').value = '';
    $('secret-api-key').value = '';
    $('copy-status').textContent = '';
  }

  async function copy(ev) {
    const input = $(ev.currentTarget.getAttribute('data-copy'));
    const what = input.id === 'secret-token' ? 'Token' : 'API key';
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (e) {
      input.select();
      document.execCommand('copy');
    }
    $('copy-status').textContent = what + ' copied to the clipboard.';
  }

  // ---- dialogs -----------------------------------------------------------------------

  function openDialog(id, focusId) {
    const d = $(id);
    if (!returnFocus || !document.contains(returnFocus)) returnFocus = document.activeElement;
    if (!d.open) d.showModal();
    if (focusId) $(focusId).focus();
  }

  /** Closes a dialog; focus goes back where it came from (unless another dialog follows). */
  function closeDialog(id, keepFocusTarget) {
    const d = $(id);
    if (d.open) d.close();
    if (!keepFocusTarget) restoreFocus();
  }

  function restoreFocus() {
    const target = returnFocus && document.contains(returnFocus) ? returnFocus : $('main');
    returnFocus = null;
    if (target) target.focus();
  }

  function init() {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', signOut);
    $('back-to-stacks').addEventListener('click', () => { stack = null; notice(''); show('view-stacks'); });
    $('new-token').addEventListener('click', (ev) => { returnFocus = ev.currentTarget; openForm(null); });
    $('token-form').addEventListener('submit', submitForm);
    $('token-form').addEventListener('change', syncForm);
    $('token-form').addEventListener('input', (ev) => {
      const box = ev.target.closest('.field');
      const err = box && box.querySelector('.field-error');
      if (err && err.id !== 'err-permissions') err.textContent = '';
      ev.target.removeAttribute('aria-invalid');
    });
    for (const b of document.querySelectorAll('[data-close]')) {
      b.addEventListener('click', () => closeDialog(b.getAttribute('data-close')));
    }
    for (const b of document.querySelectorAll('[data-copy]')) b.addEventListener('click', copy);
    // However it closes (Done, Escape), the secret goes with it. The dialog's `close`
    // event is queued as a task, so Done and Escape forget it at once, before the
    // dialog reports itself closed; the close event covers any other way it closes.
    $('secret-done').addEventListener('click', () => { forgetSecret(); $('secret-dialog').close(); });
    $('secret-dialog').addEventListener('cancel', forgetSecret);
    $('secret-dialog').addEventListener('close', () => { forgetSecret(); restoreFocus(); });
    $('token-dialog').addEventListener('cancel', () => setTimeout(restoreFocus, 0));
    $('confirm-cancel').addEventListener('click', () => { confirmAction = null; closeDialog('confirm-dialog'); });
    $('confirm-dialog').addEventListener('cancel', () => { confirmAction = null; setTimeout(restoreFocus, 0); });
    $('confirm-ok').addEventListener('click', confirmed);
    $('err-form').tabIndex = -1;
    show('view-signin');
    $('authtoken').focus();
  }

  document.addEventListener('DOMContentLoaded', init);
})();
