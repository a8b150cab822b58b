//! The process's Prometheus registry and the pipeline's own metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use gpusiem_ingest::metrics::IngestMetrics;

/// Labels of finding counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    /// Detector or rule id.
    pub detector: String,
    /// Severity.
    pub severity: &'static str,
    /// `firing` or `resolved`.
    pub status: &'static str,
}

/// Pipeline and detection metrics.
#[derive(Clone, Debug, Default)]
pub struct PipelineMetrics {
    /// `gpusiem_pipeline_batches_total`.
    pub batches: Counter,
    /// `gpusiem_pipeline_batch_failures_total`: batches not written (not acknowledged).
    pub batch_failures: Counter,
    /// `gpusiem_detect_findings_total{detector,severity,status}`: finding emissions.
    pub findings: Family<FindingLabels, Counter>,
    /// `gpusiem_detect_series`: series with detector state.
    pub series: Gauge,
    /// `gpusiem_detect_state_bytes`: approximate detector state.
    pub state_bytes: Gauge,
    /// `gpusiem_pipeline_watermark_seconds`: event-time watermark.
    pub watermark_seconds: Gauge,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Ingest counters.
    pub ingest: IngestMetrics,
    /// Pipeline counters.
    pub pipeline: PipelineMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let ingest = IngestMetrics::register(&mut registry);
        let pipeline = PipelineMetrics::default();
        registry.register("gpusiem_pipeline_batches", "Batches processed", pipeline.batches.clone());
        registry.register("gpusiem_pipeline_batch_failures", "Batches not written and not acknowledged", pipeline.batch_failures.clone());
        registry.register("gpusiem_detect_findings", "Finding emissions by detector, severity and status", pipeline.findings.clone());
        registry.register("gpusiem_detect_series", "Series with detector state", pipeline.series.clone());
        registry.register("gpusiem_detect_state_bytes", "Approximate bytes of detector state", pipeline.state_bytes.clone());
        registry.register("gpusiem_pipeline_watermark_seconds", "Event-time watermark", pipeline.watermark_seconds.clone());
        Metrics { registry, ingest, pipeline }
    }

    /// Prometheus text (OpenMetrics) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
