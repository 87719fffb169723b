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
    tokio::time::sleep(Duration::from_millis(400)).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.accepted.lock().unwrap().len(), 1);
    assert_eq!(mails.lock().unwrap().len(), 1);

    // A restart on the same store does not send again.
    gw.task.abort();
    if let Some(n) = &gw.notifier {
        n.abort();
    }
    drop(api);
    let gw = stackgate::server::start(config(backend.addr, hook.addr, smtp, &db), clock.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
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
