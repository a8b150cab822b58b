//! Onset likelihood: robust multi-scale surprise, reported once per episode.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::score::AnomalyScorer;
use crate::stats::{Ewma, SortedWindow};

/// Settings of [`OnsetLikelihood`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnsetLikelihoodConfig {
    /// Span (samples) of the long-term mean and variance of the value.
    pub long_span: f64,
    /// Span of the typical residual around the short median.
    pub resid_span: f64,
    /// Samples in the recent mean compared with the long-term mean (level shifts).
    pub level_samples: usize,
    /// Winsorising bound, in long-term standard deviations, for values fed to the baselines.
    pub clip_sigmas: f64,
    /// Weight of the spike feature (z per unit).
    pub spike_weight: f64,
    /// Weight of the level feature.
    pub level_weight: f64,
    /// Scores below this are reported as 0 (the detector is sure nothing started).
    pub alarm_level: f64,
    /// Samples after an alarm during which only a stronger alarm is reported.
    pub suppress_samples: usize,
    /// Factor by which an alarm must exceed the episode's strongest to be reported early.
    pub escalation: f64,
    /// −log10 tail probability that maps to score 1.
    pub log_p_full: f64,
    /// Half-life (samples) of the remembered largest surprise of each feature.
    pub record_half_life: f64,
    /// Score mode (tuning): 0 = tail probability, 1 = record ratio.
    pub mode: u32,
    /// Minimum feature z for a record to count.
    pub min_z: f64,
    /// Samples averaged before the likelihood (Numenta: 10).
    pub avg_samples: usize,
    /// Span of the distribution of averaged raw scores (Numenta: 8640-sample window).
    pub hist_span: f64,
    /// Variance floor of the averaged raw scores (Numenta: 0.0003).
    pub var_floor: f64,
    /// Raw score mode: 0 = spike only, 1 = max(spike, level).
    pub raw_mode: u32,
    /// A feature must exceed its decayed record by this factor to count as new.
    pub record_margin: f64,
    /// Weight of ln(record ratio) in the score (mode 4).
    pub ratio_weight: f64,
    /// Weight of ln(z) in the score (mode 4).
    pub mag_weight: f64,
}

impl Default for OnsetLikelihoodConfig {
    fn default() -> Self {
        Self {
            long_span: 500.0,
            resid_span: 500.0,
            level_samples: 8,
            clip_sigmas: 4.0,
            spike_weight: 1.0,
            level_weight: 1.0,
            alarm_level: 0.3,
            suppress_samples: 200,
            escalation: 1.2,
            log_p_full: 30.0,
            record_half_life: 2000.0,
            mode: 1,
            min_z: 3.0,
            avg_samples: 10,
            hist_span: 8640.0,
            var_floor: 0.0003,
            raw_mode: 0,
            record_margin: 1.0,
            ratio_weight: 1.0,
            mag_weight: 0.3,
        }
    }
}

impl OnsetLikelihoodConfig {
    /// Appends every invalid setting, with its path under `prefix`.
    pub fn problems(&self, prefix: &str, out: &mut Vec<crate::Error>) {
        let mut bad = |field: &str, message: &str| {
            out.push(crate::Error::Config { path: format!("{prefix}.{field}"), message: message.into() })
        };
        if !(self.long_span >= 1.0) {
            bad("long_span", "must be at least 1");
        }
        if !(self.resid_span >= 1.0) {
            bad("resid_span", "must be at least 1");
        }
        if self.level_samples == 0 || self.level_samples > SHORT {
            bad("level_samples", "must be between 1 and 32");
        }
        if !(self.alarm_level >= 0.0 && self.alarm_level <= 1.0) {
            bad("alarm_level", "must be in [0, 1]");
        }
        if !(self.escalation >= 1.0) {
            bad("escalation", "must be at least 1");
        }
        if !(self.log_p_full > 0.0) {
            bad("log_p_full", "must be positive");
        }
    }
}

/// Samples in the short window.
const SHORT: usize = 32;

/// The default scorer. See the module docs.
#[derive(Debug, Clone)]
pub struct OnsetLikelihood {
    cfg: OnsetLikelihoodConfig,
    warmup: u64,
    n: u64,
    short: SortedWindow<f32, SHORT>,
    long: Ewma,
    resid: Ewma,
    normal: Normal,
    last_alarm: Option<u64>,
    episode_max: f64,
    records: [f64; 2],
    decay: f64,
    raws: crate::stats::Ring<f32, 32>,
    hist: Ewma,
}

