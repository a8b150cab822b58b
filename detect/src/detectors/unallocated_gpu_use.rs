//! `unallocated_gpu_use`: a GPU in use outside what Kubernetes allocated — memory held or
//! utilisation on a GPU allocated to no pod (a DCGM series without pod labels), or on a series
//! attributed to a pod that requested no `nvidia.com/gpu`.
//!
//! ```text
//!  FB_USED / GPU_UTIL rows ──► per-series scrape slot (same ts) ──► finalised when a later
//!                                                                   sample or tick passes it
//!  slot: in use?  FB_USED ≥ min_fb_used_mib  or  GPU_UTIL ≥ min_util_pct
//!        unallocated?  no pod labels and no pod-labelled series of this GPU for
//!                      allocation_grace_secs  │  the inventory says the pod requested 0 GPUs
//!  in use and unallocated for confirm_samples scrapes ──► raise (high); util ≥ critical_util_pct
//!  for critical_after_secs ──► critical; neither for resolve_after_secs ──► resolve
//! ```
//!
//! dcgm-exporter attributes GPUs to pods from the kubelet's *allocations*, not from who uses
//! them (formats.md §1.4, "security pitfall"): a container that reaches a GPU without requesting
//! one (privileged, hostPath `/dev/nvidia*`, `NVIDIA_VISIBLE_DEVICES=all`) shows up as use on a
//! series without pod labels — or, with per-process attribution (4.5.3+), on a series labelled
//! with a pod that has no request. Either is a finding whatever the pod's role.
//!
//! `min_fb_used_mib` is 256 MiB: an idle GPU reports 0 MiB used (H200 capture,
//! `h200-nvidia-smi-query-idle.csv`) while a bare CUDA context already holds 250–500 MiB, so
//! anything at or above it is somebody's context. A pod the inventory does not know is not
//! judged: its DCGM pod label says the kubelet allocated it the GPU.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Problems;
use super::gpu_series::{
    Accept, Allocations, AsKey, Attribution, EpisodeCore, GpuRows, Grade, KeyView, PendingSlots,
    RowContext, SWEEP_NANOS, SeriesKey, SeriesMap, gpu_name, map_bytes, metric, rfc3339,
    secs_to_nanos,
};
use crate::detector::{DetectContext, Detector};
use crate::finding::{Finding, Severity, Status};
use crate::inventory::Inventory;

/// Detector id.
pub const NAME: &str = "unallocated_gpu_use";

/// `[detectors.unallocated_gpu_use]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnallocatedGpuUseConfig {
    /// Run the detector.
    pub enabled: bool,
    /// Memory used (MiB) at or above which a GPU is in use: a bare CUDA context holds 250–500 MiB.
    pub min_fb_used_mib: f64,
    /// Utilisation (%) at or above which a GPU is in use.
    pub min_util_pct: f64,
    /// Consecutive in-use scrapes before raising (one blip is not use).
    pub confirm_samples: u32,
    /// A GPU counts as allocated while a pod-labelled series of it (or of one of its MIG
    /// instances) was seen this recently: covers device-level series beside per-pod ones and
    /// a pod that just ended.
    pub allocation_grace_secs: u64,
    /// Utilisation (%) that, held for `critical_after_secs`, makes the finding critical: the
    /// GPU is being computed on, not just holding memory.
    pub critical_util_pct: f64,
    /// See `critical_util_pct`.
    pub critical_after_secs: u64,
    /// Not in use (or allocated) for this long resolves the episode.
    pub resolve_after_secs: u64,
    /// An open episode is updated when memory used grows by this factor over the last report.
    pub update_growth_ratio: f64,
    /// How long the inventory's answer about a pod's GPU request is trusted.
    pub inventory_recheck_secs: u64,
    /// Ignore MIG-instance series without pod labels: dcgm-exporter releases that never label
    /// MIG series with pods (issues #272, #577) would otherwise raise for every used instance.
    pub skip_unlabelled_mig: bool,
    /// Series silent for this long (event time) are forgotten; an open episode resolves.
    pub idle_timeout_secs: u64,
    /// Severity for a GPU allocated to no pod.
    pub unallocated_severity: Grade,
    /// Severity for a pod that requested no `nvidia.com/gpu`.
    pub unrequested_severity: Grade,
}

