//! The delivery loop shared by every sink and notifier: outbox → batch → send → settle.
//!
//! ```text
//!  outbox.next_batch ─► decode ─► rate limit ─► Target::send ─┬─ delivered ──────► ack
//!                                      ▲                      ├─ item/request 4xx ► dead letter ─► ack
//!                                      └──── backoff ◄────────┴─ 429/5xx/connection (only those items)
//! ```
//!
//! A request refused as too large (413) is sent again as two halves, each settled before the
//! next, so order is kept and only an item refused on its own is dead-lettered.
//!
//! One batch is in flight at a time per target, so a receiver sees findings in outbox order
//! (Loki streams stay ordered) and the rate limit is exact. A batch leaves the loop only when
//! every item in it is settled; on shutdown the in-flight request is dropped and its items
//! stay in the outbox for the next start.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetter;
use super::metrics::{DeadLetterReason, TargetMetrics};
use super::outbox::{Outbox, Record};
use super::retry::{Action, Backoff, Failure, ItemOutcome, Outcome};

/// What the loop needs from a sink or a notifier (see `Sink` and `Notifier` for the public
/// contracts; adapters in `sink.rs` and `notifier.rs` implement this).
pub(crate) trait Target: Send + Sync + 'static {
    /// The queued item (a finding, an alert).
    type Item: DeserializeOwned + Send + Sync + 'static;

    /// Called once before the first send (install an index template…). `Retry` failures are
    /// retried with backoff; others are logged and sending goes on.
    fn prepare(&self) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Sends one batch; one request, no retries of its own.
    fn send(&self, items: &[Self::Item]) -> impl Future<Output = Outcome> + Send;

    /// The least time between two requests (a per-destination rate limit).
    fn min_interval(&self) -> Duration;

    /// A hash of the destination: a "gone" marker written for one URL does not stop another.
    fn destination(&self) -> String;
}

/// Batching and retry limits of one worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_items: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub backoff: Backoff,
    /// 0 = retry for ever.
    pub max_attempts: u32,
}

/// One target's delivery loop.
pub(crate) struct Worker<T: Target> {
    pub target: Arc<T>,
    pub name: String,
    pub outbox: Arc<Outbox>,
    pub dead_letter: Arc<DeadLetter>,
    pub metrics: TargetMetrics,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    last_send: Option<Instant>,
    gone: Option<String>,
}

struct Pending<I> {
    record: Record,
    item: I,
}

/// How sending one batch ended.
enum Sent<I> {
    /// Every item delivered or dead-lettered.
    Settled,
    /// Refused as too large: send these again in halves.
    Split(Vec<Pending<I>>),
    /// Shut down with items unsettled (they stay in the outbox).
    Shutdown,
}

/// The marker a target leaves when its destination is gone (Slack 404/410).
fn gone_marker(outbox: &Outbox) -> PathBuf {
    outbox.dir().join("gone.json")
}

impl<T: Target> Worker<T> {
    pub fn new(
        target: Arc<T>,
        name: String,
        outbox: Arc<Outbox>,
        dead_letter: Arc<DeadLetter>,
        metrics: TargetMetrics,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Worker {
            target,
            name,
            outbox,
            dead_letter,
            metrics,
            limits,
            shutdown,
            last_send: None,
            gone: None,
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        self.gone = self.read_gone_marker();
        if let Some(reason) = &self.gone {
            tracing::error!(target = %self.name, %reason, "destination gone; queued items go to the dead-letter file (delete gone.json in the outbox to resume)");
        } else if !self.prepare().await {
            return;
        }
        loop {
            let records = match self
                .outbox
                .next_batch(
                    self.limits.max_items,
                    self.limits.max_bytes,
                    self.limits.linger,
                    &self.shutdown,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(target = %self.name, error = %e, "reading the outbox failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = self.shutdown.cancelled() => return,
                    }
                }
            };
            if records.is_empty() {
                if self.shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            let mut pending = Vec::with_capacity(records.len());
            for record in records {
                match serde_json::from_slice::<T::Item>(&record.payload) {
                    Ok(item) => pending.push(Pending { record, item }),
                    Err(e) => self.dead(
                        DeadLetterReason::Undecodable,
                        &format!("cannot decode the queued item: {e}"),
                        vec![record],
                    ),
                }
            }
            if let Some(reason) = self.gone.clone() {
                self.dead(
                    DeadLetterReason::Gone,
                    &reason,
                    pending.into_iter().map(|p| p.record).collect(),
                );
                continue;
            }
            if !self.deliver(pending).await {
                return;
            }
        }
    }

    async fn prepare(&mut self) -> bool {
        let mut attempt = 0;
        loop {
            let result = tokio::select! {
                r = self.target.prepare() => r,
                () = self.shutdown.cancelled() => return false,
            };
            match result {
                Ok(()) => return true,
                Err(f) if f.action == Action::Retry => {
                    let delay = self.limits.backoff.next(attempt, f.retry_after);
                    tracing::warn!(target = %self.name, reason = %f.reason, delay_ms = delay.as_millis() as u64, "preparing the receiver failed; retrying");
                    attempt += 1;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return false,
                    }
                }
                Err(f) => {
                    tracing::warn!(target = %self.name, reason = %f.reason, "preparing the receiver failed; sending anyway");
                    return true;
                }
            }
        }
    }

