//! `gpu_memory_spike`: a large, sudden rise of a series' GPU memory (`DCGM_FI_DEV_FB_USED`, MiB)
//! over its own robust baseline, judged by the role of the pod it is attributed to.
//!
//! ```text
//!  FB_USED sample x ──► episode open? ── yes ──► peak, material growth → update;
//!        │                                       near baseline for resolve_after_secs → resolve
//!        no
//!        ▼
//!  warm? and  x − baseline ≥ min_rise_mib            (absolute rise over the baseline)
//!        and  x − min(last window_secs) ≥ min_rise_mib (…that happened within a short time)
//!        and  (x − baseline) / σ ≥ min_deviations     (…and is far outside the usual noise)
//!        ──► role → severity (serving: ignored) ──► raise; baseline frozen while open
//!  otherwise ──► baseline update (EWMA with Huber clipping)
//! ```
//!
//! The baseline is an EWMA of the level and of the absolute deviation around it; each update is
//! clipped to `clip_deviations` σ, so one outlier moves it little while a lasting change is
//! learnt within tens of samples. σ is the mean absolute deviation × √(π/2) (the normal
//! relation), floored at `min_scale_mib` so a flat series (an idle GPU at 0 MiB) has a finite,
//! meaningful scale. A real capture (H200, `h200-nvidia-smi-fb-spike-timeline.csv`): 0 → 25715 MiB
//! within 500 ms — 25715 MiB over the baseline, 400 σ — is a spike; serving bursts of
//! ~950 MiB (`h200-nvml-gpm-serving-miner-fp32.jsonl`) are not.

use serde::{Deserialize, Serialize};
use serde_json::json;
use statrs::distribution::{ContinuousCDF, Normal};

use super::Problems;
use super::gpu_series::{
    Allocations, AsKey, Attribution, EpisodeCore, GpuRows, Grade, KeyView, NANOS, RoleSeverities,
    SeriesKey, SeriesMap, gpu_name, map_bytes, metric, nanos_to_secs, rfc3339, round3,
    secs_to_nanos, who,
};
use crate::detector::{DetectContext, Detector};
use crate::finding::{Finding, Status};
use crate::inventory::Inventory;

/// Detector id.
pub const NAME: &str = "gpu_memory_spike";

/// `[detectors.gpu_memory_spike]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuMemorySpikeConfig {
    /// Run the detector.
    pub enabled: bool,
    /// Smallest rise (MiB) over both the baseline and the lowest value of the last
    /// `window_secs` that counts as a spike. 2 GiB: above a CUDA context (250–500 MiB measured on
    /// an H200) and allocator churn, far below a model or a miner's working set (the real
    /// capture allocated 24 GiB at once).
    pub min_rise_mib: f64,
    /// Smallest rise in robust standard deviations of the series' own noise.
    pub min_deviations: f64,
    /// Floor of the robust scale (MiB), so an idle series at a constant value has a finite one.
    pub min_scale_mib: f64,
    /// "Within a short time": the rise must also stand over the lowest value seen in the last
    /// `window_secs` … 2 × `window_secs` (4 scrapes at dcgm-exporter's default 30 s).
    pub window_secs: u64,
    /// Samples learnt before a series is judged.
    pub warmup_samples: u32,
    /// EWMA weight of a new sample in the baseline (0.05: a memory of ~20 samples).
    pub baseline_alpha: f64,
    /// Baseline updates are clipped to this many σ (Huber), so outliers barely move it.
    pub clip_deviations: f64,
    /// A series is back near its baseline when less than this many MiB above it: half of
    /// `min_rise_mib`, the usual hysteresis band (raise at +2 GiB, clear below +1 GiB).
    pub resolve_rise_mib: f64,
    /// …for this long (hysteresis) before the episode resolves.
    pub resolve_after_secs: u64,
    /// An open episode is updated when its rise grows by this factor over the last reported one.
    pub update_growth_ratio: f64,
    /// An episode whose level persists this long is resolved and the level becomes the baseline.
    pub accept_new_level_after_secs: u64,
    /// How long a role that is not judged (`ignore`) is trusted before the inventory is asked again.
    pub role_recheck_secs: u64,
    /// A GPU counts as allocated to a pod while a pod-labelled series of it was seen this
    /// recently (only used when `severity_by_role.unallocated` is not `ignore`).
    pub allocation_grace_secs: u64,
    /// Series silent for this long (event time) are forgotten; an open episode resolves.
    pub idle_timeout_secs: u64,
    /// Severity by role. A serving pod's own load changes are not findings; a GPU allocated to
    /// no pod is `unallocated_gpu_use`'s finding, so it is ignored here by default.
    pub severity_by_role: RoleSeverities,
}

