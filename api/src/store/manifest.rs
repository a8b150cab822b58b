//! The manifest of one table: which Parquet files are visible and which WAL segments they
//! cover.
//!
//! `tables/<table>/_manifest.json` is the commit point of every flush, compaction and retention
//! pass: a Parquet file that is on disk but not listed here is an orphan (a crash between its
//! rename and the manifest commit) and is deleted on open; its rows are still in the WAL.
//! `wal_through` is the last WAL segment whose rows are all in listed files, so recovery
//! replays only later segments and a crash between the commit and the WAL deletion never
//! duplicates rows. The manifest is replaced atomically (see [`super::fs::write_atomic`]).

use std::io::Cursor;
use std::path::Path;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

/// File name of the manifest inside a table directory.
pub(crate) const MANIFEST_FILE: &str = "_manifest.json";
const VERSION: u32 = 1;

/// One visible Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the table directory (`dt=2024-05-01/hour=13/part-….parquet`).
    pub path: String,
    /// Start of the file's hour partition, seconds since the epoch.
    pub hour: i64,
    /// Rows in the file.
    pub rows: u64,
    /// Size on disk.
    pub bytes: u64,
    /// Smallest `ts`, ns since the epoch.
    pub min_ts: i64,
    /// Largest `ts`, ns since the epoch.
    pub max_ts: i64,
}

/// A table's committed state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub version: u32,
    pub table: String,
    /// Only visible to admin queries (see `Store::register_admin_table`).
    pub admin_only: bool,
    /// The table's Arrow schema as an IPC stream, hex.
    pub schema: String,
    /// Every WAL segment up to this one is in `files` (0: none yet).
    pub wal_through: u64,
    /// Number for the next file name.
    pub next_file: u64,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// An empty manifest for a new table.
    pub(crate) fn new(
        table: &str,
        schema: &SchemaRef,
        admin_only: bool,
    ) -> Result<Manifest, String> {
        Ok(Manifest {
            version: VERSION,
            table: table.to_string(),
            admin_only,
            schema: encode_schema(schema)?,
            wal_through: 0,
            next_file: 1,
            files: Vec::new(),
        })
    }

    /// Reads `dir/_manifest.json`; `Ok(None)` when there is none.
    pub(crate) fn load(dir: &Path) -> Result<Option<Manifest>, String> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| format!("parsing {}: {e}", path.display()))?;
        if m.version != VERSION {
            return Err(format!(
                "{}: unsupported manifest version {}",
                path.display(),
                m.version
            ));
        }
        Ok(Some(m))
    }

    /// Replaces `dir/_manifest.json` atomically.
    pub(crate) fn store(&self, dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec(self).map_err(|e| format!("encoding manifest: {e}"))?;
        super::fs::write_atomic(&dir.join(MANIFEST_FILE), &bytes)
            .map_err(|e| format!("writing {}: {e}", dir.display()))
    }

    /// The schema stored in the manifest.
    pub(crate) fn schema(&self) -> Result<SchemaRef, String> {
        decode_schema(&self.schema)
    }

    /// Total bytes of the listed files.
    pub(crate) fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

fn encode_schema(schema: &SchemaRef) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut w = StreamWriter::try_new(&mut buf, schema).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    drop(w);
    Ok(hex::encode(buf))
}

fn decode_schema(text: &str) -> Result<SchemaRef, String> {
    let bytes = hex::decode(text).map_err(|e| format!("manifest schema: {e}"))?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| format!("manifest schema: {e}"))?;
    Ok(reader.schema())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_its_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = gpusiem_detect::finding::schema();
        let mut m = Manifest::new("findings", &schema, false).expect("new");
        m.files.push(FileEntry {
            path: "dt=2024-05-01/hour=13/part-1.parquet".into(),
            hour: 1,
            rows: 2,
            bytes: 3,
            min_ts: 4,
            max_ts: 5,
        });
        m.wal_through = 7;
        m.store(dir.path()).expect("store");
        let back = Manifest::load(dir.path()).expect("load").expect("present");
        assert_eq!(back.files, m.files);
        assert_eq!(back.wal_through, 7);
        assert_eq!(back.schema().expect("schema"), schema);
        assert!(
            Manifest::load(&dir.path().join("none"))
                .expect("load")
                .is_none()
        );
    }
}
