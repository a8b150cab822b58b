//! End to end: `gpusiem run` on `127.0.0.1:0` with embedded defaults; Falco and audit fixtures
//! posted to the receivers; read back through `/api/v1/query`; SIGTERM flushes and exits 0; a
//! restart on the same data directory still answers the same rows.
#![allow(clippy::unwrap_used, missing_docs)]

use crate::service_support;

use std::process::Command;
use std::time::Duration;

use service_support::{Service, fixture};

fn start(data: &std::path::Path) -> Service {
    service_support::start_with(None, data)
}

async fn query(client: &reqwest::Client, s: &Service, sql: &str) -> serde_json::Value {
    s.query(client, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_receives_fixtures_and_answers_them_through_sql() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(&data);
    gpusiem_ingest::source::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = s.base.clone();

    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    // Ready once the pipeline runs.
    s.wait_ready(&client).await;

    let falco = fixture("falco/elastic-falco-alerts-real.jsonl");
    let r = client
        .post(format!("{base}/ingest/falco"))
        .header("content-type", "application/json")
        .body(falco)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let falco_accepted = r.json::<serde_json::Value>().await.unwrap()["accepted"]
        .as_u64()
        .unwrap();
    assert!(falco_accepted >= 5, "{falco_accepted}");

    let mut audit_accepted = 0;
    for f in [
        "k8s-audit/falco-trace-exec_pod.jsonl",
        "k8s-audit/falco-trace-create_nginx_pod_privileged.jsonl",
        "k8s-audit/kodekloud-cks4-impersonation-audit.jsonl",
    ] {
        let r = client
            .post(format!("{base}/ingest/k8s-audit"))
            .header("content-type", "application/json")
            .body(fixture(f))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{f}");
        audit_accepted += r.json::<serde_json::Value>().await.unwrap()["accepted"]
            .as_u64()
            .unwrap();
    }
    assert!(audit_accepted >= 10, "{audit_accepted}");

    let counts = "SELECT (SELECT count(*) FROM falco_events) AS falco, (SELECT count(*) FROM k8s_audit) AS audit";
    let v = query(&client, &s, counts).await;
    assert_eq!(v["rows"][0]["falco"].as_u64(), Some(falco_accepted));
    assert_eq!(v["rows"][0]["audit"].as_u64(), Some(audit_accepted));
    let v = query(
        &client,
        &s,
        "SELECT verb, resource, subresource FROM k8s_audit WHERE subresource = 'exec'",
    )
    .await;
    assert!(v["row_count"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["rows"][0]["resource"], "pods");
    let v = query(
        &client,
        &s,
        "SELECT DISTINCT rule FROM falco_events ORDER BY rule",
    )
    .await;
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["rule"].as_str().is_some_and(|s| !s.is_empty()))
    );

    let r = client
        .get(format!("{base}/api/v1/findings"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<serde_json::Value>().await.unwrap()["findings"].is_array());

    // Every request above is in api_audit, as the anonymous principal of loopback-only mode.
    let v = query(
        &client,
        &s,
        "SELECT route, status, principal FROM api_audit WHERE route LIKE '/ingest/%'",
    )
    .await;
    assert_eq!(v["row_count"], 4, "{v}");
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["principal"] == "anonymous" && r["status"] == 200)
    );
    let metrics = s.metrics(&client).await;
    assert!(
        metrics.contains(
            "gpusiem_api_requests_total{route=\"/ingest/falco\",method=\"POST\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    // The privileged nginx pod of the audit fixtures matched its rule.
    let matched: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"gpusiem_detect_rule_matches_total{rule="gpu_reachable_without_gpu_request"} "#,
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rule match series: {metrics}"));
    assert!(matched >= 1, "{metrics}");

    s.terminate();

    // What was acknowledged is still there after a clean stop, flushed: nothing is left to
    // recover from the write-ahead log.
    let s = start(&data);
    let metrics = s.metrics(&client).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "gpusiem_store_recovered_rows_total 0"),
        "the shutdown flushed everything: {metrics}"
    );
    // The receivers' series exist at 0 before any request, quarantine reasons included.
    for series in [
        r#"gpusiem_ingest_rows_total{stream="falco_events",source="http"} 0"#,
        r#"gpusiem_ingest_rows_total{stream="k8s_audit",source="http"} 0"#,
        r#"gpusiem_ingest_quarantined_total{stream="k8s_audit",reason="invalid_json"} 0"#,
        r#"gpusiem_detect_rule_matches_total{rule="exec_into_gpu_pod"} 0"#,
        r#"gpusiem_detect_rule_matches_total{rule="gpu_reachable_without_gpu_request"} 0"#,
        "gpusiem_detect_late_events_total 0",
        "gpusiem_detect_inventory_pods 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} missing: {metrics}"
        );
    }
    let v = query(&client, &s, counts).await;
    assert_eq!(v["rows"][0]["falco"].as_u64(), Some(falco_accepted));
    assert_eq!(v["rows"][0]["audit"].as_u64(), Some(audit_accepted));
    let v = query(
        &client,
        &s,
        "SELECT count(*) AS n FROM api_audit WHERE route = '/ingest/falco'",
    )
    .await;
    assert_eq!(v["rows"][0]["n"], 1, "the audit trail survives the restart");
    s.terminate();
}

#[test]
fn a_non_loopback_listen_address_without_tokens_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpusiem"))
        .args(["run", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("auth.tokens"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "never listened");
}

#[test]
fn a_token_that_cannot_be_read_stops_the_start_without_printing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gpusiem.toml");
    let ok = dir.path().join("ok.token");
    std::fs::write(&ok, "canary-secret-value-0123456789\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[[auth.tokens]]\nname = \"a\"\ntoken_file = {:?}\nscopes = [\"read\"]\n\n[[auth.tokens]]\nname = \"b\"\ntoken_file = {:?}\nscopes = [\"read\"]\n",
            dir.path().join("data"),
            ok,
            dir.path().join("missing.token"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpusiem"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.tokens[1]"), "{stderr}");
    assert!(!stderr.contains("canary-secret-value"), "{stderr}");
}
