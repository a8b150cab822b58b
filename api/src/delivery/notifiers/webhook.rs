//! Generic webhook notifier (for example Falco Talon, for response actions).
//!
//! `format = "alert"` (default) posts the [`Alert`] as JSON with `"version": "1"`.
//! `format = "falco"` posts each firing finding of the alert as a Falco event
//! (`rule`, `priority`, `output`, `time`, `source`, `hostname`, `tags`, `output_fields` with
//! `k8s.ns.name`, `k8s.pod.name`, …), the shape Falco Talon matches its rules on; one request
//! per finding, and a failure re-sends the whole alert (Talon actions should be idempotent).
//! `2xx` delivered; `408`/`429`/`5xx` retried; other `4xx` dead-lettered.

use gpusiem_detect::{Finding, Severity, Status};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Secret;
use crate::delivery::notifier::{Alert, Notifier, plain};
use crate::delivery::retry::{Failure, Outcome};
use crate::delivery::sink::{destination_hash, rfc3339_millis};

/// Body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert as JSON.
    #[default]
    Alert,
    /// One Falco-style event per firing finding.
    Falco,
}

/// The webhook notifier.
#[derive(Debug)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: String,
    format: WebhookFormat,
    bearer: Option<Secret>,
}

/// Falco priority of a finding severity.
pub fn falco_priority(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "Critical",
        Severity::High => "Error",
        Severity::Medium => "Warning",
        Severity::Low => "Notice",
        Severity::Info => "Informational",
    }
}

/// A finding as a Falco event.
pub fn falco_event(f: &Finding) -> Value {
    let mut fields = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            fields.insert(k.to_string(), json!(plain(v, 1024)));
        }
    };
    put("k8s.ns.name", &f.namespace);
    put("k8s.pod.name", &f.pod);
    put("container.name", &f.container);
    put("gpu.uuid", &f.gpu_uuid);
    put("k8s.cluster.name", &f.cluster);
    fields.insert("gpusiem.finding_id".into(), json!(f.id));
    fields.insert("gpusiem.severity".into(), json!(f.severity.as_str()));
    fields.insert("gpusiem.role".into(), json!(f.role.as_str()));
    let mut tags: Vec<String> = f.mitre.clone();
    tags.push("gpusiem".into());
    json!({
        "uuid": f.id,
        "output": plain(&f.summary, 4096),
        "priority": falco_priority(f.severity),
        "rule": f.detector,
        "time": rfc3339_millis(f.last_ts),
        "source": "gpusiem",
        "hostname": f.node.clone().unwrap_or_default(),
        "tags": tags,
        "output_fields": fields,
    })
}

impl WebhookNotifier {
    /// A notifier posting to `url`.
    pub fn new(
        client: reqwest::Client,
        url: String,
        format: WebhookFormat,
        bearer: Option<Secret>,
    ) -> WebhookNotifier {
        WebhookNotifier {
            client,
            url,
            format,
            bearer,
        }
    }

    async fn post(&self, body: &Value) -> Outcome {
        let mut req = self.client.post(&self.url).json(body);
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t.expose());
        }
        match req.send().await {
            Err(e) => Outcome::Failed(Failure::from_transport("webhook", e)),
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => {
                let status = r.status();
                let headers = r.headers().clone();
                let body = r.bytes().await.unwrap_or_default();
                Outcome::Failed(Failure::from_status("webhook", status, &headers, &body))
            }
        }
    }
}

impl Notifier for WebhookNotifier {
    async fn notify(&self, alert: &Alert) -> Outcome {
        match self.format {
            WebhookFormat::Alert => {
                let mut body = serde_json::to_value(alert).unwrap_or(Value::Null);
                body["version"] = json!("1");
                self.post(&body).await
            }
            WebhookFormat::Falco => {
                for f in alert.findings.iter().filter(|f| f.status == Status::Firing) {
                    let o = self.post(&falco_event(f)).await;
                    if o != Outcome::Delivered {
                        return o;
                    }
                }
                Outcome::Delivered
            }
        }
    }

    fn destination(&self) -> String {
        destination_hash(&[&self.url])
    }
}
