//! Sans-IO decoders: bytes in, one Arrow [`RecordBatch`] and a list of quarantined records out.
//!
//! Decoders never touch sockets, files or the clock: the caller passes the time to stamp on
//! samples that carry none (a scrape's time) in [`DecodeContext`]. A bad record never fails the
//! whole input: it is returned as [`Quarantined`] with a [`Reason`] and decoding goes on with the
//! next record.

pub mod falco;
pub mod k8s_audit;
pub mod prometheus;

mod columns;
mod json_lines;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use crate::schema::Stream;

/// How many bytes of a bad record are kept in quarantine.
pub const QUARANTINE_RAW_BYTES: usize = 4096;

/// What the caller knows that the bytes do not say.
#[derive(Debug, Clone)]
pub struct DecodeContext {
    /// Cluster name stamped on every row.
    pub cluster: Option<Arc<str>>,
    /// Event time (ns since the epoch) for records that carry none, e.g. a scrape's start time.
    pub default_ts: i64,
    /// Line number of the first line of the input (for inputs cut out of a larger file).
    pub first_line: u64,
    /// Largest single record accepted; bigger ones are quarantined as `too_large`.
    pub max_record_bytes: usize,
}

impl DecodeContext {
    /// A context with no cluster, the given default time, and the default limits.
    pub fn new(default_ts: i64) -> Self {
        DecodeContext {
            cluster: None,
            default_ts,
            first_line: 1,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Sets the cluster name.
    pub fn with_cluster(mut self, cluster: Option<Arc<str>>) -> Self {
        self.cluster = cluster;
        self
    }
}

/// Default largest record: 4 MiB (a RequestResponse pod create with a large spec stays well below).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 << 20;

/// A decoder's result.
#[derive(Debug)]
pub struct Decoded {
    /// The good rows, in input order, in the stream's schema.
    pub batch: RecordBatch,
    /// The bad records, in input order.
    pub quarantined: Vec<Quarantined>,
}

/// Why a record was quarantined. The set is closed so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// Not well-formed JSON (truncated, syntax error, lone surrogate, …).
    InvalidJson,
    /// Nesting deeper than the decoder allows.
    TooDeep,
    /// A record larger than `max_record_bytes`.
    TooLarge,
    /// Well-formed, but a required field is missing.
    MissingField,
    /// Well-formed, but a field has the wrong type or an impossible value.
    InvalidField,
    /// A timestamp that cannot be parsed or is out of range.
    InvalidTimestamp,
    /// A Prometheus sample with the same label name twice.
    DuplicateLabel,
    /// A Prometheus text line that does not follow the exposition grammar.
    InvalidSample,
    /// Well-formed JSON that is not an event of this stream.
    UnknownShape,
}

impl Reason {
    /// Every reason, in a fixed order (for metrics that list zeros too).
    pub const ALL: [Reason; 10] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::TooDeep,
        Reason::TooLarge,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::InvalidTimestamp,
        Reason::DuplicateLabel,
        Reason::InvalidSample,
        Reason::UnknownShape,
    ];

    /// Snake-case name, used in quarantine files and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::TooDeep => "too_deep",
            Reason::TooLarge => "too_large",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::DuplicateLabel => "duplicate_label",
            Reason::InvalidSample => "invalid_sample",
            Reason::UnknownShape => "unknown_shape",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in the input a bad record was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// 1-based line number (JSON lines, Prometheus text).
    Line(u64),
    /// 0-based index of an item in a list (`EventList.items`, a JSON array).
    Item(u64),
    /// The input as a whole.
    Body,
}

/// A record that could not be decoded.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Stream it was meant for.
    pub stream: Stream,
    /// Where it was.
    pub location: Location,
    /// Why it was rejected.
    pub reason: Reason,
    /// A human-readable explanation that never quotes the payload.
    pub detail: String,
    /// The first [`QUARANTINE_RAW_BYTES`] bytes of the record.
    pub raw: Vec<u8>,
    /// The record's full length in bytes.
    pub raw_len: usize,
}

impl Quarantined {
    pub(crate) fn new(
        stream: Stream,
        location: Location,
        reason: Reason,
        detail: impl Into<String>,
        raw: &[u8],
    ) -> Self {
        Quarantined {
            stream,
            location,
            reason,
            detail: detail.into(),
            raw: raw[..raw.len().min(QUARANTINE_RAW_BYTES)].to_vec(),
            raw_len: raw.len(),
        }
    }
}

/// Decodes `input` for `stream` with the stream's decoder.
pub fn decode(stream: Stream, input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    match stream {
        Stream::GpuMetrics => prometheus::decode(input, cx),
        Stream::FalcoEvents => falco::decode(input, cx),
        Stream::K8sAudit => k8s_audit::decode(input, cx),
    }
}

/// Classifies a serde_json error into a quarantine reason and a payload-free message.
pub(crate) fn json_error(e: &serde_json::Error) -> (Reason, String) {
    let msg = e.to_string();
    let reason = if msg.contains("recursion limit") {
        Reason::TooDeep
    } else if e.is_data() {
        if msg.contains("missing field") {
            Reason::MissingField
        } else {
            Reason::InvalidField
        }
    } else {
        Reason::InvalidJson
    };
    // serde_json's messages name positions and expected types, never the offending values for
    // syntax errors; data errors may quote a value (`invalid type: string "x"`), so cut those.
    let detail = match msg.find(": string \"") {
        Some(i) if e.is_data() => {
            format!("{} (line {} column {})", &msg[..i], e.line(), e.column())
        }
        _ => msg,
    };
    (reason, detail)
}
