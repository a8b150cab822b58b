//! Contract tests of the Elasticsearch sink against the fake Elasticsearch (formats.md §4.2,
//! test row R6).

use std::time::Duration;

use gpusiem::delivery::Clock;
use gpusiem_detect::Severity;
use gpusiem_tests::delivery::{assert_balanced, dead_letters, findings, settled, start};
use gpusiem_tests::fakes::elasticsearch::{FakeElasticsearch, REJECTED_429, Reply};
use gpusiem_tests::fakes::{any_port, lock, wait_until};

const WAIT: Duration = Duration::from_secs(15);

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
[[sinks]]
type = "elasticsearch"
url = "{url}"
index = "gpusiem-findings"
allow_loopback = true
batch = {{ max_items = 500, timeout_ms = 50 }}
request = {{ retry_initial_ms = 50, retry_max_secs = 2 }}
{extra}
"#
    )
}

#[tokio::test]
async fn bulk_creates_ecs_documents_with_finding_ids_after_installing_the_template() {
    let es = FakeElasticsearch::start(any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("api-key"),
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==\n",
    )
    .expect("key");
    let extra = format!(
        "api_key_file = \"{}\"",
        dir.path().join("api-key").display()
    );
    let run = start(&config(&es.url(), &extra), dir.path(), Clock::Wall).await;
    let batch = findings(120, "gpu_memory_spike", "shop", Severity::High);
    run.delivery.enqueue(&batch).await.expect("enqueue");
    assert!(
        wait_until(WAIT, || es.doc_count() == 120).await,
        "{} docs",
        es.doc_count()
    );

    {
        let st = lock(&es.state);
        let t = &st.templates["gpusiem-findings"];
        assert_eq!(t["index_patterns"][0], "gpusiem-findings");
        assert!(t.get("data_stream").is_some(), "a data stream template");
        assert_eq!(
            t["template"]["mappings"]["properties"]["gpusiem"]["properties"]["evidence"]["type"],
            "flattened"
        );
        for b in &st.bulks {
            assert!(
                b.newline_terminated,
                "every line ends in a newline, the last included"
            );
            assert_eq!(
                b.authorization.as_deref(),
                Some("ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==")
            );
            assert!(
                b.items
                    .iter()
                    .all(|i| i.op == "create" && i.index == "gpusiem-findings"),
                "data streams accept only create"
            );
        }
    }
    let docs = es.docs();
    for f in &batch {
        let d = &docs[&f.id];
        assert_eq!(d["event"]["kind"], "alert");
        assert_eq!(d["rule"]["name"], "gpu_memory_spike");
        assert_eq!(d["event"]["severity"], 73);
        assert_eq!(d["orchestrator"]["namespace"], "shop");
        assert_eq!(
            d["orchestrator"]["resource"]["name"],
            f.pod.as_deref().unwrap_or_default()
        );
        assert_eq!(d["container"]["name"], "main");
        assert_eq!(d["threat"]["technique"]["id"][0], "T1496");
        assert_eq!(d["gpu"]["uuid"], f.gpu_uuid.as_deref().unwrap_or_default());
        let ts = d["@timestamp"].as_str().expect("@timestamp");
        assert!(
            ts.ends_with('Z') && ts.len() == "2027-01-15T08:00:00.000Z".len(),
            "{ts}"
        );
    }
    let a = settled(&run, "sink:elasticsearch").await;
    assert_eq!(
        (a.received, a.delivered, a.queued, a.dead_lettered),
        (120, 120, 0, 0)
    );
    assert_balanced(&run).await;
}

#[tokio::test]
async fn partial_failure_retries_exactly_the_429_and_500_items() {
    let es = FakeElasticsearch::start(any_port()).await;
    es.script
        .push([Reply::Items(vec![201, 409, 429, 400, 500])]);
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(&es.url(), ""), dir.path(), Clock::Wall).await;
    let batch = findings(5, "gpu_memory_spike", "shop", Severity::High);
    run.delivery.enqueue(&batch).await.expect("enqueue");
    assert!(
        wait_until(WAIT, || run.metrics.accounting("sink:elasticsearch").queued
            == 0)
        .await
    );

    let bulks = es.bulks();
    assert_eq!(
        bulks.len(),
        2,
        "{:?}",
        bulks.iter().map(|b| &b.statuses).collect::<Vec<_>>()
    );
    let first: Vec<&str> = bulks[0].items.iter().map(|i| i.id.as_str()).collect();
    let retried: Vec<&str> = bulks[1].items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        first,
        batch.iter().map(|f| f.id.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(retried, [batch[2].id.as_str(), batch[4].id.as_str()]);
    // Byte for byte, the retry is the failed items' lines of the first request.
    let lines: Vec<&[u8]> = bulks[0].body.split(|b| *b == b'\n').collect();
    let expected = [lines[4], lines[5], lines[8], lines[9]].join(&b'\n');
    assert_eq!(bulks[1].body, [expected, b"\n".to_vec()].concat());
    assert!(
        bulks[1].at - bulks[0].at >= Duration::from_millis(37),
        "backoff before the retry"
    );
    // The 400 is dead-lettered with Elasticsearch's reason; the 409 counts as delivered.
    let dead = dead_letters(dir.path(), "sink:elasticsearch");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["item"]["id"], batch[3].id.as_str());
    assert!(
        dead[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("mapper_parsing_exception"),
        "{}",
        dead[0]
    );
    let a = settled(&run, "sink:elasticsearch").await;
    assert_eq!(
        (
            a.received,
            a.delivered,
            a.dead_lettered,
            a.retries,
            a.queued
        ),
        (5, 4, 1, 1, 0)
    );
    assert_balanced(&run).await;
}