impl Default for UnallocatedGpuUseConfig {
    fn default() -> Self {
        UnallocatedGpuUseConfig {
            enabled: true,
            min_fb_used_mib: 256.0,
            min_util_pct: 5.0,
            confirm_samples: 2,
            allocation_grace_secs: 120,
            critical_util_pct: 50.0,
            critical_after_secs: 300,
            resolve_after_secs: 120,
            update_growth_ratio: 1.5,
            inventory_recheck_secs: 60,
            skip_unlabelled_mig: false,
            idle_timeout_secs: 900,
            unallocated_severity: Grade::High,
            unrequested_severity: Grade::High,
        }
    }
}

impl UnallocatedGpuUseConfig {
    pub(super) fn validate(&self, path: &str, p: &mut Problems) {
        p.number(path, "min_fb_used_mib", self.min_fb_used_mib, 0.0, true);
        p.range(
            path,
            "min_util_pct",
            self.min_util_pct,
            f64::MIN_POSITIVE,
            100.0,
        );
        if self.confirm_samples == 0 {
            p.push(path, "confirm_samples", "must be at least 1");
        }
        p.secs(path, "allocation_grace_secs", self.allocation_grace_secs);
        p.range(
            path,
            "critical_util_pct",
            self.critical_util_pct,
            0.0,
            100.0,
        );
        p.secs(path, "resolve_after_secs", self.resolve_after_secs);
        p.number(
            path,
            "update_growth_ratio",
            self.update_growth_ratio,
            1.0,
            true,
        );
        p.secs(path, "inventory_recheck_secs", self.inventory_recheck_secs);
        p.secs(path, "idle_timeout_secs", self.idle_timeout_secs);
    }
}

#[derive(Debug, Clone)]
struct Settings {
    cfg: UnallocatedGpuUseConfig,
    grace: i64,
    critical_after: i64,
    resolve_after: i64,
    recheck: i64,
    idle: i64,
}

/// Why a series counts as unallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No pod labels, and no pod-labelled series of the GPU lately.
    NoPod,
    /// The pod requested no `nvidia.com/gpu`.
    Unrequested,
}

impl Kind {
    fn explain(self, grace_secs: u64) -> String {
        match self {
            Kind::NoPod => format!(
                "the DCGM series has no pod labels and no pod-labelled series of this GPU was seen within {grace_secs} s"
            ),
            Kind::Unrequested => "the pod requested no nvidia.com/gpu (inventory)".to_string(),
        }
    }
}

/// What the inventory said about a pod's GPU request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Not asked yet.
    Unchecked,
    /// Requested at least one GPU, or the pod is unknown (its DCGM label implies an allocation).
    Allocated,
    /// Requested none.
    None,
}

/// Per-series state.
#[derive(Debug)]
struct Series {
    /// The map's key (shared text), for the pending list.
    key: SeriesKey,
    /// Scrape being collected: its time, `FB_USED` and `GPU_UTIL` (NaN: not seen).
    slot_ts: i64,
    slot_fb: f32,
    slot_util: f32,
    pending: bool,
    request: Request,
    request_checked: i64,
    /// First in-use scrape of the current run (`i64::MIN`: none) and scrapes in it.
    run_start: i64,
    run_samples: u32,
    /// Since when utilisation is at or above `critical_util_pct`.
    util_high_since: i64,
    /// Since when the series is not in unallocated use.
    quiet_since: i64,
    /// Node, pod UID, container of an in-use row, for the finding.
    context: Option<Box<RowContext>>,
    episode: Option<Box<Episode>>,
}

#[derive(Debug)]
struct Episode {
    core: EpisodeCore,
    kind: Kind,
    run_start: i64,
    first_fb: f32,
    first_util: f32,
    latest_ts: i64,
    latest_fb: f32,
    latest_util: f32,
    peak_fb: f32,
    peak_util: f32,
    reported_fb: f32,
    samples: u32,
}

struct Env<'e> {
    s: &'e Settings,
    inventory: &'e Inventory,
    allocations: &'e Allocations,
}

