//! The engine: inventory, detectors and rules behind one synchronous call per batch.
//!
//! ```text
//!  Batch(stream, rows) ──► Engine::observe ──► inventory (k8s_audit pod facts)
//!                                  │
//!                                  ├──► every Detector::observe ──► findings ─┐
//!                                  │                                          │ chained: findings are
//!                                  └──► Detector::observe_findings ◄──────────┘ events too (≤ 3 rounds)
//!  event time advances ≥ tick ──► Detector::on_tick(watermark) (resolve, evict)
//! ```
//!
//! The engine owns the event-time watermark: the largest event time seen. Ticks are derived
//! from it, so a replay of recorded files raises exactly the findings live operation raised.

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampNanosecondType;
use arrow::record_batch::RecordBatch;
use gpusiem_ingest::Stream;
use serde::{Deserialize, Serialize};

use crate::detector::{DetectContext, Detector};
use crate::detectors::{self, DetectorsConfig};
use crate::finding::Finding;
use crate::inventory::{Inventory, InventoryConfig};

/// Everything the engine is built from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Role matchers and inventory bounds.
    pub inventory: InventoryConfig,
    /// Detector thresholds.
    pub detectors: DetectorsConfig,
}

/// Event time between two ticks, ns.
const TICK_NANOS: i64 = 1_000_000_000;
/// Rounds of finding chaining per batch (a rule on a rule on a detector).
const CHAIN_ROUNDS: usize = 3;

/// The detection engine. See the module docs.
pub struct Engine {
    inventory: Inventory,
    detectors: Vec<Box<dyn Detector>>,
    watermark: i64,
    last_tick: i64,
}

impl Engine {
    /// Builds the inventory and the detectors.
    pub fn new(config: EngineConfig) -> crate::Result<Self> {
        Ok(Engine {
            inventory: Inventory::new(config.inventory),
            detectors: detectors::build(&config.detectors)?,
            watermark: i64::MIN,
            last_tick: i64::MIN,
        })
    }

    /// Adds a detector (rules, correlation, tests).
    pub fn add_detector(&mut self, d: Box<dyn Detector>) {
        self.detectors.push(d);
    }

    /// The inventory, to feed pod facts from other sources.
    pub fn inventory_mut(&mut self) -> &mut Inventory {
        &mut self.inventory
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The event-time watermark (ns), `i64::MIN` before any event.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Observes one batch; pushes raised, updated and resolved findings to `out`.
    pub fn observe(&mut self, stream: Stream, batch: &RecordBatch, out: &mut Vec<Finding>) {
        if batch.num_rows() == 0 {
            return;
        }
        if stream == Stream::K8sAudit {
            self.inventory.apply_audit(batch);
        }
        if let Some(max) = max_ts(batch) {
            self.watermark = self.watermark.max(max);
        }
        let start = out.len();
        let cx = DetectContext { inventory: &self.inventory, watermark: self.watermark };
        for d in &mut self.detectors {
            d.observe(&cx, stream, batch, out);
        }
        chain(&mut self.detectors, &cx, out, start);
        self.maybe_tick(out);
    }

    /// Advances event time to `now` without data (a live pipeline's idle timer, the end of a
    /// replay) and ticks the detectors.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Finding>) {
        self.watermark = self.watermark.max(now);
        self.force_tick(out);
    }

    fn maybe_tick(&mut self, out: &mut Vec<Finding>) {
        if self.last_tick == i64::MIN || self.watermark.saturating_sub(self.last_tick) >= TICK_NANOS {
            self.force_tick(out);
        }
    }

    fn force_tick(&mut self, out: &mut Vec<Finding>) {
        self.last_tick = self.watermark;
        self.inventory.evict(self.watermark);
        let start = out.len();
        let cx = DetectContext { inventory: &self.inventory, watermark: self.watermark };
        for d in &mut self.detectors {
            d.on_tick(&cx, self.watermark, out);
        }
        chain(&mut self.detectors, &cx, out, start);
    }

    /// Bytes of detector state (approximate).
    pub fn state_bytes(&self) -> usize {
        self.detectors.iter().map(|d| d.state_bytes()).sum()
    }

    /// Series held per detector.
    pub fn series(&self) -> Vec<(&'static str, usize)> {
        self.detectors.iter().map(|d| (d.name(), d.series())).collect()
    }
}

/// Feeds findings raised since `start` back to every detector, a bounded number of rounds.
fn chain(detectors: &mut [Box<dyn Detector>], cx: &DetectContext<'_>, out: &mut Vec<Finding>, mut start: usize) {
    for _ in 0..CHAIN_ROUNDS {
        if start == out.len() {
            return;
        }
        let new: Vec<Finding> = out[start..].to_vec();
        start = out.len();
        for d in detectors.iter_mut() {
            d.observe_findings(cx, &new, out);
        }
    }
}

/// The largest `ts` of a batch.
pub fn max_ts(batch: &RecordBatch) -> Option<i64> {
    let ts = batch.column_by_name(gpusiem_ingest::schema::TS)?.as_primitive_opt::<TimestampNanosecondType>()?;
    if ts.null_count() == ts.len() {
        return None;
    }
    arrow::compute::max(ts)
}
