//! The durable outbox: one per sink, per notifier and one for the router, on disk under
//! `<data_dir>/outbox/<target>/`.
//!
//! ```text
//!  append (enqueue) ─► 00000000000000000000.seg ─► read (worker) ─► send ─► ack
//!                      00000000000000004096.seg      (records in order, from the oldest unsettled)
//!                      state.json  {acked, done ranges, next_seq}
//! ```
//!
//! * **Segments** are append-only files named after the sequence number of their first record.
//!   A record is a 24-byte header — payload length (u32 LE), CRC-32C (u32 LE) over the rest of
//!   the header and the payload, sequence number (u64 LE), enqueue wall time in ns (i64 LE) —
//!   and the payload (one finding or alert as JSON). A segment is sealed when it reaches
//!   `segment_max_bytes`; a new one is opened at every start, so a segment is written by one
//!   process only.
//! * **Durability**: `append` returns after `write` and `fdatasync` (`buffer.fsync = true`, the
//!   default), so an item acknowledged to the engine survives a crash of the process or the
//!   machine. With `fsync = false` it survives a crash of the process only.
//! * **Settlement**: the worker acknowledges records (delivered, dead-lettered) in any order;
//!   `acked` is the lowest unsettled sequence number and `done` the settled ranges above it. Both
//!   go to `state.json` (written through a temporary file and a rename, not synced: a lost update
//!   only means redelivery, which receivers de-duplicate). Segments whose records are all
//!   settled are deleted.
//! * **Bounded**: the bytes of all segments stay under `max_bytes`; when full an append waits for
//!   space up to `block_timeout_secs` and then fails (the engine does not acknowledge the batch,
//!   so the source sends it again) or, with `when_full = "drop_newest"`, drops the new items and
//!   counts them.
//! * **Recovery**: at start every segment is scanned. A record whose header or checksum is wrong
//!   is skipped by scanning forward to the next valid record (the sequence numbers say how many
//!   were lost); a truncated tail is cut; records missing between the last valid one and
//!   `state.next_seq` are lost too. Every lost record is counted as dropped with reason
//!   `corrupt`, and everything valid and unsettled is delivered again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::metrics::{DropReason, TargetMetrics};
use super::{BufferConfig, WhenFull};

/// Header bytes before each payload.
pub const HEADER_BYTES: usize = 24;

/// The largest payload a record may hold.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

const STATE_FILE: &str = "state.json";
const SEGMENT_SUFFIX: &str = ".seg";

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The outbox stayed full for `block_timeout_secs`.
    #[error("outbox full ({bytes} of {max_bytes} bytes) for {waited_secs} s")]
    Full {
        /// Bytes in use.
        bytes: u64,
        /// The limit.
        max_bytes: u64,
        /// How long the append waited.
        waited_secs: u64,
    },
    /// The items cannot fit even in an empty outbox.
    #[error("{bytes} bytes do not fit in an outbox of {max_bytes} bytes")]
    TooLarge {
        /// Bytes to append.
        bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
}

/// One record read back from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number (unique within the outbox, increasing).
    pub seq: u64,
    /// Wall time of the append, ns since the epoch.
    pub enqueued_at: i64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written (and synced): sequence numbers `first..first + count`.
    Stored {
        /// First sequence number.
        first: u64,
        /// Records written.
        count: u64,
    },
    /// Dropped because the outbox was full (`when_full = "drop_newest"`); counted.
    Dropped,
}

/// What recovery found at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Valid, unsettled records that will be delivered.
    pub pending: u64,
    /// Records lost to corruption or truncation (counted as dropped, reason `corrupt`).
    pub lost: u64,
    /// Bytes skipped while scanning past corruption.
    pub skipped_bytes: u64,
    /// Segments scanned.
    pub segments: u64,
}