/// The detector. See the module docs.
#[derive(Debug)]
pub struct UnallocatedGpuUse {
    s: Settings,
    series: SeriesMap<Series>,
    key_heap: usize,
    allocations: Allocations,
    pending: PendingSlots,
    next_sweep: i64,
}

impl UnallocatedGpuUse {
    /// A detector with `config` (validated by [`super::DetectorsConfig::validate`]).
    pub fn new(cfg: UnallocatedGpuUseConfig) -> Self {
        let s = Settings {
            grace: secs_to_nanos(cfg.allocation_grace_secs),
            critical_after: secs_to_nanos(cfg.critical_after_secs),
            resolve_after: secs_to_nanos(cfg.resolve_after_secs),
            recheck: secs_to_nanos(cfg.inventory_recheck_secs),
            idle: secs_to_nanos(cfg.idle_timeout_secs),
            cfg,
        };
        UnallocatedGpuUse {
            s,
            series: SeriesMap::default(),
            key_heap: 0,
            allocations: Allocations::default(),
            pending: PendingSlots::new(),
            next_sweep: i64::MIN,
        }
    }
}

/// Which of the two metrics a row carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Fb,
    Util,
}

impl Detector for UnallocatedGpuUse {
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
        let cfg = &self.s.cfg;
        for row in 0..rows.len() {
            let field = match rows.metric(row) {
                metric::FB_USED => Field::Fb,
                metric::GPU_UTIL => Field::Util,
                _ => continue,
            };
            let Some(key) = rows.key(row) else { continue };
            let Some(v) = rows.value(row) else { continue };
            // Negative memory and utilisation above 100 % are invalid (seen in the wild).
            let in_use = match field {
                Field::Fb if v >= 0.0 => v >= cfg.min_fb_used_mib,
                Field::Util if (0.0..=100.0).contains(&v) => v >= cfg.min_util_pct,
                _ => continue,
            };
            let ts = rows.ts(row);
            if key.has_pod() {
                // One metric per scrape is witness enough (and half the lookups).
                if field == Field::Fb {
                    self.allocations.witness(&key, ts);
                }
            } else if cfg.skip_unlabelled_mig && key.gi.is_some() {
                continue;
            }
            // Everything before this row is in the witnesses; finalising a slot may read them.
            let env = Env {
                s: &self.s,
                inventory: cx.inventory,
                allocations: &self.allocations,
            };
            let series = match self.series.get_mut(&key as &dyn AsKey) {
                Some(series) => series,
                None if in_use => {
                    let Some(k) = SeriesKey::new(&key) else {
                        continue;
                    };
                    self.key_heap += k.heap_bytes();
                    self.series
                        .entry(k.clone())
                        .or_insert_with(|| Series::new(k))
                }
                None => continue, // idle and untracked: no state for idle GPUs
            };
            match series.accept(&env, &key, ts, out) {
                Accept::Late => continue,
                Accept::Same => {}
                Accept::Opened => self.pending.push((ts, series.key.clone())),
            }
            match field {
                Field::Fb => series.slot_fb = v as f32,
                Field::Util => series.slot_util = v as f32,
            }
            if in_use && series.context.is_none() {
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
            if !s.pending || s.slot_ts != *ts {
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
            if now.saturating_sub(series.slot_ts) <= env.s.idle {
                return true;
            }
            if let Some(mut ep) = series.episode.take() {
                out.push(ep.emit(
                    env.s,
                    &k.view(),
                    Status::Resolved,
                    series.slot_ts,
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
            slot_ts: i64::MIN,
            slot_fb: f32::NAN,
            slot_util: f32::NAN,
            pending: false,
            request: Request::Unchecked,
            request_checked: i64::MIN,
            run_start: i64::MIN,
            run_samples: 0,
            util_high_since: i64::MIN,
            quiet_since: i64::MIN,
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
        if ts == self.slot_ts {
            return if self.pending {
                Accept::Same
            } else {
                Accept::Late
            };
        }
        if ts < self.slot_ts {
            return Accept::Late;
        }
        if self.pending {
            self.finalize(env, key, out);
        }
        self.slot_ts = ts;
        self.slot_fb = f32::NAN;
        self.slot_util = f32::NAN;
        self.pending = true;
        Accept::Opened
    }

    /// Why the series is unallocated at `ts`, if it is.
    fn unallocated(&mut self, env: &Env<'_>, key: &KeyView<'_>, ts: i64) -> Option<Kind> {
        if !key.has_pod() {
            return (!env.allocations.allocated(key, ts, env.s.grace)).then_some(Kind::NoPod);
        }
        if self.request == Request::Unchecked
            || ts.saturating_sub(self.request_checked) >= env.s.recheck
        {
            let uid = self.context.as_ref().and_then(|c| c.pod_uid.as_deref());
            self.request = match env
                .inventory
                .lookup(uid, Some(key.namespace), Some(key.pod))
            {
                Some(p) if p.gpu_request() == 0 => Request::None,
                _ => Request::Allocated,
            };
            self.request_checked = ts;
        }
        (self.request == Request::None).then_some(Kind::Unrequested)
    }

    /// Judges the complete scrape in the slot.
    fn finalize(&mut self, env: &Env<'_>, key: &KeyView<'_>, out: &mut Vec<Finding>) {
        self.pending = false;
        let cfg = &env.s.cfg;
        let (ts, fb, util) = (self.slot_ts, self.slot_fb, self.slot_util);
        // NaN compares false: a metric missing from the scrape says nothing.
        let in_use = f64::from(fb) >= cfg.min_fb_used_mib || f64::from(util) >= cfg.min_util_pct;
        let kind = if in_use {
            self.unallocated(env, key, ts)
        } else {
            None
        };
        let Some(kind) = kind else {
            self.run_start = i64::MIN;
            self.run_samples = 0;
            self.util_high_since = i64::MIN;
            if let Some(ep) = self.episode.as_deref_mut() {
                if self.quiet_since == i64::MIN {
                    self.quiet_since = ts;
                }
                if ts - self.quiet_since >= env.s.resolve_after {
                    let why = if in_use {
                        "the GPU is now allocated to this or another pod"
                    } else {
                        "GPU use fell below the thresholds"
                    };
                    ep.core.add_event(key, ts);
                    out.push(ep.emit(env.s, key, Status::Resolved, ts, Some(why)));
                    self.episode = None;
                    self.context = None;
                }
            }
            return;
        };
        self.quiet_since = i64::MIN;
        if self.run_start == i64::MIN {
            self.run_start = ts;
            self.run_samples = 0;
        }
        self.run_samples = self.run_samples.saturating_add(1);
        if f64::from(util) >= cfg.critical_util_pct {
            if self.util_high_since == i64::MIN {
                self.util_high_since = ts;
            }
        } else {
            self.util_high_since = i64::MIN;
        }
        let critical =
            self.util_high_since != i64::MIN && ts - self.util_high_since >= env.s.critical_after;
        if let Some(ep) = self.episode.as_deref_mut() {
            ep.fold(ts, fb, util);
            if critical && ep.core.severity < Severity::Critical {
                ep.core.severity = Severity::Critical;
                ep.core.add_event(key, ts);
                out.push(ep.emit(env.s, key, Status::Firing, ts, None));
            } else if f64::from(fb)
                >= f64::from(ep.reported_fb.max(cfg.min_fb_used_mib as f32))
                    * cfg.update_growth_ratio
            {
                ep.reported_fb = fb;
                ep.core.add_event(key, ts);
                out.push(ep.emit(env.s, key, Status::Firing, ts, None));
            }
            return;
        }
        if self.run_samples < cfg.confirm_samples {
            return;
        }
        let grade = match kind {
            Kind::NoPod => cfg.unallocated_severity,
            Kind::Unrequested => cfg.unrequested_severity,
        };
        let Some(mut severity) = grade.severity() else {
            return;
        };
        if critical {
            severity = Severity::Critical;
        }
        let context = self.context.as_deref().cloned().unwrap_or_default();
        let attribution = Attribution::of(env.inventory, key, context);
        let mut core = EpisodeCore::new(self.run_start, ts, severity, attribution);
        core.add_event(key, self.run_start);
        core.add_event(key, ts);
        let mut ep = Box::new(Episode {
            core,
            kind,
            run_start: self.run_start,
            first_fb: fb,
            first_util: util,
            latest_ts: ts,
            latest_fb: fb,
            latest_util: util,
            peak_fb: f32::NAN,
            peak_util: f32::NAN,
            reported_fb: fb,
            samples: 0,
        });
        ep.fold(ts, fb, util);
        ep.samples = self.run_samples;
        out.push(ep.emit(env.s, key, Status::Firing, ts, None));
        self.episode = Some(ep);
    }
}

/// A number for evidence; `null` for "not seen".
fn num(x: f32) -> Option<f64> {
    (!x.is_nan()).then(|| f64::from(x))
}

impl Episode {
    fn fold(&mut self, ts: i64, fb: f32, util: f32) {
        self.latest_ts = ts;
        self.latest_fb = fb;
        self.latest_util = util;
        self.peak_fb = self.peak_fb.max(fb);
        self.peak_util = self.peak_util.max(util);
        self.samples = self.samples.saturating_add(1);
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
        let usage = |fb: f32, util: f32| match (num(fb), num(util)) {
            (Some(fb), Some(u)) => format!("{fb:.0} MiB, {u:.0} % util"),
            (Some(fb), None) => format!("{fb:.0} MiB"),
            (None, Some(u)) => format!("{u:.0} % util"),
            (None, None) => "no data".to_string(),
        };
        let gpu = gpu_name(key);
        let summary = match (status, self.kind) {
            (Status::Firing, Kind::NoPod) => {
                format!(
                    "{gpu} is in use ({}) but allocated to no pod",
                    usage(self.peak_fb, self.peak_util)
                )
            }
            (Status::Firing, Kind::Unrequested) => format!(
                "Pod {}/{} uses {gpu} ({}) without requesting nvidia.com/gpu",
                key.namespace,
                key.pod,
                usage(self.peak_fb, self.peak_util)
            ),
            (Status::Resolved, _) => {
                format!(
                    "Unallocated use of {gpu} ended ({})",
                    resolution.unwrap_or("resolved")
                )
            }
        };
        let evidence = json!({
            "allocation": self.kind.explain(cfg.allocation_grace_secs),
            "gpu_request": self.core.attribution.gpu_request,
            "in_use_since": rfc3339(self.run_start),
            "in_use_samples": self.samples,
            "first": { "fb_used_mib": num(self.first_fb), "util_pct": num(self.first_util) },
            "latest": {
                "ts": rfc3339(self.latest_ts),
                "fb_used_mib": num(self.latest_fb),
                "util_pct": num(self.latest_util),
            },
            "peak_fb_used_mib": num(self.peak_fb),
            "peak_util_pct": num(self.peak_util),
            "gpu_i_id": key.gi,
            "resolution": resolution,
            "thresholds": {
                "min_fb_used_mib": cfg.min_fb_used_mib,
                "min_util_pct": cfg.min_util_pct,
                "confirm_samples": cfg.confirm_samples,
                "critical_util_pct": cfg.critical_util_pct,
                "critical_after_secs": cfg.critical_after_secs,
                "allocation_grace_secs": cfg.allocation_grace_secs,
            },
        });
        self.core
            .emit(NAME, key, status, last_ts, summary, evidence)
    }
}

#[cfg(test)]
mod tests {
    use gpusiem_ingest::Stream;

    use super::super::gpu_series::NANOS;
    use super::super::gpu_series::testing::{Row, batch};
    use super::*;

    struct Harness {
        d: UnallocatedGpuUse,
        inv: Inventory,
        out: Vec<Finding>,
    }

    impl Harness {
        fn new(cfg: UnallocatedGpuUseConfig) -> Self {
            Harness {
                d: UnallocatedGpuUse::new(cfg),
                inv: Inventory::default(),
                out: Vec::new(),
            }
        }

        fn feed(&mut self, rows: &[Row<'_>]) {
            let cx = DetectContext {
                inventory: &self.inv,
                watermark: 0,
            };
            self.d
                .observe(&cx, Stream::GpuMetrics, &batch(rows), &mut self.out);
            let now = rows.iter().map(|r| r.ts).max().unwrap_or(0);
            self.d.on_tick(&cx, now, &mut self.out);
        }

        fn statuses(&self) -> Vec<(Status, Severity)> {
            self.out.iter().map(|f| (f.status, f.severity)).collect()
        }
    }

    fn scrape(t: i64, fb: f64, util: f64) -> [Row<'static>; 2] {
        [
            Row::none(t * NANOS, metric::FB_USED, "GPU-9", Some(fb)),
            Row::none(t * NANOS, metric::GPU_UTIL, "GPU-9", Some(util)),
        ]
    }

    #[test]
    fn a_gpu_allocated_to_no_pod_in_use_raises_escalates_and_resolves() {
        let mut h = Harness::new(UnallocatedGpuUseConfig::default());
        for t in (0..=900).step_by(30) {
            let (fb, util) = if t < 60 {
                (0.0, 0.0)
            } else if t <= 600 {
                (20_000.0, 100.0)
            } else {
                (0.0, 0.0)
            };
            h.feed(&scrape(t, fb, util));
        }
        // Confirmed at the second in-use scrape (t=90), critical after 300 s of util (t=360),
        // resolved 120 s after use stopped (t=630 → 750).
        assert_eq!(
            h.statuses(),
            [
                (Status::Firing, Severity::High),
                (Status::Firing, Severity::Critical),
                (Status::Resolved, Severity::Critical)
            ]
        );
        assert_eq!(h.out[0].ts, 90 * NANOS);
        assert_eq!(h.out[1].last_ts, 360 * NANOS);
        assert_eq!(h.out[2].last_ts, 750 * NANOS);
        assert!(h.out.iter().all(|f| f.id == h.out[0].id));
        assert_eq!(h.out[0].pod, None);
        assert_eq!(h.out[0].node.as_deref(), Some("node-1"));
        assert_eq!(
            h.out[0].evidence["in_use_since"],
            "1970-01-01T00:01:00.000000000Z"
        );
    }

    #[test]
    fn a_device_level_series_beside_a_pod_series_is_not_unallocated() {
        let mut h = Harness::new(UnallocatedGpuUseConfig::default());
        for t in (0..600).step_by(30) {
            let mut rows = scrape(t, 20_000.0, 100.0).to_vec();
            rows.push(Row::pod(
                t * NANOS,
                metric::FB_USED,
                "GPU-9",
                "serving-0",
                Some(20_000.0),
            ));
            h.feed(&rows);
        }
        assert!(h.out.is_empty());
    }

    #[test]
    fn blips_invalid_values_and_no_data_do_not_raise() {
        let mut h = Harness::new(UnallocatedGpuUseConfig::default());
        h.feed(&scrape(0, 0.0, 0.0));
        h.feed(&scrape(30, 0.0, 40.0)); // one blip
        h.feed(&scrape(60, 0.0, 0.0));
        h.feed(&scrape(90, 0.0, 150.0)); // invalid util, twice
        h.feed(&scrape(120, 0.0, 4000.0));
        h.feed(&[Row::none(150 * NANOS, metric::FB_USED, "GPU-9", None)]); // blank sentinel
        h.feed(&[Row::none(180 * NANOS, metric::FB_USED, "GPU-9", None)]);
        h.feed(&scrape(210, -5.0, 0.0));
        assert!(h.out.is_empty(), "{:?}", h.statuses());
    }

    #[test]
    fn rows_split_across_batches_give_the_same_decision() {
        let mut a = Harness::new(UnallocatedGpuUseConfig::default());
        let mut b = Harness::new(UnallocatedGpuUseConfig::default());
        let mut all = Vec::new();
        for t in (0..300).step_by(30) {
            all.extend(scrape(t, if t >= 60 { 9000.0 } else { 0.0 }, 0.0));
        }
        a.feed(&all);
        for r in &all {
            b.feed(std::slice::from_ref(r));
        }
        assert_eq!(a.out.len(), 1);
        assert_eq!(a.out[0].id, b.out[0].id);
        assert_eq!(a.out[0].ts, b.out[0].ts);
    }

    #[test]
    fn idle_gpus_hold_no_state() {
        let mut h = Harness::new(UnallocatedGpuUseConfig::default());
        for t in (0..300).step_by(30) {
            h.feed(&scrape(t, 0.0, 0.0));
        }
        assert_eq!(h.d.series(), 0);
    }
}
