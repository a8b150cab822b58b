//! One stored table: its WAL writer, its in-memory tail, its committed manifest, and the
//! flush, compaction and retention steps that move rows between them.
//!
//! Lock order (never taken the other way round): `maint` → `wal` → `state`. `maint` serialises
//! the steps that change the manifest (flush, compaction, retention); `wal` serialises appends
//! and rotation; `state` is held only for memory updates and snapshots, never across I/O, so a
//! query never waits for an fsync.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arrow::array::{RecordBatch, RecordBatchOptions, UInt32Array, new_null_array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;

use super::fs::{is_temp_name, remove_empty_dirs, remove_if_exists, sync_dir, walk_files};
use super::keyindex;
use super::manifest::{FileEntry, Manifest};
use super::partition::{self, WriteOptions, check_ts, hour_dir, split_by_hour};
use super::wal::{self, WalWriter, list_segments, read_segment};

/// Whether a table may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The service: recovers (deletes orphans and covered WAL segments) and appends.
    Write,
    /// `gpusiem query`: reads what is committed plus the WAL, changes nothing.
    ReadOnly,
}

/// What opening a table found.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recovery {
    pub replayed_rows: u64,
    pub replayed_segments: u64,
    pub wal_skipped_bytes: u64,
    pub damaged_segments: u64,
    pub orphans_removed: u64,
    pub temp_removed: u64,
}

#[derive(Debug)]
struct TailBatch {
    /// WAL segment holding these rows.
    seq: u64,
    batch: RecordBatch,
    bytes: usize,
}

#[derive(Debug)]
struct State {
    schema: SchemaRef,
    manifest: Manifest,
    tail: Vec<TailBatch>,
    tail_rows: usize,
    tail_bytes: usize,
}

impl State {
    fn recount(&mut self) {
        self.tail_rows = self.tail.iter().map(|t| t.batch.num_rows()).sum();
        self.tail_bytes = self.tail.iter().map(|t| t.bytes).sum();
    }
}

/// A consistent view for a query: every acknowledged row is in exactly one of `files` or
/// `tail`.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's schema.
    pub schema: SchemaRef,
    /// Visible Parquet files: absolute path and description.
    pub files: Vec<(PathBuf, FileEntry)>,
    /// Rows not flushed yet.
    pub tail: Vec<RecordBatch>,
}

/// Size of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Visible Parquet files.
    pub files: usize,
    /// Their bytes on disk.
    pub file_bytes: u64,
    /// Their rows.
    pub file_rows: u64,
    /// Rows in the in-memory tail (and the WAL).
    pub tail_rows: usize,
    /// Approximate bytes of the tail.
    pub tail_bytes: usize,
}

/// One table.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: String,
    pub admin_only: bool,
    dir: PathBuf,
    wal_dir: PathBuf,
    maint: Mutex<()>,
    wal: Mutex<Option<WalWriter>>,
    state: RwLock<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind (no invariant spans a panic
    // point), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Rearranges `batch` into `schema`: columns by name, cast where the type differs, nulls for
/// missing nullable columns. The result shares `batch`'s buffers.
pub(crate) fn arrange(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => cols.push(c.clone()),
            Some(c) => cols.push(
                arrow::compute::cast(c, f.data_type())
                    .map_err(|e| format!("column {}: {e}", f.name()))?,
            ),
            None if f.is_nullable() => cols.push(new_null_array(f.data_type(), batch.num_rows())),
            None => return Err(format!("column {} is missing", f.name())),
        }
    }
    let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), cols, &opts).map_err(|e| e.to_string())
}

/// [`arrange`], into compact buffers the result owns: a slice of a large decoded batch must not
/// pin the whole batch in the tail.
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let b = arrange(batch, schema)?;
    // `take` writes new buffers; `concat` of one batch would hand back slices of the input.
    let rows = u32::try_from(b.num_rows()).map_err(|_| "batch too large".to_string())?;
    take_record_batch(&b, &UInt32Array::from_iter_values(0..rows)).map_err(|e| e.to_string())
}

fn rel_path(table_dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(table_dir).ok()?;
    Some(rel.to_string_lossy().replace('\\', "/"))
}

