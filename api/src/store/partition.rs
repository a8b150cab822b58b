//! Hour partitions: rows split by hour, ordered by entity and time (see [`CLUSTER_COLUMNS`]),
//! written as Parquet files under `dt=YYYY-MM-DD/hour=HH/`, and read back for compaction.
//!
//! Files are zstd-compressed, carry column and page statistics (time and namespace pruning),
//! bloom filters on the entity columns analysts pivot on (a point lookup by pod or GPU skips
//! the row groups that cannot hold it), small pages and a key index beside them (such a
//! lookup decodes only the pages holding its rows, see [`super::keyindex`]), their sort
//! order, and in their key-value metadata the table and the last WAL segment they cover
//! (enough to rebuild a lost manifest).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::path::Path;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take, take_record_batch,
};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rustc_hash::FxBuildHasher;

use super::fs::{publish, remove_if_exists, temp_path, write_atomic};
use super::keyindex;
use super::manifest::FileEntry;

/// Nanoseconds per hour.
pub(crate) const NS_PER_HOUR: i64 = 3_600_000_000_000;
/// The event-time column every stored table has.
pub(crate) const TS: &str = "ts";

/// Rows per data page at most: a lookup that selects a few rows through the key index
/// decodes only the pages holding them.
const ROWS_PER_PAGE: usize = 1024;
/// Nearly unique text whose values average this many bytes or more is wide…
const WIDE_VALUE_BYTES: usize = 64;
/// …and gets pages of at most this many bytes before compression.
const WIDE_PAGE_BYTES: usize = 16 * 1024;
/// Rows written between page size checks (the granularity of the page limits).
const PAGE_CHECK_ROWS: usize = 128;

/// How files are written.
#[derive(Debug, Clone)]
pub(crate) struct WriteOptions {
    /// zstd level.
    pub zstd_level: i32,
    /// Rows per row group.
    pub row_group_rows: usize,
}

/// Whether `schema` has a usable `ts` column (timestamp, nanoseconds).
pub(crate) fn check_ts(schema: &SchemaRef) -> Result<usize, String> {
    let (i, f) = schema
        .column_with_name(TS)
        .ok_or("the table has no ts column")?;
    match f.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Ok(i),
        _ => Err("the ts column must be a nanosecond timestamp".into()),
    }
}

/// Start of the hour holding `ts_ns`, seconds since the epoch.
pub(crate) fn hour_of(ts_ns: i64) -> i64 {
    ts_ns.div_euclid(NS_PER_HOUR) * 3600
}

/// Directory of an hour partition, relative to the table directory.
pub(crate) fn hour_dir(hour_secs: i64) -> String {
    match chrono::DateTime::from_timestamp(hour_secs, 0) {
        Some(t) => t.format("dt=%Y-%m-%d/hour=%H").to_string(),
        None => format!("dt=invalid/hour={hour_secs}"),
    }
}

/// The columns that order the rows of an hour, after the hour itself: the entity an analyst
/// looks up (a namespace's pods, a pod's GPUs) and then time. A pod's or a GPU's rows of an
/// hour lie together in a few pages, so a point lookup decodes a page or two per file instead
/// of one per row, and a namespace-scoped query prunes pages by `namespace`. Columns a table
/// lacks are left out; `ts` always ends the order.
pub(crate) const CLUSTER_COLUMNS: [&str; 3] = [
    gpusiem_ingest::schema::NAMESPACE,
    gpusiem_ingest::schema::POD,
    gpusiem_ingest::schema::GPU_UUID,
];

/// The sort order of a file of `schema`: the [`CLUSTER_COLUMNS`] it has, then `ts`, nulls
/// first (column indices).
pub(crate) fn sort_columns(schema: &SchemaRef) -> Result<Vec<usize>, String> {
    let ts = check_ts(schema)?;
    let mut out: Vec<usize> = CLUSTER_COLUMNS
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .filter(|&i| !schema.field(i).data_type().is_nested())
        .collect();
    out.push(ts);
    Ok(out)
}

