//! The Parquet store: durability, atomic visibility, recovery, compaction, retention.
//!
//! Crash states are produced by copying the data directory while the store runs (what a
//! `kill -9` leaves on disk, since every acknowledged write is fsynced before it returns) and
//! by editing that copy the way a crash at a given step would.

use crate::fixtures;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use fixtures::{HOUR, T0, falco};
use gpusiem::store::{Store, StoreConfig, TableAccess};
use gpusiem_ingest::Stream;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn quiet_config() -> StoreConfig {
    // Nothing happens in the background unless a test asks for it.
    StoreConfig {
        flush_interval_secs: 3600,
        compaction_interval_secs: 3600,
        delete_grace_secs: 0,
        ..StoreConfig::default()
    }
}

/// Pods of every visible row of `table`, sorted (files + tail).
fn pods(store: &Store, table: &str) -> Vec<String> {
    let snap = store.snapshot(table).expect("snapshot");
    let mut batches: Vec<RecordBatch> = snap.tail.clone();
    for (path, _) in &snap.files {
        batches.extend(read_parquet(path));
    }
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name("pod").expect("pod column");
        let s = c.as_string::<i32>();
        out.extend((0..s.len()).map(|i| s.value(i).to_string()));
    }
    out.sort();
    out
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = fs::File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("footer")
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else if e.file_name() != "store.lock" {
            fs::copy(e.path(), dst).expect("copy");
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn wal_segments(root: &Path, table: &str) -> Vec<PathBuf> {
    files_under(&root.join("wal").join(table))
}

fn expected(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn appended_rows_are_visible_at_once_and_after_a_flush_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    store
        .append(
            Stream::FalcoEvents,
            &falco(&[(T0, Some("shop"), "a"), (T0 + HOUR, Some("shop"), "b")]),
        )
        .await
        .expect("append");
    // In the tail, before any flush.
    assert_eq!(pods(&store, "falco_events"), expected(&["a", "b"]));
    assert!(
        store
            .snapshot("falco_events")
            .expect("snap")
            .files
            .is_empty()
    );

    store.flush().await.expect("flush");
    let snap = store.snapshot("falco_events").expect("snap");
    assert!(snap.tail.is_empty());
    // One file per hour, in its hour partition.
    let mut paths: Vec<String> = snap.files.iter().map(|(_, f)| f.path.clone()).collect();
    paths.sort();
    assert_eq!(paths.len(), 2);
    assert!(
        paths[0].starts_with("dt=2024-05-01/hour=00/part-"),
        "{paths:?}"
    );
    assert!(
        paths[1].starts_with("dt=2024-05-01/hour=01/part-"),
        "{paths:?}"
    );
    assert_eq!(pods(&store, "falco_events"), expected(&["a", "b"]));
    // The covered WAL segment is gone; only the fresh, empty one remains.
    assert_eq!(wal_segments(dir.path(), "falco_events").len(), 1);

    store
        .append(Stream::FalcoEvents, &falco(&[(T0, Some("shop"), "c")]))
        .await
        .expect("append");
    assert_eq!(pods(&store, "falco_events"), expected(&["a", "b", "c"]));
    store.close().await.expect("close");
    // Closing flushes: every row is in Parquet, no temporary file anywhere.
    let all = files_under(dir.path());
    assert!(
        all.iter().all(|p| !p
            .file_name()
            .expect("name")
            .to_string_lossy()
            .ends_with(".tmp")),
        "{all:?}"
    );
    let reopened = Store::open_read_only(dir.path()).await.expect("read-only");
    assert_eq!(pods(&reopened, "falco_events"), expected(&["a", "b", "c"]));
    assert!(
        store
            .append(Stream::FalcoEvents, &falco(&[(T0, None, "late")]))
            .await
            .is_err(),
        "appends after close fail"
    );
}

#[tokio::test]
async fn a_crash_before_any_flush_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crash = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    for i in 0..5 {
        store
            .append(
                Stream::FalcoEvents,
                &falco(&[(T0 + i, Some("shop"), &format!("p{i}"))]),
            )
            .await
            .expect("append");
    }
    store
        .append_findings(&[fixtures::finding("f1", T0, Some("shop"), "p0", 0)])
        .await
        .expect("findings");
    copy_dir(dir.path(), crash.path());

    let recovered = Store::open(crash.path(), &quiet_config())
        .await
        .expect("recover");
    assert_eq!(
        pods(&recovered, "falco_events"),
        expected(&["p0", "p1", "p2", "p3", "p4"])
    );
    assert_eq!(pods(&recovered, "findings"), expected(&["p0"]));
    assert_eq!(recovered.stats().recovered_rows, 6);
    // Flushing the recovered rows and reopening does not duplicate them.
    recovered.close().await.expect("close");
    drop(recovered);
    let again = Store::open_read_only(crash.path()).await.expect("reopen");
    assert_eq!(
        pods(&again, "falco_events"),
        expected(&["p0", "p1", "p2", "p3", "p4"])
    );
}

