//! PagerDuty Events API v2 (`POST /v2/enqueue`).
//!
//! * `dedup_key` = the alert group key, so every retry, restart, replica or replay of the same
//!   group lands on the same PagerDuty alert; `trigger` while any finding fires, `resolve`
//!   when all have resolved.
//! * Severity: critical → `critical`, high → `error`, medium and low → `warning`, info →
//!   `info`.
//! * `summary` ≤ 1024 characters; `custom_details` carries the group labels and up to
//!   `max_findings_per_alert` findings (the body stays far below PagerDuty's 512 KB).
//! * Answers: `202` delivered; `429` retried (≈120 events/min per routing key) honouring
//!   `Retry-After`; `5xx` retried; `400` (invalid event) and other `4xx` dead-lettered.
//! * The routing key is the secret; it is in the body only.

use gpusiem_detect::{Severity, Status};
use serde_json::{Value, json};

use crate::config::Secret;
use crate::delivery::notifier::{Alert, Notifier, plain};
use crate::delivery::retry::{Failure, Outcome};
use crate::delivery::sink::{destination_hash, rfc3339_millis};

/// The default endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty severity of a finding severity.
pub fn pd_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium | Severity::Low => "warning",
        Severity::Info => "info",
    }
}

/// The PagerDuty notifier.
#[derive(Debug)]
pub struct PagerDuty {
    client: reqwest::Client,
    url: String,
    routing_key: Secret,
    source: Option<String>,
}

impl PagerDuty {
    /// A notifier for one routing key. `source` overrides the event source (default: the
    /// findings' cluster, else `gpusiem`).
    pub fn new(
        client: reqwest::Client,
        url: String,
        routing_key: Secret,
        source: Option<String>,
    ) -> PagerDuty {
        PagerDuty {
            client,
            url,
            routing_key,
            source,
        }
    }

    /// The event body for an alert.
    pub fn event(&self, a: &Alert) -> Value {
        event(a, self.routing_key.expose(), self.source.as_deref())
    }
}

/// The Events API v2 body of an alert.
pub fn event(a: &Alert, routing_key: &str, source: Option<&str>) -> Value {
    if a.status == Status::Resolved {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": a.group_key});
    }
    let first = a.findings.first();
    let summary = plain(
        &format!(
            "{} {}",
            a.title(),
            first.map(|f| f.summary.as_str()).unwrap_or("")
        ),
        1024,
    );
    let source = source
        .map(str::to_string)
        .or_else(|| first.and_then(|f| f.cluster.clone()))
        .unwrap_or_else(|| "gpusiem".to_string());
    let findings: Vec<Value> = a
        .findings
        .iter()
        .map(|f| {
            json!({
                "id": f.id, "detector": f.detector, "severity": f.severity.as_str(), "status": f.status.as_str(),
                "summary": plain(&f.summary, 1024), "namespace": f.namespace, "pod": f.pod, "node": f.node,
                "gpu_uuid": f.gpu_uuid, "role": f.role.as_str(), "mitre": f.mitre, "first_seen": rfc3339_millis(f.ts),
                "last_seen": rfc3339_millis(f.last_ts),
            })
        })
        .collect();
    let mut payload = json!({
        "summary": summary,
        "source": plain(&source, 255),
        "severity": pd_severity(a.severity),
        "timestamp": rfc3339_millis(a.ts),
        "custom_details": {
            "group": a.group_labels, "firing": a.firing, "resolved": a.resolved,
            "not_shown": a.truncated, "findings": findings,
        },
    });
    if let Some(d) = a
        .group_labels
        .get("detector")
        .or(first.map(|f| &f.detector))
    {
        payload["class"] = json!(plain(d, 255));
        payload["component"] = json!(plain(d, 255));
    }
    if let Some(ns) = a.group_labels.get("namespace").filter(|n| !n.is_empty()) {
        payload["group"] = json!(plain(ns, 255));
    }
    json!({"routing_key": routing_key, "event_action": "trigger", "dedup_key": a.group_key, "client": "gpusiem", "payload": payload})
}

impl Notifier for PagerDuty {
    async fn notify(&self, alert: &Alert) -> Outcome {
        let body = self.event(alert);
        let resp = match self.client.post(&self.url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(Failure::from_transport("pagerduty", e)),
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let headers = resp.headers().clone();
        let text = resp.bytes().await.unwrap_or_default();
        Outcome::Failed(Failure::from_status("pagerduty", status, &headers, &text))
    }

    fn destination(&self) -> String {
        destination_hash(&[&self.url, self.routing_key.expose()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(status: Status) -> Alert {
        Alert {
            group_key: "ab".repeat(32),
            receiver: "pagerduty".into(),
            status,
            group_labels: BTreeMap::from([
                ("detector".into(), "miner_fingerprint".into()),
                ("namespace".into(), "research".into()),
            ]),
            severity: Severity::Critical,
            firing: 1,
            resolved: 0,
            findings: vec![],
            truncated: 0,
            ts: 1_000_000_000,
        }
    }

    #[test]
    fn trigger_and_resolve_share_the_dedup_key() {
        let t = event(&alert(Status::Firing), "R".repeat(32).as_str(), None);
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "ab".repeat(32));
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["payload"]["source"], "gpusiem");
        assert_eq!(t["payload"]["class"], "miner_fingerprint");
        assert_eq!(t["payload"]["timestamp"], "1970-01-01T00:00:01.000Z");
        assert!(
            t["payload"]["summary"]
                .as_str()
                .expect("summary")
                .starts_with("[FIRING:1] miner_fingerprint")
        );
        let r = event(&alert(Status::Resolved), "R", None);
        assert_eq!(
            r,
            json!({"routing_key": "R", "event_action": "resolve", "dedup_key": "ab".repeat(32)})
        );
        // The same shape as PagerDuty's documented trigger example.
        let doc: Value = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/real/pagerduty/events-v2-trigger-doc-example.json"
        ))
        .expect("fixture");
        for key in ["routing_key", "event_action", "dedup_key", "payload"] {
            assert!(doc.get(key).is_some() && t.get(key).is_some(), "{key}");
        }
        for key in [
            "summary",
            "source",
            "severity",
            "timestamp",
            "custom_details",
        ] {
            assert!(
                doc["payload"].get(key).is_some() && t["payload"].get(key).is_some(),
                "{key}"
            );
        }
    }

    #[test]
    fn severities_map_to_the_four_pd_levels() {
        let got: Vec<&str> = Severity::ALL.iter().map(|s| pd_severity(*s)).collect();
        assert_eq!(got, ["info", "warning", "warning", "error", "critical"]);
    }
}
