//! Contract tests of the Loki sink against the fake Loki (formats.md §4.1, test row R7).

use std::collections::BTreeSet;
use std::time::Duration;

use gpusiem::delivery::Clock;
use gpusiem_detect::Severity;
use gpusiem_tests::delivery::{Running, assert_balanced, dead_letters, findings, settled, start};
use gpusiem_tests::fakes::loki::{FakeLoki, Reply};
use gpusiem_tests::fakes::{any_port, wait_until};

fn config(url: &str, encoding: &str) -> String {
    format!(
        r#"
[[sinks]]
type = "loki"
url = "{url}"
tenant = "gpu-platform"
encoding = "{encoding}"
allow_loopback = true
batch = {{ max_items = 100, timeout_ms = 20 }}
request = {{ retry_initial_ms = 50, retry_max_secs = 2 }}
"#
    )
}

const WAIT: Duration = Duration::from_secs(15);

async fn push_contract(encoding: &str) {
    let loki = FakeLoki::start(any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(&loki.url(), encoding), dir.path(), Clock::Wall).await;
    let mut batch = findings(40, "gpu_memory_spike", "shop", Severity::High);
    batch.extend(findings(
        10,
        "miner_fingerprint",
        "research",
        Severity::Critical,
    ));
    // Hostile and oversized values stay out of labels and under the line limit.
    batch[0].pod = Some("<!channel> \"}{evil=\"1".into());
    batch[1].evidence = serde_json::json!({"blob": "x".repeat(400_000)});
    batch[2].namespace = None;
    run.delivery.enqueue(&batch).await.expect("enqueue");
    assert!(
        wait_until(WAIT, || loki.stored_entries() == 50).await,
        "stored {}",
        loki.stored_entries()
    );

    let pushes = loki.pushes();
    let allowed: BTreeSet<&str> = ["source", "severity", "detector", "namespace"].into();
    for p in &pushes {
        assert_eq!(p.status, 204);
        assert_eq!(p.tenant.as_deref(), Some("gpu-platform"));
        assert!(p.string_timestamps);
        assert!(p.content_type.starts_with(if encoding == "json" {
            "application/json"
        } else {
            "application/x-protobuf"
        }));
        for (labels, entry) in p.entries() {
            assert!(
                labels.keys().all(|k| allowed.contains(k.as_str())),
                "{labels:?}"
            );
            assert_eq!(labels["source"], "gpusiem");
            assert!(entry.line.len() <= 256 * 1024);
            assert!(entry.metadata.contains_key("finding_id"));
        }
    }
    // Each entry: event time, the finding as the line, pod and GPU in structured metadata.
    let by_id: std::collections::HashMap<&str, &gpusiem_detect::Finding> =
        batch.iter().map(|f| (f.id.as_str(), f)).collect();
    let mut seen = 0;
    for p in &pushes {
        for (labels, e) in p.entries() {
            let f = by_id[e.metadata["finding_id"].as_str()];
            assert_eq!(e.ts, f.last_ts);
            assert_eq!(e.metadata.get("pod"), f.pod.as_ref());
            assert_eq!(e.metadata.get("gpu_uuid"), f.gpu_uuid.as_ref());
            assert_eq!(labels.get("namespace"), f.namespace.as_ref());
            let line: serde_json::Value = serde_json::from_str(&e.line).expect("line is JSON");
            assert_eq!(line["id"], f.id.as_str());
            seen += 1;
        }
    }
    assert_eq!(seen, 50);
    let a = settled(&run, "sink:loki").await;
    assert_eq!((a.received, a.delivered, a.queued), (50, 50, 0));
    assert_balanced(&run).await;
}

#[tokio::test]
async fn json_push_has_fixed_labels_string_timestamps_and_tenant() {
    push_contract("json").await;
}

