//! The Numenta Anomaly Benchmark (NAB): run a streaming scorer over NAB's corpus and score the
//! result exactly as NAB does.
//!
//! ```text
//!  data/<category>/<name>.csv ─► read_series ─► run_series (cold start, causal) ─► scores
//!                                                   │                                  │
//!                                   write_result_csv ◄┘            labels/combined_windows.json
//!                                   OUT/<category>/gpusiem_<name>.csv            │
//!                                                                  score_corpus ◄─┘
//!                                                     (threshold sweep, three profiles,
//!                                                      normalisation: null = 0, perfect = 100)
//! ```
//!
//! The scoring follows `shared/nab/SCORING.md` (a description of numenta/NAB's `sweeper.py`,
//! `optimizer.py` and `scorer.py` since PR #328): per-row sweep weights, one corpus-wide threshold
//! chosen by sweeping every distinct score, then normalisation with the closed-form null and
//! perfect scores. It reproduces NAB's published `final_results.json` (see the integration tests).
//!
//! Every file is scored from a cold start with the same configuration; the scorer sees one row at
//! a time and never the file's length, minimum or maximum. The only hint it gets is NAB's
//! probationary period, as a warm-up length, which NAB hands every detector too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

use crate::score::{AnomalyScorer, ScorerConfig};

pub use crate::{Error, Result};

/// NAB's cap on the probationary period, in rows (`0.15 · 5000`).
pub const MAX_PROBATION_ROWS: usize = 750;

/// Name our result files carry (`gpusiem_<file>.csv`), as NAB names each detector's files.
pub const DETECTOR_NAME: &str = "gpusiem";

/// NAB's probationary period of a file with `rows` rows: `min(floor(0.15·N), 750)`. Rows before
/// it are not scored; detectors may use it to warm up.
pub fn probationary_rows(rows: usize) -> usize {
    // floor(0.15 * N) computed exactly in integers (0.15 is not exact in binary).
    (rows * 15 / 100).min(MAX_PROBATION_ROWS)
}

/// One NAB data file: timestamps and values, in file order.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Timestamps as written in the file (`2014-04-01 00:00:00`), echoed into result files.
    pub timestamp_text: Vec<String>,
    /// Timestamps in ns since the Unix epoch (the file's naive times read as UTC).
    pub ts_ns: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
}

impl Series {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the file had no data rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Parses a NAB timestamp (`YYYY-MM-DD HH:MM:SS`, optionally with a fraction) into ns since the
/// epoch, reading it as UTC.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::File {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Reads a NAB data file (`timestamp,value` with a header row).
pub fn read_series(path: &Path) -> Result<Series> {
    let text = read_text(path)?;
    parse_series(&text, path)
}

fn parse_series(text: &str, path: &Path) -> Result<Series> {
    let bad = |line: usize, reason: &str| Error::Csv {
        path: path.to_owned(),
        line,
        reason: reason.to_owned(),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim().starts_with("timestamp") => {}
        _ => return Err(bad(1, "expected a `timestamp,value` header")),
    }
    let mut series = Series::default();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split(',');
        let (Some(ts), Some(value)) = (cols.next(), cols.next()) else {
            return Err(bad(i + 1, "expected two columns"));
        };
        let ts_ns = parse_timestamp(ts).ok_or_else(|| bad(i + 1, "unparsable timestamp"))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| bad(i + 1, "unparsable value"))?;
        if !value.is_finite() {
            return Err(bad(i + 1, "value is not finite"));
        }
        series.timestamp_text.push(ts.trim().to_owned());
        series.ts_ns.push(ts_ns);
        series.values.push(value);
    }
    Ok(series)
}

/// Ground-truth anomaly windows: corpus-relative file name (`realTweets/Twitter_volume_AAPL.csv`)
/// → inclusive `(start_ns, end_ns)` windows in time order.
pub type Labels = BTreeMap<String, Vec<(i64, i64)>>;

