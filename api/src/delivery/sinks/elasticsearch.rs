//! Elasticsearch `_bulk` with `create` and deterministic `_id`s, ECS documents.
//!
//! * **Idempotent**: every action is `create` with `_id` = the finding id (for a later emission
//!   of the same episode, `<id>.<revision>`), so a replay or a re-send after a crash answers
//!   `409 version_conflict_engine_exception`, which counts as delivered — a finding is never
//!   indexed twice. `create` is also the only operation data streams accept.
//! * **Where**: a data stream (`mode = "data_stream"`, the default) or index named `index`, or
//!   a daily index `<index>-YYYY.MM.DD` from the finding's event time (`mode =
//!   "dated_index"`, the date clamped to the present so a wild timestamp cannot create odd
//!   indices). Names are validated in the configuration, never taken from findings.
//! * **Template**: at start (`install_template = true`) an index template with the ECS
//!   mapping is installed (`PUT _index_template/<index>`); a 401/403 means the credentials may
//!   not, which is logged and delivery goes on.
//! * **Answers**: `200` with `errors: false` → all delivered. `200` with `errors: true` → per
//!   item: 2xx and 409 delivered, 429 and 5xx retried (only those items), other 4xx
//!   dead-lettered with `error.type: reason`. A whole-request 429 or 5xx is retried, other
//!   4xx dead-letter the batch.

use std::collections::BTreeMap;

use gpusiem_detect::{Finding, Severity};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::delivery::retry::{Failure, ItemOutcome, Outcome, excerpt, is_retryable};
use crate::delivery::sink::{Sink, destination_hash, rfc3339_millis};

/// Where documents go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexMode {
    /// A data stream named `index` (needs the template, installed at start).
    #[default]
    DataStream,
    /// A plain index named `index`.
    Index,
    /// Daily indices `<index>-YYYY.MM.DD` by event time.
    DatedIndex,
}

/// How to authenticate.
#[derive(Debug, Clone)]
pub enum EsAuth {
    /// None.
    None,
    /// `Authorization: ApiKey <encoded key>`.
    ApiKey(Secret),
    /// HTTP basic.
    Basic {
        /// User.
        username: String,
        /// Password.
        password: Secret,
    },
}

/// The Elasticsearch sink.
#[derive(Debug)]
pub struct Elasticsearch {
    client: reqwest::Client,
    base: String,
    index: String,
    mode: IndexMode,
    auth: EsAuth,
    install_template: bool,
}

/// ECS `event.severity` of a finding severity (Elastic's risk-score scale).
pub fn ecs_severity(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Low => 21,
        Severity::Medium => 47,
        Severity::High => 73,
        Severity::Critical => 99,
    }
}

/// The document `_id` of one emission: the finding id for the first, `<id>.<revision>` after.
pub fn document_id(f: &Finding) -> String {
    if f.revision == 0 {
        f.id.clone()
    } else {
        format!("{}.{}", f.id, f.revision)
    }
}

#[derive(Serialize)]
struct Doc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    message: &'a str,
    event: Event<'a>,
    rule: Rule<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orchestrator: Option<Orchestrator<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<Named<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Named<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threat: Option<Threat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu: Option<Gpu<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    related: Option<Related<'a>>,
    gpusiem: Custom<'a>,
}

#[derive(Serialize)]
struct Event<'a> {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_type: [&'static str; 1],
    severity: u8,
    id: &'a str,
    provider: &'a str,
    module: &'static str,
    dataset: &'static str,
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
}

#[derive(Serialize)]
struct Rule<'a> {
    id: &'a str,
    name: &'a str,
    ruleset: &'static str,
}

#[derive(Serialize)]
struct Orchestrator<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Named<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Resource<'a>>,
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Threat<'a> {
    framework: &'static str,
    technique: Technique<'a>,
}

#[derive(Serialize)]
struct Technique<'a> {
    id: &'a [String],
}

#[derive(Serialize)]
struct Gpu<'a> {
    uuid: &'a str,
}

#[derive(Serialize)]
struct Related<'a> {
    hosts: [&'a str; 1],
}

#[derive(Serialize)]
struct Custom<'a> {
    finding_id: &'a str,
    revision: u32,
    status: &'static str,
    severity: &'static str,
    role: &'static str,
    role_reason: &'a str,
    event_ids: &'a [String],
    evidence: &'a serde_json::Value,
}

/// The ECS document of a finding.
pub fn document(f: &Finding) -> serde_json::Value {
    serde_json::to_value(doc(f)).expect("a document always serialises")
}

