//! Key indexes: for each Parquet file, which rows hold each value of the columns analysts look
//! up one entity by (`id`, `pod`, `gpu_uuid`, `event_id`).
//!
//! A pod or a GPU has rows in every file of the hours it was active, and files hold many
//! entities each: row-group statistics and bloom filters can rarely skip one, and a lookup
//! would decode the whole key column of each such file. The key index turns a lookup into a
//! row selection instead: files without the key are not opened, and in the others only the
//! pages holding the selected rows are decoded (few, as files keep an entity's rows together).
//!
//! The index of `part-….parquet` is the sidecar `part-….parquet.keys`, written after the
//! Parquet file and before the manifest commit (an index without a listed Parquet file is an
//! orphan and deleted on open). Layout, little-endian:
//!
//! ```text
//! "GSKEYS01"  header_len u32  header  crc32c(header) u32  sections…
//! header:  file_rows u64  file_bytes u64  columns u32
//!          per column: name_len u16  name  keys u32  entries_at u64  rows_at u64
//!                      fences u32, per fence: first_hash u32  crc32c(block) u32
//! entries: keys + 1 × (hash u32, start u32, crc32c(rows of the key) u32), sorted by hash;
//!          the last is (u32::MAX, rows, 0)
//! rows:    row numbers u32, grouped by key in entry order, ascending within a key
//! ```
//!
//! A key is its value's CRC-32C; values that share a hash share an entry (a lookup then
//! selects a few extra rows, which the query's own filter removes). Entries are checked in
//! blocks of [`BLOCK`] with the fence checksums, each key's rows with its entry's; an index
//! that is missing, damaged or does not describe the file is ignored and the file is scanned as a whole, so the index can only
//! make a lookup faster, never change its answer.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;

/// Columns indexed when a table has them as strings.
pub(crate) const KEY_COLUMNS: [&str; 4] = ["id", "pod", "gpu_uuid", "event_id"];
/// Suffix of the sidecar beside a Parquet file.
pub(crate) const SUFFIX: &str = ".keys";
const MAGIC: &[u8; 8] = b"GSKEYS01";
/// Entries per checksummed block.
const BLOCK: usize = 256;
/// Bytes per entry.
const ENTRY: usize = 12;
/// Largest header accepted (a damaged length must not allocate gigabytes).
const MAX_HEADER: usize = 16 << 20;

/// The sidecar of `parquet`.
pub(crate) fn sidecar(parquet: &Path) -> PathBuf {
    let mut s = parquet.as_os_str().to_owned();
    s.push(SUFFIX);
    PathBuf::from(s)
}

/// The key of a value.
fn hash(value: &[u8]) -> u32 {
    crc32c::crc32c(value)
}

