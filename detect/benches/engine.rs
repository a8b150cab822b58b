//! Detector engine over a 10 000-GPU fleet: 250 000 Prometheus series (10 000 GPUs × the 25
//! metrics of dcgm-exporter's default counter set), the three GPU detectors, in release.
//!
//! ```sh
//! cargo bench -p gpusiem-detect --bench engine
//! ```
//!
//! Prints, besides Criterion's throughput:
//! * samples/s on one core (`Engine::observe` is single-threaded), whole-fleet batches and
//!   per-node batches, and for a dense fleet where every series is one the detectors read;
//! * state bytes per series (`Engine::state_bytes()` / 250 000, and per detector key);
//! * RSS (`VmRSS`) before the engine and after it holds the fleet's state;
//! * batch → findings latency p50/p99: wall time of `Engine::observe` per batch, for one node's
//!   scrape (8 GPUs, 200 rows; nodes are scraped staggered, so ticks fall inside some
//!   batches) and for a whole-fleet scrape in one batch.
//!
//! The fleet: 1 250 nodes × 8 GPUs; 40 % of GPUs serve models (util 20–60 %, steady memory),
//! 20 % train (util ~95 %, power swinging), 10 % are notebooks (mostly idle, a few allocate
//! gigabytes now and then), 30 % are allocated to no pod and idle — except a handful that get
//! used, so every finding path runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Array, StringArray, StringDictionaryBuilder, TimestampNanosecondArray,
    UInt32Array,
};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gpusiem_detect::{Engine, EngineConfig, Finding};
use gpusiem_ingest::Stream;

const NODES: usize = 1250;
const GPUS_PER_NODE: usize = 8;
const GPUS: usize = NODES * GPUS_PER_NODE;
const SCRAPE_NANOS: i64 = 30_000_000_000;
const T0: i64 = 1_795_699_109_479_000_000;

/// dcgm-exporter's default counters (etc/default-counters.csv), 25 per GPU.
const METRICS: [&str; 25] = [
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
];

/// The metrics the GPU detectors read (the dense fleet has only these).
const READ_METRICS: [&str; 4] = [
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Serving,
    Training,
    Notebook,
    Free,
}

struct Gpu {
    uuid: String,
    node: String,
    kind: Kind,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
}

fn fleet(gpus: usize) -> Vec<Gpu> {
    (0..gpus)
        .map(|g| {
            let kind = match g % 10 {
                0..=3 => Kind::Serving,
                4 | 5 => Kind::Training,
                6 => Kind::Notebook,
                _ => Kind::Free,
            };
            let node = format!("gpu-node-{:04}", g / GPUS_PER_NODE);
            let (ns, pod, ctr) = match kind {
                Kind::Serving => (
                    "ml-serving",
                    format!("llm-{:05}-predictor-7f9c8d6b5-x{:04}", g / 4, g % 10_000),
                    "kserve-container",
                ),
                Kind::Training => (
                    "ml-train",
                    format!("pretrain-{:04}-worker-{}", g / 16, g % 16),
                    "pytorch",
                ),
                Kind::Notebook => ("research", format!("user-{:05}-notebook-0", g), "notebook"),
                Kind::Free => ("", String::new(), ""),
            };
            Gpu {
                uuid: format!(
                    "GPU-{:08x}-73df-565d-{:04x}-77fb02fe2d00",
                    0x716284d3u32.wrapping_add(g as u32),
                    g % 65_536
                ),
                node,
                kind,
                namespace: (kind != Kind::Free).then(|| ns.to_string()),
                pod: (kind != Kind::Free).then_some(pod),
                container: (kind != Kind::Free).then(|| ctr.to_string()),
            }
        })
        .collect()
}

