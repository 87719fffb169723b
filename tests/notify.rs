//! Expiry warnings with an injected clock, a local SMTP sink and a local webhook
//! receiver: exactly one notice per channel, none again after a restart, a failing
//! channel retried, and a moved expiry re-armed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use stackgate::clock::ManualClock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const DAY: i64 = 86_400;

/// Records the webhook bodies it accepts; answers 500 to the first `fail_first` calls.
struct Webhook {
    addr: SocketAddr,
    calls: Arc<AtomicU32>,
    accepted: Arc<Mutex<Vec<Value>>>,
}

async fn webhook(fail_first: u32) -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let accepted: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (c, a) = (Arc::clone(&calls), Arc::clone(&accepted));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (c, a) = (Arc::clone(&c), Arc::clone(&a));
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (c, a) = (Arc::clone(&c), Arc::clone(&a));
                    async move {
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let status = if n < fail_first {
                            500
                        } else {
                            a.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                            200
                        };
                        let mut resp = http::Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Webhook { addr, calls, accepted }
}

/// A minimal SMTP server that accepts everything and keeps each message's text.
async fn smtp_sink() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let m = Arc::clone(&messages);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "DATA" => {
                            let _ = write.write_all(b"354 go ahead\r\n").await;
                            let mut text = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                text.push_str(&l);
                                text.push('\n');
                            }
                            m.lock().unwrap().push(text);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    (addr, messages)
}

fn config(backend: SocketAddr, hook: SocketAddr, smtp: SocketAddr, db: &std::path::Path) -> stackgate::config::Config {
    let text = format!(
        "{}\n[store]\npath = \"{}\"\n\n[notify]\nbefore = \"7d\"\ninterval = \"100ms\"\nwebhook = \"http://{hook}/hooks/token-expiry\"\nsmtp = {{ relay = \"{smtp}\", from = \"stackgate@example.com\", to = [\"ops@example.com\"] }}\n",
        config_text(backend, "", ""),
        db.display()
    );
    stackgate::config::from_str(&text).unwrap()
}

