//! Point lookups: the rows a key index selected, read straight from the Parquet files.
//!
//! When every file a scan would open comes with a row selection from its key index (a lookup
//! by `id`, `pod`, `gpu_uuid` or `event_id`), the scan is a [`KeyLookupExec`] instead of
//! DataFusion's Parquet scan. DataFusion's scan would, for every file and every query, parse
//! the footer and the page index again, build a pruning predicate and an async reader, and
//! read each page through the blocking pool; for a lookup that takes a few rows from each of
//! tens of files that is most of its time. [`KeyLookupExec`] reads the selected pages of each
//! file with parquet's synchronous reader (one positioned read per page, no other pages), and
//! takes each file's footer and page index from a [`FooterCache`]: stored files never change
//! once written, and a file replaced by compaction has a new name.
//!
//! The scan is inexact like the other: the query's own filter, above it, drops the rows an
//! index selected only because their key shares a hash with the one looked up.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::reader::{ChunkReader, Length};

use super::provider::{balance, runs};

/// Rows per batch a lookup produces at most.
const BATCH_ROWS: usize = 8192;

/// Footers and page indexes of recently read files, up to a memory budget; the least
/// recently used go first beyond it.
#[derive(Debug)]
pub(crate) struct FooterCache {
    limit: usize,
    inner: Mutex<Footers>,
}

#[derive(Debug, Default)]
struct Footers {
    entries: HashMap<PathBuf, Footer>,
    bytes: usize,
    clock: u64,
}

#[derive(Debug)]
struct Footer {
    /// Size of the file the footer was read from: a file of another size under the same
    /// name is another file.
    file_bytes: u64,
    meta: ArrowReaderMetadata,
    size: usize,
    used: u64,
}

impl FooterCache {
    /// A cache holding at most `limit` bytes of metadata (0: none).
    pub(crate) fn new(limit: usize) -> Self {
        FooterCache {
            limit,
            inner: Mutex::new(Footers::default()),
        }
    }

    /// The metadata (with page index) of `file`, `file_bytes` long, and whether it was cached.
    fn get(&self, path: &Path, file: &Positioned) -> Result<(ArrowReaderMetadata, bool), String> {
        {
            let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            f.clock += 1;
            let now = f.clock;
            if let Some(hit) = f.entries.get_mut(path)
                && hit.file_bytes == file.len
            {
                hit.used = now;
                return Ok((hit.meta.clone(), true));
            }
        }
        // Files this store wrote have a page index; one without is still read, whole pages.
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load(file, options)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let size = meta.metadata().memory_size();
        if size <= self.limit {
            let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let now = f.clock;
            if let Some(old) = f.entries.insert(
                path.to_path_buf(),
                Footer {
                    file_bytes: file.len,
                    meta: meta.clone(),
                    size,
                    used: now,
                },
            ) {
                f.bytes -= old.size;
            }
            f.bytes += size;
            while f.bytes > self.limit {
                let Some(oldest) = f
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.used)
                    .map(|(p, _)| p.clone())
                else {
                    break;
                };
                if let Some(gone) = f.entries.remove(&oldest) {
                    f.bytes -= gone.size;
                }
            }
        }
        Ok((meta, false))
    }

    /// Files and bytes held.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (f.entries.len(), f.bytes)
    }
}

/// A file read with positioned reads: one `pread` per page, no seeks, no duplicated handles.
#[derive(Clone)]
struct Positioned {
    file: Arc<File>,
    len: u64,
}

impl Length for Positioned {
    fn len(&self) -> u64 {
        self.len
    }
}

/// A reader from an offset of a [`Positioned`] file.
struct PositionedRead {
    file: Arc<File>,
    at: u64,
}

