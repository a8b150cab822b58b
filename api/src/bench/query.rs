//! `gpusiem bench query`: the SIEM query suite over N findings stored as Parquet, against
//! DuckDB on the same files in the same run.
//!
//! ```text
//!  generate (seeded, hour by hour) ─► Store::append_table ─► flush (4 files an hour) ─► maintain_at (compaction)
//!    └─ DIR/tables/findings/dt=…/hour=…/part-….parquet: the files production has after compaction
//!  Store::open_read_only ─► QueryEngine (threads = query.threads = target_partitions) ─► 9 queries, cold + hot runs
//!  api/benches/duckdb_suite.py ─► DuckDB (SET threads) over the manifest's files ─► the same 9 queries
//!  ─► table: median ms each, ratio, geometric mean; row counts and checksums compared
//! ```
//!
//! The data goes through the real store, not a Parquet writer of our own, so that the files
//! have what production files have: hour partitions, `ts` order, row-group size, page
//! statistics and bloom filters from `store::partition`. It is generated once per
//! (N, row-group size) and reused while the marker file `DIR/bench-query.json` matches.
//! Time is fixed (the seven days ending 2025-11-24T00:00:00Z), so every run of the same N reads
//! the same bytes and figures from different runs compare.
//!
//! The store's documentation promises the append latency from here: it is measured on a
//! scratch store (small batches, each one fdatasync'ed), since that is what the pipeline does.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder, UInt8Builder,
};
use arrow::datatypes::DataType;
use gpusiem::query::{NamespaceScope, QueryConfig, QueryEngine};
use gpusiem::store::{FINDINGS, Store, StoreConfig};
use gpusiem_detect::Role;
use gpusiem_detect::finding::finding_id;
use serde::{Deserialize, Serialize};

/// Arguments of `gpusiem bench query`.
#[derive(clap::Args)]
pub struct Args {
    /// Findings to generate (rows of the findings table, spread over 7 days).
    #[arg(long, default_value_t = 10_000_000)]
    findings: usize,
    /// Data directory (a gpusiem data directory: `gpusiem query --data DIR` reads it). Data of
    /// an earlier run with the same --findings and --row-group-rows is reused.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Threads of each engine: gpusiem's query runtime workers and target partitions
    /// ([query] threads), DuckDB's `SET threads`.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Hot runs per query after the first (cold) one; the median and the minimum are reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Run DuckDB on the same files (default).
    #[arg(long, overrides_with = "no_duckdb")]
    duckdb: bool,
    /// Only run gpusiem's side.
    #[arg(long, overrides_with = "duckdb")]
    no_duckdb: bool,
    /// The DuckDB runner script.
    #[arg(long, default_value = DEFAULT_SCRIPT)]
    duckdb_script: PathBuf,
    /// Rows per Parquet row group ([store] row_group_rows) when generating.
    #[arg(long, default_value_t = StoreConfig::default().row_group_rows)]
    row_group_rows: usize,
    /// Generate the data again even if the directory holds matching data.
    #[arg(long)]
    regenerate: bool,
    /// Run only these queries (repeatable); default: the whole suite.
    #[arg(long = "query", value_name = "NAME")]
    only: Vec<String>,
    /// Also print gpusiem's EXPLAIN ANALYZE of each query (pruning and scan metrics).
    #[arg(long)]
    explain: bool,
}

const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-query");
const DEFAULT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_suite.py");

/// Bumped whenever the generator changes what it writes, so old data is not reused.
const GENERATOR_VERSION: u32 = 12;
const MARKER: &str = "bench-query.json";
const SEED: u64 = 0x6770_7573_6965_6d04;
/// End of the data (exclusive): 2025-11-24T00:00:00Z, a Monday; the data covers the 7 days
/// before it.
const T_END_SECS: i64 = 1_763_942_400;
const HOURS: u32 = 7 * 24;
const NS_PER_SEC: i64 = 1_000_000_000;
const NS_PER_HOUR: i64 = 3600 * NS_PER_SEC;
const NODES: usize = 1250;
const GPUS_PER_NODE: usize = 8;
const NAMESPACES: usize = 200;
const SLOTS: usize = 2000;
/// Appends (and flushes) per hour while generating: production flushes many times an hour and
/// compaction merges the hour's files into one sorted file; this exercises the same path.
const FLUSHES_PER_HOUR: usize = 4;
/// Share of the last hour taken by the injected cryptomining campaign (the z-score query's
/// anomaly and the LIKE query's hits).
const CAMPAIGN_SHARE: f64 = 0.04;
/// Targets of issue 4.
const GEOMEAN_TARGET: f64 = 1.5;
const LOOKUP_TARGET_MS: f64 = 10.0;

/// What the marker file records about the data in a directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    generator: u32,
    findings: usize,
    row_group_rows: usize,
    seed: u64,
    t_end_secs: i64,
    /// Seconds generation took (informational, not compared).
    #[serde(default)]
    generate_secs: f64,
}

impl Marker {
    fn new(findings: usize, row_group_rows: usize) -> Self {
        Marker {
            generator: GENERATOR_VERSION,
            findings,
            row_group_rows,
            seed: SEED,
            t_end_secs: T_END_SECS,
            generate_secs: 0.0,
        }
    }

    fn same_data(&self, other: &Marker) -> bool {
        Marker {
            generate_secs: 0.0,
            ..self.clone()
        } == Marker {
            generate_secs: 0.0,
            ..other.clone()
        }
    }
}