/// Reads NAB's `labels/combined_windows.json`.
pub fn read_labels(path: &Path) -> Result<Labels> {
    let text = read_text(path)?;
    let bad = |reason: String| Error::Labels {
        path: path.to_owned(),
        reason,
    };
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a windows file: {e}")))?;
    let mut labels = Labels::new();
    for (file, windows) in raw {
        let mut parsed = Vec::with_capacity(windows.len());
        for (start, end) in &windows {
            let (Some(s), Some(e)) = (parse_timestamp(start), parse_timestamp(end)) else {
                return Err(bad(format!("unparsable window timestamp for `{file}`")));
            };
            parsed.push((s, e));
        }
        parsed.sort_unstable();
        labels.insert(file, parsed);
    }
    Ok(labels)
}

/// Runs a fresh scorer over one series, causally: score `i` depends on rows `0..=i` only.
pub fn run_series(series: &Series, config: &ScorerConfig) -> Result<Vec<f64>> {
    let mut scorer = config.build_with_warmup(probationary_rows(series.len()))?;
    Ok(series
        .ts_ns
        .iter()
        .zip(&series.values)
        .map(|(&ts, &v)| scorer.update(ts, v))
        .collect())
}

/// One data file's detector output.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// Corpus-relative data file (`realTweets/Twitter_volume_AAPL.csv`), as in the label file.
    pub file: String,
    /// Row timestamps (ns), aligned with `scores`.
    pub ts_ns: Vec<i64>,
    /// One anomaly score in [0, 1] per row.
    pub scores: Vec<f64>,
}

/// Corpus-relative names of every data file under `data_dir` (`<category>/<name>.csv`), sorted.
pub fn list_data_files(data_dir: &Path) -> Result<Vec<String>> {
    let list = |dir: &Path| -> Result<Vec<std::fs::DirEntry>> {
        let io = |source| Error::File {
            op: "listing",
            path: dir.to_owned(),
            source,
        };
        std::fs::read_dir(dir)
            .map_err(io)?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io)
    };
    let mut files = Vec::new();
    for category in list(data_dir)? {
        if !category.path().is_dir() {
            continue;
        }
        for entry in list(&category.path())? {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "csv") {
                files.push(format!(
                    "{}/{}",
                    category.file_name().to_string_lossy(),
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Where NAB expects a detector's result for `file`: `out/<category>/<detector>_<name>.csv`.
pub fn result_path(out_dir: &Path, detector: &str, file: &str) -> PathBuf {
    let (category, name) = file.split_once('/').unwrap_or(("", file));
    out_dir.join(category).join(format!("{detector}_{name}"))
}

/// Writes one result file with columns `timestamp,value,anomaly_score`.
pub fn write_result_csv(path: &Path, series: &Series, scores: &[f64]) -> Result<()> {
    let io = |source| Error::File {
        op: "writing",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut text = String::with_capacity(series.len() * 40 + 32);
    text.push_str("timestamp,value,anomaly_score\n");
    for ((ts, value), score) in series.timestamp_text.iter().zip(&series.values).zip(scores) {
        // `{}` prints the shortest text that parses back to the same f64, so reading the file
        // back gives bit-identical scores (exact ties matter to the threshold sweep).
        let _ = writeln!(text, "{ts},{value},{score}");
    }
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// Runs a fresh scorer over every data file under `data_dir` (`<category>/<name>.csv`) and, when
/// `out_dir` is given, writes `out_dir/<category>/gpusiem_<name>.csv` for each.
pub fn run_corpus(
    data_dir: &Path,
    out_dir: Option<&Path>,
    config: &ScorerConfig,
) -> Result<Vec<FileResult>> {
    config.validate()?;
    let mut results = Vec::new();
    for file in list_data_files(data_dir)? {
        let series = read_series(&data_dir.join(&file))?;
        let scores = run_series(&series, config)?;
        if let Some(out) = out_dir {
            write_result_csv(&result_path(out, DETECTOR_NAME, &file), &series, &scores)?;
        }
        results.push(FileResult {
            file,
            ts_ns: series.ts_ns,
            scores,
        });
    }
    Ok(results)
}

/// Reads a detector's result files back (`out_dir/<category>/<detector>_<name>.csv`, column
/// `anomaly_score`), one per labelled file, for scoring a results tree written earlier.
pub fn read_results(out_dir: &Path, detector: &str, labels: &Labels) -> Result<Vec<FileResult>> {
    let mut results = Vec::with_capacity(labels.len());
    for file in labels.keys() {
        let path = result_path(out_dir, detector, file);
        let text = read_text(&path)?;
        let bad = |line: usize, reason: &str| Error::Csv {
            path: path.clone(),
            line,
            reason: reason.to_owned(),
        };
        let mut lines = text.lines().enumerate();
        let header = lines
            .next()
            .map(|(_, h)| h)
            .ok_or_else(|| bad(1, "empty file"))?;
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let ts_col = cols
            .iter()
            .position(|c| *c == "timestamp")
            .ok_or_else(|| bad(1, "no `timestamp` column"))?;
        let score_col = cols
            .iter()
            .position(|c| *c == "anomaly_score")
            .ok_or_else(|| bad(1, "no `anomaly_score` column"))?;
        let mut result = FileResult {
            file: file.clone(),
            ts_ns: Vec::new(),
            scores: Vec::new(),
        };
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let ts = fields
                .get(ts_col)
                .and_then(|t| parse_timestamp(t))
                .ok_or_else(|| bad(i + 1, "bad timestamp"))?;
            let score: f64 = fields
                .get(score_col)
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| bad(i + 1, "bad anomaly_score"))?;
            result.ts_ns.push(ts);
            result.scores.push(score);
        }
        results.push(result);
    }
    Ok(results)
}

/// One application profile of NAB's cost matrix (`config/profiles.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// NAB's name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
    pub name: &'static str,
    /// Weight of a true positive (`A_TP`).
    pub tp_weight: f64,
    /// Weight of a false positive (`A_FP`).
    pub fp_weight: f64,
    /// Weight of a missed window (`A_FN`).
    pub fn_weight: f64,
}

/// NAB's three profiles, in the order NAB reports them.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp_weight: 1.0,
        fp_weight: 0.22,
        fn_weight: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 2.0,
    },
];

/// NAB's scaled sigmoid: `−1` for `y > 3`, else `2·σ(−5y) − 1`.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// The corpus score of one profile at its corpus-optimal threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileScore {
    /// The chosen threshold (1.1 means "detect nothing").
    pub threshold: f64,
    /// Raw corpus score (sum of file scores) at that threshold.
    pub raw: f64,
    /// Normalised score: null detector 0, perfect detector 100.
    pub normalized: f64,
    /// Windows with at least one detection, at that threshold.
    pub detected_windows: usize,
    /// Scorable windows in the corpus.
    pub windows: usize,
    /// Detections outside every window (rows), at that threshold.
    pub false_positive_rows: usize,
}

