//! The unit that flows from sources to the pipeline: decoded rows of one stream plus the handle
//! that tells the source when they are durable.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use crate::decode::Quarantined;
use crate::schema::Stream;

/// Decoded rows of one stream, with the acknowledgement the source waits for.
#[derive(Debug)]
pub struct Batch {
    /// Stream of the rows.
    pub stream: Stream,
    /// The rows, in the stream's schema.
    pub records: RecordBatch,
    /// Records of the same input that could not be decoded.
    pub quarantined: Vec<Quarantined>,
    /// Where the input came from (`http:/ingest/falco`, `file:/var/log/…`, `kafka:topic/3@42`).
    pub origin: Arc<str>,
    /// Completed by the pipeline once the rows (and quarantined records) are durably written.
    pub ack: Ack,
}

impl Batch {
    /// A batch with no acknowledgement (replay, tests).
    pub fn new(stream: Stream, records: RecordBatch, origin: impl Into<Arc<str>>) -> Self {
        Batch {
            stream,
            records,
            quarantined: Vec::new(),
            origin: origin.into(),
            ack: Ack::none(),
        }
    }
}

/// How a batch ended downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Durably written: the source may acknowledge upstream (commit the offset, answer 2xx,
    /// advance the checkpoint).
    Delivered,
    /// Not written (shutdown, write error, dropped unacknowledged): the source must not
    /// acknowledge, so the data is sent again.
    Failed,
}

/// A one-time acknowledgement callback.
///
/// Dropping an `Ack` without completing it reports [`Delivery::Failed`], so a batch lost on an
/// error path can never be mistaken for a delivered one.
pub struct Ack(Option<Box<dyn FnOnce(Delivery) + Send + Sync>>);

impl Ack {
    /// An acknowledgement nobody waits for.
    pub fn none() -> Self {
        Ack(None)
    }

    /// An acknowledgement that calls `f` once.
    pub fn new(f: impl FnOnce(Delivery) + Send + Sync + 'static) -> Self {
        Ack(Some(Box::new(f)))
    }

    /// An acknowledgement reported through a oneshot channel.
    pub fn channel() -> (Self, tokio::sync::oneshot::Receiver<Delivery>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A receiver that stopped waiting has nothing left to learn.
        (
            Ack::new(move |d| {
                let _ = tx.send(d);
            }),
            rx,
        )
    }

    /// Reports the outcome.
    pub fn complete(mut self, delivery: Delivery) {
        if let Some(f) = self.0.take() {
            f(delivery);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Delivery::Failed);
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Ack(pending)"
        } else {
            "Ack(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_an_ack_reports_failure() {
        let (ack, mut rx) = Ack::channel();
        drop(ack);
        assert_eq!(rx.try_recv(), Ok(Delivery::Failed));
        let (ack, mut rx) = Ack::channel();
        ack.complete(Delivery::Delivered);
        assert_eq!(rx.try_recv(), Ok(Delivery::Delivered));
    }
}
