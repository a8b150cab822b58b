//! File source: tails a file of one stream (Falco `file_output`, the audit log backend's JSON
//! lines, or Prometheus text dumps), with a checkpoint.
//!
//! The file is read in chunks of whole lines. A chunk is decoded, sent, and the checkpoint
//! (device, inode, byte offset, line number) is advanced — written to a temporary file, synced
//! and renamed — only after the pipeline acknowledged the chunk as delivered. After a crash the
//! source resumes at the checkpoint, so every line is delivered at least once. One chunk is in
//! flight at a time, which keeps the checkpoint a simple contiguous offset.
//!
//! Rotation: when the path names a new file (another inode) the old file is read to its end
//! first and the new one from its start; a file that shrank (truncated in place) is read again
//! from its start. A line longer than `max_record_bytes` is skipped and quarantined as
//! `too_large` without being held in memory.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::decode::{self, Location, Quarantined, Reason};
use crate::schema::Stream;
use crate::source::{BoxFuture, Source, SourceContext, now_nanos};
use crate::{Ack, Batch, Delivery, Error, Result};

/// Where to start a file that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Read the file from its first byte.
    #[default]
    Beginning,
    /// Only read what is appended from now on.
    End,
}

/// File source settings.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// The file to tail.
    pub path: PathBuf,
    /// Stream (decoder) of the file's contents.
    pub stream: Stream,
    /// Directory holding checkpoints.
    pub checkpoint_dir: PathBuf,
    /// How often to look for new data at end of file.
    pub poll_interval: Duration,
    /// Largest chunk read and sent at once.
    pub max_chunk_bytes: usize,
    /// Where to start without a checkpoint.
    pub start_at: StartAt,
}

impl FileSourceConfig {
    /// Defaults for `path` of `stream`, checkpoints under `checkpoint_dir`.
    pub fn new(path: PathBuf, stream: Stream, checkpoint_dir: PathBuf) -> Self {
        FileSourceConfig {
            path,
            stream,
            checkpoint_dir,
            poll_interval: Duration::from_millis(250),
            max_chunk_bytes: 4 << 20,
            start_at: StartAt::Beginning,
        }
    }
}

/// Where a file source has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Bytes delivered.
    pub offset: u64,
    /// Lines delivered (the next line's number is `line + 1`).
    pub line: u64,
}

/// The file source.
pub struct FileSource {
    config: FileSourceConfig,
}

