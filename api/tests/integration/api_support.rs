//! Shared set-up of the API tests: a store in a temporary directory, the real query engine,
//! the real pipeline behind the receivers, tokens in files, and seeded findings and events in
//! two namespaces (`shop`, `research`) plus one finding without namespace.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use gpusiem::auth::{AuthConfig, Authenticator, Scope, TokenConfig};
use gpusiem::delivery::silences::{NewSilence, Silences};
use gpusiem::metrics::Metrics;
use gpusiem::pipeline::Pipeline;
use gpusiem::query::{NamespaceScope, QueryConfig, QueryEngine};
use gpusiem::server::audit::AuditLog;
use gpusiem::server::{self, ApiLimits, AppState, QuerySlots, RateLimiter};
use gpusiem::store::{Store, StoreConfig};
use gpusiem_detect::{Engine, EngineConfig, Finding, Role, Severity, Status};
use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::DecodeContext;
use gpusiem_ingest::source::SourceContext;
use gpusiem_ingest::sources::http::{HttpReceiverConfig, HttpReceivers};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Every scope, every namespace.
pub const ADMIN: &str = "admin-token-aaaaaaaaaaaaaaaa";
/// read + query, namespace `shop` only.
pub const SHOP: &str = "shop-analyst-token-bbbbbbbbbbbb";
/// read + query, every namespace.
pub const ANALYST: &str = "analyst-token-cccccccccccccccc";
/// read only.
pub const READER: &str = "reader-token-dddddddddddddddd";
/// ingest only.
pub const INGEST: &str = "ingest-token-eeeeeeeeeeeeeeee";
/// admin only (no read, no query).
pub const ADMIN_ONLY: &str = "admin-only-token-ffffffffffff";
/// Not configured.
pub const WRONG: &str = "wrong-token-000000000000000000";

/// A marker that appears only in rows of the `research` namespace.
pub const FOREIGN_MARKER: &str = "research";
pub const FOREIGN_POD: &str = "secret-trainer-7f9c";
pub const SHOP_POD: &str = "web-5d8c";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub app: Router,
    pub store: Arc<Store>,
    pub engine: Arc<QueryEngine>,
    pub shutdown: CancellationToken,
    pub pipeline: Option<tokio::task::JoinHandle<()>>,
    /// (id, namespace) of the seeded findings.
    pub findings: Vec<(String, Option<String>)>,
    /// A silence that exists.
    pub silence_id: String,
}

fn token(
    dir: &Path,
    name: &str,
    value: &str,
    scopes: &[Scope],
    namespaces: Option<&[&str]>,
) -> TokenConfig {
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, format!("{value}\n")).unwrap();
    TokenConfig {
        name: name.into(),
        token_file: Some(path),
        token_env: None,
        scopes: scopes.to_vec(),
        namespaces: namespaces.map(|n| n.iter().map(|s| s.to_string()).collect()),
    }
}

pub fn auth_config(dir: &Path) -> AuthConfig {
    AuthConfig {
        tokens: vec![
            token(dir, "root", ADMIN, &Scope::ALL, None),
            token(
                dir,
                "shop-analyst",
                SHOP,
                &[Scope::Read, Scope::Query],
                Some(&["shop"]),
            ),
            token(dir, "analyst", ANALYST, &[Scope::Read, Scope::Query], None),
            token(dir, "reader", READER, &[Scope::Read], None),
            token(dir, "falco", INGEST, &[Scope::Ingest], None),
            token(dir, "silencer", ADMIN_ONLY, &[Scope::Admin], None),
        ],
    }
}

pub struct Options {
    pub tokens: bool,
    pub limits: ApiLimits,
    pub query: QueryConfig,
    pub seed: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: true,
            limits: ApiLimits::default(),
            query: QueryConfig::default(),
            seed: true,
        }
    }
}

pub async fn harness() -> Harness {
    harness_with(Options::default()).await
}