impl Default for GpuMemorySpikeConfig {
    fn default() -> Self {
        GpuMemorySpikeConfig {
            enabled: true,
            min_rise_mib: 2048.0,
            min_deviations: 6.0,
            min_scale_mib: 64.0,
            window_secs: 120,
            warmup_samples: 3,
            baseline_alpha: 0.05,
            clip_deviations: 3.0,
            resolve_rise_mib: 1024.0,
            resolve_after_secs: 120,
            update_growth_ratio: 1.5,
            accept_new_level_after_secs: 6 * 3600,
            role_recheck_secs: 300,
            allocation_grace_secs: 120,
            idle_timeout_secs: 900,
            severity_by_role: RoleSeverities {
                serving: Grade::Ignore,
                training: Grade::Low,
                notebook: Grade::Medium,
                batch: Grade::Low,
                non_gpu: Grade::High,
                unknown: Grade::Medium,
                unallocated: Grade::Ignore,
            },
        }
    }
}

impl GpuMemorySpikeConfig {
    pub(super) fn validate(&self, path: &str, p: &mut Problems) {
        p.number(path, "min_rise_mib", self.min_rise_mib, 0.0, true);
        p.number(path, "min_deviations", self.min_deviations, 0.0, false);
        p.number(path, "min_scale_mib", self.min_scale_mib, 0.0, true);
        p.secs(path, "window_secs", self.window_secs);
        p.range(
            path,
            "baseline_alpha",
            self.baseline_alpha,
            f64::MIN_POSITIVE,
            1.0,
        );
        p.number(path, "clip_deviations", self.clip_deviations, 0.0, true);
        p.number(path, "resolve_rise_mib", self.resolve_rise_mib, 0.0, false);
        if self.min_rise_mib > 0.0 && self.resolve_rise_mib >= self.min_rise_mib {
            p.push(
                path,
                "resolve_rise_mib",
                "must be below min_rise_mib (hysteresis)",
            );
        }
        p.secs(path, "resolve_after_secs", self.resolve_after_secs);
        p.number(
            path,
            "update_growth_ratio",
            self.update_growth_ratio,
            1.0,
            true,
        );
        p.secs(
            path,
            "accept_new_level_after_secs",
            self.accept_new_level_after_secs,
        );
        p.secs(path, "role_recheck_secs", self.role_recheck_secs);
        p.secs(path, "idle_timeout_secs", self.idle_timeout_secs);
    }
}

/// σ of a normal distribution per unit of mean absolute deviation.
const MAD_TO_SIGMA: f64 = 1.253_314_137_315_500_3; // √(π/2)

/// Settings in the units the hot path uses.
#[derive(Debug, Clone)]
struct Settings {
    cfg: GpuMemorySpikeConfig,
    window: i64,
    resolve_after: i64,
    accept_after: i64,
    recheck: i64,
    grace: i64,
    idle: i64,
    sweep: i64,
    judge_unallocated: bool,
}

/// The adaptive baseline: EWMA of level and absolute deviation, Huber-clipped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Baseline {
    level: f32,
    /// Mean absolute deviation around `level`.
    mad: f32,
    n: u32,
}

impl Baseline {
    /// Robust σ, floored.
    fn sigma(&self, floor: f64) -> f64 {
        (f64::from(self.mad) * MAD_TO_SIGMA).max(floor)
    }

