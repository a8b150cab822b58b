//! Runs the default scorer over NAB and prints the three normalised profile scores.
//!
//! ```text
//! cargo run --release -p gpusiem-detect --example nab -- /work/shared/nab /tmp/nabout ['{"json":"config"}'] [--detail]
//! ```
//!
//! The optional JSON overrides `ScorerConfig` fields (for tuning); `--detail` prints every
//! window's outcome and each file's false positives at the standard profile's threshold.

use std::path::PathBuf;
use std::time::Instant;

use gpusiem_detect::nab;
use gpusiem_detect::score::{AnomalyScorer, ScorerConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let detail = args.iter().any(|a| a == "--detail");
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let nab_dir = PathBuf::from(
        positional
            .first()
            .map_or("/work/shared/nab", |s| s.as_str()),
    );
    let out_dir = positional
        .get(1)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let config: ScorerConfig = match positional.get(2) {
        Some(json) => serde_json::from_str(json)?,
        None => ScorerConfig::default(),
    };

    let labels = nab::read_labels(&nab_dir.join("labels/combined_windows.json"))?;
    let start = Instant::now();
    // `--results=DIR:DETECTOR` scores an existing results tree instead of running the scorer.
    let results = match args.iter().find_map(|a| a.strip_prefix("--results=")) {
        Some(spec) => {
            let (dir, detector) = spec.split_once(':').unwrap_or((spec, nab::DETECTOR_NAME));
            nab::read_results(std::path::Path::new(dir), detector, &labels)?
        }
        None => nab::run_corpus(&nab_dir.join("data"), out_dir.as_deref(), &config)?,
    };
    let elapsed = start.elapsed();
    let rows: usize = results.iter().map(|r| r.scores.len()).sum();
    let scores = nab::score_corpus(&results, &labels)?;

    for (p, s) in [
        ("standard", scores.standard),
        ("reward_low_FP_rate", scores.reward_low_fp),
        ("reward_low_FN_rate", scores.reward_low_fn),
    ] {
        println!(
            "{p:<20} {:>7.3}  raw {:>8.3}  threshold {:.6}  windows {}/{}  fp_rows {}",
            s.normalized, s.raw, s.threshold, s.detected_windows, s.windows, s.false_positive_rows
        );
    }
    let nonzero = results
        .iter()
        .flat_map(|r| &r.scores)
        .filter(|s| **s > 0.0)
        .count();
    let state = config.build()?.state_bytes();
    println!(
        "rows {rows}  nonzero {nonzero}  run+io {:.1} ms  ({:.0} ns/row incl. I/O)  state {state} B/series",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e9 / rows as f64,
    );

    // Scorer cost alone, on in-memory data.
    let series: Vec<nab::Series> = nab::list_data_files(&nab_dir.join("data"))?
        .iter()
        .map(|f| nab::read_series(&nab_dir.join("data").join(f)))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut sink = 0.0;
    for s in &series {
        let mut scorer = config.build_with_warmup(nab::probationary_rows(s.len()))?;
        for (&t, &v) in s.ts_ns.iter().zip(&s.values) {
            sink += scorer.update(t, v);
        }
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / rows as f64;
    println!("scorer alone: {ns:.1} ns/sample (checksum {sink:.3})");

    if detail {
        let p = nab::PROFILES[0];
        let (windows, fps) = nab::breakdown(&results, &labels, &p, scores.standard.threshold);
        for w in &windows {
            let pos = w.first_detection.map_or("MISS".to_string(), |i| {
                format!(
                    "{:+.2}",
                    (i - w.rows.0) as f64 / (w.rows.1 - w.rows.0 + 1) as f64
                )
            });
            println!(
                "W {:<55} {:>6}..{:<6} {pos:>6} {:+.3}",
                w.file, w.rows.0, w.rows.1, w.weight
            );
        }
        for (f, n, cost) in &fps {
            if *n > 0 {
                println!("FP {f:<55} {n:>4} {cost:+.3}");
            }
        }
    }
    Ok(())
}
