//! SQL resource abuse (S4): `generate_series`, `rpad`, cross joins end with an error (refused,
//! timed out or out of resources), or stop at the row cap, while `/healthz` keeps answering, on
//! a real listener. Nothing here asserts a duration: the queries must *end* within the
//! engine's limits, and every health probe sent meanwhile must be answered.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use gpusiem::config::Config;

const ABUSE: &[&str] = &[
    "SELECT count(*) FROM generate_series(1, 9876543210)",
    "SELECT * FROM generate_series(9876543210)",
    "SELECT count(*) FROM range(9876543210)",
    "SELECT length(rpad('a', 1073741824, 'a'))",
    "SELECT length(lpad('a', 1073741824, 'a'))",
    "SELECT length(repeat('a', 1073741824))",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000) SELECT count(*) FROM r a, r b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000) SELECT a.n, b.n FROM r a CROSS JOIN r b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "WITH RECURSIVE r(s) AS (SELECT 'a' UNION ALL SELECT s || s FROM r WHERE length(s) < 1073741824) SELECT max(length(s)) FROM r",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_queries_end_with_an_error_while_healthz_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().join("data");
    config.query.timeout_secs = 5;
    let running = gpusiem::service::start(config).await.unwrap();
    let base = format!("http://{}", running.addr);
    gpusiem_ingest::source::install_crypto_provider();
    // Generous bounds: they turn a hang into a failure, they are not performance targets.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let max_rows = gpusiem::query::QueryConfig::default().max_rows;
    let mut capped = Vec::new();
    let mut probes = 0usize;
    for sql in ABUSE {
        let c = client.clone();
        let url = format!("{base}/api/v1/query");
        let body = serde_json::json!({ "sql": sql });
        let query = tokio::spawn(async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        });
        loop {
            let r = probe
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("/healthz did not answer during {sql:?}: {e}"));
            assert_eq!(r.status(), 200);
            probes += 1;
            if query.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, text) = query.await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if status == 200 {
            // A query that streams rows (the cross join of two 100,000-row CTEs) may instead
            // stop at the row cap, before the timeout: it ended within the limits too.
            assert_eq!(
                v["truncated"], true,
                "{sql:?} ended with {status} and was not capped"
            );
            assert_eq!(v["row_count"], max_rows, "{sql:?}");
            capped.push(*sql);
        } else {
            assert!(
                matches!(status.as_u16(), 400 | 422),
                "{sql:?} ended with {status}: {text}"
            );
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
        }
        eprintln!("{sql:?} -> {status}");
    }
    assert!(probes >= ABUSE.len());

    // Each abusive query has its audit row, with its outcome.
    let r = client
        .post(format!("{base}/api/v1/query"))
        .json(&serde_json::json!({ "sql": "SELECT status, outcome, sql_sha256 FROM api_audit WHERE route = '/api/v1/query'" }))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let rows = v["rows"].as_array().unwrap();
    for sql in ABUSE {
        let hash = gpusiem::server::audit::sql_sha256(sql);
        let row = rows
            .iter()
            .find(|r| r["sql_sha256"] == hash.as_str())
            .unwrap_or_else(|| panic!("no audit row for {sql:?}"));
        let expected: &[&str] = if capped.contains(sql) {
            &["ok"]
        } else {
            &["refused", "timeout", "limited", "invalid"]
        };
        assert!(
            row["outcome"]
                .as_str()
                .is_some_and(|o| expected.contains(&o)),
            "{row}"
        );
    }
    // The server is still fine.
    assert_eq!(
        probe
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}