#[tokio::test]
async fn protobuf_snappy_push_carries_the_same_streams() {
    push_contract("protobuf").await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_with_backoff() {
    let loki = FakeLoki::start(any_port()).await;
    loki.script.push([
        Reply::rate_limited(),
        Reply::Status(500, "internal".into()),
        Reply::Status(503, "unavailable".into()),
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(&loki.url(), "json"), dir.path(), Clock::Wall).await;
    run.delivery
        .enqueue(&findings(5, "gpu_memory_spike", "shop", Severity::High))
        .await
        .expect("enqueue");
    assert!(wait_until(WAIT, || loki.stored_entries() == 5).await);
    let pushes = loki.pushes();
    assert_eq!(
        pushes.iter().map(|p| p.status).collect::<Vec<_>>(),
        [429, 500, 503, 204]
    );
    // The same entries every time (event-time timestamps: Loki de-duplicates a re-send).
    for p in &pushes[1..] {
        assert_eq!(p.streams, pushes[0].streams);
    }
    // Backoff 50 ms → 100 → 200 (each jittered down by at most a quarter).
    let gaps: Vec<Duration> = pushes.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, base) in gaps.iter().zip([50u64, 100, 200]) {
        assert!(*gap >= Duration::from_millis(base * 3 / 4), "{gaps:?}");
    }
    let a = settled(&run, "sink:loki").await;
    assert_eq!(
        (a.delivered, a.retries, a.dead_lettered, a.dropped),
        (5, 3, 0, 0)
    );
    assert_balanced(&run).await;
}

/// A fake Loki that answers with `replies` first, and `n` findings enqueued for it.
async fn scripted(
    replies: impl IntoIterator<Item = Reply>,
    n: usize,
) -> (FakeLoki, tempfile::TempDir, Running) {
    let loki = FakeLoki::start(any_port()).await;
    loki.script.push(replies);
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(&loki.url(), "json"), dir.path(), Clock::Wall).await;
    run.delivery
        .enqueue(&findings(n, "gpu_memory_spike", "shop", Severity::High))
        .await
        .expect("enqueue");
    (loki, dir, run)
}

async fn refused_once(reply: Reply, why: &str) {
    let (loki, dir, run) = scripted([reply], 5).await;
    assert!(
        wait_until(WAIT, || run.metrics.accounting("sink:loki").dead_lettered
            == 5)
        .await
    );
    // Later findings still go through.
    run.delivery
        .enqueue(&findings(
            3,
            "miner_fingerprint",
            "research",
            Severity::High,
        ))
        .await
        .expect("enqueue");
    assert!(wait_until(WAIT, || loki.stored_entries() == 3).await);
    let pushes = loki.pushes();
    assert_eq!(pushes.len(), 2, "the refused batch is sent exactly once");
    let dead = dead_letters(dir.path(), "sink:loki");
    assert_eq!(dead.len(), 5);
    assert!(
        dead.iter()
            .all(|d| d["reason"] == "rejected"
                && d["detail"].as_str().is_some_and(|s| s.contains(why))),
        "{dead:?}"
    );
    assert!(dead[0]["item"]["id"].is_string());
    let a = settled(&run, "sink:loki").await;
    assert_eq!(
        (a.received, a.delivered, a.dead_lettered, a.retries),
        (8, 3, 5, 0)
    );
    assert_balanced(&run).await;
}

#[tokio::test]
async fn out_of_order_400_is_dead_lettered_not_retried() {
    refused_once(Reply::out_of_order(), "entry out of order").await;
}

#[tokio::test]
async fn too_far_behind_400_is_dead_lettered_not_retried() {
    refused_once(
        Reply::Status(400, gpusiem_tests::fakes::loki::TOO_FAR_BEHIND.into()),
        "too far behind",
    )
    .await;
}

#[tokio::test]
async fn request_too_large_413_is_sent_again_in_halves() {
    // The whole batch and then its first half are too large; the rest fits.
    let (loki, _dir, run) = scripted([Reply::too_large(), Reply::too_large()], 5).await;
    assert!(wait_until(WAIT, || loki.stored_entries() == 5).await);
    let sizes: Vec<usize> = loki.pushes().iter().map(|p| p.entries().count()).collect();
    // 5 refused, 2 refused, then 1 + 1 + 3: every finding once, in order.
    assert_eq!(sizes, [5, 2, 1, 1, 3]);
    let a = settled(&run, "sink:loki").await;
    assert_eq!(
        (a.received, a.delivered, a.dead_lettered, a.retries),
        (5, 5, 0, 0)
    );
    assert_balanced(&run).await;
}

#[tokio::test]
async fn a_single_finding_refused_as_too_large_is_dead_lettered() {
    let (loki, dir, run) = scripted([Reply::too_large()], 1).await;
    assert!(
        wait_until(WAIT, || run.metrics.accounting("sink:loki").dead_lettered
            == 1)
        .await
    );
    let dead = dead_letters(dir.path(), "sink:loki");
    assert!(
        dead.len() == 1
            && dead[0]["reason"] == "rejected"
            && dead[0]["detail"]
                .as_str()
                .is_some_and(|s| s.contains("413")),
        "{dead:?}"
    );
    assert_eq!(loki.pushes().len(), 1);
    assert_balanced(&run).await;
}
