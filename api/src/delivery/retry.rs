//! What a send attempt did, and what happens next: the one place that decides retries.
//!
//! * `2xx` → delivered.
//! * `408`, `429`, `5xx` (but `501`) and connection errors → retried with capped, jittered
//!   exponential backoff, never sooner than a `Retry-After` header asks.
//! * `413` → the batch is split in halves and each half sent on its own; a single item that
//!   is still too large is dead-lettered.
//! * Any other `4xx` → not retried: the items go to the dead-letter file with the reason.
//! * A notifier may say the destination is gone for good (Slack `404`/`410`): it stops.
//!
//! Elasticsearch answers per item inside a `200`; [`Outcome::Items`] carries those results and
//! the worker re-sends only the items marked [`ItemOutcome::Retry`].

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// What to do about a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send again after a backoff.
    Retry,
    /// Never send again; dead-letter the items.
    Reject,
    /// The destination no longer exists: dead-letter these items and everything after them.
    Gone,
    /// The request was too large (413): send the items in smaller batches; dead-letter an
    /// item that is refused alone.
    Split,
}

/// Why a request failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Retry, reject or stop.
    pub action: Action,
    /// What went wrong, for logs and the dead-letter file (no URLs, no secrets).
    pub reason: String,
    /// The receiver's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A retryable failure.
    pub fn retry(reason: impl Into<String>) -> Failure {
        Failure {
            action: Action::Retry,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A permanent rejection.
    pub fn reject(reason: impl Into<String>) -> Failure {
        Failure {
            action: Action::Reject,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The failure for an HTTP status that is not a success, with the receiver's body excerpt.
    pub fn from_status(
        receiver: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Failure {
        let reason = format!("{receiver} answered {}: {}", status.as_u16(), excerpt(body));
        let action = if is_retryable(status) {
            Action::Retry
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            Action::Split
        } else {
            Action::Reject
        };
        Failure {
            action,
            reason,
            retry_after: retry_after(headers),
        }
    }

    /// The failure for a transport error (connection refused, reset, timeout): retryable.
    /// The URL is removed from the message (it may hold a token, as Slack's does).
    pub fn from_transport(receiver: &str, err: reqwest::Error) -> Failure {
        let err = err.without_url();
        let mut reason = format!("{receiver} unreachable: {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        Failure::retry(reason)
    }
}

/// The result of sending one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every item was accepted.
    Delivered,
    /// The request failed as a whole; nothing was accepted.
    Failed(Failure),
    /// Per-item results, one per item sent, in order.
    Items(Vec<ItemOutcome>),
}

/// The result for one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Accepted (or already there: an Elasticsearch `409` on `create`).
    Delivered,
    /// Send this item again.
    Retry(String),
    /// Never send this item again.
    Reject(String),
}

/// Whether an HTTP status is worth retrying: 408, 429 and 5xx except 501 (Not Implemented).
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// `Retry-After` as seconds or an HTTP date; `None` when absent or unreadable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// At most 300 characters of a response body, control characters replaced: enough to say why
/// a receiver refused something, never a whole payload.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .trim()
        .chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().count() > 300 {
        out.push('…');
    }
    out
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry), given a uniform random
    /// `unit` in `[0, 1)`: `min(max, initial · 2^attempt)` scaled by a factor in `[0.75, 1]`,
    /// never below `initial`. The jitter spreads retries of many targets; the floor keeps
    /// the first retry where the receiver's documentation puts it.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let factor = 0.75 + 0.25 * unit.clamp(0.0, 1.0);
        base.mul_f64(factor)
            .max(self.initial)
            .min(self.max.max(self.initial))
    }

    /// [`Backoff::delay`] with a random jitter, and at least `retry_after` (capped at one hour).
    pub fn next(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let d = self.delay(attempt, rand::random::<f64>());
        match retry_after {
            Some(ra) => d.max(ra.min(Duration::from_secs(3600))),
            None => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        // Without jitter (unit = 1): 1, 2, 4, 8, 16, 30, 30.
        let exact: Vec<u64> = (0..7).map(|a| b.delay(a, 1.0).as_secs()).collect();
        assert_eq!(exact, [1, 2, 4, 8, 16, 30, 30]);
        // With jitter: within [0.75, 1] of the base, never below the initial delay.
        for a in 0..40 {
            for u in [0.0, 0.3, 0.999] {
                let d = b.delay(a, u);
                let base = Duration::from_secs(1u64 << a.min(5)).min(Duration::from_secs(30));
                assert!(
                    d <= base && d >= base.mul_f64(0.75).max(Duration::from_secs(1)),
                    "{a} {u} {d:?}"
                );
            }
        }
        assert!(b.delay(3, 0.0) < b.delay(3, 1.0));
        let l = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(300),
        };
        assert_eq!(l.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(l.delay(20, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn retry_after_wins_over_a_shorter_backoff() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        assert_eq!(
            b.next(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert!(b.next(0, None) <= Duration::from_millis(10));
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 410, 413, 501] {
            assert!(
                !is_retryable(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
    }

    #[test]
    fn too_large_splits_and_other_refusals_reject() {
        let h = HeaderMap::new();
        let action = |s: u16| {
            Failure::from_status("r", StatusCode::from_u16(s).expect("status"), &h, b"").action
        };
        assert_eq!(action(413), Action::Split);
        assert_eq!(action(400), Action::Reject);
        assert_eq!(action(429), Action::Retry);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "30".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "soon".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn excerpts_are_short_and_clean() {
        assert_eq!(excerpt(b"  ok\n"), "ok");
        assert_eq!(excerpt(b"a\x1b[31mb"), "a [31mb");
        assert_eq!(excerpt(&[b'x'; 1000]).chars().count(), 301);
    }
}
