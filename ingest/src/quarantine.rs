//! The quarantine file: every record a decoder rejected, as JSON lines, with its reason.
//!
//! One line per record: `received_at`, `stream`, `origin` (source and position), `location`
//! (line or item), `reason`, `detail`, the first 4 KiB of the record (`raw` as text when it is
//! UTF-8, else `raw_base64`) and `raw_len`. Writes are appended and synced before they return,
//! so a source may acknowledge a batch whose bad records are quarantined. The file is bounded:
//! at `max_bytes` it is rotated once (`quarantine.jsonl.1`); records that still do not fit are
//! counted in `gpusiem_ingest_quarantine_dropped_total`, never dropped silently.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;

use crate::decode::{Location, Quarantined};
use crate::metrics::IngestMetrics;
use crate::{Error, Result};

/// Appends quarantined records to `<dir>/quarantine.jsonl`.
#[derive(Debug)]
pub struct QuarantineWriter {
    path: PathBuf,
    max_bytes: u64,
    metrics: IngestMetrics,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: Option<File>,
    size: u64,
}

/// Default bound of the quarantine file (256 MiB, twice with the rotated file).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

impl QuarantineWriter {
    /// Opens (creating) `<dir>/quarantine.jsonl`.
    pub fn open(dir: &Path, max_bytes: u64, metrics: IngestMetrics) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            op: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("quarantine.jsonl");
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(QuarantineWriter {
            path,
            max_bytes,
            metrics,
            state: Mutex::new(State {
                file: Some(file),
                size,
            }),
        })
    }

    /// The file records are appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts and appends `records` (from `origin`), then syncs the file.
    pub fn write(&self, origin: &str, records: &[Quarantined]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in records {
            self.metrics.record_quarantined(r.stream, r.reason);
            serde_json::to_writer(&mut buf, &Line::new(&received_at, origin, r))
                .expect("serialising to memory cannot fail");
            buf.push(b'\n');
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.size + buf.len() as u64 > self.max_bytes {
            self.rotate(&mut state)?;
            if buf.len() as u64 > self.max_bytes {
                self.metrics.quarantine_dropped.inc_by(records.len() as u64);
                return Ok(());
            }
        }
        let file = match &mut state.file {
            Some(f) => f,
            None => state.file.insert(open_append(&self.path)?),
        };
        let io = |source| Error::File {
            op: "writing",
            path: self.path.clone(),
            source,
        };
        file.write_all(&buf).map_err(io)?;
        file.sync_data().map_err(io)?;
        state.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&self, state: &mut State) -> Result<()> {
        state.file = None;
        let rotated = self.path.with_extension("jsonl.1");
        std::fs::rename(&self.path, &rotated).map_err(|source| Error::File {
            op: "rotating",
            path: self.path.clone(),
            source,
        })?;
        state.file = Some(open_append(&self.path)?);
        state.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::File {
            op: "opening",
            path: path.to_path_buf(),
            source,
        })
}

#[derive(serde::Serialize)]
struct Line<'a> {
    received_at: &'a str,
    stream: &'static str,
    origin: &'a str,
    location: Location,
    reason: &'static str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
    raw_len: usize,
}

impl<'a> Line<'a> {
    fn new(received_at: &'a str, origin: &'a str, r: &'a Quarantined) -> Self {
        let text = std::str::from_utf8(&r.raw).ok().or_else(|| {
            // A valid prefix cut inside a multi-byte character is still text.
            let e = std::str::from_utf8(&r.raw).err()?;
            (e.error_len().is_none() && e.valid_up_to() + 4 > r.raw.len())
                .then(|| std::str::from_utf8(&r.raw[..e.valid_up_to()]).ok())?
        });
        Line {
            received_at,
            stream: r.stream.name(),
            origin,
            location: r.location,
            reason: r.reason.as_str(),
            detail: &r.detail,
            raw: text,
            raw_base64: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(&r.raw)),
            raw_len: r.raw_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Reason;
    use crate::schema::Stream;

    fn record(raw: &[u8]) -> Quarantined {
        Quarantined::new(
            Stream::FalcoEvents,
            Location::Line(3),
            Reason::InvalidJson,
            "x",
            raw,
        )
    }

    #[test]
    fn writes_lines_counts_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = IngestMetrics::default();
        let w = QuarantineWriter::open(dir.path(), 2_000, metrics.clone()).expect("open");
        w.write("file:/x", &[record(b"{\"a\":"), record(b"\xff\xfe")])
            .expect("write");
        let text = std::fs::read_to_string(w.path()).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["raw"], "{\"a\":");
        assert_eq!(lines[0]["location"]["line"], 3);
        assert_eq!(lines[0]["reason"], "invalid_json");
        assert_eq!(lines[1]["raw_base64"], "//4=");
        assert_eq!(metrics.quarantined_total(), 2);

        let big = vec![b'a'; 1_500];
        w.write("file:/x", &[record(&big)]).expect("write");
        assert!(dir.path().join("quarantine.jsonl.1").exists());
        let big = vec![b'a'; 4_000];
        w.write("file:/x", &[record(&big)]).expect("write");
        assert_eq!(metrics.quarantine_dropped.get(), 1);
        assert_eq!(metrics.quarantined_total(), 4);
    }
}