/// NAB's three profile scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileScores {
    /// `standard` profile.
    pub standard: ProfileScore,
    /// `reward_low_FP_rate` profile.
    pub reward_low_fp: ProfileScore,
    /// `reward_low_FN_rate` profile.
    pub reward_low_fn: ProfileScore,
}

/// One scorable row of the corpus: its score, its sweep weight and its window, if any.
#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    weight: f64,
    window: Option<usize>,
}

/// Row index ranges `[L, R]` of the labelled windows over these timestamps (rows whose timestamp
/// lies within the window's limits). Windows that cover no row are dropped.
fn window_rows(ts_ns: &[i64], windows: &[(i64, i64)]) -> Vec<(usize, usize)> {
    windows
        .iter()
        .filter_map(|&(start, end)| {
            let l = ts_ns.partition_point(|&t| t < start);
            let r_excl = ts_ns.partition_point(|&t| t <= end);
            (r_excl > l).then(|| (l, r_excl - 1))
        })
        .collect()
}

/// Sweep weights of every row of one file under `profile`, with the window index (within the
/// file) of rows inside a window.
fn row_weights(
    n: usize,
    windows: &[(usize, usize)],
    profile: &Profile,
) -> Vec<(f64, Option<usize>)> {
    let s_m1 = scaled_sigmoid(-1.0);
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    let mut prev: Option<(usize, usize)> = None;
    for i in 0..n {
        if let Some(&(l, r)) = windows.get(k).filter(|&&(l, r)| l <= i && i <= r) {
            let w = (r - l + 1) as f64;
            let y = -((r - i + 1) as f64) / w;
            out.push((profile.tp_weight * scaled_sigmoid(y) / s_m1, Some(k)));
            if i == r {
                prev = Some((r, r - l + 1));
                k += 1;
            }
        } else {
            let w = match prev {
                None => -profile.fp_weight,
                Some((r, width)) => {
                    // A one-row window makes NAB divide by zero; that is "infinitely far",
                    // the full FP cost.
                    let y = if width > 1 {
                        i.abs_diff(r) as f64 / (width - 1) as f64
                    } else {
                        f64::INFINITY
                    };
                    profile.fp_weight * scaled_sigmoid(y)
                }
            };
            out.push((w, None));
        }
    }
    out
}

