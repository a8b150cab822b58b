//! Crash test (issue 4): `kill -9` of `gpusiem run` while it ingests; after every restart each
//! acknowledged record is queryable exactly once and every Parquet file opens.
//!
//! Six kill/restart cycles on one data directory, each aimed twice at each of these moments of
//! the store's write path, while clients keep posting Falco alerts and audit events:
//!
//! 1. while a temporary file (a Parquet file or a manifest) is being written;
//! 2. after compaction has replaced files, again while a temporary file is being written;
//! 3. after a flush committed its manifest but before it deleted the WAL segments it covers
//!    (a replay of those segments would duplicate rows).
//!
//! The store runs with one-second flush and compaction intervals, a tiny flush threshold and
//! event times spread over three closed hours, so flushes, compactions and deferred deletions
//! go on the whole time. After each kill the dead process's directory is inspected: every
//! manifest parses, every file it lists is on disk and reads fully, every other `*.parquet`
//! reads fully, nothing but table directories exists. After each restart the temporary and
//! uncommitted files are gone (and counted in `gpusiem_store_orphans_removed_total`), and every
//! acknowledged record (a `2xx` answer) is found exactly once through `/api/v1/query`;
//! unacknowledged ones may or may not be there, and nothing that was never sent is. A last
//! restart ends with SIGTERM, after which only committed files remain and their rows, read
//! with the `parquet` crate, hold each acknowledged record exactly once.
#![allow(clippy::unwrap_used, missing_docs)]

use crate::service_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use service_support::Service;

/// The tables a run creates; nothing else may appear under `tables/` or `wal/`.
const TABLES: [&str; 5] = [
    "api_audit",
    "falco_events",
    "findings",
    "gpu_metrics",
    "k8s_audit",
];
/// Tables the clients write to (directly, or through the API audit trail).
const BUSY_TABLES: [&str; 3] = ["api_audit", "falco_events", "k8s_audit"];
/// Prefix of every id the clients make up.
const MARKER: &str = "crash-";
/// 2024-05-07T15:00:00Z: event times fall in this hour and the two after it, all long closed,
/// so compaction may merge any two small files of an hour.
const BASE_NS: i64 = 1_715_094_000_000_000_000;
const SPREAD_NS: i64 = 3 * 3_600_000_000_000;
/// Longest wait for a cycle's kill moment; after it the kill happens anyway.
const KILL_DEADLINE: Duration = Duration::from_secs(8);

fn start(config: &Path) -> Service {
    service_support::start(["--config".as_ref(), config.as_os_str()])
}

/// `busy`: flushes and compactions all the time. Otherwise the store neither flushes nor
/// compacts until shutdown, so a clean stop leaves no file replaced by compaction and still
/// waiting for its grace period: only committed files.
fn write_config(dir: &Path, data: &Path, busy: bool) -> PathBuf {
    let store = if busy {
        "flush_interval_secs = 1\nflush_max_rows = 40\ncompaction_interval_secs = 1\ncompaction_min_files = 3\n\
         compaction_closed_after_secs = 0\ndelete_grace_secs = 3\nrow_group_rows = 16\n"
    } else {
        "flush_interval_secs = 3600\ncompaction_interval_secs = 3600\n"
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n[store]\n{store}retention_hours = 0\nmax_bytes = 0\n\n\
         [query]\nmax_rows = 1000000\n"
    );
    let path = dir.join(if busy { "busy.toml" } else { "quiet.toml" });
    fs::write(&path, text).unwrap();
    path
}

