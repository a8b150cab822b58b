//! dcgm-exporter scraper: `GET <target>` every interval, decode the Prometheus text, stamp
//! samples that carry no timestamp with the scrape's start time.
//!
//! Targets are the configured URLs plus, with [`Discovery`], every running dcgm-exporter pod
//! the Kubernetes API reports (a pod watcher on the exporter's namespace and labels, as
//! Prometheus' `kubernetes_sd_configs` role `pod` does): a pod that starts is scraped from the
//! next scrape on, one that stops or is deleted no more.
//!
//! Targets are scraped concurrently; a slow or failing target never delays the others. A
//! response larger than `max_body_bytes` is abandoned (counted as `too_large`). The pipeline's
//! back-pressure holds the next scrape back rather than queueing scrapes in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::decode;
use crate::schema::Stream;
use crate::source::{BoxFuture, Source, SourceContext, http_client_builder, now_nanos};
use crate::sources::kubernetes::{Kubernetes, KubernetesConfig, PodEvent, PodEventKind};
use crate::{Batch, Error, Result};

/// Finding dcgm-exporter pods through the Kubernetes API.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The pod watcher: API server, credentials, and above all `namespace` and
    /// `label_selector` (`app=nvidia-dcgm-exporter` for the GPU Operator's DaemonSet).
    pub kubernetes: KubernetesConfig,
    /// The exporter's port in each pod.
    pub port: u16,
    /// `http` or `https`.
    pub scheme: String,
    /// The metrics path.
    pub path: String,
}

impl Discovery {
    /// The scrape URL of `pod`, when it is running and has an IP.
    fn target(&self, pod: &Value) -> Option<String> {
        let status = &pod["status"];
        if status["phase"].as_str() != Some("Running")
            || !pod["metadata"]["deletionTimestamp"].is_null()
        {
            return None;
        }
        let ip: std::net::IpAddr = status["podIP"].as_str()?.parse().ok()?;
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        Some(format!(
            "{}://{host}:{}{}",
            self.scheme, self.port, self.path
        ))
    }
}

/// Targets by pod uid, kept up to date from the watcher's events.
#[derive(Debug, Default)]
struct Discovered(BTreeMap<String, String>);

impl Discovered {
    fn apply(&mut self, discovery: &Discovery, event: &PodEvent) {
        let Some(uid) = event.pod["metadata"]["uid"].as_str() else {
            return;
        };
        let target = match event.kind {
            PodEventKind::Added | PodEventKind::Modified => discovery.target(&event.pod),
            PodEventKind::Deleted => None,
        };
        match target {
            Some(t) => {
                if self.0.insert(uid.to_string(), t.clone()).as_ref() != Some(&t) {
                    tracing::info!(target = %t, "dcgm-exporter discovered");
                }
            }
            None => {
                if let Some(t) = self.0.remove(uid) {
                    tracing::info!(target = %t, "dcgm-exporter gone");
                }
            }
        }
    }
}

/// Scraper settings.
#[derive(Debug, Clone)]
pub struct DcgmScrapeConfig {
    /// `http(s)://host:9400/metrics` URLs.
    pub targets: Vec<String>,
    /// Time between scrape starts.
    pub interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_body_bytes: usize,
    /// More targets, found through the Kubernetes API.
    pub discovery: Option<Discovery>,
}

impl Default for DcgmScrapeConfig {
    fn default() -> Self {
        DcgmScrapeConfig {
            targets: Vec::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            max_body_bytes: 64 << 20,
            discovery: None,
        }
    }
}

/// The scraper source.
pub struct DcgmScrape {
    config: DcgmScrapeConfig,
}

impl DcgmScrape {
    /// A scraper for `config.targets`.
    pub fn new(config: DcgmScrapeConfig) -> Self {
        DcgmScrape { config }
    }
}