impl Table {
    /// Opens `root/tables/<name>` and `root/wal/<name>`, recovering as `mode` allows. Without
    /// `schema`, the manifest's is used.
    pub(crate) fn open(
        root: &Path,
        name: &str,
        schema: Option<SchemaRef>,
        admin_only: bool,
        mode: Mode,
    ) -> Result<(Table, Recovery), String> {
        let dir = root.join("tables").join(name);
        let wal_dir = root.join("wal").join(name);
        let mut rec = Recovery::default();
        if mode == Mode::Write {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let mut manifest = match Manifest::load(&dir)? {
            Some(m) => m,
            None => rebuild_manifest(&dir, name, schema.as_ref(), admin_only)?,
        };
        let mut dirty = false;
        if let Some(s) = &schema
            && (manifest.schema().ok().as_ref() != Some(s) || manifest.admin_only != admin_only)
        {
            let fresh = Manifest::new(name, s, admin_only)?;
            manifest.schema = fresh.schema;
            manifest.admin_only = admin_only;
            dirty = true;
        }
        let schema = manifest.schema()?;
        check_ts(&schema).map_err(|e| format!("table {name}: {e}"))?;
        if mode == Mode::Write {
            if dirty || !dir.join(super::manifest::MANIFEST_FILE).exists() {
                manifest.store(&dir)?;
            }
            clean_table_dir(&dir, &manifest, &mut rec)?;
        }

        // Replay what the manifest does not cover yet.
        let (manifest, tail) = match mode {
            Mode::Write => {
                let tail = replay(&wal_dir, &manifest, &schema, true, &mut rec)?;
                (manifest, tail)
            }
            Mode::ReadOnly => replay_read_only(&dir, &wal_dir, manifest, &schema, &mut rec)?,
        };
        let writer =
            match mode {
                Mode::Write => {
                    let last = list_segments(&wal_dir)
                        .map_err(|e| e.to_string())?
                        .last()
                        .map_or(0, |(s, _)| *s);
                    let seq = last.max(manifest.wal_through) + 1;
                    Some(WalWriter::create(&wal_dir, seq).map_err(|e| {
                        format!("creating WAL segment in {}: {e}", wal_dir.display())
                    })?)
                }
                Mode::ReadOnly => None,
            };
        let mut state = State {
            schema,
            manifest,
            tail,
            tail_rows: 0,
            tail_bytes: 0,
        };
        state.recount();
        Ok((
            Table {
                name: name.to_string(),
                admin_only,
                dir,
                wal_dir,
                maint: Mutex::new(()),
                wal: Mutex::new(writer),
                state: RwLock::new(state),
            },
            rec,
        ))
    }

    /// The table's schema.
    pub(crate) fn schema(&self) -> SchemaRef {
        read(&self.state).schema.clone()
    }

    /// Sizes.
    pub(crate) fn stats(&self) -> TableStats {
        let st = read(&self.state);
        TableStats {
            files: st.manifest.files.len(),
            file_bytes: st.manifest.bytes(),
            file_rows: st.manifest.files.iter().map(|f| f.rows).sum(),
            tail_rows: st.tail_rows,
            tail_bytes: st.tail_bytes,
        }
    }

    /// Appends rows: WAL frame + fdatasync, then the tail. Durable when `Ok`.
    pub(crate) fn append(&self, batch: &RecordBatch, max_tail_bytes: usize) -> Result<(), String> {
        let schema = self.schema();
        let batch = conform(batch, &schema)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let bytes = batch.get_array_memory_size();
        let payload = wal::encode(&batch).map_err(|e| format!("encoding: {e}"))?;
        let mut wal = lock(&self.wal);
        let w = wal.as_mut().ok_or("the store is read-only")?;
        if read(&self.state).tail_bytes.saturating_add(bytes) > max_tail_bytes {
            // Flushing is behind (disk full, slow disk): refuse rather than grow without bound;
            // the source keeps the data and retries.
            return Err("the in-memory tail is full; flushing to Parquet is behind".into());
        }
        w.append(&payload).map_err(|e| format!("WAL append: {e}"))?;
        let seq = w.seq();
        let mut st = write(&self.state);
        st.tail_rows += batch.num_rows();
        st.tail_bytes += bytes;
        st.tail.push(TailBatch { seq, batch, bytes });
        Ok(())
    }

    /// A consistent view for a query.
    pub(crate) fn snapshot(&self) -> TableSnapshot {
        let st = read(&self.state);
        TableSnapshot {
            schema: st.schema.clone(),
            files: st
                .manifest
                .files
                .iter()
                .map(|f| (self.dir.join(&f.path), f.clone()))
                .collect(),
            tail: st.tail.iter().map(|t| t.batch.clone()).collect(),
        }
    }

    /// Whether the tail is over a flush threshold.
    pub(crate) fn needs_flush(&self, max_rows: usize, max_bytes: usize) -> bool {
        let st = read(&self.state);
        st.tail_rows >= max_rows || st.tail_bytes >= max_bytes
    }

    /// Writes the tail to Parquet and drops the WAL segments it covered. Returns rows written.
    pub(crate) fn flush(&self, opts: &WriteOptions) -> Result<u64, String> {
        let _m = lock(&self.maint);
        let (through, batches, schema) = {
            let mut wal = lock(&self.wal);
            let Some(w) = wal.as_mut() else { return Ok(0) };
            let st = read(&self.state);
            if st.tail.is_empty() {
                return Ok(0);
            }
            drop(st);
            // Appends go to a fresh segment from here on, so the closed ones hold exactly the
            // rows this flush writes.
            let through = if w.is_empty() {
                w.seq() - 1
            } else {
                w.rotate().map_err(|e| format!("WAL rotation: {e}"))?
            };
            let st = read(&self.state);
            let batches: Vec<RecordBatch> = st
                .tail
                .iter()
                .filter(|t| t.seq <= through)
                .map(|t| t.batch.clone())
                .collect();
            (through, batches, st.schema.clone())
        };
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut manifest = read(&self.state).manifest.clone();
        let hours = split_by_hour(&schema, &batches).map_err(|e| e.to_string())?;
        drop(batches);
        let mut written: Vec<FileEntry> = Vec::new();
        for (hour, batch) in hours {
            let rel = format!(
                "{}/part-{:08}-{:08x}.parquet",
                hour_dir(hour),
                manifest.next_file,
                rand::random::<u32>()
            );
            manifest.next_file += 1;
            match partition::write_file(&self.dir, &rel, hour, &batch, &self.name, through, opts) {
                Ok(e) => written.push(e),
                Err(e) => {
                    for f in &written {
                        let _ = remove_if_exists(&self.dir.join(&f.path));
                    }
                    return Err(e);
                }
            }
        }
        manifest.files.extend(written.iter().cloned());
        manifest.wal_through = through;
        if let Err(e) = manifest.store(&self.dir) {
            for f in &written {
                let _ = remove_if_exists(&self.dir.join(&f.path));
            }
            return Err(e);
        }
        {
            let mut st = write(&self.state);
            st.manifest = manifest;
            st.tail.retain(|t| t.seq > through);
            st.recount();
        }
        delete_segments_through(&self.wal_dir, through);
        Ok(rows)
    }

    /// Merges small files of each hour; returns the replaced files (to delete after a grace
    /// period, since running queries may still read them).
    pub(crate) fn compact(
        &self,
        now_secs: i64,
        small_file_bytes: u64,
        min_files: usize,
        closed_after_secs: i64,
        max_input_bytes: u64,
        opts: &WriteOptions,
    ) -> Result<Vec<PathBuf>, String> {
        let _m = lock(&self.maint);
        if lock(&self.wal).is_none() {
            return Ok(Vec::new());
        }
        let (manifest, schema) = {
            let st = read(&self.state);
            (st.manifest.clone(), st.schema.clone())
        };
        let mut by_hour: BTreeMap<i64, Vec<&FileEntry>> = BTreeMap::new();
        for f in &manifest.files {
            if f.bytes < small_file_bytes {
                by_hour.entry(f.hour).or_default().push(f);
            }
        }
        let mut replaced = Vec::new();
        for (hour, mut small) in by_hour {
            let closed = hour + 3600 + closed_after_secs <= now_secs;
            if !(small.len() >= min_files.max(2) || (closed && small.len() >= 2)) {
                continue;
            }
            small.sort_by_key(|f| (f.min_ts, f.path.clone()));
            let mut inputs = Vec::new();
            let mut total = 0;
            for f in small {
                if inputs.len() >= 2 && total + f.bytes > max_input_bytes {
                    break;
                }
                total += f.bytes;
                inputs.push(f.clone());
            }
            let mut batches = Vec::new();
            for f in &inputs {
                for b in partition::read_file(&self.dir.join(&f.path))? {
                    batches.push(conform(&b, &schema)?);
                }
            }
            let mut current = read(&self.state).manifest.clone();
            let parts = split_by_hour(&schema, &batches).map_err(|e| e.to_string())?;
            drop(batches);
            let mut new_entries = Vec::new();
            for (h, batch) in parts {
                let rel = format!(
                    "{}/part-{:08}-{:08x}.parquet",
                    hour_dir(h),
                    current.next_file,
                    rand::random::<u32>()
                );
                current.next_file += 1;
                new_entries.push(partition::write_file(
                    &self.dir,
                    &rel,
                    h,
                    &batch,
                    &self.name,
                    current.wal_through,
                    opts,
                )?);
            }
            let gone: HashSet<&str> = inputs.iter().map(|f| f.path.as_str()).collect();
            current.files.retain(|f| !gone.contains(f.path.as_str()));
            current.files.extend(new_entries.iter().cloned());
            if let Err(e) = current.store(&self.dir) {
                for f in &new_entries {
                    let _ = remove_if_exists(&self.dir.join(&f.path));
                }
                return Err(e);
            }
            write(&self.state).manifest = current;
            replaced.extend(inputs.iter().map(|f| self.dir.join(&f.path)));
        }
        Ok(replaced)
    }

    /// Hour partitions with their bytes (retention).
    pub(crate) fn hours(&self) -> BTreeMap<i64, u64> {
        let st = read(&self.state);
        let mut out = BTreeMap::new();
        for f in &st.manifest.files {
            *out.entry(f.hour).or_insert(0) += f.bytes;
        }
        out
    }

    /// Removes every file of the given hours from the manifest; returns them for deletion.
    pub(crate) fn drop_hours(&self, hours: &HashSet<i64>) -> Result<Vec<PathBuf>, String> {
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let _m = lock(&self.maint);
        if lock(&self.wal).is_none() {
            return Ok(Vec::new());
        }
        let mut m = read(&self.state).manifest.clone();
        let (gone, keep): (Vec<FileEntry>, Vec<FileEntry>) =
            m.files.into_iter().partition(|f| hours.contains(&f.hour));
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        m.files = keep;
        m.store(&self.dir)?;
        write(&self.state).manifest = m;
        Ok(gone.iter().map(|f| self.dir.join(&f.path)).collect())
    }

    /// Removes empty hour directories (best effort).
    pub(crate) fn tidy(&self) {
        remove_empty_dirs(&self.dir);
    }
}

fn rebuild_manifest(
    dir: &Path,
    name: &str,
    schema: Option<&SchemaRef>,
    admin_only: bool,
) -> Result<Manifest, String> {
    let files: Vec<PathBuf> = walk_files(dir)
        .map_err(|e| format!("listing {}: {e}", dir.display()))?
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && !p
                    .file_name()
                    .is_some_and(|n| is_temp_name(&n.to_string_lossy()))
        })
        .collect();
    let mut entries = Vec::new();
    let mut wal_through = 0;
    let mut found_schema = None;
    for p in &files {
        let Some(rel) = rel_path(dir, p) else {
            continue;
        };
        match partition::describe_file(dir, &rel) {
            Ok((e, through, s)) => {
                wal_through = wal_through.max(through);
                found_schema.get_or_insert(s);
                entries.push(e);
            }
            Err(e) => {
                tracing::warn!(table = name, error = %e, "skipping an unreadable Parquet file while rebuilding the manifest")
            }
        }
    }
    let schema = match (schema, found_schema) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s,
        (None, None) => return Err(format!("table {name} has no manifest and no schema")),
    };
    if !entries.is_empty() {
        tracing::warn!(
            table = name,
            files = entries.len(),
            "manifest missing; rebuilt from the Parquet files"
        );
    }
    let mut m = Manifest::new(name, &schema, admin_only)?;
    m.next_file = entries.len() as u64 + 1;
    m.files = entries;
    m.wal_through = wal_through;
    Ok(m)
}