/// Concatenates `batches`, sorts them by hour and then by [`sort_columns`], and splits them at
/// hour boundaries.
pub(crate) fn split_by_hour(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<(i64, RecordBatch)>, ArrowError> {
    let ts_idx = check_ts(schema).map_err(ArrowError::SchemaError)?;
    let order_cols = sort_columns(schema).map_err(ArrowError::SchemaError)?;
    let all = concat_batches(schema, batches)?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let ts = all.column(ts_idx).as_primitive::<TimestampNanosecondType>();
    // Null times sort first, in hour 0, as they always have.
    let hours: Int64Array = ts.iter().map(|t| Some(t.map_or(0, hour_of))).collect();
    let nulls_first = SortOptions {
        descending: false,
        nulls_first: true,
    };
    let mut keys = vec![SortColumn {
        values: Arc::new(hours) as ArrayRef,
        options: Some(nulls_first),
    }];
    keys.extend(order_cols.iter().map(|&i| SortColumn {
        values: all.column(i).clone(),
        options: Some(nulls_first),
    }));
    let order = lexsort_to_indices(&keys, None)?;
    let hours = take(&keys[0].values, &order, None)?;
    drop(keys);
    let sorted = take_record_batch(&all, &order)?;
    drop(all);
    let hour_at = |i: usize| hours.as_primitive::<Int64Type>().value(i);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.num_rows() {
        if i == sorted.num_rows() || hour_at(i) != hour_at(start) {
            out.push((hour_at(start), sorted.slice(start, i - start)));
            start = i;
        }
    }
    Ok(out)
}

/// Largest dictionary a column gets, in bytes of distinct values: a point lookup reads and
/// decodes the dictionary of every column chunk it touches before any of its rows.
const DICTIONARY_BYTES: usize = 128 * 1024;
/// Average run length from which a text column is prefix-encoded (see [`long_runs`]).
const RUN_ROWS: usize = 8;
/// Rows encoded at a time while counting distinct values.
const COUNT_CHUNK_ROWS: usize = 4096;

/// Columns of `batch` that get no dictionary, and whether each is wide text: those whose
/// distinct values, counted over the whole batch, are more than half its non-null values or
/// take more than [`DICTIONARY_BYTES`]. Such a dictionary is nearly the column itself, or costs
/// each lookup more to read than the rows it wants. The whole batch is counted, not a sample:
/// rows are sorted by entity, so a sample's neighbours share values the batch does not (a
/// finding's revisions share its `id`), and a stride sees a new pod at every step.
/// Columns in `skip` are not counted.
fn high_cardinality(batch: &RecordBatch, skip: &HashSet<String>) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let dt = f.data_type();
        let valid = c.len() - c.null_count();
        if dt.is_nested() || valid < 64 || skip.contains(f.name()) {
            continue;
        }
        let strings = c.as_string_opt::<i32>();
        let Ok(converter) = RowConverter::new(vec![SortField::new(dt.clone())]) else {
            continue;
        };
        let mut seen: HashSet<u64, FxBuildHasher> = HashSet::default();
        let mut bytes = 0usize;
        let mut large = false;
        'chunks: for start in (0..c.len()).step_by(COUNT_CHUNK_ROWS) {
            let part = c.slice(start, COUNT_CHUNK_ROWS.min(c.len() - start));
            let Ok(rows) = converter.convert_columns(std::slice::from_ref(&part)) else {
                break;
            };
            for (i, r) in rows.iter().enumerate() {
                if part.is_null(i) || !seen.insert(FxBuildHasher.hash_one(r.data())) {
                    continue;
                }
                bytes += match strings {
                    Some(s) => s.value_length(start + i) as usize,
                    None => dt.primitive_width().unwrap_or(r.data().len()),
                };
                if bytes > DICTIONARY_BYTES || seen.len() * 2 > valid {
                    large = true;
                    break 'chunks;
                }
            }
        }
        if large {
            let wide = strings.is_some_and(|v| v.value_data().len() >= WIDE_VALUE_BYTES * valid);
            out.push((f.name().clone(), wide));
        }
    }
    out
}

/// Text columns of `batch` whose values come in runs of [`RUN_ROWS`] rows or more on average
/// (a run: neighbours with the same value, or nulls): the entity columns rows are sorted by,
/// and those that follow them (a pod's uid, node, container).
fn long_runs(batch: &RecordBatch) -> HashSet<String> {
    let rows = batch.num_rows();
    let mut out = HashSet::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(v) = c.as_string_opt::<i32>() else {
            continue;
        };
        if rows < RUN_ROWS {
            continue;
        }
        let mut runs = 1;
        for i in 1..rows {
            let same = match (v.is_valid(i - 1), v.is_valid(i)) {
                (true, true) => v.value(i - 1) == v.value(i),
                (a, b) => a == b,
            };
            if !same {
                runs += 1;
                if runs * RUN_ROWS > rows {
                    break;
                }
            }
        }
        if runs * RUN_ROWS <= rows {
            out.insert(f.name().clone());
        }
    }
    out
}

