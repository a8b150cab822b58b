//! Golden scenarios of the GPU detectors: recorded dcgm-exporter scrapes derived from real H200
//! captures (`tests/fixtures/scenarios/<name>/metrics.prom`) and the pods the inventory knows
//! (`scenario.json`) go in; the engine's findings, normalised, must equal `expected.json`.
//!
//! Besides the golden comparison every scenario checks that
//! * the decoder took every line (no quarantine),
//! * two runs give identical findings (ids included),
//! * the findings do not depend on how the rows are cut into batches (one per scrape, one for
//!   the whole file, or slices of 7 rows that split scrapes),
//!
//! and each test asserts the scenario's requirement on its own, so a wrong re-bless cannot hide
//! a regression. Re-bless after an intended change with
//! `GPUSIEM_BLESS=1 cargo test -p gpusiem-detect --test golden` and review the diff.

use std::path::PathBuf;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampNanosecondType;
use gpusiem_detect::inventory::PodInfo;
use gpusiem_detect::{Engine, EngineConfig, Finding, Role, Severity, Status};
use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext};
use serde::Deserialize;
use serde_json::{Value, json};

/// `scenario.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[allow(dead_code)] // documentation for humans
    description: String,
    #[allow(dead_code)] // documentation for humans
    source: String,
    pods: Vec<PodInfo>,
    config: EngineConfig,
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/scenarios")
        .join(name)
}

fn load(name: &str) -> (Scenario, RecordBatch) {
    let d = dir(name);
    let scenario: Scenario =
        serde_json::from_slice(&std::fs::read(d.join("scenario.json")).expect("scenario.json"))
            .expect("scenario.json parses");
    let text = std::fs::read(d.join("metrics.prom")).expect("metrics.prom");
    let decoded =
        decode::decode(Stream::GpuMetrics, &text, &DecodeContext::new(0)).expect("decodes");
    assert!(
        decoded.quarantined.is_empty(),
        "{name}: quarantined {:?}",
        decoded.quarantined
    );
    assert!(decoded.batch.num_rows() > 0);
    (scenario, decoded.batch)
}

fn ts(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column(0)
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .to_vec()
}

/// How the rows reach the engine.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// One batch per scrape (rows with the same timestamp), as a live pipeline sees them.
    PerScrape,
    /// The whole file at once.
    Whole,
    /// Slices of this many rows, cutting scrapes in the middle.
    Rows(usize),
}

