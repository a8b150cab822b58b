//! A fake Loki distributor: `POST /loki/api/v1/push`, JSON or snappy protobuf.
//!
//! Like Loki it answers `204` with an empty body; refuses a JSON timestamp that is not a
//! string, a line over `max_line_size` (256 KB), more than 15 labels or a label value over 2048
//! bytes with `400`; with `unordered_writes = false` refuses an entry older than the stream's
//! newest with the real "entry out of order" message; drops an entry identical (time and line)
//! to one it has. Scripted answers reproduce the real 429 / 400 / 413 / 5xx bodies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gpusiem::delivery::sinks::loki::proto;
use prost::Message;

use super::{Script, Server, lock};

/// Loki's default `max_line_size`.
pub const MAX_LINE_SIZE: usize = 256 * 1024;

/// The real 429 body (kubernetes-sigs/cluster-api#7275, fixtures/real/loki).
pub const RATE_LIMITED: &str = "Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while attempting to ingest '1000' lines totaling '755293' bytes, reduce log volume or contact your Loki administrator to see if the limit can be increased";

/// The real 400 "too far behind" body (grafana/loki#12933).
pub const TOO_FAR_BEHIND: &str = "entry with timestamp 2024-05-06 15:58:50 +0000 UTC ignored, reason: 'entry too far behind, oldest acceptable timestamp is: 2024-05-07T10:25:30Z',";

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and body; nothing is stored.
    Status(u16, String),
}

impl Reply {
    /// `429` with the real rate-limit message.
    pub fn rate_limited() -> Reply {
        Reply::Status(429, RATE_LIMITED.into())
    }

    /// `400` "entry out of order" (the real message of grafana/loki#4467).
    pub fn out_of_order() -> Reply {
        let line = include_str!("../../fixtures/real/loki/error-responses-real.txt")
            .lines()
            .nth(1)
            .unwrap_or("entry out of order");
        Reply::Status(
            400,
            line.trim_start_matches("server returned HTTP status 400 Bad Request (400): ")
                .to_string(),
        )
    }

    /// `413`.
    pub fn too_large() -> Reply {
        Reply::Status(413, "Request Entity Too Large".into())
    }
}

/// One entry as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds.
    pub ts: i64,
    /// The line.
    pub line: String,
    /// Structured metadata.
    pub metadata: BTreeMap<String, String>,
}

/// One push request as received.
#[derive(Debug, Clone)]
pub struct Push {
    /// Arrival.
    pub at: Instant,
    /// `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// `Content-Type`.
    pub content_type: String,
    /// Whether the JSON timestamps were strings (always true for protobuf).
    pub string_timestamps: bool,
    /// Streams: label set → entries.
    pub streams: Vec<(BTreeMap<String, String>, Vec<Entry>)>,
    /// The answer given.
    pub status: u16,
}

impl Push {
    /// Every entry of the push.
    pub fn entries(&self) -> impl Iterator<Item = (&BTreeMap<String, String>, &Entry)> {
        self.streams
            .iter()
            .flat_map(|(l, es)| es.iter().map(move |e| (l, e)))
    }
}

/// What the fake holds.
#[derive(Debug, Default)]
pub struct LokiState {
    /// Every push, answered or not.
    pub pushes: Vec<Push>,
    /// Stored entries per stream (selector text) — only from accepted pushes.
    pub stored: HashMap<String, Vec<Entry>>,
    /// (stream, ts, line) seen, to drop duplicates like Loki.
    seen: HashSet<(String, i64, String)>,
    /// Refuse out-of-order entries (Loki before 2.4).
    pub ordered: bool,
}

/// The fake Loki.
#[derive(Debug)]
pub struct FakeLoki {
    /// The server.
    pub server: Server,
    /// Recorded state.
    pub state: Arc<Mutex<LokiState>>,
    /// Scripted answers.
    pub script: Arc<Script<Reply>>,
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<LokiState>>,
    script: Arc<Script<Reply>>,
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn parse_selector(s: &str) -> Option<BTreeMap<String, String>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(name, value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(out)
}

type Decoded = (Vec<(BTreeMap<String, String>, Vec<Entry>)>, bool);

fn decode_json(body: &[u8]) -> Result<Decoded, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("error parsing push request: {e}"))?;
    let strings = true;
    let mut out = Vec::new();
    for s in v["streams"].as_array().ok_or("no streams")? {
        let labels: BTreeMap<String, String> = s["stream"]
            .as_object()
            .ok_or("stream without labels")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let mut entries = Vec::new();
        for v in s["values"].as_array().ok_or("no values")? {
            let ts = match &v[0] {
                serde_json::Value::String(s) => s.parse::<i64>().map_err(|_| "timestamp is not a number".to_string())?,
                _ => return Err("loghttp.PushRequest.Streams: []*loghttp.Stream: unmarshalerDecoder: Value is number, not string".into()),
            };
            let line = v[1].as_str().ok_or("line is not a string")?.to_string();
            let metadata = v
                .get(2)
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            entries.push(Entry { ts, line, metadata });
        }
        out.push((labels, entries));
    }
    Ok((out, strings))
}