impl Read for PositionedRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl ChunkReader for Positioned {
    type T = std::io::BufReader<PositionedRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::new(PositionedRead {
            file: self.file.clone(),
            at: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut buf = vec![0; length];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(buf.into())
    }
}

/// One file of a lookup and the rows (ascending) its key index selected.
#[derive(Debug, Clone)]
pub(crate) struct LookupFile {
    pub path: PathBuf,
    pub rows: Vec<u32>,
}

/// Reads the rows of [`LookupFile`]s, columns `projection` of the table schema.
#[derive(Debug)]
pub(crate) struct KeyLookupExec {
    /// Files per output partition.
    groups: Vec<Vec<LookupFile>>,
    /// Output schema: the projected columns of the table.
    schema: SchemaRef,
    limit: Option<usize>,
    cache: Arc<FooterCache>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl KeyLookupExec {
    /// Spreads `files` over at most `partitions` partitions, by selected rows.
    pub(crate) fn new(
        files: Vec<LookupFile>,
        schema: SchemaRef,
        limit: Option<usize>,
        partitions: usize,
        cache: Arc<FooterCache>,
    ) -> Self {
        // A file costs its footer and first pages whatever it selects.
        let groups = balance(files, partitions, |f| f.rows.len() as u64 + 64);
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        KeyLookupExec {
            groups,
            schema,
            limit,
            cache,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for KeyLookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        let rows: usize = self.groups.iter().flatten().map(|f| f.rows.len()).sum();
        write!(f, "KeyLookupExec: files={files}, selected_rows={rows}")?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        write!(f, ", file_groups=[")?;
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            let names: Vec<String> = g
                .iter()
                .map(|x| format!("{} ({} rows)", x.path.display(), x.rows.len()))
                .collect();
            write!(f, "[{}]", names.join(", "))?;
        }
        write!(f, "]")
    }
}

impl ExecutionPlan for KeyLookupExec {
    fn name(&self) -> &str {
        "KeyLookupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "KeyLookupExec has no children".into(),
            ))
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("KeyLookupExec has no partition {partition}"))
        })?;
        let m = MetricBuilder::new(&self.metrics);
        let counts = Counts {
            files: m.clone().counter("files_read", partition),
            footer_hits: m.clone().counter("footer_cache_hits", partition),
            rows: m.output_rows(partition),
        };
        let schema = self.schema.clone();
        let cache = self.cache.clone();
        let limit = self.limit;
        let mut builder = RecordBatchReceiverStream::builder(schema.clone(), 2);
        let tx = builder.tx();
        builder.spawn_blocking(move || {
            let mut left = limit.unwrap_or(usize::MAX);
            for f in &files {
                if left == 0 {
                    break;
                }
                let done = read_rows(&cache, f, &schema, &counts, &mut |b| {
                    let b = if b.num_rows() > left {
                        b.slice(0, left)
                    } else {
                        b
                    };
                    left -= b.num_rows();
                    counts.rows.add(b.num_rows());
                    // The receiver is gone when the query ended early (a limit, a cancel).
                    tx.blocking_send(Ok(b)).is_ok() && left > 0
                })
                .map_err(DataFusionError::Execution)?;
                if !done {
                    break;
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

struct Counts {
    files: datafusion::physical_plan::metrics::Count,
    footer_hits: datafusion::physical_plan::metrics::Count,
    rows: datafusion::physical_plan::metrics::Count,
}

/// Reads the selected rows of `f` as batches of `schema`, handing each to `emit` while it
/// returns true; false when `emit` stopped it.
fn read_rows(
    cache: &FooterCache,
    f: &LookupFile,
    schema: &SchemaRef,
    counts: &Counts,
    emit: &mut dyn FnMut(RecordBatch) -> bool,
) -> Result<bool, String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", f.path.display());
    let file = File::open(&f.path).map_err(|e| err(&e))?;
    let len = file.metadata().map_err(|e| err(&e))?.len();
    let file = Positioned {
        file: Arc::new(file),
        len,
    };
    let (meta, hit) = cache.get(&f.path, &file)?;
    counts.files.add(1);
    if hit {
        counts.footer_hits.add(1);
    }
    // The table's columns by name in this file (an older file may lack some).
    let file_schema = meta.schema().clone();
    let roots: Vec<usize> = schema
        .fields()
        .iter()
        .filter_map(|c| file_schema.index_of(c.name()).ok())
        .collect();
    let mask = ProjectionMask::roots(meta.parquet_schema(), roots);
    // Only the row groups holding selected rows are read, and the selection covers only them:
    // rows are numbered again without the row groups left out.
    let mut row_groups = Vec::new();
    let mut kept = Vec::with_capacity(f.rows.len());
    let (mut first, mut left_out) = (0u32, 0u32);
    let mut rows = f.rows.iter().copied().peekable();
    for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
        let end = first.saturating_add(u32::try_from(rg.num_rows()).unwrap_or(u32::MAX));
        let before = kept.len();
        while let Some(r) = rows.next_if(|&r| r < end) {
            kept.push(r - left_out);
        }
        if kept.len() > before {
            row_groups.push(i);
        } else {
            left_out += end - first;
        }
        first = end;
    }
    if row_groups.is_empty() {
        return Ok(true);
    }
    let total = (first - left_out) as usize;
    let selection = RowSelection::from_consecutive_ranges(runs(&kept), total);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta)
        .with_projection(mask)
        .with_row_groups(row_groups)
        .with_row_selection(selection)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| err(&e))?;
    for batch in reader {
        let batch = batch.map_err(|e| err(&e))?;
        let batch = crate::store::arrange_batch(&batch, schema).map_err(|e| err(&e))?;
        if !emit(batch) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// A file of `rows` rows (`n` = 0.., `name` = "r{n}") in row groups of `group` rows and
    /// pages of 16 rows.
    fn write(path: &Path, rows: i64, group: usize) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|n| format!("r{n}")),
                )),
            ],
        )
        .expect("batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_data_page_row_count_limit(16)
            .set_write_batch_size(16)
            .build();
        let mut w = ArrowWriter::try_new(File::create(path).expect("create"), schema, Some(props))
            .expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    fn lookup(
        cache: &FooterCache,
        path: &Path,
        rows: &[u32],
        schema: &SchemaRef,
    ) -> (Vec<RecordBatch>, Counts) {
        let set = ExecutionPlanMetricsSet::new();
        let m = MetricBuilder::new(&set);
        let counts = Counts {
            files: m.clone().counter("files_read", 0),
            footer_hits: m.clone().counter("footer_cache_hits", 0),
            rows: m.output_rows(0),
        };
        let mut out = Vec::new();
        let f = LookupFile {
            path: path.to_path_buf(),
            rows: rows.to_vec(),
        };
        let done = read_rows(cache, &f, schema, &counts, &mut |b| {
            out.push(b);
            true
        })
        .expect("read");
        assert!(done);
        (out, counts)
    }

    fn column_i64(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column_by_name(name)
                    .expect("column")
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn reads_exactly_the_selected_rows_across_row_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.parquet");
        write(&path, 1000, 300);
        let cache = FooterCache::new(1 << 20);
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        // Rows in the first, third and fourth row groups; none in the second.
        let rows = [0, 1, 2, 17, 299, 600, 601, 899, 900, 999];
        let (batches, counts) = lookup(&cache, &path, &rows, &schema);
        let expected: Vec<i64> = rows.iter().map(|&r| i64::from(r)).collect();
        assert_eq!(column_i64(&batches, "n"), expected);
        let names: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected_names: Vec<String> = rows.iter().map(|r| format!("r{r}")).collect();
        assert_eq!(names, expected_names);
        assert_eq!(batches[0].schema(), schema, "columns in the table's order");
        assert_eq!((counts.files.value(), counts.footer_hits.value()), (1, 0));

        // A selection in no row group reads nothing.
        let (batches, _) = lookup(&cache, &path, &[], &schema);
        assert!(batches.is_empty());
        // The second read of the file takes its footer from the cache.
        let (_, counts) = lookup(&cache, &path, &[5], &schema);
        assert_eq!(counts.footer_hits.value(), 1);
    }

    #[test]
    fn columns_a_file_lacks_are_null_and_other_types_are_cast() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.parquet");
        write(&path, 100, 100);
        let cache = FooterCache::new(1 << 20);
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int32, false),
            Field::new("added_later", DataType::Utf8, true),
        ]));
        let (batches, _) = lookup(&cache, &path, &[3, 40], &schema);
        let b = arrow::compute::concat_batches(&schema, &batches).expect("concat");
        assert_eq!(
            b.column(0).as_primitive::<arrow::datatypes::Int32Type>(),
            &Int32Array::from(vec![3, 40])
        );
        assert_eq!(b.column(1).null_count(), 2);
    }

    #[test]
    fn the_footer_cache_keeps_its_budget_and_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("{i}.parquet"));
                write(&p, 200, 200);
                p
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let one = {
            let c = FooterCache::new(usize::MAX);
            lookup(&c, &paths[0], &[1], &schema);
            c.held().1
        };
        assert!(one > 0);
        // Room for two footers.
        let cache = FooterCache::new(one * 2 + one / 2);
        let hit = |p: &Path| lookup(&cache, p, &[1], &schema).1.footer_hits.value() == 1;
        assert!(!hit(&paths[0]));
        assert!(!hit(&paths[1]));
        assert!(hit(&paths[0]), "0 is now the most recently used");
        assert!(!hit(&paths[2]), "2 displaces 1, the least recently used");
        assert_eq!(cache.held(), (2, one * 2));
        assert!(hit(&paths[0]));
        assert!(hit(&paths[2]));
        assert!(!hit(&paths[1]));

        // A file of another size under a cached name is read again.
        write(&paths[1], 300, 300);
        let (batches, counts) = lookup(&cache, &paths[1], &[250], &schema);
        assert_eq!(counts.footer_hits.value(), 0);
        assert_eq!(column_i64(&batches, "n"), vec![250]);

        // A cache of 0 bytes keeps nothing and still reads.
        let none = FooterCache::new(0);
        let (batches, _) = lookup(&none, &paths[2], &[7], &schema);
        assert_eq!(column_i64(&batches, "n"), vec![7]);
        assert_eq!(none.held(), (0, 0));
    }
}