/// Whether Parquet stores `dt` as INT32 or INT64 (delta encoding applies).
fn is_integer_like(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Duration(_)
    )
}

fn properties(
    batch: &RecordBatch,
    table: &str,
    wal_through: u64,
    opts: &WriteOptions,
) -> Result<WriterProperties, String> {
    let schema = &batch.schema();
    check_ts(schema)?;
    let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| e.to_string())?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(ROWS_PER_PAGE)
        .set_write_batch_size(PAGE_CHECK_ROWS)
        .set_sorting_columns(Some(
            sort_columns(schema)?
                .into_iter()
                .map(|i| {
                    Ok(SortingColumn {
                        column_idx: i32::try_from(i).map_err(|e| e.to_string())?,
                        descending: false,
                        nulls_first: true,
                    })
                })
                .collect::<Result<_, String>>()?,
        ))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("gpusiem.table".to_string(), table.to_string()),
            KeyValue::new("gpusiem.wal_through".to_string(), wal_through.to_string()),
        ]));
    // Run-encoded columns get no dictionary whatever their values.
    let runs = long_runs(batch);
    let unique: HashMap<String, bool> = high_cardinality(batch, &runs).into_iter().collect();
    for f in schema.fields() {
        let dt = f.data_type();
        if dt.is_nested() {
            continue;
        }
        let c = ColumnPath::from(f.name().as_str());
        if runs.contains(f.name()) {
            // Runs of one value (a pod's rows, sorted together) cost a prefix-encoded page
            // next to nothing: no codec, and no dictionary page for a lookup to read first.
            b = b
                .set_column_dictionary_enabled(c.clone(), false)
                .set_column_encoding(c.clone(), Encoding::DELTA_BYTE_ARRAY)
                .set_column_compression(c, Compression::UNCOMPRESSED);
            continue;
        }
        match unique.get(f.name()) {
            // A dictionary of nearly unique values is as large as the column and must be read
            // whole before any one row can be, which makes a lookup of a few rows read the
            // chunk; and a page of wide text costs a lookup its whole decompression for one
            // value. Text stays compressed.
            Some(&wide) => {
                b = b.set_column_dictionary_enabled(c.clone(), false);
                if wide {
                    b = b.set_column_data_page_size_limit(c.clone(), WIDE_PAGE_BYTES);
                }
                if is_integer_like(dt) {
                    // Delta encoding packs times and counters tightly without a codec.
                    b = b
                        .set_column_encoding(c.clone(), Encoding::DELTA_BINARY_PACKED)
                        .set_column_compression(c, Compression::UNCOMPRESSED);
                }
            }
            // Dictionary indices (and sparse or constant values) are small already: zstd would
            // save little, and opening a zstd codec per column chunk costs more than a point
            // lookup's whole decode.
            None if !matches!(dt, DataType::Float32 | DataType::Float64) => {
                b = b.set_column_compression(c, Compression::UNCOMPRESSED);
            }
            None => {}
        }
    }
    // Bloom filters on the key columns serve readers without the key index (DuckDB, Spark).
    for c in keyindex::KEY_COLUMNS {
        if schema
            .column_with_name(c)
            .is_some_and(|(_, f)| f.data_type() == &DataType::Utf8)
        {
            b = b.set_column_bloom_filter_enabled(ColumnPath::from(c), true);
        }
    }
    Ok(b.build())
}

