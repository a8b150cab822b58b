//! Kubernetes API pod watcher: lists, then watches, `/api/v1/pods` and sends every pod change
//! as a [`PodEvent`]. It feeds the pod inventory on clusters whose audit log gpusiem cannot
//! read (managed control planes).
//!
//! ```text
//!  GET /api/v1/pods?limit=500[&continue=…] ─► Added / Modified / Deleted (diffed against the
//!        │ resourceVersion R                    pods known before, so a relist reports the
//!        ▼                                      deletions that happened while disconnected)
//!  GET /api/v1/pods?watch=1&resourceVersion=R&allowWatchBookmarks=true&timeoutSeconds=300
//!        │ one JSON object a line: {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": …}
//!        ├─ ADDED/MODIFIED/DELETED ─► PodEvent; R := object's resourceVersion
//!        ├─ BOOKMARK ─► R := bookmark's resourceVersion (nothing sent)
//!        ├─ stream ends (timeoutSeconds) ─► watch again from R
//!        ├─ HTTP 410 Gone, or ERROR with code 410 ─► R is compacted away: list again
//!        └─ any other failure ─► jittered, doubling backoff, then watch again from R
//! ```
//!
//! Credentials: in a pod, the API server is `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
//! the bearer token `/var/run/secrets/kubernetes.io/serviceaccount/token` and the CA
//! `…/ca.crt`. The token is re-read on every (re)connect because bound service-account tokens
//! are rotated by the kubelet (hourly by default); the CA is read once, when the client is built.
//! All three can be set explicitly (tests, running outside the cluster).
//!
//! This source does not decode into Arrow: pod objects go to the inventory (in the detect crate)
//! as JSON, through a bounded channel. A full channel holds the watch back (the API server's
//! TCP window absorbs the rest); nothing is queued without bound.
//!
//! Shutdown: when the cancellation token fires, `run` stops at the next await and returns `Ok`.
//! It also returns `Ok` when the receiving side of the channel is dropped. `run` returns `Err`
//! only for configuration that can never work; transport errors are logged, counted and retried.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::IngestMetrics;
use crate::source::{http_client_builder, now_nanos};
use crate::{Error, Result};

/// Where a pod's service-account token is mounted.
pub const IN_CLUSTER_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the cluster CA bundle is mounted.
pub const IN_CLUSTER_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Name used in logs and metrics.
const KIND: &str = "kubernetes";

/// What happened to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodEventKind {
    /// A pod appeared (watch `ADDED`, or first seen in a list).
    Added,
    /// A pod changed (watch `MODIFIED`, or a new resourceVersion seen in a relist).
    Modified,
    /// A pod is gone (watch `DELETED`, or missing from a relist).
    Deleted,
}

/// One pod change, as sent by [`Kubernetes::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct PodEvent {
    /// What happened.
    pub kind: PodEventKind,
    /// The Pod object as the API server returned it. A `Deleted` event synthesized after a
    /// relist (the pod vanished while the watch was down) carries only `metadata` with `uid`,
    /// `namespace`, `name` and `resourceVersion`, like client-go's `DeletedFinalStateUnknown`.
    pub pod: serde_json::Value,
    /// Wall-clock time the change was received, ns since the epoch.
    pub observed_at: i64,
}

/// Settings of the pod watcher.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// API server base URL (`https://10.96.0.1:443`). `None`: the in-cluster address from
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub api_server: Option<String>,
    /// Bearer-token file, re-read on every (re)connect. `None`: the in-cluster service-account
    /// token when it exists, else no `Authorization` header.
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the API server's certificate; when set (or found in-cluster)
    /// it is the only trust anchor. `None`: the in-cluster `ca.crt` when it exists, else the
    /// platform's roots. Ignored for `http://` URLs.
    pub ca_file: Option<PathBuf>,
    /// Only pods of this namespace; `None`: every namespace.
    pub namespace: Option<String>,
    /// `labelSelector` for list and watch.
    pub label_selector: Option<String>,
    /// `fieldSelector` for list and watch (`spec.nodeName=gpu-node-1`).
    pub field_selector: Option<String>,
    /// Pods per list page (`limit`).
    pub page_size: u32,
    /// `timeoutSeconds` of one watch request; the API server ends the watch after it and the
    /// source watches again from the last resourceVersion.
    pub watch_timeout: Duration,
    /// Timeout of one list page.
    pub request_timeout: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Longest watch event line accepted; longer ones are skipped (etcd caps objects at
    /// about 1.5 MiB, so only a misbehaving server sends more).
    pub max_event_bytes: usize,
    /// Largest list page accepted.
    pub max_list_bytes: usize,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            api_server: None,
            token_file: None,
            ca_file: None,
            namespace: None,
            label_selector: None,
            field_selector: None,
            page_size: 500,
            watch_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_event_bytes: 16 << 20,
            max_list_bytes: 512 << 20,
        }
    }
}