/// Deterministic noise in [0, 1).
fn noise(a: u64, b: u64) -> f64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The value of `metric` on `gpu` at scrape `round`.
fn value(gpu: &Gpu, g: usize, metric: &str, round: u64) -> f64 {
    let n = noise(g as u64, round);
    // A few notebooks allocate 20 GiB for 10 scrapes every 100; one free GPU in 1000 gets used.
    let notebook_burst =
        gpu.kind == Kind::Notebook && (round + (g as u64 / 50) * 7) % 100 < 10 && g % 50 == 6;
    let free_used = gpu.kind == Kind::Free && g % 1000 == 7 && round % 200 >= 20;
    let (util, fb, power, tensor) = match gpu.kind {
        Kind::Serving => (
            20.0 + 40.0 * n,
            30_000.0 + 200.0 * n,
            250.0 + 150.0 * n,
            0.1 + 0.2 * n,
        ),
        Kind::Training => (
            93.0 + 6.0 * n,
            70_000.0 + 500.0 * n,
            450.0 + 200.0 * n,
            0.4 + 0.2 * n,
        ),
        Kind::Notebook if notebook_burst => {
            (60.0 * n, 22_000.0 + 100.0 * n, 150.0 + 100.0 * n, 0.05 * n)
        }
        Kind::Notebook => (2.0 * n, 1_200.0 + 50.0 * n, 75.0 + 5.0 * n, 0.0),
        Kind::Free if free_used => (99.0 + n, 3_000.0, 610.0 + 4.0 * n, 0.0),
        Kind::Free => (0.0, 0.0, 70.0 + 2.0 * n, 0.0),
    };
    match metric {
        "DCGM_FI_DEV_GPU_UTIL" => util.round(),
        "DCGM_FI_DEV_FB_USED" => fb.round(),
        "DCGM_FI_DEV_FB_FREE" => (143_156.0 - fb).round(),
        "DCGM_FI_DEV_FB_RESERVED" => 616.0,
        "DCGM_FI_DEV_POWER_USAGE" => (power * 1000.0).round() / 1000.0,
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" => (tensor * 1e6).round() / 1e6,
        "DCGM_FI_DEV_SM_CLOCK" => 1980.0,
        "DCGM_FI_DEV_GPU_TEMP" => 40.0 + 30.0 * util / 100.0,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" => 4.0e9 + round as f64 * 1.0e7,
        _ => (100.0 * n).round(),
    }
}

/// GPUs whose values change over rounds (the templates repeat): some notebooks allocate 20 GiB
/// now and then, a few GPUs allocated to no pod get used.
fn anomalous(gpu: &Gpu, g: usize) -> bool {
    (gpu.kind == Kind::Notebook && g % 50 == 6) || (gpu.kind == Kind::Free && g % 1000 == 7)
}

/// A fleet-wide scrape and where its rows are.
struct Template {
    batch: RecordBatch,
    /// Row range of each node's scrape.
    ranges: Vec<(usize, usize)>,
    /// Rows of anomalous GPUs: (row, GPU index, metric index), re-valued for each round.
    patches: Vec<(usize, usize, usize)>,
}

/// One fleet-wide scrape round: rows node by node (staggered over the scrape interval, so
/// rows stay in event-time order), within a node metric by metric, GPU by GPU — the order
/// dcgm-exporter renders.
fn scrape(gpus: &[Gpu], metrics: &[&str], round: u64) -> Template {
    let rows = gpus.len() * metrics.len();
    let nodes = gpus.len().div_ceil(GPUS_PER_NODE);
    let stagger = SCRAPE_NANOS / nodes as i64;
    let round_start = T0 + round as i64 * SCRAPE_NANOS;
    let mut ts = Vec::with_capacity(rows);
    let mut metric = StringDictionaryBuilder::<Int32Type>::new();
    let (mut uuid, mut node, mut ns, mut pod, mut ctr, mut val, mut gpu_idx) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut ranges = Vec::with_capacity(nodes);
    let mut patches = Vec::new();
    for (n, chunk) in gpus.chunks(GPUS_PER_NODE).enumerate() {
        let start = ts.len();
        for (mi, m) in metrics.iter().enumerate() {
            for (i, gpu) in chunk.iter().enumerate() {
                let g = n * GPUS_PER_NODE + i;
                if anomalous(gpu, g) {
                    patches.push((ts.len(), g, mi));
                }
                ts.push(round_start + n as i64 * stagger);
                metric.append_value(m);
                uuid.push(Some(gpu.uuid.as_str()));
                node.push(Some(gpu.node.as_str()));
                ns.push(gpu.namespace.as_deref());
                pod.push(gpu.pod.as_deref());
                ctr.push(gpu.container.as_deref());
                val.push(Some(value(gpu, g, m, round)));
                gpu_idx.push(Some(i as u32));
            }
        }
        ranges.push((start, ts.len() - start));
    }
    let schema = Stream::GpuMetrics.schema();
    let metric = arrow::compute::cast(&metric.finish(), &arrow::datatypes::DataType::Utf8)
        .expect("dictionary to utf8");
    let nulls = |n: usize| -> ArrayRef { Arc::new(StringArray::from(vec![None::<&str>; n])) };
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "ts" => Arc::new(TimestampNanosecondArray::from(ts.clone()).with_timezone("UTC")),
                "node" => Arc::new(StringArray::from(node.clone())),
                "namespace" => Arc::new(StringArray::from(ns.clone())),
                "pod" => Arc::new(StringArray::from(pod.clone())),
                "container" => Arc::new(StringArray::from(ctr.clone())),
                "gpu_uuid" => Arc::new(StringArray::from(uuid.clone())),
                "metric" => metric.clone(),
                "value" => Arc::new(Float64Array::from(val.clone())),
                "gpu" => Arc::new(UInt32Array::from(gpu_idx.clone())),
                "gpu_i_id" => Arc::new(UInt32Array::from(vec![None::<u32>; rows])),
                "model" => Arc::new(StringArray::from(vec![Some("NVIDIA H200"); rows])),
                _ => nulls(rows),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema, cols).expect("follows the gpu_metrics schema");
    Template {
        batch,
        ranges,
        patches,
    }
}

