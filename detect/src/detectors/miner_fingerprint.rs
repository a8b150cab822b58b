//! `miner_fingerprint`: the shape of a crypto miner on a GPU — sustained near-100 % utilisation
//! with flat power and, where DCGM profiling counters exist, idle tensor and floating-point
//! pipes — on a pod that is not serving or training (or on a GPU allocated to no pod).
//!
//! ```text
//!  GPU_UTIL, POWER_USAGE, PROF_PIPE_{TENSOR,FP32,FP16,FP64}_ACTIVE, PROF_SM_ACTIVE rows
//!      ──► per-series scrape slot (same ts), finalised when a later sample or tick passes it
//!  run: consecutive scrapes with util ≥ min_util_pct (stats restart with each run)
//!      power: time-decayed mean/variance (τ = window_secs), the run's first scrape skipped
//!             (it straddles the power ramp)
//!      pipes: time-decayed means
//!  fingerprint: run ≥ min_duration_secs, power CV ≤ max_power_cv, tensor ≤ max_tensor_active_ratio,
//!               FP32+FP16+FP64 ≤ max_fp_active_ratio  (pipe checks only where counters exist)
//!      ──► role → severity (one step lower without profiling counters) ──► raise
//!  quiet (util below, or pipes busy) for resolve_after_secs ──► resolve
//! ```
//!
//! Thresholds come from a real capture (H200, NVML GPM — the source of `DCGM_FI_PROF_*` on
//! Hopper, `h200-nvml-gpm-serving-miner-fp32.jsonl`): an integer hash loop ran at 99–100 %
//! utilisation, 608–615 W (CV < 1 %), tensor 0.00, FP32 0.00; serving bursts never exceeded
//! 15 % utilisation with tensor ≈ 0.06; an fp32 elementwise loop also ran at 100 % with flat
//! power but FP32 at 0.067 — scientific compute, not a hash loop, which is why the FP pipes are
//! part of the fingerprint. Training (tensor-heavy, power swinging with steps) and serving are
//! not judged at all: their roles make sustained load normal.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Problems;
use super::gpu_series::{
    Accept, Allocations, AsKey, Attribution, EpisodeCore, GpuRows, Grade, KeyView, PendingSlots,
    RoleSeverities, RowContext, SWEEP_NANOS, SeriesKey, SeriesMap, gpu_name, map_bytes, metric,
    nanos_to_secs, rfc3339, round3, secs_to_nanos, who,
};
use crate::detector::{DetectContext, Detector};
use crate::finding::{Finding, Severity, Status};
use crate::inventory::Inventory;

/// Detector id.
pub const NAME: &str = "miner_fingerprint";

/// `[detectors.miner_fingerprint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinerFingerprintConfig {
    /// Run the detector.
    pub enabled: bool,
    /// "Near 100 %": utilisation (%) at or above which a scrape belongs to a run.
    pub min_util_pct: f64,
    /// A run must last this long before it can match (miners run for hours; training warm-up
    /// and benchmarks rarely hold a flat 100 % this long).
    pub min_duration_secs: u64,
    /// "Flat power": largest coefficient of variation (σ / mean) of board power over the run.
    /// A hash loop measured < 1 %; training swings with steps, data loading and all-reduce.
    pub max_power_cv: f64,
    /// Largest mean tensor-pipe activity (ratio 0–1): ML uses tensor cores, hash loops do not.
    pub max_tensor_active_ratio: f64,
    /// Largest mean FP32+FP16+FP64 pipe activity (ratio 0–1): hash loops are integer-only.
    pub max_fp_active_ratio: f64,
    /// Time constant of the decayed statistics (power, pipes) over a run.
    pub window_secs: u64,
    /// Quiet (utilisation below, or pipes busy) for this long resolves the episode.
    pub resolve_after_secs: u64,
    /// Without profiling counters (only utilisation and power), report one severity lower.
    pub lower_severity_without_profiling: bool,
    /// How long a role that is not judged (`ignore`) is trusted before the inventory is asked again.
    pub role_recheck_secs: u64,
    /// A GPU counts as allocated to a pod while a pod-labelled series of it was seen this recently
    /// (a device-level series beside a per-pod one is then not "allocated to no pod").
    pub allocation_grace_secs: u64,
    /// Series silent for this long (event time) are forgotten; an open episode resolves.
    pub idle_timeout_secs: u64,
    /// Severity by role, with profiling counters. Serving and training are not judged.
    pub severity_by_role: RoleSeverities,
}