/// Serialises the index of `batch` (the exact rows of a Parquet file of `file_bytes` bytes);
/// `None` when the table has no key column.
pub(crate) fn build(batch: &RecordBatch, file_bytes: u64) -> Option<Vec<u8>> {
    let schema = batch.schema();
    let columns: Vec<(&str, &arrow::array::StringArray)> = KEY_COLUMNS
        .iter()
        .filter_map(|name| {
            let (i, f) = schema.column_with_name(name)?;
            (f.data_type() == &DataType::Utf8).then(|| (*name, batch.column(i).as_string::<i32>()))
        })
        .collect();
    if columns.is_empty() {
        return None;
    }
    let mut header = Vec::new();
    header.extend_from_slice(&(batch.num_rows() as u64).to_le_bytes());
    header.extend_from_slice(&file_bytes.to_le_bytes());
    header.extend_from_slice(&(columns.len() as u32).to_le_bytes());
    let mut sections: Vec<u8> = Vec::new();
    // Section offsets are relative to the end of the header; fixed up below.
    let mut fixups: Vec<(usize, u64)> = Vec::new();
    for (name, values) in columns {
        let mut pairs: Vec<(u32, u32)> = (0..values.len())
            .filter(|&r| values.is_valid(r))
            .map(|r| (hash(values.value(r).as_bytes()), r as u32))
            .collect();
        pairs.sort_unstable();
        let row_bytes: Vec<u8> = pairs.iter().flat_map(|(_, r)| r.to_le_bytes()).collect();
        let mut starts: Vec<(u32, usize)> = Vec::new();
        for (i, (h, _)) in pairs.iter().enumerate() {
            if starts.last().is_none_or(|(last, _)| last != h) {
                starts.push((*h, i));
            }
        }
        let keys = starts.len();
        starts.push((u32::MAX, pairs.len()));
        let mut entry_bytes = Vec::with_capacity(starts.len() * ENTRY);
        for (i, (h, start)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(*start, |(_, e)| *e);
            entry_bytes.extend_from_slice(&h.to_le_bytes());
            entry_bytes.extend_from_slice(&(*start as u32).to_le_bytes());
            entry_bytes
                .extend_from_slice(&crc32c::crc32c(&row_bytes[start * 4..end * 4]).to_le_bytes());
        }
        header.extend_from_slice(&(name.len() as u16).to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        header.extend_from_slice(&(keys as u32).to_le_bytes());
        fixups.push((header.len(), sections.len() as u64));
        header.extend_from_slice(&0u64.to_le_bytes());
        sections.extend_from_slice(&entry_bytes);
        fixups.push((header.len(), sections.len() as u64));
        header.extend_from_slice(&0u64.to_le_bytes());
        sections.extend_from_slice(&row_bytes);
        let blocks = keys.div_ceil(BLOCK);
        header.extend_from_slice(&(blocks as u32).to_le_bytes());
        for b in 0..blocks {
            let (first, _) = starts[b * BLOCK];
            header.extend_from_slice(&first.to_le_bytes());
            header.extend_from_slice(
                &crc32c::crc32c(block_bytes(&entry_bytes, b, keys)).to_le_bytes(),
            );
        }
    }
    let base = (MAGIC.len() + 4 + header.len() + 4) as u64;
    for (at, rel) in fixups {
        header[at..at + 8].copy_from_slice(&(base + rel).to_le_bytes());
    }
    let mut out = Vec::with_capacity(base as usize + sections.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    out.extend_from_slice(&sections);
    Some(out)
}

/// The bytes of entry block `b` of a column with `keys` keys (its entries and the one after,
/// which ends the last key's rows).
fn block_bytes(entries: &[u8], b: usize, keys: usize) -> &[u8] {
    let from = b * BLOCK;
    let to = ((b + 1) * BLOCK).min(keys) + 1;
    &entries[from * ENTRY..to * ENTRY]
}

#[derive(Debug)]
struct Column {
    name: String,
    keys: usize,
    entries_at: u64,
    rows_at: u64,
    /// (first hash, checksum) per block.
    fences: Vec<(u32, u32)>,
}

/// An opened index: the header is read and checked; lookups read the rest on demand.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    file: File,
    rows: u64,
    columns: Vec<Column>,
}

fn damaged(path: &Path, why: &str) -> String {
    format!("key index {}: {why}", path.display())
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn parse_header(h: &[u8]) -> Option<(u64, u64, Vec<Column>)> {
    let mut c = Cursor(h);
    let rows = c.u64()?;
    let bytes = c.u64()?;
    let n = c.u32()?;
    let mut columns = Vec::new();
    for _ in 0..n {
        let len = usize::from(c.u16()?);
        let name = String::from_utf8(c.take(len)?.to_vec()).ok()?;
        let keys = c.u32()? as usize;
        let entries_at = c.u64()?;
        let rows_at = c.u64()?;
        let blocks = c.u32()? as usize;
        if blocks != keys.div_ceil(BLOCK) {
            return None;
        }
        let mut fences = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            fences.push((c.u32()?, c.u32()?));
        }
        columns.push(Column {
            name,
            keys,
            entries_at,
            rows_at,
            fences,
        });
    }
    c.0.is_empty().then_some((rows, bytes, columns))
}

fn read_at(file: &mut File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

impl KeyIndex {
    /// Opens the index of the Parquet file `parquet`, which must have `rows` rows and `bytes`
    /// bytes. `Ok(None)`: there is no index (written before indexes existed, or a table
    /// without key columns).
    pub(crate) fn open(parquet: &Path, rows: u64, bytes: u64) -> Result<Option<KeyIndex>, String> {
        let path = sidecar(parquet);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(damaged(&path, &e.to_string())),
        };
        let start =
            read_at(&mut file, 0, MAGIC.len() + 4).map_err(|e| damaged(&path, &e.to_string()))?;
        if &start[..8] != MAGIC {
            return Err(damaged(&path, "not a key index"));
        }
        let len = u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as usize;
        if len > MAX_HEADER {
            return Err(damaged(&path, "header too large"));
        }
        let h = read_at(&mut file, 12, len + 4).map_err(|e| damaged(&path, &e.to_string()))?;
        let (header, sum) = h.split_at(len);
        if crc32c::crc32c(header).to_le_bytes() != sum {
            return Err(damaged(&path, "header checksum mismatch"));
        }
        let (irows, ibytes, columns) =
            parse_header(header).ok_or_else(|| damaged(&path, "malformed header"))?;
        if (irows, ibytes) != (rows, bytes) {
            return Err(damaged(&path, "describes another file"));
        }
        Ok(Some(KeyIndex {
            file,
            rows,
            columns,
        }))
    }

    /// The rows (ascending, no duplicates) that may hold one of `values` in `column`; a
    /// superset of the rows that do. `None`: the column is not indexed.
    pub(crate) fn lookup(
        &mut self,
        column: &str,
        values: &[String],
    ) -> Result<Option<Vec<u32>>, String> {
        let Some(ci) = self.columns.iter().position(|c| c.name == column) else {
            return Ok(None);
        };
        let mut hashes: Vec<u32> = values.iter().map(|v| hash(v.as_bytes())).collect();
        hashes.sort_unstable();
        hashes.dedup();
        let mut out = Vec::new();
        for h in hashes {
            self.rows_of(ci, h, &mut out)?;
        }
        out.sort_unstable();
        out.dedup();
        Ok(Some(out))
    }

    fn rows_of(&mut self, ci: usize, h: u32, out: &mut Vec<u32>) -> Result<(), String> {
        let c = &self.columns[ci];
        let b = c.fences.partition_point(|(first, _)| *first <= h);
        if b == 0 {
            return Ok(());
        }
        let b = b - 1;
        let from = b * BLOCK;
        let to = ((b + 1) * BLOCK).min(c.keys) + 1;
        let (entries_at, rows_at, sum) = (c.entries_at, c.rows_at, c.fences[b].1);
        let bytes = read_at(
            &mut self.file,
            entries_at + (from * ENTRY) as u64,
            (to - from) * ENTRY,
        )
        .map_err(|e| format!("key index read: {e}"))?;
        if crc32c::crc32c(&bytes) != sum {
            return Err("key index block checksum mismatch".into());
        }
        let entry = |i: usize| {
            let e = &bytes[i * ENTRY..(i + 1) * ENTRY];
            let word = |k: usize| u32::from_le_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]);
            (word(0), word(4), word(8))
        };
        let keys_here = to - from - 1;
        let Some(i) = (0..keys_here).find(|&i| entry(i).0 == h) else {
            return Ok(());
        };
        let (_, start, sum) = entry(i);
        let end = entry(i + 1).1;
        if end < start || u64::from(end) > self.rows {
            return Err("key index entry out of range".into());
        }
        let rows = read_at(
            &mut self.file,
            rows_at + u64::from(start) * 4,
            (end - start) as usize * 4,
        )
        .map_err(|e| format!("key index read: {e}"))?;
        if crc32c::crc32c(&rows) != sum {
            return Err("key index rows checksum mismatch".into());
        }
        for r in rows.chunks_exact(4) {
            let r = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            if u64::from(r) >= self.rows {
                return Err("key index row out of range".into());
            }
            out.push(r);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    use super::*;

    fn batch(pods: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("pod", DataType::Utf8, true),
            Field::new("other", DataType::Utf8, true),
        ]));
        let pods = StringArray::from(pods.to_vec());
        let other = StringArray::from(vec![Some("x"); pods.len()]);
        RecordBatch::try_new(schema, vec![Arc::new(pods), Arc::new(other)]).expect("batch")
    }

    fn write(dir: &Path, b: &RecordBatch, bytes: u64) -> PathBuf {
        let parquet = dir.join("part-1.parquet");
        std::fs::write(
            sidecar(&parquet),
            build(b, bytes).expect("has a key column"),
        )
        .expect("write");
        parquet
    }

    #[test]
    fn lookups_find_exactly_the_rows_of_a_value() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = batch(&[Some("a"), None, Some("b"), Some("a"), Some("c")]);
        let p = write(dir.path(), &b, 99);
        let mut ix = KeyIndex::open(&p, 5, 99).expect("opens").expect("exists");
        assert_eq!(
            ix.lookup("pod", &["a".into()]).expect("ok"),
            Some(vec![0, 3])
        );
        assert_eq!(
            ix.lookup("pod", &["c".into(), "b".into(), "a".into()])
                .expect("ok"),
            Some(vec![0, 2, 3, 4])
        );
        assert_eq!(ix.lookup("pod", &["zz".into()]).expect("ok"), Some(vec![]));
        assert_eq!(ix.lookup("other", &["x".into()]).expect("ok"), None);
    }

    #[test]
    fn an_index_of_another_file_or_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = batch(&[Some("a"), Some("b")]);
        let p = write(dir.path(), &b, 10);
        assert!(KeyIndex::open(&p, 2, 11).is_err(), "other size");
        assert!(KeyIndex::open(&p, 3, 10).is_err(), "other row count");
        assert!(
            KeyIndex::open(&dir.path().join("none.parquet"), 2, 10)
                .expect("ok")
                .is_none()
        );
        let mut bytes = std::fs::read(sidecar(&p)).expect("read");
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        std::fs::write(sidecar(&p), &bytes).expect("write");
        // The header still checks out; the damaged entry block does not.
        let mut ix = KeyIndex::open(&p, 2, 10).expect("opens").expect("exists");
        let r = ix
            .lookup("pod", &["a".into()])
            .and_then(|_| ix.lookup("pod", &["b".into()]));
        assert!(r.is_err(), "{r:?}");
        // A damaged row list is caught by its entry's checksum.
        let mut rows_damaged = std::fs::read(sidecar(&p)).expect("read");
        let last = rows_damaged.len() - 1;
        rows_damaged[last] ^= 0x01;
        std::fs::write(sidecar(&p), &rows_damaged).expect("write");
        let mut ix = KeyIndex::open(&p, 2, 10).expect("opens").expect("exists");
        let r = ix.lookup("pod", &["a".into(), "b".into()]);
        assert!(r.is_err(), "{r:?}");
        bytes[12] ^= 0xff;
        std::fs::write(sidecar(&p), &bytes).expect("write");
        assert!(KeyIndex::open(&p, 2, 10).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn lookups_match_a_scan(values in proptest::collection::vec(proptest::option::of(0u16..700), 0..3000),
                                probe in proptest::collection::vec(0u16..800, 1..4)) {
            let dir = tempfile::tempdir().expect("tmp");
            let strings: Vec<Option<String>> = values.iter().map(|v| v.map(|v| format!("pod-{v}"))).collect();
            let refs: Vec<Option<&str>> = strings.iter().map(|s| s.as_deref()).collect();
            let b = batch(&refs);
            let p = write(dir.path(), &b, 7);
            let mut ix = KeyIndex::open(&p, values.len() as u64, 7).expect("opens").expect("exists");
            let wanted: Vec<String> = probe.iter().map(|v| format!("pod-{v}")).collect();
            let got = ix.lookup("pod", &wanted).expect("ok").expect("indexed");
            let expected: Vec<u32> = (0..values.len() as u32)
                .filter(|&r| strings[r as usize].as_ref().is_some_and(|s| wanted.contains(s)))
                .collect();
            // A superset (hash collisions) that holds every matching row, ascending.
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(expected.iter().all(|r| got.contains(r)));
            prop_assert!(got.len() <= expected.len() + 2);
        }
    }
}