#[tokio::test]
async fn whole_request_429_is_retried_with_the_same_body() {
    let es = FakeElasticsearch::start(any_port()).await;
    es.script.push([
        Reply::Whole(429, REJECTED_429.into()),
        Reply::Whole(503, "{}".into()),
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(&es.url(), ""), dir.path(), Clock::Wall).await;
    run.delivery
        .enqueue(&findings(30, "gpu_memory_spike", "shop", Severity::High))
        .await
        .expect("enqueue");
    assert!(wait_until(WAIT, || es.doc_count() == 30).await);
    let bulks = es.bulks();
    assert_eq!(
        bulks.iter().map(|b| b.status).collect::<Vec<_>>(),
        [429, 503, 200]
    );
    assert_eq!(bulks[0].body, bulks[1].body);
    assert_eq!(bulks[1].body, bulks[2].body);
    let a = settled(&run, "sink:elasticsearch").await;
    assert_eq!((a.delivered, a.retries), (30, 2));
    assert_balanced(&run).await;
}

#[tokio::test]
async fn a_replay_never_duplicates_documents() {
    let es = FakeElasticsearch::start(any_port()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let run = start(&config(&es.url(), ""), dir.path(), Clock::Wall).await;
    let batch = findings(50, "gpu_memory_spike", "shop", Severity::High);
    run.delivery.enqueue(&batch).await.expect("enqueue");
    run.delivery.enqueue(&batch).await.expect("enqueue again");
    assert!(
        wait_until(WAIT, || run
            .metrics
            .accounting("sink:elasticsearch")
            .delivered
            == 100)
        .await
    );
    assert_eq!(es.doc_count(), 50);
    assert_eq!(es.max_creations_per_id(), 1);
    let conflicts: usize = es
        .bulks()
        .iter()
        .map(|b| b.statuses.iter().filter(|s| **s == 409).count())
        .sum();
    assert_eq!(
        conflicts, 50,
        "the second copy answers 409, counted as delivered"
    );
    assert_balanced(&run).await;
}

#[tokio::test]
async fn forbidden_template_install_is_skipped_and_basic_auth_is_sent() {
    let es = FakeElasticsearch::start(any_port()).await;
    es.template_script.push([(403, r#"{"error":{"type":"security_exception","reason":"action [indices:admin/index_template/put] is unauthorized"},"status":403}"#.to_string())]);
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("pw"), "s3cret").expect("pw");
    let extra = format!(
        "mode = \"dated_index\"\nusername = \"gpusiem\"\npassword_file = \"{}\"",
        dir.path().join("pw").display()
    );
    let run = start(&config(&es.url(), &extra), dir.path(), Clock::Wall).await;
    let mut batch = findings(3, "gpu_memory_spike", "shop", Severity::High);
    // 2025-11-26T13:18:35Z: the daily index comes from the event time.
    batch
        .iter_mut()
        .for_each(|f| f.last_ts = 1_764_163_115_000_000_000);
    run.delivery.enqueue(&batch).await.expect("enqueue");
    assert!(wait_until(WAIT, || es.doc_count() == 3).await);
    let bulks = es.bulks();
    assert_eq!(
        bulks[0].authorization.as_deref(),
        Some("Basic Z3B1c2llbTpzM2NyZXQ=")
    );
    assert!(
        bulks[0]
            .items
            .iter()
            .all(|i| i.index == "gpusiem-findings-2025.11.26"),
        "{:?}",
        bulks[0].items.iter().map(|i| &i.index).collect::<Vec<_>>()
    );
    assert!(lock(&es.state).templates.is_empty());
    assert_balanced(&run).await;
}
