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
    let page = Page::of(parts.uri.query());
    let mut guard = store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (status, mut value) = route(&mut guard, &parts.method, &segs, &body);
    if parts.method == Method::GET {
        page.apply(&mut value);
    }
    Ok(reply(status, value))
}

/// A list request's `skip`, `limit` and `include_count`, as the CMA reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    skip: usize,
    limit: usize,
    include_count: bool,
}

/// The CMA's default and largest page.
const DEFAULT_LIMIT: usize = 100;

impl Page {
    fn of(query: Option<&str>) -> Page {
        let mut page = Page { skip: 0, limit: DEFAULT_LIMIT, include_count: false };
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "skip" => page.skip = v.parse().unwrap_or(0),
                "limit" => page.limit = v.parse().unwrap_or(DEFAULT_LIMIT).clamp(1, DEFAULT_LIMIT),
                "include_count" => page.include_count = v == "true",
                _ => {}
            }
        }
        page
    }

    /// Pages the one list a list response holds (`{"entries": [...]}`), and says how
    /// many there are in all when asked (`count`), as the CMA does: a client that
    /// pages by `skip` until a short page, or until `count`, stops.
    fn apply(self, value: &mut Value) {
        let Some(obj) = value.as_object_mut() else { return };
        let lists: Vec<String> = obj.iter().filter(|(_, v)| v.is_array()).map(|(k, _)| k.clone()).collect();
        let [key] = lists.as_slice() else { return };
        let Some(Value::Array(items)) = obj.get_mut(key) else { return };
        let total = items.len();
        let page: Vec<Value> = items.drain(..).skip(self.skip).take(self.limit).collect();
        *items = page;
        obj.remove("count");
        if self.include_count {
            obj.insert("count".into(), json!(total));
        }
    }
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
        ("GET", ["locales"]) => (
            StatusCode::OK,
            json!({"locales": [{"code": "en-us", "name": "English - United States", "fallback_locale": null, "uid": "bltlocale00000001"}]}),
        ),
        ("GET", ["stacks", "branches"]) => (
            StatusCode::OK,
            json!({"branches": [{"uid": "main", "source": ""}, {"uid": "development", "source": "main"}]}),
        ),
        ("GET", ["stacks", "branches", uid]) if matches!(*uid, "main" | "development") => {
            (StatusCode::OK, json!({"branch": {"uid": uid, "source": if *uid == "main" { "" } else { "main" }}}))
        }
        ("GET", ["stacks", "branches", _]) => not_found("Branch"),
        ("GET", ["stacks"]) => (
            StatusCode::OK,
            json!({"stack": {"api_key": "demo", "name": "Demo stack", "master_locale": "en-us", "settings": {}}}),
        ),
        // The other collections the CMA lists: empty, in the CMA's shape.
        ("GET", [collection]) => match list_key(collection) {
            Some(key) => (StatusCode::OK, json!({ key: [] })),
            None => not_found("Resource"),
        },
        ("GET", ["stacks", collection]) | ("GET", ["workflows", collection]) => match list_key(collection) {
            Some(key) => (StatusCode::OK, json!({ key: [] })),
            None => {
                (StatusCode::OK, json!({"notice": format!("Demo backend accepted {method} /v3/{}.", segs.join("/"))}))
            }
        },
        _ => (StatusCode::OK, json!({"notice": format!("Demo backend accepted {method} /v3/{}.", segs.join("/"))})),
    }
}

/// The key of the list a CMA collection endpoint answers with.
fn list_key(collection: &str) -> Option<&'static str> {
    Some(match collection {
        "global_fields" => "global_fields",
        "assets" => "assets",
        "extensions" => "extensions",
        "labels" => "labels",
        "releases" => "releases",
        "webhooks" => "webhooks",
        "workflows" => "workflows",
        "publishing_rules" => "publishing_rules",
        "roles" => "roles",
        "taxonomies" => "taxonomies",
        "branch_aliases" => "branch_aliases",
        "audit-logs" => "logs",
        "publish-queue" => "queue",
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_page_like_the_cma() {
        let list = || json!({"locales": [1, 2, 3, 4, 5], "count": 5});
        let mut v = list();
        Page::of(Some("skip=1&limit=2&include_count=true")).apply(&mut v);
        assert_eq!(v, json!({"locales": [2, 3], "count": 5}));
        let mut v = list();
        Page::of(Some("skip=4")).apply(&mut v);
        assert_eq!(v, json!({"locales": [5]}));
        let mut v = list();
        Page::of(Some("skip=9&limit=0")).apply(&mut v);
        assert_eq!(v, json!({"locales": []}));
        let mut single = json!({"entry": {"uid": "e"}});
        Page::of(Some("skip=1")).apply(&mut single);
        assert_eq!(single, json!({"entry": {"uid": "e"}}));
    }
}