/// Waits until the notifier has completed `n` more passes over the tokens: "nothing
/// was sent" then means nothing was sent in those passes, not in some stretch of time.
async fn scans(gw: &stackgate::server::Running, n: u64) {
    let target = gw.gateway.metrics.notice_scans.get() + n;
    eventually("notifier passes", || gw.gateway.metrics.notice_scans.get() >= target).await;
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notice_per_channel_no_resend_after_restart_retry_and_rearm() {
    let backend = Backend::start().await;
    let hook = webhook(2).await; // the first two deliveries fail
    let (smtp, mails) = smtp_sink().await;
    let dir = temp_dir("notify");
    let db = dir.join("stackgate.db");
    let clock = Arc::new(ManualClock::new(EXPIRY - 8 * DAY));
    let gw = stackgate::server::start(config(backend.addr, hook.addr, smtp, &db), clock.clone()).await.unwrap();

    // A token expiring at EXPIRY (2027-01-01), with notices on.
    let mut api = KeepAlive::connect(gw.addr).await;
    let owner = [("api_key", API_KEY), ("authtoken", ALICE), ("content-type", "application/json")];
    let create = json!({"token": {"name": "expiring-soon", "expires_on": "2027-01-01", "is_email_notification_enabled": true,
        "scope": [{"module": "$all", "acl": {"read": true}}, {"module": "branch", "branches": ["main"]}]}});
    let (status, body) = api.send("POST", "/v3/stacks/management_tokens", &owner, &create.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let uid = serde_json::from_str::<Value>(&body).unwrap()["token"]["uid"].as_str().unwrap().to_owned();

    // Eight days ahead: outside the 7-day window, nothing is sent.
    scans(&gw, 3).await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
    assert!(mails.lock().unwrap().is_empty());

    // Six days ahead: one notice per channel; the webhook's two failures are retried.
    clock.set(EXPIRY - 6 * DAY);
    eventually("the webhook notice", || hook.accepted.lock().unwrap().len() == 1).await;
    eventually("the e-mail notice", || mails.lock().unwrap().len() == 1).await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 3, "two failures, then one success");
    let notice = hook.accepted.lock().unwrap()[0].clone();
    assert_eq!(notice["stack"], API_KEY);
    assert_eq!(notice["token_uid"], uid.as_str());
    assert_eq!(notice["name"], "expiring-soon");
    assert_eq!(notice["expires_on"], "2027-01-01");
    let mail = mails.lock().unwrap()[0].clone();
    assert!(mail.contains("expiring-soon") && mail.contains("2027-01-01"), "{mail}");
    assert!(
        mail.contains("ops@example.com") && mail.contains("alice@example.com"),
        "to the list and the creator: {mail}"
    );
    eventually("both notices counted", || gw.gateway.metrics.notices_sent.get() == 2).await;
    assert_eq!(gw.gateway.metrics.notices_failed.get(), 2);

    // The API shows when the notice went out (at the clock's time: 6 days before expiry).
    let (status, body) = api.send("GET", &format!("/v3/stacks/management_tokens/{uid}"), &owner, "").await;
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["token"]["expiry_notified_at"], "2026-12-26T00:00:00Z", "{shown}");

    // Several more scans: still exactly one each.
    scans(&gw, 3).await;
    assert_eq!(hook.accepted.lock().unwrap().len(), 1);
    assert_eq!(mails.lock().unwrap().len(), 1);

    // A restart on the same store does not send again.
    gw.task.abort();
    if let Some(n) = &gw.notifier {
        n.abort();
    }
    drop(api);
    let gw = stackgate::server::start(config(backend.addr, hook.addr, smtp, &db), clock.clone()).await.unwrap();
    scans(&gw, 3).await;
    assert_eq!(hook.accepted.lock().unwrap().len(), 1, "no resend after restart");
    assert_eq!(mails.lock().unwrap().len(), 1);

    // Moving expires_on re-arms the notice for the new date.
    let mut api = KeepAlive::connect(gw.addr).await;
    let update = json!({"token": {"expires_on": "2027-01-03"}});
    let (status, body) =
        api.send("PUT", &format!("/v3/stacks/management_tokens/{uid}"), &owner, &update.to_string()).await;
    assert_eq!(status, 200, "{body}");
    clock.set(EXPIRY - 4 * DAY);
    eventually("the re-armed webhook notice", || hook.accepted.lock().unwrap().len() == 2).await;
    eventually("the re-armed e-mail", || mails.lock().unwrap().len() == 2).await;
    assert_eq!(hook.accepted.lock().unwrap()[1]["expires_on"], "2027-01-03");
    let (_, body) = api.send("GET", "/v3/stacks/management_tokens", &owner, "").await;
    let listed: Value = serde_json::from_str(&body).unwrap();
    let mine = listed["tokens"].as_array().unwrap().iter().find(|t| t["uid"] == uid.as_str()).unwrap().clone();
    assert_eq!(mine["expiry_notified_at"], "2026-12-28T00:00:00Z", "re-armed notice for the new date: {mine}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// After a notice went out, the PUT response, GET one and the list show the same record
/// (`expiry_notified_at` included): every response is built the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_response_shows_the_notice_time() {
    let backend = Backend::start().await;
    let hook = webhook(0).await;
    let (smtp, _mails) = smtp_sink().await;
    let dir = temp_dir("notify-shown");
    let clock = Arc::new(ManualClock::new(EXPIRY - 6 * DAY));
    let gw = stackgate::server::start(config(backend.addr, hook.addr, smtp, &dir.join("s.db")), clock.clone())
        .await
        .unwrap();
    let mut api = KeepAlive::connect(gw.addr).await;
    let owner = [("api_key", API_KEY), ("authtoken", ALICE), ("content-type", "application/json")];
    let create = json!({"token": {"name": "noticed", "expires_on": "2027-01-01", "is_email_notification_enabled": true,
        "scope": [{"module": "$all", "acl": {"read": true}}, {"module": "branch", "branches": ["main"]}]}});
    let (status, body) = api.send("POST", "/v3/stacks/management_tokens", &owner, &create.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let uid = serde_json::from_str::<Value>(&body).unwrap()["token"]["uid"].as_str().unwrap().to_owned();
    eventually("both notices counted", || gw.gateway.metrics.notices_sent.get() == 2).await;

    let path = format!("/v3/stacks/management_tokens/{uid}");
    let update = json!({"token": {"description": "still expiring"}});
    let (status, body) = api.send("PUT", &path, &owner, &update.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let put: Value = serde_json::from_str::<Value>(&body).unwrap()["token"].clone();
    assert_eq!(put["expiry_notified_at"], "2026-12-26T00:00:00Z", "PUT response: {put}");
    let (_, body) = api.send("GET", &path, &owner, "").await;
    let got: Value = serde_json::from_str::<Value>(&body).unwrap()["token"].clone();
    let (_, body) = api.send("GET", "/v3/stacks/management_tokens", &owner, "").await;
    let listed = serde_json::from_str::<Value>(&body).unwrap();
    let listed = listed["tokens"].as_array().unwrap().iter().find(|t| t["uid"] == uid.as_str()).unwrap().clone();
    assert_eq!(put, got, "PUT and GET show the same record");
    assert_eq!(got, listed, "GET one and the list show the same record");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lines kept by a test server (commands, or messages).
type Kept = Arc<Mutex<Vec<String>>>;

/// An SMTP server that records every command line it receives and accepts everything;
/// `ehlo` is its whole EHLO answer (the extensions it advertises).
async fn smtp_server(ehlo: &'static str) -> (SocketAddr, Kept, Kept) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (commands, messages): (Kept, Kept) = Default::default();
    let (c, m) = (Arc::clone(&commands), Arc::clone(&messages));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (c, m) = (Arc::clone(&c), Arc::clone(&m));
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    c.lock().unwrap().push(line.clone());
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => ehlo.as_bytes(),
                        "AUTH" => b"235 2.7.0 authenticated\r\n",
                        "DATA" => {
                            let _ = write.write_all(b"354 go ahead\r\n").await;
                            let mut text = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                text.push_str(&l);
                                text.push('\n');
                            }
                            m.lock().unwrap().push(text);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    (addr, commands, messages)
}

/// The test config with `notify` as the `[notify]` table's body.
fn config_with_notify(backend: SocketAddr, notify: &str, db: &std::path::Path) -> stackgate::config::Config {
    let text = format!(
        "{}\n[store]\npath = \"{}\"\n\n[notify]\nbefore = \"7d\"\ninterval = \"100ms\"\n{notify}\n",
        config_text(backend, "", ""),
        db.display()
    );
    stackgate::config::from_str(&text).unwrap()
}

/// Creates a token expiring 2027-01-01 with notices on; returns its uid.
async fn create_noticed_token(addr: SocketAddr, name: &str) -> String {
    let mut api = KeepAlive::connect(addr).await;
    let owner = [("api_key", API_KEY), ("authtoken", ALICE), ("content-type", "application/json")];
    let create = json!({"token": {"name": name, "expires_on": "2027-01-01", "is_email_notification_enabled": true,
        "scope": [{"module": "$all", "acl": {"read": true}}, {"module": "branch", "branches": ["main"]}]}});
    let (status, body) = api.send("POST", "/v3/stacks/management_tokens", &owner, &create.to_string()).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["token"]["uid"].as_str().unwrap().to_owned()
}

/// The environment variable the SMTP password comes from in these tests.
const SMTP_PASSWORD_ENV: &str = "STACKGATE_TEST_NOTIFY_SMTP_PASSWORD";
const SMTP_PASSWORD: &str = "s3cret-Pw!";

/// Sets the password variable before any runtime thread exists, then runs `test`.
fn with_smtp_password(test: impl std::future::Future<Output = ()>) {
    std::env::set_var(SMTP_PASSWORD_ENV, SMTP_PASSWORD);
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(test);
}

/// AUTH against a relay that offers AUTH PLAIN LOGIN and no STARTTLS (`starttls`
/// defaults to false): lettre sends the credentials on the plain connection (it does not
/// insist on TLS for AUTH), and the relay receives exactly `\0username\0password`.
#[test]
fn smtp_auth_credentials_reach_the_relay() {
    with_smtp_password(async {
        let backend = Backend::start().await;
        let (smtp, commands, mails) = smtp_server("250-sink\r\n250 AUTH PLAIN LOGIN\r\n").await;
        let dir = temp_dir("notify-auth");
        let notify = format!(
            "smtp = {{ relay = \"{smtp}\", from = \"stackgate@example.com\", to = [\"ops@example.com\"], username = \"mailer\", password_env = \"{SMTP_PASSWORD_ENV}\" }}"
        );
        let cfg = config_with_notify(backend.addr, &notify, &dir.join("s.db"));
        assert!(!format!("{cfg:?}").contains(SMTP_PASSWORD), "the password is not in Debug output");
        let clock = Arc::new(ManualClock::new(EXPIRY - 6 * DAY));
        let gw = stackgate::server::start(cfg, clock).await.unwrap();
        create_noticed_token(gw.addr, "mailed-with-auth").await;
        eventually("the e-mail notice", || mails.lock().unwrap().len() == 1).await;
        let commands = commands.lock().unwrap().clone();
        let auth: Vec<&String> = commands.iter().filter(|c| c.to_ascii_uppercase().starts_with("AUTH")).collect();
        // base64("\0mailer\0s3cret-Pw!")
        assert_eq!(auth, ["AUTH PLAIN AG1haWxlcgBzM2NyZXQtUHch"], "{commands:?}");
        let mail_from = commands.iter().position(|c| c.starts_with("MAIL FROM")).unwrap();
        let auth_at = commands.iter().position(|c| c.starts_with("AUTH")).unwrap();
        assert!(auth_at < mail_from, "authenticated before the envelope: {commands:?}");
        eventually("the notice counted", || gw.gateway.metrics.notices_sent.get() == 1).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// `starttls = true` is required, not opportunistic: a relay that does not offer
/// STARTTLS gets neither the credentials nor the message, and the failure is counted.
#[test]
fn starttls_relay_without_starttls_gets_neither_password_nor_mail() {
    with_smtp_password(async {
        let backend = Backend::start().await;
        let (smtp, commands, mails) = smtp_server("250-sink\r\n250 AUTH PLAIN LOGIN\r\n").await;
        let dir = temp_dir("notify-starttls");
        let notify = format!(
            "smtp = {{ relay = \"{smtp}\", from = \"stackgate@example.com\", to = [\"ops@example.com\"], starttls = true, username = \"mailer\", password_env = \"{SMTP_PASSWORD_ENV}\" }}"
        );
        let clock = Arc::new(ManualClock::new(EXPIRY - 6 * DAY));
        let gw = stackgate::server::start(config_with_notify(backend.addr, &notify, &dir.join("s.db")), clock)
            .await
            .unwrap();
        create_noticed_token(gw.addr, "needs-tls").await;
        eventually("the failed notice", || gw.gateway.metrics.notices_failed.get() >= 1).await;
        let commands = commands.lock().unwrap().clone();
        assert!(!commands.is_empty(), "the relay was contacted");
        assert!(
            commands.iter().all(|c| !c.starts_with("AUTH") && !c.starts_with("MAIL") && !c.contains("AG1haWxlcg")),
            "{commands:?}"
        );
        assert!(mails.lock().unwrap().is_empty());
        assert_eq!(gw.gateway.metrics.notices_sent.get(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// The shared test PKI (tests/common): the CA file and the receiver's certificate.
fn pki(dir: &std::path::Path) -> (std::path::PathBuf, stackgate::config::TlsFiles) {
    let pki = test_pki(dir);
    (pki.ca, stackgate::config::TlsFiles { cert: pki.cert, key: pki.key })
}

/// A TLS webhook receiver that keeps the bodies it accepts.
async fn tls_webhook(files: &stackgate::config::TlsFiles) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(stackgate::tls::server_config(files).unwrap().config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted: Arc<Mutex<Vec<Value>>> = Arc::default();
    let a = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, a) = (acceptor.clone(), Arc::clone(&a));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let a = Arc::clone(&a);
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        a.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// An https webhook whose certificate comes from a private CA: delivered when
/// `webhook_ca_file` names that CA, refused (and counted as failed) with the system
/// roots alone, never sent in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhook_trusts_its_ca_file() {
    let backend = Backend::start().await;
    let dir = temp_dir("notify-https");
    let (ca, files) = pki(&dir);
    let (hook, accepted) = tls_webhook(&files).await;
    let url = format!("https://localhost:{}/hooks/token-expiry", hook.port());
    let notify = format!("webhook = \"{url}\"\nwebhook_ca_file = \"{}\"", ca.display());
    let clock = Arc::new(ManualClock::new(EXPIRY - 6 * DAY));
    let gw = stackgate::server::start(config_with_notify(backend.addr, &notify, &dir.join("a.db")), clock.clone())
        .await
        .unwrap();
    let uid = create_noticed_token(gw.addr, "over-https").await;
    eventually("the https webhook notice", || accepted.lock().unwrap().len() == 1).await;
    assert_eq!(accepted.lock().unwrap()[0]["token_uid"], uid.as_str());
    eventually("the notice counted", || gw.gateway.metrics.notices_sent.get() == 1).await;

    // The system roots do not vouch for the private CA: the notice fails, nothing arrives.
    let notify = format!("webhook = \"{url}\"");
    match stackgate::server::start(config_with_notify(backend.addr, &notify, &dir.join("b.db")), clock).await {
        Ok(gw) => {
            create_noticed_token(gw.addr, "untrusted").await;
            eventually("the failed notice", || gw.gateway.metrics.notices_failed.get() >= 1).await;
            assert_eq!(accepted.lock().unwrap().len(), 1);
            assert_eq!(gw.gateway.metrics.notices_sent.get(), 0);
        }
        // A machine without any system roots refuses to start an https webhook at all.
        Err(e) => assert!(e.to_string().contains("no trusted CA certificates"), "{e}"),
    }

    // A CA file that cannot be read stops the start with the file named.
    let notify = format!("webhook = \"{url}\"\nwebhook_ca_file = \"{}\"", dir.join("missing.pem").display());
    let clock = Arc::new(ManualClock::new(EXPIRY - 6 * DAY));
    let err = stackgate::server::start(config_with_notify(backend.addr, &notify, &dir.join("c.db")), clock)
        .await
        .err()
        .expect("a missing CA file stops the start");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Notices asked for while `[notify]` has no channel: accepted, and warned about by uid
/// (static tokens and stored ones at start-up, a stored one also when it is created),
/// never with a secret or its hash. Current-thread runtime, so the subscriber set for
/// this thread sees the gateway's tasks too.
#[tokio::test]
async fn notices_without_a_channel_are_warned_about_at_start_up() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let backend = Backend::start().await;
    let dir = temp_dir("notify-none");
    let db = dir.join("s.db");
    // The EXPIRING static token gets notices on; no channel is configured.
    let text = config_text(backend.addr, "", "").replace(
        "expires_on = \"2027-01-01\"\n",
        "expires_on = \"2027-01-01\"\nis_email_notification_enabled = true\n",
    );
    let text = format!("{text}\n[store]\npath = \"{}\"\n", db.display());
    let cfg = stackgate::config::from_str(&text).unwrap();
    let gw = stackgate::server::start(cfg.clone(), Arc::new(ManualClock::new(EXPIRY - 6 * DAY))).await.unwrap();
    assert!(gw.notifier.is_none(), "no channel, no notifier");
    let uid = create_noticed_token(gw.addr, "unheard").await;
    let shown = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(shown.contains("WARN") && shown.contains("blt000000000000ex01"), "static token at start-up: {shown}");
    assert!(shown.matches(uid.as_str()).count() >= 1, "stored token on create: {shown}");
    gw.task.abort();

    logs.0.lock().unwrap().clear();
    let gw = stackgate::server::start(cfg, Arc::new(ManualClock::new(EXPIRY - 6 * DAY))).await.unwrap();
    let shown = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let warned: Vec<&str> = shown.lines().filter(|l| l.contains("neither webhook nor smtp")).collect();
    assert!(warned.iter().any(|l| l.contains("blt000000000000ex01")), "{shown}");
    assert!(warned.iter().any(|l| l.contains(uid.as_str())), "stored token at start-up: {shown}");
    assert!(!shown.contains(&sha(EXPIRING)) && !shown.contains(EXPIRING), "never a secret: {shown}");
    gw.task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