/// Scores detector output against the labels under all three profiles, NAB-style: one
/// corpus-wide threshold per profile, chosen by sweeping every distinct score (ties in score go
/// to the highest threshold), then normalised.
///
/// Every labelled file must have a result with one score per data row; results for files that
/// are not labelled are an error too, as NAB would not know their windows.
pub fn score_corpus(results: &[FileResult], labels: &Labels) -> Result<ProfileScores> {
    let by_file: BTreeMap<&str, &FileResult> =
        results.iter().map(|r| (r.file.as_str(), r)).collect();
    for r in results {
        if !labels.contains_key(&r.file) {
            return Err(Error::Results {
                file: r.file.clone(),
                reason: "not in the label file".into(),
            });
        }
        if r.ts_ns.len() != r.scores.len() {
            return Err(Error::Results {
                file: r.file.clone(),
                reason: "timestamps and scores differ in length".into(),
            });
        }
        if let Some(bad) = r.scores.iter().position(|s| !(0.0..=1.0).contains(s)) {
            return Err(Error::Results {
                file: r.file.clone(),
                reason: format!("row {bad}: score outside [0, 1]"),
            });
        }
    }
    let mut files = Vec::with_capacity(labels.len());
    for (file, windows) in labels {
        let r = by_file.get(file.as_str()).ok_or_else(|| Error::Results {
            file: file.clone(),
            reason: "no detector output".into(),
        })?;
        files.push((*r, window_rows(&r.ts_ns, windows)));
    }
    let k_windows: usize = labels.values().map(Vec::len).sum();
    let [standard, reward_low_fp, reward_low_fn] =
        PROFILES.map(|p| score_profile(&files, k_windows, &p));
    Ok(ProfileScores {
        standard,
        reward_low_fp,
        reward_low_fn,
    })
}

/// Scores files whose window row ranges are already known under one profile; `k_windows` is the
/// label file's window count (the normaliser).
fn score_profile(
    files: &[(&FileResult, Vec<(usize, usize)>)],
    k_windows: usize,
    profile: &Profile,
) -> ProfileScore {
    let mut points = Vec::new();
    let mut window_base = 0;
    for (r, windows) in files {
        let n = r.scores.len();
        let probation = probationary_rows(n);
        for (i, (weight, window)) in row_weights(n, windows, profile).into_iter().enumerate() {
            if i >= probation {
                points.push(Point {
                    score: r.scores[i],
                    weight,
                    window: window.map(|k| k + window_base),
                });
            }
        }
        window_base += windows.len();
    }
    // Stable sort, descending: equal scores keep file order, as NAB's stable sort does.
    points.sort_by(|a, b| b.score.total_cmp(&a.score));

    // Best weight per window so far (−A_FN until detected); only windows with a scorable row
    // take part.
    let mut best: Vec<Option<f64>> = vec![None; window_base];
    for p in &points {
        if let Some(w) = p.window {
            best[w] = Some(-profile.fn_weight);
        }
    }
    let scorable_windows = best.iter().filter(|b| b.is_some()).count();
    let mut window_sum: f64 = best.iter().flatten().sum();
    let mut fp_sum = 0.0;
    let mut fp_rows = 0usize;
    let mut detected = 0usize;

    let mut cur = 1.1;
    let mut best_score = (cur, window_sum, 0usize, 0usize);
    let mut consider = |theta: f64, raw: f64, detected: usize, fp_rows: usize| {
        // Strictly greater: on ties the earlier (higher) threshold wins.
        if raw > best_score.1 {
            best_score = (theta, raw, detected, fp_rows);
        }
    };
    for p in &points {
        if p.score != cur {
            consider(cur, fp_sum + window_sum, detected, fp_rows);
            cur = p.score;
        }
        match p.window {
            None => {
                fp_sum += p.weight;
                fp_rows += 1;
            }
            Some(w) => {
                let b = best[w].get_or_insert(-profile.fn_weight);
                if *b == -profile.fn_weight && p.weight > *b {
                    detected += 1;
                }
                if p.weight > *b {
                    window_sum += p.weight - *b;
                    *b = p.weight;
                }
            }
        }
    }
    consider(cur, fp_sum + window_sum, detected, fp_rows);

    let (threshold, raw, detected_windows, false_positive_rows) = best_score;
    let k = k_windows as f64;
    let null = -profile.fn_weight * k;
    let perfect = profile.tp_weight * k;
    ProfileScore {
        threshold,
        raw,
        normalized: 100.0 * (raw - null) / (perfect - null),
        detected_windows,
        windows: scorable_windows,
        false_positive_rows,
    }
}

