//! `gpusiem replay`: the pipeline over recorded files, as fast as it can, in event-time order
//! across the three files.
//!
//! Each file is decoded whole with its stream's decoder (DCGM samples without a timestamp are
//! stamped with the file's modification time), sorted by event time (stably, so equal times
//! keep file order), and the three streams are merged: at equal times audit events go first
//! (pod facts before the metrics that need them), then Falco, then DCGM. The merged rows go
//! through the same [`Pipeline`] as live data, so the findings are the ones live operation
//! would have raised.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::TimestampNanosecondType;
use gpusiem_detect::Finding;
use gpusiem_ingest::decode::{self, DecodeContext};
use gpusiem_ingest::quarantine::QuarantineWriter;
use gpusiem_ingest::{Batch, Stream};
use serde::Serialize;

use crate::config::Config;
use crate::delivery::{Clock, Delivery, DeliveryContext};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Rows per batch handed to the pipeline.
const SLICE_ROWS: usize = 8192;

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayInput {
    /// dcgm-exporter Prometheus text.
    pub dcgm: Option<PathBuf>,
    /// Falco JSON alerts.
    pub falco: Option<PathBuf>,
    /// Kubernetes audit events.
    pub audit: Option<PathBuf>,
    /// Directory for `quarantine.jsonl`; without it each quarantined record is logged.
    pub quarantine_dir: Option<PathBuf>,
}

/// The summary printed as the last line on stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Rows decoded per stream.
    pub ingested: Ingested,
    /// Records quarantined.
    pub quarantined: u64,
    /// Findings raised (episodes).
    pub findings: u64,
}

/// Rows decoded per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ingested {
    /// `gpu_metrics` rows.
    pub gpu_metrics: u64,
    /// `falco_events` rows.
    pub falco_events: u64,
    /// `k8s_audit` rows.
    pub k8s_audit: u64,
}

/// The outcome: every finding in its final state, in the order first raised, and the summary.
#[derive(Debug)]
pub struct ReplayOutput {
    /// Findings, one per episode, final state.
    pub findings: Vec<Finding>,
    /// Counts.
    pub summary: ReplaySummary,
}