impl Default for MinerFingerprintConfig {
    fn default() -> Self {
        MinerFingerprintConfig {
            enabled: true,
            min_util_pct: 90.0,
            min_duration_secs: 300,
            max_power_cv: 0.05,
            max_tensor_active_ratio: 0.05,
            max_fp_active_ratio: 0.02,
            window_secs: 600,
            resolve_after_secs: 120,
            lower_severity_without_profiling: true,
            role_recheck_secs: 300,
            allocation_grace_secs: 120,
            idle_timeout_secs: 900,
            severity_by_role: RoleSeverities {
                serving: Grade::Ignore,
                training: Grade::Ignore,
                notebook: Grade::High,
                batch: Grade::Medium,
                non_gpu: Grade::Critical,
                unknown: Grade::High,
                unallocated: Grade::Critical,
            },
        }
    }
}

impl MinerFingerprintConfig {
    pub(super) fn validate(&self, path: &str, p: &mut Problems) {
        p.range(
            path,
            "min_util_pct",
            self.min_util_pct,
            f64::MIN_POSITIVE,
            100.0,
        );
        p.secs(path, "min_duration_secs", self.min_duration_secs);
        p.number(path, "max_power_cv", self.max_power_cv, 0.0, true);
        p.range(
            path,
            "max_tensor_active_ratio",
            self.max_tensor_active_ratio,
            0.0,
            1.0,
        );
        p.range(
            path,
            "max_fp_active_ratio",
            self.max_fp_active_ratio,
            0.0,
            3.0,
        );
        p.secs(path, "window_secs", self.window_secs);
        p.secs(path, "resolve_after_secs", self.resolve_after_secs);
        p.secs(path, "role_recheck_secs", self.role_recheck_secs);
        p.secs(path, "idle_timeout_secs", self.idle_timeout_secs);
    }
}

#[derive(Debug, Clone)]
struct Settings {
    cfg: MinerFingerprintConfig,
    min_duration: i64,
    tau_secs: f64,
    resolve_after: i64,
    recheck: i64,
    grace: i64,
    idle: i64,
}

/// Time-decayed weighted mean and variance (West's incremental algorithm with exponentially
/// forgotten weights): equals the batch formula with weights `exp(-(now - t_i) / τ)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Decayed {
    /// Sum of weights.
    pub w: f64,
    pub mean: f64,
    /// Weighted sum of squared deviations from the mean.
    pub m2: f64,
    /// Samples folded in (not decayed).
    pub n: u32,
}

impl Decayed {
    /// Multiplies every past weight by `f` (0 < f ≤ 1).
    pub fn decay(&mut self, f: f64) {
        self.w *= f;
        self.m2 *= f;
    }

    /// Adds a sample of weight 1.
    pub fn push(&mut self, x: f64) {
        self.w += 1.0;
        self.n = self.n.saturating_add(1);
        let d = x - self.mean;
        self.mean += d / self.w;
        self.m2 += d * (x - self.mean);
    }

    /// Weighted (population) variance.
    pub fn var(&self) -> f64 {
        if self.w > 0.0 {
            (self.m2 / self.w).max(0.0)
        } else {
            0.0
        }
    }

    /// Mean, `None` before any sample.
    pub fn get(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }
}

