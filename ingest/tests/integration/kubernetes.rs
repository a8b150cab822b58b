//! The `kubernetes` pod source against a fake API server (axum on 127.0.0.1:0) that serves
//! `GET /api/v1/pods` as the real one does: a paginated `PodList` with a resourceVersion, and
//! with `watch=1` a stream of JSON lines `{"type": …, "object": …}`. The fake checks the bearer
//! token and records every request, so the tests can assert what the source asked for.
//!
//! What is checked: list then watch from the list's resourceVersion; bookmarks advance the
//! resourceVersion the next watch starts from; pagination with `continue`; HTTP 410 Gone and an
//! `ERROR` event with code 410 both lead to a relist, which reports pods deleted meanwhile and
//! does not repeat unchanged ones; a malformed line resumes the watch without relisting; the
//! token is re-read on every reconnect; shutdown and a dropped receiver end `run` with `Ok`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use gpusiem_ingest::sources::kubernetes::{Kubernetes, KubernetesConfig, PodEvent, PodEventKind};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single wait may take before the test fails (a hang guard, not a timing claim).
const WAIT: Duration = Duration::from_secs(20);

/// What one watch request is answered with.
#[derive(Clone)]
enum Reply {
    /// An HTTP error with a `Status` body.
    Status(u16),
    /// These lines, then the end of the stream (as when timeoutSeconds elapses).
    Lines(Vec<String>),
}

/// One request the fake received.
#[derive(Clone, Debug)]
struct Seen {
    watch: bool,
    query: HashMap<String, String>,
    auth: Option<String>,
    status: u16,
}

#[derive(Default)]
struct Fake {
    /// The token the fake accepts.
    token: Mutex<String>,
    /// PodLists served to successive lists; the last one is served again and again.
    lists: Mutex<VecDeque<Value>>,
    /// The list being paged through.
    current: Mutex<Option<Value>>,
    /// Replies to successive watches; when empty, a watch stays open and silent.
    watches: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn lists_seen(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| !s.watch && s.status == 200)
            .collect()
    }

    fn watches_seen(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.watch && s.status == 200)
            .collect()
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code})
}

async fn pods(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let watch = query.get("watch").is_some_and(|w| w == "1" || w == "true");
    let expected = format!("Bearer {}", fake.token.lock().expect("lock"));
    let (code, response) = if auth.as_deref() != Some(expected.as_str()) {
        (
            401,
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(status(401, "Unauthorized")),
            )
                .into_response(),
        )
    } else if watch {
        watch_reply(&fake)
    } else {
        (200, list_page(&fake, &query))
    };
    fake.seen.lock().expect("lock").push(Seen {
        watch,
        query,
        auth,
        status: code,
    });
    response
}

fn watch_reply(fake: &Fake) -> (u16, Response) {
    let reply = fake.watches.lock().expect("lock").pop_front();
    let body = match reply {
        Some(Reply::Status(code)) => {
            let status_code = StatusCode::from_u16(code).expect("status code");
            let reason = if code == 410 {
                "Expired"
            } else {
                "InternalError"
            };
            return (
                code,
                (status_code, axum::Json(status(code, reason))).into_response(),
            );
        }
        Some(Reply::Lines(lines)) => {
            let chunks = lines
                .into_iter()
                .map(|l| Ok::<_, Infallible>(Bytes::from(l + "\n")));
            Body::from_stream(futures::stream::iter(chunks))
        }
        None => Body::from_stream(futures::stream::pending::<Result<Bytes, Infallible>>()),
    };
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("response");
    (200, response)
}

fn list_page(fake: &Fake, query: &HashMap<String, String>) -> Response {
    let list = match query.get("continue") {
        Some(_) => fake
            .current
            .lock()
            .expect("lock")
            .clone()
            .expect("continue without a list"),
        None => {
            let mut lists = fake.lists.lock().expect("lock");
            let list = if lists.len() > 1 {
                lists.pop_front()
            } else {
                lists.front().cloned()
            };
            let list = list.expect("a list to serve");
            *fake.current.lock().expect("lock") = Some(list.clone());
            list
        }
    };
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let offset: usize = query
        .get("continue")
        .map_or(0, |c| c.parse().expect("continue token"));
    let limit: usize = query
        .get("limit")
        .map_or(items.len(), |l| l.parse().expect("limit"));
    let end = (offset + limit).min(items.len());
    let mut metadata = json!({"resourceVersion": list["metadata"]["resourceVersion"]});
    if end < items.len() {
        metadata["continue"] = json!(end.to_string());
    }
    axum::Json(
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata,
                      "items": items[offset..end]}),
    )
    .into_response()
}

