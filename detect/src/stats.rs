//! Streaming statistics: the O(1)-per-sample, fixed-size building blocks that scorers and
//! detectors share.
//!
//! Each type keeps a small, bounded state (no allocation after construction) and equals a batch
//! formula, stated in its docs and checked by the property tests at the bottom of this file:
//!
//! * [`Welford`] — mean and sample variance of everything seen.
//! * [`Ewma`] — exponentially weighted mean and variance (West's recurrence).
//! * [`Ring`] — the last `N` values, with their mean and variance.
//! * [`SortedWindow`] — the last `N` values in sorted order, for median, quantiles and MAD.
//!
//! Values are `f64` in the API. [`Ring`] and [`SortedWindow`] store `f32` when asked to
//! (`Ring<f32, N>`), which halves their state: at 250k series the detectors' memory is
//! mostly these windows.

/// Running mean and variance of every value seen (Welford's algorithm).
///
/// Batch formula: `mean = Σx/n`, `variance = Σ(x − mean)²/(n − 1)` (0 for n < 2).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Welford {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Welford {
    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Values seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Mean (0 before the first value).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Sample variance (n − 1 denominator; 0 for fewer than two values).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }
}

/// Exponentially weighted mean and variance with smoothing factor `alpha`.
///
/// The first value initialises the mean (variance 0); after it, for each `x`:
/// `d = x − mean; mean += α·d; var = (1 − α)·(var + α·d²)` (West 1979; Finch 2009, "Incremental
/// calculation of weighted mean and variance").
///
/// Batch formula, for values `x_0 … x_{n−1}`: weights `w_0 = (1 − α)^{n−1}` and
/// `w_i = α(1 − α)^{n−1−i}` for `i ≥ 1` (they sum to 1); `mean = Σ w_i x_i` and
/// `var = Σ w_i (x_i − mean)²`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    alpha: f64,
    mean: f64,
    var: f64,
    started: bool,
}

impl Ewma {
    /// An empty average; `alpha` in (0, 1] is the weight of the newest value.
    pub fn new(alpha: f64) -> Self {
        Self {
            alpha,
            mean: 0.0,
            var: 0.0,
            started: false,
        }
    }

    /// An average with `alpha = 2 / (span + 1)`, the usual "span" convention.
    pub fn with_span(span: f64) -> Self {
        Self::new(2.0 / (span + 1.0))
    }

    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        if !self.started {
            self.started = true;
            self.mean = x;
            self.var = 0.0;
            return;
        }
        let d = x - self.mean;
        self.mean += self.alpha * d;
        self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d);
    }

    /// Whether a value has been seen.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Weighted mean (0 before the first value).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Weighted variance.
    pub fn variance(&self) -> f64 {
        self.var
    }

    /// Weighted standard deviation.
    pub fn std_dev(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// A value type a window can store: `f64`, or `f32` to halve the state.
pub trait Stored: Copy + Default + PartialOrd + std::fmt::Debug {
    /// Narrows a value for storage.
    fn store(x: f64) -> Self;
    /// Widens a stored value.
    fn load(self) -> f64;
}

impl Stored for f64 {
    fn store(x: f64) -> Self {
        x
    }
    fn load(self) -> f64 {
        self
    }
}

impl Stored for f32 {
    fn store(x: f64) -> Self {
        // Narrowing is the point of this type: the window trades precision for memory.
        x as f32
    }
    fn load(self) -> f64 {
        f64::from(self)
    }
}

/// The last `N` values (a ring buffer) with their running sum.
///
/// Batch formula over the values held, `x_1 … x_m` (`m = min(pushed, N)`): `mean = Σx/m`,
/// `variance = Σ(x − mean)²/m`. The sum is kept incrementally in `f64` and recomputed from the
/// window every `N` pushes, so rounding error cannot accumulate.
#[derive(Debug, Clone)]
pub struct Ring<T: Stored, const N: usize> {
    buf: [T; N],
    /// Next slot to write.
    head: usize,
    len: usize,
    sum: f64,
    since_resum: usize,
}

impl<T: Stored, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Stored, const N: usize> Ring<T, N> {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            buf: [T::default(); N],
            head: 0,
            len: 0,
            sum: 0.0,
            since_resum: 0,
        }
    }

    /// Appends `x`; returns the value it evicted once the window is full.
    pub fn push(&mut self, x: f64) -> Option<f64> {
        let stored = T::store(x);
        let evicted = (self.len == N).then(|| self.buf[self.head].load());
        self.buf[self.head] = stored;
        self.head = (self.head + 1) % N;
        self.len = (self.len + 1).min(N);
        self.sum += stored.load() - evicted.unwrap_or(0.0);
        self.since_resum += 1;
        if self.since_resum >= N {
            self.since_resum = 0;
            self.sum = self.iter().sum();
        }
        evicted
    }

    /// Values held (at most `N`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the window holds `N` values.
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// The value pushed `lag` pushes ago (`0` = the newest), if still held.
    pub fn get(&self, lag: usize) -> Option<f64> {
        (lag < self.len).then(|| self.buf[(self.head + N - 1 - lag) % N].load())
    }

    /// The values held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        let start = (self.head + N - self.len) % N;
        (0..self.len).map(move |i| self.buf[(start + i) % N].load())
    }

    /// Mean of the values held (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            self.sum / self.len as f64
        }
    }

    /// Mean of the newest `k` values held (all of them if fewer).
    pub fn mean_last(&self, k: usize) -> f64 {
        let k = k.min(self.len);
        if k == 0 {
            return 0.0;
        }
        (0..k).filter_map(|lag| self.get(lag)).sum::<f64>() / k as f64
    }

    /// Population variance of the values held (O(N): it is not needed per sample).
    pub fn variance(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        let mean = self.mean();
        self.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / self.len as f64
    }
}

