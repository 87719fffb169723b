//! Following other replicas: a `LISTEN` connection turns their `NOTIFY`s into
//! [`StoreEvent`]s, with a full re-read after every (re)connect and every
//! `resync_interval`.

use super::*;

/// How often the listening connection asks the server whether it still answers, and
/// how long the answer may take: a connection gone silent (its packets lost, a dropped
/// NAT mapping) hears no change, so other replicas' revocations reach this one within
/// about their sum plus a re-read (the forty-ninth outside probe saw a deleted token
/// served for 18 s with 10 s and 5 s). The answer's limit leaves a busy server room: a
/// reconnect costs a full re-read.
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_ANSWER: Duration = Duration::from_secs(3);

/// Keeps a `LISTEN` connection open for as long as anyone receives the events:
/// reconnects with back-off, and asks for a full re-read after every connect and every
/// `resync_interval`. A listening connection lost once it listened lets the pool's idle
/// connections go too: they took the same way to the server, and the re-read must not
/// wait out one lost the same way (a connect that fails, at the server's connection
/// limit say, leaves them).
pub(super) async fn listen(
    config: tokio_postgres::Config,
    pool: Pool,
    tls: RustlsConnect,
    replica: String,
    resync_interval: Duration,
    events: mpsc::UnboundedSender<StoreEvent>,
    in_doubt: InDoubt,
) {
    let mut backoff = Duration::from_millis(100);
    while !events.is_closed() {
        let started = tokio::time::Instant::now();
        let mut listened = false;
        let listening = listen_once(&config, &tls, &replica, resync_interval, &events, &in_doubt, &mut listened);
        let Err(reason) = listening.await else {
            return;
        };
        if listened {
            pool.retain(|_, _| false);
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(error = %reason, retry_in = ?backoff,
            "token change listener disconnected; tokens are served from the last snapshot");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's life: `Ok` when nobody receives events any more, else why the
/// connection was lost; `listened` once its `LISTEN` took effect.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &RustlsConnect,
    replica: &str,
    resync_interval: Duration,
    events: &mpsc::UnboundedSender<StoreEvent>,
    in_doubt: &InDoubt,
    listened: &mut bool,
) -> Result<(), String> {
    // `connect_timeout` bounds the TCP connect only; a server that accepts and then
    // answers nothing would hold the start-up exchange for ever.
    let connecting = tokio::time::timeout(ANSWER_TIMEOUT, config.connect(tls.clone()));
    let (client, mut connection) = connecting.await.map_err(|_| no_answer().to_string())?.map_err(|e| explain(&e))?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if notes_tx.send(n.payload().to_owned()).is_err() {
                        return "listener stopped".to_owned();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "connection closed".to_owned(),
            }
        }
    });
    let guard = AbortOnDrop(driver);
    let listen = format!("LISTEN {CHANNEL}");
    tokio::time::timeout(ANSWER_TIMEOUT, client.batch_execute(&listen))
        .await
        .map_err(|_| no_answer().to_string())?
        .map_err(|e| e.to_string())?;
    *listened = true;
    tracing::info!("listening for token changes from other replicas");
    // Anything committed before LISTEN took effect was not notified to us: a given-up
    // create that landed meanwhile is among it, and the re-read would serve it.
    if events.send(StoreEvent::Resync).is_err() {
        return Ok(());
    }
    for (stack, uid) in abandoned(in_doubt) {
        let _ = events.send(StoreEvent::Orphaned { stack, uid });
    }
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + resync_interval, resync_interval);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    // An answer that took longer than the interval is not followed by a second ask at once.
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            note = notes.recv() => match note {
                Some(payload) => match parse_payload(&payload, replica, in_doubt) {
                    Some(event) => event,
                    None => continue,
                },
                None => break,
            },
            _ = resync.tick() => StoreEvent::Resync,
            _ = heartbeat.tick() => {
                // A connection that only listens hears nothing from a hung server or a
                // dropped peer: ask, and reconnect (then re-read) if no answer comes.
                let beat = tokio::time::timeout(HEARTBEAT_ANSWER, client.simple_query("SELECT 1")).await;
                beat.map_err(|_| "no answer to a heartbeat".to_owned())?.map_err(|e| e.to_string())?;
                continue;
            }
        };
        if events.send(event).is_err() {
            return Ok(());
        }
    }
    let mut guard = guard;
    Err((&mut guard.0).await.unwrap_or_else(|e| e.to_string()))
}

