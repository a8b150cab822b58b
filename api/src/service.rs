//! `gpusiem run`: the service, wired from the configuration.
//!
//! Start order: validate the configuration, load the tokens and the TLS material (so a bad
//! secret or certificate stops the start, not the first request), open the quarantine and the
//! store, register `api_audit`, start delivery, the engine, the pipeline and the sources, bind
//! the listener. Shutdown (the token fires): the listener stops accepting and drains requests
//! in flight, the sources stop, the pipeline drains what they handed over, then the store
//! flushes — the `done` handle resolves after that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gpusiem_ingest::Stream;
use gpusiem_ingest::quarantine::QuarantineWriter;
use gpusiem_ingest::source::{Source, SourceContext};
use gpusiem_ingest::sources::dcgm_scrape::{DcgmScrape, DcgmScrapeConfig, Discovery};
use gpusiem_ingest::sources::file::{FileSource, FileSourceConfig, StartAt};
use gpusiem_ingest::sources::http::{HttpReceiverConfig, HttpReceivers};
use gpusiem_ingest::sources::kafka::{KafkaSource, KafkaSourceConfig, KafkaTopics};
use gpusiem_ingest::sources::kubernetes::{Kubernetes, KubernetesConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::{Config, SourceConfig};
use crate::delivery::{Clock, Delivery, DeliveryContext};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::query::QueryEngine;
use crate::server::audit::AuditLog;
use crate::server::{self, ApiLimits, AppState, ConnectionLimits, QuerySlots, RateLimiter};
use crate::store::Store;

/// Pod changes waiting for the pipeline task; the watcher waits when it is full.
const POD_EVENT_QUEUE: usize = 4096;

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
    let addr = config
        .listen_addr()
        .map_err(|e| crate::Error::Config(vec![e]))?;
    // Secrets and certificates are read once, now.
    let auth = Arc::new(Authenticator::load(&config.auth).map_err(crate::Error::Config)?);
    let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            server::tls::server_config(
                cert,
                key,
                config.server.client_ca_file.as_deref(),
                config.server.client_cert,
            )
            .map_err(|e| crate::Error::Config(vec![e]))?,
        )),
        _ => None,
    };
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| crate::Error::File {
        op: "creating",
        path: data_dir.clone(),
        source,
    })?;

    let mut metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let quarantine = QuarantineWriter::open(
        &data_dir.join("quarantine"),
        config.pipeline.quarantine_max_bytes,
        metrics.ingest.clone(),
    )
    .map_err(|e| crate::Error::Store {
        op: "quarantine",
        reason: e.to_string(),
    })?;
    let store = Store::open(&data_dir, &config.store).await?;
    metrics.register_store(store.clone());
    let metrics = Arc::new(metrics);
    let audit = AuditLog::open(store.clone())?;
    let query_engine = Arc::new(QueryEngine::new(store.clone(), config.query.clone()));
    let delivery_cx = DeliveryContext {
        data_dir: data_dir.clone(),
        metrics: metrics.delivery.clone(),
        shutdown: shutdown.clone(),
        clock: Clock::Wall,
    };
    let delivery = Delivery::start(
        &config.sinks,
        &config.notifiers,
        &config.routing,
        delivery_cx,
    )
    .await?;
    let engine = crate::pipeline::engine(&config)?;
    let pipeline = Pipeline::new(
        engine,
        Some(quarantine),
        Some(store.clone()),
        Some(delivery.clone()),
        metrics.clone(),
    )
    .with_rule_reload(config.rules.clone());

    let (tx, rx) = mpsc::channel(config.pipeline.channel_batches);
    let mut cx = SourceContext::new(tx, shutdown.clone(), metrics.ingest.clone());
    cx.cluster = config.cluster.as_deref().map(Arc::from);
    cx.max_record_bytes = config.pipeline.max_record_bytes;

    let receivers = HttpReceivers::new(
        cx.clone(),
        HttpReceiverConfig {
            max_body_bytes: config.server.max_ingest_body_bytes,
            ..HttpReceiverConfig::default()
        },
    );
    // Every series a configured input will write exists from the start.
    metrics.ingest.expect_source(Stream::FalcoEvents, "http");
    metrics.ingest.expect_source(Stream::K8sAudit, "http");
    for s in &config.sources {
        match s {
            SourceConfig::DcgmScrape { .. } => metrics
                .ingest
                .expect_source(Stream::GpuMetrics, "dcgm_scrape"),
            SourceConfig::File { stream, .. } => {
                if let Some(stream) = Stream::from_name(stream) {
                    metrics.ingest.expect_source(stream, "file");
                }
            }
            SourceConfig::Kafka {
                gpu_metrics_topic,
                falco_events_topic,
                k8s_audit_topic,
                ..
            } => {
                for (stream, topic) in [
                    (Stream::GpuMetrics, gpu_metrics_topic),
                    (Stream::FalcoEvents, falco_events_topic),
                    (Stream::K8sAudit, k8s_audit_topic),
                ] {
                    if topic.is_some() {
                        metrics.ingest.expect_source(stream, "kafka");
                    }
                }
            }
            SourceConfig::Kubernetes { .. } => {}
        }
    }
    let mut sources = Vec::new();
    let mut pipeline = pipeline;
    for (i, s) in config.sources.iter().enumerate() {
        if let SourceConfig::Kubernetes {
            api_url,
            token_file,
            ca_file,
        } = s
        {
            let watcher = Kubernetes::new(KubernetesConfig {
                api_server: api_url.clone(),
                token_file: token_file.clone(),
                ca_file: ca_file.clone(),
                ..KubernetesConfig::default()
            })
            .map_err(|e| source_error(i, &e))?
            .with_metrics(metrics.ingest.clone());
            let (pod_tx, pod_rx) = mpsc::channel(POD_EVENT_QUEUE);
            pipeline = pipeline.with_pod_events(pod_rx);
            let stop = shutdown.clone();
            sources.push(tokio::spawn(async move {
                if let Err(e) = watcher.run(pod_tx, stop).await {
                    tracing::error!(source = "kubernetes", error = %e, "source stopped");
                }
            }));
            continue;
        }
        if let Some(source) = build_source(i, s, &config)? {
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
    let limits = ApiLimits {
        max_api_body_bytes: config.server.max_api_body_bytes,
        max_ingest_body_bytes: config.server.max_ingest_body_bytes,
        // A query may wait for an engine slot, then run, each up to the query timeout.
        api_timeout: Duration::from_secs(
            config
                .query
                .timeout_secs
                .saturating_mul(2)
                .saturating_add(10),
        ),
        ..ApiLimits::default()
    };
    let state = AppState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        auth,
        engine: query_engine,
        audit,
        limits: Arc::new(limits),
        query_slots: Arc::new(QuerySlots::default()),
        rate: Arc::new(RateLimiter::default()),
    };
    let silences = crate::delivery::silences::router(delivery.silences());
    let app = server::router(state, &receivers, Some(silences));
    let serve_error = |e: std::io::Error| crate::Error::Serve {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(serve_error)?;
    let bound = listener.local_addr().map_err(serve_error)?;
    tracing::info!(addr = %bound, data_dir = %data_dir.display(), tls = tls.is_some(), mtls = config.server.client_ca_file.is_some(), "gpusiem listening");

    let lateness = Duration::from_secs(config.pipeline.allowed_lateness_secs);
    // The pipeline outlives the listener: requests still draining after `shutdown` fired are
    // written, acknowledged and audited before it stops and the store closes.
    let pipeline_stop = CancellationToken::new();
    let pipeline_task = tokio::spawn(pipeline.run(rx, pipeline_stop.clone(), lateness));
    ready.store(true, Ordering::Relaxed);

    // Not ready from the moment shutdown starts (load balancers stop sending new work).
    let not_ready = ready.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        not_ready.store(false, Ordering::Relaxed);
    });

    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        let served = server::serve(listener, app, tls, &ConnectionLimits::default(), stop)
            .await
            .map_err(|e| crate::Error::Serve {
                addr: bound.to_string(),
                reason: e.to_string(),
            });
        ready.store(false, Ordering::Relaxed);
        for s in sources {
            let _ = s.await;
        }
        // Receivers are gone with the server; the pipeline drains what was handed over.
        drop(receivers);
        pipeline_stop.cancel();
        let _ = pipeline_task.await;
        store.close().await?;
        served
    });
    Ok(Running {
        addr: bound,
        shutdown,
        done,
    })
}