/// Round `to_round` from a template: timestamps moved, anomalous GPUs re-valued.
fn retime(
    t: &Template,
    gpus: &[Gpu],
    metrics: &[&str],
    from_round: u64,
    to_round: u64,
) -> RecordBatch {
    let batch = &t.batch;
    let shift = (to_round as i64 - from_round as i64) * SCRAPE_NANOS;
    let ts = batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("ts column");
    let moved: TimestampNanosecondArray = ts.unary(|t| t + shift);
    let value_idx = batch.schema().index_of("value").expect("value column");
    let values = batch
        .column(value_idx)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("value column");
    let mut v: Vec<Option<f64>> = values.iter().collect();
    for &(row, g, mi) in &t.patches {
        v[row] = Some(value(&gpus[g], g, metrics[mi], to_round));
    }
    let mut cols = batch.columns().to_vec();
    cols[0] = Arc::new(moved.with_timezone("UTC"));
    cols[value_idx] = Arc::new(Float64Array::from(v));
    RecordBatch::try_new(batch.schema(), cols).expect("same schema")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Template rounds reused (re-timed) so the benchmark does not spend its memory on batches.
const TEMPLATES: u64 = 8;

struct Fleet {
    gpus: Vec<Gpu>,
    metrics: Vec<&'static str>,
    templates: Vec<Template>,
    series: usize,
}

impl Fleet {
    fn new(gpus: usize, metrics: &[&'static str]) -> Self {
        let g = fleet(gpus);
        let templates = (0..TEMPLATES).map(|r| scrape(&g, metrics, r)).collect();
        Fleet {
            gpus: g,
            metrics: metrics.to_vec(),
            templates,
            series: gpus * metrics.len(),
        }
    }

    fn round(&self, round: u64) -> (RecordBatch, &[(usize, usize)]) {
        let t = &self.templates[(round % TEMPLATES) as usize];
        (
            retime(t, &self.gpus, &self.metrics, round % TEMPLATES, round),
            &t.ranges,
        )
    }
}

fn report(name: &str, fleet: &Fleet, rounds: u64) {
    let rss_before = rss_kib();
    let mut engine = Engine::new(EngineConfig::default()).expect("default config");
    let mut out: Vec<Finding> = Vec::new();
    // Warm up: the engine learns every series (baselines past warm-up).
    for r in 0..10 {
        engine.observe(Stream::GpuMetrics, &fleet.round(r).0, &mut out);
    }
    // Per-node batches: one node's scrape each.
    let mut node_lat = Vec::new();
    let mut rows = 0usize;
    let started = Instant::now();
    for r in 10..10 + rounds {
        let (b, ranges) = fleet.round(r);
        for &(off, len) in ranges {
            let slice = b.slice(off, len);
            let t = Instant::now();
            engine.observe(Stream::GpuMetrics, &slice, &mut out);
            node_lat.push(t.elapsed());
            rows += len;
        }
    }
    let node_secs = started.elapsed().as_secs_f64();
    // Whole-fleet batches.
    let mut fleet_lat = Vec::new();
    let mut fleet_rows = 0usize;
    for r in 10 + rounds..10 + 2 * rounds {
        let b = fleet.round(r).0;
        let t = Instant::now();
        engine.observe(Stream::GpuMetrics, &b, &mut out);
        fleet_lat.push(t.elapsed());
        fleet_rows += b.num_rows();
    }
    let fleet_secs: f64 = fleet_lat.iter().map(Duration::as_secs_f64).sum();
    node_lat.sort();
    fleet_lat.sort();
    let rss_after = rss_kib();
    let state = engine.state_bytes();
    let keys: usize = engine.series().iter().map(|(_, n)| n).sum();
    println!(
        "\n== {name}: {} Prometheus series per scrape ==",
        fleet.series
    );
    println!(
        "throughput, one core: {:.2} M samples/s (per-node batches), {:.2} M samples/s (whole-fleet batches)",
        rows as f64 / node_secs / 1e6,
        fleet_rows as f64 / fleet_secs / 1e6
    );
    println!(
        "latency per node batch ({} rows): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ranges_len(fleet),
        ms(percentile(&node_lat, 0.5)),
        ms(percentile(&node_lat, 0.99)),
        ms(*node_lat.last().expect("batches"))
    );
    println!(
        "latency per whole-fleet batch ({} rows): p50 {:.1} ms, p99 {:.1} ms",
        fleet.series,
        ms(percentile(&fleet_lat, 0.5)),
        ms(percentile(&fleet_lat, 0.99))
    );
    println!(
        "state: {} bytes = {:.1} bytes per series; {} detector keys ({:.0} bytes each); {:?}",
        state,
        state as f64 / fleet.series as f64,
        keys,
        state as f64 / keys.max(1) as f64,
        engine.series()
    );
    // RSS of a second engine learning the same fleet: the first one reused the heap the batch
    // templates freed, so its own RSS delta says little.
    let rss_one = rss_kib();
    let mut second = Engine::new(EngineConfig::default()).expect("default config");
    let mut sink = Vec::new();
    for r in 0..10 {
        second.observe(Stream::GpuMetrics, &fleet.round(r).0, &mut sink);
    }
    let rss_two = rss_kib();
    println!(
        "RSS: {:.1} MiB before the engine (fleet batches), {:.1} MiB with one engine; a second \
         engine's state adds {:.1} MiB = {:.1} bytes per series",
        rss_before as f64 / 1024.0,
        rss_after.max(rss_one) as f64 / 1024.0,
        (rss_two as f64 - rss_one as f64) / 1024.0,
        (rss_two as f64 - rss_one as f64) * 1024.0 / fleet.series as f64,
    );
    drop(second);
    let mut by: std::collections::BTreeMap<(String, &str), usize> =
        std::collections::BTreeMap::new();
    for f in &out {
        *by.entry((
            f.detector.clone(),
            if f.revision == 0 {
                "raised"
            } else {
                f.status.as_str()
            },
        ))
        .or_default() += 1;
    }
    println!("findings: {} emissions: {by:?}", out.len());
}

fn ranges_len(fleet: &Fleet) -> usize {
    fleet.templates[0].ranges[0].1
}

fn bench(c: &mut Criterion) {
    let realistic = Fleet::new(GPUS, &METRICS);
    report("fleet of 10 000 GPUs × 25 default counters", &realistic, 20);
    // Every series is one the detectors read: 62 500 GPUs × 4 metrics.
    let dense = Fleet::new(250_000 / READ_METRICS.len(), &READ_METRICS);
    report(
        "dense fleet: 62 500 GPUs × the 4 metrics the detectors read",
        &dense,
        20,
    );

    let mut g = c.benchmark_group("engine");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(20));
    for (name, fleet) in [
        ("fleet_scrape_250k_default_counters", &realistic),
        ("fleet_scrape_250k_read_metrics", &dense),
    ] {
        let mut engine = Engine::new(EngineConfig::default()).expect("default config");
        let mut out = Vec::new();
        for r in 0..10 {
            engine.observe(Stream::GpuMetrics, &fleet.round(r).0, &mut out);
        }
        let mut round = 10;
        g.throughput(Throughput::Elements(fleet.series as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    round += 1;
                    fleet.round(round).0
                },
                |batch| {
                    out.clear();
                    engine.observe(Stream::GpuMetrics, black_box(&batch), &mut out)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