/// The in-cluster API server URL from the service environment variables, as `env` reports
/// them. `None` when either is unset or empty (not running in a pod).
pub fn in_cluster_url(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
    let port = env("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty())?;
    // An IPv6 service address (dual-stack or IPv6-only clusters) needs brackets in a URL.
    if host.contains(':') && !host.starts_with('[') {
        Some(format!("https://[{host}]:{port}"))
    } else {
        Some(format!("https://{host}:{port}"))
    }
}

/// The pod watcher. See the module docs.
pub struct Kubernetes {
    config: KubernetesConfig,
    client: reqwest::Client,
    /// `…/api/v1[/namespaces/NS]/pods`.
    pods_url: reqwest::Url,
    token_file: Option<PathBuf>,
    metrics: IngestMetrics,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("pods_url", &self.pods_url.as_str())
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// Resolves the API server, checks the credentials files and builds the HTTP client.
    ///
    /// Errors ([`Error::Config`]) when no API server is configured outside a cluster, the URL
    /// is not `http(s)`, a configured token or CA file cannot be read, or the CA is not PEM.
    pub fn new(config: KubernetesConfig) -> Result<Self> {
        let base = match &config.api_server {
            Some(url) => url.clone(),
            None => in_cluster_url(|k| std::env::var(k).ok()).ok_or_else(|| {
                Error::Config(
                    "kubernetes: no api_server configured and KUBERNETES_SERVICE_HOST/PORT are \
                     unset (not running in a pod)"
                        .into(),
                )
            })?,
        };
        let pods_url = pods_url(&base, config.namespace.as_deref())?;
        if config.page_size == 0 || config.max_event_bytes == 0 || config.max_list_bytes == 0 {
            return Err(Error::Config(
                "kubernetes: page_size, max_event_bytes and max_list_bytes must be positive".into(),
            ));
        }

        let token_file = match &config.token_file {
            Some(path) => {
                // A configured token must exist now; a typo should fail at start, not retry forever.
                read_token(path).map_err(Error::Config)?;
                Some(path.clone())
            }
            None => Some(PathBuf::from(IN_CLUSTER_TOKEN_FILE)).filter(|p| p.exists()),
        };
        if token_file.is_none() {
            tracing::warn!("kubernetes: no service-account token; requests are anonymous");
        }

        let mut builder = http_client_builder().connect_timeout(config.connect_timeout);
        if pods_url.scheme() == "https" {
            let ca = match &config.ca_file {
                Some(path) => Some(path.clone()),
                None => Some(PathBuf::from(IN_CLUSTER_CA_FILE)).filter(|p| p.exists()),
            };
            if let Some(path) = ca {
                let pem = std::fs::read(&path).map_err(|e| Error::File {
                    op: "reading the Kubernetes CA",
                    path: path.clone(),
                    source: e,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    Error::Config(format!("kubernetes: CA file {}: {e}", path.display()))
                })?;
                if certs.is_empty() {
                    return Err(Error::Config(format!(
                        "kubernetes: CA file {} holds no certificate",
                        path.display()
                    )));
                }
                // The cluster CA is the only authority for the API server: trusting public
                // roots as well would let any publicly valid certificate impersonate it.
                builder = builder.tls_certs_only(certs);
            }
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("kubernetes: building the HTTP client: {e}")))?;
        Ok(Kubernetes {
            config,
            client,
            pods_url,
            token_file,
            metrics: IngestMetrics::default(),
        })
    }

    /// Counts errors into `metrics` (`gpusiem_ingest_source_errors_total{source="kubernetes"}`).
    pub fn with_metrics(mut self, metrics: IngestMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        KIND
    }

    /// Lists and watches pods until `shutdown` fires or `out` is closed; see the module docs.
    #[tracing::instrument(name = "kubernetes_source", skip_all, fields(url = %self.pods_url))]
    pub async fn run(self, out: mpsc::Sender<PodEvent>, shutdown: CancellationToken) -> Result<()> {
        let mut known: HashMap<String, Known> = HashMap::new();
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let cx = Cx {
            out: &out,
            shutdown: &shutdown,
        };
        'list: loop {
            let mut rv = match self.list(&mut known, &cx).await {
                Ok(Some(rv)) => {
                    backoff.reset();
                    rv
                }
                Ok(None) => return Ok(()),
                Err(reason) => {
                    self.metrics.record_error(KIND, "list");
                    tracing::warn!(error = %reason, "listing pods failed");
                    if !backoff.wait(&shutdown).await {
                        return Ok(());
                    }
                    continue 'list;
                }
            };
            tracing::debug!(resource_version = %rv, pods = known.len(), "listed pods");
            loop {
                let (end, progress) = self.watch(&mut rv, &mut known, &cx).await;
                if progress {
                    backoff.reset();
                }
                match end {
                    WatchEnd::Stop => return Ok(()),
                    WatchEnd::Ended => {
                        // A watch that ends without a single line may be a server closing at
                        // once; back off so that it cannot become a tight loop.
                        if !progress && !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                    }
                    WatchEnd::Expired => {
                        self.metrics.record_error(KIND, "expired");
                        tracing::info!(resource_version = %rv, "resource version expired; relisting");
                        if !progress && !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                        continue 'list;
                    }
                    WatchEnd::Failed(reason) => {
                        self.metrics.record_error(KIND, "watch");
                        tracing::warn!(error = %reason, "watching pods failed");
                        if !backoff.wait(&shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Lists every pod (page by page), sends the differences with `known`, and returns the
    /// list's resourceVersion. `Ok(None)`: shutdown or the receiver is gone.
    async fn list(
        &self,
        known: &mut HashMap<String, Known>,
        cx: &Cx<'_>,
    ) -> Result<Option<String>, String> {
        let mut items: Vec<serde_json::Value> = Vec::new();
        let mut continue_token: Option<String> = None;
        let rv = loop {
            let mut query = vec![("limit", self.config.page_size.to_string())];
            if let Some(c) = &continue_token {
                query.push(("continue", c.clone()));
            }
            let url = self.url(&query);
            let request = self
                .authorized(self.client.get(url))?
                .timeout(self.config.request_timeout);
            let response = tokio::select! {
                r = request.send() => r.map_err(|e| e.without_url().to_string())?,
                () = cx.shutdown.cancelled() => return Ok(None),
            };
            let status = response.status();
            if status == reqwest::StatusCode::GONE && continue_token.is_some() {
                // The continue token outlived etcd's compaction window: start over.
                tracing::info!("list continue token expired; listing from the start");
                items.clear();
                continue_token = None;
                continue;
            }
            if !status.is_success() {
                return Err(format!("list answered HTTP {}", status.as_u16()));
            }
            let body = tokio::select! {
                b = read_body(response, self.config.max_list_bytes) => b?,
                () = cx.shutdown.cancelled() => return Ok(None),
            };
            let page: PodList = serde_json::from_slice(&body)
                .map_err(|e| format!("list body is not a PodList: {e}"))?;
            items.extend(page.items);
            match page.metadata.continue_token.filter(|c| !c.is_empty()) {
                Some(c) => continue_token = Some(c),
                None => {
                    break page.metadata.resource_version.ok_or_else(|| {
                        "list answered without metadata.resourceVersion".to_string()
                    })?;
                }
            }
        };

        let observed_at = now_nanos();
        let mut seen: HashMap<String, Known> = HashMap::with_capacity(items.len());
        let mut events = Vec::new();
        for pod in items {
            let Some(k) = Known::of(&pod) else { continue };
            let kind = match known.get(&k.uid) {
                None => Some(PodEventKind::Added),
                Some(old) if old.resource_version != k.resource_version => {
                    Some(PodEventKind::Modified)
                }
                // Unchanged since the last watch event: nothing new to tell.
                Some(_) => None,
            };
            if let Some(kind) = kind {
                events.push(PodEvent {
                    kind,
                    pod,
                    observed_at,
                });
            }
            seen.insert(k.uid.clone(), k);
        }
        for (uid, old) in known.iter() {
            if !seen.contains_key(uid) {
                events.push(PodEvent {
                    kind: PodEventKind::Deleted,
                    pod: old.tombstone(),
                    observed_at,
                });
            }
        }
        *known = seen;
        for event in events {
            if !cx.send(event).await {
                return Ok(None);
            }
        }
        Ok(Some(rv))
    }

    /// One watch request from `rv`. Returns how it ended and whether it carried any line.
    async fn watch(
        &self,
        rv: &mut String,
        known: &mut HashMap<String, Known>,
        cx: &Cx<'_>,
    ) -> (WatchEnd, bool) {
        let url = self.url(&[
            ("watch", "1".to_string()),
            ("resourceVersion", rv.clone()),
            ("allowWatchBookmarks", "true".to_string()),
            (
                "timeoutSeconds",
                self.config.watch_timeout.as_secs().max(1).to_string(),
            ),
        ]);
        let request = match self.authorized(self.client.get(url)) {
            // The server ends the watch after timeoutSeconds; the margin covers a server that
            // goes silent instead, so a dead connection cannot hang the source.
            Ok(r) => r.timeout(self.config.watch_timeout + Duration::from_secs(30)),
            Err(reason) => return (WatchEnd::Failed(reason), false),
        };
        let mut response = tokio::select! {
            r = request.send() => match r {
                Ok(r) => r,
                Err(e) => return (WatchEnd::Failed(e.without_url().to_string()), false),
            },
            () = cx.shutdown.cancelled() => return (WatchEnd::Stop, false),
        };
        let status = response.status();
        if status == reqwest::StatusCode::GONE {
            return (WatchEnd::Expired, false);
        }
        if !status.is_success() {
            return (
                WatchEnd::Failed(format!("watch answered HTTP {}", status.as_u16())),
                false,
            );
        }

        let mut lines = LineSplitter::new(self.config.max_event_bytes);
        let mut progress = false;
        loop {
            let chunk = tokio::select! {
                c = response.chunk() => c,
                () = cx.shutdown.cancelled() => return (WatchEnd::Stop, progress),
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return (WatchEnd::Ended, progress),
                Err(e) => {
                    return (WatchEnd::Failed(e.without_url().to_string()), progress);
                }
            };
            let mut collected = Vec::new();
            let skipped = lines.push(&chunk, |line| collected.push(line.to_vec()));
            if skipped > 0 {
                self.metrics.record_error(KIND, "too_large");
                tracing::warn!(
                    skipped,
                    max_bytes = self.config.max_event_bytes,
                    "skipped watch events larger than the limit"
                );
            }
            for line in collected {
                progress = true;
                match self.on_line(&line, rv, known, cx).await {
                    Flow::Continue => {}
                    Flow::End(end) => return (end, progress),
                }
            }
        }
    }

    /// Handles one watch line.
    async fn on_line(
        &self,
        line: &[u8],
        rv: &mut String,
        known: &mut HashMap<String, Known>,
        cx: &Cx<'_>,
    ) -> Flow {
        let event: WatchEvent = match serde_json::from_slice(line) {
            Ok(e) => e,
            // Resuming from the last good resourceVersion loses nothing.
            Err(e) => return Flow::End(WatchEnd::Failed(format!("malformed watch event: {e}"))),
        };
        let kind = match event.kind.as_str() {
            "ADDED" => PodEventKind::Added,
            "MODIFIED" => PodEventKind::Modified,
            "DELETED" => PodEventKind::Deleted,
            "BOOKMARK" => {
                if let Some(v) = resource_version(&event.object) {
                    *rv = v.to_string();
                }
                return Flow::Continue;
            }
            "ERROR" => {
                let status: Status = serde_json::from_value(event.object).unwrap_or_default();
                let expired = status.code == Some(410)
                    || matches!(status.reason.as_deref(), Some("Expired" | "Gone"));
                return Flow::End(if expired {
                    WatchEnd::Expired
                } else {
                    WatchEnd::Failed(format!(
                        "watch ERROR event: code {}, reason {}",
                        status.code.unwrap_or(0),
                        status.reason.as_deref().unwrap_or("none")
                    ))
                });
            }
            other => {
                tracing::debug!(kind = other, "ignoring unknown watch event type");
                return Flow::Continue;
            }
        };
        if let Some(v) = resource_version(&event.object) {
            *rv = v.to_string();
        }
        if let Some(k) = Known::of(&event.object) {
            if kind == PodEventKind::Deleted {
                known.remove(&k.uid);
            } else {
                known.insert(k.uid.clone(), k);
            }
        }
        let sent = cx
            .send(PodEvent {
                kind,
                pod: event.object,
                observed_at: now_nanos(),
            })
            .await;
        if sent {
            Flow::Continue
        } else {
            Flow::End(WatchEnd::Stop)
        }
    }

    /// The pods URL with `query` and the configured selectors.
    fn url(&self, query: &[(&str, String)]) -> reqwest::Url {
        let mut url = self.pods_url.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            if let Some(s) = &self.config.label_selector {
                q.append_pair("labelSelector", s);
            }
            if let Some(s) = &self.config.field_selector {
                q.append_pair("fieldSelector", s);
            }
        }
        url
    }

    /// Adds the bearer token, read afresh because it rotates.
    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, String> {
        let Some(path) = &self.token_file else {
            return Ok(request);
        };
        let token = read_token(path)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| format!("token file {} holds an invalid token", path.display()))?;
        value.set_sensitive(true);
        Ok(request.header(AUTHORIZATION, value))
    }
}

/// Reads and trims a token file. The message names the file, never the token.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// `BASE/api/v1[/namespaces/NS]/pods`, checked.
fn pods_url(base: &str, namespace: Option<&str>) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base)
        .map_err(|e| Error::Config(format!("kubernetes: api_server is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(
            "kubernetes: api_server must be an http:// or https:// URL".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Config(
            "kubernetes: api_server must not carry credentials; use token_file".into(),
        ));
    }
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| Error::Config("kubernetes: api_server cannot be a base URL".into()))?;
        // Keeps a path prefix (an API server behind a proxy at /k8s/) and appends to it.
        segments.pop_if_empty().extend(["api", "v1"]);
        if let Some(ns) = namespace {
            segments.extend(["namespaces", ns]);
        }
        segments.push("pods");
    }
    Ok(url)
}

