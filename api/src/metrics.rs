//! The process's Prometheus registry and the pipeline's own metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use gpusiem_ingest::metrics::IngestMetrics;

use crate::delivery::metrics::DeliveryMetrics;

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
    /// `gpusiem_detect_rule_matches_total{rule}`: events that matched each loaded rule's
    /// detection (before correlation and deduplication).
    pub rule_matches: Family<RuleLabels, Counter>,
    /// `gpusiem_detect_late_events_total`: events correlations dropped for arriving later
    /// than `allowed_lateness_secs`.
    pub late_events: Counter,
    /// `gpusiem_detect_inventory_pods`: pods the inventory knows (deleted ones within their
    /// grace period included).
    pub inventory_pods: Gauge,
}

/// Labels of per-rule counters: the rule's name (from the loaded rule files, so bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Rule name.
    pub rule: String,
}

/// Labels of API request counters: the route template (never the raw path), the method and
/// the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// Route template (`/api/v1/findings/{id}`), or `unmatched`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of API duration histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRouteLabels {
    /// Route template, or `unmatched`.
    pub route: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// HTTP API metrics.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    /// `gpusiem_api_requests_total{route,method,status}`.
    pub requests: Family<ApiRequestLabels, Counter>,
    /// `gpusiem_api_request_duration_seconds{route}`.
    pub duration: Family<ApiRouteLabels, Histogram, fn() -> Histogram>,
    /// `gpusiem_api_auth_failures_total{reason}`: 401 and 403 answers.
    pub auth_failures: Family<ApiReasonLabels, Counter>,
    /// `gpusiem_api_audit_failures_total`: `api_audit` rows that could not be written.
    pub audit_failures: Counter,
    /// `gpusiem_api_query_rows_total`: rows returned by `/api/v1/query`.
    pub query_rows: Counter,
    /// `gpusiem_api_queries_in_flight`: SQL queries running now.
    pub queries_in_flight: Gauge,
}

/// Labels of counters by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiReasonLabels {
    /// `missing`, `invalid`, `scope`.
    pub reason: &'static str,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            auth_failures: Family::default(),
            audit_failures: Counter::default(),
            query_rows: Counter::default(),
            queries_in_flight: Gauge::default(),
        }
    }
}

impl ApiMetrics {
    fn register(registry: &mut Registry) -> ApiMetrics {
        let m = ApiMetrics::default();
        registry.register(
            "gpusiem_api_requests",
            "API requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "gpusiem_api_request_duration_seconds",
            "API request duration by route",
            m.duration.clone(),
        );
        registry.register(
            "gpusiem_api_auth_failures",
            "Requests refused with 401 or 403, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "gpusiem_api_audit_failures",
            "api_audit rows that could not be written",
            m.audit_failures.clone(),
        );
        registry.register(
            "gpusiem_api_query_rows",
            "Rows returned by SQL queries",
            m.query_rows.clone(),
        );
        registry.register(
            "gpusiem_api_queries_in_flight",
            "SQL queries running now",
            m.queries_in_flight.clone(),
        );
        m
    }
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
    /// HTTP API counters.
    pub api: ApiMetrics,
    /// Delivery accounting (`gpusiem_delivery_*`).
    pub delivery: DeliveryMetrics,
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
        registry.register(
            "gpusiem_pipeline_batches",
            "Batches processed",
            pipeline.batches.clone(),
        );
        registry.register(
            "gpusiem_pipeline_batch_failures",
            "Batches not written and not acknowledged",
            pipeline.batch_failures.clone(),
        );
        registry.register(
            "gpusiem_detect_findings",
            "Finding emissions by detector, severity and status",
            pipeline.findings.clone(),
        );
        registry.register(
            "gpusiem_detect_series",
            "Series with detector state",
            pipeline.series.clone(),
        );
        registry.register(
            "gpusiem_detect_state_bytes",
            "Approximate bytes of detector state",
            pipeline.state_bytes.clone(),
        );
        registry.register(
            "gpusiem_pipeline_watermark_seconds",
            "Event-time watermark",
            pipeline.watermark_seconds.clone(),
        );
        registry.register(
            "gpusiem_detect_rule_matches",
            "Events that matched each rule's detection",
            pipeline.rule_matches.clone(),
        );
        registry.register(
            "gpusiem_detect_late_events",
            "Events dropped by correlations for arriving later than the allowed lateness",
            pipeline.late_events.clone(),
        );
        registry.register(
            "gpusiem_detect_inventory_pods",
            "Pods the inventory knows",
            pipeline.inventory_pods.clone(),
        );
        let api = ApiMetrics::register(&mut registry);
        let delivery = DeliveryMetrics::register(&mut registry);
        Metrics {
            registry,
            ingest,
            pipeline,
            api,
            delivery,
        }
    }

    /// Adds the store's figures (`gpusiem_store_*`), read from the store on each scrape.
    pub fn register_store(&mut self, store: std::sync::Arc<crate::store::Store>) {
        self.registry
            .register_collector(Box::new(StoreCollector(store)));
    }

    /// Prometheus text (OpenMetrics) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Labels of per-table store gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

