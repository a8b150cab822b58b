//! Grafana Loki push API (`POST /loki/api/v1/push`), JSON or protobuf + snappy.
//!
//! * **Streams**: a fixed, low-cardinality label set — `source="gpusiem"`, `severity`,
//!   `detector` and `namespace` (when known). Pods, GPUs, nodes, ids and everything an attacker
//!   can influence go into the line and the structured metadata, never into labels.
//! * **Entries**: the timestamp is the emission's event time (`last_ts`, nanoseconds, as a
//!   string in JSON), never the send time, so a re-sent entry is identical and Loki drops the
//!   duplicate. The line is the finding as JSON, cut below `max_line_bytes` (Loki refuses lines
//!   over 256 KB): evidence and event ids go first, then the summary is shortened. Entries of
//!   a stream are sorted by time.
//! * **Answers**: 204 delivered; 429 and 5xx retried; 413 sends the batch again in halves;
//!   400 (out of order, too old, limits) is never retried — the batch goes to the dead-letter
//!   file with Loki's message.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gpusiem_detect::Finding;
use serde::Serialize;

use crate::config::Secret;
use crate::delivery::retry::{Failure, Outcome};
use crate::delivery::sink::{Sink, destination_hash};

/// Loki's push path, appended to the configured URL.
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// The one value of the `source` label.
pub const SOURCE_LABEL: &str = "gpusiem";

/// Longest label value sent (Loki's `max_label_value_length` is 2048).
const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Longest structured-metadata value sent.
const MAX_METADATA_VALUE_BYTES: usize = 1024;

/// Body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LokiEncoding {
    /// `application/json`.
    #[default]
    Json,
    /// `application/x-protobuf`, snappy block format.
    Protobuf,
}