/// One scrape's values (NaN: not in the scrape).
#[derive(Debug, Clone, Copy)]
struct Slot {
    ts: i64,
    util: f32,
    power: f32,
    tensor: f32,
    fp: f32,
    sm: f32,
}

impl Slot {
    const EMPTY: Slot = Slot {
        ts: i64::MIN,
        util: f32::NAN,
        power: f32::NAN,
        tensor: f32::NAN,
        fp: f32::NAN,
        sm: f32::NAN,
    };
}

/// Which field a metric feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Util,
    Power,
    Tensor,
    Fp,
    Sm,
}

/// Per-series state.
#[derive(Debug)]
struct Series {
    /// The map's key (shared text), for the pending list.
    key: SeriesKey,
    slot: Slot,
    pending: bool,
    /// First scrape of the current run (`i64::MIN`: not in a run) and the last one folded.
    run_start: i64,
    last_ts: i64,
    power: Decayed,
    tensor: Decayed,
    fp: Decayed,
    sm: Decayed,
    quiet_since: i64,
    ignore_until: i64,
    context: Option<Box<RowContext>>,
    episode: Option<Box<Episode>>,
}

/// The run's statistics at one scrape.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    util: f64,
    run_secs: f64,
    power_mean: Option<f64>,
    power_cv: Option<f64>,
    tensor: Option<f64>,
    fp: Option<f64>,
    sm: Option<f64>,
    /// Pipes idle (or not measured).
    pipes_idle: bool,
    matches: bool,
}

impl Verdict {
    fn profiling(&self) -> bool {
        self.tensor.is_some() || self.fp.is_some()
    }
}

#[derive(Debug)]
struct Episode {
    core: EpisodeCore,
    /// The severity with profiling evidence (the raise may be one step lower without it).
    strong: Severity,
    run_start: i64,
    raised: Verdict,
    latest: Verdict,
    latest_ts: i64,
}

struct Env<'e> {
    s: &'e Settings,
    inventory: &'e Inventory,
    allocations: &'e Allocations,
}

/// The detector. See the module docs.
#[derive(Debug)]
pub struct MinerFingerprint {
    s: Settings,
    series: SeriesMap<Series>,
    key_heap: usize,
    allocations: Allocations,
    pending: PendingSlots,
    next_sweep: i64,
}

impl MinerFingerprint {
    /// A detector with `config` (validated by [`super::DetectorsConfig::validate`]).
    pub fn new(cfg: MinerFingerprintConfig) -> Self {
        let s = Settings {
            min_duration: secs_to_nanos(cfg.min_duration_secs),
            tau_secs: cfg.window_secs as f64,
            resolve_after: secs_to_nanos(cfg.resolve_after_secs),
            recheck: secs_to_nanos(cfg.role_recheck_secs),
            grace: secs_to_nanos(cfg.allocation_grace_secs),
            idle: secs_to_nanos(cfg.idle_timeout_secs),
            cfg,
        };
        MinerFingerprint {
            s,
            series: SeriesMap::default(),
            key_heap: 0,
            allocations: Allocations::default(),
            pending: PendingSlots::new(),
            next_sweep: i64::MIN,
        }
    }
}

