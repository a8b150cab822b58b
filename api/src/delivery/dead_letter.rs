//! The dead-letter file: items a receiver refused for good, with the reason.
//!
//! One JSON line per item in `<data_dir>/dead-letter/<target>.jsonl`:
//! `{"at":"<RFC 3339 wall time>","target":"sink:es","reason":"rejected","detail":"…","item":{…}}`.
//! The item is the finding or alert exactly as queued, so an operator can fix the cause and
//! send it again. Lines are written and synced before the outbox lets the items go. At
//! `max_bytes` the file is rotated once (`.1`, replacing an older one).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::value::RawValue;

use super::metrics::DeadLetterReason;

/// Default largest dead-letter file before rotation.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// A target's dead-letter file.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    target: String,
    max_bytes: u64,
    file: Mutex<Option<File>>,
}

#[derive(Serialize)]
struct Line<'a> {
    at: String,
    target: &'a str,
    reason: &'static str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item_text: Option<String>,
}

impl DeadLetter {
    /// The dead-letter file of `target` under `dir` (created on first use).
    pub fn new(dir: &Path, target: &str, max_bytes: u64) -> DeadLetter {
        let file_name: String = target
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        DeadLetter {
            path: dir.join(format!("{file_name}.jsonl")),
            target: target.to_string(),
            max_bytes,
            file: Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes and syncs one line per payload.
    pub fn write(
        &self,
        reason: DeadLetterReason,
        detail: &str,
        payloads: &[&[u8]],
    ) -> std::io::Result<()> {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut buf = Vec::new();
        for p in payloads {
            let raw: Option<&RawValue> = std::str::from_utf8(p)
                .ok()
                .and_then(|s| serde_json::from_str(s).ok());
            let line = Line {
                at: at.clone(),
                target: &self.target,
                reason: reason.as_str(),
                detail,
                item: raw,
                item_text: raw
                    .is_none()
                    .then(|| String::from_utf8_lossy(p).into_owned()),
            };
            serde_json::to_writer(&mut buf, &line).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let len = guard
            .as_ref()
            .map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?;
        if len > 0 && len + buf.len() as u64 > self.max_bytes {
            *guard = None;
            fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = guard.as_mut().expect("opened above");
        f.write_all(&buf)?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_reason_detail_and_item() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = DeadLetter::new(dir.path(), "sink:es", 300);
        d.write(
            DeadLetterReason::Rejected,
            "item 400 mapper_parsing_exception",
            &[br#"{"id":"a"}"#, b"not json"],
        )
        .expect("write");
        let text = fs::read_to_string(d.path()).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["item"]["id"], "a");
        assert_eq!(lines[0]["reason"], "rejected");
        assert_eq!(lines[1]["item_text"], "not json");
        assert!(d.path().ends_with("sink_es.jsonl"));
        // Past max_bytes the file rotates.
        d.write(DeadLetterReason::Gone, "x", &[br#"{"id":"b"}"#])
            .expect("write");
        d.write(DeadLetterReason::Gone, "x", &[br#"{"id":"c"}"#])
            .expect("write");
        assert!(dir.path().join("sink_es.jsonl.1").exists());
    }
}
