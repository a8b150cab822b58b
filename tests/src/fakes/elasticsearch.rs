//! A fake Elasticsearch: `POST /_bulk` (and `/<index>/_bulk`), `PUT /_index_template/<name>`.
//!
//! Like Elasticsearch it answers a bulk request with `200` and per-item results in request
//! order (`errors: true` when any failed); `create` of an `_id` it already holds answers
//! `409 version_conflict_engine_exception`; `index` into a data stream answers the real `400`
//! "only write ops with an op_type of create are allowed in data streams". Scripts force
//! item statuses (201/409/429/400/500, with the real error bodies) or a whole-request answer
//! (the real `429 es_rejected_execution_exception`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Script, Server, lock};

/// The real whole-request 429 body (elastic/go-elasticsearch#573).
pub const REJECTED_429: &str =
    include_str!("../../fixtures/real/elasticsearch/bulk-response-429-coordinating-rejected.json");

/// A scripted answer to one bulk request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The whole request answered with this status and body; nothing stored.
    Whole(u16, String),
    /// Per-item statuses for the first items (the rest behave normally). 2xx stores the
    /// document; 409 answers a version conflict without storing; others answer their real
    /// error types.
    Items(Vec<u16>),
}

/// One item of a bulk request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `create`, `index`, …
    pub op: String,
    /// `_index`.
    pub index: String,
    /// `_id`.
    pub id: String,
    /// The source line, as sent.
    pub source: String,
}

/// One bulk request.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// Arrival.
    pub at: Instant,
    /// The raw body.
    pub body: Vec<u8>,
    /// Items in order.
    pub items: Vec<Item>,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Whether every line, the last included, ended in `\n`.
    pub newline_terminated: bool,
    /// The statuses answered per item (empty for a whole-request answer).
    pub statuses: Vec<u16>,
    /// The whole-request status.
    pub status: u16,
}

/// What the fake holds.
#[derive(Debug, Default)]
pub struct EsState {
    /// Every bulk request.
    pub bulks: Vec<Bulk>,
    /// Stored documents: `_id` → (index, source).
    pub docs: HashMap<String, (String, String)>,
    /// How many times each `_id` was created (never more than once, by construction).
    pub created: HashMap<String, u32>,
    /// Installed templates: name → body.
    pub templates: BTreeMap<String, Value>,
    /// Names treated as data streams (index ops refused).
    pub data_streams: Vec<String>,
    /// Keep request bodies and document sources (off for benchmarks).
    pub keep_bodies: bool,
    /// Items received in total.
    pub items_received: u64,
}

/// The fake Elasticsearch.
#[derive(Debug)]
pub struct FakeElasticsearch {
    /// The server.
    pub server: Server,
    /// Recorded state.
    pub state: Arc<Mutex<EsState>>,
    /// Scripted answers to bulk requests.
    pub script: Arc<Script<Reply>>,
    /// Scripted answers to template installs (status, body).
    pub template_script: Arc<Script<(u16, String)>>,
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<EsState>>,
    script: Arc<Script<Reply>>,
    template_script: Arc<Script<(u16, String)>>,
}

fn error_for(status: u16, id: &str) -> Value {
    match status {
        409 => {
            json!({"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists (current version [1])")})
        }
        429 => serde_json::from_str::<Value>(include_str!(
            "../../fixtures/real/elasticsearch/bulk-item-429-write-queue-full.json"
        ))
        .map(|v| v["index"]["error"].clone())
        .unwrap_or(Value::Null),
        400 => {
            json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [gpusiem.revision] of type [long]"})
        }
        404 => json!({"type": "index_not_found_exception", "reason": "no such index"}),
        _ => {
            json!({"type": "unavailable_shards_exception", "reason": "primary shard is not active"})
        }
    }
}

#[derive(serde::Deserialize)]
struct Meta {
    #[serde(rename = "_index", default)]
    index: Option<String>,
    #[serde(rename = "_id", default)]
    id: Option<String>,
}

fn parse_bulk(
    body: &[u8],
    default_index: Option<&str>,
    keep_source: bool,
) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    while let Some(action) = lines.next() {
        let a: HashMap<String, Meta> = serde_json::from_slice(action)
            .map_err(|e| format!("Malformed action/metadata line: {e}"))?;
        let (op, meta) = a.into_iter().next().ok_or("empty action")?;
        let source = if op == "delete" {
            String::new()
        } else {
            let line = lines.next().ok_or("action without source")?;
            if keep_source {
                String::from_utf8_lossy(line).into_owned()
            } else {
                String::new()
            }
        };
        let index = meta
            .index
            .or_else(|| default_index.map(str::to_string))
            .ok_or("no index")?;
        items.push(Item {
            op,
            index,
            id: meta.id.unwrap_or_default(),
            source,
        });
    }
    Ok(items)
}

