//! Multi-scale tail scorer: band-pass features of the series, each judged against an
//! exponential model of its own tail, reported once per episode.
//!
//! ```text
//!  value ─┬─► raw bank ──────────────┐ features: level, spike (vs a 4-sample mean), and the
//!         │                          │ differences of fast means 4−64, 16−256 and 64−long;
//!         └─► time-of-day profile ─► │ each standardised by its running mean and RMS, then
//!             residual ─► seasonal   │ scored by −log10 P(z) under an exponential tail fitted
//!                          bank ─────┤ to its own exceedances over z = 2 (peaks over threshold)
//!                                    ▼
//!   new extreme of the value ─► max −log10 p ─► onset gate (one alarm per episode) ─► score
//! ```
//!
//! Why these pieces:
//! * **Band-pass features at several scales** catch spikes, level shifts and drifts with O(1)
//!   work: each is a difference of exponentially weighted means.
//! * **Tail calibration per feature and per series.** A spike of 8 RMS is routine in a bursty
//!   series and extraordinary in a smooth one. Fitting an exponential to each feature's
//!   exceedances over z = 2 (rate and mean excess, both running) turns z into a tail
//!   probability that means the same thing on every series, so one threshold fits all.
//! * **Seasonal bank.** When a time-of-day profile explains most of the variance (daily
//!   cycles), the same features run on the residual against the profile instead, so the
//!   daily rise is not an anomaly every morning.
//! * **Novel extremes.** A value beyond everything seen so far is surprising however the
//!   features judge it (Numenta's NAB detector calls this a spatial anomaly).
//! * **Onset gate.** An alarm is reported once; for `suppress_samples` after it only a
//!   markedly stronger one is. Alarms mark where something starts, which is what an operator
//!   (and NAB's scoring, which rewards early detection and charges for every alarm row) needs.
//!
//! State: 2408 bytes per series (the 288-bin profile is half of it); work: two banks of
//! five features, a few dozen flops and one logarithm each.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::score::AnomalyScorer;
use crate::stats::Ewma;

/// Features per bank: level, spike, short shift, medium shift, long shift.
pub const FEATURES: usize = 5;

/// Most time-of-day bins of the seasonal profile (5-minute bins over a day).
pub const MAX_BINS: usize = 288;

const DAY_NS: i64 = 86_400_000_000_000;

/// Samples used to estimate the sampling interval, which sizes the time-of-day bins.
const SPACING_SAMPLES: u64 = 16;

/// Settings of [`MultiscaleTail`]. The defaults are tuned on NAB (see `gpusiem bench nab`);
/// they are the same for every series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiscaleTailConfig {
    /// Spans (samples) of the four fast means the band-pass features are built from.
    pub mean_spans: [f64; 4],
    /// Span (samples) of the long-run statistics: the long mean, each feature's mean and RMS,
    /// the exceedance rates.
    pub long_span: f64,
    /// Features are winsorised at this many RMS before they update their own statistics, so
    /// one outlier does not blind the scorer to the next.
    pub clip_sigmas: f64,
    /// Weight of each feature's z (level, spike, short, medium and long shift).
    pub feature_weights: [f64; FEATURES],
    /// z above which a feature's exceedances feed its exponential tail model.
    pub tail_z: f64,
    /// Span, in exceedances, of each tail model's mean excess.
    pub excess_span: f64,
    /// Mean excess a tail model starts from (in z units).
    pub excess_prior: f64,
    /// Floor of a feature's RMS, as a fraction of the value range seen; keeps a flat or
    /// exactly periodic series from turning rounding noise into alarms.
    pub sd_floor_fraction: f64,
    /// A value beyond the range seen so far by more than this fraction of it is novel.
    /// 0 turns novelty off.
    pub novelty_fraction: f64,
    /// −log10 p given to a novel value.
    pub novelty_log_p: f64,
    /// The seasonal bank takes over when var(residual) < this × var(value).
    /// 0 turns the seasonal bank off.
    pub seasonal_variance_ratio: f64,
    /// Weight of the newest day in the time-of-day profile.
    pub profile_alpha: f64,
    /// −log10 p that maps to score 1 (scores scale linearly below it).
    pub full_score_log_p: f64,
    /// Samples after an alarm during which only a stronger alarm is reported.
    pub suppress_samples: u32,
    /// How much stronger (factor) an alarm inside an episode must be to be reported.
    pub escalation: f64,
}

