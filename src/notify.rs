//! Expiry warnings: once per token and expiry, `[notify] before` ahead of it, a notice
//! goes to each configured channel (an HTTP webhook and/or an SMTP relay).
//!
//! Runs as one background task, never on the request path. A notice is recorded in
//! the store per (token, expiry instant, channel) only after the channel accepted it,
//! so a restart never sends it twice, a moved `expires_on` re-arms it, and a failing
//! channel is retried (with exponential backoff) without holding up the others.
//!
//! The webhook may be `https://` (system roots, or `webhook_ca_file`); the SMTP relay
//! may require STARTTLS and take AUTH PLAIN / LOGIN credentials. TLS material is loaded
//! when the channels are built, at start, so a bad CA file stops start-up instead of
//! failing every notice later.

use crate::config::{Notify, Smtp};
use crate::gateway::Gateway;
use crate::tls::TlsError;
use crate::token::TokenRecord;
use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the notice channels could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify.webhook: {0}")]
    WebhookTls(#[source] TlsError),
    /// Only the relay's host is named: nothing about credentials.
    #[error("notify.smtp: cannot set up STARTTLS for {host}: {reason}")]
    SmtpTls { host: String, reason: String },
}

/// A notice about to go out.
struct Notice<'a> {
    token: &'a TokenRecord,
    /// Creator's e-mail, when the creator is a configured user.
    creator_email: Option<&'a str>,
}

enum Channel {
    Webhook { uri: Uri, client: Client<HttpsConnector<HttpConnector>, Full<Bytes>> },
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, from: Mailbox, to: Vec<Mailbox> },
}

impl Channel {
    fn name(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Smtp { .. } => "smtp",
        }
    }

    async fn send(&self, notice: &Notice<'_>) -> Result<(), String> {
        let t = notice.token;
        let expires_on = t.expires_on.as_ref().map(|e| e.text.as_str()).unwrap_or_default();
        match self {
            Channel::Webhook { uri, client } => {
                let body = serde_json::json!({
                    "event": "management_token.expiring",
                    "stack": t.stack,
                    "token_uid": t.uid,
                    "name": t.name,
                    "expires_on": expires_on,
                });
                let req = Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .map_err(|e| e.to_string())?;
                let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("webhook answered {}", resp.status()))
                }
            }
            Channel::Smtp { transport, from, to } => {
                let mut recipients = to.clone();
                if let Some(mbox) = notice.creator_email.and_then(|e| e.parse::<Mailbox>().ok()) {
                    if !recipients.contains(&mbox) {
                        recipients.push(mbox);
                    }
                }
                if recipients.is_empty() {
                    return Err("no recipients (set notify.smtp.to or the creator's e-mail)".into());
                }
                let mut builder = Message::builder()
                    .from(from.clone())
                    .subject(format!("Management token \"{}\" expires on {expires_on}", t.name));
                for r in recipients {
                    builder = builder.to(r);
                }
                let text = format!(
                    "The management token \"{}\" ({}) of stack {} expires on {expires_on}.\n\
                     Create a replacement and update its users before then.\n",
                    t.name, t.uid, t.stack
                );
                let message = builder.body(text).map_err(|e| e.to_string())?;
                transport.send(message).await.map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }
}

/// The configured notice channels, ready to send.
pub struct Channels(Vec<Channel>);