/// Raw score of the given files under `profile` at a fixed `threshold` (NAB's "score" step):
/// the sum, over the files, of their FP weights and of each window's earliest-detection weight
/// or `−A_FN`. Files without labels are skipped.
pub fn score_at_threshold(
    results: &[FileResult],
    labels: &Labels,
    profile: &Profile,
    threshold: f64,
) -> f64 {
    let (windows, fps) = breakdown(results, labels, profile, threshold);
    windows.iter().map(|w| w.weight).sum::<f64>() + fps.iter().map(|f| f.2).sum::<f64>()
}

/// Per-window outcome at a threshold, for looking into what a detector caught and missed.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowOutcome {
    /// Corpus-relative data file.
    pub file: String,
    /// First and last row of the window.
    pub rows: (usize, usize),
    /// First detected row in the window, if any.
    pub first_detection: Option<usize>,
    /// Weight earned (`A_TP`-scaled) or `−A_FN` if missed.
    pub weight: f64,
}

/// Per-file breakdown of a profile at a fixed threshold: each window's outcome and the FP rows
/// and their cost per file (rows in the probationary period are ignored, as NAB does).
pub fn breakdown(
    results: &[FileResult],
    labels: &Labels,
    profile: &Profile,
    threshold: f64,
) -> (Vec<WindowOutcome>, Vec<(String, usize, f64)>) {
    let mut windows_out = Vec::new();
    let mut fps = Vec::new();
    for r in results {
        let Some(windows) = labels.get(&r.file) else {
            continue;
        };
        let rows = window_rows(&r.ts_ns, windows);
        let weights = row_weights(r.scores.len(), &rows, profile);
        let probation = probationary_rows(r.scores.len());
        let mut fp_rows = 0;
        let mut fp_cost = 0.0;
        let mut firsts: Vec<Option<usize>> = vec![None; rows.len()];
        for (i, (&s, &(w, win))) in r.scores.iter().zip(&weights).enumerate() {
            if i < probation || s < threshold {
                continue;
            }
            match win {
                None => {
                    fp_rows += 1;
                    fp_cost += w;
                }
                Some(k) => {
                    if firsts[k].is_none() {
                        firsts[k] = Some(i);
                    }
                }
            }
        }
        for (k, &(l, rr)) in rows.iter().enumerate() {
            if rr < probation {
                // No scorable row: NAB leaves such a window out altogether.
                continue;
            }
            let weight = firsts[k].map_or(-profile.fn_weight, |i| weights[i].0);
            windows_out.push(WindowOutcome {
                file: r.file.clone(),
                rows: (l, rr),
                first_detection: firsts[k],
                weight,
            });
        }
        fps.push((r.file.clone(), fp_rows, fp_cost));
    }
    (windows_out, fps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probation_matches_nab() {
        assert_eq!(probationary_rows(4032), 604);
        assert_eq!(probationary_rows(1127), 169);
        assert_eq!(probationary_rows(22695), 750);
        assert_eq!(probationary_rows(5000), 750);
        assert_eq!(probationary_rows(0), 0);
    }

    #[test]
    fn scaled_sigmoid_reference_points() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_2).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!((scaled_sigmoid(1.0) + 0.986_614_298_151_430_2).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn weights_follow_the_window_shape() {
        let p = PROFILES[0];
        let w = row_weights(20, &[(5, 9)], &p);
        assert_eq!(w[0], (-0.11, None));
        assert!(
            (w[5].0 - 1.0).abs() < 1e-12,
            "first row of a window earns A_TP"
        );
        assert!(w[6].0 < w[5].0 && w[9].0 < w[6].0);
        assert_eq!(w[9].1, Some(0));
        // Right after the window an FP costs nothing; later it approaches the full cost.
        assert_eq!(w[9].1, Some(0), "the last row still belongs to the window");
        assert!(w[10].0 < 0.0 && w[10].0 > -0.11);
        assert!((w[19].0 + 0.11).abs() < 0.01);
    }

    fn result(file: &str, scores: Vec<f64>) -> FileResult {
        let ts_ns = (0..scores.len() as i64)
            .map(|i| i * 300_000_000_000)
            .collect();
        FileResult {
            file: file.into(),
            ts_ns,
            scores,
        }
    }

    #[test]
    fn sweep_picks_the_best_threshold() {
        // 100 rows, probation 15, one window on rows 50..=59.
        let mut scores = vec![0.0; 100];
        scores[52] = 0.9; // TP
        scores[80] = 0.95; // FP that scores higher than the TP
        let r = result("a/b.csv", scores);
        let mut labels = Labels::new();
        labels.insert("a/b.csv".into(), vec![(r.ts_ns[50], r.ts_ns[59])]);
        let s = score_corpus(&[r], &labels).expect("scorable");
        // At 0.9 both detections count: TP weight at row 52 minus the FP cost at row 80.
        let tp = scaled_sigmoid(-(8.0 / 10.0)) / scaled_sigmoid(-1.0);
        let fp = 0.11 * scaled_sigmoid(21.0 / 9.0);
        assert!((s.standard.raw - (tp + fp)).abs() < 1e-12);
        assert_eq!(s.standard.threshold, 0.9);
        assert_eq!(s.standard.detected_windows, 1);
        assert!((s.standard.normalized - 100.0 * (tp + fp + 1.0) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn detecting_nothing_is_the_null_score() {
        let r = result("a/b.csv", vec![0.5; 100]);
        let mut labels = Labels::new();
        labels.insert("a/b.csv".into(), vec![(r.ts_ns[90], r.ts_ns[95])]);
        let mut fp_only = r.clone();
        fp_only.scores[90..=95].fill(0.0);
        let s = score_corpus(&[fp_only], &labels).expect("scorable");
        assert_eq!(s.standard.threshold, 1.1);
        assert_eq!(s.standard.normalized, 0.0);
        assert_eq!(s.reward_low_fn.normalized, 0.0);
    }

    #[test]
    fn out_of_range_scores_are_rejected() {
        let r = result("a/b.csv", vec![1.5; 10]);
        let mut labels = Labels::new();
        labels.insert("a/b.csv".into(), vec![]);
        assert!(matches!(
            score_corpus(&[r], &labels),
            Err(Error::Results { .. })
        ));
    }

    #[test]
    fn series_parse_rejects_garbage() {
        let p = Path::new("x.csv");
        let ok = parse_series(
            "timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,2\n",
            p,
        )
        .expect("valid");
        assert_eq!(ok.values, vec![1.5, 2.0]);
        assert_eq!(ok.ts_ns[1] - ok.ts_ns[0], 300_000_000_000);
        assert!(parse_series("timestamp,value\n2014-04-01,1\n", p).is_err());
        assert!(parse_series("timestamp,value\n2014-04-01 00:00:00,abc\n", p).is_err());
        assert!(parse_series("a,b\n", p).is_err());
    }
}