impl Default for MultiscaleTailConfig {
    fn default() -> Self {
        Self {
            mean_spans: [4.0, 16.0, 64.0, 256.0],
            long_span: 10_000.0,
            clip_sigmas: 8.0,
            feature_weights: [0.8, 1.0, 1.0, 1.0, 1.0],
            tail_z: 2.0,
            excess_span: 100.0,
            excess_prior: 2.0,
            sd_floor_fraction: 1e-4,
            novelty_fraction: 0.001,
            novelty_log_p: 4.0,
            seasonal_variance_ratio: 0.3,
            profile_alpha: 0.2,
            full_score_log_p: 30.0,
            suppress_samples: 200,
            escalation: 1.2,
        }
    }
}

impl MultiscaleTailConfig {
    /// Appends every invalid setting, with its dotted path under `prefix`.
    pub fn problems(&self, prefix: &str, out: &mut Vec<crate::Error>) {
        let mut bad = |field: &str, message: &str| {
            out.push(crate::Error::Config {
                path: format!("{prefix}.{field}"),
                message: message.into(),
            })
        };
        // Every check also rejects NaN.
        if !self.mean_spans.iter().all(|s| *s >= 1.0) {
            bad("mean_spans", "every span must be at least 1");
        }
        if self.long_span.is_nan() || self.long_span < 1.0 {
            bad("long_span", "must be at least 1");
        }
        if self.clip_sigmas.is_nan() || self.clip_sigmas <= 0.0 {
            bad("clip_sigmas", "must be positive");
        }
        if !self
            .feature_weights
            .iter()
            .all(|w| *w >= 0.0 && w.is_finite())
        {
            bad("feature_weights", "weights must be finite and non-negative");
        }
        if !(self.tail_z >= 0.0 && self.tail_z.is_finite()) {
            bad("tail_z", "must be finite and non-negative");
        }
        if self.excess_span.is_nan() || self.excess_span < 1.0 {
            bad("excess_span", "must be at least 1");
        }
        if !(self.excess_prior > 0.0 && self.excess_prior.is_finite()) {
            bad("excess_prior", "must be positive");
        }
        if !(self.sd_floor_fraction >= 0.0 && self.sd_floor_fraction.is_finite()) {
            bad("sd_floor_fraction", "must be finite and non-negative");
        }
        if !(self.novelty_fraction >= 0.0 && self.novelty_fraction.is_finite()) {
            bad("novelty_fraction", "must be finite and non-negative");
        }
        if !(self.novelty_log_p >= 0.0 && self.novelty_log_p.is_finite()) {
            bad("novelty_log_p", "must be finite and non-negative");
        }
        if !(0.0..=1.0).contains(&self.seasonal_variance_ratio) {
            bad("seasonal_variance_ratio", "must be in [0, 1]");
        }
        if !(self.profile_alpha > 0.0 && self.profile_alpha <= 1.0) {
            bad("profile_alpha", "must be in (0, 1]");
        }
        if !(self.full_score_log_p > 0.0 && self.full_score_log_p.is_finite()) {
            bad("full_score_log_p", "must be positive");
        }
        if !(self.escalation >= 1.0 && self.escalation.is_finite()) {
            bad("escalation", "must be at least 1");
        }
    }
}

/// The settings with their derived constants, shared by every series of a detector (one
/// `Arc` per series instead of a copy).
#[derive(Debug)]
struct Params {
    cfg: MultiscaleTailConfig,
    /// EWMA weights of the four fast means and of the long mean.
    alphas: [f64; 5],
}