async fn bulk_handler(
    cx: Ctx,
    default_index: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let keep = lock(&cx.state).keep_bodies;
    let items = match parse_bulk(&body, default_index.as_deref(), keep) {
        Ok(i) => i,
        Err(e) => {
            let v = json!({"error": {"type": "illegal_argument_exception", "reason": e}, "status": 400});
            return (StatusCode::BAD_REQUEST, axum::Json(v)).into_response();
        }
    };
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = lock(&cx.state);
    st.items_received += items.len() as u64;
    let mut bulk = Bulk {
        at: Instant::now(),
        body: if keep { body.to_vec() } else { Vec::new() },
        items: items.clone(),
        authorization,
        newline_terminated: body.last() == Some(&b'\n'),
        statuses: Vec::new(),
        status: 200,
    };
    let forced = match cx.script.next() {
        Some(Reply::Whole(code, body)) => {
            bulk.status = code;
            st.bulks.push(bulk);
            return (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [("content-type", "application/json")],
                body,
            )
                .into_response();
        }
        Some(Reply::Items(s)) => s,
        None => Vec::new(),
    };
    let mut results = Vec::with_capacity(items.len());
    let mut errors = false;
    for (i, item) in items.iter().enumerate() {
        let status = match forced.get(i) {
            Some(&s) => s,
            None if item.op == "index" && st.data_streams.contains(&item.index) => 400,
            None if item.op == "create" && st.docs.contains_key(&item.id) => 409,
            None => 201,
        };
        if (200..300).contains(&status) && !st.docs.contains_key(&item.id) {
            st.docs.insert(
                item.id.clone(),
                (
                    item.index.clone(),
                    if keep {
                        item.source.clone()
                    } else {
                        String::new()
                    },
                ),
            );
            *st.created.entry(item.id.clone()).or_default() += 1;
        }
        let mut r = json!({"_index": item.index, "_id": item.id, "status": status});
        if !(200..300).contains(&status) {
            errors = true;
            let e = if status == 400 && item.op == "index" && st.data_streams.contains(&item.index)
            {
                json!({"type": "illegal_argument_exception", "reason": "only write ops with an op_type of create are allowed in data streams"})
            } else {
                error_for(status, &item.id)
            };
            r["error"] = e;
        } else {
            r["result"] = json!("created");
            r["_version"] = json!(1);
        }
        bulk.statuses.push(status);
        results.push(json!({ item.op.clone(): r }));
    }
    st.bulks.push(bulk);
    drop(st);
    axum::Json(json!({"took": 1, "errors": errors, "items": results})).into_response()
}

async fn bulk(State(cx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    bulk_handler(cx, None, headers, body).await
}

async fn bulk_index(
    State(cx): State<Ctx>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk_handler(cx, Some(index), headers, body).await
}

async fn template(State(cx): State<Ctx>, Path(name): Path<String>, body: Bytes) -> Response {
    if let Some((code, body)) = cx.template_script.next() {
        return (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response();
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut st = lock(&cx.state);
    if v.get("data_stream").is_some()
        && let Some(p) = v["index_patterns"].as_array()
    {
        st.data_streams
            .extend(p.iter().filter_map(|x| x.as_str().map(str::to_string)));
    }
    st.templates.insert(name, v);
    axum::Json(json!({"acknowledged": true})).into_response()
}

impl FakeElasticsearch {
    /// Starts on `addr`.
    pub async fn start(addr: std::net::SocketAddr) -> FakeElasticsearch {
        let state = Arc::new(Mutex::new(EsState {
            keep_bodies: true,
            ..EsState::default()
        }));
        let script = Arc::new(Script::default());
        let template_script = Arc::new(Script::default());
        let router = axum::Router::new()
            .route("/_bulk", axum::routing::post(bulk))
            .route("/{index}/_bulk", axum::routing::post(bulk_index))
            .route("/_index_template/{name}", axum::routing::put(template))
            .with_state(Ctx {
                state: state.clone(),
                script: script.clone(),
                template_script: template_script.clone(),
            });
        let server = Server::start(router, addr)
            .await
            .expect("starting the fake Elasticsearch");
        FakeElasticsearch {
            server,
            state,
            script,
            template_script,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Bulk requests received.
    pub fn bulks(&self) -> Vec<Bulk> {
        lock(&self.state).bulks.clone()
    }

    /// Documents stored.
    pub fn doc_count(&self) -> usize {
        lock(&self.state).docs.len()
    }

    /// Stored document sources parsed as JSON, by `_id`.
    pub fn docs(&self) -> BTreeMap<String, Value> {
        lock(&self.state)
            .docs
            .iter()
            .map(|(id, (_, src))| (id.clone(), serde_json::from_str(src).unwrap_or(Value::Null)))
            .collect()
    }

    /// Whether any `_id` was created more than once (never, by construction — asserted anyway).
    pub fn max_creations_per_id(&self) -> u32 {
        lock(&self.state)
            .created
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_bulk_body_parses() {
        let items = parse_bulk(
            include_bytes!("../../fixtures/real/elasticsearch/bulk-request-doc-example.ndjson"),
            None,
            true,
        )
        .expect("parse");
        let ops: Vec<&str> = items.iter().map(|i| i.op.as_str()).collect();
        assert_eq!(ops, ["index", "delete", "create", "update"]);
        assert_eq!(items[2].id, "3");
    }
}
