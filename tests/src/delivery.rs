//! Helpers for delivery tests: findings, a `Delivery` started from TOML, accounting checks.

use std::path::Path;
use std::sync::Arc;

use gpusiem::config::Config;
use gpusiem::delivery::metrics::{Accounting, DeliveryMetrics};
use gpusiem::delivery::{Clock, Delivery, DeliveryContext};
use gpusiem_detect::role::Role;
use gpusiem_detect::{Finding, Severity, Status};
use tokio_util::sync::CancellationToken;

/// 2027-01-15T08:00:00Z in ns: a fixed event time.
pub const T0: i64 = 1_800_000_000_000_000_000;

/// One second in ns.
pub const SEC: i64 = 1_000_000_000;

/// A finding with a deterministic id.
pub fn finding(n: usize, detector: &str, namespace: &str, severity: Severity, at: i64) -> Finding {
    Finding {
        id: gpusiem_detect::finding::finding_id(detector, &format!("{namespace}/pod-{n}"), at),
        ts: at,
        last_ts: at,
        detector: detector.to_string(),
        severity,
        status: Status::Firing,
        revision: 0,
        summary: format!("GPU memory 0 → 25971 MiB on pod-{n}"),
        cluster: Some("prod-gpu".into()),
        namespace: Some(namespace.to_string()),
        pod: Some(format!("pod-{n}")),
        pod_uid: Some(format!("uid-{n}")),
        container: Some("main".into()),
        node: Some("gpu-node-1".into()),
        gpu_uuid: Some("GPU-716284d3-73df-565d-3003-77fb02fe2d00".into()),
        role: Role::NonGpu,
        role_reason: "no nvidia.com/gpu request".into(),
        mitre: vec!["T1496".into()],
        evidence: serde_json::json!({"fb_used_mib": 25971, "baseline_mib": 0}),
        event_ids: vec![format!("gpu_metrics:{n}@{at}")],
    }
}

/// `n` findings of one detector in one namespace, 10 ms apart.
pub fn findings(n: usize, detector: &str, namespace: &str, severity: Severity) -> Vec<Finding> {
    (0..n)
        .map(|i| finding(i, detector, namespace, severity, T0 + i as i64 * SEC / 100))
        .collect()
}

/// A running `Delivery` with its metrics and shutdown token.
pub struct Running {
    /// The service.
    pub delivery: Arc<Delivery>,
    /// Its metrics.
    pub metrics: DeliveryMetrics,
    /// Fire to stop the workers.
    pub shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Parses `toml` (sinks, notifiers, routing), validates it and starts delivery on `data_dir`.
pub async fn start(toml: &str, data_dir: &Path, clock: Clock) -> Running {
    let config = Config::parse(toml).unwrap_or_else(|e| panic!("config: {e}"));
    let problems = config.validate();
    assert!(problems.is_empty(), "config problems: {problems:?}");
    let metrics = DeliveryMetrics::default();
    let shutdown = CancellationToken::new();
    let cx = DeliveryContext {
        data_dir: data_dir.to_path_buf(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        clock,
    };
    let delivery = Delivery::start(&config.sinks, &config.notifiers, &config.routing, cx)
        .await
        .expect("starting delivery");
    Running {
        delivery,
        metrics,
        shutdown,
    }
}

/// The accounting of `target` once nothing is queued (waits up to 10 s). A fake receiver
/// stores what it was sent before the sender has read the answer and counted it: asserting on
/// the counters the moment the receiver has everything races with that.
pub async fn settled(run: &Running, target: &str) -> Accounting {
    crate::fakes::wait_until(std::time::Duration::from_secs(10), || {
        run.metrics.accounting(target).queued == 0
    })
    .await;
    run.metrics.accounting(target)
}

/// Lines of a dead-letter file as JSON.
pub fn dead_letters(data_dir: &Path, target: &str) -> Vec<serde_json::Value> {
    let name: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::read_to_string(data_dir.join("dead-letter").join(format!("{name}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead-letter line is JSON"))
        .collect()
}

/// Asserts `received = delivered + queued + dead_lettered + dropped` for every target. The
/// counters are updated one after the other, so this waits (up to 5 s) for a moment when they
/// agree, and fails if they never do.
pub async fn assert_balanced(r: &Running) {
    for t in r.delivery.targets() {
        let ok = crate::fakes::wait_until(std::time::Duration::from_secs(5), || {
            r.metrics.accounting(&t).balanced()
        })
        .await;
        assert!(ok, "{t}: {:?}", r.metrics.accounting(&t));
    }
}
