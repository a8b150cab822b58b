//! Router tests (`oneshot`): findings list and detail, SQL as JSON and Arrow IPC, the OpenAPI
//! document against the router, probes and metrics.
#![allow(clippy::unwrap_used, missing_docs)]

use crate::api_support;

use std::collections::BTreeSet;

use api_support::*;
use axum::http::{Method, StatusCode, header};

#[tokio::test]
async fn findings_list_answers_the_latest_revision_newest_first() {
    let h = harness().await;
    let page = h
        .send(
            Method::GET,
            "/api/v1/findings?limit=1000",
            Some(ANALYST),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let v = page.json();
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 16, "16 distinct ids, one row each");
    assert!(v["next_cursor"].is_null());
    let ts: Vec<&str> = findings.iter().map(|f| f["ts"].as_str().unwrap()).collect();
    let mut sorted = ts.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ts, sorted, "newest first");
    let shop0 = findings
        .iter()
        .find(|f| f["summary"] == "finding shop-0 in shop")
        .unwrap();
    assert_eq!(shop0["revision"], 2, "latest revision");
    assert_eq!(shop0["severity"], "critical");
    assert_eq!(shop0["status"], "resolved");
    assert_eq!(shop0["ts"], "2026-01-01T00:00:00.000000000Z");
    assert_eq!(shop0["last_ts"], "2026-01-01T00:00:02.000000000Z");
    assert_eq!(shop0["evidence"]["seed"], "shop-0", "evidence is an object");
    assert_eq!(shop0["mitre"][0], "T1496");
    assert!(shop0.get("severity_rank").is_none());
    h.stop().await;
}