fn decode_protobuf(body: &[u8]) -> Result<Decoded, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let req = proto::PushRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let mut out = Vec::new();
    for s in req.streams {
        let labels =
            parse_selector(&s.labels).ok_or_else(|| format!("bad selector {}", s.labels))?;
        let entries = s
            .entries
            .into_iter()
            .map(|e| {
                let t = e.timestamp.unwrap_or_default();
                Entry {
                    ts: t.seconds * 1_000_000_000 + i64::from(t.nanos),
                    line: e.line,
                    metadata: e
                        .structured_metadata
                        .into_iter()
                        .map(|p| (p.name, p.value))
                        .collect(),
                }
            })
            .collect();
        out.push((labels, entries));
    }
    Ok((out, true))
}

async fn push(State(cx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let tenant = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let decoded = if content_type.starts_with("application/x-protobuf") {
        decode_protobuf(&body)
    } else {
        decode_json(&body)
    };
    let mut st = lock(&cx.state);
    let (streams, strings) = match decoded {
        Ok(d) => d,
        Err(e) => {
            st.pushes.push(Push {
                at: Instant::now(),
                tenant,
                content_type,
                string_timestamps: false,
                streams: vec![],
                status: 400,
            });
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    let mut record = Push {
        at: Instant::now(),
        tenant,
        content_type,
        string_timestamps: strings,
        streams: streams.clone(),
        status: 204,
    };
    if let Some(Reply::Status(code, body)) = cx.script.next() {
        record.status = code;
        st.pushes.push(record);
        return (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response();
    }
    // Loki's own validation.
    let mut refusal = None;
    for (labels, entries) in &streams {
        if labels.len() > 15 {
            refusal = Some(format!(
                "entry for stream '{}' has {} label names; limit 15",
                selector(labels),
                labels.len()
            ));
        }
        if let Some((k, _)) = labels.iter().find(|(_, v)| v.len() > 2048) {
            refusal = Some(format!("label value too long for label {k}"));
        }
        for e in entries {
            if e.line.len() > MAX_LINE_SIZE {
                refusal = Some(format!(
                    "Max entry size '{MAX_LINE_SIZE}' bytes exceeded for stream '{}' while adding an entry with length '{}' bytes",
                    selector(labels),
                    e.line.len()
                ));
            }
        }
    }
    if let Some(r) = refusal {
        record.status = 400;
        st.pushes.push(record);
        return (StatusCode::BAD_REQUEST, r).into_response();
    }
    let mut out_of_order = None;
    for (labels, entries) in &streams {
        let sel = selector(labels);
        for e in entries {
            let newest = st.stored.get(&sel).and_then(|v| v.last()).map(|l| l.ts);
            if st.ordered && newest.is_some_and(|n| e.ts < n) {
                out_of_order = Some(format!(
                    "entry with timestamp {} ignored, reason: 'entry out of order' for stream: {sel},",
                    e.ts
                ));
                continue;
            }
            if st.seen.insert((sel.clone(), e.ts, e.line.clone())) {
                st.stored.entry(sel.clone()).or_default().push(e.clone());
            }
        }
    }
    if let Some(r) = out_of_order {
        // Loki stores the in-order entries and refuses the push.
        record.status = 400;
        st.pushes.push(record);
        return (StatusCode::BAD_REQUEST, r).into_response();
    }
    st.pushes.push(record);
    StatusCode::NO_CONTENT.into_response()
}

impl FakeLoki {
    /// Starts on `addr` (`fakes::any_port()` for any).
    pub async fn start(addr: std::net::SocketAddr) -> FakeLoki {
        let state = Arc::new(Mutex::new(LokiState::default()));
        let script = Arc::new(Script::default());
        let router = axum::Router::new()
            .route("/loki/api/v1/push", axum::routing::post(push))
            .with_state(Ctx {
                state: state.clone(),
                script: script.clone(),
            });
        let server = Server::start(router, addr)
            .await
            .expect("starting the fake Loki");
        FakeLoki {
            server,
            state,
            script,
        }
    }

    /// The base URL (`/loki/api/v1/push` is appended by the sink).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Pushes received (answered or not).
    pub fn pushes(&self) -> Vec<Push> {
        lock(&self.state).pushes.clone()
    }

    /// Entries stored, across streams.
    pub fn stored_entries(&self) -> usize {
        lock(&self.state).stored.values().map(Vec::len).sum()
    }

    /// Stored lines parsed as JSON findings.
    pub fn stored_findings(&self) -> Vec<serde_json::Value> {
        lock(&self.state)
            .stored
            .values()
            .flatten()
            .filter_map(|e| serde_json::from_str(&e.line).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_round_trip() {
        let l = BTreeMap::from([
            ("a".to_string(), "x\"y\\z".to_string()),
            ("b".to_string(), "w".to_string()),
        ]);
        let text = gpusiem::delivery::sinks::loki::selector(
            &l.iter()
                .map(|(k, v)| (if k == "a" { "a" } else { "b" }, v.clone()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(parse_selector(&text), Some(l));
    }

    #[test]
    fn the_documented_json_bodies_decode() {
        for body in [
            &include_bytes!("../../fixtures/real/loki/push-json-doc-example.json")[..],
            &include_bytes!(
                "../../fixtures/real/loki/falcosidekick-loki-push-from-falco-event.json"
            )[..],
        ] {
            let (streams, strings) = decode_json(body).expect("decode");
            assert!(strings);
            assert_eq!(streams.len(), 1);
        }
        assert!(
            decode_json(
                br#"{"streams":[{"stream":{"a":"b"},"values":[[1570818238000000000,"x"]]}]}"#
            )
            .is_err()
        );
    }
}