impl Detector for MinerFingerprint {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(
        &mut self,
        cx: &DetectContext<'_>,
        stream: gpusiem_ingest::Stream,
        batch: &arrow::record_batch::RecordBatch,
        out: &mut Vec<Finding>,
    ) {
        if stream != gpusiem_ingest::Stream::GpuMetrics {
            return;
        }
        let Some(rows) = GpuRows::new(batch) else {
            tracing::debug!(
                detector = NAME,
                "batch does not follow the gpu_metrics schema; skipped"
            );
            return;
        };
        for row in 0..rows.len() {
            let field = match rows.metric(row) {
                metric::GPU_UTIL => Field::Util,
                metric::POWER_USAGE => Field::Power,
                metric::PIPE_TENSOR_ACTIVE => Field::Tensor,
                metric::PIPE_FP32_ACTIVE | metric::PIPE_FP16_ACTIVE | metric::PIPE_FP64_ACTIVE => {
                    Field::Fp
                }
                metric::SM_ACTIVE => Field::Sm,
                _ => continue,
            };
            let Some(key) = rows.key(row) else { continue };
            let Some(v) = rows.value(row) else { continue };
            let valid = match field {
                Field::Util => (0.0..=100.0).contains(&v),
                Field::Power => v >= 0.0,
                Field::Tensor | Field::Fp | Field::Sm => (0.0..=1.0).contains(&v),
            };
            if !valid {
                continue;
            }
            let ts = rows.ts(row);
            if key.has_pod() && field == Field::Util {
                self.allocations.witness(&key, ts);
            }
            let busy = field == Field::Util && v >= self.s.cfg.min_util_pct;
            let env = Env {
                s: &self.s,
                inventory: cx.inventory,
                allocations: &self.allocations,
            };
            let series = match self.series.get_mut(&key as &dyn AsKey) {
                Some(series) => series,
                None if busy => {
                    let Some(k) = SeriesKey::new(&key) else {
                        continue;
                    };
                    self.key_heap += k.heap_bytes();
                    self.series
                        .entry(k.clone())
                        .or_insert_with(|| Series::new(k))
                }
                None => continue, // not busy and untracked: no state for idle GPUs
            };
            match series.accept(&env, &key, ts, out) {
                Accept::Late => continue,
                Accept::Same => {}
                Accept::Opened => self.pending.push((ts, series.key.clone())),
            }
            let slot = &mut series.slot;
            let v32 = v as f32;
            match field {
                Field::Util => slot.util = v32,
                Field::Power => slot.power = v32,
                Field::Tensor => slot.tensor = v32,
                // FP32, FP16 and FP64 add up: any floating-point pipe counts against a hash loop.
                Field::Fp => slot.fp = if slot.fp.is_nan() { v32 } else { slot.fp + v32 },
                Field::Sm => slot.sm = v32,
            }
            if busy && series.context.is_none() {
                series.context = Some(Box::new(rows.context(row)));
            }
        }
    }

    fn on_tick(&mut self, cx: &DetectContext<'_>, now: i64, out: &mut Vec<Finding>) {
        let env = Env {
            s: &self.s,
            inventory: cx.inventory,
            allocations: &self.allocations,
        };
        // Judge the scrapes the watermark has passed (a slot strictly older than it is complete).
        let series = &mut self.series;
        self.pending.retain(|(ts, k)| {
            let Some(s) = series.get_mut(k) else {
                return false;
            };
            if !s.pending || s.slot.ts != *ts {
                return false;
            }
            if *ts >= now {
                return true;
            }
            s.finalize(&env, &k.view(), out);
            false
        });
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(SWEEP_NANOS);
        let heap = &mut self.key_heap;
        self.series.retain(|k, series| {
            if now.saturating_sub(series.slot.ts) <= env.s.idle {
                return true;
            }
            if let Some(mut ep) = series.episode.take() {
                out.push(ep.emit(
                    env.s,
                    &k.view(),
                    Status::Resolved,
                    series.slot.ts,
                    Some("the series stopped reporting"),
                ));
            }
            *heap -= k.heap_bytes();
            false
        });
        self.allocations.evict(now, self.s.idle);
    }

    fn state_bytes(&self) -> usize {
        let extra: usize = self
            .series
            .values()
            .map(|s| {
                s.context
                    .as_ref()
                    .map_or(0, |_| size_of::<RowContext>() + 96)
                    + s.episode
                        .as_deref()
                        .map_or(0, |e| size_of::<Episode>() + e.core.heap_bytes())
            })
            .sum();
        map_bytes(&self.series, self.key_heap)
            + extra
            + self.allocations.bytes()
            + self.pending.capacity() * size_of::<(i64, SeriesKey)>()
    }

