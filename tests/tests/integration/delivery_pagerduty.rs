//! Contract tests of the PagerDuty notifier against the fake Events API v2 (formats.md §4.4,
//! row R8).

use std::time::Duration;

use gpusiem::delivery::Clock;
use gpusiem_detect::{Severity, Status};
use gpusiem_tests::delivery::{SEC, T0, assert_balanced, dead_letters, finding, settled, start};
use gpusiem_tests::fakes::pagerduty::{FakePagerDuty, Reply};
use gpusiem_tests::fakes::{any_port, wait_until};

const WAIT: Duration = Duration::from_secs(15);
const KEY: &str = "R0UTINGKEY0123456789abcdef012345";

fn config(dir: &std::path::Path, url: &str, key: &str) -> String {
    std::fs::write(dir.join("pd-routing-key"), key).expect("secret");
    format!(
        r#"
[[notifiers]]
type = "pagerduty"
routing_key_file = "{}"
url = "{url}"
min_severity = "high"
allow_loopback = true
request = {{ retry_initial_ms = 50, retry_max_secs = 2 }}

[routing]
group_wait_secs = 0
group_interval_secs = 1
"#,
        dir.join("pd-routing-key").display()
    )
}

#[tokio::test]
async fn trigger_then_resolve_one_incident_per_group_key() {
    let pd = FakePagerDuty::start(any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(dir.path(), &pd.url(), KEY), dir.path(), Clock::Wall).await;
    let f = finding(1, "miner_fingerprint", "research", Severity::Critical, T0);
    run.delivery
        .enqueue(std::slice::from_ref(&f))
        .await
        .expect("enqueue");
    assert!(wait_until(WAIT, || pd.events().len() == 1).await);
    let mut done = f.clone();
    done.status = Status::Resolved;
    done.revision = 1;
    done.last_ts = T0 + 60 * SEC;
    run.delivery.enqueue(&[done]).await.expect("enqueue");
    assert!(wait_until(WAIT, || pd.events().len() == 2).await);

    let events = pd.events();
    assert!(
        events.iter().all(|e| e.status == 202),
        "{:?}",
        events.iter().map(|e| &e.body).collect::<Vec<_>>()
    );
    let (t, r) = (&events[0].body, &events[1].body);
    assert_eq!(t["event_action"], "trigger");
    assert_eq!(t["routing_key"], KEY);
    assert_eq!(t["payload"]["severity"], "critical");
    assert_eq!(t["payload"]["source"], "prod-gpu");
    assert!(
        t["payload"]["summary"]
            .as_str()
            .expect("summary")
            .starts_with("[FIRING:1] miner_fingerprint")
    );
    assert_eq!(
        t["payload"]["custom_details"]["findings"][0]["id"],
        f.id.as_str()
    );
    let key = t["dedup_key"].as_str().expect("dedup_key");
    assert_eq!(key.len(), 64);
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(r["dedup_key"], key);
    let incidents = pd.incidents();
    assert_eq!(incidents.len(), 1);
    assert!(incidents[0].resolved);
    assert_balanced(&run).await;
}

#[tokio::test]
async fn server_errors_and_429_are_retried_with_the_same_dedup_key() {
    let pd = FakePagerDuty::start(any_port()).await;
    pd.script.push([
        Reply::Status(500, serde_json::json!({"status": "error"})),
        Reply::Status(500, serde_json::json!({"status": "error"})),
        Reply::Throttled(Some(1)),
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(dir.path(), &pd.url(), KEY), dir.path(), Clock::Wall).await;
    run.delivery
        .enqueue(&[finding(
            1,
            "miner_fingerprint",
            "research",
            Severity::Critical,
            T0,
        )])
        .await
        .expect("enqueue");
    assert!(wait_until(WAIT, || pd.events().iter().any(|e| e.status == 202)).await);
    let events = pd.events();
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [500, 500, 429, 202]
    );
    let keys: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.body["dedup_key"].as_str())
        .collect();
    assert_eq!(keys.len(), 1, "every attempt carries the same dedup_key");
    assert!(
        events[3].at - events[2].at >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
    assert_eq!(pd.incidents().len(), 1);
    let a = settled(&run, "notifier:pagerduty").await;
    assert_eq!((a.received, a.delivered, a.retries), (1, 1, 3));
    assert_balanced(&run).await;
}

#[tokio::test]
async fn invalid_event_400_is_dead_lettered_once() {
    let pd = FakePagerDuty::start(any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    // A routing key PagerDuty refuses (not 32 characters).
    let run = start(
        &config(dir.path(), &pd.url(), "short-key"),
        dir.path(),
        Clock::Wall,
    )
    .await;
    run.delivery
        .enqueue(&[finding(
            1,
            "miner_fingerprint",
            "research",
            Severity::Critical,
            T0,
        )])
        .await
        .expect("enqueue");
    assert!(
        wait_until(WAIT, || run
            .metrics
            .accounting("notifier:pagerduty")
            .dead_lettered
            == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pd.events().len(), 1, "a 400 is not retried");
    let dead = dead_letters(dir.path(), "notifier:pagerduty");
    assert_eq!(dead[0]["reason"], "rejected");
    assert!(
        dead[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("invalid event")
    );
    assert!(
        !dead[0].to_string().contains("short-key"),
        "the routing key (a secret) is never written"
    );
    assert_balanced(&run).await;
}