/// Starts the fake; returns it and its base URL.
async fn serve(fake: Fake) -> anyhow::Result<(Arc<Fake>, String)> {
    let fake = Arc::new(fake);
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/namespaces/{namespace}/pods", get(pods))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((fake, format!("http://{addr}")))
}

fn pod(uid: &str, name: &str, rv: &str) -> Value {
    json!({
        "metadata": {"uid": uid, "name": name, "namespace": "research", "resourceVersion": rv,
                     "labels": {"app": name}},
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "main", "image": "vllm/vllm-openai:v0.6.3",
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    })
}

fn pod_list(rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
}

fn event(kind: &str, object: Value) -> String {
    json!({"type": kind, "object": object}).to_string()
}

fn bookmark(rv: &str) -> String {
    event(
        "BOOKMARK",
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}),
    )
}

struct Running {
    rx: mpsc::Receiver<PodEvent>,
    shutdown: CancellationToken,
    task: JoinHandle<gpusiem_ingest::Result<()>>,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// The next event as (kind, uid).
    async fn next(&mut self) -> anyhow::Result<(PodEventKind, String)> {
        let e = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .context("no pod event in time")?
            .context("channel closed")?;
        ensure!(e.observed_at > 0, "observed_at not set");
        let uid = e.pod["metadata"]["uid"]
            .as_str()
            .context("event without uid")?
            .to_string();
        Ok((e.kind, uid))
    }

    async fn next_n(&mut self, n: usize) -> anyhow::Result<Vec<(PodEventKind, String)>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.next().await?);
        }
        Ok(v)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("run did not stop")??
            .context("run failed")?;
        Ok(())
    }
}

async fn start(url: &str, token: &str, page_size: u32) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let config = KubernetesConfig {
        api_server: Some(url.to_string()),
        token_file: Some(token_file.clone()),
        page_size,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..KubernetesConfig::default()
    };
    let source = Kubernetes::new(config)?;
    let (tx, rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(tx, shutdown.clone()));
    Ok(Running {
        rx,
        shutdown,
        task,
        token_file,
        _dir: dir,
    })
}