/// Reads a response body of at most `max` bytes.
async fn read_body(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("body larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("body larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `metadata.resourceVersion` of an object.
fn resource_version(object: &serde_json::Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(serde_json::Value::as_str)
        .filter(|v| !v.is_empty())
}

/// The channel and the token, passed together.
struct Cx<'a> {
    out: &'a mpsc::Sender<PodEvent>,
    shutdown: &'a CancellationToken,
}

impl Cx<'_> {
    /// Sends with back-pressure; `false` when shutting down or the receiver is gone.
    async fn send(&self, event: PodEvent) -> bool {
        tokio::select! {
            sent = self.out.send(event) => sent.is_ok(),
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// What the source remembers of each pod: enough to diff a relist and to name a pod that
/// vanished, not the whole object (a cluster can hold 100 000 pods).
#[derive(Debug, Clone, PartialEq)]
struct Known {
    uid: String,
    namespace: String,
    name: String,
    resource_version: String,
}

impl Known {
    fn of(pod: &serde_json::Value) -> Option<Known> {
        let meta = pod.get("metadata")?;
        let s = |k: &str| {
            meta.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let uid = s("uid");
        if uid.is_empty() {
            return None;
        }
        Some(Known {
            uid,
            namespace: s("namespace"),
            name: s("name"),
            resource_version: s("resourceVersion"),
        })
    }

    fn tombstone(&self) -> serde_json::Value {
        serde_json::json!({
            "metadata": {
                "uid": self.uid,
                "namespace": self.namespace,
                "name": self.name,
                "resourceVersion": self.resource_version,
            }
        })
    }
}

/// A `PodList` page.
#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

/// One watch line.
#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// A `meta/v1.Status` (the object of an `ERROR` watch event).
#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// How one watch request ended.
#[derive(Debug, PartialEq)]
enum WatchEnd {
    /// Shutdown or the receiver is gone.
    Stop,
    /// The server closed the stream normally (timeoutSeconds).
    Ended,
    /// The resourceVersion is too old: list again.
    Expired,
    /// Transport or protocol failure: back off, watch again.
    Failed(String),
}

enum Flow {
    Continue,
    End(WatchEnd),
}

/// Splits a byte stream into newline-terminated lines, skipping lines longer than a limit
/// without buffering them.
#[derive(Debug)]
struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes until its newline.
    discarding: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Feeds `chunk`; calls `line` for every complete, non-blank line (without its newline).
    /// Returns how many over-long lines were skipped.
    fn push(&mut self, mut chunk: &[u8], mut line: impl FnMut(&[u8])) -> usize {
        let mut skipped = 0;
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(pos) => {
                    if self.discarding {
                        self.discarding = false;
                    } else if self.buf.len() + pos > self.max {
                        skipped += 1;
                        self.buf.clear();
                    } else {
                        self.buf.extend_from_slice(&chunk[..pos]);
                        if !self.buf.trim_ascii().is_empty() {
                            line(&self.buf);
                        }
                        self.buf.clear();
                    }
                    chunk = &chunk[pos + 1..];
                }
                None => {
                    if !self.discarding {
                        if self.buf.len() + chunk.len() > self.max {
                            skipped += 1;
                            self.buf.clear();
                            self.discarding = true;
                        } else {
                            self.buf.extend_from_slice(chunk);
                        }
                    }
                    chunk = &[];
                }
            }
        }
        skipped
    }
}

/// Doubling retry delay with jitter, so that many replicas restarting together do not hit the
/// API server in lockstep.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay to wait now (between half and all of the current step); doubles the step.
    fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(jitter())
    }

    /// Sleeps the next delay; `false` when shutdown fired first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// A number in [0, 1) that differs between calls and processes (from the randomly seeded
