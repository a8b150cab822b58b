//! The write-ahead log of one table: numbered segments of CRC-framed Arrow IPC batches.
//!
//! ```text
//!  wal/<table>/00000000000000000007.wal
//!  ┌──────────┬───────────────────────────────────┬───────────────────────────────────┬─
//!  │ GSWAL001 │ len u32 LE │ crc32c u32 LE │ payload │ len u32 LE │ crc32c u32 LE │ payload │ …
//!  └──────────┴───────────────────────────────────┴───────────────────────────────────┴─
//! ```
//!
//! A payload is one self-contained Arrow IPC stream (schema, one batch, end marker), so every
//! frame decodes on its own and a damaged frame never makes the next segment unreadable.
//! Every append is followed by `fdatasync` before it returns: what the pipeline acknowledges
//! is on disk. A segment is never appended to again after a restart; recovery reads the valid
//! prefix of each segment (a torn last frame, a zero length, a bad CRC or an undecodable
//! payload ends the segment) and reports what it had to skip.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use super::fs::sync_dir;

/// First bytes of every segment.
pub(crate) const MAGIC: &[u8; 8] = b"GSWAL001";
/// Length and CRC before each payload.
const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload a reader accepts: a corrupt length must not make recovery allocate
/// gigabytes.
pub(crate) const MAX_FRAME_BYTES: usize = 1 << 30;

/// Path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The segments in `dir`, oldest first (a missing directory has none).
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Encodes one batch as a frame payload.
pub(crate) fn encode(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf)
}

fn decode(payload: &[u8]) -> Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    StreamReader::try_new(Cursor::new(payload), None)?.collect()
}

/// The open segment that appends go to.
#[derive(Debug)]
pub(crate) struct WalWriter {
    dir: PathBuf,
    seq: u64,
    file: File,
    /// Bytes known to be complete frames (where a failed append truncates back to).
    len: u64,
    frames: u64,
    /// A failed append could not be undone: the next append starts a new segment.
    poisoned: bool,
}