fn run(scenario: &Scenario, batch: &RecordBatch, cut: Cut) -> Vec<Finding> {
    let mut engine = Engine::new(scenario.config.clone()).expect("valid config");
    for p in &scenario.pods {
        engine.inventory_mut().upsert(p.clone());
    }
    let t = ts(batch);
    assert!(
        t.windows(2).all(|w| w[0] <= w[1]),
        "the fixture is in event-time order"
    );
    let mut slices = Vec::new();
    match cut {
        Cut::Whole => slices.push((0, t.len())),
        Cut::Rows(n) => slices.extend((0..t.len()).step_by(n).map(|s| (s, n.min(t.len() - s)))),
        Cut::PerScrape => {
            let mut start = 0;
            for i in 1..=t.len() {
                if i == t.len() || t[i] != t[start] {
                    slices.push((start, i - start));
                    start = i;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (offset, len) in slices {
        engine.observe(Stream::GpuMetrics, &batch.slice(offset, len), &mut out);
    }
    // The end of a replay: event time stops at the last sample.
    engine.tick(*t.last().expect("rows"), &mut out);
    out
}

/// What the golden files compare: the decision, not the wording.
fn normalise(findings: &[Finding]) -> Vec<Value> {
    let mut v: Vec<&Finding> = findings.iter().collect();
    v.sort_by(|a, b| (a.ts, &a.detector, a.revision).cmp(&(b.ts, &b.detector, b.revision)));
    let time = gpusiem_ingest::time::format_rfc3339_nanos;
    v.iter()
        .map(|f| {
            json!({
                "detector": f.detector,
                "severity": f.severity,
                "status": f.status,
                "revision": f.revision,
                "namespace": f.namespace,
                "pod": f.pod,
                "gpu_uuid": f.gpu_uuid,
                "role": f.role,
                "ts": time(f.ts),
                "last_ts": time(f.last_ts),
            })
        })
        .collect()
}

/// Runs a scenario every way, compares with its golden file, returns the per-scrape findings.
fn golden(name: &str) -> Vec<Finding> {
    let (scenario, batch) = load(name);
    let first = run(&scenario, &batch, Cut::PerScrape);
    let again = run(&scenario, &batch, Cut::PerScrape);
    assert_eq!(
        first, again,
        "{name}: two runs must give identical findings, ids included"
    );
    if std::env::var_os("GPUSIEM_DUMP").is_some() {
        for f in &first {
            eprintln!("{name}: {}", f.to_json());
        }
    }
    let got = normalise(&first);
    for cut in [Cut::Whole, Cut::Rows(7)] {
        assert_eq!(
            normalise(&run(&scenario, &batch, cut)),
            got,
            "{name}: findings depend on batching ({cut:?})"
        );
    }
    for f in &first {
        assert!(f.mitre.iter().any(|m| m == "T1496"), "{name}: {f:?}");
        assert!(
            !f.event_ids.is_empty()
                && f.event_ids
                    .iter()
                    .all(|e| e.starts_with("gpu_metrics:GPU-")),
            "{name}: {f:?}"
        );
        assert!(
            f.evidence.get("thresholds").is_some(),
            "{name}: evidence holds the thresholds"
        );
    }
    // One id per episode: every emission of an id has the same detector and ts.
    for f in &first {
        assert!(
            first
                .iter()
                .filter(|g| g.id == f.id)
                .all(|g| g.detector == f.detector && g.ts == f.ts)
        );
    }
    let path = dir(name).join("expected.json");
    let rendered = serde_json::to_string_pretty(&got).expect("json") + "\n";
    if std::env::var_os("GPUSIEM_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("write expected.json");
    }
    let expected: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with GPUSIEM_BLESS=1 to create it)",
            path.display()
        )
    }))
    .expect("expected.json parses");
    assert_eq!(
        got, expected,
        "{name}: findings differ from expected.json\n{rendered}"
    );
    first
}

fn of<'a>(findings: &'a [Finding], detector: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.detector == detector).collect()
}

/// The raise of each episode of `detector`.
fn raised<'a>(findings: &'a [Finding], detector: &str) -> Vec<&'a Finding> {
    of(findings, detector)
        .into_iter()
        .filter(|f| f.revision == 0)
        .collect()
}

const SPIKE_TS: &str = "2026-11-26T13:18:35.486000000Z";

#[test]
fn h200_spike_on_a_pod_that_requested_no_gpu_is_high() {
    let f = golden("h200-spike-non-gpu-pod");
    let spikes = raised(&f, "gpu_memory_spike");
    assert_eq!(spikes.len(), 1, "{f:#?}");
    let s = spikes[0];
    assert_eq!(s.severity, Severity::High);
    assert_eq!(s.role, Role::NonGpu);
    assert_eq!(
        gpusiem_ingest::time::format_rfc3339_nanos(s.ts),
        SPIKE_TS,
        "raised on the first sample of the spike"
    );
    assert_eq!(s.evidence["raised"]["value_mib"], 25715.0);
    assert_eq!(s.evidence["baseline_mib"], 0.0);
    assert_eq!(s.evidence["raised"]["elapsed_secs"], 0.501);
    assert_eq!(s.node.as_deref(), Some("gpu-h200-node-01"));
    assert_eq!(
        s.pod_uid.as_deref(),
        Some("5f0c7d1e-2b7a-4c1e-9a55-0d3c6f1e8b21")
    );
    let unalloc = raised(&f, "unallocated_gpu_use");
    assert_eq!(unalloc.len(), 1, "{f:#?}");
    assert!(unalloc[0].severity >= Severity::High);
    assert_eq!(unalloc[0].evidence["gpu_request"], 0);
}