    fn update(&mut self, x: f64, cfg: &GpuMemorySpikeConfig) {
        let (level, mad) = (f64::from(self.level), f64::from(self.mad));
        if self.n < cfg.warmup_samples.max(1) {
            // Warm-up: the plain running mean, and the mean distance from it.
            self.n += 1;
            let n = f64::from(self.n);
            let d = x - level;
            self.level = (level + d / n) as f32;
            self.mad = (mad + (d.abs() - mad) / n) as f32;
            return;
        }
        self.n = self.n.saturating_add(1);
        let limit = cfg.clip_deviations * self.sigma(cfg.min_scale_mib);
        let c = (x - level).clamp(-limit, limit);
        self.level = (level + cfg.baseline_alpha * c) as f32;
        self.mad = (mad + cfg.baseline_alpha * (c.abs() - mad)) as f32;
    }
}

/// The lowest value over the last one to two windows: two buckets, O(1).
#[derive(Debug, Clone, Copy)]
struct WindowMin {
    start: i64,
    cur: f32,
    prev: f32,
}

impl WindowMin {
    fn new(ts: i64) -> Self {
        WindowMin {
            start: ts,
            cur: f32::INFINITY,
            prev: f32::INFINITY,
        }
    }

    fn roll(&mut self, ts: i64, window: i64) {
        if ts >= self.start.saturating_add(window) {
            self.prev = if ts < self.start.saturating_add(window.saturating_mul(2)) {
                self.cur
            } else {
                f32::INFINITY
            };
            self.cur = f32::INFINITY;
            self.start = ts;
        }
    }

    fn min(&self) -> f32 {
        self.cur.min(self.prev)
    }

    fn push(&mut self, x: f32) {
        self.cur = self.cur.min(x);
    }
}

/// Per-series state (kept small: ~64 bytes plus the key; an open episode is boxed).
#[derive(Debug)]
struct Series {
    base: Baseline,
    last_ts: i64,
    prev: f32,
    win: WindowMin,
    /// The role was `ignore` when last asked; not asked again before this time.
    ignore_until: i64,
    episode: Option<Box<Episode>>,
}

/// An open spike.
#[derive(Debug)]
struct Episode {
    core: EpisodeCore,
    /// The baseline when raised (frozen while the episode is open).
    base: Baseline,
    /// The decision, as evidence.
    raised: serde_json::Value,
    peak: f32,
    peak_ts: i64,
    /// Rise reported by the latest emission.
    reported_rise: f32,
    latest: f32,
    latest_ts: i64,
    /// Since when the series is near its baseline (`i64::MIN`: it is not).
    near_since: i64,
}

/// One sample being processed.
struct Sample<'r, 'a> {
    key: KeyView<'a>,
    ts: i64,
    x: f64,
    rows: &'r GpuRows<'a>,
    row: usize,
}

/// Read-only context of a step.
struct Env<'e> {
    s: &'e Settings,
    inventory: &'e Inventory,
    allocations: &'e Allocations,
}

/// The detector. See the module docs.
#[derive(Debug)]
pub struct GpuMemorySpike {
    s: Settings,
    series: SeriesMap<Series>,
    key_heap: usize,
    allocations: Allocations,
    next_sweep: i64,
}

impl GpuMemorySpike {
    /// A detector with `config` (validated by [`super::DetectorsConfig::validate`]).
    pub fn new(cfg: GpuMemorySpikeConfig) -> Self {
        let idle = secs_to_nanos(cfg.idle_timeout_secs);
        let s = Settings {
            window: secs_to_nanos(cfg.window_secs),
            resolve_after: secs_to_nanos(cfg.resolve_after_secs),
            accept_after: secs_to_nanos(cfg.accept_new_level_after_secs),
            recheck: secs_to_nanos(cfg.role_recheck_secs),
            grace: secs_to_nanos(cfg.allocation_grace_secs),
            idle,
            sweep: (idle / 4).clamp(NANOS, 60 * NANOS),
            judge_unallocated: cfg.severity_by_role.unallocated != Grade::Ignore,
            cfg,
        };
        GpuMemorySpike {
            s,
            series: SeriesMap::default(),
            key_heap: 0,
            allocations: Allocations::default(),
            next_sweep: i64::MIN,
        }
    }
}

