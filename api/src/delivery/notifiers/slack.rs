//! Slack incoming webhook: one Block Kit message per alert group notification.
//!
//! * **Text** from findings is escaped (`&`, `<`, `>`), so a pod name or Falco field holding
//!   `<!channel>` or `<http://x|y>` cannot mention or link; control characters are replaced and
//!   lengths capped (section text ≤ 3000 characters, ≤ 50 blocks).
//! * **Rate**: at most one message per `min_interval_ms` (1 s, Slack's limit per webhook); a
//!   `429` is retried no sooner than its `Retry-After`.
//! * **Answers** are plain text: `200 ok` delivered; `404 channel_not_found`,
//!   `404 no_service` and `410 channel_is_archived` mean the webhook is gone — the notifier
//!   stops for good (queued and later alerts go to the dead-letter file); other `4xx` are
//!   dead-lettered; `5xx` retried.
//! * The webhook URL is the secret: it is never logged (transport errors are stripped of it).

use std::time::Duration;

use gpusiem_detect::{Finding, Status};
use serde_json::{Value, json};

use crate::config::Secret;
use crate::delivery::notifier::{Alert, Notifier, slack_escape};
use crate::delivery::retry::{Action, Failure, Outcome};
use crate::delivery::sink::destination_hash;

/// Findings listed in one message; the rest are counted.
pub const DEFAULT_MAX_FINDINGS: usize = 10;

/// The Slack notifier.
#[derive(Debug)]
pub struct Slack {
    client: reqwest::Client,
    webhook_url: Secret,
    min_interval: Duration,
    max_findings: usize,
}

impl Slack {
    /// A notifier posting to the webhook URL.
    pub fn new(
        client: reqwest::Client,
        webhook_url: Secret,
        min_interval: Duration,
        max_findings: usize,
    ) -> Slack {
        Slack {
            client,
            webhook_url,
            min_interval,
            max_findings,
        }
    }
}

fn emoji(a: &Alert) -> &'static str {
    match a.status {
        Status::Resolved => ":white_check_mark:",
        Status::Firing => match a.severity {
            gpusiem_detect::Severity::Critical => ":rotating_light:",
            gpusiem_detect::Severity::High => ":red_circle:",
            gpusiem_detect::Severity::Medium => ":large_orange_circle:",
            _ => ":large_blue_circle:",
        },
    }
}

fn finding_line(f: &Finding) -> String {
    let e = |s: &str| slack_escape(s, 200);
    let mut where_ = Vec::new();
    match (&f.namespace, &f.pod) {
        (Some(ns), Some(pod)) => where_.push(format!("`{}/{}`", e(ns), e(pod))),
        (Some(ns), None) => where_.push(format!("namespace `{}`", e(ns))),
        (None, Some(pod)) => where_.push(format!("pod `{}`", e(pod))),
        (None, None) => {}
    }
    if let Some(n) = &f.node {
        where_.push(format!("node `{}`", e(n)));
    }
    if let Some(g) = &f.gpu_uuid {
        where_.push(format!("GPU `{}`", e(g)));
    }
    if !f.mitre.is_empty() {
        where_.push(e(&f.mitre.join(", ")));
    }
    let state = if f.status == Status::Resolved {
        " (resolved)"
    } else {
        ""
    };
    format!(
        "*{}*{} {}\n{} · role `{}` · id `{}`",
        f.severity.as_str(),
        state,
        slack_escape(&f.summary, 1500),
        where_.join(" · "),
        f.role.as_str(),
        e(&f.id)
    )
}

/// The webhook body of an alert: `text` (the notification fallback) and `blocks`.
pub fn payload(a: &Alert, max_findings: usize) -> Value {
    let title = slack_escape(&a.title(), 200);
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("{} *{}* · severity *{}*", emoji(a), title, a.severity.as_str())}
    })];
    let fields: Vec<Value> = a
        .group_labels
        .iter()
        .take(10)
        .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{}*\n{}", slack_escape(k, 50), if v.is_empty() { "-".to_string() } else { slack_escape(v, 200) })}))
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    let shown = a.findings.len().min(max_findings).min(45);
    for f in &a.findings[..shown] {
        let mut text = finding_line(f);
        if text.chars().count() > 2900 {
            text = text.chars().take(2900).collect();
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    let more = a.truncated + (a.findings.len() - shown);
    let mut context = format!(
        "{} firing · {} resolved · gpusiem · group `{}`",
        a.firing,
        a.resolved,
        &a.group_key[..a.group_key.len().min(12)]
    );
    if more > 0 {
        context = format!("…and {more} more · {context}");
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));
    json!({"text": format!("{} {}", title, a.findings.first().map(|f| slack_escape(&f.summary, 300)).unwrap_or_default()), "blocks": blocks})
}

impl Notifier for Slack {
    async fn notify(&self, alert: &Alert) -> Outcome {
        let body = payload(alert, self.max_findings);
        let resp = match self
            .client
            .post(self.webhook_url.expose())
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(Failure::from_transport("slack", e)),
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        let headers = resp.headers().clone();
        let text = resp.bytes().await.unwrap_or_default();
        let mut f = Failure::from_status("slack", status, &headers, &text);
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            f.action = Action::Gone;
        }
        Outcome::Failed(f)
    }

    fn min_interval(&self) -> Duration {
        self.min_interval
    }

    fn destination(&self) -> String {
        destination_hash(&[self.webhook_url.expose()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(summary: &str, n: usize) -> Alert {
        let f = Finding {
            id: "abc".into(),
            ts: 0,
            last_ts: 0,
            detector: "gpu_memory_spike".into(),
            severity: gpusiem_detect::Severity::High,
            status: Status::Firing,
            revision: 0,
            summary: summary.into(),
            cluster: None,
            namespace: Some("shop".into()),
            pod: Some("<!here>".into()),
            pod_uid: None,
            container: None,
            node: Some("n1".into()),
            gpu_uuid: Some("GPU-1".into()),
            role: gpusiem_detect::role::Role::NonGpu,
            role_reason: String::new(),
            mitre: vec!["T1496".into()],
            evidence: serde_json::Value::Null,
            event_ids: vec![],
        };
        Alert {
            group_key: "k".repeat(64),
            receiver: "slack".into(),
            status: Status::Firing,
            group_labels: BTreeMap::from([
                ("detector".into(), "gpu_memory_spike".into()),
                ("namespace".into(), "shop".into()),
            ]),
            severity: gpusiem_detect::Severity::High,
            firing: n,
            resolved: 0,
            findings: vec![f; n.min(20)],
            truncated: n.saturating_sub(20),
            ts: 0,
        }
    }

    #[test]
    fn payload_has_text_blocks_and_no_injection() {
        let p = payload(
            &alert("miner <!channel> at <http://evil.example|here> & more", 25),
            10,
        );
        let text = p.to_string();
        assert!(
            !text.contains("<!channel>") && !text.contains("<!here>") && !text.contains("<http"),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt;"));
        assert!(
            p["text"]
                .as_str()
                .expect("text")
                .starts_with("[FIRING:25] gpu_memory_spike namespace=shop")
        );
        let blocks = p["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 1 + 1 + 10 + 1);
        assert!(
            blocks
                .last()
                .expect("context")
                .to_string()
                .contains("and 15 more")
        );
    }
}