pub async fn harness_with(o: Options) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut metrics = Metrics::new();
    let store = Store::open(&data, &StoreConfig::default()).await.unwrap();
    metrics.register_store(store.clone());
    let metrics = Arc::new(metrics);
    let audit = AuditLog::open(store.clone()).unwrap();
    let engine = Arc::new(QueryEngine::new(store.clone(), o.query));
    let auth = if o.tokens {
        Authenticator::load(&auth_config(dir.path())).unwrap()
    } else {
        Authenticator::open()
    };

    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::channel(16);
    let cx = SourceContext::new(tx, shutdown.clone(), metrics.ingest.clone());
    let receivers = HttpReceivers::new(
        cx,
        HttpReceiverConfig {
            max_body_bytes: o.limits.max_ingest_body_bytes,
            ..HttpReceiverConfig::default()
        },
    );
    let pipeline = Pipeline::new(
        Engine::new(EngineConfig::default()).unwrap(),
        None,
        Some(store.clone()),
        None,
        metrics.clone(),
    );
    let pipeline = tokio::spawn(pipeline.run(rx, shutdown.clone(), Duration::from_secs(30)));

    let state = AppState {
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
        auth: Arc::new(auth),
        engine: engine.clone(),
        audit,
        limits: Arc::new(o.limits),
        query_slots: Arc::new(QuerySlots::default()),
        rate: Arc::new(RateLimiter::default()),
    };
    let silences = Arc::new(Silences::open(&data).unwrap());
    let silence_id = silences
        .create(new_silence(), gpusiem_ingest::source::now_nanos())
        .unwrap()
        .id;
    let app = server::router(
        state.clone(),
        &receivers,
        Some(gpusiem::delivery::silences::router(silences)),
    );
    let mut h = Harness {
        dir,
        state,
        app,
        store,
        engine,
        shutdown,
        pipeline: Some(pipeline),
        findings: Vec::new(),
        silence_id,
    };
    if o.seed {
        h.seed().await;
    }
    h
}

pub fn new_silence() -> NewSilence {
    serde_json::from_value(new_silence_json()).unwrap()
}

pub fn new_silence_json() -> serde_json::Value {
    serde_json::json!({ "matchers": ["namespace=\"shop\""], "duration_secs": 3600, "author": "test", "comment": "maintenance" })
}

/// The path of a documented operation with its `{id}` filled: a seeded finding, or the
/// existing silence.
pub fn concrete_path(h: &Harness, template: &str) -> String {
    let id = if template.starts_with("/api/v1/silences") {
        h.silence_id.clone()
    } else {
        h.ids_in(Some("shop"))[0].clone()
    };
    template.replace("{id}", &id)
}

