//! Delivery metrics and the accounting invariant.
//!
//! Per target (`sink:<name>`, `notifier:<name>`, `router`), every item that entered the outbox
//! ends in exactly one of four places, so at any moment
//!
//! ```text
//! received = delivered + queued + dead_lettered{reason} + dropped{reason}
//! ```
//!
//! holds exactly (Vector's instrumentation contract). Retries are not drops and are counted
//! separately. Items recovered from the outbox at startup are counted as received again by the
//! new process (and records found corrupt as received and dropped with reason `corrupt`), so the
//! invariant holds within every process lifetime.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of per-target metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// `sink:<name>`, `notifier:<name>` or `router` (names come from the configuration).
    pub target: String,
}

/// Labels of per-target, per-reason counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The target.
    pub target: String,
    /// A fixed, low-cardinality reason (see [`DeadLetterReason`] and [`DropReason`]).
    pub reason: &'static str,
}

/// Why items went to the dead-letter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The receiver refused them for good (4xx other than 408/429, Elasticsearch item 4xx).
    Rejected,
    /// The destination is gone (Slack 404/410): the notifier stopped for good.
    Gone,
    /// `request.retry_max_attempts` was reached.
    RetriesExhausted,
    /// The outbox record could not be decoded into an item.
    Undecodable,
}

impl DeadLetterReason {
    /// Every reason, so a target's series exist (at 0) before anything went wrong.
    pub const ALL: [DeadLetterReason; 4] = [
        DeadLetterReason::Rejected,
        DeadLetterReason::Gone,
        DeadLetterReason::RetriesExhausted,
        DeadLetterReason::Undecodable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Gone => "gone",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
            DeadLetterReason::Undecodable => "undecodable",
        }
    }
}

/// Why items were dropped (never delivered, not in the dead-letter file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The outbox was full and `buffer.when_full = "drop_newest"`.
    OutboxFull,
    /// The outbox record was lost to corruption or truncation found at startup.
    Corrupt,
    /// Router: every group the finding was in was silenced.
    Silenced,
    /// Router: every group the finding was in was inhibited.
    Inhibited,
    /// Router: the finding no longer matches any route (the configuration changed).
    Unrouted,
}

