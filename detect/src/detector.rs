//! The detector contract.
//!
//! Detectors are called by the [`Engine`](crate::engine::Engine) on the pipeline task, one
//! batch at a time, in event-time order. They are synchronous and do no I/O; time comes only
//! from the events and from ticks (`on_tick(now)`, where `now` is the event-time watermark),
//! never from the wall clock — so replaying recorded files gives exactly the findings live
//! operation gave. Work per sample is O(1) and state per series is bounded; a detector evicts
//! series it has not seen for its idle timeout on ticks.
//!
//! A detector reports findings by pushing them to `out`: once when an episode is raised, again
//! when it changes (severity, evidence), and once more with [`Status::Resolved`](crate::finding::Status)
//! when it ends. It never reports one finding per sample.

use arrow::record_batch::RecordBatch;
use gpusiem_ingest::Stream;

use crate::finding::Finding;
use crate::inventory::Inventory;

/// What a detector may consult while it observes.
pub struct DetectContext<'a> {
    /// Pod facts and roles.
    pub inventory: &'a Inventory,
    /// The event-time watermark (ns): no event older than this minus the allowed lateness is
    /// still expected.
    pub watermark: i64,
}

/// A streaming detector. See the module docs for the contract.
pub trait Detector: Send {
    /// Detector id, used in findings and metrics (`gpu_memory_spike`).
    fn name(&self) -> &'static str;

    /// Observes one batch of `stream` (rows in event-time order within the batch).
    fn observe(
        &mut self,
        cx: &DetectContext<'_>,
        stream: Stream,
        batch: &RecordBatch,
        out: &mut Vec<Finding>,
    );

    /// Observes findings raised by other detectors or rules (for chaining); most ignore them.
    fn observe_findings(
        &mut self,
        _cx: &DetectContext<'_>,
        _findings: &[Finding],
        _out: &mut Vec<Finding>,
    ) {
    }

    /// Event time advanced to `now` without new data for this detector: close windows, resolve
    /// episodes, evict idle state.
    fn on_tick(&mut self, cx: &DetectContext<'_>, now: i64, out: &mut Vec<Finding>);

    /// Approximate bytes of state held (for metrics and benchmarks).
    fn state_bytes(&self) -> usize;

    /// Number of series (or keys) with state.
    fn series(&self) -> usize;
}