impl Channels {
    /// Builds the channels of `[notify]`, loading TLS roots (see the module docs).
    pub fn new(cfg: &Notify) -> Result<Channels, NotifyError> {
        let mut out = Vec::new();
        if let Some(uri) = &cfg.webhook {
            let client = webhook_client(uri, cfg.webhook_ca_file.as_deref())?;
            out.push(Channel::Webhook { uri: uri.clone(), client });
        }
        if let Some(smtp) = &cfg.smtp {
            let transport = smtp_transport(smtp)?;
            let from = smtp.from.parse().ok();
            let to = smtp.to.iter().filter_map(|t| t.parse().ok()).collect();
            // Addresses were validated at load; an unparsable one cannot reach here.
            if let Some(from) = from {
                out.push(Channel::Smtp { transport, from, to });
            }
        }
        Ok(Channels(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One client for http and https webhooks. Trust for https comes from the system
/// roots, or only from `ca_file`; an http webhook loads no roots at all (a machine
/// without any must still be able to post to a local receiver).
fn webhook_client(
    uri: &Uri,
    ca_file: Option<&std::path::Path>,
) -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, NotifyError> {
    let tls = if uri.scheme() == Some(&Scheme::HTTPS) {
        crate::tls::client_config(ca_file)
    } else {
        crate::tls::empty_client_config()
    }
    .map_err(NotifyError::WebhookTls)?;
    let connector = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The relay transport. With `starttls` the upgrade is required (`Tls::Required`):
/// a relay that does not offer STARTTLS, or whose certificate the system roots do not
/// vouch for, gets neither the credentials nor the message. Credentials are offered
/// with PLAIN, then LOGIN (lettre's defaults, named here so they do not drift). lettre
/// itself does not refuse AUTH on a plain connection; `stackgate check` warns about
/// that for a relay off this host (see `ConfigWarning::CleartextSmtpAuth`).
fn smtp_transport(s: &Smtp) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
        .port(s.port)
        .timeout(Some(Duration::from_secs(10)));
    if s.starttls {
        let params = TlsParameters::new(s.host.clone())
            .map_err(|e| NotifyError::SmtpTls { host: s.host.clone(), reason: e.to_string() })?;
        builder = builder.tls(Tls::Required(params));
    }
    if let Some(auth) = &s.auth {
        builder = builder
            .credentials(Credentials::new(auth.username.clone(), auth.password.expose().to_owned()))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}

/// When a failed (token, expiry, channel) may be tried again.
struct Backoff {
    next: Instant,
    delay: Duration,
}

const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Starts the notifier if any channel is configured. Channels are read from the config
/// at start; a reload that changes them needs a restart (reported by the reload).
pub fn spawn(gw: Arc<Gateway>, channels: Channels) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = gw.snapshot().config.notify.clone();
    if channels.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut backoff: HashMap<(String, i64, &'static str), Backoff> = HashMap::new();
        // Replicas sharing a store take turns: only the lease holder sends, so a
        // notice goes out once, not once per replica. Held for three scans so a
        // slow scan does not hand it over mid-way.
        let lease = cfg.interval.saturating_mul(3);
        loop {
            match gw.store().try_lead("expiry-notices", gw.replica_id(), lease).await {
                Ok(true) => {
                    scan(&gw, &cfg, &channels.0, &mut backoff).await;
                    gw.metrics.notice_scans.inc();
                }
                Ok(false) => tracing::debug!("expiry notices: another replica holds the lease"),
                Err(e) => tracing::warn!(error = %e, "expiry notices: store unavailable, will retry"),
            }
            tokio::time::sleep(cfg.interval).await;
        }
    }))
}

/// One pass over every token with notices enabled.
async fn scan(
    gw: &Gateway,
    cfg: &Notify,
    channels: &[Channel],
    backoff: &mut HashMap<(String, i64, &'static str), Backoff>,
) {
    let metrics = &gw.metrics;
    let snap = gw.snapshot();
    let now = gw.clock().now();
    let before = i64::try_from(cfg.before.as_secs()).unwrap_or(i64::MAX);
    // Inside the window and not yet expired (a late warning would be wrong).
    let due = |t: &TokenRecord| {
        t.is_email_notification_enabled
            && t.expires_on.as_ref().is_some_and(|e| now >= e.at.saturating_sub(before) && now < e.at)
    };
    // Only the tokens with a notice due are kept, however many are stored.
    let stored = match crate::store::load_matching(&**gw.store(), &due).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "expiry notices: store unavailable, will retry");
            return;
        }
    };
    let statics = snap.config.stacks.iter().flat_map(|s| s.tokens.iter()).filter(|t| due(t));
    for token in statics.chain(stored.iter()) {
        let Some(expires_at) = token.expires_on.as_ref().map(|e| e.at) else {
            continue;
        };
        let creator_email = snap
            .config
            .users
            .iter()
            .find(|u| u.uid == token.created_by)
            .map(|u| u.email.as_str())
            .filter(|e| !e.is_empty());
        let notice = Notice { token, creator_email };
        for channel in channels {
            let key = (token.uid.clone(), expires_at, channel.name());
            if backoff.get(&key).is_some_and(|b| Instant::now() < b.next) {
                continue;
            }
            match gw.store().notified_at(&token.uid, expires_at, channel.name()).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return,
            }
            match channel.send(&notice).await {
                Ok(()) => {
                    backoff.remove(&key);
                    if let Err(e) = gw.store().mark_notified(&token.uid, expires_at, channel.name(), now).await {
                        tracing::error!(error = %e, token.uid = %token.uid, "expiry notice sent but not recorded");
                    }
                    metrics.notices_sent.inc();
                    tracing::info!(token.uid = %token.uid, stack = %token.stack, channel = channel.name(),
                        expires_on = %token.expires_on.as_ref().map(|e| e.text.as_str()).unwrap_or_default(), "expiry notice sent");
                }
                Err(e) => {
                    metrics.notices_failed.inc();
                    let delay = backoff.get(&key).map_or(cfg.interval, |b| (b.delay * 2).min(MAX_BACKOFF));
                    tracing::warn!(token.uid = %token.uid, channel = channel.name(), error = %e, retry_in = ?delay, "expiry notice failed");
                    backoff.insert(key, Backoff { next: Instant::now() + delay, delay });
                }
            }
        }
    }
}