/// Settled sequence ranges above `acked`, as `start → end` (exclusive), disjoint, not adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq < end)
    }

    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        // Merge with a range that starts before and reaches `start`.
        if let Some((&ps, &pe)) = self.0.range(..=s).next_back()
            && pe >= s
        {
            s = ps;
            e = e.max(pe);
            self.0.remove(&ps);
        }
        // Merge with ranges that start inside or right after.
        let next: Vec<(u64, u64)> = self.0.range(s..=e).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in next {
            e = e.max(b);
            self.0.remove(&a);
        }
        self.0.insert(s, e);
    }

    /// Removes and returns the end of the range starting at `at`, if any.
    fn take_at(&mut self, at: u64) -> Option<u64> {
        self.0.remove(&at)
    }

    fn below(&mut self, at: u64) {
        // Drops every range that ends at or before `at` (they are under the ack pointer).
        let stale: Vec<u64> = self
            .0
            .iter()
            .filter(|(_, e)| **e <= at)
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            self.0.remove(&s);
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    /// Every sequence number below is settled.
    acked: u64,
    /// Settled ranges above `acked`.
    #[serde(default)]
    done: Vec<(u64, u64)>,
    /// The next sequence number the writer would have used (a hint for counting tail loss).
    #[serde(default)]
    next_seq: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes that may be read (everything written and synced).
    committed: u64,
    /// Highest valid sequence number written to or found in it.
    last_seq: Option<u64>,
    /// No more appends (an older segment, or rotated).
    sealed: bool,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    segments: BTreeMap<u64, Segment>,
    /// Bytes of every segment on disk.
    bytes: u64,
    /// Bytes reserved by appends in progress.
    reserved: u64,
    acked: u64,
    done: Ranges,
    queued: u64,
    /// First sequence of the segment the writer appends to.
    active: Option<u64>,
}

impl State {
    fn settle(&mut self, seq: u64) {
        if seq < self.acked || self.done.contains(seq) {
            return;
        }
        self.done.insert(seq, seq + 1);
        self.advance();
    }

    fn settle_range(&mut self, start: u64, end: u64) {
        let start = start.max(self.acked);
        self.done.insert(start, end);
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(end) = self.done.take_at(self.acked) {
            self.acked = end;
        }
        self.done.below(self.acked);
    }

    fn is_settled(&self, seq: u64) -> bool {
        seq < self.acked || self.done.contains(seq)
    }

    /// Bytes that an append could reclaim by deleting a fully settled active segment.
    fn reclaimable_active(&self) -> u64 {
        match self.active.and_then(|a| self.segments.get(&a)) {
            Some(s) if s.last_seq.is_none_or(|l| l < self.acked) => s.committed,
            _ => 0,
        }
    }
}

#[derive(Debug)]
struct Writer {
    file: Option<File>,
    first_seq: u64,
    len: u64,
}

#[derive(Debug, Default)]
struct Reader {
    /// First sequence of the segment being read.
    segment: Option<u64>,
    file: Option<File>,
    offset: u64,
    /// Records below were handed out (or skipped) already.
    next_seq: u64,
}

/// A durable, bounded queue of records for one target.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    config: BufferConfig,
    metrics: TargetMetrics,
    state: Mutex<State>,
    writer: Mutex<Writer>,
    reader: Mutex<Reader>,
    persist: Mutex<()>,
    data: Notify,
    space: Notify,
    queued: watch::Sender<u64>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every update is a few field
    // assignments), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Encodes one record (header and payload) onto `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, enqueued_at: i64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payloads are checked against MAX_RECORD_BYTES");
    let mut h = crc32c::crc32c(&seq.to_le_bytes());
    h = crc32c::crc32c_append(h, &enqueued_at.to_le_bytes());
    h = crc32c::crc32c_append(h, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&enqueued_at.to_le_bytes());
    out.extend_from_slice(payload);
}

fn read_at(file: &mut File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, OutboxError> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("reading", path))?;
    file.read_exact(&mut buf).map_err(io_err("reading", path))?;
    Ok(buf)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Parses a record at the start of `buf`: `Ok(Some((record, size)))`, `Ok(None)` when `buf` is
/// too short for the whole record, `Err(())` when the bytes are not a valid record with a
/// sequence number at least `min_seq`.
fn parse_record(buf: &[u8], min_seq: u64) -> Result<Option<(Record, usize)>, ()> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let len = le_u32(&buf[0..4]) as usize;
    let crc = le_u32(&buf[4..8]);
    let seq = le_u64(&buf[8..16]);
    if len > MAX_RECORD_BYTES || seq < min_seq || seq > min_seq.saturating_add(1 << 40) {
        return Err(());
    }
    if buf.len() < HEADER_BYTES + len {
        return Ok(None);
    }
    let payload = &buf[HEADER_BYTES..HEADER_BYTES + len];
    let h = crc32c::crc32c_append(crc32c::crc32c(&buf[8..24]), payload);
    if h != crc {
        return Err(());
    }
    let enqueued_at = le_u64(&buf[16..24]) as i64;
    Ok(Some((
        Record {
            seq,
            enqueued_at,
            payload: payload.to_vec(),
        },
        HEADER_BYTES + len,
    )))
}

