//! Delivery throughput and latency: findings through the durable outboxes (fsync on) to a
//! local fake Elasticsearch and fake Loki on loopback.
//!
//! ```text
//! cargo bench -p gpusiem --bench delivery [-- --findings 200000 --rate 50000]
//! ```
//!
//! Two runs, both with two sinks (Elasticsearch `_bulk` and Loki push), each finding written to
//! both outboxes (`fdatasync` per append) before `enqueue` returns:
//!
//! * **throughput**: the producer enqueues batches of 1000 as fast as `enqueue` allows;
//!   findings/s = findings / time from the first enqueue until both sinks acknowledged all.
//! * **latency**: the producer paces batches of 500 at `--rate` findings/s; for each finding,
//!   the time from just before its `enqueue` (the finding is raised) until the fake
//!   Elasticsearch answered the request carrying it (the sink acknowledged it): p50, p99, max.
//!
//! The fakes run in the same process (they share the cores: on a 2-core machine the figures
//! are a floor). Prints one JSON line per run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gpusiem::config::Config;
use gpusiem::delivery::metrics::DeliveryMetrics;
use gpusiem::delivery::{Clock, Delivery, DeliveryContext};
use gpusiem_detect::role::Role;
use gpusiem_detect::{Finding, Severity, Status};
use tokio_util::sync::CancellationToken;

/// Request bodies the fake receivers accept, as the real ones do (Elasticsearch's
/// `http.max_content_length` and Loki's `max_recv_msg_size` are both 100 MiB by default);
/// axum's own default of 2 MiB would refuse the benchmark's 8 MiB batches with 413.
const RECEIVER_BODY_LIMIT: usize = 100 << 20;

#[derive(Default)]
struct Acks {
    /// (answer time, finding sequence numbers) per bulk request.
    es: Mutex<Vec<(Instant, Vec<u64>)>>,
    loki_requests: AtomicU64,
}

fn finding(n: u64, now_ns: i64) -> Finding {
    Finding {
        id: format!("{n:032x}"),
        ts: now_ns,
        last_ts: now_ns,
        detector: if n.is_multiple_of(3) {
            "miner_fingerprint"
        } else {
            "gpu_memory_spike"
        }
        .into(),
        severity: Severity::High,
        status: Status::Firing,
        revision: 0,
        summary: format!(
            "GPU memory on GPU-716284d3 rose 25715 MiB over its baseline of 0 MiB within 0.501 s on pod shop/web-{}",
            n % 97
        ),
        cluster: Some("prod-gpu".into()),
        namespace: Some(format!("ns-{}", n % 7)),
        pod: Some(format!("web-{}", n % 97)),
        pod_uid: Some("5f0c7d1e-2b7a-4c1e-9a55-0d3c6f1e8b21".into()),
        container: Some("web".into()),
        node: Some(format!("gpu-node-{}", n % 13)),
        gpu_uuid: Some("GPU-716284d3-73df-565d-3003-77fb02fe2d00".into()),
        role: Role::NonGpu,
        role_reason: "no nvidia.com/gpu request".into(),
        mitre: vec!["T1496".into()],
        evidence: serde_json::json!({"baseline_mib": 0.0, "peak_mib": 25715.0, "deviations": 401.8, "window_secs": 120}),
        event_ids: vec![format!(
            "gpu_metrics:GPU-716284d3/shop/web-{}@{now_ns}",
            n % 97
        )],
    }
}

#[derive(serde::Deserialize)]
struct Action {
    create: Meta,
}

#[derive(serde::Deserialize)]
struct Meta {
    #[serde(rename = "_id")]
    id: String,
}

async fn es_bulk(State(acks): State<Arc<Acks>>, body: Bytes) -> impl IntoResponse {
    let mut ids = Vec::new();
    let mut items = String::from("{\"took\":1,\"errors\":false,\"items\":[");
    for (i, line) in body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .step_by(2)
        .enumerate()
    {
        if let Ok(a) = serde_json::from_slice::<Action>(line) {
            ids.push(u64::from_str_radix(&a.create.id, 16).unwrap_or(u64::MAX));
        }
        if i > 0 {
            items.push(',');
        }
        items.push_str("{\"create\":{\"status\":201}}");
    }
    items.push_str("]}");
    acks.es
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((Instant::now(), ids));
    ([("content-type", "application/json")], items)
}

async fn es_template() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        "{\"acknowledged\":true}",
    )
}

async fn loki_push(State(acks): State<Arc<Acks>>, _body: Bytes) -> impl IntoResponse {
    acks.loki_requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    addr
}

