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

use gpusiem_detect::{Engine, Finding};
use gpusiem_ingest::quarantine::QuarantineWriter;
use gpusiem_ingest::{Batch, Delivery as AckDelivery};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::metrics::{FindingLabels, Metrics};
use crate::store::Store;

/// The pipeline's state: the engine and where accepted data goes.
pub struct Pipeline {
    engine: Engine,
    quarantine: Option<QuarantineWriter>,
    store: Option<Arc<Store>>,
    delivery: Option<Arc<Delivery>>,
    metrics: Arc<Metrics>,
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
        Pipeline { engine, quarantine, store, delivery, metrics }
    }

    /// The engine (inventory updates from the Kubernetes source, tests).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Processes one batch; returns the findings it raised. The batch is acknowledged only
    /// when everything was written.
    pub async fn process(&mut self, batch: Batch) -> crate::Result<Vec<Finding>> {
        let Batch { stream, records, quarantined, origin, ack } = batch;
        self.metrics.pipeline.batches.inc();
        let result = async {
            if let Some(q) = &self.quarantine {
                q.write(&origin, &quarantined).map_err(|e| crate::Error::Store { op: "quarantine", reason: e.to_string() })?;
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

    async fn emit(&mut self, findings: &[Finding]) -> crate::Result<()> {
        let m = &self.metrics.pipeline;
        m.series.set(self.engine.series().iter().map(|(_, n)| *n as i64).sum());
        m.state_bytes.set(self.engine.state_bytes() as i64);
        if self.engine.watermark() != i64::MIN {
            m.watermark_seconds.set(self.engine.watermark() / 1_000_000_000);
        }
        if findings.is_empty() {
            return Ok(());
        }
        for f in findings {
            let labels = FindingLabels { detector: f.detector.clone(), severity: f.severity.as_str(), status: f.status.as_str() };
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
    pub async fn run(mut self, mut rx: mpsc::Receiver<Batch>, shutdown: CancellationToken, allowed_lateness: Duration) {
        let tick_every = Duration::from_secs(1);
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lateness = i64::try_from(allowed_lateness.as_nanos()).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                biased;
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        let _ = self.process(batch).await;
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    let now = gpusiem_ingest::source::now_nanos().saturating_sub(lateness);
                    if now > self.engine.watermark() {
                        if let Err(e) = self.tick(now).await {
                            tracing::error!(error = %e, "tick failed");
                        }
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
        if let Some(store) = &self.store {
            if let Err(e) = store.close().await {
                tracing::error!(error = %e, "flushing the store at shutdown failed");
            }
        }
    }
}