    fn series(&self) -> usize {
        self.series.len()
    }
}

impl Series {
    fn new(key: SeriesKey) -> Self {
        Series {
            key,
            slot: Slot::EMPTY,
            pending: false,
            run_start: i64::MIN,
            last_ts: i64::MIN,
            power: Decayed::default(),
            tensor: Decayed::default(),
            fp: Decayed::default(),
            sm: Decayed::default(),
            quiet_since: i64::MIN,
            ignore_until: i64::MIN,
            context: None,
            episode: None,
        }
    }

    /// Makes the slot hold `ts`, judging an older one first.
    fn accept(
        &mut self,
        env: &Env<'_>,
        key: &KeyView<'_>,
        ts: i64,
        out: &mut Vec<Finding>,
    ) -> Accept {
        if ts == self.slot.ts {
            return if self.pending {
                Accept::Same
            } else {
                Accept::Late
            };
        }
        if ts < self.slot.ts {
            return Accept::Late;
        }
        if self.pending {
            self.finalize(env, key, out);
        }
        self.slot = Slot { ts, ..Slot::EMPTY };
        self.pending = true;
        Accept::Opened
    }

    /// Folds the complete scrape into the run and judges it.
    fn finalize(&mut self, env: &Env<'_>, key: &KeyView<'_>, out: &mut Vec<Finding>) {
        self.pending = false;
        let (s, slot) = (env.s, self.slot);
        if slot.util.is_nan() {
            return; // no utilisation in this scrape: nothing to judge
        }
        let ts = slot.ts;
        let busy = f64::from(slot.util) >= s.cfg.min_util_pct;
        let verdict = if busy {
            Some(self.fold(s, &slot))
        } else {
            None
        };
        if !busy {
            self.run_start = i64::MIN;
        }
        let quiet = verdict.is_none_or(|v| !v.pipes_idle);
        if let Some(ep) = self.episode.as_deref_mut() {
            if let Some(v) = verdict {
                ep.latest = v;
                ep.latest_ts = ts;
            }
            if !quiet {
                self.quiet_since = i64::MIN;
                if verdict.is_some_and(|v| v.profiling())
                    && !ep.raised.profiling()
                    && ep.core.severity < ep.strong
                {
                    // Profiling counters appeared and confirm it: report the stronger severity.
                    ep.core.severity = ep.strong;
                    ep.raised = ep.latest;
                    ep.core.add_event(key, ts);
                    out.push(ep.emit(s, key, Status::Firing, ts, None));
                }
                return;
            }
            if self.quiet_since == i64::MIN {
                self.quiet_since = ts;
            }
            if ts - self.quiet_since >= s.resolve_after {
                ep.core.add_event(key, ts);
                let why = if busy {
                    "the GPU pipes are busy: not a hash loop"
                } else {
                    "utilisation dropped"
                };
                out.push(ep.emit(s, key, Status::Resolved, ts, Some(why)));
                self.episode = None;
                self.context = None;
            }
            return;
        }
        let Some(v) = verdict.filter(|v| v.matches) else {
            return;
        };
        if ts < self.ignore_until {
            return;
        }
        if !key.has_pod() && env.allocations.allocated(key, ts, s.grace) {
            // A device-level series beside pod-labelled ones: the pod's series is judged instead.
            self.ignore_until = ts.saturating_add(s.recheck);
            return;
        }
        let context = self.context.as_deref().cloned().unwrap_or_default();
        let attribution = Attribution::of(env.inventory, key, context);
        let Some(strong) = s
            .cfg
            .severity_by_role
            .grade(attribution.role, attribution.unallocated)
            .severity()
        else {
            self.ignore_until = ts.saturating_add(s.recheck);
            return;
        };
        let severity = if v.profiling() || !s.cfg.lower_severity_without_profiling {
            strong
        } else {
            lower(strong)
        };
        let mut core = EpisodeCore::new(self.run_start, ts, severity, attribution);
        core.add_event(key, self.run_start);
        core.add_event(key, ts);
        let mut ep = Box::new(Episode {
            core,
            strong,
            run_start: self.run_start,
            raised: v,
            latest: v,
            latest_ts: ts,
        });
        out.push(ep.emit(s, key, Status::Firing, ts, None));
        self.quiet_since = i64::MIN;
        self.episode = Some(ep);
    }

