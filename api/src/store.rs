//! Parquet storage of every stream, the findings and the API audit trail, with a write-ahead
//! log so that what the pipeline acknowledges survives a crash, and an in-memory tail so that
//! rows are queryable the moment they are appended.
//!
//! ```text
//!  append(batch) ─► WAL frame + fdatasync ─► tail (memory) ──────────────┐
//!   (returns: durable)     wal/<table>/<seq>.wal                         ├─► snapshot ─► query
//!  flusher (every flush_interval_secs, or tail ≥ flush_max_rows/bytes):  │
//!   rotate WAL ─► sort by ts, split by hour ─► Parquet (temp, fsync, rename, fsync dir)
//!   ─► commit tables/<table>/_manifest.json (wal_through = last covered segment) ─► drop
//!   those rows from the tail ─► delete covered WAL segments ──────────────┘
//!  maintenance (every compaction_interval_secs): compaction of small files, retention.
//! ```
//!
//! # On disk
//!
//! ```text
//!  data_dir/store.lock                                    one writer per data directory
//!  data_dir/wal/<table>/<seq:020>.wal                     CRC-framed Arrow IPC batches
//!  data_dir/tables/<table>/_manifest.json                 visible files + wal_through (commit point)
//!  data_dir/tables/<table>/dt=YYYY-MM-DD/hour=HH/part-<n>-<rand>.parquet
//! ```
//!
//! # Durability and fsync policy
//!
//! Strict, SQLite-style: every [`Store::append`] writes one WAL frame and `fdatasync`s it before
//! returning, so an acknowledged batch is on disk (research §1.10 rule 1). The cost is one
//! fsync per batch (the pipeline hands over whole batches — an HTTP request, a scrape, a Kafka
//! poll — not single rows); `gpusiem bench query` prints the measured append latency.
//! Parquet files become visible atomically (rule 2): written under a `.…tmp` name, fsynced,
//! renamed, and the directory fsynced; they count only once the manifest lists them, and the
//! manifest is itself replaced atomically.
//!
//! # Recovery
//!
//! [`Store::open`] takes the `store.lock` (a second writer fails), then per table: deletes
//! temporary files and Parquet files the manifest does not list (a crash between rename and
//! commit: their rows are still in the WAL), deletes WAL segments up to `wal_through` (a crash
//! between commit and WAL deletion: their rows are in Parquet), and replays the later segments
//! into the tail. A damaged segment (torn last frame, bad CRC, zero length) yields its valid
//! prefix; what was skipped is logged and counted in [`StoreStats`]. Appends then go to a new
//! segment. [`Store::open_read_only`] (`gpusiem query`) reads the same state without changing
//! anything, so it may run beside the service.
//!
//! # Compaction and retention
//!
//! Each flush writes one file per hour it touched. Compaction merges an hour's small files
//! (below `compaction_small_file_bytes`) once there are `compaction_min_files` of them, or any
//! two once the hour has been closed for `compaction_closed_after_secs`. Every file keeps its
//! rows ordered by namespace, pod, GPU and then `ts`, so an entity's rows of an hour lie
//! together. Retention drops whole hour partitions older than `retention_hours`, then
//! the oldest hours (across tables) while the total exceeds `max_bytes`. Replaced and dropped
//! files leave the manifest at once and the disk after `delete_grace_secs`, so a running query
//! never loses a file under it.
//!
//! # Tables
//!
//! The three streams and `findings` exist from the start; other tables (`api_audit`) are
//! registered with [`Store::register_table`] / [`Store::register_admin_table`]. Every table has
//! a nanosecond `ts` column (the partition key). Findings are stored one row per emission of
//! an episode (`id`, `revision`, `status` …); the query engine's `findings_latest` view keeps
//! the latest revision of each id.

mod fs;
pub(crate) mod keyindex;
mod manifest;
mod partition;
mod table;
mod wal;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use gpusiem_detect::Finding;
use gpusiem_ingest::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Problems;

pub use manifest::FileEntry;
pub use table::{TableSnapshot, TableStats};

use partition::WriteOptions;
use table::{Mode, Table};

/// Name of the findings table.
pub const FINDINGS: &str = "findings";