impl Detector for GpuMemorySpike {
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
            if rows.metric(row) != metric::FB_USED {
                continue;
            }
            let Some(key) = rows.key(row) else { continue };
            let Some(x) = rows.value(row).filter(|v| *v >= 0.0) else {
                continue;
            };
            let ts = rows.ts(row);
            if key.has_pod() {
                if self.s.judge_unallocated {
                    self.allocations.witness(&key, ts);
                }
            } else if !self.s.judge_unallocated {
                continue;
            }
            let smp = Sample {
                key,
                ts,
                x,
                rows: &rows,
                row,
            };
            let env = Env {
                s: &self.s,
                inventory: cx.inventory,
                allocations: &self.allocations,
            };
            if let Some(series) = self.series.get_mut(&key as &dyn AsKey) {
                series.step(&env, &smp, out);
                continue;
            }
            let Some(k) = SeriesKey::new(&key) else {
                continue;
            };
            self.key_heap += k.heap_bytes();
            let series = self.series.entry(k).or_insert_with(|| Series::new(ts));
            series.step(&env, &smp, out);
        }
    }

    fn on_tick(&mut self, _cx: &DetectContext<'_>, now: i64, out: &mut Vec<Finding>) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(self.s.sweep);
        let (s, heap) = (&self.s, &mut self.key_heap);
        self.series.retain(|k, series| {
            if now.saturating_sub(series.last_ts) <= s.idle {
                return true;
            }
            if let Some(mut ep) = series.episode.take() {
                let key = k.view();
                out.push(ep.emit(
                    s,
                    &key,
                    Status::Resolved,
                    series.last_ts,
                    Some("the series stopped reporting"),
                ));
            }
            *heap -= k.heap_bytes();
            false
        });
        self.allocations.evict(now, s.idle);
    }

    fn state_bytes(&self) -> usize {
        let episodes: usize = self
            .series
            .values()
            .filter_map(|s| s.episode.as_deref())
            .map(|e| size_of::<Episode>() + e.core.heap_bytes() + 512)
            .sum();
        map_bytes(&self.series, self.key_heap) + episodes + self.allocations.bytes()
    }

    fn series(&self) -> usize {
        self.series.len()
    }
}

impl Series {
    fn new(ts: i64) -> Self {
        Series {
            base: Baseline::default(),
            last_ts: i64::MIN,
            prev: f32::NAN,
            win: WindowMin::new(ts),
            ignore_until: i64::MIN,
            episode: None,
        }
    }

    fn step(&mut self, env: &Env<'_>, smp: &Sample<'_, '_>, out: &mut Vec<Finding>) {
        let (s, ts, x) = (env.s, smp.ts, smp.x);
        if ts <= self.last_ts {
            return; // late or duplicate sample: event time only moves forward per series
        }
        self.win.roll(ts, s.window);
        if let Some(ep) = self.episode.as_deref_mut() {
            match ep.step(env, smp, out) {
                After::Open => {}
                After::Resolved => self.episode = None,
                After::Rebased(b) => {
                    self.episode = None;
                    self.base = b;
                }
            }
        } else {
            if self.base.n >= s.cfg.warmup_samples && ts >= self.ignore_until {
                self.judge(env, smp, out);
            }
            if self.episode.is_none() {
                self.base.update(x, &s.cfg);
            }
        }
        self.win.push(x as f32);
        self.prev = x as f32;
        self.last_ts = ts;
    }