/// std hasher; no RNG dependency needed for jitter).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_cluster_url_needs_both_variables_and_brackets_ipv6() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            in_cluster_url(env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443")
            ])),
            Some("https://10.96.0.1:443".to_string())
        );
        assert_eq!(
            in_cluster_url(env(&[
                ("KUBERNETES_SERVICE_HOST", "fd00:10:96::1"),
                ("KUBERNETES_SERVICE_PORT", "443")
            ])),
            Some("https://[fd00:10:96::1]:443".to_string())
        );
        assert_eq!(
            in_cluster_url(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")])),
            None
        );
        assert_eq!(
            in_cluster_url(env(&[
                ("KUBERNETES_SERVICE_HOST", ""),
                ("KUBERNETES_SERVICE_PORT", "443")
            ])),
            None
        );
    }

    #[test]
    fn pods_url_keeps_a_path_prefix_and_scopes_to_a_namespace() {
        let u = pods_url("https://10.96.0.1:443", None).expect("url");
        assert_eq!(u.as_str(), "https://10.96.0.1/api/v1/pods");
        let u = pods_url("http://127.0.0.1:8001/k8s/", Some("research")).expect("url");
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8001/k8s/api/v1/namespaces/research/pods"
        );
        assert!(pods_url("ftp://x", None).is_err());
        assert!(pods_url("not a url", None).is_err());
        assert!(pods_url("https://user:pw@10.0.0.1", None).is_err());
    }

    #[test]
    fn line_splitter_joins_chunks_and_skips_blank_and_overlong_lines() {
        let mut s = LineSplitter::new(8);
        let mut out: Vec<String> = Vec::new();
        let mut collect = |chunk: &[u8], s: &mut LineSplitter| {
            let mut v = Vec::new();
            let skipped = s.push(chunk, |l| v.push(String::from_utf8_lossy(l).into_owned()));
            out.extend(v);
            skipped
        };
        assert_eq!(collect(b"abc", &mut s), 0);
        assert_eq!(collect(b"de\n\n  \nxy", &mut s), 0);
        // "xy" + 7 more bytes exceeds 8 without a newline: dropped up to its newline.
        assert_eq!(collect(b"0123456", &mut s), 1);
        assert_eq!(collect(b"789\nok\n", &mut s), 0);
        // An over-long line that arrives complete in one chunk.
        assert_eq!(collect(b"0123456789\nlast\n", &mut s), 1);
        assert_eq!(out, ["abcde", "ok", "last"]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<Duration> = (0..4).map(|_| b.delay()).collect();
        let steps = [100, 200, 350, 350];
        for (d, step) in d.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(
                *d >= step / 2 && *d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }

    #[test]
    fn known_needs_a_uid_and_its_tombstone_names_the_pod() {
        let pod = serde_json::json!({"metadata": {"uid": "u1", "namespace": "ns", "name": "p",
            "resourceVersion": "7"}, "spec": {}});
        let k = Known::of(&pod).expect("known");
        assert_eq!(k.tombstone()["metadata"]["name"], "p");
        assert_eq!(k.tombstone()["metadata"]["uid"], "u1");
        assert!(Known::of(&serde_json::json!({"metadata": {"name": "p"}})).is_none());
    }

    #[test]
    fn a_configured_token_file_must_exist() {
        let cfg = KubernetesConfig {
            api_server: Some("http://127.0.0.1:1".into()),
            token_file: Some(PathBuf::from("/nonexistent/gpusiem/token")),
            ..KubernetesConfig::default()
        };
        let err = Kubernetes::new(cfg).expect_err("missing token file");
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let cfg = KubernetesConfig {
            api_server: Some("https://127.0.0.1:6443".into()),
            ca_file: Some(ca),
            ..KubernetesConfig::default()
        };
        assert!(Kubernetes::new(cfg).is_err());
    }
}