fn fixture_lines(rel: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/real")
        .join(rel);
    let text = fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Real records that the clients copy, each under a fresh id and event time.
struct Templates {
    falco: Vec<Value>,
    audit: Vec<Value>,
}

fn templates() -> Templates {
    let falco = fixture_lines("falco/elastic-falco-alerts-real.jsonl");
    let audit = [
        "k8s-audit/falco-trace-exec_pod.jsonl",
        "k8s-audit/falco-trace-create_nginx_pod_privileged.jsonl",
        "k8s-audit/falco-trace-create_secret.jsonl",
        "k8s-audit/falco-trace-attach_pod.jsonl",
        "k8s-audit/falco-trace-create_clusterrolebinding.jsonl",
    ]
    .iter()
    .flat_map(|f| fixture_lines(f))
    .collect();
    Templates { falco, audit }
}

/// Event time number `k`: scattered over three hours, so every flush sorts and splits.
fn event_time(k: u64) -> String {
    let ns = BASE_NS + (i64::try_from(k).unwrap() * 7_919_000_003).rem_euclid(SPREAD_NS);
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Falco,
    Audit,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Falco => "/ingest/falco",
            Kind::Audit => "/ingest/k8s-audit",
        }
    }

    fn record(self, templates: &Templates, pick: usize, id: &str, time: &str) -> Value {
        match self {
            Kind::Falco => {
                let mut v = templates.falco[pick % templates.falco.len()].clone();
                v["uuid"] = json!(id);
                v["time"] = json!(time);
                v
            }
            Kind::Audit => {
                let mut v = templates.audit[pick % templates.audit.len()].clone();
                v["auditID"] = json!(id);
                for key in ["stageTimestamp", "requestReceivedTimestamp", "timestamp"] {
                    if key == "stageTimestamp" || v.get(key).is_some() {
                        v[key] = json!(time);
                    }
                }
                v
            }
        }
    }
}

/// What the clients of one stream sent and what was acknowledged, over all cycles.
#[derive(Default)]
struct Ledger {
    /// Every id sent at least once.
    attempted: Mutex<HashSet<String>>,
    /// Every id whose request was answered `2xx` (with its body read in full).
    acked: Mutex<HashSet<String>>,
    /// Answers by status; `0`: no answer (connection lost, body cut off).
    answers: Mutex<BTreeMap<u16, usize>>,
}

impl Ledger {
    fn answer(&self, status: u16) {
        *self.answers.lock().unwrap().entry(status).or_default() += 1;
    }
}