impl DropReason {
    /// Every reason, so a target's series exist (at 0) before anything was dropped.
    pub const ALL: [DropReason; 5] = [
        DropReason::OutboxFull,
        DropReason::Corrupt,
        DropReason::Silenced,
        DropReason::Inhibited,
        DropReason::Unrouted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::OutboxFull => "outbox_full",
            DropReason::Corrupt => "corrupt",
            DropReason::Silenced => "silenced",
            DropReason::Inhibited => "inhibited",
            DropReason::Unrouted => "unrouted",
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Handles to the delivery metrics. Cheap to clone (shared atomics).
#[derive(Clone, Debug)]
pub struct DeliveryMetrics {
    /// `gpusiem_delivery_received_total{target}`: items written to the outbox (and recovered).
    pub received: Family<TargetLabels, Counter>,
    /// `gpusiem_delivery_delivered_total{target}`: items the receiver acknowledged.
    pub delivered: Family<TargetLabels, Counter>,
    /// `gpusiem_delivery_queued{target}`: items in the outbox, not yet settled.
    pub queued: Family<TargetLabels, Gauge>,
    /// `gpusiem_delivery_dead_lettered_total{target,reason}`.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// `gpusiem_delivery_dropped_total{target,reason}`.
    pub dropped: Family<ReasonLabels, Counter>,
    /// `gpusiem_delivery_retries_total{target}`: requests that will be sent again.
    pub retries: Family<TargetLabels, Counter>,
    /// `gpusiem_delivery_requests_total{target}`: requests sent.
    pub requests: Family<TargetLabels, Counter>,
    /// `gpusiem_delivery_outbox_bytes{target}`: bytes of outbox segments on disk.
    pub outbox_bytes: Family<TargetLabels, Gauge>,
    /// `gpusiem_delivery_latency_seconds{target}`: from outbox write to acknowledgement.
    pub latency: Family<TargetLabels, Histogram, fn() -> Histogram>,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            received: Family::default(),
            delivered: Family::default(),
            queued: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            retries: Family::default(),
            requests: Family::default(),
            outbox_bytes: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl DeliveryMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = DeliveryMetrics::default();
        registry.register(
            "gpusiem_delivery_received",
            "Items written to a delivery outbox (or recovered from it at startup)",
            m.received.clone(),
        );
        registry.register(
            "gpusiem_delivery_delivered",
            "Items the receiver acknowledged",
            m.delivered.clone(),
        );
        registry.register(
            "gpusiem_delivery_queued",
            "Items in a delivery outbox, not yet settled",
            m.queued.clone(),
        );
        registry.register(
            "gpusiem_delivery_dead_lettered",
            "Items written to the dead-letter file, by reason",
            m.dead_lettered.clone(),
        );
        registry.register(
            "gpusiem_delivery_dropped",
            "Items dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "gpusiem_delivery_retries",
            "Requests that failed and will be sent again",
            m.retries.clone(),
        );
        registry.register(
            "gpusiem_delivery_requests",
            "Requests sent to a receiver",
            m.requests.clone(),
        );
        registry.register(
            "gpusiem_delivery_outbox_bytes",
            "Bytes of outbox segments on disk",
            m.outbox_bytes.clone(),
        );
        registry.register(
            "gpusiem_delivery_latency_seconds",
            "Time from outbox write to acknowledgement",
            m.latency.clone(),
        );
        m
    }

    /// The counters of one target.
    ///
    /// Creates every series of the target at 0, so dashboards and `rate()` see the target from
    /// its start rather than from its first failure.
    pub fn target(&self, target: &str) -> TargetMetrics {
        let t = TargetLabels {
            target: target.to_string(),
        };
        for r in DeadLetterReason::ALL {
            let _ = self.dead_lettered.get_or_create(&ReasonLabels {
                target: target.to_string(),
                reason: r.as_str(),
            });
        }
        for r in DropReason::ALL {
            let _ = self.dropped.get_or_create(&ReasonLabels {
                target: target.to_string(),
                reason: r.as_str(),
            });
        }
        TargetMetrics {
            name: target.to_string(),
            received: self.received.get_or_create(&t).clone(),
            delivered: self.delivered.get_or_create(&t).clone(),
            queued: self.queued.get_or_create(&t).clone(),
            retries: self.retries.get_or_create(&t).clone(),
            requests: self.requests.get_or_create(&t).clone(),
            outbox_bytes: self.outbox_bytes.get_or_create(&t).clone(),
            latency: self.latency.get_or_create(&t).clone(),
            family: self.clone(),
        }
    }

    /// A snapshot of one target's accounting (tests, `drain` logs).
    pub fn accounting(&self, target: &str) -> Accounting {
        let t = TargetLabels {
            target: target.to_string(),
        };
        let sum = |f: &Family<ReasonLabels, Counter>, reasons: &[&'static str]| -> u64 {
            reasons
                .iter()
                .map(|r| {
                    f.get_or_create(&ReasonLabels {
                        target: target.to_string(),
                        reason: r,
                    })
                    .get()
                })
                .sum()
        };
        Accounting {
            received: self.received.get_or_create(&t).get(),
            delivered: self.delivered.get_or_create(&t).get(),
            queued: u64::try_from(self.queued.get_or_create(&t).get()).unwrap_or(0),
            dead_lettered: sum(
                &self.dead_lettered,
                &DeadLetterReason::ALL.map(DeadLetterReason::as_str),
            ),
            dropped: sum(&self.dropped, &DropReason::ALL.map(DropReason::as_str)),
            retries: self.retries.get_or_create(&t).get(),
        }
    }
}

/// One target's counters.
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    name: String,
    /// Received.
    pub received: Counter,
    /// Delivered.
    pub delivered: Counter,
    /// Queued.
    pub queued: Gauge,
    /// Retries.
    pub retries: Counter,
    /// Requests.
    pub requests: Counter,
    /// Outbox bytes.
    pub outbox_bytes: Gauge,
    /// Latency.
    pub latency: Histogram,
    family: DeliveryMetrics,
}

impl TargetMetrics {
    /// Counts `n` dead-lettered items.
    pub fn dead_lettered(&self, reason: DeadLetterReason, n: u64) {
        self.family
            .dead_lettered
            .get_or_create(&ReasonLabels {
                target: self.name.clone(),
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    /// Counts `n` dropped items.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.family
            .dropped
            .get_or_create(&ReasonLabels {
                target: self.name.clone(),
                reason: reason.as_str(),
            })
            .inc_by(n);
    }
}

/// One target's accounting at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accounting {
    /// Items received.
    pub received: u64,
    /// Items delivered.
    pub delivered: u64,
    /// Items queued.
    pub queued: u64,
    /// Items dead-lettered (every reason).
    pub dead_lettered: u64,
    /// Items dropped (every reason).
    pub dropped: u64,
    /// Requests retried.
    pub retries: u64,
}

impl Accounting {
    /// Whether `received = delivered + queued + dead_lettered + dropped`.
    pub fn balanced(&self) -> bool {
        self.received == self.delivered + self.queued + self.dead_lettered + self.dropped
    }
}
