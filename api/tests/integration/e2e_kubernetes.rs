//! End to end: `gpusiem run` with a `kubernetes` source against a fake API server. The pods it
//! lists reach the inventory, so a rule that needs pod facts (`exec_into_gpu_pod`: the pod
//! requested `nvidia.com/gpu`) fires on an audit event that carries none of them; without the
//! source the same event raises no such finding.
#![allow(clippy::unwrap_used, missing_docs)]

use crate::service_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use service_support::Service;

fn start(dir: &Path, config: &str) -> Service {
    let config_path = dir.join("gpusiem.toml");
    std::fs::write(&config_path, config).unwrap();
    service_support::start_with(Some(&config_path), &dir.join("data"))
}

/// The pod the exec fixture targets, as the API server lists it: one GPU requested.
fn gpu_pod() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "nginx-deployment-7998647bdf-phvq7", "namespace": "default",
            "uid": "6f0c1a7e-0b7d-4c2e-9a51-3f1e2d4c5b6a", "resourceVersion": "41",
            "labels": {"app": "nginx"}
        },
        "spec": {
            "nodeName": "gpu-node-1", "serviceAccountName": "default",
            "containers": [{"name": "nginx", "image": "nginx:1.25",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
        },
        "status": {"phase": "Running"}
    })
}

#[derive(Default)]
struct Fake {
    lists: AtomicUsize,
}

async fn pods(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if q.get("watch").is_some_and(|w| w == "1" || w == "true") {
        // A watch that stays open and silent, as on a quiet cluster.
        let body = axum::body::Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >());
        return ([("content-type", "application/json")], body).into_response();
    }
    fake.lists.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "42"},
        "items": [gpu_pod()]
    }))
    .into_response()
}

async fn fake_api_server() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/api/v1/pods", axum::routing::get(pods))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, format!("http://{addr}"))
}

/// Posts the exec fixture and returns the `exec_into_gpu_pod` findings' pods and roles.
async fn exec_findings(client: &reqwest::Client, s: &Service) -> Vec<serde_json::Value> {
    let exec = service_support::fixture("k8s-audit/falco-trace-exec_pod.jsonl");
    let r = client
        .post(format!("{}/ingest/k8s-audit", s.base))
        .body(exec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = s
        .query(
            client,
            "SELECT pod, namespace, role FROM findings WHERE detector = 'exec_into_gpu_pod'",
        )
        .await;
    v["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_listed_by_the_kubernetes_source_reach_the_inventory() {
    gpusiem_ingest::source::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (fake, api) = fake_api_server().await;

    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        &format!("[[sources]]\ntype = \"kubernetes\"\napi_url = \"{api}\"\n"),
    );
    s.wait_ready(&client).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.lists.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the kubernetes source never listed pods"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The list is applied on the pipeline's task; give it a moment before the audit event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = exec_findings(&client, &s).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["pod"], "nginx-deployment-7998647bdf-phvq7");
    assert_eq!(rows[0]["namespace"], "default");
    drop(s);

    // The same event without the source: nothing says the pod has a GPU.
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    s.wait_ready(&client).await;
    assert_eq!(
        exec_findings(&client, &s).await,
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn a_kubernetes_source_that_cannot_start_stops_the_service_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gpusiem.toml");
    std::fs::write(&config, "[[sources]]\ntype = \"kubernetes\"\napi_url = \"https://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.crt\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpusiem"))
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sources[0]") && stderr.contains("ca"),
        "{stderr}"
    );
}