fn build_source(
    i: usize,
    s: &SourceConfig,
    config: &Config,
) -> crate::Result<Option<Box<dyn Source>>> {
    Ok(match s {
        SourceConfig::DcgmScrape {
            targets,
            discover,
            interval_secs,
            timeout_secs,
        } => Some(Box::new(DcgmScrape::new(DcgmScrapeConfig {
            targets: targets.clone(),
            interval: Duration::from_secs(*interval_secs),
            timeout: Duration::from_secs(*timeout_secs),
            discovery: discover.as_ref().map(|d| Discovery {
                kubernetes: KubernetesConfig {
                    api_server: d.api_url.clone(),
                    token_file: d.token_file.clone(),
                    ca_file: d.ca_file.clone(),
                    namespace: Some(d.namespace.clone()),
                    label_selector: Some(d.label_selector.clone()),
                    ..KubernetesConfig::default()
                },
                port: d.port,
                scheme: d.scheme.clone(),
                path: d.path.clone(),
            }),
            ..DcgmScrapeConfig::default()
        }))),
        SourceConfig::File {
            path,
            stream,
            start_at,
        } => {
            let Some(stream) = Stream::from_name(stream) else {
                return Ok(None);
            };
            let mut fc = FileSourceConfig::new(
                path.clone(),
                stream,
                config.server.data_dir.join("checkpoints"),
            );
            if start_at.as_deref() == Some("end") {
                fc.start_at = StartAt::End;
            }
            Some(Box::new(FileSource::new(fc)))
        }
        SourceConfig::Kafka {
            brokers,
            group_id,
            gpu_metrics_topic,
            falco_events_topic,
            k8s_audit_topic,
            properties,
        } => {
            let topics = KafkaTopics {
                gpu_metrics: gpu_metrics_topic.clone(),
                falco_events: falco_events_topic.clone(),
                k8s_audit: k8s_audit_topic.clone(),
            };
            let mut kc = KafkaSourceConfig::new(brokers.clone(), group_id.clone(), topics);
            kc.properties = properties.clone();
            kc.validate().map_err(|e| source_error(i, &e))?;
            Some(Box::new(KafkaSource::new(kc)))
        }
        // Started by `start`: it feeds the inventory, not the pipeline's channel.
        SourceConfig::Kubernetes { .. } => None,
    })
}

/// A source that cannot start stops the service's start, naming the source.
fn source_error(i: usize, e: &dyn std::fmt::Display) -> crate::Error {
    crate::Error::Config(vec![crate::config::ConfigError {
        path: format!("sources[{i}]"),
        message: e.to_string(),
    }])
}

/// Waits for SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
