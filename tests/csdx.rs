//! The official Contentstack CLI (`csdx`, npm `@contentstack/cli`) through the gateway:
//! a full `csdx cm:stacks:export` of the demo backend, with a management token, over a
//! TLS listener (csdx speaks HTTPS only) reached through a custom region whose host
//! name resolves to 127.0.0.1. `scripts/test.sh` installs the CLI under `target/csdx`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use stackgate::clock::SystemClock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The installed CLI, or `None` (a failure unless skipping is allowed).
fn csdx() -> Option<PathBuf> {
    let dir = std::env::var_os("STACKGATE_CSDX_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/csdx"));
    let bin = dir.join("node_modules/.bin/csdx");
    if let Ok(bin) = std::fs::canonicalize(&bin) {
        return Some(bin);
    }
    assert!(
        std::env::var_os("STACKGATE_ALLOW_SKIP").is_some(),
        "csdx is not installed under {}: run `bash scripts/test.sh` (or set STACKGATE_ALLOW_SKIP=1)",
        dir.display()
    );
    eprintln!("skipped: csdx is not installed");
    None
}

/// Runs csdx with a private home and the test CA; returns (success, output).
async fn run(bin: &Path, home: &Path, ca: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("NODE_EXTRA_CA_CERTS", ca)
        .env("CI", "true")
        .current_dir(home)
        .stdin(std::process::Stdio::null());
    // Bounded: a backend that never ends a list would make the export page forever.
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = match tokio::time::timeout(std::time::Duration::from_secs(180), wait).await {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            panic!("csdx {args:?} did not finish within 180 s");
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("csdx {args:?}: {}\n{text}", out.status);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csdx_exports_the_demo_stack_through_a_tls_gateway() {
    let Some(bin) = csdx() else { return };
    let dir = temp_dir("csdx");
    let TestPki { ca, cert, key, .. } = test_pki(&dir);
    let demo = stackgate::demo::backend::spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", cert.display(), key.display());
    // csdx puts a custom region's host in front of `:443` itself: the gateway must
    // listen on 443 (tests run as root in CI; the suite binds it nowhere else).
    let text = config_text(demo.addr, &tls, "").replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:443\"", 1);
    let cfg = stackgate::config::from_str(&text).unwrap();
    let _gateway =
        stackgate::server::start(cfg, Arc::new(SystemClock)).await.expect("binding 127.0.0.1:443 (run as root)");
    let url = "https://localhost".to_owned();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (ok, out) = run(
        &bin,
        &home,
        &ca,
        &["config:set:region", "--cma", &url, "--cda", &url, "--ui-host", &url, "--name", "stackgate"],
    )
    .await;
    assert!(ok, "set region: {out}");
    let (ok, out) =
        run(&bin, &home, &ca, &["auth:tokens:add", "--management", "-a", "gw", "-k", API_KEY, "--token", RW, "-y"])
            .await;
    assert!(ok, "add token: {out}");
    let data = dir.join("export");
    let (ok, out) = run(
        &bin,
        &home,
        &ca,
        &["cm:stacks:export", "-a", "gw", "-d", data.to_str().unwrap(), "--branch", "main", "-y"],
    )
    .await;
    assert!(ok, "export: {out}");
    assert!(out.contains("has been exported successfully"), "{out}");
    let files: Vec<String> = walk(&data);
    assert!(files.iter().any(|f| f.contains("content_types")), "{files:?}\n{out}");
    let exported: String = files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    assert!(exported.contains("Hello, world") && exported.contains("blog_post"), "{files:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
