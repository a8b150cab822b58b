//! gpusiem: the service. Configuration, pipeline wiring, the Parquet findings store with its
//! DataFusion SQL and REST API, and delivery to Loki, Elasticsearch, Slack, PagerDuty and
//! webhooks.
//!
//! ```text
//!  sources (gpusiem-ingest) ─► mpsc<Batch> ─► pipeline ─┬─► store (Parquet + in-memory tail) ─► query (DataFusion) ─► server (axum)
//!  HTTP receivers (server) ─┘                (engine:   ├─► quarantine.jsonl
//!                                            gpusiem-   └─► delivery: router ─► outbox ─► sinks / notifiers
//!                                            detect)
//! ```
//!
//! * [`config`]: `gpusiem.toml` — parse, validate (every error with its path), build.
//! * [`pipeline`]: quarantine → store → detect → deliver → acknowledge, per batch.
//! * [`service`]: `gpusiem run`; [`replay`]: `gpusiem replay`.
//! * [`server`]: the listener; [`auth`]: tokens and scopes.
//! * [`store`], [`query`]: Parquet and SQL; [`delivery`]: sinks, notifiers, routing, outbox.
//!
//! Adding a sink or notifier: a variant in the `[[sinks]]`/`[[notifiers]]` enum, an
//! implementation in `delivery/`, and its contract test against a fake server in `tests/`.

pub mod auth;
pub mod config;
pub mod delivery;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod replay;
pub mod server;
pub mod service;
pub mod store;

pub use error::{Error, Result};
