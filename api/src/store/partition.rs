//! Hour partitions: rows sorted by `ts`, split by hour, written as Parquet files under
//! `dt=YYYY-MM-DD/hour=HH/`, and read back for compaction.
//!
//! Files are zstd-compressed, carry column and page statistics (time and namespace pruning),
//! bloom filters on the entity columns analysts pivot on (a point lookup by pod or GPU skips
//! the row groups that cannot hold it), small pages and a key index beside them (such a
//! lookup decodes only the pages holding its rows, see [`super::keyindex`]), the `ts` sort
//! order, and in their key-value metadata the table and the last WAL segment they cover
//! (enough to rebuild a lost manifest).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortOptions, concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampNanosecondType};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

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

/// Concatenates `batches`, sorts by `ts` and splits them at hour boundaries.
pub(crate) fn split_by_hour(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<(i64, RecordBatch)>, ArrowError> {
    let ts_idx = check_ts(schema).map_err(ArrowError::SchemaError)?;
    let all = concat_batches(schema, batches)?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let order = sort_to_indices(
        all.column(ts_idx),
        Some(SortOptions {
            descending: false,
            nulls_first: true,
        }),
        None,
    )?;
    let sorted = take_record_batch(&all, &order)?;
    drop(all);
    let ts = sorted
        .column(ts_idx)
        .as_primitive::<TimestampNanosecondType>();
    let hour_at = |i: usize| {
        if ts.is_null(i) {
            0
        } else {
            hour_of(ts.value(i))
        }
    };
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

/// Columns of `batch` whose values look nearly unique (in a sample of up to 2,048 non-null rows
/// spread over the batch, more than half are distinct), and whether each is wide text.
fn high_cardinality(batch: &RecordBatch) -> Vec<(String, bool)> {
    let rows = batch.num_rows();
    let step = (rows / 2048).max(1);
    let mut out = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let picked: Vec<u32> = (0..rows)
            .step_by(step)
            .filter(|&i| c.is_valid(i))
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        if picked.len() < 64 {
            continue;
        }
        let Ok(sample) = arrow::compute::take(c, &UInt32Array::from(picked), None) else {
            continue;
        };
        let Ok(converter) = RowConverter::new(vec![SortField::new(f.data_type().clone())]) else {
            continue;
        };
        let Ok(encoded) = converter.convert_columns(&[sample]) else {
            continue;
        };
        let distinct: HashSet<&[u8]> = encoded.iter().map(|r| r.data()).collect();
        if distinct.len() * 2 > encoded.num_rows() {
            let wide = c.as_string_opt::<i32>().is_some_and(|v| {
                v.value_data().len() >= WIDE_VALUE_BYTES * v.len().saturating_sub(v.null_count())
            });
            out.push((f.name().clone(), wide));
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
    let ts_idx = check_ts(schema)?;
    let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| e.to_string())?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(ROWS_PER_PAGE)
        .set_write_batch_size(PAGE_CHECK_ROWS)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: i32::try_from(ts_idx).map_err(|e| e.to_string())?,
            descending: false,
            nulls_first: true,
        }]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("gpusiem.table".to_string(), table.to_string()),
            KeyValue::new("gpusiem.wal_through".to_string(), wal_through.to_string()),
        ]));
    let unique: HashMap<String, bool> = high_cardinality(batch).into_iter().collect();
    for f in schema.fields() {
        let dt = f.data_type();
        if dt.is_nested() {
            continue;
        }
        let c = ColumnPath::from(f.name().as_str());
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

/// Writes `batch` (rows of one hour, sorted by `ts`) to `table_dir/rel_path` atomically:
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
        ]));
        let ts = TimestampNanosecondArray::from_iter_values((0..n).map(|i| i * 1_000_003))
            .with_timezone("UTC");
        let pods = StringArray::from_iter_values((0..n).map(|i| format!("pod-{}", i % 7)));
        let summaries = StringArray::from_iter_values(
            (0..n).map(|i| format!("GPU memory rose {i} MiB over its baseline on a pod")),
        );
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(ts), Arc::new(pods), Arc::new(summaries)],
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
        // Pages of at most ROWS_PER_PAGE rows, and the key index beside the file.
        let pages = reader
            .metadata()
            .offset_index()
            .map_or(0, |o| o[0][0].page_locations().len());
        assert!(pages >= n as usize / ROWS_PER_PAGE, "{pages} pages");
        assert!(keyindex::sidecar(&path).exists());
    }
}