/// Reads [`Store::stats`](crate::store::Store::stats) and the per-table figures at scrape time.
#[derive(Debug)]
struct StoreCollector(std::sync::Arc<crate::store::Store>);

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = self.0.stats();
        let counters = [
            (
                "gpusiem_store_flushed_rows",
                "Rows flushed to Parquet",
                s.flushed_rows,
            ),
            (
                "gpusiem_store_flush_failures",
                "Failed flushes (rows stay in the WAL)",
                s.flush_failures,
            ),
            (
                "gpusiem_store_append_failures",
                "Appends refused or failed",
                s.append_failures,
            ),
            (
                "gpusiem_store_recovered_rows",
                "Rows recovered from the WAL at open",
                s.recovered_rows,
            ),
            (
                "gpusiem_store_wal_skipped_bytes",
                "WAL bytes skipped at open (torn or corrupt)",
                s.wal_skipped_bytes,
            ),
            (
                "gpusiem_store_wal_damaged_segments",
                "WAL segments found damaged at open",
                s.wal_damaged_segments,
            ),
            (
                "gpusiem_store_orphans_removed",
                "Uncommitted and temporary files removed at open",
                s.orphans_removed,
            ),
            (
                "gpusiem_store_compacted_files",
                "Files replaced by compaction",
                s.compacted_files,
            ),
            (
                "gpusiem_store_expired_files",
                "Files dropped by retention",
                s.expired_files,
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let tables = self.0.table_stats();
        type Gauge = (
            &'static str,
            &'static str,
            fn(&crate::store::TableStats) -> i64,
        );
        let gauges: [Gauge; 5] = [
            (
                "gpusiem_store_files",
                "Visible Parquet files by table",
                |t| i64::try_from(t.files).unwrap_or(i64::MAX),
            ),
            (
                "gpusiem_store_file_bytes",
                "Bytes of visible Parquet files by table",
                |t| i64::try_from(t.file_bytes).unwrap_or(i64::MAX),
            ),
            (
                "gpusiem_store_file_rows",
                "Rows in visible Parquet files by table",
                |t| i64::try_from(t.file_rows).unwrap_or(i64::MAX),
            ),
            (
                "gpusiem_store_tail_rows",
                "Rows in the in-memory tail (and WAL) by table",
                |t| i64::try_from(t.tail_rows).unwrap_or(i64::MAX),
            ),
            (
                "gpusiem_store_tail_bytes",
                "Approximate bytes of the in-memory tail by table",
                |t| i64::try_from(t.tail_bytes).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, get) in gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (table, stats) in &tables {
                let labels = TableLabels {
                    table: table.clone(),
                };
                ConstGauge::new(get(stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