/// One client: posts requests of 1 to 4 new records until `stop`.
#[allow(clippy::too_many_arguments)] // a test task; a struct for its inputs would only move them
async fn client_task(
    client: reqwest::Client,
    url: String,
    kind: Kind,
    tag: String,
    templates: Arc<Templates>,
    clock: Arc<AtomicU64>,
    ledger: Arc<Ledger>,
    acked_rows: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = 1 + (i * 7 + tag.len()) % 4;
        let ids: Vec<String> = (0..n).map(|j| format!("{MARKER}{tag}-{i}-{j}")).collect();
        let mut body = String::new();
        for (j, id) in ids.iter().enumerate() {
            let time = event_time(clock.fetch_add(1, Ordering::Relaxed));
            body.push_str(
                &serde_json::to_string(&kind.record(&templates, i + j, id, &time)).unwrap(),
            );
            body.push('\n');
        }
        i += 1;
        ledger.attempted.lock().unwrap().extend(ids.iter().cloned());
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let status = r.status().as_u16();
                match r.json::<Value>().await {
                    Ok(v) => {
                        assert_eq!(
                            v["accepted"].as_u64(),
                            Some(n as u64),
                            "{kind:?}: every copied record decodes: {v}"
                        );
                        ledger.answer(status);
                        ledger.acked.lock().unwrap().extend(ids);
                        acked_rows.fetch_add(n, Ordering::Relaxed);
                    }
                    // The answer was cut off by the kill: not acknowledged.
                    Err(_) => ledger.answer(0),
                }
            }
            Ok(r) => {
                let status = r.status().as_u16();
                // 429 (pipeline full) and 503 (shutting down, not written) are refusals a
                // sender retries; anything else is a broken request.
                assert!(
                    status == 429 || status == 503,
                    "{kind:?}: {status} {}",
                    r.text().await.unwrap_or_default()
                );
                ledger.answer(status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                ledger.answer(0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The moment a cycle aims its SIGKILL at.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// A temporary file (Parquet or manifest) is on disk: a flush or compaction is writing.
    TempFile,
    /// Compaction has replaced files; then, as for `TempFile`.
    TempFileAfterCompaction,
    /// A manifest's `wal_through` covers a WAL segment still on disk: a flush committed and has
    /// not deleted the segments yet.
    CommittedWalNotDeleted,
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn any_temp_file(tables: &Path) -> bool {
    files_under(tables)
        .iter()
        .any(|p| p.file_name().is_some_and(|n| is_temp(&n.to_string_lossy())))
}

/// The manifest's `wal_through` without parsing the whole manifest (it is read in a tight loop).
fn wal_through(table_dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(table_dir.join("_manifest.json")).ok()?;
    let at = text.find("\"wal_through\":")? + "\"wal_through\":".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

fn listed_files(table_dir: &Path) -> Option<Vec<String>> {
    let m: Value =
        serde_json::from_slice(&fs::read(table_dir.join("_manifest.json")).ok()?).ok()?;
    Some(
        m["files"]
            .as_array()?
            .iter()
            .filter_map(|f| f["path"].as_str().map(String::from))
            .collect(),
    )
}

/// Watches the data directory until the moment `at` comes (once `min_acked` records were
/// acknowledged and a flush committed a file), then kills the service with SIGKILL (what
/// `Child::kill` sends on Unix). Returns what triggered the kill.
fn kill_when(
    mut child: Child,
    data: &Path,
    at: KillAt,
    min_acked: usize,
    acked_rows: &AtomicUsize,
) -> String {
    let tables = data.join("tables");
    let started = Instant::now();
    let mut armed = false;
    let mut ever_listed: HashSet<String> = HashSet::new();
    let mut compacted = false;
    let trigger = loop {
        if started.elapsed() > KILL_DEADLINE {
            break format!("deadline (armed: {armed}, compacted: {compacted})");
        }
        if matches!(at, KillAt::TempFileAfterCompaction) && !compacted {
            for t in BUSY_TABLES {
                if let Some(files) = listed_files(&tables.join(t)) {
                    let now: HashSet<String> =
                        files.into_iter().map(|f| format!("{t}/{f}")).collect();
                    compacted |= ever_listed
                        .iter()
                        .any(|f| f.starts_with(&format!("{t}/")) && !now.contains(f));
                    ever_listed.extend(now);
                }
            }
        }
        armed = armed
            || (acked_rows.load(Ordering::Relaxed) >= min_acked
                && listed_files(&tables.join("falco_events")).is_some_and(|f| !f.is_empty()));
        if armed {
            match at {
                KillAt::TempFile if any_temp_file(&tables) => {
                    break "a temporary file was on disk".to_string();
                }
                KillAt::TempFileAfterCompaction if compacted && any_temp_file(&tables) => {
                    break "compaction had replaced files and a temporary file was on disk"
                        .to_string();
                }
                KillAt::CommittedWalNotDeleted => {
                    let covered = BUSY_TABLES.iter().find_map(|t| {
                        let through = wal_through(&tables.join(t))?;
                        let segs = fs::read_dir(data.join("wal").join(t)).ok()?;
                        segs.flatten()
                            .filter_map(|e| {
                                e.file_name()
                                    .to_string_lossy()
                                    .strip_suffix(".wal")?
                                    .parse::<u64>()
                                    .ok()
                            })
                            .find(|seq| *seq <= through)
                            .map(|seq| {
                                format!("{t}: the manifest covers WAL segment {seq}, still on disk")
                            })
                    });
                    if let Some(c) = covered {
                        break c;
                    }
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_micros(300));
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the service was killed, not stopped: {status}"
    );
    trigger
}

/// Reads a Parquet file in full; returns its rows (checked against the footer).
fn read_parquet(path: &Path) -> u64 {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap_or_else(|e| panic!("{}: footer unreadable: {e}", path.display()));
    let declared = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap();
    let mut rows = 0;
    for batch in builder.build().unwrap() {
        rows += batch
            .unwrap_or_else(|e| panic!("{}: unreadable: {e}", path.display()))
            .num_rows() as u64;
    }
    assert_eq!(
        rows,
        declared,
        "{}: rows read against the footer",
        path.display()
    );
    rows
}

/// The ids in `column` of every file a table's manifest lists.
fn parquet_ids(table_dir: &Path, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for rel in listed_files(table_dir).unwrap() {
        let path = table_dir.join(rel);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch.column_by_name(column).unwrap().as_string::<i32>();
            out.extend(
                (0..ids.len())
                    .filter(|i| ids.is_valid(*i))
                    .map(|i| ids.value(i).to_string())
                    .filter(|s| s.starts_with(MARKER)),
            );
        }
    }
    out
}

/// What a stopped service left in `tables/` besides committed files.
#[derive(Debug, Default)]
struct Debris {
    /// Temporary files (a write the kill interrupted).
    temp: Vec<PathBuf>,
    /// Complete Parquet files no manifest lists (published, not committed; or replaced by
    /// compaction and waiting for their grace period).
    unlisted: Vec<PathBuf>,
    /// Files the manifests list.
    listed: usize,
}

/// Checks the directory of a stopped service: only table directories; every manifest parses;
/// every listed file is on disk with its size and rows; every other Parquet file reads fully.
fn inspect(data: &Path) -> Debris {
    for area in ["tables", "wal"] {
        for e in fs::read_dir(data.join(area)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                e.file_type().unwrap().is_dir() && TABLES.contains(&name.as_str()),
                "{area}/{name} is not a table"
            );
        }
    }
    for e in fs::read_dir(data.join("wal")).unwrap().flatten() {
        for f in files_under(&e.path()) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.strip_suffix(".wal")
                    .is_some_and(|s| s.parse::<u64>().is_ok()),
                "{}: not a WAL segment",
                f.display()
            );
        }
    }
    let mut debris = Debris::default();
    for e in fs::read_dir(data.join("tables")).unwrap().flatten() {
        let dir = e.path();
        let bytes = fs::read(dir.join("_manifest.json"))
            .unwrap_or_else(|err| panic!("{}: no manifest: {err}", dir.display()));
        let manifest: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{}: manifest unreadable: {err}", dir.display()));
        let listed: HashMap<&str, &Value> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].as_str().unwrap(), f))
            .collect();
        for (rel, entry) in &listed {
            let path = dir.join(rel);
            let meta = fs::metadata(&path).unwrap_or_else(|err| {
                panic!("{}: listed in the manifest but {err}", path.display())
            });
            // Every table but api_audit has key columns (pod, event_id…) to index.
            assert!(
                dir.ends_with("api_audit") || dir.join(format!("{rel}.keys")).exists(),
                "{}: listed without its key index",
                path.display()
            );
            assert_eq!(
                Some(meta.len()),
                entry["bytes"].as_u64(),
                "{}: size",
                path.display()
            );
            assert_eq!(
                Some(read_parquet(&path)),
                entry["rows"].as_u64(),
                "{}: rows",
                path.display()
            );
        }
        debris.listed += listed.len();
        for path in files_under(&dir) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let rel = path
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if name == "_manifest.json" || listed.contains_key(rel.as_str()) {
                continue;
            }
            if is_temp(&name) {
                debris.temp.push(path);
            } else if let Some(of) = rel.strip_suffix(".keys") {
                // A key index goes with its file: kept if the file is listed, else debris.
                if !listed.contains_key(of) {
                    debris.unlisted.push(path);
                }
            } else {
                assert!(
                    name.ends_with(".parquet"),
                    "{}: unexpected file",
                    path.display()
                );
                read_parquet(&path);
                debris.unlisted.push(path);
            }
        }
    }
    debris
}