/// Writes `batch` (rows of one hour, in [`split_by_hour`]'s order) to `table_dir/rel_path` atomically:
/// temporary name, fsync, rename, fsync of the directory.
pub(crate) fn write_file(
    table_dir: &Path,
    rel_path: &str,
    hour: i64,
    batch: &RecordBatch,
    table: &str,
    wal_through: u64,
    opts: &WriteOptions,
) -> Result<FileEntry, String> {
    let schema = batch.schema();
    let ts_idx = check_ts(&schema)?;
    let path = table_dir.join(rel_path);
    let dir = path.parent().ok_or("file path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let props = properties(batch, table, wal_through, opts)?;
    let tmp = temp_path(&path);
    let written = (|| -> Result<u64, String> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| e.to_string())?;
        let mut w =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        w.write(batch).map_err(|e| e.to_string())?;
        // finish() writes the footer and flushes the buffer down to the file.
        w.finish().map_err(|e| e.to_string())?;
        w.inner().sync_all().map_err(|e| e.to_string())?;
        let bytes = w.inner().metadata().map_err(|e| e.to_string())?.len();
        drop(w);
        publish(&tmp, &path).map_err(|e| e.to_string())?;
        if let Some(index) = keyindex::build(batch, bytes)
            && let Err(e) = write_atomic(&keyindex::sidecar(&path), &index)
        {
            let _ = remove_if_exists(&path);
            return Err(format!("key index: {e}"));
        }
        Ok(bytes)
    })();
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = remove_if_exists(&tmp);
            return Err(format!("writing {}: {e}", path.display()));
        }
    };
    let ts = batch
        .column(ts_idx)
        .as_primitive::<TimestampNanosecondType>();
    let (min_ts, max_ts) = match (arrow::compute::min(ts), arrow::compute::max(ts)) {
        (Some(a), Some(b)) => (a, b),
        _ => (hour * 1_000_000_000, hour * 1_000_000_000),
    };
    Ok(FileEntry {
        path: rel_path.to_string(),
        hour,
        rows: batch.num_rows() as u64,
        bytes,
        min_ts,
        max_ts,
    })
}