/// One bank of band-pass features over a signal, each standardised and tail-calibrated.
#[derive(Debug, Clone)]
struct Bank {
    n: u64,
    /// Fast means (spans `mean_spans`) and the long mean (`long_span`).
    means: [f64; 5],
    /// Running mean and variance of each feature (winsorised).
    norm: [Ewma; FEATURES],
    /// Fraction of samples whose feature z exceeded `tail_z`.
    rate: [Ewma; FEATURES],
    /// Mean excess of z over `tail_z`, over exceedances.
    excess: [Ewma; FEATURES],
}

impl Bank {
    fn new(cfg: &MultiscaleTailConfig) -> Self {
        Self {
            n: 0,
            means: [0.0; 5],
            norm: [Ewma::with_span(cfg.long_span); FEATURES],
            rate: [Ewma::with_span(cfg.long_span); FEATURES],
            excess: [Ewma::with_span(cfg.excess_span); FEATURES],
        }
    }

    /// The long-run mean of the signal.
    fn long_mean(&self) -> f64 {
        self.means[4]
    }

    /// Folds `x` in; returns the largest −log10 tail probability among its features
    /// (0 when none is in its tail).
    fn update(&mut self, x: f64, p: &Params, sd_floor: f64) -> f64 {
        let cfg = &p.cfg;
        if self.n == 0 {
            self.means = [x; 5];
        }
        // Means including x: the shift features describe the present, not the past.
        let now: [f64; 5] =
            std::array::from_fn(|i| self.means[i] + p.alphas[i] * (x - self.means[i]));
        let features = [
            x,                      // level, against the long-run distribution of the value
            x - self.means[0],      // spike, against the short mean before it
            now[0] - now[2],        // short shift
            now[1] - now[3],        // medium shift
            now[2] - self.means[4], // long shift (drift away from the long mean)
        ];
        let mut best: f64 = 0.0;
        for (i, &f) in features.iter().enumerate() {
            let norm = &mut self.norm[i];
            let (mu, sd) = (norm.mean(), norm.std_dev().max(sd_floor));
            let z = if self.n < 3 {
                0.0
            } else if sd > 0.0 {
                (f - mu).abs() / sd * cfg.feature_weights[i]
            } else if f == mu {
                0.0
            } else {
                // A feature that never moved (and no floor yet) moved now.
                f64::INFINITY
            };
            let bound = cfg.clip_sigmas * sd;
            norm.push(if self.n > 30 && sd > 0.0 {
                f.clamp(mu - bound, mu + bound)
            } else {
                f
            });
            if self.n < 3 || cfg.feature_weights[i] == 0.0 {
                continue;
            }
            let exceeds = z > cfg.tail_z;
            if exceeds {
                // P(Z > z) = rate · exp(−(z − t)/β): exponential tail above t (peaks over
                // threshold with a zero shape parameter).
                let rate = self.rate[i].mean().max(1.0 / cfg.long_span);
                let beta = if self.excess[i].is_started() {
                    self.excess[i].mean()
                } else {
                    cfg.excess_prior
                };
                let excess = (z - cfg.tail_z).min(1e3);
                best =
                    best.max(-rate.log10() + excess / (beta.max(1e-3) * std::f64::consts::LN_10));
                if !self.excess[i].is_started() {
                    self.excess[i].push(cfg.excess_prior);
                }
                self.excess[i].push(excess);
            }
            self.rate[i].push(if exceeds { 1.0 } else { 0.0 });
        }
        self.means = now;
        self.n += 1;
        best
    }
}

/// A time-of-day profile: the smoothed value of each bin of the day.
#[derive(Debug, Clone)]
struct Profile {
    first_ts: i64,
    /// Smallest mean interval over the first samples, ns.
    spacing_ns: i64,
    /// Bin width, ns; 0 until the interval is known.
    bin_ns: i64,
    bins: usize,
    value: [f32; MAX_BINS],
    seen: [u64; MAX_BINS.div_ceil(64)],
}

