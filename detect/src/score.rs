//! The streaming anomaly-scorer contract, shared by the detectors and by `gpusiem bench nab`.
//!
//! A scorer follows one univariate series (one GPU metric of one GPU, one NAB file) and turns
//! each sample into an anomaly score in [0, 1]:
//!
//! ```text
//!  (ts_ns, value) ─► AnomalyScorer::update ─► score ∈ [0, 1]   (0 = ordinary; high and rare
//!   event time,       O(1), bounded state,                     = the onset of something new)
//!   in order          no I/O, no clock
//! ```
//!
//! Implementations live in `scorers/`, one file per method, declared here (the concept file
//! beside its folder of implementations); [`ScorerConfig`] builds the default one.

use serde::{Deserialize, Serialize};

pub mod multiscale_tail;

pub use multiscale_tail::{MultiscaleTail, MultiscaleTailConfig, MultiscaleTailFactory};

/// A streaming anomaly scorer over one series.
///
/// Contract:
/// * The caller feeds samples of one series in event-time order (`ts_ns` non-decreasing); the
///   scorer never reads the wall clock, so replaying the same samples gives the same scores.
/// * `update` is causal: the score of a sample depends only on it and the samples before it.
/// * Scores are in [0, 1] and comparable across series: a deployment uses one threshold for
///   all of them. Most samples score 0; a scorer emits a high score at the *onset* of an
///   anomaly and stays quiet while the same episode goes on.
/// * Work per sample is O(1) (amortised; small fixed-size windows) and the state is bounded by
///   [`state_bytes`](Self::state_bytes) whatever the length of the series.
/// * Non-finite values are ignored (score 0, state unchanged): a gap in a metric is not an
///   anomaly of its value.
pub trait AnomalyScorer: Send {
    /// Folds one sample into the state and returns its anomaly score in [0, 1].
    fn update(&mut self, ts_ns: i64, value: f64) -> f64;

    /// Bytes of state held for this series, everything included.
    fn state_bytes(&self) -> usize;
}

/// Settings of the default scorer (`[detectors.*.scorer]` where a detector exposes it, and
/// `gpusiem bench nab`). Every field has a default tuned on NAB; they are the same for every
/// series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerConfig {
    /// Samples a series needs before it may score above 0, when the caller gives no better
    /// hint (the NAB runner passes NAB's probationary period instead).
    pub warmup_samples: usize,
    /// The default method's settings.
    pub multiscale_tail: MultiscaleTailConfig,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            warmup_samples: 300,
            multiscale_tail: MultiscaleTailConfig::default(),
        }
    }
}

impl ScorerConfig {
    /// Every invalid setting, with its dotted path under `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<crate::Error> {
        let mut out = Vec::new();
        if self.warmup_samples == 0 {
            out.push(crate::Error::Config {
                path: format!("{prefix}.warmup_samples"),
                message: "must be at least 1".into(),
            });
        }
        self.multiscale_tail
            .problems(&format!("{prefix}.multiscale_tail"), &mut out);
        out
    }

    /// Checks the settings; the first problem is the error.
    pub fn validate(&self) -> crate::Result<()> {
        match self.problems("scorer").into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Builds the default scorer with the configured warm-up.
    pub fn build(&self) -> crate::Result<MultiscaleTail> {
        self.build_with_warmup(self.warmup_samples)
    }

    /// A factory for the default scorer whose scorers share one copy of the settings: the
    /// way to make one scorer per series for many series.
    pub fn factory(&self) -> crate::Result<MultiscaleTailFactory> {
        self.validate()?;
        Ok(MultiscaleTailFactory::new(&self.multiscale_tail))
    }

    /// Builds the default scorer with an explicit warm-up length in samples (NAB's
    /// probationary period, for instance).
    pub fn build_with_warmup(&self, warmup_samples: usize) -> crate::Result<MultiscaleTail> {
        self.validate()?;
        Ok(MultiscaleTail::new(
            &self.multiscale_tail,
            warmup_samples.max(1),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<ScorerConfig>(r#"{"warmup_sample": 3}"#);
        assert!(err.is_err());
        let ok: ScorerConfig = serde_json::from_str(r#"{"warmup_samples": 3}"#).expect("valid");
        assert_eq!(ok.warmup_samples, 3);
        assert_eq!(ok.multiscale_tail, MultiscaleTailConfig::default());
    }

    #[test]
    fn invalid_settings_name_their_path() {
        let cfg = ScorerConfig {
            warmup_samples: 0,
            ..ScorerConfig::default()
        };
        let problems = cfg.problems("bench.scorer");
        assert!(
            matches!(&problems[0], crate::Error::Config { path, .. } if path == "bench.scorer.warmup_samples")
        );
        assert!(cfg.build().is_err());
    }
}
