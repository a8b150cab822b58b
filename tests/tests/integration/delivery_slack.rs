//! Contract tests of the Slack notifier against the fake Slack (formats.md §4.3, rows R8, S8).

use std::time::Duration;

use gpusiem::delivery::Clock;
use gpusiem_detect::Severity;
use gpusiem_tests::delivery::{
    T0, assert_balanced, dead_letters, finding, findings, settled, start,
};
use gpusiem_tests::fakes::slack::{FakeSlack, Reply};
use gpusiem_tests::fakes::{any_port, wait_until};

const WAIT: Duration = Duration::from_secs(15);

fn config(dir: &std::path::Path, url: &str, min_interval_ms: u64, routing: &str) -> String {
    std::fs::write(dir.join("slack-webhook"), format!("{url}\n")).expect("secret");
    format!(
        r#"
[[notifiers]]
type = "slack"
webhook_url_file = "{}"
min_severity = "high"
min_interval_ms = {min_interval_ms}
allow_loopback = true
request = {{ retry_initial_ms = 50, retry_max_secs = 2 }}

[routing]
group_wait_secs = 0
group_interval_secs = 1
{routing}
"#,
        dir.join("slack-webhook").display()
    )
}

#[tokio::test]
async fn message_has_text_and_blocks_and_untrusted_text_is_escaped() {
    let slack = FakeSlack::start(any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(
        &config(dir.path(), &slack.webhook_url(), 1000, ""),
        dir.path(),
        Clock::Wall,
    )
    .await;
    let mut f = finding(1, "exec_into_gpu_pod", "shop", Severity::Critical, T0);
    f.summary =
        "shell in <http://evil.example|payroll> by <!channel> & <@U024BE7LH> \x1b[31m".into();
    f.pod = Some("<!here>".into());
    // Below min_severity: not notified.
    let low = finding(2, "gpu_memory_spike", "shop", Severity::Medium, T0);
    run.delivery.enqueue(&[f, low]).await.expect("enqueue");
    assert!(wait_until(WAIT, || slack.accepted().len() == 1).await);
    let m = &slack.accepted()[0];
    assert!(m.path.starts_with("/services/"));
    let text = m.body.to_string();
    assert!(
        m.body["text"]
            .as_str()
            .expect("text fallback")
            .contains("[FIRING:1] exec_into_gpu_pod")
    );
    assert!(m.body["blocks"].as_array().is_some_and(|b| !b.is_empty()));
    for bad in [
        "<!channel>",
        "<!here>",
        "<@U024BE7LH>",
        "<http://evil",
        "\\u001b",
    ] {
        assert!(!text.contains(bad), "{bad} reached Slack: {text}");
    }
    assert!(text.contains("&lt;!channel&gt;") && text.contains("&amp;"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slack.messages().len(),
        1,
        "the medium finding is below min_severity"
    );
    assert_balanced(&run).await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_messages_are_paced() {
    let slack = FakeSlack::start(any_port()).await;
    slack.script.push([Reply::RateLimited(1)]);
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(
        &config(dir.path(), &slack.webhook_url(), 300, ""),
        dir.path(),
        Clock::Wall,
    )
    .await;
    // Two groups (two namespaces): two messages.
    run.delivery
        .enqueue(&[
            finding(1, "miner_fingerprint", "research", Severity::Critical, T0),
            finding(2, "miner_fingerprint", "shop", Severity::Critical, T0),
        ])
        .await
        .expect("enqueue");
    assert!(wait_until(WAIT, || slack.accepted().len() == 2).await);
    let all = slack.messages();
    assert_eq!(
        all.iter().map(|m| m.status).collect::<Vec<_>>(),
        [429, 200, 200]
    );
    assert!(
        all[1].at - all[0].at >= Duration::from_secs(1),
        "waited less than Retry-After: {:?}",
        all[1].at - all[0].at
    );
    assert!(
        all[2].at - all[1].at >= Duration::from_millis(300),
        "min_interval_ms not kept"
    );
    let a = settled(&run, "notifier:slack").await;
    assert_eq!((a.received, a.delivered, a.retries), (2, 2, 1));
    assert_balanced(&run).await;
}

#[tokio::test]
async fn channel_is_archived_stops_the_notifier_for_good() {
    let slack = FakeSlack::start(any_port()).await;
    slack
        .script
        .push([Reply::Status(410, "channel_is_archived")]);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), &slack.webhook_url(), 100, "");
    {
        let run = start(&cfg, dir.path(), Clock::Wall).await;
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
                .accounting("notifier:slack")
                .dead_lettered
                == 1)
            .await
        );
        // A later alert is not sent: it goes to the dead-letter file too.
        run.delivery
            .enqueue(&[finding(
                2,
                "miner_fingerprint",
                "shop",
                Severity::Critical,
                T0,
            )])
            .await
            .expect("enqueue");
        assert!(
            wait_until(WAIT, || run
                .metrics
                .accounting("notifier:slack")
                .dead_lettered
                == 2)
            .await
        );
        assert_eq!(slack.messages().len(), 1);
        assert_balanced(&run).await;
        run.shutdown.cancel();
        run.delivery.stopped().await;
    }
    let dead = dead_letters(dir.path(), "notifier:slack");
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d["reason"] == "gone"));
    assert!(
        dead[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("channel_is_archived")
    );
    assert!(
        !dead[0].to_string().contains("/services/T000"),
        "the webhook URL (a secret) is never written"
    );
    // After a restart the notifier stays stopped.
    let run = start(&cfg, dir.path(), Clock::Wall).await;
    run.delivery
        .enqueue(&[finding(
            3,
            "miner_fingerprint",
            "ml",
            Severity::Critical,
            T0,
        )])
        .await
        .expect("enqueue");
    assert!(
        wait_until(WAIT, || run
            .metrics
            .accounting("notifier:slack")
            .dead_lettered
            == 1)
        .await
    );
    assert_eq!(slack.messages().len(), 1);
}

#[tokio::test]
async fn a_burst_of_1000_findings_on_one_group_is_at_most_10_messages_within_10_s() {
    let slack = FakeSlack::start(any_port()).await;
    slack.state.lock().expect("lock").rate_limit = Some(Duration::from_secs(1));
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(
        &config(dir.path(), &slack.webhook_url(), 1000, ""),
        dir.path(),
        Clock::Wall,
    )
    .await;
    let burst = findings(1000, "gpu_memory_spike", "shop", Severity::High);
    for chunk in burst.chunks(100) {
        run.delivery.enqueue(chunk).await.expect("enqueue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_told = wait_until(Duration::from_secs(10), || {
        slack.accepted().last().is_some_and(|m| {
            m.body["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("[FIRING:1000]"))
        })
    })
    .await;
    let msgs = slack.messages();
    assert!(
        all_told,
        "no message reported all 1000 findings: {:?}",
        msgs.iter()
            .map(|m| m.body["text"].clone())
            .collect::<Vec<_>>()
    );
    assert!(msgs.len() <= 10, "{} messages", msgs.len());
    assert!(
        msgs.iter().all(|m| m.status == 200),
        "Slack's rate limit was hit"
    );
    let a = run.metrics.accounting("router");
    assert_eq!(a.received, 1000);
    assert_balanced(&run).await;
}