impl Profile {
    fn new() -> Self {
        Self {
            first_ts: 0,
            spacing_ns: i64::MAX,
            bin_ns: 0,
            bins: 0,
            value: [0.0; MAX_BINS],
            seen: [0; MAX_BINS.div_ceil(64)],
        }
    }

    /// Residual of `x` at `ts` against its bin (None until the bin has a value), then folds
    /// `x` into the bin. `n` is the series' sample count before this one.
    fn residual(&mut self, n: u64, ts: i64, x: f64, alpha: f64) -> Option<f64> {
        if n < SPACING_SAMPLES {
            if n == 0 {
                self.first_ts = ts;
            } else {
                self.spacing_ns = self
                    .spacing_ns
                    .min(ts.saturating_sub(self.first_ts) / n as i64)
                    .max(1);
            }
            return None;
        }
        if self.bin_ns == 0 {
            self.bins = (DAY_NS / self.spacing_ns).clamp(1, MAX_BINS as i64) as usize;
            self.bin_ns = DAY_NS / self.bins as i64;
        }
        let b = ((ts.rem_euclid(DAY_NS) / self.bin_ns) as usize).min(self.bins - 1);
        let (word, bit) = (b / 64, 1u64 << (b % 64));
        if self.seen[word] & bit == 0 {
            self.seen[word] |= bit;
            // Narrowing to f32 halves the profile; the rounding is far below any anomaly and
            // the RMS floor keeps it from scoring.
            self.value[b] = x as f32;
            return None;
        }
        let prev = f64::from(self.value[b]);
        self.value[b] = (prev + alpha * (x - prev)) as f32;
        Some(x - prev)
    }
}

/// The default scorer. See the module docs.
#[derive(Debug, Clone)]
pub struct MultiscaleTail {
    params: Arc<Params>,
    warmup: u64,
    n: u64,
    raw: Bank,
    seasonal: Bank,
    profile: Profile,
    /// Running mean square of the seasonal residual and of the value's deviation from its
    /// long mean: their ratio says whether the profile explains the series.
    resid_ms: Ewma,
    value_ms: Ewma,
    lo: f64,
    hi: f64,
    last_alarm: Option<u64>,
    episode_peak: f64,
}

impl MultiscaleTail {
    /// A fresh scorer that reports 0 for its first `warmup` samples while it learns.
    /// The settings must be valid (see [`MultiscaleTailConfig::problems`]).
    pub fn new(cfg: &MultiscaleTailConfig, warmup: usize) -> Self {
        MultiscaleTailFactory::new(cfg).build(warmup)
    }

    fn sd_floor(&self) -> f64 {
        if self.hi > self.lo {
            self.params.cfg.sd_floor_fraction * (self.hi - self.lo)
        } else {
            0.0
        }
    }
}

/// Builds [`MultiscaleTail`] scorers that share one copy of their settings: the way to make
/// one scorer per series for many series.
#[derive(Debug, Clone)]
pub struct MultiscaleTailFactory {
    params: Arc<Params>,
}

impl MultiscaleTailFactory {
    /// A factory for these settings, which must be valid.
    pub fn new(cfg: &MultiscaleTailConfig) -> Self {
        let a = |span: f64| 2.0 / (span + 1.0);
        let s = cfg.mean_spans;
        let alphas = [a(s[0]), a(s[1]), a(s[2]), a(s[3]), a(cfg.long_span)];
        Self {
            params: Arc::new(Params {
                cfg: cfg.clone(),
                alphas,
            }),
        }
    }

    /// A fresh scorer that reports 0 for its first `warmup` samples.
    pub fn build(&self, warmup: usize) -> MultiscaleTail {
        let cfg = &self.params.cfg;
        MultiscaleTail {
            params: Arc::clone(&self.params),
            warmup: warmup as u64,
            n: 0,
            raw: Bank::new(cfg),
            seasonal: Bank::new(cfg),
            profile: Profile::new(),
            resid_ms: Ewma::with_span(cfg.long_span),
            value_ms: Ewma::with_span(cfg.long_span),
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            last_alarm: None,
            episode_peak: 0.0,
        }
    }
}