#[tokio::test]
async fn a_crash_between_rename_and_commit_leaves_an_orphan_that_recovery_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crash = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    store
        .append(Stream::FalcoEvents, &falco(&[(T0, Some("shop"), "a")]))
        .await
        .expect("append");
    copy_dir(dir.path(), crash.path());
    // The flush writes its file; in the crashed copy the file exists (renamed) but the manifest
    // and the WAL are as before the commit. Also a temporary file of an interrupted write.
    store.flush().await.expect("flush");
    let (file, entry) = store
        .snapshot("falco_events")
        .expect("snap")
        .files
        .remove(0);
    let orphan = crash.path().join("tables/falco_events").join(&entry.path);
    fs::create_dir_all(orphan.parent().expect("dir")).expect("mkdir");
    fs::copy(&file, &orphan).expect("copy orphan");
    let temp = orphan.with_file_name(".part-x.parquet.1234.tmp");
    fs::write(&temp, b"PAR1 half a file").expect("temp");
    // And the orphan's key index.
    let with_keys = |p: &std::path::Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".keys");
        PathBuf::from(s)
    };
    let orphan_keys = with_keys(&orphan);
    fs::copy(with_keys(&file), &orphan_keys).expect("copy orphan index");

    // A reader ignores both (it goes by the manifest) and sees the row once, from the WAL.
    let reader = Store::open_read_only(crash.path())
        .await
        .expect("read-only");
    assert_eq!(pods(&reader, "falco_events"), expected(&["a"]));
    let recovered = Store::open(crash.path(), &quiet_config())
        .await
        .expect("recover");
    assert_eq!(pods(&recovered, "falco_events"), expected(&["a"]));
    assert!(
        !orphan.exists() && !temp.exists() && !orphan_keys.exists(),
        "orphan, its index and the temp file are deleted"
    );
    assert_eq!(recovered.stats().orphans_removed, 3);
}

#[tokio::test]
async fn a_crash_between_commit_and_wal_deletion_does_not_duplicate_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    store
        .append(
            Stream::FalcoEvents,
            &falco(&[(T0, Some("shop"), "a"), (T0 + 1, Some("shop"), "b")]),
        )
        .await
        .expect("append");
    copy_dir(dir.path(), before.path());
    store.flush().await.expect("flush");
    store.close().await.expect("close");
    drop(store);
    // Put the covered segment back, as if the process died before deleting it.
    for seg in wal_segments(before.path(), "falco_events") {
        let dst = dir
            .path()
            .join("wal/falco_events")
            .join(seg.file_name().expect("name"));
        fs::copy(&seg, dst).expect("restore segment");
    }
    let reader = Store::open_read_only(dir.path()).await.expect("read-only");
    assert_eq!(pods(&reader, "falco_events"), expected(&["a", "b"]));
    let recovered = Store::open(dir.path(), &quiet_config())
        .await
        .expect("recover");
    assert_eq!(pods(&recovered, "falco_events"), expected(&["a", "b"]));
    assert_eq!(recovered.stats().recovered_rows, 0);
}

#[tokio::test]
async fn a_torn_wal_tail_yields_the_valid_prefix_and_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crash = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    for p in ["a", "b", "c"] {
        store
            .append(Stream::FalcoEvents, &falco(&[(T0, Some("shop"), p)]))
            .await
            .expect("append");
    }
    copy_dir(dir.path(), crash.path());
    let seg = wal_segments(crash.path(), "falco_events")
        .pop()
        .expect("segment");
    let len = fs::metadata(&seg).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(len - 10)
        .expect("truncate");
    let recovered = Store::open(crash.path(), &quiet_config())
        .await
        .expect("recover");
    assert_eq!(pods(&recovered, "falco_events"), expected(&["a", "b"]));
    let stats = recovered.stats();
    assert_eq!(stats.wal_damaged_segments, 1);
    assert!(
        stats.wal_skipped_bytes > 0 && stats.wal_skipped_bytes < len,
        "{stats:?}"
    );
}