/// Runs the replay.
pub async fn replay(input: &ReplayInput, config: &Config) -> crate::Result<ReplayOutput> {
    let metrics = Arc::new(Metrics::new());
    let engine = crate::pipeline::engine(config)?;
    let quarantine = match &input.quarantine_dir {
        Some(dir) => Some(
            QuarantineWriter::open(
                dir,
                config.pipeline.quarantine_max_bytes,
                metrics.ingest.clone(),
            )
            .map_err(|e| crate::Error::Store {
                op: "quarantine",
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let delivery = if config.sinks.is_empty() && config.notifiers.is_empty() {
        None
    } else {
        // Group timers run on event time; what is pending at the end is flushed by `drain`.
        let cx = DeliveryContext {
            data_dir: config.server.data_dir.clone(),
            metrics: metrics.delivery.clone(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            clock: Clock::EventTime,
        };
        Some(Delivery::start(&config.sinks, &config.notifiers, &config.routing, cx).await?)
    };
    let mut pipeline = Pipeline::new(engine, quarantine, None, delivery.clone(), metrics.clone());

    let mut summary = ReplaySummary::default();
    let mut streams = Vec::new();
    for (stream, path) in [
        (Stream::K8sAudit, &input.audit),
        (Stream::FalcoEvents, &input.falco),
        (Stream::GpuMetrics, &input.dcgm),
    ] {
        let Some(path) = path else { continue };
        let (sorted, quarantined) = load(stream, path, config)?;
        let rows = sorted.num_rows() as u64;
        match stream {
            Stream::GpuMetrics => summary.ingested.gpu_metrics = rows,
            Stream::FalcoEvents => summary.ingested.falco_events = rows,
            Stream::K8sAudit => summary.ingested.k8s_audit = rows,
        }
        summary.quarantined += quarantined.len() as u64;
        let origin: Arc<str> = Arc::from(format!("replay:{}", path.display()));
        if input.quarantine_dir.is_none() {
            for q in &quarantined {
                tracing::warn!(%stream, origin = %origin, location = ?q.location, reason = %q.reason, detail = %q.detail, "quarantined");
            }
        }
        if !quarantined.is_empty() {
            let mut b = Batch::new(stream, sorted.slice(0, 0), origin.clone());
            b.quarantined = quarantined;
            pipeline.process(b).await?;
        }
        streams.push(Cursor {
            stream,
            ts: ts_values(&sorted),
            batch: sorted,
            pos: 0,
            origin,
        });
    }

    let mut episodes: HashMap<String, usize> = HashMap::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut keep = |raised: Vec<Finding>| {
        for f in raised {
            match episodes.get(&f.id) {
                Some(&i) => findings[i] = f,
                None => {
                    episodes.insert(f.id.clone(), findings.len());
                    findings.push(f);
                }
            }
        }
    };
    while let Some((i, end)) = next_slice(&streams) {
        let c = &mut streams[i];
        let slice = c.batch.slice(c.pos, end - c.pos);
        c.pos = end;
        let batch = Batch::new(c.stream, slice, c.origin.clone());
        keep(pipeline.process(batch).await?);
    }
    let last = streams.iter().filter_map(|c| c.ts.last().copied()).max();
    if let Some(last) = last {
        // Just past the last event: detectors judge a time slot once event time has left it,
        // so the last samples are judged as live operation would judge them a moment later.
        keep(pipeline.tick(last.saturating_add(1)).await?);
    }
    if let Some(d) = &delivery {
        d.drain().await?;
    }
    findings.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
    summary.findings = findings.len() as u64;
    Ok(ReplayOutput { findings, summary })
}

struct Cursor {
    stream: Stream,
    batch: RecordBatch,
    ts: Vec<i64>,
    pos: usize,
    origin: Arc<str>,
}

/// Picks the stream whose next row comes first (ties: the order streams were loaded in) and
/// how far its run goes before another stream's next row.
fn next_slice(streams: &[Cursor]) -> Option<(usize, usize)> {
    let head = |c: &Cursor| c.ts.get(c.pos).copied();
    let (i, _) = streams
        .iter()
        .enumerate()
        .filter_map(|(i, c)| head(c).map(|t| (i, t)))
        .min_by_key(|&(i, t)| (t, i))?;
    // The run may take rows up to the next row of any other stream; rows at the same time
    // go to the earlier-loaded stream first.
    let bound = streams
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .filter_map(|(j, c)| head(c).map(|t| if j > i { t } else { t.saturating_sub(1) }))
        .min()
        .unwrap_or(i64::MAX);
    let c = &streams[i];
    let limit = (c.pos + SLICE_ROWS).min(c.ts.len());
    let end = c.pos + c.ts[c.pos..limit].partition_point(|&t| t <= bound).max(1);
    Some((i, end))
}

/// Decodes a file and sorts its rows by event time (stable).
fn load(
    stream: Stream,
    path: &Path,
    config: &Config,
) -> crate::Result<(RecordBatch, Vec<decode::Quarantined>)> {
    let io = |op, source| crate::Error::File {
        op,
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(|e| io("reading", e))?;
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let mut cx = DecodeContext::new(mtime).with_cluster(config.cluster.as_deref().map(Arc::from));
    cx.max_record_bytes = config.pipeline.max_record_bytes;
    let decoded = decode::decode(stream, &bytes, &cx).map_err(|source| crate::Error::Source {
        kind: "replay",
        source,
    })?;
    let batch = decoded.batch;
    let ts = ts_values(&batch);
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_by_key(|&i| ts[i as usize]);
    let sorted = if order.windows(2).all(|w| w[0] < w[1]) {
        batch
    } else {
        let indices = UInt32Array::from(order);
        arrow::compute::take_record_batch(&batch, &indices).map_err(|e| crate::Error::Store {
            op: "sort",
            reason: e.to_string(),
        })?
    };
    Ok((sorted, decoded.quarantined))
}

fn ts_values(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column(0)
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .to_vec()
}