/// Scans `buf` from offset 1 for the next valid record; returns its offset.
fn resync(buf: &[u8], min_seq: u64) -> Option<usize> {
    (1..buf.len().saturating_sub(HEADER_BYTES - 1))
        .find(|&i| matches!(parse_record(&buf[i..], min_seq), Ok(Some(_))))
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir` and recovers what it holds.
    pub fn open(
        dir: &Path,
        config: BufferConfig,
        metrics: TargetMetrics,
    ) -> Result<(Arc<Outbox>, Recovery), OutboxError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let state_path = dir.join(STATE_FILE);
        let persisted: PersistedState = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %state_path.display(), error = %e, "outbox state unreadable; everything in the segments will be sent again");
                PersistedState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistedState::default(),
            Err(e) => return Err(io_err("reading", &state_path)(e)),
        };
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry
                .metadata()
                .map_err(io_err("reading", &entry.path()))?
                .len();
            bytes += len;
            segments.insert(
                first,
                Segment {
                    path: entry.path(),
                    committed: len,
                    last_seq: None,
                    sealed: true,
                },
            );
        }
        let mut done = Ranges::default();
        for (s, e) in &persisted.done {
            done.insert(*s, *e);
        }
        let mut state = State {
            next_seq: persisted.next_seq,
            segments,
            bytes,
            reserved: 0,
            acked: persisted.acked,
            done,
            queued: 0,
            active: None,
        };
        state.advance();
        let (queued, _) = watch::channel(0);
        let outbox = Outbox {
            dir: dir.to_path_buf(),
            config,
            metrics,
            state: Mutex::new(state_shell(&state)),
            writer: Mutex::new(Writer {
                file: None,
                first_seq: 0,
                len: 0,
            }),
            reader: Mutex::new(Reader::default()),
            persist: Mutex::new(()),
            data: Notify::new(),
            space: Notify::new(),
            queued,
        };
        let recovery = outbox.recover(state)?;
        Ok((Arc::new(outbox), recovery))
    }

    /// Scans every segment: counts valid unsettled records and lost ones, sets `next_seq`.
    fn recover(&self, mut state: State) -> Result<Recovery, OutboxError> {
        let mut rec = Recovery {
            segments: state.segments.len() as u64,
            ..Recovery::default()
        };
        let firsts: Vec<u64> = state.segments.keys().copied().collect();
        let mut expected = state.acked;
        let mut lost_ranges: Vec<(u64, u64)> = Vec::new();
        let gap = |state: &State, from: u64, to: u64, lost_ranges: &mut Vec<(u64, u64)>| {
            if to > from {
                lost_ranges.push((from, to));
                (from..to).filter(|&s| !state.is_settled(s)).count() as u64
            } else {
                0
            }
        };
        for first in firsts {
            let path = state.segments[&first].path.clone();
            let buf = fs::read(&path).map_err(io_err("reading", &path))?;
            let mut pos = 0usize;
            let mut last = None;
            let mut min_seq = first;
            while pos < buf.len() {
                match parse_record(&buf[pos..], min_seq) {
                    Ok(Some((r, size))) => {
                        if r.seq >= expected {
                            rec.lost += gap(&state, expected, r.seq, &mut lost_ranges);
                            expected = r.seq + 1;
                        }
                        if !state.is_settled(r.seq) {
                            rec.pending += 1;
                        }
                        last = Some(r.seq);
                        min_seq = r.seq + 1;
                        pos += size;
                    }
                    Ok(None) => {
                        // A truncated tail: the rest of the segment is not a whole record.
                        rec.skipped_bytes += (buf.len() - pos) as u64;
                        break;
                    }
                    Err(()) => match resync(&buf[pos..], min_seq) {
                        Some(skip) => {
                            rec.skipped_bytes += skip as u64;
                            pos += skip;
                        }
                        None => {
                            rec.skipped_bytes += (buf.len() - pos) as u64;
                            break;
                        }
                    },
                }
            }
            if let Some(s) = state.segments.get_mut(&first) {
                s.last_seq = last;
            }
        }
        // Records written after the last valid one (per the state file's hint) are lost too.
        let hint = state.next_seq;
        rec.lost += gap(&state, expected, hint, &mut lost_ranges);
        state.next_seq = expected.max(hint).max(state.acked);
        for (s, e) in lost_ranges {
            state.settle_range(s, e);
        }
        state.queued = rec.pending;
        // Segments with nothing left to deliver go now.
        let empty: Vec<u64> = state
            .segments
            .iter()
            .filter(|(_, s)| s.last_seq.is_none_or(|l| l < state.acked))
            .map(|(f, _)| *f)
            .collect();
        for f in empty {
            if let Some(s) = state.segments.remove(&f) {
                state.bytes -= s.committed;
                let _ = fs::remove_file(&s.path);
            }
        }
        {
            let mut reader = lock(&self.reader);
            reader.next_seq = state.acked;
        }
        self.metrics.received.inc_by(rec.pending + rec.lost);
        self.metrics.dropped(DropReason::Corrupt, rec.lost);
        self.metrics.queued.set(rec.pending as i64);
        self.metrics.outbox_bytes.set(state.bytes as i64);
        self.queued.send_replace(rec.pending);
        *lock(&self.state) = state;
        self.persist_state();
        if rec.lost > 0 || rec.skipped_bytes > 0 {
            tracing::error!(dir = %self.dir.display(), lost = rec.lost, skipped_bytes = rec.skipped_bytes, "outbox corruption found at start; valid records recovered, the loss is counted");
        }
        Ok(rec)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Items written and not yet settled.
    pub fn queued(&self) -> u64 {
        lock(&self.state).queued
    }

    /// Bytes of segments on disk.
    pub fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// A receiver of the queued count (waits for an empty outbox).
    pub fn watch_queued(&self) -> watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// Appends payloads durably (written and, with `fsync`, synced) when it returns `Stored`.
    pub async fn append(
        self: &Arc<Self>,
        payloads: Arc<Vec<Vec<u8>>>,
    ) -> Result<Appended, OutboxError> {
        if payloads.is_empty() {
            return Ok(Appended::Stored { first: 0, count: 0 });
        }
        let size: u64 = payloads
            .iter()
            .map(|p| (HEADER_BYTES + p.len()) as u64)
            .sum();
        if let Some(p) = payloads.iter().find(|p| p.len() > MAX_RECORD_BYTES) {
            return Err(OutboxError::TooLarge {
                bytes: p.len() as u64,
                max_bytes: MAX_RECORD_BYTES as u64,
            });
        }
        let max = self.config.max_bytes;
        if size > max {
            if self.config.when_full == WhenFull::DropNewest {
                self.count_dropped(payloads.len() as u64);
                return Ok(Appended::Dropped);
            }
            return Err(OutboxError::TooLarge {
                bytes: size,
                max_bytes: max,
            });
        }
        let waited = std::time::Instant::now();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.block_timeout_secs);
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if self.try_reserve(size) {
                break;
            }
            if self.config.when_full == WhenFull::DropNewest {
                self.count_dropped(payloads.len() as u64);
                return Ok(Appended::Dropped);
            }
            if tokio::time::timeout_at(deadline, space).await.is_err() {
                return Err(OutboxError::Full {
                    bytes: self.bytes(),
                    max_bytes: max,
                    waited_secs: waited.elapsed().as_secs(),
                });
            }
        }
        let this = self.clone();
        let written =
            tokio::task::spawn_blocking(move || this.write_reserved(&payloads, size)).await;
        match written {
            Ok(r) => r,
            Err(join) => {
                self.release(size);
                Err(OutboxError::Io {
                    op: "appending to",
                    path: self.dir.clone(),
                    source: std::io::Error::other(join.to_string()),
                })
            }
        }
    }

    fn count_dropped(&self, n: u64) {
        self.metrics.received.inc_by(n);
        self.metrics.dropped(DropReason::OutboxFull, n);
    }

    fn try_reserve(&self, size: u64) -> bool {
        let mut st = lock(&self.state);
        let used = (st.bytes + st.reserved).saturating_sub(st.reclaimable_active());
        if used + size <= self.config.max_bytes {
            st.reserved += size;
            true
        } else {
            false
        }
    }

    fn release(&self, size: u64) {
        let mut st = lock(&self.state);
        st.reserved = st.reserved.saturating_sub(size);
    }

    fn write_reserved(&self, payloads: &[Vec<u8>], size: u64) -> Result<Appended, OutboxError> {
        let result = self.write_locked(payloads);
        self.release(size);
        let appended = result?;
        self.data.notify_waiters();
        self.persist_state();
        Ok(appended)
    }

    fn write_locked(&self, payloads: &[Vec<u8>]) -> Result<Appended, OutboxError> {
        let mut w = lock(&self.writer);
        let first = lock(&self.state).next_seq;
        let rotate = w.file.is_none() || w.len >= self.config.segment_max_bytes || {
            // Over the limit only thanks to a fully settled active segment: reclaim it.
            let st = lock(&self.state);
            st.reclaimable_active() > 0 && st.bytes + st.reserved > self.config.max_bytes
        };
        if rotate {
            self.rotate(&mut w, first)?;
        }
        let now = gpusiem_ingest::source::now_nanos();
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| HEADER_BYTES + p.len()).sum());
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, first + i as u64, now, p);
        }
        let path = self.dir.join(segment_name(w.first_seq));
        let len_before = w.len;
        let file = w.file.as_mut().expect("rotate opened a segment");
        let written = file.write_all(&buf).and_then(|()| {
            if self.config.fsync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut what may have been written and seal the segment; the next append opens a new
            // one. Nothing past `committed` is ever read.
            let _ = file.set_len(len_before);
            w.file = None;
            let mut st = lock(&self.state);
            if let Some(s) = st.segments.get_mut(&w.first_seq) {
                s.sealed = true;
            }
            st.active = None;
            return Err(io_err("appending to", &path)(e));
        }
        w.len += buf.len() as u64;
        let n = payloads.len() as u64;
        let mut st = lock(&self.state);
        st.next_seq = first + n;
        st.bytes += buf.len() as u64;
        st.queued += n;
        if let Some(s) = st.segments.get_mut(&w.first_seq) {
            s.committed = w.len;
            s.last_seq = Some(first + n - 1);
        }
        self.metrics.received.inc_by(n);
        self.metrics.queued.set(st.queued as i64);
        self.metrics.outbox_bytes.set(st.bytes as i64);
        self.queued.send_replace(st.queued);
        Ok(Appended::Stored { first, count: n })
    }

    /// Seals the active segment (deleting it when fully settled) and opens a new one.
    fn rotate(&self, w: &mut Writer, first: u64) -> Result<(), OutboxError> {
        w.file = None;
        {
            let mut st = lock(&self.state);
            if let Some(a) = st.active.take()
                && let Some(s) = st.segments.get_mut(&a)
            {
                s.sealed = true;
            }
        }
        self.delete_settled_segments();
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        let len = file.metadata().map_err(io_err("reading", &path))?.len();
        if self.config.fsync {
            // The new directory entry must survive a crash too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing", &self.dir))?;
        }
        *w = Writer {
            file: Some(file),
            first_seq: first,
            len,
        };
        let mut st = lock(&self.state);
        st.bytes += len;
        st.segments.insert(
            first,
            Segment {
                path,
                committed: len,
                last_seq: None,
                sealed: false,
            },
        );
        st.active = Some(first);
        Ok(())
    }

    fn delete_settled_segments(&self) {
        let removed: Vec<Segment> = {
            let mut st = lock(&self.state);
            let acked = st.acked;
            let gone: Vec<u64> = st
                .segments
                .iter()
                .filter(|(_, s)| s.sealed && s.last_seq.is_none_or(|l| l < acked))
                .map(|(f, _)| *f)
                .collect();
            let removed: Vec<Segment> = gone.iter().filter_map(|f| st.segments.remove(f)).collect();
            for s in &removed {
                st.bytes -= s.committed;
            }
            self.metrics.outbox_bytes.set(st.bytes as i64);
            removed
        };
        if removed.is_empty() {
            return;
        }
        for s in &removed {
            if let Err(e) = fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), error = %e, "cannot delete a settled outbox segment");
            }
        }
        self.space.notify_waiters();
    }

    /// A future that completes when records are appended after it was enabled (use with
    /// [`Outbox::read_now`]: enable, read, then wait if nothing was there).
    pub fn data_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.data.notified()
    }

    /// Reads up to `max_items` records (about `max_bytes`) that are available now, oldest
    /// first; empty when there are none. Records handed out are not read again by this process
    /// unless [`Outbox::rewind`] is called; they stay on disk until acknowledged.
    pub async fn read_now(
        self: &Arc<Self>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, OutboxError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read(max_items, max_bytes.max(1)))
            .await
            .map_err(|e| OutboxError::Io {
                op: "reading",
                path: self.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Waits until records are available (or `cancel` fires), then returns up to `max_items`
    /// records of at most about `max_bytes` bytes, oldest first. With `linger`, waits that long
    /// for a batch to fill once the first record is there. Not cancel-safe: records read and
    /// then dropped are only read again after a restart (or [`Outbox::rewind`]).
    pub async fn next_batch(
        self: &Arc<Self>,
        max_items: usize,
        max_bytes: usize,
        linger: Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<Record>, OutboxError> {
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            let data = self.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            let more = self
                .read_now(max_items - out.len(), max_bytes.saturating_sub(bytes))
                .await?;
            bytes += more.iter().map(|r| r.payload.len()).sum::<usize>();
            out.extend(more);
            if out.len() >= max_items || bytes >= max_bytes || (!out.is_empty() && linger.is_zero())
            {
                return Ok(out);
            }
            if !out.is_empty() && linger_until.is_none() {
                linger_until = Some(tokio::time::Instant::now() + linger);
            }
            match linger_until {
                Some(until) => {
                    tokio::select! {
                        _ = data => {}
                        () = tokio::time::sleep_until(until) => return Ok(out),
                        () = cancel.cancelled() => return Ok(out),
                    }
                }
                None => {
                    tokio::select! {
                        _ = data => {}
                        () = cancel.cancelled() => return Ok(out),
                    }
                }
            }
        }
    }

    /// Reads committed, unsettled records after the reader's position (blocking).
    fn read(&self, max_items: usize, max_bytes: usize) -> Result<Vec<Record>, OutboxError> {
        let mut r = lock(&self.reader);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_items && bytes < max_bytes {
            // Where to read: the current segment, or the next one once it is exhausted.
            let (first, committed, sealed, path) = {
                let st = lock(&self.state);
                let seg = match r.segment {
                    Some(f) if st.segments.contains_key(&f) => Some(f),
                    Some(f) => st
                        .segments
                        .range((Bound::Excluded(f), Bound::Unbounded))
                        .next()
                        .map(|(k, _)| *k),
                    None => st.segments.keys().next().copied(),
                };
                let Some(f) = seg else { break };
                let s = &st.segments[&f];
                (f, s.committed, s.sealed, s.path.clone())
            };
            if r.segment != Some(first) {
                r.segment = Some(first);
                r.file = None;
                r.offset = 0;
            }
            if r.offset >= committed {
                if sealed {
                    let next = lock(&self.state)
                        .segments
                        .range((Bound::Excluded(first), Bound::Unbounded))
                        .next()
                        .map(|(k, _)| *k);
                    match next {
                        Some(n) => {
                            r.segment = Some(n);
                            r.file = None;
                            r.offset = 0;
                            continue;
                        }
                        None => break,
                    }
                }
                break;
            }
            if r.file.is_none() {
                r.file = Some(File::open(&path).map_err(io_err("opening", &path))?);
            }
            // Read a window of the committed bytes and parse what it holds.
            let window =
                ((max_bytes - bytes).max(64 << 10) as u64).saturating_add(HEADER_BYTES as u64);
            let offset = r.offset;
            let mut buf = read_at(
                r.file.as_mut().expect("opened above"),
                &path,
                offset,
                (committed - offset).min(window),
            )?;
            let mut pos = 0usize;
            while pos < buf.len() && out.len() < max_items && bytes < max_bytes {
                let at_end = offset + buf.len() as u64 >= committed;
                match parse_record(&buf[pos..], first) {
                    Ok(Some((rec, size))) => {
                        pos += size;
                        if rec.seq < r.next_seq {
                            continue;
                        }
                        let lost = self.note_read(r.next_seq, rec.seq);
                        if lost > 0 {
                            tracing::error!(dir = %self.dir.display(), lost, "outbox records lost to corruption while reading");
                        }
                        r.next_seq = rec.seq + 1;
                        if lock(&self.state).is_settled(rec.seq) {
                            continue;
                        }
                        bytes += rec.payload.len();
                        out.push(rec);
                    }
                    Ok(None) if at_end => {
                        // A truncated tail (only in a segment recovered at start): skip it.
                        pos = buf.len();
                    }
                    Ok(None) if pos == 0 => {
                        // One record larger than the window: read exactly it.
                        let need = (HEADER_BYTES + le_u32(&buf[0..4]) as usize) as u64;
                        if offset + need > committed {
                            pos = 1;
                            continue;
                        }
                        buf = read_at(r.file.as_mut().expect("opened above"), &path, offset, need)?;
                    }
                    Ok(None) => break,
                    Err(()) => match resync(&buf[pos..], first) {
                        Some(skip) => pos += skip,
                        None if at_end => pos = buf.len(),
                        None => {
                            // The next valid record may start in the last bytes of the window.
                            pos = buf.len().saturating_sub(HEADER_BYTES - 1).max(pos + 1);
                            break;
                        }
                    },
                }
            }
            let progressed = pos > 0;
            r.offset = offset + pos as u64;
            if !progressed {
                break;
            }
        }
        Ok(out)
    }

    /// The reader moved from `expected` to `seq`: sequence numbers in between that were never
    /// settled were lost (corruption found while running). Returns how many.
    fn note_read(&self, expected: u64, seq: u64) -> u64 {
        if seq <= expected {
            return 0;
        }
        let mut st = lock(&self.state);
        let lost = (expected..seq).filter(|&s| !st.is_settled(s)).count() as u64;
        if lost > 0 {
            st.settle_range(expected, seq);
            st.queued = st.queued.saturating_sub(lost);
            self.metrics.dropped(DropReason::Corrupt, lost);
            self.metrics.queued.set(st.queued as i64);
            self.queued.send_replace(st.queued);
        }
        lost
    }

    /// Settles records (delivered, dead-lettered or dropped: the caller counts which). Deletes
    /// segments that are fully settled and records the new position.
    pub fn ack(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        {
            let mut st = lock(&self.state);
            let mut n = 0;
            for &s in seqs {
                if !st.is_settled(s) && s < st.next_seq {
                    st.settle(s);
                    n += 1;
                }
            }
            st.queued = st.queued.saturating_sub(n);
            self.metrics.queued.set(st.queued as i64);
            self.queued.send_replace(st.queued);
        }
        self.delete_settled_segments();
        self.persist_state();
        self.space.notify_waiters();
    }

    /// Rewinds the reader to the oldest unsettled record, so that records handed out and not
    /// settled (a worker stopped mid-batch) are read again.
    pub fn rewind(&self) {
        let mut r = lock(&self.reader);
        let acked = lock(&self.state).acked;
        *r = Reader {
            next_seq: acked,
            ..Reader::default()
        };
    }

    fn persist_state(&self) {
        let _guard = lock(&self.persist);
        let snapshot = {
            let st = lock(&self.state);
            PersistedState {
                acked: st.acked,
                done: st.done.0.iter().map(|(s, e)| (*s, *e)).collect(),
                next_seq: st.next_seq,
            }
        };
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join("state.json.tmp");
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
            fs::write(&tmp, bytes)?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            // Only redelivery follows from a stale state file, and receivers de-duplicate.
            tracing::warn!(path = %path.display(), error = %e, "cannot record the outbox position");
        }
    }
}

fn state_shell(s: &State) -> State {
    State {
        next_seq: s.next_seq,
        segments: BTreeMap::new(),
        bytes: 0,
        reserved: 0,
        acked: s.acked,
        done: Ranges::default(),
        queued: 0,
        active: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::metrics::DeliveryMetrics;

    fn config() -> BufferConfig {
        BufferConfig {
            max_bytes: 1 << 20,
            segment_max_bytes: 4096,
            ..BufferConfig::default()
        }
    }

    fn payloads(range: std::ops::Range<u32>) -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            range
                .map(|i| format!("{{\"n\":{i}}}").into_bytes())
                .collect(),
        )
    }

    async fn read_all(o: &Arc<Outbox>) -> Vec<Record> {
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        o.next_batch(100_000, usize::MAX, Duration::ZERO, &cancel)
            .await
            .expect("read")
    }

    fn open(dir: &Path, m: &DeliveryMetrics) -> (Arc<Outbox>, Recovery) {
        Outbox::open(dir, config(), m.target("t")).expect("open")
    }

    #[test]
    fn ranges_merge_and_advance() {
        let mut r = Ranges::default();
        r.insert(5, 6);
        r.insert(7, 8);
        r.insert(6, 7);
        assert_eq!(r.0.len(), 1);
        assert!(r.contains(5) && r.contains(7) && !r.contains(8));
        r.insert(1, 3);
        r.insert(2, 10);
        assert_eq!(r.0.iter().collect::<Vec<_>>(), vec![(&1, &10)]);
    }

    #[tokio::test]
    async fn append_read_ack_and_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = DeliveryMetrics::default();
        let (o, rec) = open(dir.path(), &m);
        assert_eq!(rec, Recovery::default());
        assert_eq!(
            o.append(payloads(0..300)).await.expect("append"),
            Appended::Stored {
                first: 0,
                count: 300
            }
        );
        let got = read_all(&o).await;
        assert_eq!(got.len(), 300);
        assert_eq!(got[7].payload, b"{\"n\":7}");
        // Settle out of order: 0..100 and 150..300; 100..150 stay.
        let settled: Vec<u64> = (0..100).chain(150..300).collect();
        o.ack(&settled);
        assert_eq!(o.queued(), 50);
        drop(o);
        let m2 = DeliveryMetrics::default();
        let (o, rec) = open(dir.path(), &m2);
        assert_eq!(rec.pending, 50);
        assert_eq!(rec.lost, 0);
        let got = read_all(&o).await;
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (100..150).collect::<Vec<_>>()
        );
        assert_eq!(
            o.append(payloads(0..1)).await.expect("append"),
            Appended::Stored {
                first: 300,
                count: 1
            }
        );
        o.ack(&(100..150).collect::<Vec<_>>());
        o.ack(&[300]);
        assert_eq!(o.queued(), 0);
        let a = m2.accounting("t");
        assert_eq!((a.received, a.queued), (51, 0), "{a:?}");
        // Everything settled: only the active segment is left.
        let segs = fs::read_dir(dir.path())
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
            })
            .count();
        assert!(segs <= 1, "{segs} segments left");
    }

    #[tokio::test]
    async fn flipped_byte_loses_one_record_and_the_rest_is_recovered() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = DeliveryMetrics::default();
        let (o, _) = open(dir.path(), &m);
        o.append(payloads(0..10)).await.expect("append");
        drop(o);
        let seg = dir.path().join(segment_name(0));
        let mut bytes = fs::read(&seg).expect("read");
        let rec_size = HEADER_BYTES + b"{\"n\":0}".len();
        bytes[3 * rec_size + HEADER_BYTES + 2] ^= 0xff; // payload byte of record 3
        fs::write(&seg, &bytes).expect("write");
        let m = DeliveryMetrics::default();
        let (o, rec) = open(dir.path(), &m);
        assert_eq!((rec.pending, rec.lost), (9, 1));
        let got: Vec<u64> = read_all(&o).await.iter().map(|r| r.seq).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(m.accounting("t").dropped, 1);
        assert!(m.accounting("t").balanced());
    }

    #[tokio::test]
    async fn truncated_tail_and_missing_segment_are_counted() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = DeliveryMetrics::default();
        let cfg = BufferConfig {
            segment_max_bytes: 1000,
            ..config()
        };
        let (o, _) = Outbox::open(dir.path(), cfg.clone(), m.target("t")).expect("open");
        // Three appends, each in its own segment.
        for k in 0..3 {
            o.append(payloads(k * 100..k * 100 + 100))
                .await
                .expect("append");
        }
        drop(o);
        let mut segs: Vec<PathBuf> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3, "{segs:?}");
        // Cut the last segment in the middle of a record and delete the first one.
        let last = segs.last().expect("segments").clone();
        let len = fs::metadata(&last).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&last).expect("open");
        f.set_len(len - 5).expect("truncate");
        fs::remove_file(&segs[0]).expect("rm");
        let m = DeliveryMetrics::default();
        let (o, rec) = Outbox::open(dir.path(), cfg, m.target("t")).expect("open");
        let got = read_all(&o).await;
        assert_eq!(rec.pending as usize, got.len());
        assert_eq!(rec.lost, 101, "{rec:?}");
        assert_eq!(rec.pending + rec.lost, 300, "{rec:?}");
        assert_eq!(got.last().map(|r| r.seq), Some(298));
        assert!(m.accounting("t").balanced());
        // New appends continue after the lost range.
        assert_eq!(
            o.append(payloads(0..1)).await.expect("append"),
            Appended::Stored {
                first: 300,
                count: 1
            }
        );
    }

    #[tokio::test]
    async fn garbage_and_zero_filled_segments_never_panic() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(dir.path().join(segment_name(0)), vec![0u8; 5000]).expect("write");
        fs::write(
            dir.path().join(segment_name(50)),
            (0..9000u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<_>>(),
        )
        .expect("write");
        fs::write(dir.path().join(STATE_FILE), b"{not json").expect("write");
        let m = DeliveryMetrics::default();
        let (o, rec) = open(dir.path(), &m);
        assert_eq!(rec.pending, 0);
        assert!(read_all(&o).await.is_empty());
        assert_eq!(
            o.append(payloads(0..2)).await.expect("append"),
            Appended::Stored { first: 0, count: 2 }
        );
        assert_eq!(read_all(&o).await.len(), 2);
    }

    #[tokio::test]
    async fn full_outbox_blocks_then_fails_or_drops() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = DeliveryMetrics::default();
        let cfg = BufferConfig {
            max_bytes: 2000,
            segment_max_bytes: 1000,
            block_timeout_secs: 0,
            ..BufferConfig::default()
        };
        let (o, _) = Outbox::open(dir.path(), cfg.clone(), m.target("t")).expect("open");
        o.append(payloads(0..40)).await.expect("fits");
        let err = o.append(payloads(0..40)).await.expect_err("full");
        assert!(matches!(err, OutboxError::Full { .. }), "{err}");
        // Settling frees the space.
        o.ack(&(0..40).collect::<Vec<_>>());
        o.append(payloads(0..40)).await.expect("fits again");
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = BufferConfig {
            when_full: WhenFull::DropNewest,
            ..cfg
        };
        let (o, _) = Outbox::open(dir.path(), cfg, m.target("d")).expect("open");
        o.append(payloads(0..40)).await.expect("fits");
        assert_eq!(
            o.append(payloads(0..40)).await.expect("drop"),
            Appended::Dropped
        );
        let a = m.accounting("d");
        assert_eq!((a.received, a.queued, a.dropped), (80, 40, 40));
    }
}