    /// Folds a busy scrape into the run's statistics.
    fn fold(&mut self, s: &Settings, slot: &Slot) -> Verdict {
        let cfg = &s.cfg;
        let ts = slot.ts;
        let first = self.run_start == i64::MIN;
        if first {
            self.run_start = ts;
            self.power = Decayed::default();
            self.tensor = Decayed::default();
            self.fp = Decayed::default();
            self.sm = Decayed::default();
        } else {
            let f = (-nanos_to_secs(ts - self.last_ts) / s.tau_secs).exp();
            for d in [
                &mut self.power,
                &mut self.tensor,
                &mut self.fp,
                &mut self.sm,
            ] {
                d.decay(f);
            }
        }
        self.last_ts = ts;
        // The run's first scrape straddles the power ramp: it says nothing about flatness.
        if !first && !slot.power.is_nan() {
            self.power.push(f64::from(slot.power));
        }
        for (d, x) in [
            (&mut self.tensor, slot.tensor),
            (&mut self.fp, slot.fp),
            (&mut self.sm, slot.sm),
        ] {
            if !x.is_nan() {
                d.push(f64::from(x));
            }
        }
        let power_mean = self.power.get();
        let power_cv = power_mean
            .filter(|m| *m > 0.0 && self.power.n >= 2)
            .map(|m| self.power.var().sqrt() / m);
        let (tensor, fp) = (self.tensor.get(), self.fp.get());
        let pipes_idle = tensor.is_none_or(|t| t <= cfg.max_tensor_active_ratio)
            && fp.is_none_or(|f| f <= cfg.max_fp_active_ratio);
        let run = ts - self.run_start;
        Verdict {
            util: f64::from(slot.util),
            run_secs: nanos_to_secs(run),
            power_mean,
            power_cv,
            tensor,
            fp,
            sm: self.sm.get(),
            pipes_idle,
            matches: run >= s.min_duration
                && power_cv.is_some_and(|cv| cv <= cfg.max_power_cv)
                && pipes_idle,
        }
    }
}

/// One severity step down (info stays info).
fn lower(s: Severity) -> Severity {
    Severity::ALL[(s.rank() as usize).saturating_sub(1)]
}