impl OnsetLikelihood {
    /// A fresh scorer that reports nothing during its first `warmup` samples.
    pub fn new(cfg: &OnsetLikelihoodConfig, warmup: usize) -> Self {
        Self {
            cfg: cfg.clone(),
            warmup: warmup as u64,
            n: 0,
            short: SortedWindow::new(),
            long: Ewma::with_span(cfg.long_span),
            resid: Ewma::with_span(cfg.resid_span),
            normal: Normal::standard(),
            last_alarm: None,
            episode_max: 0.0,
            records: [0.0; 2],
            decay: 0.5f64.powf(1.0 / cfg.record_half_life),
            raws: crate::stats::Ring::new(),
            hist: Ewma::with_span(cfg.hist_span),
        }
    }

    fn features(&self, x: f64) -> [f64; 2] {
        let med = self.short.median();
        let scale_floor = 1e-3 * self.long.mean().abs() + 1e-9;
        let resid_scale = self.resid.mean().max(scale_floor);
        let spike = (x - med).abs() / resid_scale;
        let k = self.cfg.level_samples;
        let recent = (self.short.ring().mean_last(k - 1) * (k - 1) as f64 + x) / k as f64;
        let level = (recent - self.long.mean()).abs() / self.long.std_dev().max(scale_floor);
        [self.cfg.spike_weight * spike, self.cfg.level_weight * level]
    }

    fn learn(&mut self, x: f64) {
        let (m, s) = (self.long.mean(), self.long.std_dev());
        let c = self.cfg.clip_sigmas * s;
        let clipped = if self.long.is_started() && self.n > 10 { x.clamp(m - c, m + c) } else { x };
        let med = self.short.median();
        if !self.short.is_empty() {
            self.resid.push((clipped - med).abs());
        }
        self.long.push(clipped);
        self.short.push(x);
    }
}

impl AnomalyScorer for OnsetLikelihood {
    fn update(&mut self, _ts_ns: i64, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        let f = if self.n >= 2 { self.features(value) } else { [0.0; 2] };
        self.learn(value);
        self.n += 1;
        let mut s: f64 = 0.0;
        if self.cfg.mode == 2 {
            let z = if self.cfg.raw_mode == 0 { f[0] } else { f[0].max(f[1]) };
            let raw = statrs::function::erf::erf(z / std::f64::consts::SQRT_2);
            self.raws.push(raw);
            let avg = self.raws.mean_last(self.cfg.avg_samples);
            let (mu, var) = (self.hist.mean(), self.hist.variance().max(self.cfg.var_floor));
            let tail = if self.n > 20 { self.normal.sf((avg - mu) / var.sqrt()) } else { 0.5 };
            self.hist.push(avg);
            s = ((1e-10 + tail).ln() / (1e-10f64).ln()).clamp(0.0, 1.0);
        }
        for (fi, rec) in f.iter().zip(self.records.iter_mut()) {
            let prev = *rec * self.decay;
            if self.cfg.mode == 2 {
            } else if self.cfg.mode == 0 {
                let p = 2.0 * self.normal.sf(*fi);
                s = s.max(if p > 0.0 { (-p.log10() / self.cfg.log_p_full).min(1.0) } else { 1.0 });
            } else if self.cfg.mode == 3 {
                if *fi > prev * self.cfg.record_margin && *fi > self.cfg.min_z {
                    let p = 2.0 * self.normal.sf(*fi);
                    s = s.max(if p > 0.0 { (-p.log10() / self.cfg.log_p_full).min(1.0) } else { 1.0 });
                }
            } else if self.cfg.mode == 4 {
                if *fi > prev * self.cfg.record_margin && *fi > self.cfg.min_z {
                    let q = *fi / (prev * self.cfg.record_margin).max(self.cfg.min_z);
                    s = s.max(1.0 - (-(q.ln() * self.cfg.ratio_weight + fi.ln() * self.cfg.mag_weight).max(0.0)).exp());
                }
            } else if *fi > prev && *fi > self.cfg.min_z {
                let q = *fi / prev.max(self.cfg.min_z);
                s = s.max(1.0 - 1.0 / q);
            }
            *rec = prev.max(*fi);
        }
        if self.n <= self.warmup {
            return 0.0;
        }
        if s < self.cfg.alarm_level {
            return 0.0;
        }
        let in_episode = self.last_alarm.is_some_and(|t| self.n - t <= self.cfg.suppress_samples as u64);
        if in_episode && s <= self.episode_max * self.cfg.escalation {
            return 0.0;
        }
        if !in_episode {
            self.episode_max = 0.0;
        }
        self.last_alarm = Some(self.n);
        self.episode_max = self.episode_max.max(s);
        s
    }

    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}