impl AnomalyScorer for MultiscaleTail {
    fn update(&mut self, ts_ns: i64, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        let floor = self.sd_floor();
        // A plain borrow of the shared settings (disjoint from the state borrowed below).
        let params: &Params = &self.params;
        let cfg = &params.cfg;
        let mut log_p = self.raw.update(value, params, floor);

        if cfg.seasonal_variance_ratio > 0.0
            && let Some(r) = self
                .profile
                .residual(self.n, ts_ns, value, cfg.profile_alpha)
        {
            let seasonal_log_p = self.seasonal.update(r, params, floor);
            let d = value - self.raw.long_mean();
            self.resid_ms.push(r * r);
            self.value_ms.push(d * d);
            if self.resid_ms.mean() < cfg.seasonal_variance_ratio * self.value_ms.mean() {
                log_p = seasonal_log_p;
            }
        }

        if cfg.novelty_fraction > 0.0 && self.hi > self.lo {
            let excess = (value - self.hi).max(self.lo - value);
            if excess > cfg.novelty_fraction * (self.hi - self.lo) {
                log_p = log_p.max(cfg.novelty_log_p);
            }
        }
        self.lo = self.lo.min(value);
        self.hi = self.hi.max(value);
        self.n += 1;

        if self.n <= self.warmup || log_p <= 0.0 {
            return 0.0;
        }
        let score = (log_p / cfg.full_score_log_p).min(1.0);
        let in_episode = self
            .last_alarm
            .is_some_and(|t| self.n - t <= u64::from(cfg.suppress_samples));
        if in_episode && score <= self.episode_peak * cfg.escalation {
            return 0.0;
        }
        if !in_episode {
            self.episode_peak = 0.0;
        }
        self.last_alarm = Some(self.n);
        self.episode_peak = self.episode_peak.max(score);
        score
    }

    fn state_bytes(&self) -> usize {
        // The shared settings are one allocation per detector, not per series.
        std::mem::size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard-normal noise (xorshift + Box–Muller): no dependency, same
    /// numbers on every run.
    struct Noise(u64);

    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    const FIVE_MIN: i64 = 300_000_000_000;

    fn run(values: &[f64], warmup: usize) -> Vec<f64> {
        let mut s = MultiscaleTail::new(&MultiscaleTailConfig::default(), warmup);
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| s.update(i as i64 * FIVE_MIN, v))
            .collect()
    }

    fn alarms(scores: &[f64], at_least: f64) -> Vec<usize> {
        scores
            .iter()
            .enumerate()
            .filter(|(_, s)| **s >= at_least)
            .map(|(i, _)| i)
            .collect()
    }

    /// The score NAB's sweep chose for the default config lies near 0.1 (−log10 p ≈ 3).
    const ALARM: f64 = 0.1;

    #[test]
    fn scores_stay_in_range_and_warmup_is_silent() {
        let mut noise = Noise(7);
        let values: Vec<f64> = (0..3000)
            .map(|i| {
                if i % 500 == 499 {
                    1e9
                } else {
                    noise.normal() * 1e6
                }
            })
            .collect();
        let scores = run(&values, 600);
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        assert!(
            scores[..600].iter().all(|s| *s == 0.0),
            "warm-up reports nothing"
        );
        assert!(scores[600..].iter().any(|s| *s > 0.0));
    }

    #[test]
    fn a_level_shift_raises_one_early_alarm() {
        let mut noise = Noise(11);
        let values: Vec<f64> = (0..4000)
            .map(|i| 50.0 + noise.normal() + if i >= 3000 { 8.0 } else { 0.0 })
            .collect();
        let scores = run(&values, 600);
        let after = alarms(&scores[3000..], ALARM);
        assert!(
            !after.is_empty() && after[0] < 5,
            "alarm at the shift: {after:?}"
        );
        // Once, not once per shifted sample: the episode is suppressed.
        assert!(after.len() <= 3, "{after:?}");
    }