impl Source for DcgmScrape {
    fn kind(&self) -> &'static str {
        "dcgm_scrape"
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<()>> {
        Box::pin(async move {
            let client = http_client_builder()
                .timeout(self.config.timeout)
                .build()
                .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
            // The watcher stops with the scraper (its token is a child of the shutdown).
            let watch_stop = cx.shutdown.child_token();
            let _stop_watch_on_exit = watch_stop.clone().drop_guard();
            let mut pods = match &self.config.discovery {
                Some(d) => {
                    let watcher =
                        Kubernetes::new(d.kubernetes.clone())?.with_metrics(cx.metrics.clone());
                    let (tx, rx) = mpsc::channel(1024);
                    let stop = watch_stop.clone();
                    tokio::spawn(async move {
                        if let Err(e) = watcher.run(tx, stop).await {
                            tracing::error!(error = %e, "dcgm-exporter discovery stopped");
                        }
                    });
                    Some(rx)
                }
                None => None,
            };
            let mut discovered = Discovered::default();
            let mut ticker = tokio::time::interval(self.config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = cx.shutdown.cancelled() => return Ok(()),
                }
                if let (Some(rx), Some(d)) = (pods.as_mut(), &self.config.discovery) {
                    while let Ok(event) = rx.try_recv() {
                        discovered.apply(d, &event);
                    }
                }
                let mut targets: Vec<&String> = self.config.targets.iter().collect();
                for t in discovered.0.values() {
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
                let scrapes = targets
                    .into_iter()
                    .map(|t| scrape(&client, t, self.config.max_body_bytes, &cx));
                for batch in join_all(scrapes).await.into_iter().flatten() {
                    tokio::select! {
                        sent = cx.out.send(batch) => if sent.is_err() { return Ok(()) },
                        () = cx.shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        })
    }
}

/// Scrapes one target; `None` (after logging and counting) when it failed.
async fn scrape(
    client: &reqwest::Client,
    target: &str,
    max_body_bytes: usize,
    cx: &SourceContext,
) -> Option<Batch> {
    let started = now_nanos();
    let body = match fetch(client, target, max_body_bytes).await {
        Ok(body) => body,
        Err((error, message)) => {
            cx.metrics.record_error("dcgm_scrape", error);
            tracing::warn!(target = %redact(target), error = message, "scrape failed");
            return None;
        }
    };
    let decoded = match decode::prometheus::decode(&body, &cx.decode_context(started)) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "decoder failed");
            return None;
        }
    };
    cx.metrics.record_rows(
        Stream::GpuMetrics,
        "dcgm_scrape",
        decoded.batch.num_rows(),
        body.len(),
    );
    let mut batch = Batch::new(
        Stream::GpuMetrics,
        decoded.batch,
        Arc::from(format!("dcgm_scrape:{}", redact(target))),
    );
    batch.quarantined = decoded.quarantined;
    Some(batch)
}

async fn fetch(
    client: &reqwest::Client,
    target: &str,
    max: usize,
) -> Result<Vec<u8>, (&'static str, String)> {
    let mut resp = client
        .get(target)
        .send()
        .await
        .map_err(|e| ("connect", without_url(e)))?;
    if !resp.status().is_success() {
        return Err(("status", format!("HTTP {}", resp.status().as_u16())));
    }
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(("too_large", format!("body larger than {max} bytes")));
    }
    let mut body =
        Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024).min(max as u64) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| ("read", without_url(e)))? {
        if body.len() + chunk.len() > max {
            return Err(("too_large", format!("body larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error's message without the URL (which may carry credentials).
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// The target URL without user info, for logs and origins.
fn redact(target: &str) -> String {
    match reqwest::Url::parse(target) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn discovery() -> Discovery {
        Discovery {
            kubernetes: KubernetesConfig::default(),
            port: 9400,
            scheme: "http".into(),
            path: "/metrics".into(),
        }
    }

    fn event(kind: PodEventKind, uid: &str, status: Value) -> PodEvent {
        PodEvent {
            kind,
            pod: json!({"metadata": {"uid": uid}, "status": status}),
            observed_at: 1,
        }
    }

    #[test]
    fn running_pods_with_an_ip_are_targets_until_they_stop_or_go() {
        let d = discovery();
        let mut found = Discovered::default();
        let running = json!({"phase": "Running", "podIP": "10.0.0.7"});
        found.apply(&d, &event(PodEventKind::Added, "a", running.clone()));
        found.apply(
            &d,
            &event(PodEventKind::Added, "b", json!({"phase": "Pending"})),
        );
        found.apply(
            &d,
            &event(
                PodEventKind::Added,
                "c",
                json!({"phase": "Running", "podIP": "fd00::7"}),
            ),
        );
        let targets: Vec<&str> = found.0.values().map(String::as_str).collect();
        assert_eq!(
            targets,
            [
                "http://10.0.0.7:9400/metrics",
                "http://[fd00::7]:9400/metrics"
            ]
        );
        // Stopped, being deleted, deleted: no longer scraped.
        found.apply(
            &d,
            &event(
                PodEventKind::Modified,
                "a",
                json!({"phase": "Succeeded", "podIP": "10.0.0.7"}),
            ),
        );
        assert!(!found.0.contains_key("a"));
        found.apply(&d, &event(PodEventKind::Modified, "a", running.clone()));
        let mut terminating = event(PodEventKind::Modified, "a", running);
        terminating.pod["metadata"]["deletionTimestamp"] = json!("2024-05-01T00:00:00Z");
        found.apply(&d, &terminating);
        assert!(!found.0.contains_key("a"));
        found.apply(&d, &event(PodEventKind::Deleted, "c", Value::Null));
        assert!(found.0.is_empty());
        // An address that is not an IP is never turned into a URL.
        found.apply(
            &d,
            &event(
                PodEventKind::Added,
                "x",
                json!({"phase": "Running", "podIP": "evil.example/@"}),
            ),
        );
        assert!(found.0.is_empty());
    }
}