/// [`service_support::query_at`], whose answers here are never cut at the row cap.
async fn query(client: &reqwest::Client, base: &str, sql: &str) -> Value {
    let v = service_support::query_at(client, base, sql).await;
    assert_eq!(v["truncated"], false, "{sql}");
    v
}

/// The value of the metric `name` (without labels) in `/metrics`.
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = service_support::metrics_at(client, base).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics: {text}"))
}

/// After a restart: the debris of the crash is gone and counted, and SQL sees only the
/// store's tables.
async fn check_recovery(client: &reqwest::Client, base: &str, debris: &Debris) {
    for p in debris.temp.iter().chain(&debris.unlisted) {
        assert!(!p.exists(), "{} survived the recovery", p.display());
    }
    let removed = metric(client, base, "gpusiem_store_orphans_removed_total").await;
    assert_eq!(
        removed,
        (debris.temp.len() + debris.unlisted.len()) as u64,
        "{debris:?}"
    );
    let sql = "SELECT table_name FROM information_schema.tables \
               WHERE table_schema <> 'information_schema' AND table_type = 'BASE TABLE'";
    let v = query(client, base, sql).await;
    let names: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["table_name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"falco_events"), "{names:?}");
    assert!(
        names.iter().all(|n| TABLES.contains(n)),
        "tables visible to SQL: {names:?}"
    );
}

/// Every acknowledged id of `ledger` is in `table` exactly once, and nothing never sent is.
/// Returns (rows with the marker, of which not acknowledged).
async fn check_table(
    client: &reqwest::Client,
    base: &str,
    table: &str,
    column: &str,
    ledger: &Ledger,
) -> (usize, usize) {
    let v = query(
        client,
        base,
        &format!("SELECT count(*) AS n, count(DISTINCT {column}) AS d FROM {table} WHERE {column} LIKE '{MARKER}%'"),
    )
    .await;
    let (n, d) = (
        v["rows"][0]["n"].as_u64().unwrap(),
        v["rows"][0]["d"].as_u64().unwrap(),
    );
    assert_eq!(
        n, d,
        "{table}: {n} rows for {d} distinct ids: records were stored twice"
    );
    let v = query(
        client,
        base,
        &format!("SELECT {column} AS id FROM {table} WHERE {column} LIKE '{MARKER}%'"),
    )
    .await;
    let found: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(found.len() as u64, n);
    let found: HashSet<&str> = found.into_iter().collect();
    let acked = ledger.acked.lock().unwrap();
    let mut lost: Vec<&String> = acked
        .iter()
        .filter(|id| !found.contains(id.as_str()))
        .collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{table}: {} of {} acknowledged records are lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    let attempted = ledger.attempted.lock().unwrap();
    let phantom: Vec<&&str> = found
        .iter()
        .filter(|id| !attempted.contains(**id))
        .take(20)
        .collect();
    assert!(
        phantom.is_empty(),
        "{table}: records that were never sent: {phantom:?}"
    );
    (found.len(), found.len() - acked.len())
}

/// The API audit trail of the ingest requests: one row per request (no row replayed twice),
/// at least one per acknowledged request (its row is durable before the answer), at most one
/// per request sent.
async fn check_audit_trail(client: &reqwest::Client, base: &str, ledgers: [&Ledger; 2]) {
    let ingest = "FROM api_audit WHERE route LIKE '/ingest/%'";
    let sql = format!(
        "SELECT (SELECT count(*) {ingest}) AS n, (SELECT count(*) {ingest} AND status = 200) AS ok, \
         (SELECT count(*) FROM (SELECT DISTINCT ts, remote_addr {ingest})) AS d"
    );
    let v = query(client, base, &sql).await;
    let row = &v["rows"][0];
    let (n, ok, d) = (
        row["n"].as_u64().unwrap(),
        row["ok"].as_u64().unwrap(),
        row["d"].as_u64().unwrap(),
    );
    let (mut sent, mut acked) = (0, 0);
    for l in ledgers {
        let answers = l.answers.lock().unwrap();
        sent += answers.values().sum::<usize>() as u64;
        acked += answers.get(&200).copied().unwrap_or(0) as u64;
    }
    assert_eq!(
        n, d,
        "api_audit: {n} rows of ingest requests, {d} distinct: rows were stored twice"
    );
    assert!(
        ok >= acked,
        "api_audit: {ok} rows for {acked} acknowledged ingest requests"
    );
    assert!(
        n <= sent,
        "api_audit: {n} rows for {sent} ingest requests sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_exactly_once_and_every_parquet_file_opens() {
    gpusiem_ingest::source::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let busy = write_config(dir.path(), &data, true);
    let quiet = write_config(dir.path(), &data, false);
    let templates = Arc::new(templates());
    let falco = Arc::new(Ledger::default());
    let audit = Arc::new(Ledger::default());
    let clock = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let test_started = Instant::now();
    let mut debris = Debris::default();

    // Each moment twice, at other points of the run (records acknowledged before arming).
    let plan = [
        (KillAt::TempFile, 150),
        (KillAt::TempFileAfterCompaction, 250),
        (KillAt::CommittedWalNotDeleted, 100),
        (KillAt::TempFile, 700),
        (KillAt::CommittedWalNotDeleted, 400),
        (KillAt::TempFileAfterCompaction, 40),
    ];
    for (cycle, (at, min_acked)) in plan.into_iter().enumerate() {
        let cycle_started = Instant::now();
        let mut s = start(&busy);
        check_recovery(&client, &s.base, &debris).await;
        let recovered = metric(&client, &s.base, "gpusiem_store_recovered_rows_total").await;
        let (f_rows, f_unacked) =
            check_table(&client, &s.base, "falco_events", "uuid", &falco).await;
        let (a_rows, a_unacked) =
            check_table(&client, &s.base, "k8s_audit", "audit_id", &audit).await;
        check_audit_trail(&client, &s.base, [&falco, &audit]).await;
        eprintln!(
            "cycle {cycle}: restart recovered {recovered} WAL rows, removed {} temporary and {} uncommitted files; \
             found {f_rows} Falco ({f_unacked} unacknowledged) and {a_rows} audit ({a_unacked} unacknowledged) records",
            debris.temp.len(),
            debris.unlisted.len()
        );

        let stop = Arc::new(AtomicBool::new(false));
        let acked_rows = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for (kind, ledger, tasks) in [(Kind::Falco, &falco, 3), (Kind::Audit, &audit, 2)] {
            for t in 0..tasks {
                let tag = format!(
                    "{cycle}-{}{t}",
                    if matches!(kind, Kind::Falco) {
                        "f"
                    } else {
                        "a"
                    }
                );
                clients.push(tokio::spawn(client_task(
                    client.clone(),
                    format!("{}{}", s.base, kind.path()),
                    kind,
                    tag,
                    templates.clone(),
                    clock.clone(),
                    ledger.clone(),
                    acked_rows.clone(),
                    stop.clone(),
                )));
            }
        }
        let child = s.child.take().unwrap();
        let (watch_data, watch_acked) = (data.clone(), acked_rows.clone());
        let trigger = tokio::task::spawn_blocking(move || {
            kill_when(child, &watch_data, at, min_acked, &watch_acked)
        })
        .await
        .unwrap();
        let acked_at_kill = acked_rows.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        debris = inspect(&data);
        eprintln!(
            "cycle {cycle}: SIGKILL ({at:?}: {trigger}) after {acked_at_kill} acknowledged records; {} committed files, \
             {} temporary, {} uncommitted; {:.1}s",
            debris.listed,
            debris.temp.len(),
            debris.unlisted.len(),
            cycle_started.elapsed().as_secs_f64()
        );
    }

    // A last restart, without compaction: the crash's debris is gone and every acknowledged
    // record is there once; then a clean stop flushes and leaves only committed files.
    let s = start(&quiet);
    check_recovery(&client, &s.base, &debris).await;
    let (f_rows, _) = check_table(&client, &s.base, "falco_events", "uuid", &falco).await;
    let (a_rows, _) = check_table(&client, &s.base, "k8s_audit", "audit_id", &audit).await;
    check_audit_trail(&client, &s.base, [&falco, &audit]).await;
    s.terminate();
    let last = inspect(&data);
    assert!(
        last.temp.is_empty() && last.unlisted.is_empty(),
        "a clean stop leaves only committed files: {last:?}"
    );
    for (table, column, ledger, rows) in [
        ("falco_events", "uuid", &falco, f_rows),
        ("k8s_audit", "audit_id", &audit, a_rows),
    ] {
        let ids = parquet_ids(&data.join("tables").join(table), column);
        let unique: HashSet<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{table}: an id is in the Parquet files twice"
        );
        assert_eq!(
            ids.len(),
            rows,
            "{table}: the Parquet files hold what the query found"
        );
        let acked = ledger.acked.lock().unwrap();
        assert!(
            acked.iter().all(|id| unique.contains(id.as_str())),
            "{table}: an acknowledged record is not in the Parquet files"
        );
    }
    eprintln!(
        "done in {:.1}s: {} Falco and {} audit records acknowledged; answers: Falco {:?}, audit {:?} (0: no answer)",
        test_started.elapsed().as_secs_f64(),
        falco.acked.lock().unwrap().len(),
        audit.acked.lock().unwrap().len(),
        falco.answers.lock().unwrap(),
        audit.answers.lock().unwrap(),
    );
}