impl WalWriter {
    /// Creates segment `seq` (it must not exist) and makes its directory entry durable.
    pub(crate) fn create(dir: &Path, seq: u64) -> io::Result<WalWriter> {
        fs::create_dir_all(dir)?;
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            seq,
            file,
            len: MAGIC.len() as u64,
            frames: 0,
            poisoned: false,
        })
    }

    /// Sequence number of the open segment.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the open segment holds no frame yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Appends one frame and fdatasyncs it; durable when this returns `Ok`.
    pub(crate) fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.is_empty() || payload.len() > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "WAL frame is empty or too large",
            ));
        }
        if self.poisoned {
            self.rotate()?;
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let written = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                self.frames += 1;
                Ok(())
            }
            Err(e) => {
                // A partial frame would end this segment for recovery; cut it off, or if even
                // that fails, never write behind it again.
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .is_err()
                {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    /// Closes the open segment and starts the next; returns the closed segment's number.
    pub(crate) fn rotate(&mut self) -> io::Result<u64> {
        let closed = self.seq;
        let next = WalWriter::create(&self.dir, self.seq + 1)?;
        *self = next;
        Ok(closed)
    }
}

/// What reading one segment found.
#[derive(Debug, Default)]
pub(crate) struct SegmentRead {
    /// Decoded batches, in append order.
    pub batches: Vec<RecordBatch>,
    /// Frames decoded.
    pub frames: u64,
    /// Bytes after the valid prefix (a torn or corrupt tail), skipped.
    pub skipped_bytes: u64,
    /// Why reading stopped before the end, if it did.
    pub damage: Option<&'static str>,
}

/// Reads the valid prefix of a segment file.
pub(crate) fn read_segment(path: &Path) -> io::Result<SegmentRead> {
    let bytes = fs::read(path)?;
    Ok(parse_segment(&bytes))
}

/// Parses segment bytes: every frame up to the first damaged one.
pub(crate) fn parse_segment(bytes: &[u8]) -> SegmentRead {
    let mut out = SegmentRead::default();
    if bytes.len() < MAGIC.len() {
        // Created but its header never reached the disk: nothing was acknowledged from it.
        out.skipped_bytes = bytes.len() as u64;
        if !bytes.is_empty() {
            out.damage = Some("truncated header");
        }
        return out;
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        out.skipped_bytes = bytes.len() as u64;
        out.damage = Some("bad magic");
        return out;
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let damage = if rest.len() < FRAME_HEADER_BYTES {
            Some("torn frame header")
        } else {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if len == 0 || len > MAX_FRAME_BYTES {
                Some("bad frame length")
            } else if rest.len() < FRAME_HEADER_BYTES + len {
                Some("torn frame")
            } else {
                let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
                if crc32c::crc32c(payload) != crc {
                    Some("bad checksum")
                } else {
                    match decode(payload) {
                        Ok(batches) => {
                            out.batches.extend(batches);
                            out.frames += 1;
                            at += FRAME_HEADER_BYTES + len;
                            None
                        }
                        Err(_) => Some("undecodable frame"),
                    }
                }
            }
        };
        if let Some(d) = damage {
            out.damage = Some(d);
            out.skipped_bytes = (bytes.len() - at) as u64;
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![n, n + 1])),
                Arc::new(StringArray::from(vec![Some("x"), None])),
            ],
        )
        .expect("batch")
    }

    fn segment_with(frames: &[i64]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = WalWriter::create(dir.path(), 1).expect("create");
        for n in frames {
            w.append(&encode(&batch(*n)).expect("encode"))
                .expect("append");
        }
        let p = segment_path(dir.path(), 1);
        (dir, p)
    }

    #[test]
    fn frames_round_trip() {
        let (_d, p) = segment_with(&[1, 10, 100]);
        let r = read_segment(&p).expect("read");
        assert_eq!(r.frames, 3);
        assert_eq!(r.damage, None);
        assert_eq!(r.batches, vec![batch(1), batch(10), batch(100)]);
    }

    #[test]
    fn every_truncation_keeps_exactly_the_complete_frames() {
        let (_d, p) = segment_with(&[1, 2, 3]);
        let bytes = fs::read(&p).expect("read");
        let one = encode(&batch(1)).expect("encode").len() + FRAME_HEADER_BYTES;
        for cut in 0..bytes.len() {
            let r = parse_segment(&bytes[..cut]);
            let complete = cut.saturating_sub(MAGIC.len()) / one;
            assert_eq!(r.frames as usize, complete.min(3), "cut at {cut}");
            assert_eq!(
                r.skipped_bytes as usize,
                if cut < MAGIC.len() {
                    cut
                } else {
                    cut - MAGIC.len() - complete * one
                },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_or_a_zero_length_ends_the_segment_at_the_previous_frame() {
        let (_d, p) = segment_with(&[1, 2, 3]);
        let bytes = fs::read(&p).expect("read");
        let one = encode(&batch(1)).expect("encode").len() + FRAME_HEADER_BYTES;
        // A byte inside the second frame's payload.
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + one + FRAME_HEADER_BYTES + 5] ^= 0x40;
        let r = parse_segment(&flipped);
        assert_eq!((r.frames, r.damage), (1, Some("bad checksum")));
        assert_eq!(r.skipped_bytes as usize, 2 * one);
        // A zero length where the third frame starts.
        let mut zeroed = bytes.clone();
        zeroed[MAGIC.len() + 2 * one..MAGIC.len() + 2 * one + 4].copy_from_slice(&[0; 4]);
        let r = parse_segment(&zeroed);
        assert_eq!((r.frames, r.damage), (2, Some("bad frame length")));
        // A bad magic: nothing is trusted.
        let mut magic = bytes;
        magic[0] = b'X';
        assert_eq!(parse_segment(&magic).frames, 0);
    }

    #[test]
    fn segments_list_in_order_and_rotation_starts_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = WalWriter::create(dir.path(), 9).expect("create");
        assert!(w.is_empty());
        w.append(&encode(&batch(1)).expect("encode"))
            .expect("append");
        assert_eq!(w.rotate().expect("rotate"), 9);
        assert_eq!(w.seq(), 10);
        let listed: Vec<u64> = list_segments(dir.path())
            .expect("ls")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(listed, [9, 10]);
        assert!(
            list_segments(&dir.path().join("missing"))
                .expect("ls")
                .is_empty()
        );
    }
}
