//! A small in-memory CMA-like backend: content types and entries with create, read,
//! update and delete, a few read-only collections, and a plausible answer for any
//! other CMA call. For the demo and as a real backend process in tests; not for
//! production (one mutex, no persistence).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Content type uid -> (content type JSON, entry uid -> entry JSON).
type Store = BTreeMap<String, (Value, BTreeMap<String, Value>)>;

/// A running demo backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Starts the backend on `addr` (port 0 picks one).
pub async fn spawn(addr: SocketAddr) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let store = Arc::new(Mutex::new(seed()));
    let task = tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        while let Ok((stream, _)) = listener.accept().await {
            let store = Arc::clone(&store);
            let builder = Arc::clone(&builder);
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(Arc::clone(&store), req));
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(Backend { addr, task })
}

fn seed() -> Store {
    let mut store = Store::new();
    let ct =
        |uid: &str, title: &str| json!({"uid": uid, "title": title, "schema": [{"uid": "title", "data_type": "text"}]});
    let entry = |uid: &str, title: &str| json!({"uid": uid, "title": title, "locale": "en-us", "_version": 1});
    let mut posts = BTreeMap::new();
    posts.insert("blt0000000000000e01".into(), entry("blt0000000000000e01", "Hello, world"));
    posts.insert("blt0000000000000e02".into(), entry("blt0000000000000e02", "Second post"));
    store.insert("blog_post".into(), (ct("blog_post", "Blog post"), posts));
    store.insert("author".into(), (ct("author", "Author"), BTreeMap::new()));
    store
}

async fn answer(store: Arc<Mutex<Store>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 8 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error_message": "Body too large.", "error_code": 413}),
            ))
        }
    };
    let segs: Vec<&str> = parts.uri.path().trim_start_matches("/v3/").split('/').collect();
    let mut guard = store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (status, value) = route(&mut guard, &parts.method, &segs, &body);
    Ok(reply(status, value))
}

fn reply(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn not_found(what: &str) -> (StatusCode, Value) {
    (StatusCode::NOT_FOUND, json!({"error_message": format!("{what} was not found."), "error_code": 118}))
}

fn route(store: &mut Store, method: &Method, segs: &[&str], body: &[u8]) -> (StatusCode, Value) {
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method.as_str(), segs) {
        ("GET", ["content_types"]) => {
            let list: Vec<&Value> = store.values().map(|(ct, _)| ct).collect();
            (StatusCode::OK, json!({"content_types": list, "count": list.len()}))
        }
        ("POST", ["content_types"]) => {
            let mut ct = input["content_type"].clone();
            let Some(uid) = ct["uid"].as_str().map(str::to_owned) else {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error_message": "Content type uid is required.", "error_code": 422, "errors": {"uid": ["is required."]}}),
                );
            };
            ct["uid"] = json!(uid);
            store.insert(uid, (ct.clone(), BTreeMap::new()));
            (StatusCode::CREATED, json!({"notice": "Content Type created successfully.", "content_type": ct}))
        }
        ("GET", ["content_types", ct]) => match store.get(*ct) {
            Some((v, _)) => (StatusCode::OK, json!({"content_type": v})),
            None => not_found("Content Type"),
        },
        ("DELETE", ["content_types", ct]) => match store.remove(*ct) {
            Some(_) => (StatusCode::OK, json!({"notice": "Content Type deleted successfully."})),
            None => not_found("Content Type"),
        },
        (_, ["content_types", ct, "entries", rest @ ..]) => match store.get_mut(*ct) {
            Some((_, entries)) => entries_route(entries, method, rest, &input),
            None => not_found("Content Type"),
        },
        ("GET", ["environments"]) => (
            StatusCode::OK,
            json!({"environments": [{"name": "production", "urls": [{"locale": "en-us", "url": "https://example.com"}]}]}),
        ),
        ("GET", ["locales"]) => {
            (StatusCode::OK, json!({"locales": [{"code": "en-us", "name": "English - United States"}]}))
        }
        ("GET", ["stacks", "branches"]) => {
            (StatusCode::OK, json!({"branches": [{"uid": "main"}, {"uid": "development"}]}))
        }
        _ => (StatusCode::OK, json!({"notice": format!("Demo backend accepted {method} /v3/{}.", segs.join("/"))})),
    }
}

fn entries_route(
    entries: &mut BTreeMap<String, Value>,
    method: &Method,
    rest: &[&str],
    input: &Value,
) -> (StatusCode, Value) {
    match (method.as_str(), rest) {
        ("GET", []) => {
            let list: Vec<&Value> = entries.values().collect();
            (StatusCode::OK, json!({"entries": list, "count": list.len()}))
        }
        ("POST", []) => {
            let mut entry = input["entry"].clone();
            if !entry.is_object() {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error_message": "Entry is required.", "error_code": 422, "errors": {"entry": ["is required."]}}),
                );
            }
            let uid = crate::token::new_uid().unwrap_or_else(|_| format!("blt{:016x}", entries.len() + 1));
            entry["uid"] = json!(uid);
            entry["_version"] = json!(1);
            entries.insert(uid, entry.clone());
            (StatusCode::CREATED, json!({"notice": "Entry created successfully.", "entry": entry}))
        }
        ("GET", [e]) => match entries.get(*e) {
            Some(v) => (StatusCode::OK, json!({"entry": v})),
            None => not_found("Entry"),
        },
        ("PUT", [e]) => match entries.get_mut(*e) {
            Some(v) => {
                if let (Some(obj), Some(update)) = (v.as_object_mut(), input["entry"].as_object()) {
                    for (k, val) in update {
                        obj.insert(k.clone(), val.clone());
                    }
                }
                let version = v["_version"].as_i64().unwrap_or(1) + 1;
                v["_version"] = json!(version);
                (StatusCode::OK, json!({"notice": "Entry updated successfully.", "entry": v}))
            }
            None => not_found("Entry"),
        },
        ("DELETE", [e]) => match entries.remove(*e) {
            Some(_) => (StatusCode::OK, json!({"notice": "Entry deleted successfully."})),
            None => not_found("Entry"),
        },
        _ => (StatusCode::OK, json!({"notice": "Demo backend accepted the entry operation."})),
    }
}