    fn judge(&mut self, env: &Env<'_>, smp: &Sample<'_, '_>, out: &mut Vec<Finding>) {
        let (s, ts, x) = (env.s, smp.ts, smp.x);
        let cfg = &s.cfg;
        let level = f64::from(self.base.level);
        let rise = x - level;
        // The lowest value of the last window; after a gap longer than that, the last value.
        let window_min = f64::from(if self.win.min().is_finite() {
            self.win.min()
        } else {
            self.prev
        });
        let window_rise = x - window_min;
        let sigma = self.base.sigma(cfg.min_scale_mib);
        let deviations = rise / sigma;
        if rise < cfg.min_rise_mib
            || window_rise < cfg.min_rise_mib
            || deviations < cfg.min_deviations
        {
            return;
        }
        if !smp.key.has_pod() && env.allocations.allocated(&smp.key, ts, s.grace) {
            // A device-level series beside pod-labelled ones: the pod's series is judged instead.
            self.ignore_until = ts.saturating_add(s.recheck);
            return;
        }
        let attribution = Attribution::of(env.inventory, &smp.key, smp.rows.context(smp.row));
        let Some(severity) = cfg
            .severity_by_role
            .grade(attribution.role, attribution.unallocated)
            .severity()
        else {
            self.ignore_until = ts.saturating_add(s.recheck);
            return;
        };
        let elapsed = if self.last_ts == i64::MIN {
            None
        } else {
            Some(round3(nanos_to_secs(ts - self.last_ts)))
        };
        let raised = json!({
            "ts": rfc3339(ts),
            "value_mib": x,
            "previous_mib": (!self.prev.is_nan()).then_some(f64::from(self.prev)),
            "previous_ts": (self.last_ts != i64::MIN).then(|| rfc3339(self.last_ts)),
            "elapsed_secs": elapsed,
            "rise_mib": round3(rise),
            "window_min_mib": round3(window_min),
            "window_rise_mib": round3(window_rise),
            "deviations": round3(deviations),
            "tail_probability": Normal::standard().sf(deviations),
        });
        let mut core = EpisodeCore::new(ts, ts, severity, attribution);
        if self.last_ts != i64::MIN {
            core.add_event(&smp.key, self.last_ts);
        }
        core.add_event(&smp.key, ts);
        let mut ep = Box::new(Episode {
            core,
            base: self.base,
            raised,
            peak: x as f32,
            peak_ts: ts,
            reported_rise: rise as f32,
            latest: x as f32,
            latest_ts: ts,
            near_since: i64::MIN,
        });
        out.push(ep.emit(s, &smp.key, Status::Firing, ts, None));
        self.episode = Some(ep);
    }
}

/// What became of an episode after a sample.
enum After {
    /// Still open.
    Open,
    /// Resolved; the series goes on with the frozen baseline.
    Resolved,
    /// Resolved by accepting the new level as the baseline.
    Rebased(Baseline),
}

impl Episode {
    /// Folds a sample into the open episode.
    fn step(&mut self, env: &Env<'_>, smp: &Sample<'_, '_>, out: &mut Vec<Finding>) -> After {
        let (s, ts, x) = (env.s, smp.ts, smp.x);
        let cfg = &s.cfg;
        self.latest = x as f32;
        self.latest_ts = ts;
        if x > f64::from(self.peak) {
            self.peak = x as f32;
            self.peak_ts = ts;
        }
        let rise = x - f64::from(self.base.level);
        if rise <= cfg.resolve_rise_mib {
            if self.near_since == i64::MIN {
                self.near_since = ts;
            }
            if ts - self.near_since >= s.resolve_after {
                self.core.add_event(&smp.key, ts);
                out.push(self.emit(
                    s,
                    &smp.key,
                    Status::Resolved,
                    ts,
                    Some("the series returned to its baseline"),
                ));
                return After::Resolved;
            }
            return After::Open;
        }
        self.near_since = i64::MIN;
        if ts - self.core.window_start >= s.accept_after {
            self.core.add_event(&smp.key, ts);
            out.push(self.emit(
                s,
                &smp.key,
                Status::Resolved,
                ts,
                Some("the new level persisted and became the baseline"),
            ));
            return After::Rebased(Baseline {
                level: x as f32,
                ..self.base
            });
        }
        if rise >= f64::from(self.reported_rise) * cfg.update_growth_ratio {
            // Material growth: report it, with the role as the inventory knows it now (never
            // lowering the severity within an episode).
            let attribution = Attribution::of(env.inventory, &smp.key, smp.rows.context(smp.row));
            let grade = cfg
                .severity_by_role
                .grade(attribution.role, attribution.unallocated);
            if let Some(sev) = grade.severity()
                && sev > self.core.severity
            {
                self.core.severity = sev;
                self.core.attribution = attribution;
            }
            self.reported_rise = rise as f32;
            self.core.add_event(&smp.key, ts);
            out.push(self.emit(s, &smp.key, Status::Firing, ts, None));
        }
        After::Open
    }