impl Episode {
    fn emit(
        &mut self,
        s: &Settings,
        key: &KeyView<'_>,
        status: Status,
        last_ts: i64,
        resolution: Option<&str>,
    ) -> Finding {
        let cfg = &s.cfg;
        let r = self.raised;
        let summary = match status {
            Status::Firing => format!(
                "Crypto-miner fingerprint on {} ({}): {:.0} % util for {:.0} s at a flat {:.0} W (CV {:.1} %){}",
                gpu_name(key),
                who(key, &self.core.attribution),
                r.util,
                r.run_secs,
                r.power_mean.unwrap_or(f64::NAN),
                r.power_cv.unwrap_or(f64::NAN) * 100.0,
                if r.profiling() {
                    format!(
                        ", tensor pipes {:.2}, FP pipes {}",
                        r.tensor.unwrap_or(0.0),
                        r.fp.map_or("n/a".to_string(), |f| format!("{f:.3}"))
                    )
                } else {
                    " (no profiling counters)".to_string()
                }
            ),
            Status::Resolved => {
                format!(
                    "Crypto-miner fingerprint on {} ended ({})",
                    gpu_name(key),
                    resolution.unwrap_or("resolved")
                )
            }
        };
        let stats = |v: &Verdict| {
            json!({
                "util_pct": v.util,
                "run_secs": round3(v.run_secs),
                "power_mean_w": v.power_mean.map(round3),
                "power_cv": v.power_cv.map(|x| round3(x * 1000.0) / 1000.0),
                "tensor_active_mean": v.tensor.map(|x| round3(x * 1000.0) / 1000.0),
                "fp_active_mean": v.fp.map(|x| round3(x * 1000.0) / 1000.0),
                "sm_active_mean": v.sm.map(|x| round3(x * 1000.0) / 1000.0),
            })
        };
        let evidence = json!({
            "run_start": rfc3339(self.run_start),
            "profiling_counters": r.profiling(),
            "raised": stats(&r),
            "latest": stats(&self.latest),
            "latest_ts": rfc3339(self.latest_ts),
            "gpu_i_id": key.gi,
            "gpu_request": self.core.attribution.gpu_request,
            "resolution": resolution,
            "thresholds": {
                "min_util_pct": cfg.min_util_pct,
                "min_duration_secs": cfg.min_duration_secs,
                "max_power_cv": cfg.max_power_cv,
                "max_tensor_active_ratio": cfg.max_tensor_active_ratio,
                "max_fp_active_ratio": cfg.max_fp_active_ratio,
                "window_secs": cfg.window_secs,
            },
        });
        self.core
            .emit(NAME, key, status, last_ts, summary, evidence)
    }
}

#[cfg(test)]
mod tests {
    use gpusiem_ingest::Stream;
    use proptest::prelude::*;

    use super::super::gpu_series::NANOS;
    use super::super::gpu_series::testing::{Row, batch};
    use super::*;