#[tokio::test]
async fn compaction_merges_small_files_of_an_hour_into_one_sorted_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        compaction_min_files: 3,
        ..quiet_config()
    };
    let store = Store::open(dir.path(), &config).await.expect("open");
    let mut names = Vec::new();
    for i in 0..4i64 {
        // Out of order on purpose: the merged file is sorted by pod, then time, anyway.
        let p = ["b", "a", "b", "a"][i as usize].to_string();
        store
            .append(
                Stream::FalcoEvents,
                &falco(&[(T0 + (4 - i) * 1000, Some("shop"), &p)]),
            )
            .await
            .expect("append");
        store.flush().await.expect("flush");
        names.push(p);
    }
    assert_eq!(store.snapshot("falco_events").expect("snap").files.len(), 4);
    // The hour is still open: 4 small files ≥ compaction_min_files.
    store
        .maintain_at(T0 / 1_000_000_000 + 60)
        .await
        .expect("maintain");
    let snap = store.snapshot("falco_events").expect("snap");
    assert_eq!(snap.files.len(), 1);
    assert_eq!(snap.files[0].1.rows, 4);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(pods(&store, "falco_events"), expected(&names));
    let rows: Vec<(String, i64)> = read_parquet(&snap.files[0].0)
        .iter()
        .flat_map(|b| {
            let ts = b
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            let pod = b.column_by_name("pod").expect("pod").as_string::<i32>();
            (0..b.num_rows())
                .map(|i| (pod.value(i).to_string(), ts.value(i) - T0))
                .collect::<Vec<_>>()
        })
        .collect();
    let want =
        [("a", 1000), ("a", 3000), ("b", 2000), ("b", 4000)].map(|(p, t)| (p.to_string(), t));
    assert_eq!(rows, want, "sorted by pod, then ts");
    // delete_grace_secs = 0: the replaced files are gone from disk.
    let on_disk: Vec<PathBuf> = files_under(&dir.path().join("tables/falco_events"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(on_disk, vec![snap.files[0].0.clone()]);
    // Key indexes go with their files: only the merged file's is left.
    let indexes: Vec<PathBuf> = files_under(&dir.path().join("tables/falco_events"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "keys"))
        .collect();
    let mut merged_index = snap.files[0].0.clone().into_os_string();
    merged_index.push(".keys");
    assert_eq!(indexes, vec![PathBuf::from(merged_index)]);
    // A closed hour merges any two small files.
    store
        .append(
            Stream::FalcoEvents,
            &falco(&[(T0 + 5, Some("shop"), "late")]),
        )
        .await
        .expect("append");
    store.flush().await.expect("flush");
    store
        .maintain_at(T0 / 1_000_000_000 + 3600 + 601)
        .await
        .expect("maintain");
    assert_eq!(store.snapshot("falco_events").expect("snap").files.len(), 1);
    assert_eq!(pods(&store, "falco_events").len(), 5);
}

#[tokio::test]
async fn retention_drops_old_hours_then_the_oldest_beyond_the_size_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        retention_hours: 24,
        max_bytes: 0,
        ..quiet_config()
    };
    let store = Store::open(dir.path(), &config).await.expect("open");
    for h in 0..5 {
        store
            .append(
                Stream::FalcoEvents,
                &falco(&[(T0 + h * HOUR, Some("shop"), &format!("h{h}"))]),
            )
            .await
            .expect("append");
    }
    store.flush().await.expect("flush");
    // Now = 24 h after the end of hour 1: hours 0 and 1 are older than the retention.
    store
        .maintain_at((T0 + 2 * HOUR) / 1_000_000_000 + 24 * 3600)
        .await
        .expect("maintain");
    assert_eq!(pods(&store, "falco_events"), expected(&["h2", "h3", "h4"]));
    assert_eq!(store.stats().expired_files, 2);
    drop(store);
    // By size: keep at most about two files' worth; the oldest go first.
    let config = StoreConfig {
        retention_hours: 0,
        ..quiet_config()
    };
    let dir2 = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), dir2.path());
    let store = Store::open(dir2.path(), &config).await.expect("open");
    let one = store.snapshot("falco_events").expect("snap").files[0]
        .1
        .bytes;
    drop(store);
    let config = StoreConfig {
        max_bytes: 2 * one + one / 2,
        ..config
    };
    let dir3 = tempfile::tempdir().expect("tempdir");
    copy_dir(dir2.path(), dir3.path());
    let store = Store::open(dir3.path(), &config).await.expect("open");
    store.maintain_at(0).await.expect("maintain");
    assert_eq!(pods(&store, "falco_events"), expected(&["h3", "h4"]));
}