fn doc(f: &Finding) -> Doc<'_> {
    let resolved = f.status == gpusiem_detect::Status::Resolved;
    Doc {
        timestamp: rfc3339_millis(f.last_ts),
        message: &f.summary,
        event: Event {
            kind: "alert",
            category: ["intrusion_detection"],
            kind_type: [if resolved { "end" } else { "info" }],
            severity: ecs_severity(f.severity),
            id: &f.id,
            provider: &f.detector,
            module: "gpusiem",
            dataset: "gpusiem.findings",
            start: rfc3339_millis(f.ts),
            end: resolved.then(|| rfc3339_millis(f.last_ts)),
        },
        rule: Rule {
            id: &f.detector,
            name: &f.detector,
            ruleset: "gpusiem",
        },
        orchestrator: (f.cluster.is_some() || f.namespace.is_some() || f.pod.is_some()).then(
            || Orchestrator {
                kind: "kubernetes",
                cluster: f.cluster.as_deref().map(|name| Named { name }),
                namespace: f.namespace.as_deref(),
                resource: f.pod.as_deref().map(|name| Resource {
                    kind: "pod",
                    name,
                    id: f.pod_uid.as_deref(),
                }),
            },
        ),
        container: f.container.as_deref().map(|name| Named { name }),
        host: f.node.as_deref().map(|name| Named { name }),
        threat: (!f.mitre.is_empty()).then(|| Threat {
            framework: "MITRE ATT&CK",
            technique: Technique { id: &f.mitre },
        }),
        gpu: f.gpu_uuid.as_deref().map(|uuid| Gpu { uuid }),
        related: f.node.as_deref().map(|n| Related { hosts: [n] }),
        gpusiem: Custom {
            finding_id: &f.id,
            revision: f.revision,
            status: f.status.as_str(),
            severity: f.severity.as_str(),
            role: f.role.as_str(),
            role_reason: &f.role_reason,
            event_ids: &f.event_ids,
            evidence: &f.evidence,
        },
    }
}

/// The index template body for `index` in `mode`.
pub fn template(index: &str, mode: IndexMode) -> serde_json::Value {
    let kw = serde_json::json!({"type": "keyword"});
    let date = serde_json::json!({"type": "date"});
    let mut t = serde_json::json!({
        "index_patterns": [if mode == IndexMode::DatedIndex { format!("{index}-*") } else { index.to_string() }],
        "priority": 200,
        "_meta": {"managed_by": "gpusiem", "description": "gpusiem findings, ECS"},
        "template": {
            "mappings": {
                "properties": {
                    "@timestamp": date,
                    "message": {"type": "match_only_text"},
                    "event": {"properties": {
                        "kind": kw, "category": kw, "type": kw, "severity": {"type": "long"}, "id": kw,
                        "provider": kw, "module": kw, "dataset": kw, "start": date, "end": date
                    }},
                    "rule": {"properties": {"id": kw, "name": kw, "ruleset": kw}},
                    "orchestrator": {"properties": {
                        "type": kw, "cluster": {"properties": {"name": kw}}, "namespace": kw,
                        "resource": {"properties": {"type": kw, "name": kw, "id": kw}}
                    }},
                    "container": {"properties": {"name": kw, "id": kw}},
                    "host": {"properties": {"name": kw}},
                    "threat": {"properties": {"framework": kw, "technique": {"properties": {"id": kw}}}},
                    "gpu": {"properties": {"uuid": kw}},
                    "related": {"properties": {"hosts": kw}},
                    "gpusiem": {"properties": {
                        "finding_id": kw, "revision": {"type": "long"}, "status": kw, "severity": kw,
                        "role": kw, "role_reason": {"type": "match_only_text"}, "event_ids": kw,
                        "evidence": {"type": "flattened"}
                    }}
                }
            }
        }
    });
    if mode == IndexMode::DataStream {
        t["data_stream"] = serde_json::json!({});
    }
    t
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<BTreeMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<BulkError>,
}

#[derive(Deserialize)]
struct BulkError {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    reason: String,
}

impl Elasticsearch {
    /// A sink writing to `url` (the cluster's base URL).
    pub fn new(
        client: reqwest::Client,
        url: &str,
        index: String,
        mode: IndexMode,
        auth: EsAuth,
        install_template: bool,
    ) -> Elasticsearch {
        Elasticsearch {
            client,
            base: url.trim_end_matches('/').to_string(),
            index,
            mode,
            auth,
            install_template,
        }
    }

    /// The index or data stream a finding goes to.
    pub fn index_for(&self, f: &Finding) -> String {
        match self.mode {
            IndexMode::DataStream | IndexMode::Index => self.index.clone(),
            IndexMode::DatedIndex => {
                let now = gpusiem_ingest::source::now_nanos();
                // Clamp: not before 2000, not after tomorrow.
                let ts = f.last_ts.clamp(
                    946_684_800_000_000_000,
                    now.saturating_add(86_400_000_000_000),
                );
                format!(
                    "{}-{}",
                    self.index,
                    chrono::DateTime::from_timestamp_nanos(ts).format("%Y.%m.%d")
                )
            }
        }
    }