/// The last `N` values kept in sorted order beside a ring of arrival order, for exact windowed
/// median, quantiles and median absolute deviation.
///
/// A push is O(N) (one binary search and a shift of at most `N` values), which for the small
/// windows used here (tens of values) is a few nanoseconds.
///
/// Batch formula over the values held, sorted as `s_0 ≤ … ≤ s_{m−1}`: `quantile(q)` interpolates
/// linearly at rank `q·(m − 1)` (numpy's default), `median = quantile(0.5)`, and
/// `mad = median(|x − median|)`.
#[derive(Debug, Clone)]
pub struct SortedWindow<T: Stored, const N: usize> {
    ring: Ring<T, N>,
    sorted: [T; N],
}

impl<T: Stored, const N: usize> Default for SortedWindow<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Stored, const N: usize> SortedWindow<T, N> {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            ring: Ring::new(),
            sorted: [T::default(); N],
        }
    }

    /// Appends `x`, evicting the oldest value once full.
    pub fn push(&mut self, x: f64) {
        let stored = T::store(x);
        let len = self.ring.len();
        let evicted = self.ring.push(stored.load());
        let mut end = len;
        if let Some(old) = evicted {
            let old = T::store(old);
            // The evicted value is in `sorted` (the same rounding put it in both places).
            let pos = self.sorted[..len].partition_point(|v| *v < old);
            self.sorted.copy_within(pos + 1..len, pos);
            end = len - 1;
        }
        let pos = self.sorted[..end].partition_point(|v| *v <= stored);
        self.sorted.copy_within(pos..end, pos + 1);
        self.sorted[pos] = stored;
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing has been pushed.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The arrival-order window (for lags and means).
    pub fn ring(&self) -> &Ring<T, N> {
        &self.ring
    }

    /// The values held, ascending.
    pub fn sorted(&self) -> impl Iterator<Item = f64> + '_ {
        self.sorted[..self.ring.len()].iter().map(|v| v.load())
    }

    /// Linearly interpolated quantile `q ∈ [0, 1]` (0 when empty).
    pub fn quantile(&self, q: f64) -> f64 {
        let m = self.ring.len();
        if m == 0 {
            return 0.0;
        }
        let rank = q.clamp(0.0, 1.0) * (m - 1) as f64;
        let lo = rank.floor() as usize;
        let hi = (lo + 1).min(m - 1);
        let frac = rank - lo as f64;
        let (a, b) = (self.sorted[lo].load(), self.sorted[hi].load());
        a + (b - a) * frac
    }

    /// Median (0 when empty).
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// Median absolute deviation from the median (unscaled; 0 when empty). O(N): a merge of
    /// the two sides of the median, which are each already sorted by distance.
    pub fn mad(&self) -> f64 {
        let m = self.ring.len();
        if m == 0 {
            return 0.0;
        }
        let med = self.median();
        let s = &self.sorted[..m];
        // Left side (values < med) read from the median outwards, right side likewise: both
        // sequences of distances ascend, so merging them yields the sorted distances.
        let split = s.partition_point(|v| v.load() < med);
        let (mut l, mut r) = (split, split);
        let mut k = 0;
        let (mut lo_val, mut hi_val) = (0.0, 0.0);
        let (lo_rank, hi_rank) = ((m - 1) / 2, m / 2);
        while k <= hi_rank {
            let dl = (l > 0).then(|| med - s[l - 1].load());
            let dr = (r < m).then(|| s[r].load() - med);
            let d = match (dl, dr) {
                (Some(a), Some(b)) if a <= b => {
                    l -= 1;
                    a
                }
                (Some(a), None) => {
                    l -= 1;
                    a
                }
                (_, Some(b)) => {
                    r += 1;
                    b
                }
                (None, None) => break,
            };
            if k == lo_rank {
                lo_val = d;
            }
            if k == hi_rank {
                hi_val = d;
            }
            k += 1;
        }
        0.5 * (lo_val + hi_val)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64, scale: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + scale)
    }

    fn batch_quantile(sorted: &[f64], q: f64) -> f64 {
        let rank = q * (sorted.len() - 1) as f64;
        let lo = rank.floor() as usize;
        let hi = (lo + 1).min(sorted.len() - 1);
        sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
    }

    fn sorted_copy(xs: &[f64]) -> Vec<f64> {
        let mut s = xs.to_vec();
        s.sort_by(f64::total_cmp);
        s
    }

    proptest! {
        #[test]
        fn welford_equals_batch(xs in prop::collection::vec(-1e6f64..1e6, 1..200)) {
            let mut w = Welford::default();
            xs.iter().for_each(|&x| w.push(x));
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = if xs.len() < 2 { 0.0 } else { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) };
            prop_assert_eq!(w.count(), xs.len() as u64);
            prop_assert!(close(w.mean(), mean, 1e6), "{} vs {}", w.mean(), mean);
            prop_assert!(close(w.variance(), var, var.max(1e6)), "{} vs {}", w.variance(), var);
        }

        #[test]
        fn ewma_equals_batch(xs in prop::collection::vec(-1e3f64..1e3, 1..200), alpha in 0.01f64..1.0) {
            let mut e = Ewma::new(alpha);
            xs.iter().for_each(|&x| e.push(x));
            let n = xs.len();
            let w: Vec<f64> = (0..n)
                .map(|i| if i == 0 { (1.0 - alpha).powi(n as i32 - 1) } else { alpha * (1.0 - alpha).powi((n - 1 - i) as i32) })
                .collect();
            prop_assert!(close(w.iter().sum::<f64>(), 1.0, 1.0));
            let mean: f64 = w.iter().zip(&xs).map(|(w, x)| w * x).sum();
            let var: f64 = w.iter().zip(&xs).map(|(w, x)| w * (x - mean).powi(2)).sum();
            prop_assert!(close(e.mean(), mean, 1e3), "mean {} vs {}", e.mean(), mean);
            prop_assert!(close(e.variance(), var, 1e6), "var {} vs {}", e.variance(), var);
        }

        #[test]
        fn ring_equals_batch(xs in prop::collection::vec(-1e6f64..1e6, 1..300), k in 1usize..20) {
            let mut r = Ring::<f64, 16>::new();
            for (i, &x) in xs.iter().enumerate() {
                let evicted = r.push(x);
                prop_assert_eq!(evicted, (i >= 16).then(|| xs[i - 16]));
            }
            let held = &xs[xs.len().saturating_sub(16)..];
            prop_assert_eq!(r.iter().collect::<Vec<_>>(), held.to_vec());
            prop_assert_eq!(r.get(0), xs.last().copied());
            let mean = held.iter().sum::<f64>() / held.len() as f64;
            let var = held.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / held.len() as f64;
            prop_assert!(close(r.mean(), mean, 1e6), "{} vs {}", r.mean(), mean);
            prop_assert!(close(r.variance(), var, var.max(1e6)));
            let last = &held[held.len().saturating_sub(k)..];
            prop_assert!(close(r.mean_last(k), last.iter().sum::<f64>() / last.len() as f64, 1e6));
        }

        #[test]
        fn sorted_window_equals_batch(
            xs in prop::collection::vec(prop_oneof![-1e3f64..1e3, (0i32..5).prop_map(f64::from)], 1..200),
            q in 0.0f64..=1.0,
        ) {
            let mut w = SortedWindow::<f64, 15>::new();
            for (i, &x) in xs.iter().enumerate() {
                w.push(x);
                let held = &xs[(i + 1).saturating_sub(15)..=i];
                let s = sorted_copy(held);
                prop_assert_eq!(w.sorted().collect::<Vec<_>>(), s.clone());
                let med = batch_quantile(&s, 0.5);
                prop_assert_eq!(w.median(), med);
                let dev = sorted_copy(&held.iter().map(|x| (x - med).abs()).collect::<Vec<_>>());
                prop_assert!(close(w.mad(), batch_quantile(&dev, 0.5), 1e3), "mad {} vs {}", w.mad(), batch_quantile(&dev, 0.5));
                prop_assert!(close(w.quantile(q), batch_quantile(&s, q), 1e3));
            }
        }

        #[test]
        fn f32_window_holds_rounded_values(xs in prop::collection::vec(-1e3f64..1e3, 1..100)) {
            let mut w = SortedWindow::<f32, 8>::new();
            xs.iter().for_each(|&x| w.push(x));
            let held: Vec<f64> = xs[xs.len().saturating_sub(8)..].iter().map(|&x| f64::from(x as f32)).collect();
            prop_assert_eq!(w.sorted().collect::<Vec<_>>(), sorted_copy(&held));
        }
    }

    #[test]
    fn ewma_span_convention() {
        let e = Ewma::with_span(19.0);
        assert!((e.alpha - 0.1).abs() < 1e-15);
    }

    #[test]
    fn mad_of_a_known_window() {
        let mut w = SortedWindow::<f64, 8>::new();
        for x in [1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0] {
            w.push(x);
        }
        assert_eq!(w.median(), 2.0);
        // |x − 2| = 1,1,0,0,2,4,7 → sorted 0,0,1,1,2,4,7 → median 1.
        assert_eq!(w.mad(), 1.0);
    }
}
