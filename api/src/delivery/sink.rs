//! Sinks: where every finding goes (Loki, Elasticsearch, a webhook), in batches.
//!
//! A sink turns a batch of findings into one request and says what became of it; batching,
//! the outbox, retries with backoff, per-item retry of Elasticsearch partial failures and the
//! dead-letter file are the worker's (`worker.rs`), the same for every sink.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gpusiem_detect::Finding;

use super::retry::{Failure, Outcome};
use super::worker::Target;

/// A destination for every finding.
///
/// **Contract.** The sink's worker calls [`Sink::start`] once, then [`Sink::send`] with batches
/// of findings read from the sink's outbox, oldest first, one call at a time (never
/// concurrently). `send` makes one request and reports what happened — it never retries, sleeps
/// or panics; a transport error is `Outcome::Failed` with `Action::Retry`, a refusal of the
/// whole request `Action::Reject`, and a receiver that answers per item (Elasticsearch `_bulk`)
/// returns `Outcome::Items` in input order. Sends must be idempotent for the receiver (a
/// finding may be sent again after a crash): Elasticsearch de-duplicates on `_id`, Loki on
/// identical timestamp and line. **Shutdown:** the worker drops the `send` future when the
/// service stops; the findings stay in the outbox and are sent after the next start.
pub trait Sink: Send + Sync + 'static {
    /// Prepares the receiver once (for example installs an index template). A `Retry`
    /// failure is retried with backoff before anything is sent; other failures are logged.
    fn start(&self) -> impl Future<Output = Result<(), Failure>> + Send {
        async { Ok(()) }
    }

    /// Sends one batch.
    fn send(&self, findings: &[Finding]) -> impl Future<Output = Outcome> + Send;

    /// A stable hash of the destination (URL, index), never the secret itself.
    fn destination(&self) -> String;
}

/// Runs a [`Sink`] under the shared worker.
pub(crate) struct SinkTarget<S>(pub Arc<S>);

impl<S: Sink> Target for SinkTarget<S> {
    type Item = Finding;

    fn prepare(&self) -> impl Future<Output = Result<(), Failure>> + Send {
        self.0.start()
    }

    fn send(&self, items: &[Finding]) -> impl Future<Output = Outcome> + Send {
        self.0.send(items)
    }

    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    fn destination(&self) -> String {
        self.0.destination()
    }
}

/// SHA-256 of the parts, as 16 hex characters: identifies a destination without its secrets.
pub(crate) fn destination_hash(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Event time in ns as RFC 3339 with millisecond precision (Elasticsearch `@timestamp`).
pub(crate) fn rfc3339_millis(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