    /// The NDJSON bulk body: one `create` action and one document per finding, every line
    /// ending in `\n`.
    pub fn bulk_body(&self, findings: &[Finding]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Create<'a> {
            create: Meta<'a>,
        }
        #[derive(Serialize)]
        struct Meta<'a> {
            #[serde(rename = "_index")]
            index: &'a str,
            #[serde(rename = "_id")]
            id: &'a str,
        }
        let mut out = Vec::with_capacity(findings.len() * 1024);
        for f in findings {
            let index = self.index_for(f);
            let id = document_id(f);
            serde_json::to_writer(
                &mut out,
                &Create {
                    create: Meta {
                        index: &index,
                        id: &id,
                    },
                },
            )
            .expect("an action serialises");
            out.push(b'\n');
            serde_json::to_writer(&mut out, &doc(f)).expect("a document serialises");
            out.push(b'\n');
        }
        out
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            EsAuth::None => req,
            EsAuth::ApiKey(key) => req.header(
                reqwest::header::AUTHORIZATION,
                format!("ApiKey {}", key.expose()),
            ),
            EsAuth::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        }
    }
}

/// Reads a bulk response: `None` when it is not one.
pub fn parse_bulk_response(body: &[u8], n: usize) -> Option<Outcome> {
    let r: BulkResponse = serde_json::from_slice(body).ok()?;
    if !r.errors {
        return Some(Outcome::Delivered);
    }
    if r.items.len() != n {
        return Some(Outcome::Items(
            r.items.iter().map(|_| ItemOutcome::Delivered).collect(),
        ));
    }
    let results = r
        .items
        .into_iter()
        .map(|item| {
            let Some((_, it)) = item.into_iter().next() else {
                return ItemOutcome::Retry("empty bulk item".into());
            };
            let status = reqwest::StatusCode::from_u16(it.status)
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_success() || status == reqwest::StatusCode::CONFLICT {
                return ItemOutcome::Delivered;
            }
            let why = match &it.error {
                Some(e) => format!(
                    "elasticsearch item {}: {}: {}",
                    it.status,
                    e.kind,
                    excerpt(e.reason.as_bytes())
                ),
                None => format!("elasticsearch item {}", it.status),
            };
            if is_retryable(status) {
                ItemOutcome::Retry(why)
            } else {
                ItemOutcome::Reject(why)
            }
        })
        .collect();
    Some(Outcome::Items(results))
}

