//! `stackgate demo`: an embedded CMA-like backend with the gateway in front of it, on
//! loopback, with a freshly generated config and tokens.

pub mod backend;

use crate::clock::SystemClock;
use crate::token::{hash_secret, new_secret, new_uid};
use std::net::SocketAddr;
use std::sync::Arc;

/// The credentials a demo run generates.
#[derive(Debug, Clone)]
pub struct DemoSecrets {
    pub api_key: String,
    pub read_write: String,
    pub read_only: String,
    pub authtoken: String,
}

impl DemoSecrets {
    pub fn generate() -> std::io::Result<Self> {
        Ok(DemoSecrets {
            api_key: new_uid()?,
            read_write: new_secret()?,
            read_only: new_secret()?,
            // A user session, not a management token: it must not look like one (`cs...`),
            // or a reader of the banner would send it as `authorization`.
            authtoken: format!("demo-user-session-{}", new_secret()?.trim_start_matches("cs")),
        })
    }
}

/// The demo config: one organisation, one stack with `main` and `development`
/// (alias `deploy` -> `main`), owner `alice`, and two static tokens.
pub fn config_text(listen: SocketAddr, backend: SocketAddr, s: &DemoSecrets) -> String {
    let h = |secret: &str| hex::encode(hash_secret(secret.as_bytes()));
    format!(
        r#"[server]
listen = "{listen}"

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "http://{backend}"
connect_timeout = "2s"
request_timeout = "30s"
forward_token = false

[[organizations]]
uid = "org_demo"
read_per_second = 10
write_per_second = 10

[[users]]
uid = "alice"
email = "alice@example.com"
authtoken_sha256 = "{user}"

[[stacks]]
api_key = "{api_key}"
organization = "org_demo"
name = "Demo stack"
branches = ["main", "development"]
aliases = {{ deploy = "main" }}
members = {{ alice = "owner" }}

[[stacks.tokens]]
uid = "blt00000000000000a1"
name = "demo-read-write"
secret_sha256 = "{rw}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }},
         {{ module = "branch", branches = ["main", "development"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt00000000000000a2"
name = "demo-read-only"
secret_sha256 = "{ro}"
scope = [{{ module = "$all", acl = {{ read = true, write = false }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]
"#,
        user = h(&s.authtoken),
        api_key = s.api_key,
        rw = h(&s.read_write),
        ro = h(&s.read_only),
    )
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let backend = backend::spawn("127.0.0.1:0".parse()?).await?;
    let secrets = DemoSecrets::generate()?;
    let cfg = crate::config::from_str(&config_text(listen, backend.addr, &secrets))
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let running = crate::server::start(cfg, Arc::new(SystemClock))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e} (try --listen 127.0.0.1:0)"))?;
    print_banner(running.addr, running.admin_addr, backend.addr, &secrets);
    crate::server::shutdown_signal().await;
    Ok(())
}

fn print_banner(gw: SocketAddr, admin: SocketAddr, backend: SocketAddr, s: &DemoSecrets) {
    let base = format!("http://{gw}/v3");
    println!("stackgate listening on http://{gw}");
    println!("stackgate admin listening on http://{admin}");
    println!(
        r#"
stackgate demo
  gateway       http://{gw}   (demo backend at http://{backend})
  admin         http://{admin}   (/healthz /readyz /metrics)
  console       http://{admin}/console/   (sign in with the authtoken below)
  api_key       {api_key}
  read-write    {rw}
  read-only     {ro}
  authtoken     {auth}   (user alice, owner of the stack: manages tokens)

An allowed call (read-only token reading entries):
  curl -s {base}/content_types/blog_post/entries -H 'api_key: {api_key}' -H 'authorization: {ro}'

A denied call (read-only token creating an entry -> 403, error_code 162):
  curl -s -X POST {base}/content_types/blog_post/entries -H 'api_key: {api_key}' -H 'authorization: {ro}' \
       -H 'content-type: application/json' -d '{{"entry":{{"title":"Hello"}}}}'

The same call with the read-write token (allowed, 201):
  curl -s -X POST {base}/content_types/blog_post/entries -H 'api_key: {api_key}' -H 'authorization: {rw}' \
       -H 'content-type: application/json' -d '{{"entry":{{"title":"Hello"}}}}'

A call without a token (401, error_code 105):
  curl -s {base}/content_types -H 'api_key: {api_key}'

A module no management token may touch (403):
  curl -s {base}/stacks/settings -H 'api_key: {api_key}' -H 'authorization: {rw}'

Create a token through the token API (the secret is shown once):
  curl -s -X POST {base}/stacks/management_tokens -H 'api_key: {api_key}' -H 'authtoken: {auth}' \
       -H 'content-type: application/json' \
       -d '{{"token":{{"name":"ci","scope":[{{"module":"$all","acl":{{"read":true}}}},{{"module":"branch","branches":["main"]}}]}}}}'
or with the operator CLI:
  STACKGATE_AUTHTOKEN={auth} stackgate token --url http://{gw} --api-key {api_key} create --name ci --branch main

Press Ctrl-C to stop. The tokens are new on every run and live only in memory."#,
        api_key = s.api_key,
        rw = s.read_write,
        ro = s.read_only,
        auth = s.authtoken,
    );
}
