//! PostgreSQL and Redis over TLS (issue #22): libpq's `sslmode`s against the local
//! PostgreSQL (`require`) and a throwaway cluster with a test CA (`verify-ca`,
//! `verify-full`, wrong CA, wrong host name), and `rediss://` against a private
//! TLS-only `redis-server`. Start-up failures must name the host and never the password.
//!
//! Needs PostgreSQL (`STACKGATE_TEST_POSTGRES_URL`, its `initdb`/`pg_ctl`) and
//! `redis-server` built with TLS; `bash scripts/test.sh` provides them. Without them a
//! test prints why it is skipped, unless `STACKGATE_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod scaleout_support;
use common::*;
use scaleout_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKENS: &str = "/v3/stacks/management_tokens";
/// A password in every URL: it must appear in no log and no error.
const PASSWORD: &str = "pw-s3cret-never-logged";

fn owner() -> [(&'static str, &'static str); 3] {
    [("api_key", API_KEY), ("authtoken", ALICE), ("content-type", "application/json")]
}

/// Creates a token through `addr` (a write through the store): the status.
async fn create_token(addr: std::net::SocketAddr, name: &str) -> u16 {
    use http_body_util::{BodyExt, Full};
    let body = serde_json::json!({"token": {"name": name, "scope": [
        {"module": "$all", "acl": {"read": true, "write": false}},
        {"module": "branch", "branches": ["main"], "acl": {"read": true}}], "expires_on": "2099-01-01"}});
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method("POST").uri(format!("http://{addr}{TOKENS}"));
    for (k, v) in owner() {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// The newest `/usr/lib/postgresql/*/bin/NAME`.
fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let path = PathBuf::from(format!("/usr/lib/postgresql/{}/bin/{name}", versions.last()?));
    path.exists().then_some(path)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A throwaway PostgreSQL cluster on an ephemeral port: TLS only (`hostssl`), with the
/// test CA's certificate for localhost / 127.0.0.1. Stopped and removed when dropped.
struct PgCluster {
    dir: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
}

impl PgCluster {
    /// `None` when PostgreSQL's server binaries are not installed.
    async fn start(pki: &TestPki) -> Option<PgCluster> {
        let (initdb, pg_ctl) = (pg_bin("initdb")?, pg_bin("pg_ctl")?);
        let dir = temp_dir("pgtls");
        let data = dir.join("data");
        let port = free_port().await;
        // The server refuses to run as root: there, everything runs as `postgres`.
        if is_root() {
            assert!(Command::new("chown").args(["-R", "postgres:", dir.to_str().unwrap()]).status().unwrap().success());
        }
        let cluster = PgCluster { dir, port, pg_ctl };
        let out = cluster.run(&initdb, &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::copy(&pki.cert, data.join("server.crt")).unwrap();
        std::fs::copy(&pki.key, data.join("server.key")).unwrap();
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        if is_root() {
            assert!(Command::new("chown")
                .args(["-R", "postgres:", data.to_str().unwrap()])
                .status()
                .unwrap()
                .success());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c ssl=on \
             -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c fsync=off",
            cluster.dir.display()
        );
        let log = cluster.dir.join("server.log");
        let out = cluster.run(
            &cluster.pg_ctl,
            &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "-t", "20", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(cluster)
    }

    fn run(&self, program: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args).current_dir(&self.dir).output().unwrap()
    }

    /// `postgres://` URL of the cluster's `postgres` database through `host`, with the
    /// password and `query` (which may be empty).
    fn url(&self, host: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!("postgres://postgres:{PASSWORD}@{host}:{}/postgres{sep}{query}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run(&self.pg_ctl, &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn store(url: &str, extra: &str) -> String {
    format!("[store]\nurl = \"{url}\"\n{extra}\n")
}

/// A failed start names the host and the reason, and never the password.
fn assert_refused(out: &str, host: &str, mode: &str, reason: &str) {
    assert!(out.contains(&format!("PostgreSQL server {host} (sslmode={mode})")), "names host and mode: {out}");
    assert!(out.contains(reason), "says why ({reason}): {out}");
    assert!(!out.contains(PASSWORD), "password leaked: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_checks_the_chain_and_the_host_name() {
    let test = "postgres_verify_full_checks_the_chain_and_the_host_name";
    let dir = temp_dir("pgpki");
    let pki = test_pki(&dir.join("good").tap_mkdir());
    let other = test_pki(&dir.join("other").tap_mkdir());
    let Some(pg) = PgCluster::start(&pki).await else {
        return missing(test, "PostgreSQL's initdb/pg_ctl are not installed");
    };
    let backend = Backend::start().await;
    let ca = pki.ca.display().to_string();

    // verify-full, CA in the URL: starts, and the store works (the server takes TLS only).
    let url = pg.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let r = start_replicas(backend.addr, &store(&url, ""), 1);
    assert_eq!(create_token(r[0].addr, "over-verified-tls").await, 201);
    let log = std::fs::read_to_string(&r[0].log).unwrap();
    assert!(!log.contains(PASSWORD), "password in the log: {log}");
    drop(r);

    // verify-full by name (localhost is in the certificate), CA from [store] ca_file.
    let url = pg.url("localhost", "sslmode=verify-full");
    let r = start_replicas(backend.addr, &store(&url, &format!("ca_file = \"{ca}\"")), 1);
    assert_eq!(create_token(r[0].addr, "by-name").await, 201);
    drop(r);

    // The wrong CA (another CA of the same name: its signature does not verify):
    // start-up fails, naming the host.
    let wrong_ca = other.ca.display();
    let url = pg.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={wrong_ca}"));
    let (status, out) = failed_start(backend.addr, &store(&url, ""));
    assert!(!status.success());
    assert_refused(&out, "127.0.0.1", "verify-full", "invalid peer certificate");
    eprintln!("wrong CA: {}", out.lines().last().unwrap_or(""));

    // require with a CA file checks the chain (as verify-ca), as libpq does.
    let url = pg.url("127.0.0.1", &format!("sslmode=require&sslrootcert={wrong_ca}"));
    let (status, out) = failed_start(backend.addr, &store(&url, ""));
    assert!(!status.success());
    assert_refused(&out, "127.0.0.1", "require", "invalid peer certificate");

    // A host name the certificate does not carry (reached through hostaddr).
    let name_query = |mode: &str| format!("sslmode={mode}&sslrootcert={ca}&hostaddr=127.0.0.1");
    let url = pg.url("db.wrong-name.test", &name_query("verify-full"));
    let (status, out) = failed_start(backend.addr, &store(&url, ""));
    assert!(!status.success());
    assert_refused(&out, "db.wrong-name.test", "verify-full", "certificate not valid for name");
    eprintln!("wrong name: {}", out.lines().last().unwrap_or(""));

    // verify-ca checks the chain only: the same URL is accepted.
    let url = pg.url("db.wrong-name.test", &name_query("verify-ca"));
    let r = start_replicas(backend.addr, &store(&url, ""), 1);
    assert_eq!(create_token(r[0].addr, "chain-only").await, 201);
    drop(r);

    // require and prefer without a CA encrypt without checking (the server is TLS-only,
    // so the store working shows the session is encrypted).
    for mode in ["require", "prefer"] {
        let r = start_replicas(backend.addr, &store(&pg.url("127.0.0.1", &format!("sslmode={mode}")), ""), 1);
        assert_eq!(create_token(r[0].addr, &format!("unverified-{mode}")).await, 201);
    }
    // disable: the TLS-only server refuses it.
    let (status, out) = failed_start(backend.addr, &store(&pg.url("127.0.0.1", "sslmode=disable"), ""));
    assert!(!status.success() && out.contains("no encryption"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
}

/// A database of its own on the shared server, dropped at the end.
async fn scratch_database(admin_url: &str) -> (String, tokio_postgres::Client) {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let name = format!("sg_tls_{}", std::process::id());
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    (name, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_require_encrypts_against_the_local_server() {
    let test = "postgres_sslmode_require_encrypts_against_the_local_server";
    let Ok(admin) = std::env::var("STACKGATE_TEST_POSTGRES_URL") else {
        return missing(test, "STACKGATE_TEST_POSTGRES_URL is not set");
    };
    let (name, client) = scratch_database(&admin).await;
    let base = &admin[..admin.rfind('/').unwrap()];
    let backend = Backend::start().await;
    for (mode, want) in [("require", true), ("disable", false)] {
        let r = start_replicas(backend.addr, &store(&format!("{base}/{name}?sslmode={mode}"), ""), 1);
        assert_eq!(create_token(r[0].addr, &format!("via-{mode}")).await, 201);
        let rows = client
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = $1 AND a.application_name = 'stackgate'",
                &[&name],
            )
            .await
            .unwrap();
        let ssl: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
        eprintln!("sslmode={mode}: the gateway's sessions' ssl: {ssl:?}");
        assert!(ssl.len() >= 2 && ssl.iter().all(|s| *s == want), "sslmode={mode}: {ssl:?}");
        drop(r);
    }
    // The local server's certificate (Debian's self-signed snakeoil) is no system root:
    // verify-full refuses it, naming the host.
    let (status, out) = failed_start(backend.addr, &store(&format!("{base}/{name}?sslmode=verify-full"), ""));
    assert!(!status.success());
    let host = admin.split('@').nth(1).and_then(|h| h.split([':', '/']).next()).unwrap_or("127.0.0.1");
    assert!(out.contains(&format!("PostgreSQL server {host} (sslmode=verify-full)")), "{out}");
    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// A private TLS-only `redis-server` (no plain port) with the test CA's certificate
/// and a password; `None` when this redis-server has no TLS.
async fn tls_redis(pki: &TestPki) -> Option<(Proc, u16)> {
    let port = free_port().await;
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--tls-cert-file", pki.cert.to_str().unwrap(), "--tls-key-file", pki.key.to_str().unwrap()])
        .args(["--tls-ca-cert-file", pki.ca.to_str().unwrap(), "--tls-auth-clients", "no"])
        .args(["--requirepass", PASSWORD, "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut proc = Proc(child);
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if proc.0.try_wait().ok()?.is_some() || started.elapsed() > Duration::from_secs(5) {
            return None; // exited: built without TLS (or no redis-server)
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((proc, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_buckets_hold_across_replicas_and_a_wrong_ca_is_refused() {
    let test = "rediss_buckets_hold_across_replicas_and_a_wrong_ca_is_refused";
    let dir = temp_dir("redistls");
    let pki = test_pki(&dir.join("good").tap_mkdir());
    let other = test_pki(&dir.join("other").tap_mkdir());
    let Some((_redis, port)) = tls_redis(&pki).await else {
        return missing(test, "redis-server with TLS (--tls-port) is not installed");
    };
    let backend = Backend::start().await;
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}");
    let prefix = format!("tls{}", std::process::id());
    let cfg = redis_config(&format!("url = \"{url}\"\nca_file = \"{}\"", pki.ca.display()), &prefix, "closed", 3);
    let replicas = start_replicas(backend.addr, &cfg, 3);
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    // RATED: 5 reads/s, burst 5, through three replicas for 3 s: 15 + 5 at most.
    let seen = hammer(&addrs, Duration::from_secs(3), Duration::from_millis(10)).await;
    let admitted = total(&seen, 200);
    eprintln!("rediss://: {seen:?}, admitted {admitted} (allowed 15..=20)");
    assert!((15..=20).contains(&admitted), "{seen:?}");
    assert_eq!(admitted + total(&seen, 429), seen.iter().flat_map(|m| m.values()).sum::<u32>(), "{seen:?}");
    // The buckets are in the TLS server, hash-tagged by organisation.
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates { client_tls: None, root_cert: Some(pki.ca_pem.clone().into_bytes()) },
    )
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: u16 = rated(addrs[0]).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    assert!(keys.iter().any(|k| k == &format!("{prefix}:{{org_small}}:token-read:blt000000000000rl01")), "{keys:?}");
    for r in &replicas {
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(!log.contains(PASSWORD), "password in the log: {log}");
    }
    drop(replicas);

    // A CA that did not sign the server's certificate: Redis counts as unreachable, so
    // fail_mode = "closed" answers 503, and the log says why without the password.
    let cfg = redis_config(&format!("url = \"{url}\"\nca_file = \"{}\"", other.ca.display()), &prefix, "closed", 1);
    let r = start_replicas(backend.addr, &cfg, 1);
    assert_eq!(rated(r[0].addr).await, 503);
    let log = std::fs::read_to_string(&r[0].log).unwrap();
    assert!(log.contains("Redis unreachable at start") && log.contains("invalid peer certificate"), "{log}");
    assert!(!log.contains(PASSWORD), "password in the log: {log}");
}