/// Stops the connection's driver task when the listener returns early.
struct AbortOnDrop(tokio::task::JoinHandle<String>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The creates this replica gave up on whose notification has not come (their marks
/// stay until it does: the commit may land at any time).
fn abandoned(in_doubt: &InDoubt) -> Vec<(String, String)> {
    let Ok(marks) = in_doubt.lock() else { return Vec::new() };
    marks.iter().filter(|(_, doubt)| **doubt == Doubt::Abandoned).map(|(key, _)| key.clone()).collect()
}

/// `replica stack uid` -> an event, skipping anything malformed and this replica's own
/// changes (applied when they committed), but for one whose commit is in doubt
/// ([`InDoubt`]): a change is applied (a given-up one was never applied here); a create
/// given up on is deleted; a create still awaiting its answer is left to it (if it is
/// given up later, the give-up reports it).
fn parse_payload(payload: &str, replica: &str, in_doubt: &InDoubt) -> Option<StoreEvent> {
    let mut parts = payload.split(' ');
    let (from, stack, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || stack.is_empty() || uid.is_empty() {
        return None;
    }
    let key = (stack.to_owned(), uid.to_owned());
    if from == replica {
        let mut marks = in_doubt.lock().ok()?;
        match marks.get(&key)? {
            Doubt::Create => return None,
            Doubt::Change => {
                marks.remove(&key);
            }
            Doubt::Abandoned => {
                marks.remove(&key);
                let (stack, uid) = key;
                return Some(StoreEvent::Orphaned { stack, uid });
            }
        }
    }
    let (stack, uid) = key;
    Some(StoreEvent::Changed { stack, uid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let none = InDoubt::default();
        let changed = Some(StoreEvent::Changed { stack: "k".into(), uid: "t1".into() });
        assert_eq!(parse_payload("b k t1", "a", &none), changed);
        assert_eq!(parse_payload("a k t1", "a", &none), None, "own change");
        assert_eq!(parse_payload("b k", "a", &none), None);
        assert_eq!(parse_payload("b k t1 extra", "a", &none), None);
        // An own change whose commit was given up on is applied, once.
        let doubt = InDoubt::default();
        doubt.lock().unwrap().insert(("k".into(), "t1".into()), Doubt::Change);
        assert_eq!(parse_payload("a k t1", "a", &doubt), changed);
        assert_eq!(parse_payload("a k t1", "a", &doubt), None);
        // An own create: left to its answer while awaited; deleted once given up.
        doubt.lock().unwrap().insert(("k".into(), "t1".into()), Doubt::Create);
        assert_eq!(parse_payload("a k t1", "a", &doubt), None);
        assert_eq!(doubt.lock().unwrap().get(&("k".into(), "t1".into())), Some(&Doubt::Create));
        doubt.lock().unwrap().insert(("k".into(), "t1".into()), Doubt::Abandoned);
        let orphaned = Some(StoreEvent::Orphaned { stack: "k".into(), uid: "t1".into() });
        assert_eq!(abandoned(&doubt), vec![("k".to_owned(), "t1".to_owned())]);
        assert_eq!(parse_payload("a k t1", "a", &doubt), orphaned);
        assert_eq!(parse_payload("a k t1", "a", &doubt), None);
        assert!(abandoned(&doubt).is_empty());
    }
}