/// A body that the operation accepts.
pub fn body_for(method: &str, template: &str) -> Option<(&'static str, Vec<u8>)> {
    match (method, template) {
        ("POST", "/api/v1/query") => {
            Some(("application/json", br#"{"sql":"SELECT 1 AS one"}"#.to_vec()))
        }
        ("POST", "/ingest/falco") => Some(("application/json", falco_fixture())),
        ("POST", "/ingest/k8s-audit") => Some(("application/json", audit_fixture())),
        ("POST", "/api/v1/silences") => Some((
            "application/json",
            serde_json::to_vec(&new_silence_json()).unwrap(),
        )),
        _ => None,
    }
}

pub const T0: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

pub fn finding(
    id_seed: &str,
    ns: Option<&str>,
    pod: Option<&str>,
    severity: Severity,
    ts: i64,
    revision: u32,
    event_ids: &[String],
) -> Finding {
    Finding {
        id: gpusiem_detect::finding::finding_id("test_detector", id_seed, 0),
        ts,
        last_ts: ts + i64::from(revision) * 1_000_000_000,
        detector: "test_detector".into(),
        severity,
        status: if revision >= 2 {
            Status::Resolved
        } else {
            Status::Firing
        },
        revision,
        summary: format!("finding {id_seed} in {}", ns.unwrap_or("no namespace")),
        cluster: Some("c1".into()),
        namespace: ns.map(str::to_string),
        pod: pod.map(str::to_string),
        pod_uid: None,
        container: None,
        node: Some("node-1".into()),
        gpu_uuid: Some("GPU-1".into()),
        role: Role::Notebook,
        role_reason: "test".into(),
        mitre: vec!["T1496".into()],
        evidence: serde_json::json!({ "fb_used_mib": 20000, "seed": id_seed }),
        event_ids: event_ids.to_vec(),
    }
}

fn falco_line(uuid: &str, ns: &str, pod: &str, secs: i64) -> String {
    serde_json::json!({
        "uuid": uuid,
        "output": format!("crypto miner started in {ns}/{pod}"),
        "priority": "Critical",
        "rule": "Detect crypto miners",
        "time": gpusiem_ingest::time::format_rfc3339_nanos(T0 + secs * 1_000_000_000),
        "source": "syscall",
        "hostname": "node-1",
        "output_fields": { "k8s.ns.name": ns, "k8s.pod.name": pod, "proc.name": "xmrig" }
    })
    .to_string()
}

impl Harness {
    /// Seeds: 12 findings in `shop` (one with 3 revisions), 3 in `research`, 1 without
    /// namespace; Falco events in both namespaces, referenced by the first finding of each.
    pub async fn seed(&mut self) {
        let lines = [
            falco_line("ev-shop-1", "shop", SHOP_POD, 1),
            falco_line("ev-shop-2", "shop", SHOP_POD, 2),
            falco_line("ev-research-1", FOREIGN_MARKER, FOREIGN_POD, 3),
        ]
        .join("\n");
        let decoded = gpusiem_ingest::decode::decode(
            Stream::FalcoEvents,
            lines.as_bytes(),
            &DecodeContext::new(T0),
        )
        .unwrap();
        assert_eq!(decoded.batch.num_rows(), 3, "{:?}", decoded.quarantined);
        self.store
            .append(Stream::FalcoEvents, &decoded.batch)
            .await
            .unwrap();

        let mut all = Vec::new();
        let shop_events = vec![
            "falco_events:ev-shop-1".to_string(),
            "falco:ev-shop-2".to_string(),
        ];
        for rev in 0..3 {
            let sev = [Severity::Medium, Severity::High, Severity::Critical][rev as usize];
            all.push(finding(
                "shop-0",
                Some("shop"),
                Some(SHOP_POD),
                sev,
                T0,
                rev,
                &shop_events,
            ));
        }
        for i in 1..12 {
            let sev = if i % 2 == 0 {
                Severity::Low
            } else {
                Severity::High
            };
            all.push(finding(
                &format!("shop-{i}"),
                Some("shop"),
                Some(SHOP_POD),
                sev,
                T0 + i * 60_000_000_000,
                0,
                &[],
            ));
        }
        let foreign_events = vec!["falco_events:ev-research-1".to_string()];
        for i in 0..3 {
            all.push(finding(
                &format!("research-{i}"),
                Some(FOREIGN_MARKER),
                Some(FOREIGN_POD),
                Severity::Critical,
                T0 + i * 30_000_000_000,
                0,
                &foreign_events,
            ));
        }
        all.push(finding(
            "gpu-only",
            None,
            None,
            Severity::High,
            T0 + 5_000_000_000,
            0,
            &[],
        ));
        self.store.append_findings(&all).await.unwrap();
        let mut ids: Vec<(String, Option<String>)> = all
            .iter()
            .map(|f| (f.id.clone(), f.namespace.clone()))
            .collect();
        ids.dedup();
        self.findings = ids;
    }

    pub fn ids_in(&self, ns: Option<&str>) -> Vec<String> {
        self.findings
            .iter()
            .filter(|(_, n)| n.as_deref() == ns)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        self.send_with(method, path, token, body, &[]).await
    }

    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some((content_type, bytes)) => req
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(bytes))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn sql(&self, token: &str, sql: &str) -> Reply {
        let body = serde_json::to_vec(&serde_json::json!({ "sql": sql })).unwrap();
        self.send(
            Method::POST,
            "/api/v1/query",
            Some(token),
            Some(("application/json", body)),
        )
        .await
    }

    /// Rows of `api_audit`, read directly through the engine (not audited itself).
    pub async fn audit_rows(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let out = self
            .engine
            .sql_as_admin("SELECT principal, auth, method, route, path, status, outcome, reason, sql_sha256, rows, bytes, duration_ms, namespaces FROM api_audit ORDER BY ts", &NamespaceScope::all())
            .await
            .unwrap();
        let json = gpusiem::server::query::json_array(&out.batches).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(p) = self.pipeline.take() {
            let _ = p.await;
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn falco_fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/real/falco/elastic-falco-alerts-real.jsonl"
    ))
    .unwrap()
}

pub fn audit_fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/real/k8s-audit/falco-trace-exec_pod.jsonl"
    ))
    .unwrap()
}
