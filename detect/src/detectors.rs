//! Detector implementations and their configuration.
//!
//! ```text
//!  gpu_metrics rows ──┬─► gpu_memory_spike     DCGM_FI_DEV_FB_USED: a large, sudden rise over a
//!  (per GPU, MIG      │                        robust baseline; severity by the pod's role
//!   instance, pod)    ├─► unallocated_gpu_use  FB_USED / GPU_UTIL in use on a GPU allocated to no
//!                     │                        pod, or by a pod without an nvidia.com/gpu request
//!                     └─► miner_fingerprint    sustained ~100 % util, flat power, idle tensor and
//!                                              FP pipes, on a pod that is not serving or training
//! ```
//!
//! Each detector keeps one small state per (GPU UUID, MIG instance, pod) — `<none>` for a series
//! without pod labels — folds the few metrics it reads into it in O(1) per sample, raises one
//! finding per episode, updates it only when its severity or evidence changes materially, and
//! resolves it when the series is back to normal for a while (or stops reporting). Shared
//! plumbing (series keys, row access, attribution, finding assembly) is in `gpu_series`.
//!
//! Settings live under `[detectors.<name>]` in `gpusiem.toml`; every field has a default, and
//! units are in the names.

mod gpu_memory_spike;
mod gpu_series;
mod miner_fingerprint;
mod unallocated_gpu_use;

use serde::{Deserialize, Serialize};

pub use gpu_memory_spike::{GpuMemorySpike, GpuMemorySpikeConfig};
pub use gpu_series::{Grade, RoleSeverities};
pub use miner_fingerprint::{MinerFingerprint, MinerFingerprintConfig};
pub use unallocated_gpu_use::{UnallocatedGpuUse, UnallocatedGpuUseConfig};

use crate::detector::Detector;

/// Thresholds of the built-in detectors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorsConfig {
    /// `[detectors.gpu_memory_spike]`: sudden GPU-memory rises, judged by the pod's role.
    pub gpu_memory_spike: GpuMemorySpikeConfig,
    /// `[detectors.unallocated_gpu_use]`: GPU use outside what Kubernetes allocated.
    pub unallocated_gpu_use: UnallocatedGpuUseConfig,
    /// `[detectors.miner_fingerprint]`: the shape of a crypto miner on a GPU.
    pub miner_fingerprint: MinerFingerprintConfig,
}

impl DetectorsConfig {
    /// Every invalid setting, with its dotted path (`detectors.gpu_memory_spike.min_rise_mib`).
    pub fn validate(&self) -> Vec<crate::Error> {
        let mut p = Problems::default();
        self.gpu_memory_spike
            .validate("detectors.gpu_memory_spike", &mut p);
        self.unallocated_gpu_use
            .validate("detectors.unallocated_gpu_use", &mut p);
        self.miner_fingerprint
            .validate("detectors.miner_fingerprint", &mut p);
        p.0
    }
}

/// Builds the enabled detectors; the first invalid setting is the error (see
/// [`DetectorsConfig::validate`] for all of them).
pub fn build(config: &DetectorsConfig) -> crate::Result<Vec<Box<dyn Detector>>> {
    if let Some(e) = config.validate().into_iter().next() {
        return Err(e);
    }
    let mut out: Vec<Box<dyn Detector>> = Vec::new();
    if config.gpu_memory_spike.enabled {
        out.push(Box::new(GpuMemorySpike::new(
            config.gpu_memory_spike.clone(),
        )));
    }
    if config.unallocated_gpu_use.enabled {
        out.push(Box::new(UnallocatedGpuUse::new(
            config.unallocated_gpu_use.clone(),
        )));
    }
    if config.miner_fingerprint.enabled {
        out.push(Box::new(MinerFingerprint::new(
            config.miner_fingerprint.clone(),
        )));
    }
    Ok(out)
}

/// Collects validation errors.
#[derive(Default)]
struct Problems(Vec<crate::Error>);

impl Problems {
    fn push(&mut self, path: &str, field: &str, message: impl Into<String>) {
        self.0.push(crate::Error::Config {
            path: format!("{path}.{field}"),
            message: message.into(),
        });
    }

    /// A finite number `>= min` (`> min` when `strict`).
    fn number(&mut self, path: &str, field: &str, v: f64, min: f64, strict: bool) {
        let ok = v.is_finite() && if strict { v > min } else { v >= min };
        if !ok {
            let cmp = if strict { ">" } else { ">=" };
            self.push(path, field, format!("must be a finite number {cmp} {min}"));
        }
    }

    /// A number within `[lo, hi]`.
    fn range(&mut self, path: &str, field: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && (lo..=hi).contains(&v)) {
            self.push(path, field, format!("must be between {lo} and {hi}"));
        }
    }

    /// A duration of at least one second.
    fn secs(&mut self, path: &str, field: &str, v: u64) {
        if v == 0 {
            self.push(path, field, "must be at least 1 second");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_three_detectors() {
        let d = build(&DetectorsConfig::default()).expect("defaults are valid");
        let names: Vec<&str> = d.iter().map(|d| d.name()).collect();
        assert_eq!(
            names,
            [
                "gpu_memory_spike",
                "unallocated_gpu_use",
                "miner_fingerprint"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected_and_defaults_fill_the_rest() {
        let c: DetectorsConfig =
            serde_json::from_str(r#"{"gpu_memory_spike":{"min_rise_mib":4096}}"#)
                .expect("partial config");
        assert_eq!(c.gpu_memory_spike.min_rise_mib, 4096.0);
        assert_eq!(
            c.gpu_memory_spike.window_secs,
            GpuMemorySpikeConfig::default().window_secs
        );
        assert!(
            serde_json::from_str::<DetectorsConfig>(r#"{"gpu_memory_spike":{"min_rise":1}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<DetectorsConfig>(r#"{"nope":{}}"#).is_err());
    }

    #[test]
    fn invalid_settings_are_reported_with_their_paths() {
        let mut c = DetectorsConfig::default();
        c.gpu_memory_spike.min_rise_mib = -1.0;
        c.gpu_memory_spike.baseline_alpha = 2.0;
        c.unallocated_gpu_use.confirm_samples = 0;
        c.miner_fingerprint.max_power_cv = f64::NAN;
        c.miner_fingerprint.min_duration_secs = 0;
        let paths: Vec<String> = c
            .validate()
            .into_iter()
            .map(|e| match e {
                crate::Error::Config { path, .. } => path,
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "detectors.gpu_memory_spike.min_rise_mib",
                "detectors.gpu_memory_spike.baseline_alpha",
                "detectors.unallocated_gpu_use.confirm_samples",
                "detectors.miner_fingerprint.min_duration_secs",
                "detectors.miner_fingerprint.max_power_cv",
            ]
        );
        assert!(build(&c).is_err());
    }

    #[test]
    fn disabled_detectors_are_not_built() {
        let mut c = DetectorsConfig::default();
        c.miner_fingerprint.enabled = false;
        let d = build(&c).expect("valid");
        assert_eq!(d.len(), 2);
    }
}