impl FileSource {
    /// A source for `config.path`.
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource { config }
    }

    /// The checkpoint file of `path` under `dir`.
    pub fn checkpoint_path(dir: &Path, path: &Path) -> PathBuf {
        let key = format!(
            "{:016x}",
            twox_hash::XxHash3_128::oneshot(path.as_os_str().as_encoded_bytes()) as u64
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dir.join(format!("{name}.{key}.checkpoint.json"))
    }

    /// Reads the checkpoint of `path`, if any.
    pub fn load_checkpoint(dir: &Path, path: &Path) -> Option<Checkpoint> {
        let text = std::fs::read(Self::checkpoint_path(dir, path)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

impl Source for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<()>> {
        Box::pin(async move { Tail::new(self.config, cx)?.run().await })
    }
}

struct Tail {
    config: FileSourceConfig,
    cx: SourceContext,
    checkpoint_path: PathBuf,
    file: Option<std::fs::File>,
    pos: Checkpoint,
    /// Bytes of an over-long line still to skip.
    skipping: Option<SkipLine>,
    origin: Arc<str>,
}

struct SkipLine {
    line: u64,
    len: usize,
    head: Vec<u8>,
}

impl Tail {
    fn new(config: FileSourceConfig, cx: SourceContext) -> Result<Self> {
        std::fs::create_dir_all(&config.checkpoint_dir).map_err(|source| Error::File {
            op: "creating",
            path: config.checkpoint_dir.clone(),
            source,
        })?;
        let checkpoint_path = FileSource::checkpoint_path(&config.checkpoint_dir, &config.path);
        let origin = Arc::from(format!("file:{}", config.path.display()));
        let pos = FileSource::load_checkpoint(&config.checkpoint_dir, &config.path).unwrap_or(
            Checkpoint {
                dev: 0,
                ino: 0,
                offset: 0,
                line: 0,
            },
        );
        Ok(Tail {
            config,
            cx,
            checkpoint_path,
            file: None,
            pos,
            skipping: None,
            origin,
        })
    }

    async fn run(mut self) -> Result<()> {
        loop {
            if self.cx.shutdown.is_cancelled() {
                return Ok(());
            }
            match self.step()? {
                Step::Chunk(chunk, lines) => self.deliver(chunk, lines).await?,
                Step::Idle => {
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        () = self.cx.shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Opens or re-opens the file as needed and reads the next chunk of whole lines.
    fn step(&mut self) -> Result<Step> {
        if self.file.is_none() && !self.open()? {
            return Ok(Step::Idle);
        }
        let chunk = self.read_chunk()?;
        if !chunk.is_empty() {
            let lines = memchr::memchr_iter(b'\n', &chunk).count() as u64;
            return Ok(Step::Chunk(chunk, lines));
        }
        // At the end: has the path been rotated or truncated?
        let Ok(meta) = std::fs::metadata(&self.config.path) else {
            return Ok(Step::Idle);
        };
        if meta.ino() != self.pos.ino || meta.dev() != self.pos.dev {
            self.file = None;
            self.pos = Checkpoint {
                dev: meta.dev(),
                ino: meta.ino(),
                offset: 0,
                line: 0,
            };
        } else if meta.len() < self.pos.offset {
            tracing::warn!(path = %self.config.path.display(), "file truncated; reading it again from the start");
            self.file = None;
            self.pos.offset = 0;
            self.pos.line = 0;
        }
        Ok(Step::Idle)
    }

    fn open(&mut self) -> Result<bool> {
        let path = &self.config.path;
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(Error::File {
                    op: "opening",
                    path: path.clone(),
                    source,
                });
            }
        };
        let meta = file.metadata().map_err(|source| Error::File {
            op: "reading metadata of",
            path: path.clone(),
            source,
        })?;
        let same = meta.ino() == self.pos.ino
            && meta.dev() == self.pos.dev
            && meta.len() >= self.pos.offset;
        if !same {
            let first_open = self.pos.ino == 0;
            let offset = if first_open && self.config.start_at == StartAt::End {
                meta.len()
            } else {
                0
            };
            self.pos = Checkpoint {
                dev: meta.dev(),
                ino: meta.ino(),
                offset,
                line: 0,
            };
        }
        file.seek(SeekFrom::Start(self.pos.offset))
            .map_err(|source| Error::File {
                op: "seeking",
                path: path.clone(),
                source,
            })?;
        self.file = Some(file);
        Ok(true)
    }

    /// Reads up to `max_chunk_bytes` ending at a newline; leaves a trailing partial line unread.
    fn read_chunk(&mut self) -> Result<Vec<u8>> {
        let path = self.config.path.clone();
        let io = |op, source| Error::File {
            op,
            path: path.clone(),
            source,
        };
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        loop {
            let mut buf = vec![0u8; self.config.max_chunk_bytes];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file
                    .read(&mut buf[filled..])
                    .map_err(|e| io("reading", e))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let complete = memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1);
            if complete == 0 && filled == self.config.max_chunk_bytes {
                // No newline in a whole chunk: the line is too long to hold. Skip to its end;
                // the chunk that ends it carries its quarantine record.
                let line = self.pos.line + 1;
                let head = buf[..decode::QUARANTINE_RAW_BYTES.min(filled)].to_vec();
                self.skipping
                    .get_or_insert(SkipLine { line, len: 0, head })
                    .len += filled;
                self.pos.offset += filled as u64;
                continue;
            }
            let unread = (filled - complete) as i64;
            if unread > 0 {
                file.seek(SeekFrom::Current(-unread))
                    .map_err(|e| io("seeking", e))?;
            }
            buf.truncate(complete);
            return Ok(buf);
        }
    }

    async fn deliver(&mut self, chunk: Vec<u8>, lines: u64) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            let mut cx = self.cx.decode_context(now_nanos());
            cx.first_line = self.pos.line + 1;
            let mut input = &chunk[..];
            let mut quarantined = Vec::new();
            if let Some(skip) = &self.skipping {
                // The rest of an over-long line is the start of this chunk.
                let end = memchr::memchr(b'\n', input).map_or(input.len(), |i| i + 1);
                let len = skip.len + end;
                let detail = format!(
                    "line of {len} bytes exceeds the limit of {} bytes",
                    self.config.max_chunk_bytes
                );
                let mut q = Quarantined::new(
                    self.config.stream,
                    Location::Line(skip.line),
                    Reason::TooLarge,
                    detail,
                    &skip.head,
                );
                q.raw_len = len;
                quarantined.push(q);
                cx.first_line = skip.line + 1;
                input = &input[end..];
            }
            let decoded = decode::decode(self.config.stream, input, &cx)?;
            quarantined.extend(decoded.quarantined);
            self.cx.metrics.record_rows(
                self.config.stream,
                "file",
                decoded.batch.num_rows(),
                chunk.len(),
            );
            let (ack, done) = Ack::channel();
            let batch = Batch {
                stream: self.config.stream,
                records: decoded.batch,
                quarantined,
                origin: self.origin.clone(),
                ack,
            };
            tokio::select! {
                sent = self.cx.out.send(batch) => if sent.is_err() { return Err(Error::PipelineClosed) },
                () = self.cx.shutdown.cancelled() => return Ok(()),
            }
            if done.await == Ok(Delivery::Delivered) {
                self.skipping = None;
                self.pos.offset += chunk.len() as u64;
                self.pos.line += lines;
                return self.save_checkpoint();
            }
            if self.cx.shutdown.is_cancelled() {
                return Ok(());
            }
            attempt += 1;
            let backoff = Duration::from_millis(100 * u64::from(attempt.min(50)));
            tracing::warn!(path = %self.config.path.display(), attempt, "chunk not written; retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    fn save_checkpoint(&self) -> Result<()> {
        let tmp = self.checkpoint_path.with_extension("tmp");
        let io = |op, source| Error::File {
            op,
            path: self.checkpoint_path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&self.pos).expect("serialising to memory cannot fail");
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating checkpoint", e))?;
            std::io::Write::write_all(&mut f, &bytes).map_err(|e| io("writing checkpoint", e))?;
            f.sync_all().map_err(|e| io("syncing checkpoint", e))?;
        }
        std::fs::rename(&tmp, &self.checkpoint_path).map_err(|e| io("renaming checkpoint", e))?;
        if let Some(dir) = self.checkpoint_path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing checkpoint directory", e))?;
        }
        Ok(())
    }
}

enum Step {
    Chunk(Vec<u8>, u64),
    Idle,
}
