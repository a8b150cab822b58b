//! dcgm-exporter scraper: `GET <target>` every interval, decode the Prometheus text, stamp
//! samples that carry no timestamp with the scrape's start time.
//!
//! Targets are scraped concurrently; a slow or failing target never delays the others. A
//! response larger than `max_body_bytes` is abandoned (counted as `too_large`). The pipeline's
//! back-pressure holds the next scrape back rather than queueing scrapes in memory.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::decode;
use crate::schema::Stream;
use crate::source::{BoxFuture, Source, SourceContext, http_client_builder, now_nanos};
use crate::{Batch, Error, Result};

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
}

impl Default for DcgmScrapeConfig {
    fn default() -> Self {
        DcgmScrapeConfig {
            targets: Vec::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            max_body_bytes: 64 << 20,
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
            let mut ticker = tokio::time::interval(self.config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = cx.shutdown.cancelled() => return Ok(()),
                }
                let scrapes = self
                    .config
                    .targets
                    .iter()
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
