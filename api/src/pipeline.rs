//! The pipeline task: batches from every source, in arrival order, through quarantine, store,
//! detection and delivery; then the batch is acknowledged.
//!
//! ```text
//!  sources ─► mpsc<Batch> ─► Pipeline::process ─┬─► quarantine.jsonl (bad records, synced)
//!                                               ├─► store.append (rows, durable)
//!                                               ├─► engine.observe ─► findings ─┬─► store.append_findings
//!                                               │                               └─► delivery.enqueue (outbox)
//!                                               └─► batch.ack.complete(Delivered)
//! ```
//!
//! A batch is acknowledged only when every step succeeded; on any failure its `Ack` is dropped,
//! which tells the source to send it again (Kafka does not commit, HTTP answers 503, the file
//! checkpoint stays). Event time advances with the data; when no data arrives, a timer ticks
//! the engine at wall-clock time minus the allowed lateness, so episodes still resolve.

use std::sync::Arc;
use std::time::Duration;

use gpusiem_detect::rules::{RuleEngine, RuleSet, RulesConfig};
use gpusiem_detect::{Engine, EngineConfig, Finding};
use gpusiem_ingest::quarantine::QuarantineWriter;
use gpusiem_ingest::sources::kubernetes::PodEvent;
use gpusiem_ingest::{Batch, Delivery as AckDelivery};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::metrics::{FindingLabels, Metrics, RuleLabels};
use crate::store::Store;

/// The detection engine for `config`: inventory matchers, detectors and rules (the built-in
/// pack plus the configured rule directories).
pub fn engine(config: &crate::config::Config) -> crate::Result<Engine> {
    let mut engine = Engine::new(EngineConfig {
        inventory: config.inventory.clone(),
        detectors: config.detectors.clone(),
    })
    .map_err(crate::Error::Detect)?;
    let set = RuleSet::load(&config.rules)
        .map_err(|e| crate::Error::Rules(e.iter().map(ToString::to_string).collect()))?;
    engine.set_rules(RuleEngine::new(set, &config.rules));
    Ok(engine)
}

/// Watches rule directories and reloads the rules when a file changes.
struct RuleReload {
    config: RulesConfig,
    newest: Option<std::time::SystemTime>,
    last_check: std::time::Instant,
}

/// The pipeline's state: the engine and where accepted data goes.
pub struct Pipeline {
    engine: Engine,
    reload: Option<RuleReload>,
    quarantine: Option<QuarantineWriter>,
    store: Option<Arc<Store>>,
    delivery: Option<Arc<Delivery>>,
    metrics: Arc<Metrics>,
    pods: Option<mpsc::Receiver<PodEvent>>,
    /// Rule match and late-event totals already exported (the engine keeps running totals).
    exported: Exported,
}

/// Engine totals already added to the counters.
#[derive(Debug, Default)]
struct Exported {
    rule_matches: rustc_hash::FxHashMap<String, u64>,
    late_events: u64,
}

impl Pipeline {
    /// A pipeline around `engine`; the outputs are optional (a replay has no store).
    pub fn new(
        engine: Engine,
        quarantine: Option<QuarantineWriter>,
        store: Option<Arc<Store>>,
        delivery: Option<Arc<Delivery>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut p = Pipeline {
            engine,
            reload: None,
            quarantine,
            store,
            delivery,
            metrics,
            pods: None,
            exported: Exported::default(),
        };
        p.export_engine_figures();
        p
    }

