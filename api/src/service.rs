//! `gpusiem run`: the service, wired from the configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gpusiem_detect::{Engine, EngineConfig};
use gpusiem_ingest::quarantine::QuarantineWriter;
use gpusiem_ingest::source::{Source, SourceContext};
use gpusiem_ingest::sources::dcgm_scrape::{DcgmScrape, DcgmScrapeConfig};
use gpusiem_ingest::sources::file::{FileSource, FileSourceConfig, StartAt};
use gpusiem_ingest::sources::http::{HttpReceiverConfig, HttpReceivers};
use gpusiem_ingest::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::server::{self, AppState};
use crate::store::Store;

/// A running service: the bound address and the handle that stops it.
pub struct Running {
    /// The address the listener bound (useful with port 0).
    pub addr: std::net::SocketAddr,
    /// Fire to stop.
    pub shutdown: CancellationToken,
    /// Resolves when everything has stopped and flushed.
    pub done: tokio::task::JoinHandle<crate::Result<()>>,
}

/// Starts the service; returns once the listener is bound.
pub async fn start(config: Config) -> crate::Result<Running> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(crate::Error::Config(problems));
    }
    let addr = config.listen_addr().map_err(|e| crate::Error::Config(vec![e]))?;
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| crate::Error::File { op: "creating", path: data_dir.clone(), source })?;

    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let quarantine = QuarantineWriter::open(&data_dir.join("quarantine"), config.pipeline.quarantine_max_bytes, metrics.ingest.clone())
        .map_err(|e| crate::Error::Store { op: "quarantine", reason: e.to_string() })?;
    let store = Store::open(&data_dir, &config.store).await?;
    let delivery = Delivery::start(&config.sinks, &config.notifiers, &config.routing).await?;
    let engine = Engine::new(EngineConfig { inventory: config.inventory.clone(), detectors: config.detectors.clone() })
        .map_err(crate::Error::Detect)?;
    let pipeline = Pipeline::new(engine, Some(quarantine), Some(store.clone()), Some(delivery.clone()), metrics.clone());

    let (tx, rx) = mpsc::channel(config.pipeline.channel_batches);
    let mut cx = SourceContext::new(tx, shutdown.clone(), metrics.ingest.clone());
    cx.cluster = config.cluster.as_deref().map(Arc::from);
    cx.max_record_bytes = config.pipeline.max_record_bytes;

    let receivers = HttpReceivers::new(
        cx.clone(),
        HttpReceiverConfig { max_body_bytes: config.server.max_ingest_body_bytes, ..HttpReceiverConfig::default() },
    );
    let mut sources = Vec::new();
    for s in &config.sources {
        if let Some(source) = build_source(s, &config) {
            let kind = source.kind();
            let cx = cx.clone();
            sources.push(tokio::spawn(async move {
                if let Err(e) = source.run(cx).await {
                    tracing::error!(source = kind, error = %e, "source stopped");
                }
            }));
        }
    }
    drop(cx);

    let ready = Arc::new(AtomicBool::new(false));
    let app = server::router(AppState { metrics: metrics.clone(), ready: ready.clone() }, &receivers);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Serve { addr: addr.to_string(), reason: e.to_string() })?;
    let bound = listener.local_addr().map_err(|e| crate::Error::Serve { addr: addr.to_string(), reason: e.to_string() })?;
    tracing::info!(addr = %bound, data_dir = %data_dir.display(), "gpusiem listening");

    let lateness = Duration::from_secs(config.pipeline.allowed_lateness_secs);
    let pipeline_task = tokio::spawn(pipeline.run(rx, shutdown.clone(), lateness));
    ready.store(true, Ordering::Relaxed);

    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
        let served = serve.await.map_err(|e| crate::Error::Serve { addr: bound.to_string(), reason: e.to_string() });
        ready.store(false, Ordering::Relaxed);
        for s in sources {
            let _ = s.await;
        }
        // Receivers are gone with the server; the pipeline drains what was handed over.
        drop(receivers);
        let _ = pipeline_task.await;
        store.close().await?;
        served
    });
    Ok(Running { addr: bound, shutdown, done })
}

fn build_source(s: &SourceConfig, config: &Config) -> Option<Box<dyn Source>> {
    match s {
        SourceConfig::DcgmScrape { targets, interval_secs, timeout_secs } => Some(Box::new(DcgmScrape::new(DcgmScrapeConfig {
            targets: targets.clone(),
            interval: Duration::from_secs(*interval_secs),
            timeout: Duration::from_secs(*timeout_secs),
            ..DcgmScrapeConfig::default()
        }))),
        SourceConfig::File { path, stream, start_at } => {
            let stream = Stream::from_name(stream)?;
            let mut fc = FileSourceConfig::new(path.clone(), stream, config.server.data_dir.join("checkpoints"));
            if start_at.as_deref() == Some("end") {
                fc.start_at = StartAt::End;
            }
            Some(Box::new(FileSource::new(fc)))
        }
        SourceConfig::Kafka { .. } | SourceConfig::Kubernetes { .. } => {
            tracing::warn!("source type not built in this version");
            None
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