    fn emit(
        &mut self,
        s: &Settings,
        key: &KeyView<'_>,
        status: Status,
        last_ts: i64,
        resolution: Option<&str>,
    ) -> Finding {
        let cfg = &s.cfg;
        let level = f64::from(self.base.level);
        let rise = self.raised["rise_mib"].as_f64().unwrap_or_default();
        let elapsed = self.raised["elapsed_secs"].as_f64();
        let summary = match status {
            Status::Firing => format!(
                "GPU memory of {} on {} rose {:.0} MiB over its baseline of {:.0} MiB{}; peak {:.0} MiB",
                who(key, &self.core.attribution),
                gpu_name(key),
                rise,
                level,
                elapsed
                    .map(|e| format!(" within {e} s"))
                    .unwrap_or_default(),
                self.peak,
            ),
            Status::Resolved => format!(
                "GPU memory spike on {} ended ({}); peak was {:.0} MiB",
                gpu_name(key),
                resolution.unwrap_or("resolved"),
                self.peak
            ),
        };
        let evidence = json!({
            "metric": metric::FB_USED,
            "unit": "MiB",
            "baseline_mib": round3(level),
            "baseline_sigma_mib": round3(self.base.sigma(cfg.min_scale_mib)),
            "baseline_samples": self.base.n,
            "raised": self.raised,
            "latest": { "ts": rfc3339(self.latest_ts), "value_mib": f64::from(self.latest) },
            "peak_mib": f64::from(self.peak),
            "peak_ts": rfc3339(self.peak_ts),
            "gpu_i_id": key.gi,
            "gpu_request": self.core.attribution.gpu_request,
            "resolution": resolution,
            "thresholds": {
                "min_rise_mib": cfg.min_rise_mib,
                "min_deviations": cfg.min_deviations,
                "min_scale_mib": cfg.min_scale_mib,
                "window_secs": cfg.window_secs,
                "resolve_rise_mib": cfg.resolve_rise_mib,
                "resolve_after_secs": cfg.resolve_after_secs,
            },
        });
        self.core
            .emit(NAME, key, status, last_ts, summary, evidence)
    }
}

/// Unit tests of the statistics and of the episode logic on hand-made series; the golden
/// scenarios (real captures) are in `detect/tests/integration/golden.rs`.
#[cfg(test)]
mod tests {
    use gpusiem_ingest::Stream;
    use proptest::prelude::*;

    use super::super::gpu_series::testing::{Row, batch};
    use super::*;
    use crate::finding::Severity;
    use crate::inventory::Inventory;

    fn run(d: &mut GpuMemorySpike, values: &[(i64, Option<f64>)]) -> Vec<Finding> {
        let inv = Inventory::default();
        let cx = DetectContext {
            inventory: &inv,
            watermark: 0,
        };
        let rows: Vec<Row<'_>> = values
            .iter()
            .map(|&(t, v)| Row::pod(t * NANOS, metric::FB_USED, "GPU-1", "nb-0", v))
            .collect();
        let mut out = Vec::new();
        d.observe(&cx, Stream::GpuMetrics, &batch(&rows), &mut out);
        out
    }

    fn secs(v: &[f64]) -> Vec<(i64, Option<f64>)> {
        v.iter()
            .enumerate()
            .map(|(i, &x)| (i as i64 * 30, Some(x)))
            .collect()
    }

    #[test]
    fn a_step_of_gigabytes_is_one_episode_and_resolves_after_hysteresis() {
        // Unknown pod (empty inventory) → medium by default.
        let mut d = GpuMemorySpike::new(GpuMemorySpikeConfig::default());
        let mut v = vec![100.0; 10];
        v.extend([20_000.0; 10]);
        v.extend([120.0; 10]);
        let out = run(&mut d, &secs(&v));
        let st: Vec<(Status, Severity, u32)> = out
            .iter()
            .map(|f| (f.status, f.severity, f.revision))
            .collect();
        assert_eq!(
            st,
            [
                (Status::Firing, Severity::Medium, 0),
                (Status::Resolved, Severity::Medium, 1)
            ]
        );
        assert_eq!(out[0].id, out[1].id);
        assert_eq!(out[0].ts, 10 * 30 * NANOS);
        // Resolved 120 s after the first sample near the baseline (t = 600 s).
        assert_eq!(out[1].last_ts, (600 + 120) * NANOS);
        assert_eq!(out[0].evidence["raised"]["rise_mib"], 19_900.0);
        assert_eq!(out[0].event_ids.len(), 2);
    }