struct Run {
    delivery: Arc<Delivery>,
    metrics: DeliveryMetrics,
    acks: Arc<Acks>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn setup() -> Run {
    let acks = Arc::new(Acks::default());
    let es = serve(
        axum::Router::new()
            .route("/_bulk", axum::routing::post(es_bulk))
            .route("/_index_template/{name}", axum::routing::put(es_template))
            .layer(DefaultBodyLimit::max(RECEIVER_BODY_LIMIT))
            .with_state(acks.clone()),
    )
    .await;
    let loki = serve(
        axum::Router::new()
            .route("/loki/api/v1/push", axum::routing::post(loki_push))
            .layer(DefaultBodyLimit::max(RECEIVER_BODY_LIMIT))
            .with_state(acks.clone()),
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let toml = format!(
        r#"
[[sinks]]
type = "elasticsearch"
url = "http://{es}"
allow_loopback = true
batch = {{ max_items = 5000, max_bytes = 8388608, timeout_ms = 5 }}
buffer = {{ max_bytes = 1073741824, segment_max_bytes = 67108864 }}

[[sinks]]
type = "loki"
url = "http://{loki}"
allow_loopback = true
batch = {{ max_items = 5000, max_bytes = 8388608, timeout_ms = 5 }}
buffer = {{ max_bytes = 1073741824, segment_max_bytes = 67108864 }}
"#
    );
    let config = Config::parse(&toml).expect("config");
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let metrics = DeliveryMetrics::default();
    let shutdown = CancellationToken::new();
    let cx = DeliveryContext {
        data_dir: dir.path().to_path_buf(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        clock: Clock::Wall,
    };
    let delivery = Delivery::start(&config.sinks, &config.notifiers, &config.routing, cx)
        .await
        .expect("delivery");
    Run {
        delivery,
        metrics,
        acks,
        shutdown,
        _dir: dir,
    }
}

fn delivered(r: &Run) -> (u64, u64) {
    (
        r.metrics.accounting("sink:elasticsearch").delivered,
        r.metrics.accounting("sink:loki").delivered,
    )
}

/// Waits until both sinks acknowledged all `n`; a finding that settles otherwise (dead-lettered,
/// dropped) or a stall of 60 s ends the benchmark with the accounting, not a hang.
async fn wait_all(r: &Run, n: u64) {
    let mut last = (delivered(r), Instant::now());
    while delivered(r).0 < n || delivered(r).1 < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = delivered(r);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let es = r.metrics.accounting("sink:elasticsearch");
        let loki = r.metrics.accounting("sink:loki");
        let lost = es.dead_lettered + es.dropped + loki.dead_lettered + loki.dropped;
        if lost > 0 || last.1.elapsed() > Duration::from_secs(60) {
            eprintln!("delivery stalled or lost findings: elasticsearch {es:?}, loki {loki:?}");
            std::process::exit(1);
        }
    }
}

fn now_ns() -> i64 {
    gpusiem_ingest::source::now_nanos()
}

async fn throughput(n: u64) {
    let r = setup().await;
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Finding> = (i..(i + 1000).min(n))
            .map(|k| finding(k, now_ns()))
            .collect();
        r.delivery.enqueue(&batch).await.expect("enqueue");
        i += batch.len() as u64;
    }
    let enqueued = start.elapsed();
    wait_all(&r, n).await;
    let elapsed = start.elapsed();
    if delivered(&r) != (n, n) {
        eprintln!(
            "more acknowledged than sent (elasticsearch, loki): {:?}",
            delivered(&r)
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "run": "throughput", "findings": n, "sinks": 2,
            "findings_per_sec": (n as f64 / elapsed.as_secs_f64()).round(),
            "enqueue_findings_per_sec": (n as f64 / enqueued.as_secs_f64()).round(),
            "elapsed_secs": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "es_requests": r.acks.es.lock().map(|v| v.len()).unwrap_or(0),
            "loki_requests": r.acks.loki_requests.load(Ordering::Relaxed),
        })
    );
    r.shutdown.cancel();
}

async fn latency(n: u64, rate: u64) {
    let r = setup().await;
    let batch = 500u64;
    let every = Duration::from_secs_f64(batch as f64 / rate as f64);
    let mut raised = vec![Instant::now(); n as usize];
    let start = Instant::now();
    let mut i = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while i < n {
        tick.tick().await;
        let t = Instant::now();
        let end = (i + batch).min(n);
        let findings: Vec<Finding> = (i..end).map(|k| finding(k, now_ns())).collect();
        for k in i..end {
            raised[k as usize] = t;
        }
        r.delivery.enqueue(&findings).await.expect("enqueue");
        i = end;
    }
    wait_all(&r, n).await;
    let elapsed = start.elapsed();
    let mut lat: Vec<f64> = Vec::with_capacity(n as usize);
    for (at, ids) in r.acks.es.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        for id in ids {
            if let Some(t) = raised.get(*id as usize) {
                lat.push(at.duration_since(*t).as_secs_f64() * 1000.0);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        serde_json::json!({
            "run": "latency", "findings": n, "target_rate": rate, "sinks": 2,
            "achieved_findings_per_sec": (n as f64 / elapsed.as_secs_f64()).round(),
            "p50_ms": (q(0.5) * 100.0).round() / 100.0,
            "p99_ms": (q(0.99) * 100.0).round() / 100.0,
            "max_ms": (q(1.0) * 100.0).round() / 100.0,
        })
    );
    r.shutdown.cancel();
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let n = arg("--findings", if quick { 5_000 } else { 200_000 });
    let rate = arg("--rate", 50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        throughput(n).await;
        latency(n, rate).await;
    });
}