/// Loki's protobuf push messages (`pkg/push/push.proto`), written by hand: no `protoc`.
pub mod proto {
    /// `logproto.PushRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        /// Streams.
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    /// `logproto.StreamAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        /// Prometheus selector text: `{a="b", c="d"}`.
        #[prost(string, tag = "1")]
        pub labels: String,
        /// Entries, oldest first.
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        /// Unused by clients.
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    /// `logproto.EntryAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        /// Entry time.
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        /// The line.
        #[prost(string, tag = "2")]
        pub line: String,
        /// Structured metadata.
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }

    /// `logproto.LabelPairAdapter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Timestamp {
        /// Seconds since the epoch.
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        /// Nanoseconds within the second.
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// How to authenticate to Loki (or the gateway in front of it).
#[derive(Debug, Clone)]
pub enum LokiAuth {
    /// None.
    None,
    /// HTTP basic.
    Basic {
        /// User.
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: Bearer`.
    Bearer(Secret),
}

/// The Loki sink.
#[derive(Debug)]
pub struct Loki {
    client: reqwest::Client,
    push_url: String,
    tenant: Option<String>,
    encoding: LokiEncoding,
    max_line_bytes: usize,
    auth: LokiAuth,
}

/// One entry: time, line and structured metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the epoch.
    pub ts: i64,
    /// The line.
    pub line: String,
    /// Structured metadata, name → value.
    pub metadata: Vec<(&'static str, String)>,
}

/// Streams of a batch: label set → entries (sorted by time).
pub type Streams = BTreeMap<Vec<(&'static str, String)>, Vec<Entry>>;

impl Loki {
    /// A sink pushing to `url` + [`PUSH_PATH`].
    pub fn new(
        client: reqwest::Client,
        url: &str,
        tenant: Option<String>,
        encoding: LokiEncoding,
        max_line_bytes: usize,
        auth: LokiAuth,
    ) -> Loki {
        let push_url = format!("{}{}", url.trim_end_matches('/'), PUSH_PATH);
        Loki {
            client,
            push_url,
            tenant,
            encoding,
            max_line_bytes,
            auth,
        }
    }

    /// Groups findings into streams.
    pub fn streams(&self, findings: &[Finding]) -> Streams {
        let mut streams: Streams = BTreeMap::new();
        for f in findings {
            let entry = Entry {
                ts: f.last_ts,
                line: line(f, self.max_line_bytes),
                metadata: metadata(f),
            };
            streams.entry(labels(f)).or_default().push(entry);
        }
        for entries in streams.values_mut() {
            entries.sort_by_key(|e| e.ts);
        }
        streams
    }

    /// The request body and its content type.
    pub fn body(&self, findings: &[Finding]) -> (Vec<u8>, &'static str) {
        let streams = self.streams(findings);
        match self.encoding {
            LokiEncoding::Json => (json_body(&streams), "application/json"),
            LokiEncoding::Protobuf => (protobuf_body(&streams), "application/x-protobuf"),
        }
    }
}

/// The fixed label set of a finding.
pub fn labels(f: &Finding) -> Vec<(&'static str, String)> {
    let mut l = vec![
        ("detector", label_value(&f.detector)),
        ("severity", f.severity.as_str().to_string()),
        ("source", SOURCE_LABEL.to_string()),
    ];
    if let Some(ns) = f.namespace.as_deref().filter(|n| !n.is_empty()) {
        l.push(("namespace", label_value(ns)));
    }
    l.sort();
    l
}

fn clean(v: &str, max: usize) -> String {
    let mut out = String::with_capacity(v.len().min(max));
    for c in v.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

fn label_value(v: &str) -> String {
    clean(v, MAX_LABEL_VALUE_BYTES)
}

/// Structured metadata of a finding: the high-cardinality identifiers.
pub fn metadata(f: &Finding) -> Vec<(&'static str, String)> {
    let mut m = vec![("finding_id", f.id.clone())];
    let opt = [
        ("cluster", &f.cluster),
        ("node", &f.node),
        ("pod", &f.pod),
        ("pod_uid", &f.pod_uid),
        ("container", &f.container),
        ("gpu_uuid", &f.gpu_uuid),
    ];
    for (k, v) in opt {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            m.push((k, clean(v, MAX_METADATA_VALUE_BYTES)));
        }
    }
    m.push(("status", f.status.as_str().to_string()));
    m.push(("revision", f.revision.to_string()));
    m.push(("role", f.role.as_str().to_string()));
    if !f.mitre.is_empty() {
        m.push(("mitre", clean(&f.mitre.join(","), MAX_METADATA_VALUE_BYTES)));
    }
    m
}

/// The finding as one JSON line of at most `max` bytes: without evidence and event ids when
/// too long (`"truncated":true`), then with a shortened summary.
pub fn line(f: &Finding, max: usize) -> String {
    let full = f.to_json();
    if full.len() <= max {
        return full;
    }
    let mut slim = f.clone();
    slim.evidence = serde_json::json!({"truncated": true});
    slim.event_ids.clear();
    let s = slim.to_json();
    if s.len() <= max {
        return s;
    }
    // Still too long: the summary (or role reason) is what is left to cut.
    let over = s.len() - max + 16;
    let keep = slim.summary.len().saturating_sub(over);
    let mut cut = keep;
    while cut > 0 && !slim.summary.is_char_boundary(cut) {
        cut -= 1;
    }
    slim.summary.truncate(cut);
    slim.summary.push('…');
    slim.role_reason = clean(&slim.role_reason, 256);
    let s = slim.to_json();
    if s.len() <= max {
        s
    } else {
        // Only absurd identifiers could get here; send something Loki accepts.
        serde_json::json!({"id": f.id, "detector": f.detector, "truncated": true}).to_string()
    }
}

#[derive(Serialize)]
struct JsonPush<'a> {
    streams: Vec<JsonStream<'a>>,
}

#[derive(Serialize)]
struct JsonStream<'a> {
    stream: BTreeMap<&'static str, &'a str>,
    values: Vec<(String, &'a str, BTreeMap<&'static str, &'a str>)>,
}

/// `{"streams":[{"stream":{…},"values":[["<ns>","<line>",{…}]]}]}`.
pub fn json_body(streams: &Streams) -> Vec<u8> {
    let push = JsonPush {
        streams: streams
            .iter()
            .map(|(labels, entries)| JsonStream {
                stream: labels.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                values: entries
                    .iter()
                    .map(|e| {
                        (
                            e.ts.to_string(),
                            e.line.as_str(),
                            e.metadata.iter().map(|(k, v)| (*k, v.as_str())).collect(),
                        )
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_vec(&push).expect("a push request always serialises")
}

/// A Prometheus selector for the labels: `{a="b", c="d\"e"}`.
pub fn selector(labels: &[(&'static str, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// Snappy (block format) of the protobuf `PushRequest`.
pub fn protobuf_body(streams: &Streams) -> Vec<u8> {
    use prost::Message;
    let req = proto::PushRequest {
        streams: streams
            .iter()
            .map(|(labels, entries)| proto::StreamAdapter {
                labels: selector(labels),
                entries: entries
                    .iter()
                    .map(|e| proto::EntryAdapter {
                        timestamp: Some(proto::Timestamp {
                            seconds: e.ts.div_euclid(1_000_000_000),
                            nanos: e.ts.rem_euclid(1_000_000_000) as i32,
                        }),
                        line: e.line.clone(),
                        structured_metadata: e
                            .metadata
                            .iter()
                            .map(|(k, v)| proto::LabelPairAdapter {
                                name: (*k).to_string(),
                                value: v.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
                hash: 0,
            })
            .collect(),
    };
    let raw = req.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any buffer below 4 GiB")
}

impl Sink for Loki {
    async fn send(&self, findings: &[Finding]) -> Outcome {
        let (body, content_type) = self.body(findings);
        let mut req = self
            .client
            .post(&self.push_url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(t) = &self.tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        req = match &self.auth {
            LokiAuth::None => req,
            LokiAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
            LokiAuth::Bearer(token) => req.bearer_auth(token.expose()),
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(Failure::from_transport("loki", e)),
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        Outcome::Failed(Failure::from_status("loki", status, &headers, &body))
    }

    fn destination(&self) -> String {
        destination_hash(&[&self.push_url, self.tenant.as_deref().unwrap_or("")])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpusiem_detect::{Severity, Status};

    pub(crate) fn finding(id: &str, ns: Option<&str>, ts: i64) -> Finding {
        Finding {
            id: id.into(),
            ts,
            last_ts: ts,
            detector: "gpu_memory_spike".into(),
            severity: Severity::High,
            status: Status::Firing,
            revision: 0,
            summary: "GPU memory 0 → 25971 MiB".into(),
            cluster: Some("prod".into()),
            namespace: ns.map(Into::into),
            pod: Some("web-1".into()),
            pod_uid: Some("uid-1".into()),
            container: Some("web".into()),
            node: Some("gpu-node-1".into()),
            gpu_uuid: Some("GPU-716284d3".into()),
            role: gpusiem_detect::role::Role::NonGpu,
            role_reason: "no nvidia.com/gpu request".into(),
            mitre: vec!["T1496".into()],
            evidence: serde_json::json!({"fb_used_mib": 25971}),
            event_ids: vec!["gpu_metrics:x@1".into()],
        }
    }

    fn loki(encoding: LokiEncoding) -> Loki {
        Loki::new(
            gpusiem_ingest::source::http_client_builder()
                .build()
                .expect("client"),
            "http://loki:3100/",
            Some("t".into()),
            encoding,
            250_000,
            LokiAuth::None,
        )
    }

    #[test]
    fn json_body_has_fixed_labels_string_timestamps_and_metadata() {
        let body = loki(LokiEncoding::Json)
            .body(&[
                finding("b", Some("ml"), 2_000),
                finding("a", Some("ml"), 1_000),
                finding("c", None, 5),
            ])
            .0;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let streams = v["streams"].as_array().expect("streams");
        assert_eq!(streams.len(), 2);
        for s in streams {
            let keys: Vec<&String> = s["stream"].as_object().expect("labels").keys().collect();
            assert!(
                keys.iter()
                    .all(|k| ["source", "severity", "detector", "namespace"].contains(&k.as_str())),
                "{keys:?}"
            );
        }
        let ml = streams
            .iter()
            .find(|s| s["stream"]["namespace"] == "ml")
            .expect("ml stream");
        assert_eq!(ml["values"][0][0], "1000");
        assert_eq!(ml["values"][1][0], "2000");
        assert_eq!(ml["values"][0][2]["pod"], "web-1");
        assert_eq!(ml["values"][0][2]["gpu_uuid"], "GPU-716284d3");
        let line: serde_json::Value =
            serde_json::from_str(ml["values"][0][1].as_str().expect("line")).expect("line json");
        assert_eq!(line["id"], "a");
    }

    #[test]
    fn long_lines_are_cut_below_the_limit() {
        let mut f = finding("a", Some("ml"), 1);
        f.evidence = serde_json::json!({"blob": "x".repeat(300_000)});
        let l = line(&f, 250_000);
        assert!(l.len() <= 250_000);
        assert!(l.contains("\"truncated\":true"));
        f.summary = "é".repeat(200_000);
        let l = line(&f, 250_000);
        assert!(l.len() <= 250_000, "{}", l.len());
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["id"], "a");
    }

    #[test]
    fn protobuf_round_trips_through_snappy() {
        use prost::Message;
        let mut f = finding("a", Some("we\"ird\\ns"), 1_500_000_000_123_456_789);
        f.pod = Some("p\nq".into());
        let body = loki(LokiEncoding::Protobuf).body(&[f]).0;
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy");
        let req = proto::PushRequest::decode(raw.as_slice()).expect("proto");
        assert_eq!(req.streams.len(), 1);
        let s = &req.streams[0];
        assert_eq!(
            s.labels,
            r#"{detector="gpu_memory_spike", namespace="we\"ird\\ns", severity="high", source="gpusiem"}"#
        );
        let e = &s.entries[0];
        assert_eq!(
            e.timestamp,
            Some(proto::Timestamp {
                seconds: 1_500_000_000,
                nanos: 123_456_789
            })
        );
        assert!(
            e.structured_metadata
                .iter()
                .any(|p| p.name == "pod" && p.value == "p q")
        );
    }
}