    /// Applies the `kubernetes` source's pod changes to the inventory, on the pipeline's own
    /// task (the inventory is the engine's, and the engine is never shared).
    pub fn with_pod_events(mut self, pods: mpsc::Receiver<PodEvent>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Reloads the rules of `config.dirs` when their files change (checked every
    /// `reload_interval_secs` of wall time while running). A rule set that fails to load is
    /// logged and the running one kept.
    pub fn with_rule_reload(mut self, config: RulesConfig) -> Self {
        if config.reload_interval_secs > 0 && !config.dirs.is_empty() {
            let newest = gpusiem_detect::rules::newest_mtime(&config.dirs);
            self.reload = Some(RuleReload {
                config,
                newest,
                last_check: std::time::Instant::now(),
            });
        }
        self
    }

    fn maybe_reload_rules(&mut self) {
        let Some(r) = &mut self.reload else { return };
        if r.last_check.elapsed().as_secs() < r.config.reload_interval_secs {
            return;
        }
        r.last_check = std::time::Instant::now();
        let newest = gpusiem_detect::rules::newest_mtime(&r.config.dirs);
        if newest == r.newest {
            return;
        }
        match RuleSet::load(&r.config) {
            Ok(set) => {
                tracing::info!(rules = set.rules().len(), "rules reloaded");
                r.newest = newest;
                self.engine.reload_rules(set);
            }
            Err(errors) => {
                // Keep the rules that work; report every problem; retry on the next change.
                r.newest = newest;
                for e in errors {
                    tracing::error!(error = %e, "rule reload failed; keeping the running rules");
                }
            }
        }
    }

    /// The engine (inventory updates from the Kubernetes source, tests).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Processes one batch; returns the findings it raised. The batch is acknowledged only
    /// when everything was written.
    pub async fn process(&mut self, batch: Batch) -> crate::Result<Vec<Finding>> {
        let Batch {
            stream,
            records,
            quarantined,
            origin,
            ack,
        } = batch;
        self.metrics.pipeline.batches.inc();
        let result = async {
            if let Some(q) = &self.quarantine {
                q.write(&origin, &quarantined)
                    .map_err(|e| crate::Error::Store {
                        op: "quarantine",
                        reason: e.to_string(),
                    })?;
            } else {
                for r in &quarantined {
                    self.metrics.ingest.record_quarantined(r.stream, r.reason);
                }
            }
            if let Some(store) = &self.store {
                store.append(stream, &records).await?;
            }
            let mut findings = Vec::new();
            self.engine.observe(stream, &records, &mut findings);
            self.emit(&findings).await?;
            Ok(findings)
        }
        .await;
        match &result {
            Ok(_) => ack.complete(AckDelivery::Delivered),
            Err(e) => {
                self.metrics.pipeline.batch_failures.inc();
                tracing::error!(error = %e, %stream, %origin, "batch not written; the source will send it again");
                drop(ack);
            }
        }
        result
    }

    /// Ticks the engine to event time `now` (idle timer, end of a replay).
    pub async fn tick(&mut self, now: i64) -> crate::Result<Vec<Finding>> {
        let mut findings = Vec::new();
        self.engine.tick(now, &mut findings);
        self.emit(&findings).await?;
        Ok(findings)
    }

    /// Brings the rule, lateness and inventory figures up to date. A rule's series exists
    /// from the moment it is loaded, at 0.
    fn export_engine_figures(&mut self) {
        let m = &self.metrics.pipeline;
        m.inventory_pods
            .set(i64::try_from(self.engine.inventory().len()).unwrap_or(i64::MAX));
        let Some(rules) = self.engine.rules() else {
            return;
        };
        // Runs once per batch: labels are built only for a rule seen first or matched since.
        for (rule, n) in rules.matches() {
            let last = match self.exported.rule_matches.get_mut(rule) {
                Some(last) if *last == n => continue,
                Some(last) => last,
                None => self
                    .exported
                    .rule_matches
                    .entry(rule.to_string())
                    .or_insert(0),
            };
            let counter = m.rule_matches.get_or_create(&RuleLabels {
                rule: rule.to_string(),
            });
            // A reloaded rule set restarts its totals; a total never goes back.
            if n > *last {
                counter.inc_by(n - *last);
            }
            *last = n;
        }
        let late = rules.late_events();
        if late > self.exported.late_events {
            m.late_events.inc_by(late - self.exported.late_events);
        }
        self.exported.late_events = late;
    }

    async fn emit(&mut self, findings: &[Finding]) -> crate::Result<()> {
        self.export_engine_figures();
        let m = &self.metrics.pipeline;
        m.series
            .set(self.engine.series().iter().map(|(_, n)| *n as i64).sum());
        m.state_bytes.set(self.engine.state_bytes() as i64);
        if self.engine.watermark() != i64::MIN {
            m.watermark_seconds
                .set(self.engine.watermark() / 1_000_000_000);
        }
        if findings.is_empty() {
            return Ok(());
        }
        for f in findings {
            let labels = FindingLabels {
                detector: f.detector.clone(),
                severity: f.severity.as_str(),
                status: f.status.as_str(),
            };
            m.findings.get_or_create(&labels).inc();
        }
        if let Some(store) = &self.store {
            store.append_findings(findings).await?;
        }
        if let Some(delivery) = &self.delivery {
            delivery.enqueue(findings).await?;
        }
        Ok(())
    }

    /// Runs until the channel closes or `shutdown` fires, ticking the engine every
    /// `tick_every` of wall time at `now - allowed_lateness` when data is idle.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        shutdown: CancellationToken,
        allowed_lateness: Duration,
    ) {
        let tick_every = Duration::from_secs(1);
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lateness = i64::try_from(allowed_lateness.as_nanos()).unwrap_or(i64::MAX);
        let mut pods = self.pods.take();
        loop {
            tokio::select! {
                biased;
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        let _ = self.process(batch).await;
                    }
                    None => break,
                },
                event = next_pod_event(&mut pods) => match event {
                    Some(event) => self.engine.inventory_mut().apply_pod_event(&event),
                    // The source stopped; the inventory keeps what it has.
                    None => pods = None,
                },
                _ = ticker.tick() => {
                    self.maybe_reload_rules();
                    let now = gpusiem_ingest::source::now_nanos().saturating_sub(lateness);
                    if now > self.engine.watermark()
                        && let Err(e) = self.tick(now).await {
                            tracing::error!(error = %e, "tick failed");
                        }
                }
                () = shutdown.cancelled() => break,
            }
        }
        // Drain what sources already handed over, so their acknowledgements are answered.
        rx.close();
        while let Ok(batch) = rx.try_recv() {
            let _ = self.process(batch).await;
        }
        if let Some(store) = &self.store
            && let Err(e) = store.close().await
        {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
    }
}

/// The next pod change, or never when there is no `kubernetes` source.
async fn next_pod_event(pods: &mut Option<mpsc::Receiver<PodEvent>>) -> Option<PodEvent> {
    match pods {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