#[tokio::test]
async fn findings_filters() {
    let h = harness().await;
    async fn count_of(h: &Harness, q: String) -> usize {
        let r = h
            .send(
                Method::GET,
                &format!("/api/v1/findings?{q}"),
                Some(ANALYST),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text());
        r.json()["findings"].as_array().unwrap().len()
    }
    let count = |q: String| count_of(&h, q);
    assert_eq!(
        count("severity=critical".to_string()).await,
        4,
        "shop-0 (latest critical) + 3 research"
    );
    assert_eq!(
        count("severity=high".to_string()).await,
        4 + 6 + 1,
        "plus 6 high shop findings and the GPU one"
    );
    assert_eq!(count("severity=info".to_string()).await, 16);
    assert_eq!(count("namespace=research".to_string()).await, 3);
    assert_eq!(count(format!("pod={SHOP_POD}")).await, 12);
    assert_eq!(count("detector=test_detector".to_string()).await, 16);
    assert_eq!(count("detector=other".to_string()).await, 0);
    assert_eq!(count("status=resolved".to_string()).await, 1);
    assert_eq!(count("status=firing".to_string()).await, 15);
    assert_eq!(
        count("until=2026-01-01T00:00:01Z".to_string()).await,
        2,
        "shop-0 and research-0 were raised at T0"
    );
    assert_eq!(
        count("since=2026-01-01T00:10:00Z".to_string()).await,
        2,
        "shop-10 and shop-11"
    );
    assert_eq!(
        count("namespace=shop&severity=high&until=2026-01-01T00:05:30Z".to_string()).await,
        4,
        "shop-0, 1, 3, 5"
    );
    for bad in [
        "severity=urgent",
        "since=yesterday",
        "limit=0",
        "limit=100000",
        "cursor=nope",
        "status=open",
        "nope=1",
    ] {
        let r = h
            .send(
                Method::GET,
                &format!("/api/v1/findings?{bad}"),
                Some(ANALYST),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    h.stop().await;
}

#[tokio::test]
async fn findings_pages_with_an_opaque_cursor_cover_everything_once() {
    let h = harness().await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/findings?limit=5&cursor={c}"),
            None => "/api/v1/findings?limit=5".to_string(),
        };
        let v = h.send(Method::GET, &path, Some(ANALYST), None).await.json();
        pages += 1;
        let page = v["findings"].as_array().unwrap();
        assert!(page.len() <= 5);
        seen.extend(page.iter().map(|f| f["id"].as_str().unwrap().to_string()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 4, "16 findings in pages of 5");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 16, "no duplicates, nothing missed");
    let all: BTreeSet<String> = h.findings.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(unique.into_iter().cloned().collect::<BTreeSet<_>>(), all);
    h.stop().await;
}

#[tokio::test]
async fn a_finding_comes_with_its_revisions_and_contributing_rows() {
    let h = harness().await;
    let id = &h.ids_in(Some("shop"))[0];
    let r = h
        .send(
            Method::GET,
            &format!("/api/v1/findings/{id}"),
            Some(SHOP),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["finding"]["id"], id.as_str());
    assert_eq!(v["finding"]["revision"], 2);
    let revs: Vec<u64> = v["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revs, [0, 1, 2]);
    let events = v["events"]["falco_events"].as_array().unwrap();
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["ev-shop-1", "ev-shop-2"]));
    assert_eq!(events[0]["ts"], "2026-01-01T00:00:01.000000000Z");
    assert_eq!(events[0]["pod"], SHOP_POD);
    // A research finding names a research event; an unscoped reader gets it, nothing else.
    let rid = &h.ids_in(Some(FOREIGN_MARKER))[0];
    let v = h
        .send(
            Method::GET,
            &format!("/api/v1/findings/{rid}"),
            Some(ANALYST),
            None,
        )
        .await
        .json();
    assert_eq!(v["events"]["falco_events"].as_array().unwrap().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn query_answers_json_or_arrow_ipc() {
    let h = harness().await;
    let sql = "SELECT namespace, count(*) AS n, max(ts) AS latest FROM findings GROUP BY namespace ORDER BY namespace NULLS LAST";
    let r = h.sql(ANALYST, sql).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let v = r.json();
    assert_eq!(v["row_count"], 3);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["columns"][0]["name"], "namespace");
    assert_eq!(
        v["rows"][0],
        serde_json::json!({ "namespace": "research", "n": 3, "latest": "2026-01-01T00:01:00.000000000+00:00" })
    );
    assert_eq!(v["rows"][1]["n"], 14);
    assert!(v["rows"][2]["namespace"].is_null());
    assert_eq!(r.headers.get("x-gpusiem-rows").unwrap(), "3");

    let body = serde_json::to_vec(&serde_json::json!({ "sql": sql })).unwrap();
    let r = h
        .send_with(
            Method::POST,
            "/api/v1/query",
            Some(ANALYST),
            Some(("application/json", body)),
            &[("accept", "application/vnd.apache.arrow.stream")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/vnd.apache.arrow.stream"
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(r.body), None).unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert_eq!(batches[0].schema().field(0).name(), "namespace");
    h.stop().await;
}

#[tokio::test]
async fn ingest_routes_write_rows_that_query_reads_back() {
    let h = harness_with(Options {
        seed: false,
        ..Options::default()
    })
    .await;
    let r = h
        .send(
            Method::POST,
            "/ingest/falco",
            Some(INGEST),
            Some(("application/json", falco_fixture())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let accepted = r.json()["accepted"].as_u64().unwrap();
    assert!(accepted >= 5, "{}", r.text());
    let r = h
        .send(
            Method::POST,
            "/ingest/k8s-audit",
            Some(INGEST),
            Some(("application/json", audit_fixture())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = h.sql(ANALYST, "SELECT (SELECT count(*) FROM falco_events) AS falco, (SELECT count(*) FROM k8s_audit) AS audit").await.json();
    assert_eq!(v["rows"][0]["falco"].as_u64(), Some(accepted));
    assert!(v["rows"][0]["audit"].as_u64().unwrap() >= 1);
    h.stop().await;
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else_is() {
    let h = harness().await;
    let ops = gpusiem::server::openapi::operations();
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .map(|o| (o.method.clone(), o.path.clone()))
        .collect();
    for op in &ops {
        let path = concrete_path(&h, &op.path);
        let body = body_for(&op.method, &op.path);
        let r = h
            .send(
                Method::from_bytes(op.method.as_bytes()).unwrap(),
                &path,
                Some(ADMIN),
                body,
            )
            .await;
        assert!(
            r.status != StatusCode::NOT_FOUND && r.status != StatusCode::METHOD_NOT_ALLOWED,
            "{op:?} is documented but not routed: {}",
            r.status
        );
        // Every other method on a documented path is not routed.
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if documented.contains(&(m.to_string(), op.path.clone())) {
                continue;
            }
            let r = h
                .send(
                    Method::from_bytes(m.as_bytes()).unwrap(),
                    &path,
                    Some(ADMIN),
                    None,
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is routed but not documented"
            );
        }
    }
    let served = h
        .send(Method::GET, "/api/v1/openapi.json", Some(READER), None)
        .await
        .json();
    assert_eq!(&served, gpusiem::server::openapi::document());
    h.stop().await;
}

#[tokio::test]
async fn probes_and_metrics() {
    let h = harness().await;
    let r = h.send(Method::GET, "/healthz", None, None).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        h.send(Method::GET, "/readyz", None, None).await.status,
        StatusCode::OK
    );
    h.state
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        h.send(Method::GET, "/readyz", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let _ = h
        .send(Method::GET, "/api/v1/findings", Some(READER), None)
        .await;
    let m = h.send(Method::GET, "/metrics", Some(READER), None).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = m.text();
    assert!(
        text.contains(
            "gpusiem_api_requests_total{route=\"/api/v1/findings\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("gpusiem_api_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains("gpusiem_ingest_"),
        "ingest figures are there too"
    );
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{table=\"findings\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name}: {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("gpusiem_store_tail_rows") + value("gpusiem_store_file_rows"),
        18,
        "store figures, read at scrape time"
    );
    assert!(text.contains("gpusiem_store_flushed_rows_total"), "{text}");
    assert!(
        text.contains("gpusiem_detect_series"),
        "detector figures: {text}"
    );
    assert!(
        !text.contains("/healthz"),
        "probes are not counted per route"
    );
    h.stop().await;
}