/// `gpusiem bench query`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.findings == 0 || args.threads == 0 || args.iters == 0 || args.row_group_rows == 0 {
        bail!("--findings, --threads, --iters and --row-group-rows must be positive");
    }
    let names: Vec<&str> = suite(&Targets::default()).iter().map(|q| q.name).collect();
    for name in &args.only {
        if !names.contains(&name.as_str()) {
            bail!(
                "--query {name}: no such query (the suite has {})",
                names.join(", ")
            );
        }
    }
    let dir = prepare_dir(&args).await?;
    let append = append_probe().await?;

    // The query side reads the directory as `gpusiem query` does: read-only, nothing changed.
    let store = Store::open_read_only(&dir)
        .await
        .with_context(|| format!("opening {}", dir.display()))?;
    let stats = store.table_stats().remove(FINDINGS).unwrap_or_default();
    let files: Vec<PathBuf> = store
        .snapshot(FINDINGS)?
        .files
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let layout = describe_layout(&files)?;
    let config = QueryConfig {
        threads: args.threads,
        timeout_secs: 600,
        ..QueryConfig::default()
    };
    let engine = QueryEngine::new(store, config);
    let total = engine
        .sql_as_admin("SELECT count(*) FROM findings", &NamespaceScope::all())
        .await?;
    let counted = first_i64(&total).unwrap_or(-1);
    if counted != i64::try_from(args.findings).unwrap_or(i64::MAX) {
        bail!(
            "{} holds {counted} findings, not {}; run again with --regenerate",
            dir.display(),
            args.findings
        );
    }
    let targets = Targets::find(&engine).await?;
    let suite: Vec<Query> = suite(&targets)
        .into_iter()
        .filter(|q| args.only.is_empty() || args.only.iter().any(|n| n == q.name))
        .collect();

    println!(
        "gpusiem bench query: {} findings in {}",
        args.findings,
        dir.display()
    );
    println!(
        "  layout: {} files, {} row groups, {:.1} MiB, {} rows in the WAL tail; row groups of up to {} rows",
        stats.files,
        layout.row_groups,
        stats.file_bytes as f64 / (1 << 20) as f64,
        stats.tail_rows,
        layout.max_row_group_rows
    );
    println!(
        "  store append latency (scratch store, {} appends of {} findings, fdatasync each): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        append.len(),
        PROBE_BATCH,
        percentile(&append, 0.5),
        percentile(&append, 0.99),
        percentile(&append, 1.0)
    );
    println!(
        "  threads: gpusiem {0} (query runtime workers = DataFusion target_partitions = {0}), DuckDB SET threads = {0}; {1} hot runs per query",
        args.threads, args.iters
    );

    let mut ours = BTreeMap::new();
    for q in &suite {
        eprintln!("gpusiem: {} …", q.name);
        ours.insert(q.name, time_ours(&engine, &q.datafusion, args.iters).await);
    }

    let duck = if args.no_duckdb {
        None
    } else {
        match run_duckdb(&args, &dir, &files, &suite) {
            Ok(d) => Some(d),
            Err(e) => {
                println!("\nDuckDB side failed: {e:#}");
                None
            }
        }
    };

    report(&suite, &ours, duck.as_ref());

    if args.explain {
        for q in &suite {
            println!("\n== EXPLAIN ANALYZE {} ==", q.name);
            match engine
                .sql_as_admin(
                    &format!("EXPLAIN ANALYZE {}", q.datafusion),
                    &NamespaceScope::all(),
                )
                .await
            {
                Ok(out) => {
                    // The plan column, as text: the table form pads every line to the longest.
                    for b in &out.batches {
                        let Ok(plan) =
                            arrow::compute::cast(b.column(b.num_columns() - 1), &DataType::Utf8)
                        else {
                            continue;
                        };
                        if let Some(plan) =
                            plan.as_any().downcast_ref::<arrow::array::StringArray>()
                        {
                            plan.iter().flatten().for_each(|line| println!("{line}"));
                        }
                    }
                }
                Err(e) => println!("error: {e}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Data directory

/// Makes sure `args.dir` holds the data asked for: reuses it, or (re)generates it.
async fn prepare_dir(args: &Args) -> anyhow::Result<PathBuf> {
    let dir = &args.dir;
    let want = Marker::new(args.findings, args.row_group_rows);
    let marker_path = dir.join(MARKER);
    let existing: Option<Marker> = match std::fs::read(&marker_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(_) => None,
    };
    if !args.regenerate && existing.as_ref().is_some_and(|m| m.same_data(&want)) {
        eprintln!(
            "reusing the data in {} (same findings and row-group size; --regenerate to rebuild)",
            dir.display()
        );
        return dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()));
    }
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some();
        if non_empty && !marker_path.exists() {
            bail!(
                "{} is not empty and holds no {MARKER}: it is not a directory this benchmark made, so it is left alone; \
                 pick another --dir or empty it",
                dir.display()
            );
        }
        // Only what the benchmark wrote there: the store's tables and WAL, and the marker.
        for sub in ["tables", "wal"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        for f in [MARKER, "store.lock", "duckdb-suite.json"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    generate(dir, args.findings, args.row_group_rows).await?;
    let marker = Marker {
        generate_secs: started.elapsed().as_secs_f64(),
        ..want
    };
    std::fs::write(&marker_path, serde_json::to_vec_pretty(&marker)?)
        .with_context(|| format!("writing {}", marker_path.display()))?;
    eprintln!(
        "generated {} findings in {:.1} s",
        args.findings, marker.generate_secs
    );
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// Store settings while generating: flushes and compaction happen when the generator says, not
/// on the background task's clock, and nothing expires (the data is in the past).
fn generation_store_config(row_group_rows: usize) -> StoreConfig {
    StoreConfig {
        flush_interval_secs: 24 * 3600,
        compaction_interval_secs: 365 * 24 * 3600,
        retention_hours: 0,
        max_bytes: 0,
        delete_grace_secs: 0,
        row_group_rows,
        ..StoreConfig::default()
    }
}

async fn generate(dir: &Path, n: usize, row_group_rows: usize) -> anyhow::Result<()> {
    let store = Store::open(dir, &generation_store_config(row_group_rows))
        .await
        .with_context(|| format!("opening {} for writing", dir.display()))?;
    let world = Arc::new(World::new());
    let quotas = hour_quotas(n);
    let started = Instant::now();
    for (hour, &quota) in quotas.iter().enumerate() {
        let hour = u32::try_from(hour).unwrap_or(u32::MAX);
        let w = world.clone();
        let batch = tokio::task::spawn_blocking(move || w.hour_batch(hour, quota))
            .await
            .context("generator task")??;
        let step = batch.num_rows().div_ceil(FLUSHES_PER_HOUR).max(1);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = step.min(batch.num_rows() - offset);
            store
                .append_table(FINDINGS, &batch.slice(offset, len))
                .await?;
            store.flush().await?;
            offset += len;
        }
        if hour % 24 == 23 {
            eprintln!(
                "generated day {} of 7 ({:.0} s)",
                hour / 24 + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!("compacting …");
    // An hour after the data ends: every hour is closed, so each hour's files merge into one.
    store.maintain_at(T_END_SECS + 3600).await?;
    store.close().await?;
    Ok(())
}

/// Findings per hour: a daily cycle (busiest mid-afternoon UTC), quieter weekends, adding up
/// to `n` exactly.
fn hour_quotas(n: usize) -> Vec<usize> {
    let weights: Vec<f64> = (0..HOURS)
        .map(|h| {
            let hour_of_day = f64::from(h % 24);
            let weekend = if h / 24 >= 5 { 0.7 } else { 1.0 };
            (1.0 + 0.35 * ((hour_of_day - 8.0) / 24.0 * TAU).sin()) * weekend
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut out = Vec::with_capacity(weights.len());
    let mut cum = 0.0;
    let mut given = 0usize;
    for w in weights {
        cum += w;
        let upto = ((n as f64) * cum / total).round() as usize;
        let upto = upto.min(n);
        out.push(upto - given);
        given = upto;
    }
    if let Some(last) = out.last_mut() {
        *last += n - given;
    }
    out
}

/// Layout facts read from the files' footers.
struct Layout {
    row_groups: usize,
    max_row_group_rows: i64,
}

fn describe_layout(files: &[PathBuf]) -> anyhow::Result<Layout> {
    let mut l = Layout {
        row_groups: 0,
        max_row_group_rows: 0,
    };
    for f in files {
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
            .with_context(|| format!("reading {}", f.display()))?;
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        l.row_groups += meta.num_row_groups();
        for rg in meta.row_groups() {
            l.max_row_group_rows = l.max_row_group_rows.max(rg.num_rows());
        }
    }
    Ok(l)
}

// ---------------------------------------------------------------------------------------------
// Append latency

const PROBE_APPENDS: usize = 200;
const PROBE_BATCH: usize = 50;

/// Latency (ms) of appending small finding batches to a fresh store: one WAL frame and one
/// fdatasync each, as the pipeline appends.
async fn append_probe() -> anyhow::Result<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("gpusiem-bench-append-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let world = World::new();
    // Separate batches, as the pipeline hands over: a slice of one big batch would pin all of
    // it in the store's tail (its conform keeps a single input's buffers).
    let batches = (0..PROBE_APPENDS)
        .map(|i| world.hour_batch(u32::try_from(i).unwrap_or(0) % HOURS, PROBE_BATCH))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let result = async {
        let store = Store::open(
            &dir,
            &generation_store_config(StoreConfig::default().row_group_rows),
        )
        .await?;
        let mut ms = Vec::with_capacity(PROBE_APPENDS);
        for b in &batches {
            let t = Instant::now();
            store.append_table(FINDINGS, b).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        store.close().await?;
        Ok::<_, anyhow::Error>(ms)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut ms = result?;
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------------------------
// The generator

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A stateless hash of two numbers (entity names, pod generations).
fn mix(a: u64, b: u64) -> u64 {
    Rng(a.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ b.rotate_left(32) ^ SEED).next()
}

/// Weighted choice over indices, by cumulative weights.
struct Picker {
    cum: Vec<f64>,
    items: Vec<usize>,
}

impl Picker {
    fn new(weighted: impl IntoIterator<Item = (usize, f64)>) -> Self {
        let mut cum = Vec::new();
        let mut items = Vec::new();
        let mut total = 0.0;
        for (i, w) in weighted {
            total += w;
            cum.push(total);
            items.push(i);
        }
        Picker { cum, items }
    }

    /// Zipf over `items` in the order given (the first is the most frequent).
    fn zipf(items: &[usize], s: f64) -> Self {
        Picker::new(
            items
                .iter()
                .enumerate()
                .map(|(rank, &i)| (i, 1.0 / ((rank + 1) as f64).powf(s))),
        )
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.cum.last().copied().unwrap_or(0.0);
        let x = rng.unit() * total;
        let i = self
            .cum
            .partition_point(|&c| c <= x)
            .min(self.items.len() - 1);
        self.items[i]
    }
}

/// A deterministic permutation of `0..n`.
fn shuffled(n: usize, salt: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = Rng(SEED ^ salt);
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
    v
}

fn uuid(h: u64) -> String {
    let g = Rng(h).next();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        0x8000 | (g >> 48) & 0x3fff,
        g & 0xffff_ffff_ffff
    )
}

/// Five characters of a Kubernetes pod-name suffix.
fn suffix(mut h: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        s.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    s
}

/// Where a detector's findings come from, which decides the entity columns it fills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// DCGM series of a GPU held by a pod.
    Gpu,
    /// A GPU's own health (XID, ECC, thermal): node and GPU, no pod.
    GpuHealth,
    /// A GPU busy with no pod holding it.
    GpuUnallocated,
    /// Falco: a process in a container.
    Falco,
    /// Kubernetes audit about a pod.
    Audit,
    /// Kubernetes audit about the cluster: no namespace, pod or node.
    AuditCluster,
    /// Correlation across streams on a GPU pod.
    Correlation,
    /// Cryptomining: evidence names a stratum pool.
    Miner,
}

struct Detector {
    name: &'static str,
    kind: Kind,
    weight: f64,
    /// Weights of info, low, medium, high, critical.
    severity: [f64; 5],
    /// Mean emissions of an episode.
    revisions: f64,
    mitre: &'static [&'static str],
    /// DCGM field or Falco/audit subject the evidence quotes.
    subject: &'static str,
}

const fn det(
    name: &'static str,
    kind: Kind,
    weight: f64,
    severity: [f64; 5],
    revisions: f64,
    mitre: &'static [&'static str],
    subject: &'static str,
) -> Detector {
    Detector {
        name,
        kind,
        weight,
        severity,
        revisions,
        mitre,
        subject,
    }
}

/// Forty detectors and rules: the built-in ones (detect/src/detectors, detect/rules) and the
/// kind a SOC adds. Weights make a few chatty ones produce most findings, as in practice.
#[rustfmt::skip]
const DETECTORS: &[Detector] = &[
    det("gpu_memory_spike", Kind::Gpu, 9.0, [0.30, 0.35, 0.20, 0.12, 0.03], 4.0, &["T1496"], "DCGM_FI_DEV_FB_USED"),
    det("unallocated_gpu_use", Kind::GpuUnallocated, 2.0, [0.0, 0.20, 0.40, 0.30, 0.10], 3.0, &["T1496"], "DCGM_FI_DEV_GPU_UTIL"),
    det("miner_fingerprint", Kind::Miner, 0.04, [0.0, 0.0, 0.10, 0.50, 0.40], 3.0, &["T1496"], "DCGM_FI_PROF_PIPE_INT_ACTIVE"),
    det("gpu_util_anomaly", Kind::Gpu, 8.0, [0.55, 0.30, 0.12, 0.03, 0.0], 4.0, &["T1496"], "DCGM_FI_DEV_GPU_UTIL"),
    det("gpu_power_anomaly", Kind::Gpu, 5.0, [0.55, 0.30, 0.12, 0.03, 0.0], 3.0, &["T1496"], "DCGM_FI_DEV_POWER_USAGE"),
    det("gpu_sm_clock_drop", Kind::Gpu, 3.0, [0.70, 0.25, 0.05, 0.0, 0.0], 2.5, &[], "DCGM_FI_DEV_SM_CLOCK"),
    det("gpu_memory_leak", Kind::Gpu, 2.0, [0.40, 0.40, 0.18, 0.02, 0.0], 5.0, &[], "DCGM_FI_DEV_FB_USED"),
    det("gpu_pcie_rx_spike", Kind::Gpu, 2.0, [0.50, 0.30, 0.15, 0.05, 0.0], 2.0, &["T1048"], "DCGM_FI_PROF_PCIE_RX_BYTES"),
    det("gpu_nvlink_traffic_spike", Kind::Gpu, 1.5, [0.50, 0.30, 0.15, 0.05, 0.0], 2.0, &["T1048"], "DCGM_FI_PROF_NVLINK_TX_BYTES"),
    det("gpu_idle_allocation", Kind::Gpu, 6.0, [0.85, 0.15, 0.0, 0.0, 0.0], 6.0, &[], "DCGM_FI_DEV_GPU_UTIL"),
    det("gpu_temperature_high", Kind::GpuHealth, 4.0, [0.40, 0.40, 0.15, 0.05, 0.0], 4.0, &[], "DCGM_FI_DEV_GPU_TEMP"),
    det("gpu_xid_error", Kind::GpuHealth, 3.0, [0.10, 0.40, 0.35, 0.15, 0.0], 2.0, &[], "DCGM_FI_DEV_XID_ERRORS"),
    det("gpu_ecc_dbe", Kind::GpuHealth, 0.5, [0.0, 0.0, 0.30, 0.50, 0.20], 1.5, &[], "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    det("gpu_ecc_sbe_rate", Kind::GpuHealth, 2.0, [0.50, 0.40, 0.10, 0.0, 0.0], 3.0, &[], "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"),
    det("gpu_thermal_throttle", Kind::GpuHealth, 3.0, [0.50, 0.35, 0.15, 0.0, 0.0], 3.0, &[], "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"),
    det("gpu_row_remap_pending", Kind::GpuHealth, 0.3, [0.0, 0.30, 0.50, 0.20, 0.0], 1.5, &[], "DCGM_FI_DEV_ROW_REMAP_PENDING"),
    det("gpu_fallen_off_bus", Kind::GpuHealth, 0.05, [0.0, 0.0, 0.0, 0.40, 0.60], 1.0, &[], "DCGM_FI_DEV_XID_ERRORS"),
    det("shell_or_new_process_in_container", Kind::Falco, 10.0, [0.40, 0.45, 0.12, 0.03, 0.0], 1.5, &["T1059"], "Terminal shell in container"),
    det("new_binary_in_inference_container", Kind::Falco, 3.0, [0.0, 0.40, 0.40, 0.20, 0.0], 1.3, &["T1105"], "Drop and execute new binary in container"),
    det("gpu_device_opened", Kind::Falco, 6.0, [0.90, 0.10, 0.0, 0.0, 0.0], 1.2, &["T1496"], "GPU device opened"),
    det("gpu_device_opened_by_unexpected_process", Kind::Falco, 1.5, [0.0, 0.30, 0.50, 0.20, 0.0], 1.5, &["T1496"], "GPU device opened by unexpected process"),
    det("gpu_reachable_without_gpu_request", Kind::Falco, 0.8, [0.0, 0.20, 0.50, 0.30, 0.0], 1.5, &["T1611"], "GPU device reachable without nvidia.com/gpu"),
    det("miner_pool_connection", Kind::Miner, 0.04, [0.0, 0.0, 0.0, 0.50, 0.50], 2.0, &["T1496", "T1071"], "Detect outbound connections to common miner pool ports"),
    det("sensitive_file_read_in_container", Kind::Falco, 2.0, [0.20, 0.40, 0.30, 0.10, 0.0], 1.3, &["T1552"], "Read sensitive file untrusted"),
    det("outbound_connection_unusual_port", Kind::Falco, 4.0, [0.50, 0.35, 0.12, 0.03, 0.0], 1.5, &["T1571"], "Unexpected outbound connection destination"),
    det("package_manager_in_container", Kind::Falco, 3.0, [0.30, 0.50, 0.20, 0.0, 0.0], 1.2, &["T1072"], "Launch Package Management Process in Container"),
    det("write_below_etc", Kind::Falco, 1.0, [0.0, 0.40, 0.40, 0.20, 0.0], 1.2, &["T1543"], "Write below etc"),
    det("ptrace_attach", Kind::Falco, 0.3, [0.0, 0.0, 0.30, 0.50, 0.20], 1.2, &["T1055"], "PTRACE attached to process"),
    det("kubectl_in_container", Kind::Falco, 0.5, [0.0, 0.30, 0.50, 0.20, 0.0], 1.2, &["T1609"], "Kubernetes client tool launched in container"),
    det("exec_into_pod", Kind::Audit, 4.0, [0.30, 0.50, 0.20, 0.0, 0.0], 1.2, &["T1609"], "pods/exec"),
    det("exec_into_gpu_pod", Kind::Audit, 1.5, [0.0, 0.30, 0.50, 0.20, 0.0], 1.2, &["T1609"], "pods/exec"),
    det("secrets_read_by_inference_service_account", Kind::Audit, 0.8, [0.0, 0.20, 0.50, 0.30, 0.0], 1.3, &["T1552.007"], "secrets"),
    det("privileged_pod_created", Kind::Audit, 0.8, [0.0, 0.20, 0.50, 0.30, 0.0], 1.0, &["T1610", "T1611"], "pods"),
    det("hostpath_mount_created", Kind::Audit, 0.6, [0.0, 0.30, 0.50, 0.20, 0.0], 1.0, &["T1611"], "pods"),
    det("service_account_token_created", Kind::Audit, 1.0, [0.50, 0.40, 0.10, 0.0, 0.0], 1.0, &["T1528"], "serviceaccounts/token"),
    det("forbidden_api_burst", Kind::Audit, 2.0, [0.20, 0.50, 0.25, 0.05, 0.0], 2.0, &["T1613"], "selfsubjectrulesreviews"),
    det("networkpolicy_deleted_in_gpu_namespace", Kind::Audit, 0.1, [0.0, 0.0, 0.40, 0.60, 0.0], 1.0, &["T1562"], "networkpolicies"),
    det("cluster_admin_binding", Kind::AuditCluster, 0.1, [0.0, 0.0, 0.20, 0.50, 0.30], 1.0, &["T1078", "T1098"], "clusterrolebindings"),
    det("anonymous_api_request", Kind::AuditCluster, 0.5, [0.30, 0.40, 0.30, 0.0, 0.0], 1.5, &["T1078"], "nodes"),
    det("gpu_misuse_finding", Kind::Correlation, 0.3, [0.0, 0.0, 0.30, 0.50, 0.20], 2.0, &["T1496"], "gpu_memory_spike+shell_or_new_process_in_container"),
    det("gpu_spike_after_exec", Kind::Correlation, 0.4, [0.0, 0.20, 0.40, 0.30, 0.10], 2.0, &["T1609", "T1496"], "exec_into_gpu_pod+gpu_memory_spike"),
    det("compromised_gpu_container", Kind::Miner, 0.02, [0.0, 0.0, 0.0, 0.30, 0.70], 2.0, &["T1496", "T1059"], "miner_pool_connection+gpu_memory_spike"),
];

const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];
const CLUSTERS: [&str; 3] = ["prod-gpu-use1", "prod-gpu-euw4", "research-gpu-usc1"];
const NS_PREFIXES: [&str; 8] = [
    "ml",
    "research",
    "inference",
    "team",
    "batch",
    "notebooks",
    "data",
    "platform",
];
const NS_WORDS: [&str; 25] = [
    "vision",
    "speech",
    "search",
    "ads",
    "ranking",
    "nlp",
    "robotics",
    "fraud",
    "recsys",
    "genai",
    "llm",
    "embeddings",
    "safety",
    "maps",
    "pricing",
    "forecast",
    "payments",
    "support",
    "risk",
    "growth",
    "infra",
    "eval",
    "labeling",
    "ocr",
    "translate",
];
const MODELS: [&str; 12] = [
    "llama3-70b",
    "llama3-8b",
    "mixtral-8x7b",
    "whisper-large",
    "sdxl",
    "bert-base",
    "t5-xl",
    "clip-vit",
    "resnet152",
    "gpt-j",
    "qwen2-72b",
    "yolov8",
];
const USERS: [&str; 10] = [
    "alice", "bob", "carol", "dmitri", "erin", "farah", "gustavo", "hiro", "ines", "jamal",
];
const CMDLINES: [&str; 10] = [
    "bash",
    "sh -c curl -s http://10.12.0.7:8080/healthz",
    "python3 -m pip install --user transformers==4.44.0",
    "apt-get install -y netcat-openbsd",
    "cat /var/run/secrets/kubernetes.io/serviceaccount/token",
    "nvidia-smi -q -d MEMORY",
    "kubectl get pods -A -o wide",
    "nc -lvp 4444",
    "python3 serve.py --port 8000 --model /models/current",
    "wget -q -O /tmp/model.bin http://artifacts.internal/model.bin",
];
const MINER_CMDLINES: [&str; 3] = [
    "/tmp/.x/xmrig --url stratum+tcp://pool.supportxmr.example:3333 --donate-level 1 --cuda",
    "./t-rex -a kawpow -o stratum+tcp://rvn.2miners.example:6060 -u RVNwallet.worker",
    "/dev/shm/lolminer --algo ETCHASH --pool stratum+tcp://etc.f2pool.example:8118",
];

/// A workload: the pods of one controller, one after another (each generation a new pod).
struct Slot {
    namespace: usize,
    /// Pod name up to the per-pod suffix (`llama3-8b-serve-7c9f8b6d4d`).
    prefix: String,
    role: Role,
    role_reason: &'static str,
    container: &'static str,
    gpu: bool,
    /// Hours a pod of this workload lives.
    lifetime: u32,
    /// Phase of the pod turnover.
    offset: u32,
}

/// One pod of a slot, during one generation.
struct Pod {
    name: String,
    uid: String,
    node: usize,
    gpu: Option<usize>,
}

struct World {
    nodes: Vec<String>,
    gpus: Vec<String>,
    namespaces: Vec<String>,
    slots: Vec<Slot>,
    /// Noisy workloads make most findings.
    any_slot: Picker,
    gpu_slot: Picker,
    /// Faulty or misused GPUs repeat.
    gpu_pick: Picker,
    detector: Picker,
}

impl World {
    fn new() -> World {
        let nodes: Vec<String> = (0..NODES)
            .map(|i| {
                let pool = ["h100", "a100", "l40s"][i * 3 / NODES];
                format!("gke-gpu-{pool}-{:04}-{}", i, suffix(mix(1, i as u64), 4))
            })
            .collect();
        let gpus: Vec<String> = (0..NODES * GPUS_PER_NODE)
            .map(|i| format!("GPU-{}", uuid(mix(2, i as u64))))
            .collect();
        let mut rng = Rng(SEED ^ 3);
        let mut namespaces = Vec::with_capacity(NAMESPACES);
        while namespaces.len() < NAMESPACES {
            let ns = format!("{}-{}", rng.pick(&NS_PREFIXES), rng.pick(&NS_WORDS));
            let ns = if namespaces.contains(&ns) {
                format!("{ns}-{}", namespaces.len())
            } else {
                ns
            };
            namespaces.push(ns);
        }
        let ns_pick = Picker::zipf(&shuffled(NAMESPACES, 4), 0.9);
        let slots: Vec<Slot> = (0..SLOTS)
            .map(|i| {
                let namespace = ns_pick.pick(&mut rng);
                let (role, reason, container, base, lifetime) = match rng.below(100) {
                    0..30 => (
                        Role::Serving,
                        "owner Deployment matches serving matcher",
                        "vllm",
                        format!("{}-serve", rng.pick(&MODELS)),
                        48 + rng.below(120),
                    ),
                    30..50 => (
                        Role::Training,
                        "owner PyTorchJob",
                        "trainer",
                        format!("{}-train", rng.pick(&MODELS)),
                        6 + rng.below(66),
                    ),
                    50..65 => (
                        Role::Notebook,
                        "label app=jupyter",
                        "notebook",
                        format!("jupyter-{}", rng.pick(&USERS)),
                        2 + rng.below(22),
                    ),
                    65..80 => (
                        Role::Batch,
                        "owner Job",
                        "worker",
                        format!("embed-batch-{}", rng.below(50)),
                        1 + rng.below(6),
                    ),
                    80..97 => (
                        Role::NonGpu,
                        "no nvidia.com/gpu request",
                        "app",
                        [
                            "api-gateway",
                            "feature-store",
                            "redis",
                            "web-frontend",
                            "etl",
                        ][rng.below(5)]
                        .to_string(),
                        24 + rng.below(144),
                    ),
                    _ => (
                        Role::Unknown,
                        "no matcher applies",
                        "main",
                        format!("job-{}", rng.below(1000)),
                        4 + rng.below(48),
                    ),
                };
                Slot {
                    namespace,
                    prefix: format!("{base}-{}", suffix(mix(5, i as u64), 10)),
                    role,
                    role_reason: reason,
                    container,
                    gpu: !matches!(role, Role::NonGpu),
                    lifetime: u32::try_from(lifetime).unwrap_or(24),
                    offset: u32::try_from(rng.below(lifetime)).unwrap_or(0),
                }
            })
            .collect();
        let order = shuffled(SLOTS, 6);
        let any_slot = Picker::zipf(&order, 0.8);
        let gpu_order: Vec<usize> = order.iter().copied().filter(|&s| slots[s].gpu).collect();
        let gpu_slot = Picker::zipf(&gpu_order, 0.8);
        let gpu_pick = Picker::zipf(&shuffled(NODES * GPUS_PER_NODE, 7), 0.9);
        let detector = Picker::new(DETECTORS.iter().enumerate().map(|(i, d)| (i, d.weight)));
        World {
            nodes,
            gpus,
            namespaces,
            slots,
            any_slot,
            gpu_slot,
            gpu_pick,
            detector,
        }
    }

    fn pod(&self, slot: usize, hour: u32) -> Pod {
        let s = &self.slots[slot];
        let generation = (hour + s.offset) / s.lifetime;
        let h = mix(slot as u64 + 1000, u64::from(generation));
        let node = (h >> 8) as usize % NODES;
        Pod {
            name: format!("{}-{}", s.prefix, suffix(h, 5)),
            uid: uuid(h ^ 0x55),
            node,
            gpu: s
                .gpu
                .then(|| node * GPUS_PER_NODE + (h >> 40) as usize % GPUS_PER_NODE),
        }
    }

    /// Every finding raised during `hour` (0 = the first of the 7 days), `quota` rows.
    fn hour_batch(&self, hour: u32, quota: usize) -> anyhow::Result<RecordBatch> {
        let mut rng = Rng(mix(SEED, u64::from(hour) + 77));
        let pods: Vec<Pod> = (0..SLOTS).map(|s| self.pod(s, hour)).collect();
        let mut rows = Rows::with_capacity(quota);
        let hour_start =
            (T_END_SECS - i64::from(HOURS) * 3600) * NS_PER_SEC + i64::from(hour) * NS_PER_HOUR;
        // The campaign: a few GPU pods start mining in the last hour.
        let campaign = if hour == HOURS - 1 {
            (quota as f64 * CAMPAIGN_SHARE) as usize
        } else {
            0
        };
        let campaign_slots: Vec<usize> = Targets::campaign_slots(self);
        while rows.len < quota - campaign {
            let d = &DETECTORS[self.detector.pick(&mut rng)];
            let start = hour_start + (rng.unit() * NS_PER_HOUR as f64) as i64;
            let max = quota - campaign - rows.len;
            self.episode(&mut rng, &mut rows, d, None, &pods, start, max);
        }
        let miners = [
            "miner_fingerprint",
            "miner_pool_connection",
            "compromised_gpu_container",
            "gpu_memory_spike",
            "shell_or_new_process_in_container",
        ];
        let mut k = 0;
        while rows.len < quota {
            let Some(d) = DETECTORS
                .iter()
                .find(|d| d.name == miners[k % miners.len()])
            else {
                break;
            };
            let slot = campaign_slots[k % campaign_slots.len()];
            // Late in the hour: the campaign started 40 minutes ago.
            let start =
                hour_start + NS_PER_HOUR / 3 + (rng.unit() * (NS_PER_HOUR * 2 / 3) as f64) as i64;
            let max = quota - rows.len;
            self.episode(&mut rng, &mut rows, d, Some(slot), &pods, start, max);
            k += 1;
        }
        rows.finish()
    }

    /// One episode: 1 or more emissions (revisions) of the same finding id.
    #[allow(clippy::too_many_arguments)]
    fn episode(
        &self,
        rng: &mut Rng,
        rows: &mut Rows,
        d: &Detector,
        slot: Option<usize>,
        pods: &[Pod],
        start: i64,
        max: usize,
    ) {
        let cluster_of = |node: usize| CLUSTERS[node * CLUSTERS.len() / NODES];
        let miner_evidence = matches!(d.kind, Kind::Miner) || slot.is_some();
        // Entity columns.
        type Entities<'p> = (
            Option<usize>,
            Option<usize>,
            Option<&'p Pod>,
            Option<usize>,
            Option<usize>,
        );
        let (node, ns, pod, gpu, slot_idx): Entities<'_> = match d.kind {
            _ if slot.is_some() => {
                let s = slot.unwrap_or(0);
                let p = &pods[s];
                (
                    Some(p.node),
                    Some(self.slots[s].namespace),
                    Some(p),
                    p.gpu,
                    Some(s),
                )
            }
            Kind::Gpu | Kind::Correlation | Kind::Miner => {
                let s = self.gpu_slot.pick(rng);
                let p = &pods[s];
                (
                    Some(p.node),
                    Some(self.slots[s].namespace),
                    Some(p),
                    p.gpu,
                    Some(s),
                )
            }
            Kind::GpuHealth | Kind::GpuUnallocated => {
                let g = self.gpu_pick.pick(rng);
                (Some(g / GPUS_PER_NODE), None, None, Some(g), None)
            }
            Kind::Falco | Kind::Audit => {
                let s = self.any_slot.pick(rng);
                let p = &pods[s];
                // The audit log does not name the node; the inventory does once the pod is bound.
                let node = if d.kind == Kind::Audit && rng.chance(0.3) {
                    None
                } else {
                    Some(p.node)
                };
                (node, Some(self.slots[s].namespace), Some(p), p.gpu, Some(s))
            }
            Kind::AuditCluster => (None, None, None, None, None),
        };
        let slot_ref = slot_idx.map(|s| &self.slots[s]);
        let cluster = node.map_or(CLUSTERS[0], cluster_of);
        let node_name = node.map(|n| self.nodes[n].as_str());
        let ns_name = ns.map(|n| self.namespaces[n].as_str());
        let gpu_name = gpu.map(|g| self.gpus[g].as_str());
        let pod_name = pod.map(|p| p.name.as_str());
        let (role, role_reason) = match (slot_ref, d.kind) {
            (Some(s), _) => (s.role, Some(s.role_reason)),
            (None, Kind::GpuUnallocated) => (Role::Unknown, Some("no pod holds the GPU")),
            (None, _) => (Role::Unknown, None),
        };
        let entity_key = format!(
            "{}/{}/{}",
            gpu_name.unwrap_or(""),
            ns_name.unwrap_or(""),
            pod_name.unwrap_or(node_name.unwrap_or(""))
        );
        let id = finding_id(d.name, &entity_key, start);
        let severity = pick_weighted(rng, &d.severity);
        let cmd = if miner_evidence {
            *rng.pick(&MINER_CMDLINES)
        } else {
            *rng.pick(&CMDLINES)
        };
        let title = d.name.replace('_', " ");
        let where_ = match (ns_name, pod_name) {
            (Some(ns), Some(p)) => format!("{ns}/{p}"),
            _ => node_name.unwrap_or("the cluster").to_string(),
        };
        let (baseline, peak) = (rng.range(500.0, 30_000.0), rng.range(30_000.0, 80_000.0));
        let summary = match d.kind {
            Kind::Gpu | Kind::GpuHealth | Kind::GpuUnallocated => {
                format!(
                    "{title} on {} ({}) by {where_}: {} {peak:.0} vs baseline {baseline:.0}",
                    gpu_name.unwrap_or("?"),
                    node_name.unwrap_or("?"),
                    d.subject
                )
            }
            Kind::Falco | Kind::Miner => format!(
                "{title}: {cmd} in {where_} ({})",
                slot_ref.map_or("?", |s| s.container)
            ),
            Kind::Audit | Kind::AuditCluster => format!(
                "{title}: {} {} in {where_}",
                audit_user(ns_name, rng),
                d.subject
            ),
            Kind::Correlation => format!(
                "{title}: {} on {} in {where_}",
                d.subject,
                gpu_name.unwrap_or("?")
            ),
        };
        let mean = d.revisions.max(1.0);
        let mut revisions = 1;
        while revisions < 20 && rng.chance(1.0 - 1.0 / mean) {
            revisions += 1;
        }
        let revisions = revisions.min(max.max(1));
        let mut last_ts = start;
        let mut severity = severity;
        for rev in 0..revisions {
            if rev > 0 {
                last_ts += (rng.range(15.0, 300.0) * NS_PER_SEC as f64) as i64;
                if rng.chance(0.1) {
                    severity = (severity + 1).min(4);
                }
            }
            let resolved = rev + 1 == revisions && revisions > 1 && rng.chance(0.6);
            let value = peak * rng.range(0.9, 1.1);
            let evidence = match d.kind {
                Kind::Gpu | Kind::GpuHealth | Kind::GpuUnallocated => format!(
                    r#"{{"metric":"{}","gpu":"{}","value":{value:.1},"baseline_mean":{baseline:.1},"baseline_stddev":{:.1},"z":{:.2},"window_secs":300,"role":"{}"}}"#,
                    d.subject,
                    gpu_name.unwrap_or(""),
                    baseline * 0.1,
                    (value - baseline) / (baseline * 0.1),
                    role.as_str()
                ),
                Kind::Falco | Kind::Miner => format!(
                    r#"{{"rule":"{}","proc.cmdline":"{cmd}","proc.exepath":"{}","user.name":"root","container.image":"registry.internal/{}:{}","fd.sport":{}}}"#,
                    d.subject,
                    cmd.split(' ').next().unwrap_or(""),
                    slot_ref.map_or("unknown", |s| s.container),
                    rng.below(40),
                    rng.below(65_536)
                ),
                Kind::Audit | Kind::AuditCluster => format!(
                    r#"{{"verb":"{}","resource":"{}","user":"{}","source_ips":["10.{}.{}.{}"],"response_code":{},"user_agent":"kubectl/v1.30.2"}}"#,
                    ["create", "get", "delete", "patch"][rng.below(4)],
                    d.subject,
                    audit_user(ns_name, rng),
                    rng.below(256),
                    rng.below(256),
                    rng.below(256),
                    [200, 201, 101, 403][rng.below(4)]
                ),
                Kind::Correlation => format!(
                    r#"{{"rules":"{}","fb_used_mib":{value:.0},"baseline_mib":{baseline:.0},"falco_rule":"Terminal shell in container","window_secs":600}}"#,
                    d.subject
                ),
            };
            let mut event_ids = Vec::with_capacity(3);
            for e in 0..1 + rng.below(3) {
                let h = rng.next();
                event_ids.push(match d.kind {
                    Kind::Gpu | Kind::GpuHealth | Kind::GpuUnallocated => format!(
                        "gpu_metrics:{}/{}@{}",
                        d.subject,
                        gpu_name.unwrap_or(""),
                        last_ts - (e as i64) * 15 * NS_PER_SEC
                    ),
                    Kind::Falco | Kind::Miner => format!("falco:{}", uuid(h)),
                    Kind::Audit | Kind::AuditCluster => format!("k8s_audit:{}", uuid(h)),
                    Kind::Correlation => format!("finding:{:016x}{:016x}", h, mix(h, 9)),
                });
            }
            rows.push(&Row {
                ts: start,
                cluster: Some(cluster),
                node: node_name,
                namespace: ns_name,
                pod: pod_name,
                pod_uid: pod.map(|p| p.uid.as_str()),
                container: slot_ref.filter(|_| pod.is_some()).map(|s| s.container),
                gpu_uuid: gpu_name,
                id: &id,
                last_ts,
                detector: d.name,
                severity,
                status: if resolved { "resolved" } else { "firing" },
                revision: rev as i64,
                summary: &summary,
                role: role.as_str(),
                role_reason,
                mitre: d.mitre,
                evidence: &evidence,
                event_ids: &event_ids,
            });
        }
    }
}

fn pick_weighted(rng: &mut Rng, weights: &[f64; 5]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.unit() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

fn audit_user(ns: Option<&str>, rng: &mut Rng) -> String {
    match (ns, rng.below(3)) {
        (Some(ns), 0) => format!("system:serviceaccount:{ns}:default"),
        (_, 1) => "system:serviceaccount:ci:deployer".to_string(),
        _ => format!("{}@corp.example", rng.pick(&USERS)),
    }
}

/// One finding row, borrowed.
struct Row<'a> {
    ts: i64,
    cluster: Option<&'a str>,
    node: Option<&'a str>,
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
    pod_uid: Option<&'a str>,
    container: Option<&'a str>,
    gpu_uuid: Option<&'a str>,
    id: &'a str,
    last_ts: i64,
    detector: &'a str,
    severity: usize,
    status: &'a str,
    revision: i64,
    summary: &'a str,
    role: &'a str,
    role_reason: Option<&'a str>,
    mitre: &'a [&'a str],
    evidence: &'a str,
    event_ids: &'a [String],
}

/// Column builders in the findings schema's order.
struct Rows {
    len: usize,
    ts: TimestampNanosecondBuilder,
    entity: [StringBuilder; 7],
    id: StringBuilder,
    last_ts: TimestampNanosecondBuilder,
    detector: StringBuilder,
    severity: StringBuilder,
    severity_rank: UInt8Builder,
    status: StringBuilder,
    revision: Int64Builder,
    summary: StringBuilder,
    role: StringBuilder,
    role_reason: StringBuilder,
    mitre: ListBuilder<StringBuilder>,
    evidence: StringBuilder,
    event_ids: ListBuilder<StringBuilder>,
}

impl Rows {
    fn with_capacity(n: usize) -> Rows {
        Rows {
            len: 0,
            ts: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            entity: std::array::from_fn(|_| StringBuilder::new()),
            id: StringBuilder::new(),
            last_ts: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            detector: StringBuilder::new(),
            severity: StringBuilder::new(),
            severity_rank: UInt8Builder::with_capacity(n),
            status: StringBuilder::new(),
            revision: Int64Builder::with_capacity(n),
            summary: StringBuilder::new(),
            role: StringBuilder::new(),
            role_reason: StringBuilder::new(),
            mitre: ListBuilder::new(StringBuilder::new()),
            evidence: StringBuilder::new(),
            event_ids: ListBuilder::new(StringBuilder::new()),
        }
    }

    fn push(&mut self, r: &Row<'_>) {
        self.len += 1;
        self.ts.append_value(r.ts);
        for (b, v) in self.entity.iter_mut().zip([
            r.cluster,
            r.node,
            r.namespace,
            r.pod,
            r.pod_uid,
            r.container,
            r.gpu_uuid,
        ]) {
            b.append_option(v);
        }
        self.id.append_value(r.id);
        self.last_ts.append_value(r.last_ts);
        self.detector.append_value(r.detector);
        self.severity.append_value(SEVERITIES[r.severity]);
        self.severity_rank
            .append_value(u8::try_from(r.severity).unwrap_or(0));
        self.status.append_value(r.status);
        self.revision.append_value(r.revision);
        self.summary.append_value(r.summary);
        self.role.append_value(r.role);
        self.role_reason.append_option(r.role_reason);
        for m in r.mitre {
            self.mitre.values().append_value(m);
        }
        self.mitre.append(true);
        self.evidence.append_value(r.evidence);
        for e in r.event_ids {
            self.event_ids.values().append_value(e);
        }
        self.event_ids.append(true);
    }

    fn finish(mut self) -> anyhow::Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.ts.finish())];
        columns.extend(
            self.entity
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend([
            Arc::new(self.id.finish()) as ArrayRef,
            Arc::new(self.last_ts.finish()),
            Arc::new(self.detector.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.severity_rank.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.revision.finish()),
            Arc::new(self.summary.finish()),
            Arc::new(self.role.finish()),
            Arc::new(self.role_reason.finish()),
            Arc::new(self.mitre.finish()),
            Arc::new(self.evidence.finish()),
            Arc::new(self.event_ids.finish()),
        ]);
        RecordBatch::try_new(gpusiem_detect::finding::schema(), columns)
            .context("generated rows do not fit the findings schema")
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

/// The entities the point lookups ask for.
#[derive(Default)]
struct Targets {
    gpu: String,
    pod: String,
}

impl Targets {
    /// The GPU and the pod of the finding with the smallest id among those raised 30 hours
    /// before the end: entities that do have findings, chosen without looking at how many.
    async fn find(engine: &QueryEngine) -> anyhow::Result<Targets> {
        let (from, to) = (at(T_END_SECS - 30 * 3600).0, at(T_END_SECS - 29 * 3600).0);
        let mut found = Vec::new();
        for column in ["gpu_uuid", "pod"] {
            let sql = format!(
                "SELECT {column} FROM findings WHERE ts >= {from} AND ts < {to} \
                 AND {column} IS NOT NULL ORDER BY id LIMIT 1"
            );
            let out = engine.sql_as_admin(&sql, &NamespaceScope::all()).await?;
            let value = out
                .batches
                .first()
                .and_then(|b| arrow::compute::cast(b.column(0), &DataType::Utf8).ok())
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .map(|a| a.value(0).to_string())
                })
                .with_context(|| {
                    format!("no finding with a {column} 30 hours before the end of the data")
                })?;
            found.push(value);
        }
        let pod = found.pop().unwrap_or_default();
        let gpu = found.pop().unwrap_or_default();
        Ok(Targets { gpu, pod })
    }

    /// The GPU pods that start mining in the last hour.
    fn campaign_slots(world: &World) -> Vec<usize> {
        let mut rng = Rng(SEED ^ 0xc0);
        let gpu_slots: Vec<usize> = (0..SLOTS).filter(|&s| world.slots[s].gpu).collect();
        (0..6)
            .map(|_| gpu_slots[rng.below(gpu_slots.len())])
            .collect()
    }
}

/// One query of the suite, in both dialects.
struct Query {
    name: &'static str,
    datafusion: String,
    duckdb: String,
    /// A point lookup: held to the 10 ms target.
    lookup: bool,
}

/// A timestamp literal in each dialect (UTC).
fn at(secs: i64) -> (String, String) {
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    (
        format!("'{}'", t.format("%Y-%m-%dT%H:%M:%SZ")),
        format!("TIMESTAMPTZ '{}'", t.format("%Y-%m-%d %H:%M:%S+00")),
    )
}

/// The suite of issue 4 (the point lookup twice: by GPU and by pod). Time windows end at the
/// data's end; `{T}`-style placeholders are filled per dialect.
fn suite(targets: &Targets) -> Vec<Query> {
    let windows = [
        ("{END}", T_END_SECS),
        ("{DAY}", T_END_SECS - 24 * 3600),
        ("{SIX_HOURS}", T_END_SECS - 6 * 3600),
        ("{LAST_HOUR}", T_END_SECS - 3600),
        ("{WEEK}", T_END_SECS - i64::from(HOURS) * 3600),
    ];
    let fill = |sql: &str, duck: bool| {
        let mut s = sql
            .replace("{GPU}", &targets.gpu)
            .replace("{POD}", &targets.pod);
        for (k, secs) in windows {
            let (df, dd) = at(secs);
            s = s.replace(k, if duck { &dd } else { &df });
        }
        s
    };
    let q = |name: &'static str, lookup: bool, sql: &str| Query {
        name,
        datafusion: fill(sql, false),
        duckdb: fill(sql, true),
        lookup,
    };
    vec![
        q(
            "severity_24h",
            false,
            "SELECT severity, count(*) AS findings FROM findings \
             WHERE ts >= {DAY} AND ts < {END} GROUP BY severity ORDER BY findings DESC, severity",
        ),
        q(
            "top_rules_24h",
            false,
            "SELECT detector, count(*) AS findings, count(DISTINCT node) AS nodes FROM findings \
             WHERE ts >= {DAY} AND ts < {END} AND severity_rank >= 2 \
             GROUP BY detector ORDER BY findings DESC, detector LIMIT 10",
        ),
        q(
            "top_nodes_7d",
            false,
            "SELECT node, count(*) AS findings, sum(CASE WHEN severity_rank >= 3 THEN 1 ELSE 0 END) AS high_or_critical, \
             count(DISTINCT detector) AS detectors FROM findings \
             WHERE ts >= {WEEK} AND ts < {END} AND node IS NOT NULL \
             GROUP BY node ORDER BY high_or_critical DESC, findings DESC, node LIMIT 20",
        ),
        q(
            "minute_buckets_6h",
            false,
            "SELECT date_trunc('minute', ts) AS minute, count(*) AS findings, \
             sum(CASE WHEN severity_rank >= 3 THEN 1 ELSE 0 END) AS high_or_critical FROM findings \
             WHERE ts >= {SIX_HOURS} AND ts < {END} GROUP BY date_trunc('minute', ts) ORDER BY minute",
        ),
        q(
            "pods_per_namespace_24h",
            false,
            "SELECT namespace, count(DISTINCT pod) AS pods, count(*) AS findings FROM findings \
             WHERE ts >= {DAY} AND ts < {END} AND namespace IS NOT NULL \
             GROUP BY namespace ORDER BY pods DESC, namespace",
        ),
        q(
            "lookup_gpu",
            true,
            "SELECT ts, last_ts, detector, severity, status, namespace, pod, summary FROM findings \
             WHERE gpu_uuid = '{GPU}' ORDER BY ts DESC, revision DESC",
        ),
        q(
            "lookup_pod",
            true,
            "SELECT ts, last_ts, detector, severity, status, revision, node, gpu_uuid, summary FROM findings \
             WHERE pod = '{POD}' ORDER BY ts, revision",
        ),
        q(
            "evidence_like_7d",
            false,
            "SELECT namespace, pod, count(*) AS hits, min(ts) AS first_seen, max(ts) AS last_seen FROM findings \
             WHERE ts >= {WEEK} AND ts < {END} AND evidence LIKE '%stratum+tcp://%' \
             GROUP BY namespace, pod ORDER BY hits DESC, namespace, pod LIMIT 50",
        ),
        q(
            "node_zscore_last_hour",
            false,
            "WITH hourly AS ( \
               SELECT node, date_trunc('hour', ts) AS hr, count(*) AS n FROM findings \
               WHERE ts >= {WEEK} AND ts < {END} AND node IS NOT NULL GROUP BY node, date_trunc('hour', ts) \
             ), baseline AS ( \
               SELECT node, avg(n) AS mean, stddev(n) AS sd, count(*) AS n_hours FROM hourly \
               WHERE hr < {LAST_HOUR} GROUP BY node \
             ) \
             SELECT h.node, h.n AS last_hour, b.mean, b.sd, (h.n - b.mean) / b.sd AS z \
             FROM hourly h JOIN baseline b ON h.node = b.node \
             WHERE h.hr = {LAST_HOUR} AND b.n_hours >= 24 AND b.sd > 0 \
             ORDER BY z DESC, h.node LIMIT 20",
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Timing

/// One engine's figures for one query.
#[derive(Debug, Clone, Deserialize)]
struct Timing {
    cold_ms: f64,
    median_ms: f64,
    min_ms: f64,
    rows: usize,
    checksum: f64,
}

type Outcome = Result<Timing, String>;

async fn time_ours(engine: &QueryEngine, sql: &str, iters: usize) -> Outcome {
    let scope = NamespaceScope::all();
    let t = Instant::now();
    let out = engine
        .sql_as_admin(sql, &scope)
        .await
        .map_err(|e| e.to_string())?;
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    if out.truncated {
        return Err(format!("result truncated at {} rows", out.rows));
    }
    let mut hot = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        engine
            .sql_as_admin(sql, &scope)
            .await
            .map_err(|e| e.to_string())?;
        hot.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    hot.sort_by(f64::total_cmp);
    Ok(Timing {
        cold_ms,
        median_ms: median(&hot),
        min_ms: hot[0],
        rows: out.rows,
        checksum: checksum(&out.batches),
    })
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Sum of every numeric cell, the same figure the DuckDB script computes.
fn checksum(batches: &[RecordBatch]) -> f64 {
    let mut total = 0.0;
    for b in batches {
        for c in b.columns() {
            if !c.data_type().is_numeric() {
                continue;
            }
            let Ok(f) = arrow::compute::cast(c, &DataType::Float64) else {
                continue;
            };
            if let Some(f) = f.as_any().downcast_ref::<Float64Array>() {
                total += f.iter().flatten().sum::<f64>();
            }
        }
    }
    total
}

fn first_i64(out: &gpusiem::query::QueryOutput) -> Option<i64> {
    let b = out.batches.first()?;
    let c = arrow::compute::cast(b.column(0), &DataType::Int64).ok()?;
    let a = c.as_any().downcast_ref::<arrow::array::Int64Array>()?;
    (!a.is_empty()).then(|| a.value(0))
}

/// What the DuckDB script prints.
#[derive(Deserialize)]
struct DuckOutput {
    duckdb_version: String,
    queries: BTreeMap<String, serde_json::Value>,
}

struct Duck {
    version: String,
    results: BTreeMap<String, Outcome>,
}

#[derive(Serialize)]
struct SuiteFile<'a> {
    files: Vec<String>,
    threads: usize,
    iters: usize,
    queries: Vec<SuiteQuery<'a>>,
}

#[derive(Serialize)]
struct SuiteQuery<'a> {
    name: &'a str,
    sql: &'a str,
}

fn run_duckdb(args: &Args, dir: &Path, files: &[PathBuf], suite: &[Query]) -> anyhow::Result<Duck> {
    let script = &args.duckdb_script;
    if !script.is_file() {
        bail!(
            "{} not found (--duckdb-script names the runner; --no-duckdb skips DuckDB)",
            script.display()
        );
    }
    // The manifest's files, the ones gpusiem reads: no glob that could pick up a file the
    // manifest does not list.
    let suite_file = SuiteFile {
        files: files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        threads: args.threads,
        iters: args.iters,
        queries: suite
            .iter()
            .map(|q| SuiteQuery {
                name: q.name,
                sql: &q.duckdb,
            })
            .collect(),
    };
    let path = dir.join("duckdb-suite.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&suite_file)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "duckdb: running {} (its venv is created on first use) …",
        script.display()
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--suite")
        .arg(&path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting python3 (needed for the DuckDB side; --no-duckdb skips it)")?;
    if !out.status.success() {
        bail!("{} exited with {}", script.display(), out.status);
    }
    let parsed: DuckOutput = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} printed no JSON result: {}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let results = parsed
        .queries
        .into_iter()
        .map(|(name, v)| {
            let r = match v.get("error").and_then(|e| e.as_str()) {
                Some(e) => Err(e.to_string()),
                None => serde_json::from_value::<Timing>(v)
                    .map_err(|e| format!("unreadable result: {e}")),
            };
            (name, r)
        })
        .collect();
    Ok(Duck {
        version: parsed.duckdb_version,
        results,
    })
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn report(suite: &[Query], ours: &BTreeMap<&str, Outcome>, duck: Option<&Duck>) {
    let mut out = String::new();
    let _ = writeln!(out);
    if let Some(d) = duck {
        let _ = writeln!(out, "DuckDB {}", d.version);
    }
    let _ = writeln!(
        out,
        "{:<24} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "query",
        "rows",
        "ours cold",
        "ours med",
        "ours min",
        "duck cold",
        "duck med",
        "duck min",
        "ratio"
    );
    let mut log_sum = 0.0;
    let mut compared = 0usize;
    let mut mismatches = Vec::new();
    for q in suite {
        let mine = ours.get(q.name);
        let theirs = duck.and_then(|d| d.results.get(q.name));
        let (rows, oc, om, on) = match mine {
            Some(Ok(t)) => (
                t.rows.to_string(),
                ms(t.cold_ms),
                ms(t.median_ms),
                ms(t.min_ms),
            ),
            Some(Err(e)) => {
                mismatches.push(format!("{}: gpusiem failed: {e}", q.name));
                ("error".into(), "-".into(), "-".into(), "-".into())
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let (dc, dm, dn) = match theirs {
            Some(Ok(t)) => (ms(t.cold_ms), ms(t.median_ms), ms(t.min_ms)),
            Some(Err(e)) => {
                mismatches.push(format!("{}: DuckDB failed: {e}", q.name));
                ("error".into(), "-".into(), "-".into())
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        let ratio = match (mine, theirs) {
            (Some(Ok(a)), Some(Ok(b))) => {
                if a.rows != b.rows {
                    mismatches.push(format!(
                        "{}: gpusiem returned {} rows, DuckDB {}",
                        q.name, a.rows, b.rows
                    ));
                } else if (a.checksum - b.checksum).abs()
                    > 1e-6 * a.checksum.abs().max(b.checksum.abs()).max(1.0)
                {
                    mismatches.push(format!(
                        "{}: numeric checksums differ: gpusiem {} vs DuckDB {}",
                        q.name, a.checksum, b.checksum
                    ));
                }
                let r = a.median_ms / b.median_ms;
                log_sum += r.ln();
                compared += 1;
                format!("{r:.2}")
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<24} {rows:>7} {oc:>10} {om:>10} {on:>10} {dc:>10} {dm:>10} {dn:>10} {ratio:>7}",
            q.name
        );
    }
    let _ = writeln!(
        out,
        "(ms; cold = first run in the process, med/min over the hot runs; ratio = ours med / duck med)"
    );
    if !mismatches.is_empty() {
        let _ = writeln!(
            out,
            "\n!!! RESULT MISMATCH — the engines disagree; the timings above may not compare like with like:"
        );
        for m in &mismatches {
            let _ = writeln!(out, "!!!   {m}");
        }
    }
    let _ = writeln!(out, "\ntargets:");
    if compared > 0 {
        let g = (log_sum / compared as f64).exp();
        let _ = writeln!(
            out,
            "  {} geomean ratio {g:.2}× DuckDB over {compared} queries (target ≤ {GEOMEAN_TARGET}×)",
            pass(g <= GEOMEAN_TARGET)
        );
    } else {
        let _ = writeln!(
            out,
            "  ---- geomean ratio: no DuckDB figures to compare with"
        );
    }
    for q in suite.iter().filter(|q| q.lookup) {
        match ours.get(q.name) {
            Some(Ok(t)) => {
                let _ = writeln!(
                    out,
                    "  {} {} hot median {:.2} ms, min {:.2} ms (target ≤ {LOOKUP_TARGET_MS} ms)",
                    pass(t.median_ms <= LOOKUP_TARGET_MS),
                    q.name,
                    t.median_ms,
                    t.min_ms
                );
            }
            _ => {
                let _ = writeln!(out, "  MISS {} failed", q.name);
            }
        }
    }
    print!("{out}");
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}
