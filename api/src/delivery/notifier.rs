//! Notifiers: who is told (Slack, PagerDuty, a webhook), once per alert group.
//!
//! The router (`router.rs`) groups findings Alertmanager-style and, when a group is due,
//! writes one [`Alert`] — the group's state — into the notifier's outbox. The shared worker
//! reads it back and calls [`Notifier::notify`], with the notifier's rate limit, retries and
//! dead-letter file.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gpusiem_detect::{Finding, Severity, Status};
use serde::{Deserialize, Serialize};

use super::retry::{Failure, Outcome};
use super::worker::Target;

/// One notification: the state of an alert group when it was flushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// SHA-256 (hex) of the route, the receiver and the group's label values: stable across
    /// restarts, replicas and replays. It is the PagerDuty `dedup_key`.
    pub group_key: String,
    /// The notifier's name.
    pub receiver: String,
    /// `firing` while any finding in the group fires, `resolved` once all have resolved.
    pub status: Status,
    /// The `group_by` fields and their values.
    pub group_labels: BTreeMap<String, String>,
    /// The highest severity among the firing findings (among all when resolved).
    pub severity: Severity,
    /// Firing findings in the group.
    pub firing: usize,
    /// Resolved findings in this notification.
    pub resolved: usize,
    /// The findings, firing first, most severe first; at most `max_findings_per_alert`.
    pub findings: Vec<Finding>,
    /// Findings left out of `findings`.
    pub truncated: usize,
    /// When the group was flushed (router clock: wall time, or event time in a replay), ns.
    pub ts: i64,
}

impl Alert {
    /// `[FIRING:3] gpu_memory_spike namespace=shop` — the one-line title.
    pub fn title(&self) -> String {
        let count = match self.status {
            Status::Firing => self.firing,
            Status::Resolved => self.resolved,
        };
        let mut t = format!("[{}:{}]", self.status.as_str().to_uppercase(), count);
        let detector = self
            .group_labels
            .get("detector")
            .cloned()
            .or_else(|| self.findings.first().map(|f| f.detector.clone()));
        if let Some(d) = detector {
            t.push(' ');
            t.push_str(&d);
        }
        for (k, v) in &self.group_labels {
            if k != "detector" && !v.is_empty() {
                t.push_str(&format!(" {k}={v}"));
            }
        }
        t
    }
}

/// A destination for alert-group notifications.
///
/// **Contract.** The notifier's worker calls [`Notifier::notify`] with one alert at a time,
/// in outbox order, never concurrently, and no sooner than [`Notifier::min_interval`] after the
/// previous call. `notify` makes the request(s) and reports the outcome — it never retries,
/// sleeps or panics: `Action::Retry` for 429/5xx/transport errors (with the receiver's
/// `Retry-After`), `Action::Reject` for refusals, `Action::Gone` when the destination no longer
/// exists (the worker then dead-letters everything for it until an operator intervenes).
/// Repeated calls with the same alert must be harmless at the receiver (PagerDuty de-duplicates
/// on `dedup_key` = [`Alert::group_key`]). **Shutdown:** the future is dropped; the alert stays
/// in the outbox.
pub trait Notifier: Send + Sync + 'static {
    /// Sends one notification.
    fn notify(&self, alert: &Alert) -> impl Future<Output = Outcome> + Send;

    /// The least time between two notifications (Slack: 1 s per webhook).
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// A stable hash of the destination, never the secret itself.
    fn destination(&self) -> String;
}

/// Runs a [`Notifier`] under the shared worker (batches of one).
pub(crate) struct NotifierTarget<N>(pub Arc<N>);

impl<N: Notifier> Target for NotifierTarget<N> {
    type Item = Alert;

    async fn prepare(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn send(&self, items: &[Alert]) -> Outcome {
        // The worker reads batches of one for notifiers; be safe with more.
        let mut last = Outcome::Delivered;
        for a in items {
            last = self.0.notify(a).await;
            if last != Outcome::Delivered {
                break;
            }
        }
        if items.len() > 1 && last != Outcome::Delivered {
            return Outcome::Failed(Failure::retry("a notification of the batch failed"));
        }
        last
    }

    fn min_interval(&self) -> Duration {
        self.0.min_interval()
    }

    fn destination(&self) -> String {
        self.0.destination()
    }
}

/// Text for Slack `mrkdwn` from untrusted input: `&`, `<`, `>` escaped (so `<!channel>`,
/// `<@U…>` and `<http://x|y>` stay text), control characters (ANSI, CR, LF) replaced by
/// spaces, backticks by quotes (they would close a code span), at most `max` characters.
pub fn slack_escape(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 8);
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters, control characters replaced (PagerDuty, webhooks).
pub fn plain(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_cannot_mention_or_link() {
        let s = slack_escape(
            "<!channel> & <@U123> <http://evil|click> `x` \x1b[31mred\r\n",
            1000,
        );
        assert!(!s.contains('<') && !s.contains('>'));
        assert!(s.contains("&lt;!channel&gt;"));
        assert!(s.contains("&amp;"));
        assert!(!s.contains('\x1b') && !s.contains('\n') && !s.contains('`'));
        assert_eq!(slack_escape("abcdef", 3), "abc…");
    }

    #[test]
    fn plain_text_is_capped() {
        assert_eq!(plain("a\nb", 10), "a b");
        assert_eq!(plain(&"x".repeat(2000), 1024).chars().count(), 1024);
    }
}