/// `[store]`: flushing, compaction, retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Seconds between flushes of the in-memory tail to Parquet. Rows are durable (WAL) and
    /// queryable (tail) before that; this only bounds WAL size and replay time.
    pub flush_interval_secs: u64,
    /// Flush a table early once its tail holds this many rows.
    pub flush_max_rows: usize,
    /// Flush a table early once its tail holds this many bytes (in memory).
    pub flush_max_bytes: usize,
    /// Refuse appends (the source retries) while a table's tail holds more than this many
    /// bytes: flushing is failing or behind, and memory must stay bounded.
    pub max_tail_bytes: usize,
    /// Drop hour partitions older than this many hours (0: keep by age forever).
    pub retention_hours: u64,
    /// Drop the oldest hour partitions while all tables together exceed this many bytes on
    /// disk (0: no size limit).
    pub max_bytes: u64,
    /// Seconds between compaction and retention passes.
    pub compaction_interval_secs: u64,
    /// Files smaller than this are merged by compaction.
    pub compaction_small_file_bytes: u64,
    /// Merge an hour's small files once there are this many of them.
    pub compaction_min_files: usize,
    /// Merge any two small files of an hour once it ended this many seconds ago.
    pub compaction_closed_after_secs: u64,
    /// Largest input of one merge, bytes on disk (bounds compaction memory).
    pub compaction_max_input_bytes: u64,
    /// Seconds a replaced or expired file stays on disk for queries still reading it.
    pub delete_grace_secs: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of Parquet files (1–22).
    pub zstd_level: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush_interval_secs: 10,
            flush_max_rows: 200_000,
            flush_max_bytes: 64 << 20,
            max_tail_bytes: 512 << 20,
            retention_hours: 24 * 30,
            max_bytes: 50 << 30,
            compaction_interval_secs: 60,
            compaction_small_file_bytes: 32 << 20,
            compaction_min_files: 12,
            compaction_closed_after_secs: 600,
            compaction_max_input_bytes: 256 << 20,
            delete_grace_secs: 120,
            row_group_rows: 128 * 1024,
            zstd_level: 1,
        }
    }
}

impl StoreConfig {
    /// Validates the settings.
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let positive = [
            ("flush_interval_secs", self.flush_interval_secs as u128),
            ("flush_max_rows", self.flush_max_rows as u128),
            ("flush_max_bytes", self.flush_max_bytes as u128),
            (
                "compaction_interval_secs",
                self.compaction_interval_secs as u128,
            ),
            (
                "compaction_small_file_bytes",
                self.compaction_small_file_bytes as u128,
            ),
            (
                "compaction_max_input_bytes",
                self.compaction_max_input_bytes as u128,
            ),
            ("row_group_rows", self.row_group_rows as u128),
        ];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("{path}.{name}"), "must be positive");
            }
        }
        if self.max_tail_bytes < self.flush_max_bytes {
            p.push(
                format!("{path}.max_tail_bytes"),
                "must be at least flush_max_bytes",
            );
        }
        if self.compaction_min_files < 2 {
            p.push(format!("{path}.compaction_min_files"), "must be at least 2");
        }
        if !(1..=22).contains(&self.zstd_level) {
            p.push(format!("{path}.zstd_level"), "must be between 1 and 22");
        }
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            zstd_level: self.zstd_level,
            row_group_rows: self.row_group_rows,
        }
    }
}

/// Who may see a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableAccess {
    /// Has a `namespace` column: namespace-scoped principals see their namespaces' rows.
    Namespaced,
    /// No `namespace` column: only principals scoped to every namespace see it.
    Unscoped,
    /// Only admin queries see it (`api_audit`).
    Admin,
}

/// A registered table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// SQL name.
    pub name: String,
    /// Schema.
    pub schema: SchemaRef,
    /// Visibility.
    pub access: TableAccess,
}

/// Counters of the store since it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Rows recovered from the WAL on open.
    pub recovered_rows: u64,
    /// WAL bytes skipped on open because they were torn or corrupt.
    pub wal_skipped_bytes: u64,
    /// WAL segments found damaged on open.
    pub wal_damaged_segments: u64,
    /// Uncommitted Parquet files and temporary files removed on open.
    pub orphans_removed: u64,
    /// Rows flushed to Parquet.
    pub flushed_rows: u64,
    /// Failed flushes.
    pub flush_failures: u64,
    /// Files replaced by compaction.
    pub compacted_files: u64,
    /// Files dropped by retention.
    pub expired_files: u64,
    /// Appends refused or failed.
    pub append_failures: u64,
}

