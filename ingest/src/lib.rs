//! gpusiem-ingest: schemas, sans-IO decoders and transport sources for the three streams
//! gpusiem watches — NVIDIA dcgm-exporter metrics, Falco alerts and Kubernetes audit events.
//!
//! ```text
//!  dcgm-exporter ──scrape (sources::dcgm_scrape)──┐
//!  Falco http_output ──POST /ingest/falco (sources::http)──┤           ┌──────────────┐
//!  API server audit webhook ──POST /ingest/k8s-audit ───────┼─ bytes ─►│ decode::*    │─► Batch ─► mpsc ─► pipeline
//!  files (sources::file: tail + checkpoint, replay) ────────┤           │ (sans-IO)    │   (RecordBatch + Ack)
//!  Kafka topics (sources::kafka, rdkafka) ──────────────────┘           └──────┬───────┘
//!                                                                              └─► quarantine.jsonl + metrics
//! ```
//!
//! * [`schema`] defines each stream's Arrow schema once, with `pub const` column names.
//! * [`decode`] turns bytes into a [`RecordBatch`](arrow::record_batch::RecordBatch) plus the
//!   records it had to quarantine; decoders never do I/O or read the clock.
//! * [`source`] states the contract of a source; [`sources`] holds the implementations. A source
//!   sends [`Batch`]es into a bounded channel (back-pressure) and acknowledges upstream only
//!   when the batch's [`Ack`] reports [`Delivery::Delivered`].
//!
//! Adding an input format: write a decoder in `decode/` that fills the stream's schema and
//! returns bad records as [`decode::Quarantined`]; adding a transport: implement
//! [`source::Source`] in `sources/`.

pub mod batch;
pub mod decode;
pub mod error;
pub mod metrics;
pub mod quarantine;
pub mod schema;
pub mod source;
pub mod sources;
pub mod time;

pub use batch::{Ack, Batch, Delivery};
pub use error::{Error, ErrorKind, Result};
pub use schema::Stream;