/// Waits until the fake's requests satisfy `pred`.
async fn until(
    fake: &Fake,
    what: &str,
    pred: impl Fn(&[Seen]) -> bool,
) -> anyhow::Result<Vec<Seen>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = fake.seen();
        if pred(&seen) {
            return Ok(seen);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; saw {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

use PodEventKind::{Added, Deleted, Modified};

fn ev(kind: PodEventKind, uid: &str) -> (PodEventKind, String) {
    (kind, uid.to_string())
}

#[tokio::test]
async fn lists_page_by_page_then_watches_from_the_list_and_bookmark_versions() -> anyhow::Result<()>
{
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "tok-1".into();
    fake.lists.lock().expect("lock").push_back(pod_list(
        "100",
        vec![pod("u1", "p1", "90"), pod("u2", "p2", "95")],
    ));
    fake.watches
        .lock()
        .expect("lock")
        .push_back(Reply::Lines(vec![
            event("ADDED", pod("u3", "p3", "101")),
            event("MODIFIED", pod("u1", "p1", "102")),
            event("DELETED", pod("u2", "p2", "103")),
            bookmark("110"),
        ]));
    let (fake, url) = serve(fake).await?;
    let mut run = start(&url, "tok-1", 1).await?;

    let events = run.next_n(5).await?;
    assert_eq!(
        events,
        [
            ev(Added, "u1"),
            ev(Added, "u2"),
            ev(Added, "u3"),
            ev(Modified, "u1"),
            ev(Deleted, "u2")
        ]
    );

    // The stream ended after the bookmark: the next watch resumes from the bookmark's version.
    let seen = until(&fake, "a second watch", |s| {
        s.iter().filter(|s| s.watch).count() >= 2
    })
    .await?;
    let lists: Vec<&Seen> = seen.iter().filter(|s| !s.watch).collect();
    assert_eq!(lists.len(), 2, "two pages of one pod");
    assert_eq!(lists[0].query.get("limit").map(String::as_str), Some("1"));
    assert_eq!(lists[0].query.get("continue"), None);
    assert_eq!(
        lists[1].query.get("continue").map(String::as_str),
        Some("1")
    );
    let watches: Vec<&Seen> = seen.iter().filter(|s| s.watch).collect();
    assert_eq!(
        watches[0].query.get("resourceVersion").map(String::as_str),
        Some("100")
    );
    assert_eq!(
        watches[0]
            .query
            .get("allowWatchBookmarks")
            .map(String::as_str),
        Some("true")
    );
    assert!(watches[0].query.contains_key("timeoutSeconds"));
    assert_eq!(
        watches[1].query.get("resourceVersion").map(String::as_str),
        Some("110")
    );
    assert!(
        seen.iter()
            .all(|s| s.auth.as_deref() == Some("Bearer tok-1") && s.status == 200),
        "{seen:#?}"
    );
    run.stop().await
}

#[tokio::test]
async fn watch_410_gone_relists_and_reports_pods_deleted_meanwhile() -> anyhow::Result<()> {
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "tok".into();
    {
        let mut lists = fake.lists.lock().expect("lock");
        lists.push_back(pod_list(
            "100",
            vec![pod("u1", "p1", "90"), pod("u2", "p2", "95")],
        ));
        // While the watch was gone: p1 changed, p2 was deleted, p3 was created.
        lists.push_back(pod_list(
            "200",
            vec![pod("u1", "p1", "150"), pod("u3", "p3", "160")],
        ));
    }
    fake.watches
        .lock()
        .expect("lock")
        .push_back(Reply::Status(410));
    let (fake, url) = serve(fake).await?;
    let mut run = start(&url, "tok", 500).await?;

    assert_eq!(run.next_n(2).await?, [ev(Added, "u1"), ev(Added, "u2")]);
    assert_eq!(
        run.next_n(3).await?,
        [ev(Modified, "u1"), ev(Added, "u3"), ev(Deleted, "u2")]
    );
    let seen = until(&fake, "a watch after the relist", |s| {
        s.iter().filter(|s| s.watch).count() >= 2
    })
    .await?;
    assert_eq!(seen.iter().filter(|s| !s.watch).count(), 2, "one relist");
    let watches: Vec<&Seen> = seen.iter().filter(|s| s.watch).collect();
    assert_eq!(watches[0].status, 410);
    assert_eq!(
        watches[1].query.get("resourceVersion").map(String::as_str),
        Some("200")
    );
    run.stop().await
}

#[tokio::test]
async fn an_error_event_with_code_410_relists_without_repeating_unchanged_pods()
-> anyhow::Result<()> {
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "tok".into();
    {
        let mut lists = fake.lists.lock().expect("lock");
        lists.push_back(pod_list("100", vec![pod("u1", "p1", "90")]));
        lists.push_back(pod_list(
            "300",
            vec![pod("u1", "p1", "90"), pod("u3", "p3", "101")],
        ));
    }
    fake.watches
        .lock()
        .expect("lock")
        .push_back(Reply::Lines(vec![
            event("ADDED", pod("u3", "p3", "101")),
            event("ERROR", status(410, "Expired")),
            // Never read: the source has left this watch.
            event("ADDED", pod("u9", "p9", "999")),
        ]));
    let (fake, url) = serve(fake).await?;
    let mut run = start(&url, "tok", 500).await?;

    assert_eq!(run.next_n(2).await?, [ev(Added, "u1"), ev(Added, "u3")]);
    let seen = until(&fake, "a watch after the relist", |s| {
        s.iter().filter(|s| s.watch).count() >= 2
    })
    .await?;
    assert_eq!(
        seen.iter().filter(|s| !s.watch).count(),
        2,
        "relisted after the ERROR event"
    );
    let second_watch = seen
        .iter()
        .filter(|s| s.watch)
        .nth(1)
        .context("second watch")?;
    assert_eq!(
        second_watch
            .query
            .get("resourceVersion")
            .map(String::as_str),
        Some("300")
    );
    // The relist found nothing new: no event was sent for it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(run.rx.try_recv().is_err(), "unchanged pods were sent again");
    run.stop().await
}

#[tokio::test]
async fn a_malformed_line_resumes_the_watch_from_the_last_good_version() -> anyhow::Result<()> {
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "tok".into();
    fake.lists
        .lock()
        .expect("lock")
        .push_back(pod_list("100", vec![]));
    fake.watches
        .lock()
        .expect("lock")
        .push_back(Reply::Lines(vec![
            event("ADDED", pod("u3", "p3", "101")),
            "{\"type\": \"MODIFIED\", \"object\": {".to_string(),
        ]));
    let (fake, url) = serve(fake).await?;
    let mut run = start(&url, "tok", 500).await?;

    assert_eq!(run.next().await?, ev(Added, "u3"));
    let seen = until(&fake, "a second watch", |s| {
        s.iter().filter(|s| s.watch).count() >= 2
    })
    .await?;
    assert_eq!(seen.iter().filter(|s| !s.watch).count(), 1, "no relist");
    let second_watch = seen
        .iter()
        .filter(|s| s.watch)
        .nth(1)
        .context("second watch")?;
    assert_eq!(
        second_watch
            .query
            .get("resourceVersion")
            .map(String::as_str),
        Some("101")
    );
    run.stop().await
}

#[tokio::test]
async fn the_token_is_reread_on_every_reconnect() -> anyhow::Result<()> {
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "rotated".into();
    fake.lists
        .lock()
        .expect("lock")
        .push_back(pod_list("100", vec![pod("u1", "p1", "90")]));
    let (fake, url) = serve(fake).await?;
    let mut run = start(&url, "expired", 500).await?;

    // The server refuses the old token; the source keeps retrying with backoff.
    until(&fake, "two refused lists", |s| {
        s.iter().filter(|s| s.status == 401).count() >= 2
    })
    .await?;
    assert!(run.rx.try_recv().is_err());
    // The kubelet rotates the projected token; the next attempt must use the new one.
    std::fs::write(&run.token_file, "rotated\n")?;
    assert_eq!(run.next().await?, ev(Added, "u1"));
    let seen = until(&fake, "a watch", |s| s.iter().any(|s| s.watch)).await?;
    assert!(
        seen.iter()
            .filter(|s| s.status == 401)
            .all(|s| s.auth.as_deref() == Some("Bearer expired"))
    );
    assert!(
        seen.iter()
            .filter(|s| s.status == 200)
            .all(|s| s.auth.as_deref() == Some("Bearer rotated"))
    );
    assert_eq!(fake.lists_seen().len(), 1);
    run.stop().await
}

#[tokio::test]
async fn a_server_error_on_watch_backs_off_and_watches_again_without_relisting()
-> anyhow::Result<()> {
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "tok".into();
    fake.lists
        .lock()
        .expect("lock")
        .push_back(pod_list("100", vec![]));
    fake.watches
        .lock()
        .expect("lock")
        .push_back(Reply::Status(500));
    let (fake, url) = serve(fake).await?;
    let run = start(&url, "tok", 500).await?;

    let seen = until(&fake, "a second watch", |s| {
        s.iter().filter(|s| s.watch).count() >= 2
    })
    .await?;
    assert_eq!(
        seen.iter().filter(|s| !s.watch).count(),
        1,
        "a 500 is not a reason to relist"
    );
    let watches: Vec<&Seen> = seen.iter().filter(|s| s.watch).collect();
    assert_eq!(watches[0].status, 500);
    assert_eq!(
        watches[1].query.get("resourceVersion").map(String::as_str),
        Some("100")
    );
    assert_eq!(
        fake.watches_seen().len(),
        1,
        "only the held watch succeeded"
    );
    run.stop().await
}

#[tokio::test]
async fn shutdown_or_a_dropped_receiver_ends_run_with_ok() -> anyhow::Result<()> {
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "tok".into();
    fake.lists
        .lock()
        .expect("lock")
        .push_back(pod_list("100", vec![pod("u1", "p1", "90")]));
    let (fake, url) = serve(fake).await?;

    // A silent, open watch is interrupted by the cancellation token.
    let mut run = start(&url, "tok", 500).await?;
    assert_eq!(run.next().await?, ev(Added, "u1"));
    until(&fake, "a watch", |s| s.iter().any(|s| s.watch)).await?;
    run.stop().await?;

    // The pipeline going away (receiver dropped) ends the source too.
    let run = start(&url, "tok", 500).await?;
    let Running {
        rx,
        task,
        shutdown,
        _dir,
        ..
    } = run;
    drop(rx);
    tokio::time::timeout(WAIT, task)
        .await
        .context("run did not stop")??
        .context("run failed")?;
    assert!(!shutdown.is_cancelled());
    Ok(())
}

/// A dcgm-exporter pod of the GPU Operator's DaemonSet.
fn exporter_pod(uid: &str, phase: &str, ip: Option<&str>) -> Value {
    let mut status = json!({"phase": phase});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    json!({
        "metadata": {"uid": uid, "name": format!("nvidia-dcgm-exporter-{uid}"),
                     "namespace": "gpu-operator", "resourceVersion": "7",
                     "labels": {"app": "nvidia-dcgm-exporter"}},
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "nvidia-dcgm-exporter",
                 "image": "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.5-3.4.0-ubuntu22.04"}]},
        "status": status
    })
}