    /// Sends until every item is settled; `false` when shut down first.
    async fn deliver(&mut self, pending: Vec<Pending<T::Item>>) -> bool {
        // Batches still to send, the next one last.
        let mut stack = vec![pending];
        while let Some(batch) = stack.pop() {
            match self.deliver_batch(batch).await {
                Sent::Settled => {}
                Sent::Split(mut first) => {
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                }
                Sent::Shutdown => return false,
            }
        }
        true
    }

    /// Sends one batch until every item is settled, or until it must be split.
    async fn deliver_batch(&mut self, mut pending: Vec<Pending<T::Item>>) -> Sent<T::Item> {
        let mut attempt: u32 = 0;
        while !pending.is_empty() {
            if let Some(last) = self.last_send {
                let at = last + self.target.min_interval();
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = self.shutdown.cancelled() => return Sent::Shutdown,
                }
            }
            let (records, items): (Vec<Record>, Vec<T::Item>) =
                pending.into_iter().map(|p| (p.record, p.item)).unzip();
            self.metrics.requests.inc();
            let outcome = tokio::select! {
                o = self.target.send(&items) => o,
                () = self.shutdown.cancelled() => return Sent::Shutdown,
            };
            self.last_send = Some(Instant::now());
            let mut retry: Vec<Pending<T::Item>> = Vec::new();
            let mut retry_after = None;
            let mut why = String::new();
            match outcome {
                Outcome::Delivered => self.delivered(&records),
                Outcome::Items(results) if results.len() == records.len() => {
                    let mut ok = Vec::new();
                    for ((record, item), result) in records.into_iter().zip(items).zip(results) {
                        match result {
                            ItemOutcome::Delivered => ok.push(record),
                            ItemOutcome::Retry(r) => {
                                why = r;
                                retry.push(Pending { record, item });
                            }
                            ItemOutcome::Reject(r) => {
                                self.dead(DeadLetterReason::Rejected, &r, vec![record])
                            }
                        }
                    }
                    self.delivered(&ok);
                }
                Outcome::Items(results) => {
                    // A receiver that answers for a different number of items cannot be
                    // trusted about any of them: send them all again.
                    why = format!("{} results for {} items", results.len(), records.len());
                    retry = records
                        .into_iter()
                        .zip(items)
                        .map(|(record, item)| Pending { record, item })
                        .collect();
                }
                Outcome::Failed(f) => match f.action {
                    Action::Retry => {
                        why = f.reason;
                        retry_after = f.retry_after;
                        retry = records
                            .into_iter()
                            .zip(items)
                            .map(|(record, item)| Pending { record, item })
                            .collect();
                    }
                    Action::Split if records.len() > 1 => {
                        tracing::info!(target = %self.name, items = records.len(), reason = %f.reason, "request too large; sending the batch in halves");
                        return Sent::Split(
                            records
                                .into_iter()
                                .zip(items)
                                .map(|(record, item)| Pending { record, item })
                                .collect(),
                        );
                    }
                    Action::Reject | Action::Split => {
                        self.dead(DeadLetterReason::Rejected, &f.reason, records)
                    }
                    Action::Gone => {
                        tracing::error!(target = %self.name, reason = %f.reason, "destination gone; stopping for good");
                        self.write_gone_marker(&f.reason);
                        self.gone = Some(f.reason.clone());
                        self.dead(DeadLetterReason::Gone, &f.reason, records);
                    }
                },
            }
            pending = retry;
            if pending.is_empty() {
                break;
            }
            attempt += 1;
            if self.limits.max_attempts > 0 && attempt >= self.limits.max_attempts {
                let reason = format!("gave up after {attempt} attempts: {why}");
                self.dead(
                    DeadLetterReason::RetriesExhausted,
                    &reason,
                    pending.into_iter().map(|p| p.record).collect(),
                );
                break;
            }
            self.metrics.retries.inc();
            let delay = self.limits.backoff.next(attempt - 1, retry_after);
            tracing::warn!(target = %self.name, items = pending.len(), attempt, delay_ms = delay.as_millis() as u64, reason = %why, "delivery failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Sent::Shutdown,
            }
        }
        Sent::Settled
    }

    fn delivered(&self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let now = gpusiem_ingest::source::now_nanos();
        for r in records {
            self.metrics
                .latency
                .observe((now - r.enqueued_at).max(0) as f64 / 1e9);
        }
        self.metrics.delivered.inc_by(records.len() as u64);
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        self.outbox.ack(&seqs);
    }

    fn dead(&self, reason: DeadLetterReason, detail: &str, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
        if let Err(e) = self.dead_letter.write(reason, detail, &payloads) {
            // The items are still settled: the alternative, keeping them, would block the
            // outbox for ever behind items that will never be accepted. The loss is logged.
            tracing::error!(target = %self.name, error = %e, items = records.len(), "cannot write the dead-letter file");
        }
        tracing::warn!(target = %self.name, reason = reason.as_str(), detail, items = records.len(), "items dead-lettered");
        self.metrics.dead_lettered(reason, records.len() as u64);
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        self.outbox.ack(&seqs);
    }

    fn read_gone_marker(&self) -> Option<String> {
        let text = std::fs::read_to_string(gone_marker(&self.outbox)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["destination"].as_str() == Some(self.target.destination().as_str()))
            .then(|| v["reason"].as_str().unwrap_or("gone").to_string())
    }

    fn write_gone_marker(&self, reason: &str) {
        let v = serde_json::json!({"destination": self.target.destination(), "reason": reason, "at": chrono::Utc::now().to_rfc3339()});
        if let Err(e) = std::fs::write(gone_marker(&self.outbox), v.to_string()) {
            tracing::error!(target = %self.name, error = %e, "cannot record that the destination is gone");
        }
    }
}
