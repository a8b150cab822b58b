//! Durability of delivery: kill -9 with a full outbox and the receivers down, then a restart
//! with them up (at-least-once, nothing twice at Elasticsearch or PagerDuty); a corrupted and
//! a truncated outbox segment (row R12); the accounting invariant (R15).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gpusiem::delivery::{Clock, outbox_dir};
use gpusiem_detect::Severity;
use gpusiem_tests::delivery::{assert_balanced, findings, start};
use gpusiem_tests::fakes::elasticsearch::FakeElasticsearch;
use gpusiem_tests::fakes::loki::FakeLoki;
use gpusiem_tests::fakes::pagerduty::FakePagerDuty;
use gpusiem_tests::fakes::{free_port, wait_until};
use gpusiem_tests::gpusiem_bin;

/// dcgm-exporter text in which each of `pods` pods' GPU memory jumps from 0 to 25 GiB after a
/// minute at zero: one `gpu_memory_spike` finding per pod.
fn spikes(pods: usize) -> String {
    let mut out = String::new();
    let t0_ms: i64 = 1_795_699_109_479;
    for step in 0..40i64 {
        for p in 0..pods {
            let value = if step < 30 { 0 } else { 25_715 };
            out.push_str(&format!(
                "DCGM_FI_DEV_FB_USED{{gpu=\"{g}\",UUID=\"GPU-716284d3-73df-565d-3003-{p:012}\",device=\"nvidia{g}\",modelName=\"NVIDIA H200\",Hostname=\"gpu-node-{n}\",container=\"web\",namespace=\"ns-{ns}\",pod=\"web-{p}\"}} {value} {ts}\n",
                g = p % 8,
                n = p / 8,
                ns = p % 5,
                ts = t0_ms + step * 1000,
            ));
        }
    }
    out
}

fn findings_file(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("findings")
        .lines()
        .map(|l| serde_json::from_str(l).expect("finding json"))
        .collect()
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_receivers_down_then_restart_delivers_everything_once() {
    let bin = gpusiem_bin();
    let dir = tempfile::tempdir().expect("tmp");
    let dcgm = dir.path().join("spikes.prom");
    std::fs::write(&dcgm, spikes(60)).expect("dcgm");

    // The findings an uninterrupted replay raises.
    let expected_file = dir.path().join("expected.jsonl");
    let out = Command::new(&bin)
        .args(["replay", "--dcgm"])
        .arg(&dcgm)
        .arg("--findings")
        .arg(&expected_file)
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = findings_file(&expected_file);
    assert!(!expected.is_empty(), "the spikes raise findings");
    let expected_ids: BTreeSet<String> = expected
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_string())
        .collect();

    // Receivers are down: nothing listens on these ports yet.
    let (loki_addr, es_addr, pd_addr) = (free_port(), free_port(), free_port());
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("pd-key"),
        "R0UTINGKEY0123456789abcdef012345",
    )
    .expect("key");
    let config = dir.path().join("gpusiem.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
data_dir = "{data}"

[[sinks]]
type = "loki"
url = "http://{loki_addr}"
allow_loopback = true
request = {{ retry_initial_ms = 100, retry_max_secs = 1 }}

[[sinks]]
type = "elasticsearch"
url = "http://{es_addr}"
allow_loopback = true
request = {{ retry_initial_ms = 100, retry_max_secs = 1 }}

[[notifiers]]
type = "pagerduty"
routing_key_file = "{key}"
url = "http://{pd_addr}/v2/enqueue"
min_severity = "info"
allow_loopback = true
request = {{ retry_initial_ms = 100, retry_max_secs = 1 }}
"#,
            data = data.display(),
            key = dir.path().join("pd-key").display(),
        ),
    )
    .expect("config");

    // First run: everything goes into the outboxes; the receivers never answer; kill -9 once
    // the replay waits for delivery.
    let mut child = Command::new(&bin)
        .args(["replay", "--dcgm"])
        .arg(&dcgm)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("delivery draining") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the replay reached the drain");
    // Let the router group and queue the notifications too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    for target in ["sink:loki", "sink:elasticsearch", "router"] {
        assert!(
            segments(&outbox_dir(&data, target)) > 0,
            "{target} outbox is empty after the kill"
        );
    }

    // Receivers come up; a replay with no input delivers what the outboxes hold and exits.
    let loki = FakeLoki::start(loki_addr).await;
    let es = FakeElasticsearch::start(es_addr).await;
    let pd = FakePagerDuty::start(pd_addr).await;
    let restart = tokio::process::Command::new(&bin)
        .arg("replay")
        .arg("--config")
        .arg(&config)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), restart)
        .await
        .expect("the restart finished")
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let es_ids: BTreeSet<String> = es.docs().keys().cloned().collect();
    assert!(
        expected_ids.is_subset(&es_ids),
        "missing at Elasticsearch: {:?}",
        expected_ids.difference(&es_ids).collect::<Vec<_>>()
    );
    assert_eq!(es.max_creations_per_id(), 1);
    let loki_ids: BTreeSet<String> = loki
        .stored_findings()
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect();
    assert!(expected_ids.is_subset(&loki_ids), "missing at Loki");
    let incidents = pd.incidents();
    assert!(!incidents.is_empty());
    let keys: BTreeSet<&str> = incidents.iter().map(|i| i.dedup_key.as_str()).collect();
    assert_eq!(keys.len(), incidents.len(), "one incident per dedup_key");
    let groups: BTreeSet<(String, String)> = expected
        .iter()
        .map(|f| {
            (
                f["detector"].as_str().unwrap_or_default().to_string(),
                f["namespace"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        incidents.len(),
        groups.len(),
        "one incident per (detector, namespace) group"
    );
    assert!(pd.events().iter().all(|e| e.status == 202));
    for t in [
        "sink:loki",
        "sink:elasticsearch",
        "router",
        "notifier:pagerduty",
    ] {
        assert_eq!(
            segments(&outbox_dir(&data, t)).saturating_sub(1),
            0,
            "{t}: settled segments are deleted"
        );
    }

    // Replaying the same input again (receivers up) changes nothing downstream.
    let again = tokio::process::Command::new(&bin)
        .args(["replay", "--dcgm"])
        .arg(&dcgm)
        .arg("--config")
        .arg(&config)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), again)
        .await
        .expect("the second replay finished")
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(es.max_creations_per_id(), 1);
    assert_eq!(es.docs().len(), es_ids.len());
    assert_eq!(
        pd.incidents().len(),
        incidents.len(),
        "the same dedup_keys: no new incident"
    );
}