impl Sink for Elasticsearch {
    async fn start(&self) -> Result<(), Failure> {
        if !self.install_template {
            return Ok(());
        }
        let url = format!("{}/_index_template/{}", self.base, self.index);
        let req = self
            .authorize(self.client.put(&url))
            .json(&template(&self.index, self.mode));
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::from_transport("elasticsearch", e))?;
        let status = resp.status();
        if status.is_success() {
            tracing::info!(index = %self.index, "elasticsearch index template installed");
            return Ok(());
        }
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        Err(Failure::from_status(
            "elasticsearch (index template)",
            status,
            &headers,
            &body,
        ))
    }

    async fn send(&self, findings: &[Finding]) -> Outcome {
        let body = self.bulk_body(findings);
        let url = format!(
            "{}/_bulk?filter_path=errors,items.*.status,items.*.error",
            self.base
        );
        let req = self
            .authorize(self.client.post(&url))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(Failure::from_transport("elasticsearch", e)),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(Failure::from_transport("elasticsearch", e)),
        };
        if !status.is_success() {
            return Outcome::Failed(Failure::from_status(
                "elasticsearch",
                status,
                &headers,
                &body,
            ));
        }
        match parse_bulk_response(&body, findings.len()) {
            Some(Outcome::Items(items)) if items.len() != findings.len() => {
                Outcome::Failed(Failure::retry(format!(
                    "elasticsearch answered for {} of {} items",
                    items.len(),
                    findings.len()
                )))
            }
            Some(o) => o,
            None => Outcome::Failed(Failure::retry(format!(
                "elasticsearch answered {status} with an unreadable body: {}",
                excerpt(&body)
            ))),
        }
    }

    fn destination(&self) -> String {
        destination_hash(&[&self.base, &self.index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpusiem_detect::Status;

    fn finding(id: &str) -> Finding {
        Finding {
            id: id.into(),
            ts: 1_715_108_059_341_081_180,
            last_ts: 1_715_108_060_000_000_000,
            detector: "gpu_memory_spike".into(),
            severity: Severity::High,
            status: Status::Firing,
            revision: 0,
            summary: "spike".into(),
            cluster: Some("prod".into()),
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            pod_uid: Some("uid".into()),
            container: Some("web".into()),
            node: Some("gpu-node-1".into()),
            gpu_uuid: Some("GPU-1".into()),
            role: gpusiem_detect::role::Role::NonGpu,
            role_reason: "r".into(),
            mitre: vec!["T1496".into()],
            evidence: serde_json::json!({"fb_used_mib": 25971}),
            event_ids: vec![],
        }
    }

    fn es(mode: IndexMode) -> Elasticsearch {
        Elasticsearch::new(
            gpusiem_ingest::source::http_client_builder()
                .build()
                .expect("client"),
            "http://es:9200/",
            "gpusiem-findings".into(),
            mode,
            EsAuth::None,
            true,
        )
    }

    #[test]
    fn documents_use_ecs_names() {
        let d = document(&finding("a"));
        assert_eq!(d["@timestamp"], "2024-05-07T18:54:20.000Z");
        assert_eq!(d["event"]["kind"], "alert");
        assert_eq!(d["event"]["severity"], 73);
        assert_eq!(d["rule"]["name"], "gpu_memory_spike");
        assert_eq!(d["orchestrator"]["namespace"], "shop");
        assert_eq!(d["orchestrator"]["resource"]["name"], "web-1");
        assert_eq!(d["container"]["name"], "web");
        assert_eq!(d["threat"]["technique"]["id"][0], "T1496");
        assert_eq!(d["gpu"]["uuid"], "GPU-1");
    }

    #[test]
    fn bulk_body_is_create_with_ids_and_ends_in_newline() {
        let mut second = finding("b");
        second.revision = 2;
        let body = es(IndexMode::DataStream).bulk_body(&[finding("a"), second]);
        let text = String::from_utf8(body).expect("utf8");
        assert!(text.ends_with('\n'));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            serde_json::json!({"create": {"_index": "gpusiem-findings", "_id": "a"}})
        );
        assert_eq!(lines[2]["create"]["_id"], "b.2");
        let dated = es(IndexMode::DatedIndex).index_for(&finding("a"));
        assert_eq!(dated, "gpusiem-findings-2024.05.07");
        let mut wild = finding("w");
        wild.last_ts = i64::MAX;
        assert!(es(IndexMode::DatedIndex).index_for(&wild).as_str() < "gpusiem-findings-2100");
    }

    #[test]
    fn real_bulk_responses_are_classified_per_item() {
        let partial = include_bytes!(
            "../../../../tests/fixtures/real/elasticsearch/bulk-response-partial-failure-doc-example.json"
        );
        let Some(Outcome::Items(items)) = parse_bulk_response(partial, 3) else {
            panic!("items")
        };
        assert!(
            matches!(items[0], ItemOutcome::Reject(ref r) if r.contains("document_missing_exception"))
        );
        assert_eq!(items[2], ItemOutcome::Delivered);
        let ds = include_bytes!(
            "../../../../tests/fixtures/real/elasticsearch/bulk-response-datastream-index-op-rejected.json"
        );
        let Some(Outcome::Items(items)) = parse_bulk_response(ds, 1) else {
            panic!("items")
        };
        assert!(
            matches!(items[0], ItemOutcome::Reject(ref r) if r.contains("only write ops with an op_type of create"))
        );
        let item429 = std::str::from_utf8(include_bytes!(
            "../../../../tests/fixtures/real/elasticsearch/bulk-item-429-write-queue-full.json"
        ))
        .expect("utf8");
        let body = format!(
            r#"{{"errors":true,"items":[{item429},{{"create":{{"status":409,"error":{{"type":"version_conflict_engine_exception","reason":"exists"}}}}}}]}}"#
        );
        let Some(Outcome::Items(items)) = parse_bulk_response(body.as_bytes(), 2) else {
            panic!("items")
        };
        assert!(
            matches!(items[0], ItemOutcome::Retry(ref r) if r.contains("es_rejected_execution_exception"))
        );
        assert_eq!(items[1], ItemOutcome::Delivered);
        assert_eq!(
            parse_bulk_response(br#"{"took":3,"errors":false,"items":[]}"#, 5),
            Some(Outcome::Delivered)
        );
        assert_eq!(parse_bulk_response(b"<html>", 1), None);
    }

    #[test]
    fn template_matches_mode() {
        let t = template("gpusiem-findings", IndexMode::DataStream);
        assert_eq!(t["index_patterns"][0], "gpusiem-findings");
        assert!(t.get("data_stream").is_some());
        let t = template("gpusiem-findings", IndexMode::DatedIndex);
        assert_eq!(t["index_patterns"][0], "gpusiem-findings-*");
        assert!(t.get("data_stream").is_none());
    }
}