/// Reads a whole Parquet file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<RecordBatch>, String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Describes an existing file from its footer (rebuilding a lost manifest).
pub(crate) fn describe_file(
    table_dir: &Path,
    rel_path: &str,
) -> Result<(FileEntry, u64, SchemaRef), String> {
    let path = table_dir.join(rel_path);
    let file = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let schema = builder.schema().clone();
    let meta = builder.metadata().file_metadata();
    let wal_through = meta
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "gpusiem.wal_through"))
        .and_then(|k| k.value.as_deref()?.parse().ok())
        .unwrap_or(0);
    let rows = u64::try_from(meta.num_rows()).unwrap_or(0);
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), [TS]);
    let batches: Vec<RecordBatch> = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut min_ts = i64::MAX;
    let mut max_ts = i64::MIN;
    for b in &batches {
        let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
        if let (Some(a), Some(z)) = (arrow::compute::min(ts), arrow::compute::max(ts)) {
            min_ts = min_ts.min(a);
            max_ts = max_ts.max(z);
        }
    }
    if min_ts > max_ts {
        (min_ts, max_ts) = (0, 0);
    }
    let entry = FileEntry {
        path: rel_path.to_string(),
        hour: hour_of(min_ts),
        rows,
        bytes,
        min_ts,
        max_ts,
    };
    Ok((entry, wal_through, schema))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};

    use super::*;

    #[test]
    fn unique_columns_skip_the_dictionary_and_narrow_ones_the_codec() {
        let n = 5000;
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                TS,
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("pod", DataType::Utf8, true),
            Field::new("summary", DataType::Utf8, true),
            Field::new("pod_uid", DataType::Utf8, true),
            Field::new("evidence", DataType::Utf8, true),
            Field::new("namespace", DataType::Utf8, true),
        ]));
        let ts = TimestampNanosecondArray::from_iter_values((0..n).map(|i| i * 1_000_003))
            .with_timezone("UTC");
        let pods = StringArray::from_iter_values((0..n).map(|i| format!("pod-{}", i % 7)));
        let summaries = StringArray::from_iter_values(
            (0..n).map(|i| format!("GPU memory rose {i} MiB over its baseline on a pod")),
        );
        // Sorted by entity: 1,000 pods of 5 rows each. Every row of a stride would differ; the
        // column holds a fifth as many values as rows, a small dictionary.
        let uids = StringArray::from_iter_values((0..n).map(|i| format!("uid-{:032}", i / 5)));
        // Values repeated by 4 neighbours, but their distinct values take 250 KB.
        let evidence = StringArray::from_iter_values((0..n).map(|i| format!("{:0200}", i / 4)));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(ts),
                Arc::new(pods),
                Arc::new(summaries),
                Arc::new(uids),
                Arc::new(evidence),
                // Runs of 50 rows.
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("ns-{}", i / 50)),
                )),
            ],
        )
        .expect("batch");
        let dir = tempfile::tempdir().expect("tmp");
        let opts = WriteOptions {
            zstd_level: 3,
            row_group_rows: 1 << 20,
        };
        let entry =
            write_file(dir.path(), "part.parquet", 0, &batch, "t", 0, &opts).expect("written");
        let path = dir.path().join(&entry.path);
        let options = ReadOptionsBuilder::new().with_page_index().build();
        let reader =
            SerializedFileReader::new_with_options(File::open(&path).expect("open"), options)
                .expect("read");
        let rg = reader.metadata().row_group(0);
        let column = |name: &str| {
            rg.columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .expect("column")
        };
        let ts = column(TS);
        assert_eq!(ts.compression(), Compression::UNCOMPRESSED);
        assert!(ts.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        assert!(ts.dictionary_page_offset().is_none());
        let pod = column("pod");
        assert_eq!(pod.compression(), Compression::UNCOMPRESSED);
        assert!(pod.dictionary_page_offset().is_some());
        let summary = column("summary");
        assert!(matches!(summary.compression(), Compression::ZSTD(_)));
        assert!(summary.dictionary_page_offset().is_none());
        let uid = column("pod_uid");
        assert_eq!(uid.compression(), Compression::UNCOMPRESSED);
        assert!(uid.dictionary_page_offset().is_some());
        let evidence = column("evidence");
        assert!(matches!(evidence.compression(), Compression::ZSTD(_)));
        assert!(evidence.dictionary_page_offset().is_none());
        let namespace = column("namespace");
        assert_eq!(namespace.compression(), Compression::UNCOMPRESSED);
        assert!(namespace.dictionary_page_offset().is_none());
        assert!(
            namespace
                .encodings()
                .any(|e| e == Encoding::DELTA_BYTE_ARRAY)
        );
        // Pages of at most ROWS_PER_PAGE rows, and the key index beside the file.
        let pages = reader
            .metadata()
            .offset_index()
            .map_or(0, |o| o[0][0].page_locations().len());
        assert!(pages >= n as usize / ROWS_PER_PAGE, "{pages} pages");
        assert!(keyindex::sidecar(&path).exists());
    }

    #[test]
    fn hours_split_apart_and_rows_sort_by_entity_then_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                TS,
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                true,
            ),
            Field::new("namespace", DataType::Utf8, true),
            Field::new("pod", DataType::Utf8, true),
            Field::new("gpu_uuid", DataType::Utf8, true),
        ]));
        let h = NS_PER_HOUR;
        // (ts, namespace, pod, gpu) over two hours, in arrival order.
        type Row<'a> = (
            Option<i64>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let rows: [Row<'_>; 8] = [
            (Some(h + 5), Some("shop"), Some("b"), Some("GPU-2")),
            (Some(2 * h + 1), Some("a"), Some("x"), None),
            (Some(h + 1), Some("shop"), Some("b"), Some("GPU-1")),
            (Some(h + 9), None, None, Some("GPU-9")),
            (Some(h + 2), Some("shop"), Some("a"), None),
            (Some(h + 3), Some("ml"), Some("z"), Some("GPU-3")),
            (Some(h), Some("shop"), Some("b"), Some("GPU-1")),
            (Some(2 * h), Some("a"), Some("x"), None),
        ];
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampNanosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("batch");
        // Split over two input batches, as a flush of several appends is.
        let parts = split_by_hour(&schema, &[batch.slice(0, 3), batch.slice(3, 5)]).expect("split");
        let seen: Vec<(i64, Vec<String>)> = parts
            .iter()
            .map(|(hour, b)| {
                let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
                let text = |c: usize, i: usize| {
                    let v = b.column(c).as_string::<i32>();
                    if v.is_null(i) {
                        "-".to_string()
                    } else {
                        v.value(i).to_string()
                    }
                };
                let rows = (0..b.num_rows())
                    .map(|i| {
                        format!(
                            "{} {} {} {}",
                            ts.value(i) % h,
                            text(1, i),
                            text(2, i),
                            text(3, i)
                        )
                    })
                    .collect();
                (*hour, rows)
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    3600,
                    vec![
                        "9 - - GPU-9".to_string(),
                        "3 ml z GPU-3".to_string(),
                        "2 shop a -".to_string(),
                        "0 shop b GPU-1".to_string(),
                        "1 shop b GPU-1".to_string(),
                        "5 shop b GPU-2".to_string(),
                    ]
                ),
                (7200, vec!["0 a x -".to_string(), "1 a x -".to_string()]),
            ]
        );
        assert_eq!(sort_columns(&schema), Ok(vec![1, 2, 3, 0]));
    }
}