#[derive(Default)]
struct Counters {
    recovered_rows: AtomicU64,
    wal_skipped_bytes: AtomicU64,
    wal_damaged_segments: AtomicU64,
    orphans_removed: AtomicU64,
    flushed_rows: AtomicU64,
    flush_failures: AtomicU64,
    compacted_files: AtomicU64,
    expired_files: AtomicU64,
    append_failures: AtomicU64,
}

struct Inner {
    root: PathBuf,
    config: StoreConfig,
    mode: Mode,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    pending_deletes: Mutex<Vec<(PathBuf, Instant)>>,
    flush_wanted: Notify,
    closed: AtomicBool,
    counters: Counters,
    /// Held for the life of a writing store: the OS releases it when the process dies.
    _lock: Option<File>,
}

/// The store: see the module documentation.
pub struct Store {
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

/// Rearranges a batch into `schema` (columns by name, casts, nulls for missing nullable
/// columns), sharing its buffers.
pub(crate) fn arrange_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, String> {
    table::arrange(batch, schema)
}

fn store_err(op: &'static str, reason: impl Into<String>) -> crate::Error {
    crate::Error::Store {
        op,
        reason: reason.into(),
    }
}

fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Whether a schema has the `namespace` column scoping needs.
fn has_namespace(schema: &SchemaRef) -> bool {
    schema
        .column_with_name(gpusiem_ingest::schema::NAMESPACE)
        .is_some()
}

fn builtin_tables() -> Vec<(&'static str, SchemaRef)> {
    let mut v: Vec<(&'static str, SchemaRef)> =
        Stream::ALL.iter().map(|s| (s.name(), s.schema())).collect();
    v.push((FINDINGS, gpusiem_detect::finding::schema()));
    v
}

impl Store {
    /// Opens (creating, recovering) the store under `data_dir` for writing; starts the flusher
    /// and maintenance task. Fails if another process writes to the same directory.
    pub async fn open(data_dir: &Path, config: &StoreConfig) -> crate::Result<Arc<Store>> {
        let data_dir = data_dir.to_path_buf();
        let config = config.clone();
        let inner = tokio::task::spawn_blocking(move || open_inner(&data_dir, config, Mode::Write))
            .await
            .map_err(|e| store_err("open", e.to_string()))??;
        let inner = Arc::new(inner);
        let stop = CancellationToken::new();
        let task = tokio::spawn(background(inner.clone(), stop.clone()));
        Ok(Arc::new(Store {
            inner,
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Opens the store read-only (`gpusiem query`): committed files plus the WAL, every table
    /// found on disk, nothing changed, no lock taken (the service may be running).
    pub async fn open_read_only(data_dir: &Path) -> crate::Result<Arc<Store>> {
        let data_dir = data_dir.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || {
            open_inner(&data_dir, StoreConfig::default(), Mode::ReadOnly)
        })
        .await
        .map_err(|e| store_err("open", e.to_string()))??;
        Ok(Arc::new(Store {
            inner: Arc::new(inner),
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        }))
    }

    /// Appends rows of `stream`; durable when it returns `Ok`.
    pub async fn append(&self, stream: Stream, batch: &RecordBatch) -> crate::Result<()> {
        self.append_table(stream.name(), batch).await
    }

    /// Appends finding emissions; durable when it returns `Ok`.
    pub async fn append_findings(&self, findings: &[Finding]) -> crate::Result<()> {
        if findings.is_empty() {
            return Ok(());
        }
        self.append_table(
            FINDINGS,
            &gpusiem_detect::finding::to_record_batch(findings),
        )
        .await
    }

    /// Appends rows to a registered table (`api_audit`, or any stream); durable when it
    /// returns `Ok`. Columns are matched by name; missing nullable columns become null.
    pub async fn append_table(&self, table: &str, batch: &RecordBatch) -> crate::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(store_err("append", "the store is closed"));
        }
        let t = self
            .table(table)
            .ok_or_else(|| store_err("append", format!("unknown table {table}")))?;
        let batch = batch.clone();
        let max_tail = self.inner.config.max_tail_bytes;
        let result = tokio::task::spawn_blocking(move || t.append(&batch, max_tail).map(|()| t))
            .await
            .map_err(|e| store_err("append", e.to_string()))?;
        match result {
            Ok(t) => {
                let c = &self.inner.config;
                if t.needs_flush(c.flush_max_rows, c.flush_max_bytes) {
                    self.inner.flush_wanted.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                self.inner
                    .counters
                    .append_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(store_err("append", format!("{table}: {e}")))
            }
        }
    }

    /// Registers (creating or recovering) a table with a nanosecond `ts` column. Tables with a
    /// `namespace` column are namespace-scoped; others are visible only to unscoped queries.
    /// Registering again with a new schema replaces the schema (old files are read with
    /// missing columns as null).
    pub fn register_table(&self, name: &str, schema: SchemaRef) -> crate::Result<()> {
        self.register(name, schema, false)
    }

    /// Registers a table only admin queries can see (`api_audit`), whatever its columns.
    pub fn register_admin_table(&self, name: &str, schema: SchemaRef) -> crate::Result<()> {
        self.register(name, schema, true)
    }

    fn register(&self, name: &str, schema: SchemaRef, admin_only: bool) -> crate::Result<()> {
        if !valid_table_name(name) {
            return Err(store_err(
                "register",
                "table names are lower-case letters, digits and _",
            ));
        }
        if let Some(t) = self.table(name) {
            if t.schema() == schema && t.admin_only == admin_only {
                return Ok(());
            }
            if self.inner.mode == Mode::ReadOnly {
                return Ok(());
            }
            if t.stats().tail_rows > 0 {
                return Err(store_err(
                    "register",
                    format!("table {name} has unflushed rows under another schema; flush first"),
                ));
            }
        }
        let (t, rec) = Table::open(
            &self.inner.root,
            name,
            Some(schema),
            admin_only,
            self.inner.mode,
        )
        .map_err(|e| store_err("register", format!("{name}: {e}")))?;
        self.inner.note_recovery(name, &rec);
        self.inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::new(t));
        Ok(())
    }

    fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every table with its schema and visibility.
    pub fn tables(&self) -> Vec<TableInfo> {
        let tables = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        tables
            .values()
            .map(|t| {
                let schema = t.schema();
                let access = if t.admin_only {
                    TableAccess::Admin
                } else if has_namespace(&schema) {
                    TableAccess::Namespaced
                } else {
                    TableAccess::Unscoped
                };
                TableInfo {
                    name: t.name.clone(),
                    schema,
                    access,
                }
            })
            .collect()
    }

    /// A consistent view of a table for a query: committed files plus the tail.
    pub fn snapshot(&self, table: &str) -> crate::Result<TableSnapshot> {
        self.table(table)
            .map(|t| t.snapshot())
            .ok_or_else(|| store_err("snapshot", format!("unknown table {table}")))
    }

    /// Sizes per table.
    pub fn table_stats(&self) -> BTreeMap<String, TableStats> {
        let tables = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.iter().map(|(n, t)| (n.clone(), t.stats())).collect()
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            recovered_rows: g(&c.recovered_rows),
            wal_skipped_bytes: g(&c.wal_skipped_bytes),
            wal_damaged_segments: g(&c.wal_damaged_segments),
            orphans_removed: g(&c.orphans_removed),
            flushed_rows: g(&c.flushed_rows),
            flush_failures: g(&c.flush_failures),
            compacted_files: g(&c.compacted_files),
            expired_files: g(&c.expired_files),
            append_failures: g(&c.append_failures),
        }
    }

    /// Flushes every table's tail to Parquet now.
    pub async fn flush(&self) -> crate::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush_all(true))
            .await
            .map_err(|e| store_err("flush", e.to_string()))?
    }