#[tokio::test]
async fn a_corrupted_and_a_truncated_segment_lose_only_the_damaged_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let es_addr = free_port();
    let cfg = format!(
        r#"
[[sinks]]
type = "elasticsearch"
url = "http://{es_addr}"
allow_loopback = true
install_template = false
request = {{ retry_initial_ms = 50, retry_max_secs = 1 }}
buffer = {{ segment_max_bytes = 65536 }}
"#
    );
    let all = findings(300, "gpu_memory_spike", "shop", Severity::High);
    {
        // Receiver down: the findings stay in the outbox, in several segments.
        let run = start(&cfg, dir.path(), Clock::Wall).await;
        for chunk in all.chunks(100) {
            run.delivery.enqueue(chunk).await.expect("enqueue");
        }
        assert_eq!(run.metrics.accounting("sink:elasticsearch").queued, 300);
        run.shutdown.cancel();
        run.delivery.stopped().await;
    }
    let outbox = outbox_dir(dir.path(), "sink:elasticsearch");
    let mut segs: Vec<_> = std::fs::read_dir(&outbox)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    // Flip a byte inside the first segment (in some record's payload) and cut the last one
    // in the middle of its last record.
    let mut first = std::fs::read(&segs[0]).expect("read");
    let mid = first.len() / 2;
    first[mid] ^= 0x5a;
    std::fs::write(&segs[0], &first).expect("write");
    let last = segs.last().expect("last");
    let len = std::fs::metadata(last).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open")
        .set_len(len - 7)
        .expect("truncate");

    let es = FakeElasticsearch::start(es_addr).await;
    let run = start(&cfg, dir.path(), Clock::Wall).await;
    assert!(
        wait_until(Duration::from_secs(20), || run
            .metrics
            .accounting("sink:elasticsearch")
            .queued
            == 0)
        .await
    );
    let a = run.metrics.accounting("sink:elasticsearch");
    assert_eq!(
        a.dropped, 2,
        "one corrupt record and one truncated record: {a:?}"
    );
    assert_eq!(a.received, 300);
    assert_eq!(a.delivered, 298);
    assert_eq!(es.doc_count(), 298);
    let lost: Vec<&str> = all
        .iter()
        .map(|f| f.id.as_str())
        .filter(|id| !es.docs().contains_key(*id))
        .collect();
    assert_eq!(lost.len(), 2);
    assert_eq!(lost[1], all[299].id, "the truncated record is the last one");
    // The loss is exported under its reason, and a registered target shows every reason at 0
    // from the start.
    let m = gpusiem::metrics::Metrics::new();
    let t = m.delivery.target("sink:elasticsearch");
    t.dropped(gpusiem::delivery::metrics::DropReason::Corrupt, a.dropped);
    let text = m.render();
    assert!(
        text.contains(
            r#"gpusiem_delivery_dropped_total{target="sink:elasticsearch",reason="corrupt"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"gpusiem_delivery_dead_lettered_total{target="sink:elasticsearch",reason="rejected"} 0"#), "{text}");
    assert_balanced(&run).await;
}
