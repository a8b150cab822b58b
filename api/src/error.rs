//! The crate's error type.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Why an operation of the service failed. Variants name the operation; messages carry no
/// payload values and no secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    File {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Binding or serving the listener failed.
    #[error("serving on {addr}: {reason}")]
    Serve {
        /// Listen address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A source failed.
    #[error("source {kind}: {source}")]
    Source {
        /// Source kind.
        kind: &'static str,
        /// The ingest error.
        #[source]
        source: gpusiem_ingest::Error,
    },
    /// Rule files do not parse or link; every problem as `file:line: message`.
    #[error("invalid rules:\n{}", .0.join("\n"))]
    Rules(Vec<String>),
    /// Building the detection engine failed.
    #[error("building detection: {0}")]
    Detect(#[source] gpusiem_detect::Error),
    /// Reading or writing the Parquet store failed.
    #[error("store {op}: {reason}")]
    Store {
        /// The store operation (`append`, `flush`, `open`, `compact`, `retention`).
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A SQL query was refused or failed.
    #[error("query {kind}: {reason}")]
    Query {
        /// `refused`, `timeout`, `resources`, `failed`.
        kind: &'static str,
        /// What went wrong (never the SQL text).
        reason: String,
    },
    /// Delivering findings failed.
    #[error("delivery to {target} ({op}): {reason}")]
    Delivery {
        /// Sink or notifier name.
        target: String,
        /// The operation.
        op: &'static str,
        /// What went wrong (URLs redacted).
        reason: String,
    },
    /// The pipeline stopped.
    #[error("the pipeline stopped")]
    PipelineStopped,
}

/// Errors of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Coarse classes that decide retries and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input is wrong (HTTP 400).
    Invalid,
    /// Temporary: retry later (HTTP 503).
    Transient,
    /// A resource limit was hit (HTTP 413/422/429 depending on the route).
    Limit,
    /// Not retryable, not the caller's fault (HTTP 500).
    Internal,
}

impl Error {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Rules(_) => ErrorKind::Invalid,
            Error::Query {
                kind: "refused", ..
            } => ErrorKind::Invalid,
            Error::Query {
                kind: "timeout" | "resources",
                ..
            } => ErrorKind::Limit,
            Error::File { .. } | Error::Delivery { .. } | Error::PipelineStopped => {
                ErrorKind::Transient
            }
            Error::Source { source, .. }
                if source.kind() == gpusiem_ingest::ErrorKind::Transient =>
            {
                ErrorKind::Transient
            }
            Error::Source { .. }
            | Error::Serve { .. }
            | Error::Detect(_)
            | Error::Store { .. }
            | Error::Query { .. } => ErrorKind::Internal,
        }
    }
}