    fn scrape(
        t: i64,
        pod: Option<&'static str>,
        util: f64,
        power: f64,
        pipes: Option<(f64, f64)>,
    ) -> Vec<Row<'static>> {
        let mk = |m, v| match pod {
            Some(p) => Row::pod(t * NANOS, m, "GPU-7", p, Some(v)),
            None => Row::none(t * NANOS, m, "GPU-7", Some(v)),
        };
        let mut rows = vec![mk(metric::GPU_UTIL, util), mk(metric::POWER_USAGE, power)];
        if let Some((tensor, fp32)) = pipes {
            rows.push(mk(metric::PIPE_TENSOR_ACTIVE, tensor));
            rows.push(mk(metric::PIPE_FP32_ACTIVE, fp32));
        }
        rows
    }

    fn run(scrapes: impl IntoIterator<Item = Vec<Row<'static>>>) -> Vec<Finding> {
        let mut d = MinerFingerprint::new(MinerFingerprintConfig::default());
        let inv = Inventory::default();
        let cx = DetectContext {
            inventory: &inv,
            watermark: 0,
        };
        let mut out = Vec::new();
        for rows in scrapes {
            d.observe(&cx, Stream::GpuMetrics, &batch(&rows), &mut out);
            let now = rows.iter().map(|r| r.ts).max().unwrap_or(0) + 1;
            d.on_tick(&cx, now, &mut out);
        }
        out
    }

    /// Power with ±0.5 % wobble after a ramp.
    fn power(t: i64, base: f64) -> f64 {
        if t == 0 {
            base / 3.0
        } else {
            base * (1.0 + 0.005 * ((t as f64) * 0.7).sin())
        }
    }

    #[test]
    fn an_integer_hash_loop_on_an_unallocated_gpu_is_critical_and_resolves() {
        let mut scrapes: Vec<_> = (0..=600)
            .step_by(30)
            .map(|t| scrape(t, None, 100.0, power(t, 610.0), Some((0.0, 0.0))))
            .collect();
        scrapes.extend(
            (630..=800)
                .step_by(30)
                .map(|t| scrape(t, None, 0.0, 80.0, Some((0.0, 0.0)))),
        );
        let out = run(scrapes);
        let st: Vec<(Status, Severity)> = out.iter().map(|f| (f.status, f.severity)).collect();
        assert_eq!(
            st,
            [
                (Status::Firing, Severity::Critical),
                (Status::Resolved, Severity::Critical)
            ]
        );
        assert_eq!(
            out[0].ts,
            300 * NANOS,
            "raised once the run is min_duration_secs long"
        );
        assert_eq!(
            out[0].evidence["run_start"],
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(out[0].evidence["profiling_counters"], true);
        assert_eq!(out[1].last_ts, 750 * NANOS);
    }

    #[test]
    fn without_profiling_counters_the_severity_is_one_step_lower() {
        // Unknown pod: high with counters, medium without.
        let out = run((0..=400)
            .step_by(30)
            .map(|t| scrape(t, Some("job-0"), 99.0, power(t, 300.0), None)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Medium);
        assert_eq!(out[0].pod.as_deref(), Some("job-0"));
    }

    #[test]
    fn busy_tensor_or_fp_pipes_swinging_power_and_bursts_are_not_miners() {
        // Tensor-heavy (training-like).
        assert!(
            run((0..=900).step_by(30).map(|t| scrape(
                t,
                None,
                100.0,
                power(t, 600.0),
                Some((0.4, 0.0))
            )))
            .is_empty()
        );
        // FP32 compute (the real fp32 loop: 0.067).
        assert!(
            run((0..=900).step_by(30).map(|t| scrape(
                t,
                None,
                100.0,
                power(t, 460.0),
                Some((0.0, 0.067))
            )))
            .is_empty()
        );
        // Power swinging ±20 %.
        let swing = |t: i64| 500.0 + if (t / 30) % 2 == 0 { 100.0 } else { -100.0 };
        assert!(
            run((0..=900)
                .step_by(30)
                .map(|t| scrape(t, None, 100.0, swing(t), Some((0.0, 0.0)))))
            .is_empty()
        );
        // Bursts: util drops every few minutes, so no run is long enough.
        let util = |t: i64| if (t / 30) % 8 == 7 { 10.0 } else { 100.0 };
        assert!(
            run((0..=1800).step_by(30).map(|t| scrape(
                t,
                None,
                util(t),
                power(t, 600.0),
                Some((0.0, 0.0))
            )))
            .is_empty()
        );
        // Invalid util (> 100) is ignored, not "busy".
        assert!(
            run((0..=900)
                .step_by(30)
                .map(|t| scrape(t, None, 4000.0, power(t, 600.0), None)))
            .is_empty()
        );
    }

    proptest! {
        /// The streaming decayed statistics equal the batch formula with weights exp(-(T - t_i)/τ).
        #[test]
        fn decayed_stats_equal_the_batch_formula(
            xs in proptest::collection::vec((1u32..120, -1000.0f64..1000.0), 1..40),
            tau in 5.0f64..1000.0,
        ) {
            let mut d = Decayed::default();
            let mut t = 0.0;
            let mut points = Vec::new();
            for (i, &(dt, x)) in xs.iter().enumerate() {
                if i > 0 {
                    t += f64::from(dt);
                    d.decay((-f64::from(dt) / tau).exp());
                }
                d.push(x);
                points.push((t, x));
            }
            let w: Vec<f64> = points.iter().map(|&(ti, _)| (-(t - ti) / tau).exp()).collect();
            let sw: f64 = w.iter().sum();
            let mean = points.iter().zip(&w).map(|(&(_, x), wi)| wi * x).sum::<f64>() / sw;
            let var = points.iter().zip(&w).map(|(&(_, x), wi)| wi * (x - mean).powi(2)).sum::<f64>() / sw;
            prop_assert!((d.w - sw).abs() <= 1e-9 * sw);
            prop_assert!((d.mean - mean).abs() <= 1e-6 * (1.0 + mean.abs()));
            prop_assert!((d.var() - var).abs() <= 1e-6 * (1.0 + var));
        }
    }
}