#[tokio::test]
async fn the_read_only_store_changes_nothing_and_a_second_writer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    store
        .append(Stream::FalcoEvents, &falco(&[(T0, Some("shop"), "a")]))
        .await
        .expect("append");
    store.flush().await.expect("flush");
    store
        .append(Stream::FalcoEvents, &falco(&[(T0, Some("shop"), "b")]))
        .await
        .expect("append");
    let err = Store::open(dir.path(), &quiet_config())
        .await
        .expect_err("second writer");
    assert!(err.to_string().contains("in use"), "{err}");

    let before: BTreeMap<PathBuf, u64> = files_under(dir.path())
        .into_iter()
        .map(|p| (p.clone(), fs::metadata(&p).expect("meta").len()))
        .collect();
    let reader = Store::open_read_only(dir.path()).await.expect("read-only");
    assert_eq!(pods(&reader, "falco_events"), expected(&["a", "b"]));
    assert!(
        reader
            .append(Stream::FalcoEvents, &falco(&[(T0, None, "x")]))
            .await
            .is_err()
    );
    reader.close().await.expect("close");
    let after: BTreeMap<PathBuf, u64> = files_under(dir.path())
        .into_iter()
        .map(|p| (p.clone(), fs::metadata(&p).expect("meta").len()))
        .collect();
    assert_eq!(before, after);
}

#[tokio::test]
async fn registered_tables_recover_and_report_their_access() {
    use std::sync::Arc;

    use arrow::array::{StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    let dir = tempfile::tempdir().expect("tempdir");
    let crash = tempfile::tempdir().expect("tempdir");
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("principal", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(TimestampNanosecondArray::from(vec![T0]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec!["alice"])),
        ],
    )
    .expect("batch");
    let store = Store::open(dir.path(), &quiet_config())
        .await
        .expect("open");
    assert!(
        store.append_table("api_audit", &batch).await.is_err(),
        "unknown table"
    );
    assert!(
        store
            .register_admin_table("../evil", schema.clone())
            .is_err()
    );
    let no_ts = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
    assert!(
        store.register_table("bad", no_ts).is_err(),
        "a table needs ts"
    );
    store
        .register_admin_table("api_audit", schema.clone())
        .expect("register");
    store
        .append_table("api_audit", &batch)
        .await
        .expect("append");
    let access: BTreeMap<String, TableAccess> = store
        .tables()
        .into_iter()
        .map(|t| (t.name, t.access))
        .collect();
    assert_eq!(access["api_audit"], TableAccess::Admin);
    assert_eq!(access["findings"], TableAccess::Namespaced);
    assert_eq!(access["gpu_metrics"], TableAccess::Namespaced);

    copy_dir(dir.path(), crash.path());
    // Recovered on open, before the API registers it again.
    let recovered = Store::open(crash.path(), &quiet_config())
        .await
        .expect("recover");
    let snap = recovered.snapshot("api_audit").expect("snapshot");
    assert_eq!(
        snap.tail.iter().map(RecordBatch::num_rows).sum::<usize>(),
        1
    );
    assert_eq!(
        recovered
            .tables()
            .into_iter()
            .find(|t| t.name == "api_audit")
            .expect("table")
            .access,
        TableAccess::Admin
    );
}

#[tokio::test]
async fn appends_are_refused_while_the_tail_is_over_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = StoreConfig {
        max_tail_bytes: 1,
        flush_max_bytes: 1,
        ..quiet_config()
    };
    let store = Store::open(dir.path(), &tiny).await.expect("open");
    let err = store
        .append(Stream::FalcoEvents, &falco(&[(T0, Some("shop"), "a")]))
        .await
        .expect_err("tail full");
    assert!(err.to_string().contains("tail is full"), "{err}");
    assert_eq!(store.stats().append_failures, 1);
    assert!(
        pods(&store, "falco_events").is_empty(),
        "a refused append is not visible"
    );
}