fn clean_table_dir(dir: &Path, manifest: &Manifest, rec: &mut Recovery) -> Result<(), String> {
    let listed: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for p in walk_files(dir).map_err(|e| format!("listing {}: {e}", dir.display()))? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_temp_name(&name) {
            remove_if_exists(&p).map_err(|e| format!("removing {}: {e}", p.display()))?;
            rec.temp_removed += 1;
        } else if name.ends_with(".parquet")
            && rel_path(dir, &p).is_some_and(|r| !listed.contains(r.as_str()))
        {
            // Written but never committed: its rows are still in the WAL.
            remove_if_exists(&p).map_err(|e| format!("removing {}: {e}", p.display()))?;
            rec.orphans_removed += 1;
        } else if let Some(parquet) = name.strip_suffix(keyindex::SUFFIX) {
            // The index of a file that is not (or no longer) listed.
            let of = p.with_file_name(parquet);
            if rel_path(dir, &of).is_none_or(|r| !listed.contains(r.as_str())) {
                remove_if_exists(&p).map_err(|e| format!("removing {}: {e}", p.display()))?;
                rec.orphans_removed += 1;
            }
        }
    }
    remove_empty_dirs(dir);
    Ok(())
}

fn replay(
    wal_dir: &Path,
    manifest: &Manifest,
    schema: &SchemaRef,
    delete_covered: bool,
    rec: &mut Recovery,
) -> Result<Vec<TailBatch>, String> {
    let mut tail = Vec::new();
    for (seq, path) in
        list_segments(wal_dir).map_err(|e| format!("listing {}: {e}", wal_dir.display()))?
    {
        if seq <= manifest.wal_through {
            if delete_covered {
                remove_if_exists(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
            }
            continue;
        }
        let r = read_segment(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        push_segment(seq, r, schema, &mut tail, rec, &path)?;
    }
    if delete_covered {
        let _ = sync_dir(wal_dir);
    }
    Ok(tail)
}

fn push_segment(
    seq: u64,
    r: wal::SegmentRead,
    schema: &SchemaRef,
    tail: &mut Vec<TailBatch>,
    rec: &mut Recovery,
    path: &Path,
) -> Result<(), String> {
    rec.replayed_segments += 1;
    if let Some(d) = r.damage {
        rec.damaged_segments += 1;
        rec.wal_skipped_bytes += r.skipped_bytes;
        tracing::warn!(segment = %path.display(), damage = d, skipped_bytes = r.skipped_bytes, frames = r.frames, "WAL segment damaged; its valid prefix was recovered");
    }
    for b in r.batches {
        let b = conform(&b, schema)?;
        rec.replayed_rows += b.num_rows() as u64;
        let bytes = b.get_array_memory_size();
        tail.push(TailBatch {
            seq,
            batch: b,
            bytes,
        });
    }
    Ok(())
}

/// Read-only replay while a writer may be flushing: a segment listed but gone when read was
/// flushed meanwhile, so the manifest is read again.
fn replay_read_only(
    dir: &Path,
    wal_dir: &Path,
    mut manifest: Manifest,
    schema: &SchemaRef,
    rec: &mut Recovery,
) -> Result<(Manifest, Vec<TailBatch>), String> {
    for _ in 0..5 {
        let mut tail = Vec::new();
        let mut r = Recovery::default();
        let mut raced = false;
        for (seq, path) in
            list_segments(wal_dir).map_err(|e| format!("listing {}: {e}", wal_dir.display()))?
        {
            if seq <= manifest.wal_through {
                continue;
            }
            match read_segment(&path) {
                Ok(s) => push_segment(seq, s, schema, &mut tail, &mut r, &path)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    raced = true;
                    break;
                }
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
            }
        }
        if !raced {
            *rec = Recovery {
                replayed_rows: r.replayed_rows,
                replayed_segments: r.replayed_segments,
                wal_skipped_bytes: r.wal_skipped_bytes,
                damaged_segments: r.damaged_segments,
                ..rec.clone()
            };
            return Ok((manifest, tail));
        }
        if let Some(m) = Manifest::load(dir)? {
            manifest = m;
        }
    }
    Err("the data directory kept changing while it was read; try again".into())
}

fn delete_segments_through(wal_dir: &Path, through: u64) {
    match list_segments(wal_dir) {
        Ok(segs) => {
            for (seq, path) in segs {
                if seq <= through
                    && let Err(e) = remove_if_exists(&path)
                {
                    // Harmless: the manifest says it is covered; the next open deletes it.
                    tracing::warn!(segment = %path.display(), error = %e, "could not delete a flushed WAL segment");
                }
            }
            let _ = sync_dir(wal_dir);
        }
        Err(e) => {
            tracing::warn!(dir = %wal_dir.display(), error = %e, "could not list WAL segments")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_slice_of_a_large_batch_is_copied_not_pinned() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("pod", DataType::Utf8, true)]));
        let big =
            StringArray::from_iter_values((0..10_000).map(|i| format!("pod-with-a-long-name-{i}")));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(big)]).expect("batch");
        let slice = batch.slice(100, 50);
        let out = conform(&slice, &schema).expect("conform");
        assert_eq!(out.num_rows(), 50);
        let pods = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        assert_eq!(pods.value(0), "pod-with-a-long-name-100");
        // The copy holds 50 values, not the 10,000 of the batch it was sliced from.
        assert!(
            out.get_array_memory_size() * 20 < batch.get_array_memory_size(),
            "{} vs {}",
            out.get_array_memory_size(),
            batch.get_array_memory_size()
        );
    }
}
