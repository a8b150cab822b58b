//! The crate's error type.

use std::path::PathBuf;

use crate::schema::Stream;

/// Why an ingest operation failed. Variants name the operation; messages never carry payload
/// values or secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building an Arrow batch from decoded rows failed (a bug: the builders and the schema
    /// disagree).
    #[error("building the {stream} batch failed: {source}")]
    BuildBatch {
        /// Stream being built.
        stream: Stream,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Reading or writing a local file failed.
    #[error("{op} {path}: {source}")]
    File {
        /// What was being done (`opening`, `reading`, `writing checkpoint`, …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request of a pull source failed.
    #[error("scraping {target} failed: {reason}")]
    Scrape {
        /// Target URL without credentials.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// Talking to Kafka failed.
    #[error("kafka {op} failed: {source}")]
    Kafka {
        /// The Kafka operation (`create consumer`, `subscribe`, `store offset`, `commit`).
        op: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The downstream pipeline is gone (shutdown); the source should stop.
    #[error("the pipeline is closed")]
    PipelineClosed,
    /// A source's configuration is invalid.
    #[error("invalid source configuration: {0}")]
    Config(String),
}

/// Errors of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Coarse classes that decide retries and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying later (network, remote 5xx, Kafka transient).
    Transient,
    /// Retrying cannot help (configuration, bugs).
    Permanent,
    /// Shutting down.
    Closed,
}

impl Error {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Scrape { .. } | Error::File { .. } => ErrorKind::Transient,
            Error::Kafka { source, .. } => match source.rdkafka_error_code() {
                Some(code) if is_fatal_kafka(code) => ErrorKind::Permanent,
                _ => ErrorKind::Transient,
            },
            Error::PipelineClosed => ErrorKind::Closed,
            Error::BuildBatch { .. } | Error::Config(_) => ErrorKind::Permanent,
        }
    }
}

fn is_fatal_kafka(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fatal
            | C::InvalidConfig
            | C::UnknownTopicOrPartition
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
    )
}