    #[test]
    fn small_rises_slow_ramps_and_no_data_are_not_spikes() {
        let mut d = GpuMemorySpike::new(GpuMemorySpikeConfig::default());
        // +1 GiB steps (below min_rise), then a slow ramp of 200 MiB per scrape to +10 GiB.
        let mut v = vec![500.0; 5];
        v.extend([1500.0; 5]);
        v.extend((0..50).map(|i| 1500.0 + 200.0 * f64::from(i)));
        let mut samples = secs(&v);
        // Blank sentinels (null) and NaN in between are "no data".
        samples.push((5000, None));
        samples.push((5030, Some(f64::NAN)));
        assert!(run(&mut d, &samples).is_empty());
    }

    #[test]
    fn warm_up_comes_before_judging() {
        let mut d = GpuMemorySpike::new(GpuMemorySpikeConfig::default());
        assert!(run(&mut d, &secs(&[0.0, 0.0, 30_000.0, 30_000.0])).is_empty());
    }

    #[test]
    fn growth_updates_once_and_a_later_spike_is_a_new_episode() {
        let mut d = GpuMemorySpike::new(GpuMemorySpikeConfig::default());
        let mut v = vec![0.0; 5];
        v.extend([4000.0, 4100.0, 4200.0, 9000.0, 9100.0]); // raise, then growth ×2.2 → update
        v.extend([0.0; 6]); // back: resolves after 120 s
        v.extend([8000.0]); // new episode
        let out = run(&mut d, &secs(&v));
        let st: Vec<(Status, u32)> = out.iter().map(|f| (f.status, f.revision)).collect();
        assert_eq!(
            st,
            [
                (Status::Firing, 0),
                (Status::Firing, 1),
                (Status::Resolved, 2),
                (Status::Firing, 0)
            ]
        );
        assert_eq!(out[0].id, out[2].id);
        assert_ne!(out[0].id, out[3].id);
    }

    #[test]
    fn idle_series_are_evicted_and_their_episode_resolved() {
        let mut d = GpuMemorySpike::new(GpuMemorySpikeConfig::default());
        let out = run(&mut d, &secs(&[0.0, 0.0, 0.0, 0.0, 9000.0]));
        assert_eq!(out.len(), 1);
        let inv = Inventory::default();
        let cx = DetectContext {
            inventory: &inv,
            watermark: 0,
        };
        let mut out = Vec::new();
        d.on_tick(&cx, 200 * NANOS, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.series(), 1);
        d.on_tick(&cx, (120 + 901) * NANOS, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Resolved);
        assert_eq!(d.series(), 0);
        assert_eq!(d.key_heap, 0);
    }

    #[test]
    fn state_stays_small() {
        assert!(size_of::<Series>() <= 64, "{}", size_of::<Series>());
        let mut d = GpuMemorySpike::new(GpuMemorySpikeConfig::default());
        run(&mut d, &secs(&[1.0, 2.0, 3.0]));
        assert!(d.state_bytes() < 4096);
    }

    proptest! {
        /// During warm-up the baseline is exactly the arithmetic mean (the batch formula).
        #[test]
        fn warm_up_level_is_the_mean(xs in proptest::collection::vec(0.0f64..100_000.0, 1..20)) {
            let cfg = GpuMemorySpikeConfig { warmup_samples: 20, ..GpuMemorySpikeConfig::default() };
            let mut b = Baseline::default();
            for &x in &xs {
                b.update(x, &cfg);
            }
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            prop_assert!((f64::from(b.level) - mean).abs() <= 1e-3 * mean.max(1.0));
        }

        /// After warm-up, one sample moves the level by at most alpha × clip × σ.
        #[test]
        fn updates_are_clipped(x in -1e9f64..1e9) {
            let cfg = GpuMemorySpikeConfig::default();
            let mut b = Baseline { level: 1000.0, mad: 10.0, n: 100 };
            let limit = cfg.baseline_alpha * cfg.clip_deviations * b.sigma(cfg.min_scale_mib);
            b.update(x, &cfg);
            prop_assert!((f64::from(b.level) - 1000.0).abs() <= limit * (1.0 + 1e-6));
        }
    }
}