    #[test]
    fn stationary_noise_rarely_alarms() {
        let mut noise = Noise(3);
        let values: Vec<f64> = (0..20_000).map(|_| 10.0 + noise.normal()).collect();
        let scores = run(&values, 750);
        // A false alarm rate of about 1e-3 per sample, spread into episodes, would give ~20.
        let n = alarms(&scores, ALARM).len();
        assert!(n <= 12, "{n} alarms on white noise");
    }

    #[test]
    fn a_spike_in_noise_is_caught() {
        let mut noise = Noise(5);
        let mut values: Vec<f64> = (0..3000).map(|_| 100.0 + 5.0 * noise.normal()).collect();
        values[2000] = 100.0 + 5.0 * 12.0;
        let scores = run(&values, 600);
        assert!(scores[2000] >= 2.0 * ALARM, "spike score {}", scores[2000]);
    }

    #[test]
    fn a_daily_cycle_is_not_an_anomaly_but_a_break_in_it_is() {
        // 14 days of a clean daily square-ish cycle in 5-minute samples, as in NAB's
        // art_daily_* files: the morning rise must not alarm every day.
        let day = 288;
        let cycle = |i: usize| {
            if (i % day) > 100 && (i % day) < 180 {
                80.0
            } else {
                20.0
            }
        };
        let mut values: Vec<f64> = (0..14 * day).map(cycle).collect();
        let quiet = run(&values, 604);
        assert!(
            alarms(&quiet, ALARM).len() <= 1,
            "alarms on a clean cycle: {:?}",
            alarms(&quiet, ALARM)
        );
        // Day 11 stays low through its usual high phase.
        for v in &mut values[10 * day + 100..10 * day + 180] {
            *v = 20.0;
        }
        let broken = run(&values, 604);
        let caught = alarms(&broken[10 * day + 100..10 * day + 140], ALARM);
        assert!(!caught.is_empty(), "missing daily high not caught");
    }

    #[test]
    fn a_flat_line_that_moves_alarms() {
        let mut values = vec![5.0; 2000];
        values[1500..].fill(5.5);
        let scores = run(&values, 300);
        assert_eq!(alarms(&scores[..1500], ALARM), Vec::<usize>::new());
        assert!(scores[1500] >= ALARM);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut a = MultiscaleTail::new(&MultiscaleTailConfig::default(), 10);
        let mut b = a.clone();
        for i in 0..500 {
            let v = (i as f64 * 0.1).sin();
            assert_eq!(a.update(i * FIVE_MIN, v), b.update(i * FIVE_MIN, v));
            assert_eq!(a.update(i * FIVE_MIN, f64::NAN), 0.0);
        }
    }

    #[test]
    fn scoring_is_causal_and_deterministic() {
        let mut noise = Noise(9);
        let values: Vec<f64> = (0..3000)
            .map(|i| noise.normal() + if i > 2000 { 5.0 } else { 0.0 })
            .collect();
        let full = run(&values, 300);
        let prefix = run(&values[..2100], 300);
        assert_eq!(&full[..2100], &prefix[..]);
        assert_eq!(full, run(&values, 300));
    }

    #[test]
    fn state_fits_the_per_series_budget() {
        let s = MultiscaleTail::new(&MultiscaleTailConfig::default(), 100);
        assert!(s.state_bytes() <= 4096, "{} bytes", s.state_bytes());
    }

    #[test]
    fn invalid_settings_are_reported_with_paths() {
        let cfg = MultiscaleTailConfig {
            long_span: f64::NAN,
            escalation: 0.5,
            ..Default::default()
        };
        let mut out = Vec::new();
        cfg.problems("s", &mut out);
        let paths: Vec<String> = out
            .iter()
            .map(|e| match e {
                crate::Error::Config { path, .. } => path.clone(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(paths, ["s.long_span", "s.escalation"]);
        let mut none = Vec::new();
        MultiscaleTailConfig::default().problems("s", &mut none);
        assert!(none.is_empty());
    }
}