#[test]
fn h200_spike_on_a_serving_pod_is_no_finding() {
    let f = golden("h200-spike-serving-pod");
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn h200_spike_of_a_training_job_starting_is_at_most_low() {
    let f = golden("h200-spike-training-start");
    assert!(f.iter().all(|f| f.severity <= Severity::Low), "{f:#?}");
    let spikes = raised(&f, "gpu_memory_spike");
    assert_eq!(spikes.len(), 1, "{f:#?}");
    assert_eq!(spikes[0].role, Role::Training);
}

#[test]
fn h200_spike_in_a_notebook_is_medium() {
    let f = golden("h200-spike-notebook");
    let spikes = raised(&f, "gpu_memory_spike");
    assert_eq!(spikes.len(), 1, "{f:#?}");
    assert_eq!(spikes[0].severity, Severity::Medium);
    assert_eq!(spikes[0].role, Role::Notebook);
}

#[test]
fn h200_spike_on_a_gpu_allocated_to_no_pod_raises() {
    let f = golden("h200-spike-unallocated");
    let u = raised(&f, "unallocated_gpu_use");
    assert_eq!(u.len(), 1, "{f:#?}");
    assert!(u[0].severity >= Severity::High);
    assert_eq!(u[0].pod, None);
    assert_eq!(
        u[0].gpu_uuid.as_deref(),
        Some("GPU-716284d3-73df-565d-3003-77fb02fe2d00")
    );
    // Two in-use scrapes confirm it: the spike's first sample, then the next one.
    assert_eq!(u[0].evidence["in_use_since"], SPIKE_TS);
    // The spike itself is unallocated_gpu_use's finding, not a second one.
    assert!(of(&f, "gpu_memory_spike").is_empty(), "{f:#?}");
}

#[test]
fn gpm_miner_loop_in_a_notebook_matches_and_resolves_the_fp32_loop_does_not() {
    let f = golden("gpm-miner-notebook");
    let m = of(&f, "miner_fingerprint");
    let st: Vec<(Status, Severity)> = m.iter().map(|f| (f.status, f.severity)).collect();
    assert_eq!(
        st,
        [
            (Status::Firing, Severity::High),
            (Status::Resolved, Severity::High)
        ],
        "{f:#?}"
    );
    assert_eq!(m[0].evidence["profiling_counters"], true);
    // Raised during the integer loop (50–119 s of the capture), resolved before the fp32 loop
    // (129–159 s) and not raised again for it.
    let t0 = 1_795_702_434_249_000_000_i64;
    let secs = |t: i64| (t - t0) as f64 / 1e9;
    assert!((50.0..119.0).contains(&secs(m[0].ts)), "{}", secs(m[0].ts));
    assert!(
        (119.0..129.0).contains(&secs(m[1].last_ts)),
        "{}",
        secs(m[1].last_ts)
    );
    // The loop's 2.6 GiB allocation over the serving level is a spike, resolved once freed.
    let spikes: Vec<(Status, Severity)> = of(&f, "gpu_memory_spike")
        .iter()
        .map(|f| (f.status, f.severity))
        .collect();
    assert_eq!(
        spikes,
        [
            (Status::Firing, Severity::Medium),
            (Status::Resolved, Severity::Medium)
        ],
        "{f:#?}"
    );
}

#[test]
fn gpm_capture_on_a_serving_pod_is_no_finding() {
    let f = golden("gpm-serving-pod");
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn gpm_capture_on_a_gpu_allocated_to_no_pod_is_critical() {
    let f = golden("gpm-unallocated");
    let u = of(&f, "unallocated_gpu_use");
    assert_eq!(
        u.first().map(|f| f.severity),
        Some(Severity::High),
        "{f:#?}"
    );
    assert!(
        u.iter().any(|f| f.severity == Severity::Critical),
        "escalates under sustained load: {f:#?}"
    );
    let m = raised(&f, "miner_fingerprint");
    assert_eq!(m.len(), 1, "{f:#?}");
    assert_eq!(m[0].severity, Severity::Critical);
    assert_eq!(m[0].role, Role::Unknown);
}
