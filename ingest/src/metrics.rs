//! Ingest metrics: rows decoded, records quarantined (by reason), bytes read, source errors.
//!
//! Registered into the process's one [`Registry`]; labels are low-cardinality only (stream,
//! source kind, reason), never pod names or payload values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::decode::Reason;
use crate::schema::Stream;

/// Labels of per-stream, per-source counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Stream name.
    pub stream: &'static str,
    /// Source kind: `http`, `file`, `kafka`, `dcgm_scrape`, `replay`.
    pub source: &'static str,
}

/// Labels of quarantine counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    /// Stream name.
    pub stream: &'static str,
    /// Quarantine reason.
    pub reason: &'static str,
}

/// Labels of source error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Source kind.
    pub source: &'static str,
    /// What failed (`scrape`, `decode`, `commit`, `read`, `rejected_full`, …).
    pub error: &'static str,
}

/// Handles to the ingest counters. Cheap to clone (they share the underlying atomics).
#[derive(Clone, Debug, Default)]
pub struct IngestMetrics {
    /// `gpusiem_ingest_rows_total{stream,source}`: rows decoded and handed to the pipeline.
    pub rows: Family<SourceLabels, Counter>,
    /// `gpusiem_ingest_bytes_total{stream,source}`: input bytes read.
    pub bytes: Family<SourceLabels, Counter>,
    /// `gpusiem_ingest_quarantined_total{stream,reason}`: records quarantined.
    pub quarantined: Family<QuarantineLabels, Counter>,
    /// `gpusiem_ingest_quarantine_dropped_total`: quarantined records not written because the
    /// quarantine file reached its size limit (still counted in `quarantined`).
    pub quarantine_dropped: Counter,
    /// `gpusiem_ingest_source_errors_total{source,error}`: transport errors and refusals.
    pub source_errors: Family<ErrorLabels, Counter>,
}

impl IngestMetrics {
    /// Creates the counters and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = IngestMetrics::default();
        registry.register(
            "gpusiem_ingest_rows",
            "Rows decoded and handed to the pipeline",
            m.rows.clone(),
        );
        registry.register(
            "gpusiem_ingest_bytes",
            "Input bytes read by sources",
            m.bytes.clone(),
        );
        registry.register(
            "gpusiem_ingest_quarantined",
            "Records quarantined, by reason",
            m.quarantined.clone(),
        );
        registry.register(
            "gpusiem_ingest_quarantine_dropped",
            "Quarantined records not written because the quarantine file is full",
            m.quarantine_dropped.clone(),
        );
        registry.register(
            "gpusiem_ingest_source_errors",
            "Source transport errors and refusals",
            m.source_errors.clone(),
        );
        m
    }

    /// Creates the series of a (stream, source) pair at 0, and its quarantine series for every
    /// reason, so dashboards and `rate()` see a configured source before its first row (and a
    /// quarantine reason before its first record) instead of no data.
    pub fn expect_source(&self, stream: Stream, source: &'static str) {
        let labels = SourceLabels {
            stream: stream.name(),
            source,
        };
        let _ = self.rows.get_or_create(&labels);
        let _ = self.bytes.get_or_create(&labels);
        for reason in Reason::ALL {
            let _ = self.quarantined.get_or_create(&QuarantineLabels {
                stream: stream.name(),
                reason: reason.as_str(),
            });
        }
    }

    /// Counts decoded rows and input bytes.
    pub fn record_rows(&self, stream: Stream, source: &'static str, rows: usize, bytes: usize) {
        let labels = SourceLabels {
            stream: stream.name(),
            source,
        };
        self.rows.get_or_create(&labels).inc_by(rows as u64);
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Counts one quarantined record.
    pub fn record_quarantined(&self, stream: Stream, reason: Reason) {
        self.quarantined
            .get_or_create(&QuarantineLabels {
                stream: stream.name(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a source error.
    pub fn record_error(&self, source: &'static str, error: &'static str) {
        self.source_errors
            .get_or_create(&ErrorLabels { source, error })
            .inc();
    }

    /// Total quarantined records over every stream and reason.
    pub fn quarantined_total(&self) -> u64 {
        let mut total = 0;
        for stream in Stream::ALL {
            for reason in Reason::ALL {
                if let Some(c) = self.quarantined.get(&QuarantineLabels {
                    stream: stream.name(),
                    reason: reason.as_str(),
                }) {
                    total += c.get();
                }
            }
        }
        total
    }
}
