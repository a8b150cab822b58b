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
use crate::rules::{RuleEngine, RuleSet};

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
    rules: Option<RuleEngine>,
    watermark: i64,
    last_tick: i64,
}

impl Engine {
    /// Builds the inventory and the detectors.
    pub fn new(config: EngineConfig) -> crate::Result<Self> {
        Ok(Engine {
            inventory: Inventory::new(config.inventory),
            detectors: detectors::build(&config.detectors)?,
            rules: None,
            watermark: i64::MIN,
            last_tick: i64::MIN,
        })
    }

    /// Adds a detector (rules, correlation, tests).
    pub fn add_detector(&mut self, d: Box<dyn Detector>) {
        self.detectors.push(d);
    }

    /// Installs the rule engine (Sigma detection and correlation rules).
    pub fn set_rules(&mut self, rules: RuleEngine) {
        self.rules = Some(rules);
    }

    /// The rule engine, if installed.
    pub fn rules(&self) -> Option<&RuleEngine> {
        self.rules.as_ref()
    }

    /// Replaces the rules (reload on change); unchanged rules keep their state.
    pub fn reload_rules(&mut self, set: RuleSet) {
        if let Some(r) = &mut self.rules {
            r.reload(set);
        }
    }

    /// Feeds findings raised elsewhere (another replica, tests) to the rules as events.
    pub fn inject_findings(&mut self, findings: &[Finding], out: &mut Vec<Finding>) {
        let start = out.len();
        out.extend_from_slice(findings);
        let cx = DetectContext {
            inventory: &self.inventory,
            watermark: self.watermark,
        };
        chain(&mut self.detectors, &mut self.rules, &cx, out, start);
        out.drain(start..start + findings.len());
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
        let cx = DetectContext {
            inventory: &self.inventory,
            watermark: self.watermark,
        };
        for d in &mut self.detectors {
            d.observe(&cx, stream, batch, out);
        }
        if let Some(r) = &mut self.rules {
            r.observe(&cx, stream, batch, out);
        }
        chain(&mut self.detectors, &mut self.rules, &cx, out, start);
        self.maybe_tick(out);
    }

    /// Advances event time to `now` without data (a live pipeline's idle timer, the end of a
    /// replay) and ticks the detectors.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Finding>) {
        self.watermark = self.watermark.max(now);
        self.force_tick(out);
    }

    fn maybe_tick(&mut self, out: &mut Vec<Finding>) {
        if self.last_tick == i64::MIN || self.watermark.saturating_sub(self.last_tick) >= TICK_NANOS
        {
            self.force_tick(out);
        }
    }

    fn force_tick(&mut self, out: &mut Vec<Finding>) {
        self.last_tick = self.watermark;
        self.inventory.evict(self.watermark);
        let start = out.len();
        let cx = DetectContext {
            inventory: &self.inventory,
            watermark: self.watermark,
        };
        for d in &mut self.detectors {
            d.on_tick(&cx, self.watermark, out);
        }
        if let Some(r) = &mut self.rules {
            r.on_tick(&cx, self.watermark, out);
        }
        chain(&mut self.detectors, &mut self.rules, &cx, out, start);
    }

    /// Bytes of detector state (approximate).
    pub fn state_bytes(&self) -> usize {
        self.detectors
            .iter()
            .map(|d| d.state_bytes())
            .sum::<usize>()
            + self.rules.as_ref().map_or(0, |r| r.state_bytes())
    }

    /// Series held per detector.
    pub fn series(&self) -> Vec<(&'static str, usize)> {
        let rules = self.rules.as_ref().map(|r| (r.name(), r.series()));
        self.detectors
            .iter()
            .map(|d| (d.name(), d.series()))
            .chain(rules)
            .collect()
    }
}

/// Feeds findings raised since `start` back to every detector and the rules, a bounded number
/// of rounds.
fn chain(
    detectors: &mut [Box<dyn Detector>],
    rules: &mut Option<RuleEngine>,
    cx: &DetectContext<'_>,
    out: &mut Vec<Finding>,
    mut start: usize,
) {
    for _ in 0..CHAIN_ROUNDS {
        if start == out.len() {
            return;
        }
        let new: Vec<Finding> = out[start..].to_vec();
        start = out.len();
        for d in detectors.iter_mut() {
            d.observe_findings(cx, &new, out);
        }
        if let Some(r) = rules {
            r.observe_findings(cx, &new, out);
        }
    }
}

/// The largest `ts` of a batch.
pub fn max_ts(batch: &RecordBatch) -> Option<i64> {
    let ts = batch
        .column_by_name(gpusiem_ingest::schema::TS)?
        .as_primitive_opt::<TimestampNanosecondType>()?;
    if ts.null_count() == ts.len() {
        return None;
    }
    arrow::compute::max(ts)
}