#[tokio::test]
async fn dcgm_scrape_discovers_running_exporter_pods_through_the_api() -> anyhow::Result<()> {
    use gpusiem_ingest::Stream;
    use gpusiem_ingest::metrics::IngestMetrics;
    use gpusiem_ingest::source::{Source, SourceContext};
    use gpusiem_ingest::sources::dcgm_scrape::{DcgmScrape, DcgmScrapeConfig, Discovery};

    // The exporter: a real dcgm-exporter scrape, counted.
    let scrapes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/real/dcgm/kops-aws-l4-metrics.prom"),
    )?;
    let counter = scrapes.clone();
    let exporter = Router::new().route(
        "/metrics",
        get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, exporter).await });

    // The API server lists one running exporter and one still pending (no IP yet).
    let fake = Fake::default();
    *fake.token.lock().expect("lock") = "t0k3n".into();
    fake.lists.lock().expect("lock").push_back(pod_list(
        "10",
        vec![
            exporter_pod("e1", "Running", Some("127.0.0.1")),
            exporter_pod("e2", "Pending", None),
        ],
    ));
    let (fake, url) = serve(fake).await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0k3n\n")?;

    let config = DcgmScrapeConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        discovery: Some(Discovery {
            kubernetes: KubernetesConfig {
                api_server: Some(url),
                token_file: Some(token_file),
                namespace: Some("gpu-operator".into()),
                label_selector: Some("app=nvidia-dcgm-exporter".into()),
                ..KubernetesConfig::default()
            },
            port,
            scheme: "http".into(),
            path: "/metrics".into(),
        }),
        ..DcgmScrapeConfig::default()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let cx = SourceContext::new(tx, shutdown.clone(), IngestMetrics::default());
    let task = tokio::spawn(Box::new(DcgmScrape::new(config)).run(cx));

    let batch = tokio::time::timeout(WAIT, rx.recv())
        .await
        .context("no scrape in time")?
        .context("channel closed")?;
    ensure!(batch.stream == Stream::GpuMetrics);
    ensure!(
        batch.records.num_rows() > 0,
        "the scrape decoded no samples"
    );
    let origin = format!("dcgm_scrape:http://127.0.0.1:{port}/metrics");
    ensure!(*batch.origin == *origin, "{} != {origin}", batch.origin);
    // Only the running pod is scraped, again and again.
    for _ in 0..2 {
        let b = tokio::time::timeout(WAIT, rx.recv())
            .await
            .context("no scrape in time")?
            .context("channel closed")?;
        ensure!(*b.origin == *origin, "{}", b.origin);
    }
    ensure!(scrapes.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    // The watcher asked for the exporters' namespace and labels.
    let lists = fake.lists_seen();
    ensure!(
        lists
            .first()
            .and_then(|s| s.query.get("labelSelector"))
            .map(String::as_str)
            == Some("app=nvidia-dcgm-exporter"),
        "{lists:?}"
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await??
        .context("run failed")?;
    Ok(())
}