    /// Runs compaction, retention and deferred deletions as of `now_secs` (wall-clock seconds
    /// since the epoch). The maintenance task calls it with the current time.
    pub async fn maintain_at(&self, now_secs: i64) -> crate::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.maintain(now_secs))
            .await
            .map_err(|e| store_err("compact", e.to_string()))?
    }

    /// Stops the background task and flushes everything (shutdown). Idempotent; appends fail
    /// afterwards.
    pub async fn close(&self) -> crate::Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if self.inner.mode == Mode::ReadOnly {
            return Ok(());
        }
        self.flush().await
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn open_inner(data_dir: &Path, config: StoreConfig, mode: Mode) -> crate::Result<Inner> {
    let lock = match mode {
        Mode::Write => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| store_err("open", format!("creating {}: {e}", data_dir.display())))?;
            let path = data_dir.join("store.lock");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| store_err("open", format!("{}: {e}", path.display())))?;
            f.try_lock().map_err(|_| {
                store_err(
                    "open",
                    format!(
                        "{} is in use by another gpusiem process",
                        data_dir.display()
                    ),
                )
            })?;
            Some(f)
        }
        Mode::ReadOnly => {
            if !data_dir.is_dir() {
                return Err(store_err(
                    "open",
                    format!("{} is not a directory", data_dir.display()),
                ));
            }
            None
        }
    };
    let root = data_dir
        .canonicalize()
        .map_err(|e| store_err("open", format!("{}: {e}", data_dir.display())))?;
    let inner = Inner {
        root,
        config,
        mode,
        tables: RwLock::new(BTreeMap::new()),
        pending_deletes: Mutex::new(Vec::new()),
        flush_wanted: Notify::new(),
        closed: AtomicBool::new(false),
        counters: Counters::default(),
        _lock: lock,
    };
    let mut names: Vec<(String, Option<SchemaRef>)> = builtin_tables()
        .into_iter()
        .map(|(n, s)| (n.to_string(), Some(s)))
        .collect();
    // Tables registered by an earlier run (api_audit): recovered now, so their WAL is replayed
    // even before the API registers them again.
    if let Ok(entries) = std::fs::read_dir(inner.root.join("tables")) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if valid_table_name(&n)
                && !names.iter().any(|(k, _)| *k == n)
                && e.path().join(manifest::MANIFEST_FILE).exists()
            {
                names.push((n, None));
            }
        }
    }
    for (name, schema) in names {
        let admin_only = match manifest::Manifest::load(&inner.root.join("tables").join(&name)) {
            Ok(Some(m)) => m.admin_only,
            _ => false,
        };
        let (t, rec) = Table::open(&inner.root, &name, schema, admin_only, mode)
            .map_err(|e| store_err("open", format!("{name}: {e}")))?;
        inner.note_recovery(&name, &rec);
        inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, Arc::new(t));
    }
    Ok(inner)
}

impl Inner {
    fn note_recovery(&self, table: &str, rec: &table::Recovery) {
        let c = &self.counters;
        c.recovered_rows
            .fetch_add(rec.replayed_rows, Ordering::Relaxed);
        c.wal_skipped_bytes
            .fetch_add(rec.wal_skipped_bytes, Ordering::Relaxed);
        c.wal_damaged_segments
            .fetch_add(rec.damaged_segments, Ordering::Relaxed);
        c.orphans_removed
            .fetch_add(rec.orphans_removed + rec.temp_removed, Ordering::Relaxed);
        if rec.replayed_rows > 0
            || rec.orphans_removed > 0
            || rec.temp_removed > 0
            || rec.damaged_segments > 0
        {
            tracing::info!(
                table,
                replayed_rows = rec.replayed_rows,
                replayed_segments = rec.replayed_segments,
                orphans_removed = rec.orphans_removed,
                temp_removed = rec.temp_removed,
                damaged_segments = rec.damaged_segments,
                wal_skipped_bytes = rec.wal_skipped_bytes,
                "store recovered"
            );
        }
    }

    fn all_tables(&self) -> Vec<Arc<Table>> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Flushes tables over a threshold, or every table with rows when `all`.
    fn flush_all(&self, all: bool) -> crate::Result<()> {
        let opts = self.config.write_options();
        let mut first_error = None;
        for t in self.all_tables() {
            if !all && !t.needs_flush(self.config.flush_max_rows, self.config.flush_max_bytes) {
                continue;
            }
            match t.flush(&opts) {
                Ok(rows) => {
                    self.counters
                        .flushed_rows
                        .fetch_add(rows, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.flush_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(table = %t.name, error = %e, "flush failed; rows stay in the WAL and the tail");
                    first_error.get_or_insert(store_err("flush", format!("{}: {e}", t.name)));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn maintain(&self, now_secs: i64) -> crate::Result<()> {
        let c = &self.config;
        let opts = c.write_options();
        let mut first_error = None;
        let mut doomed: Vec<PathBuf> = Vec::new();
        let tables = self.all_tables();
        for t in &tables {
            match t.compact(
                now_secs,
                c.compaction_small_file_bytes,
                c.compaction_min_files,
                i64::try_from(c.compaction_closed_after_secs).unwrap_or(i64::MAX),
                c.compaction_max_input_bytes,
                &opts,
            ) {
                Ok(replaced) => {
                    self.counters
                        .compacted_files
                        .fetch_add(replaced.len() as u64, Ordering::Relaxed);
                    doomed.extend(replaced);
                }
                Err(e) => {
                    tracing::error!(table = %t.name, error = %e, "compaction failed");
                    first_error.get_or_insert(store_err("compact", format!("{}: {e}", t.name)));
                }
            }
        }
        // Retention by age, then by total size (oldest hours first, across tables).
        let mut hours: Vec<(i64, usize, u64)> = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            hours.extend(t.hours().into_iter().map(|(h, b)| (h, i, b)));
        }
        let mut expire: Vec<HashSet<i64>> = vec![HashSet::new(); tables.len()];
        let mut total: u64 = hours.iter().map(|(_, _, b)| b).sum();
        hours.sort();
        for &(h, i, b) in &hours {
            let too_old = c.retention_hours > 0
                && h + 3600
                    <= now_secs
                        - i64::try_from(c.retention_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
            let too_big = c.max_bytes > 0 && total > c.max_bytes;
            if too_old || too_big {
                expire[i].insert(h);
                total = total.saturating_sub(b);
            }
        }
        for (t, hours) in tables.iter().zip(&expire) {
            match t.drop_hours(hours) {
                Ok(gone) => {
                    if !gone.is_empty() {
                        tracing::info!(table = %t.name, hours = hours.len(), files = gone.len(), "retention dropped hour partitions");
                    }
                    self.counters
                        .expired_files
                        .fetch_add(gone.len() as u64, Ordering::Relaxed);
                    doomed.extend(gone);
                }
                Err(e) => {
                    tracing::error!(table = %t.name, error = %e, "retention failed");
                    first_error.get_or_insert(store_err("retention", format!("{}: {e}", t.name)));
                }
            }
        }
        // Deferred deletions.
        let grace = Duration::from_secs(c.delete_grace_secs);
        let now = Instant::now();
        let mut pending = self
            .pending_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.extend(doomed.into_iter().map(|p| (p, now)));
        let mut deleted_any = false;
        pending.retain(|(p, since)| {
            if now.duration_since(*since) < grace {
                return true;
            }
            for f in [p.clone(), keyindex::sidecar(p)] {
                if let Err(e) = fs::remove_if_exists(&f) {
                    tracing::warn!(file = %f.display(), error = %e, "could not delete a replaced file; it is deleted on the next open");
                }
            }
            deleted_any = true;
            false
        });
        drop(pending);
        if deleted_any {
            for t in &tables {
                t.tidy();
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The flusher and maintenance task.
async fn background(inner: Arc<Inner>, stop: CancellationToken) {
    let mut flush_tick =
        tokio::time::interval(Duration::from_secs(inner.config.flush_interval_secs.max(1)));
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maint_tick = tokio::time::interval(Duration::from_secs(
        inner.config.compaction_interval_secs.max(1),
    ));
    maint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first ticks fire at once; nothing to do then.
    flush_tick.tick().await;
    maint_tick.tick().await;
    loop {
        let job: fn(&Inner) -> crate::Result<()> = tokio::select! {
            () = stop.cancelled() => break,
            _ = flush_tick.tick() => |i| i.flush_all(true),
            () = inner.flush_wanted.notified() => |i| i.flush_all(false),
            _ = maint_tick.tick() => |i| i.maintain(now_secs()),
        };
        let i = inner.clone();
        // Errors are logged and counted where they happen.
        let _ = tokio::task::spawn_blocking(move || job(&i)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_values_are_reported() {
        let mut p = Problems::default();
        StoreConfig::default().validate("store", &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        let c = StoreConfig {
            flush_interval_secs: 0,
            zstd_level: 0,
            compaction_min_files: 1,
            ..StoreConfig::default()
        };
        let mut p = Problems::default();
        c.validate("store", &mut p);
        let paths: Vec<&str> = p.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "store.flush_interval_secs",
                "store.compaction_min_files",
                "store.zstd_level"
            ]
        );
    }

    #[test]
    fn table_names_cannot_escape_the_data_directory() {
        for bad in ["", "../x", "a/b", "A", "1x", "x.y"] {
            assert!(!valid_table_name(bad), "{bad}");
        }
        assert!(valid_table_name("api_audit"));
    }
}
