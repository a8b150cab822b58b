//! The SQL engine: namespace isolation whatever the SQL (S2), refused statement classes (S3),
//! resource abuse ending within its limits (S4), and the query features analysts rely on.

use crate::fixtures;

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use fixtures::{HOUR, T0, falco, finding};
use gpusiem::query::{NamespaceScope, QueryConfig, QueryEngine, QueryOutput};
use gpusiem::store::{Store, StoreConfig};
use gpusiem_ingest::Stream;

fn quiet() -> StoreConfig {
    StoreConfig {
        flush_interval_secs: 3600,
        compaction_interval_secs: 3600,
        ..StoreConfig::default()
    }
}

/// Every cell of the output as text.
fn cells(out: &QueryOutput) -> Vec<String> {
    let mut v = Vec::new();
    for b in &out.batches {
        for c in b.columns() {
            let f =
                ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).expect("formatter");
            v.extend((0..c.len()).map(|i| f.value(i).to_string()));
        }
    }
    v
}

fn text(out: &QueryOutput) -> String {
    cells(out).join("\n")
}

fn first_i64(out: &QueryOutput) -> i64 {
    let b = &out.batches[0];
    let c = arrow::compute::cast(b.column(0), &DataType::Int64).expect("cast");
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("int")
        .value(0)
}

/// Two tenants, `shop` and `research`, plus cluster-scoped rows (null namespace); part of the
/// data in Parquet, part in the tail. Every value of research carries the word `research`.
async fn seeded() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet()).await.expect("open");
    store
        .append(
            Stream::FalcoEvents,
            &falco(&[
                (T0, Some("shop"), "shop-web-1"),
                (T0 + 1, Some("research"), "research-nb-1"),
                (T0 + 2, None, "research-cluster-scoped"),
                (T0 + HOUR, Some("shop"), "shop-web-2"),
            ]),
        )
        .await
        .expect("append");
    store
        .append_findings(&[
            finding("f-shop-1", T0, Some("shop"), "shop-web-1", 0),
            finding("f-shop-1", T0, Some("shop"), "shop-web-1", 1),
            finding("f-research-1", T0 + 5, Some("research"), "research-nb-1", 0),
            finding("f-research-null", T0 + 6, None, "research-node-level", 0),
        ])
        .await
        .expect("findings");
    store.flush().await.expect("flush");
    // And some rows only in the tail.
    store
        .append(
            Stream::FalcoEvents,
            &falco(&[
                (T0 + 2 * HOUR, Some("research"), "research-nb-2"),
                (T0 + 2 * HOUR, Some("shop"), "shop-web-3"),
            ]),
        )
        .await
        .expect("append");
    store
        .append_findings(&[
            finding("f-shop-1", T0, Some("shop"), "shop-web-1", 2),
            finding(
                "f-research-2",
                T0 + 2 * HOUR,
                Some("research"),
                "research-nb-2",
                0,
            ),
        ])
        .await
        .expect("findings");
    (dir, store)
}

fn engine(store: &Arc<Store>) -> QueryEngine {
    QueryEngine::new(
        store.clone(),
        QueryConfig {
            timeout_secs: 10,
            ..QueryConfig::default()
        },
    )
}

/// Cross-namespace probes: none may return a value of `research` to a `shop` principal.
const PROBES: &[&str] = &[
    "SELECT * FROM findings",
    "SELECT * FROM falco_events",
    "SELECT * FROM findings_latest",
    "SELECT pod FROM falco_events WHERE namespace = 'research'",
    "SELECT pod FROM falco_events WHERE namespace <> 'shop' OR namespace IS NULL",
    "SELECT pod FROM falco_events WHERE namespace IN ('research', 'shop')",
    "SELECT pod FROM falco_events WHERE lower(namespace) LIKE 'res%'",
    "SELECT pod FROM falco_events WHERE namespace = 'RESEARCH' OR namespace ILIKE 'research'",
    "SELECT pod FROM falco_events WHERE namespace = 'research' /* comment */ -- trailing",
    "SELECT pod FROM \"falco_events\" WHERE \"namespace\" = 'research'",
    "SELECT pod FROM datafusion.public.falco_events",
    "SELECT f.pod, e.pod FROM findings f JOIN falco_events e ON f.pod = e.pod",
    "SELECT f.pod, e.pod FROM findings f FULL OUTER JOIN falco_events e ON f.namespace = e.namespace",
    "SELECT a.pod, b.pod FROM falco_events a CROSS JOIN falco_events b",
    "SELECT pod FROM falco_events UNION ALL SELECT pod FROM findings",
    "SELECT pod FROM falco_events UNION SELECT summary FROM findings",
    "SELECT pod FROM falco_events EXCEPT SELECT 'x'",
    "SELECT pod FROM falco_events WHERE pod IN (SELECT pod FROM findings)",
    "SELECT pod FROM falco_events e WHERE EXISTS (SELECT 1 FROM findings f WHERE f.namespace = 'research')",
    "SELECT (SELECT max(pod) FROM falco_events) AS m",
    "SELECT (SELECT string_agg(pod, ',') FROM falco_events) AS m",
    "WITH r AS (SELECT * FROM falco_events WHERE namespace = 'research') SELECT * FROM r",
    "WITH RECURSIVE r(p) AS (SELECT pod FROM falco_events UNION ALL SELECT p FROM r WHERE false) SELECT * FROM r",
    "SELECT * FROM (SELECT * FROM findings) AS sub WHERE sub.namespace IS NULL",
    "SELECT namespace, count(*) FROM falco_events GROUP BY namespace",
    "SELECT count(*) FILTER (WHERE namespace = 'research') FROM falco_events",
    "SELECT pod, row_number() OVER (ORDER BY pod) FROM falco_events",
    "SELECT array_agg(pod) FROM falco_events",
    "SELECT * FROM findings WHERE id = 'f-research-1'",
    "SELECT * FROM findings WHERE summary LIKE '%research%'",
    "SELECT evidence, event_ids FROM findings",
    "SELECT table_name FROM information_schema.tables",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM information_schema.views",
    "SHOW TABLES",
    "SHOW COLUMNS FROM findings",
    "DESCRIBE findings",
    "EXPLAIN SELECT * FROM findings WHERE namespace = 'research'",
    "EXPLAIN VERBOSE SELECT * FROM falco_events",
    "SELECT pod FROM falco_events WHERE namespace = 'shop' OR 1 = 1",
    "SELECT pod FROM falco_events WHERE true UNION ALL SELECT pod FROM falco_events WHERE namespace IS NULL",
    "SELECT pod FROM FALCO_EVENTS",
    "SELECT pod FROM falco_events WHERE namespace = 'reſearch'",
    "SELECT pod FROM falco_events WHERE namespace = 'research\u{0}'",
    "SELECT * FROM findings_latest WHERE namespace = 'research'",
    "SELECT * FROM api_audit",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_principal_never_sees_another_namespace_whatever_the_sql() {
    let (_dir, store) = seeded().await;
    let q = engine(&store);
    let shop = NamespaceScope::only(["shop"]);
    let mut answered = 0;
    for sql in PROBES {
        match q.sql(sql, &shop).await {
            Ok(out) => {
                answered += 1;
                // A probe that names `research` itself may echo that word (EXPLAIN shows the
                // query's own literals); rows of research always carry `research-`.
                let marker = if sql.contains("research") {
                    "research-"
                } else {
                    "research"
                };
                let t = text(&out);
                assert!(!t.contains(marker), "{sql} leaked:\n{t}");
            }
            Err(e) => assert!(
                !e.to_string().contains("research-"),
                "{sql}: error leaks data: {e}"
            ),
        }
    }
    assert!(
        answered > PROBES.len() - 5,
        "the probes must mostly run, not just fail: {answered}"
    );
    // Sanity: the shop rows are there, and the unscoped principal sees research.
    let out = q
        .sql("SELECT pod FROM falco_events ORDER BY pod", &shop)
        .await
        .expect("query");
    assert_eq!(cells(&out), ["shop-web-1", "shop-web-2", "shop-web-3"]);
    let out = q
        .sql("SELECT count(*) FROM falco_events", &NamespaceScope::all())
        .await
        .expect("query");
    assert_eq!(first_i64(&out), 6);
    // A scope of nothing sees nothing.
    let out = q
        .sql(
            "SELECT count(*) FROM findings",
            &NamespaceScope(Some(vec![])),
        )
        .await
        .expect("query");
    assert_eq!(first_i64(&out), 0);
    // Two namespaces see both, cluster-scoped rows still not.
    let out = q
        .sql(
            "SELECT count(*) FROM falco_events",
            &NamespaceScope::only(["shop", "research"]),
        )
        .await
        .expect("query");
    assert_eq!(first_i64(&out), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_analyze_is_refused_to_scoped_principals() {
    // Its scan metrics would count the rows of other namespaces.
    let (_dir, store) = seeded().await;
    let q = engine(&store);
    let err = q
        .sql(
            "EXPLAIN ANALYZE SELECT * FROM findings",
            &NamespaceScope::only(["shop"]),
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            gpusiem::Error::Query {
                kind: "refused",
                ..
            }
        ),
        "{err}"
    );
    q.sql(
        "EXPLAIN ANALYZE SELECT * FROM findings",
        &NamespaceScope::all(),
    )
    .await
    .expect("unscoped may");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_class_but_queries_is_refused() {
    let (dir, store) = seeded().await;
    let q = engine(&store);
    let target = dir.path().join("copied.parquet");
    let statements = [
        "CREATE TABLE t AS SELECT * FROM findings".to_string(),
        "CREATE TABLE t (x INT)".into(),
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'".into(),
        "CREATE EXTERNAL TABLE t (a VARCHAR) STORED AS CSV LOCATION '/etc/passwd'".into(),
        "CREATE VIEW v AS SELECT * FROM findings".into(),
        "CREATE SCHEMA s".into(),
        "CREATE FUNCTION f(INT) RETURNS INT RETURN $1".into(),
        "DROP TABLE findings".into(),
        "DROP VIEW findings_latest".into(),
        "INSERT INTO findings SELECT * FROM findings".into(),
        "DELETE FROM findings".into(),
        "UPDATE findings SET summary = 'x'".into(),
        "TRUNCATE TABLE findings".into(),
        format!("COPY findings TO '{}'", target.display()),
        format!(
            "COPY (SELECT * FROM findings) TO '{}' STORED AS PARQUET",
            target.display()
        ),
        "SET datafusion.execution.target_partitions = 64".into(),
        "SET TIME ZONE 'UTC'".into(),
        "RESET datafusion.execution.batch_size".into(),
        "PREPARE p AS SELECT 1".into(),
        "EXECUTE p".into(),
        "BEGIN TRANSACTION".into(),
        "SELECT * INTO t FROM findings".into(),
        "SELECT * FROM '/etc/passwd'".into(),
        format!("SELECT * FROM '{}'", dir.path().join("tables").display()),
        "SELECT * FROM 'file:///etc/hostname'".into(),
        "SELECT 1; DROP TABLE findings".into(),
        "SELECT * FROM generate_series(1, 10)".into(),
        "SELECT * FROM range(10)".into(),
        "SELECT * FROM read_parquet('/etc/passwd')".into(),
    ];
    for sql in &statements {
        match q.sql(sql, &NamespaceScope::all()).await {
            Err(gpusiem::Error::Query {
                kind: "refused", ..
            }) => {}
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    assert!(!target.exists(), "COPY wrote a file");
    // Nothing changed.
    let out = q
        .sql("SELECT count(*) FROM findings", &NamespaceScope::all())
        .await
        .expect("query");
    assert_eq!(first_i64(&out), 6);
    // An over-long SQL text is refused before parsing.
    let long = format!("SELECT '{}'", "x".repeat(70 << 10));
    assert!(matches!(
        q.sql(&long, &NamespaceScope::all()).await,
        Err(gpusiem::Error::Query {
            kind: "refused",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_abuse_ends_within_the_limits() {
    let (_dir, store) = seeded().await;
    // Enough rows that a three-way cross join cannot finish in time.
    let rows: Vec<(i64, Option<&str>, String)> = (0..3000)
        .map(|i| (T0 + i, Some("shop"), format!("p{i}")))
        .collect();
    let refs: Vec<(i64, Option<&str>, &str)> =
        rows.iter().map(|(t, n, p)| (*t, *n, p.as_str())).collect();
    store
        .append(Stream::FalcoEvents, &falco(&refs))
        .await
        .expect("append");
    let q = QueryEngine::new(
        store.clone(),
        QueryConfig {
            timeout_secs: 3,
            memory_limit_bytes: 64 << 20,
            max_function_output_bytes: 16 << 20,
            ..QueryConfig::default()
        },
    );
    let all = NamespaceScope::all();
    let cases = [
        // Denied outright.
        (
            "SELECT count(*) FROM generate_series(9876543210)",
            &["refused"][..],
        ),
        ("SELECT generate_series(1, 9876543210)", &["refused"]),
        ("SELECT range(9876543210)", &["refused"]),
        ("SELECT array_repeat('a', 1000000000)", &["refused"]),
        // Capped before allocating (constant folding included).
        ("SELECT rpad('a', 1073741824, 'a')", &["resources"]),
        ("SELECT lpad('a', 1073741824)", &["resources"]),
        ("SELECT length(repeat('a', 1073741824))", &["resources"]),
        (
            "SELECT length(repeat(pod, 100000000)) FROM falco_events",
            &["resources"],
        ),
        (
            "SELECT length(replace(pod, '', repeat('x', 100000))) FROM falco_events",
            &["resources"],
        ),
        (
            "SELECT length(regexp_replace(rule, '', rpad('x', 60000, 'y'), 'g')) FROM falco_events",
            &["resources"],
        ),
        // Bounded by time or memory.
        (
            "SELECT count(*) FROM falco_events a, falco_events b, falco_events c",
            &["timeout", "resources"],
        ),
        (
            "SELECT a.pod, b.pod FROM falco_events a, falco_events b ORDER BY a.pod || b.pod DESC",
            &["timeout", "resources"],
        ),
        (
            "SELECT count(DISTINCT a.pod || b.pod || c.pod) FROM falco_events a, falco_events b, falco_events c",
            &["timeout", "resources"],
        ),
    ];
    for (sql, kinds) in cases {
        let started = std::time::Instant::now();
        match q.sql(sql, &all).await {
            Err(gpusiem::Error::Query { kind, reason }) => {
                assert!(kinds.contains(&kind), "{sql}: {kind}: {reason}");
            }
            Ok(out) => panic!("{sql}: expected {kinds:?}, got {} rows", out.rows),
            Err(e) => panic!("{sql}: {e}"),
        }
        // Not a timing assertion: a generous bound that only an unbounded query would break.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{sql} did not stop"
        );
    }
    // The engine still answers afterwards: permits and memory were given back. On a loaded
    // machine the aborted queries' last batches may still be unwinding, so a timeout is retried;
    // a leaked permit or reservation would fail every attempt.
    let mut answer = None;
    for _ in 0..10 {
        match q.sql("SELECT count(*) FROM findings", &all).await {
            Ok(out) => {
                answer = Some(first_i64(&out));
                break;
            }
            Err(gpusiem::Error::Query {
                kind: "timeout", ..
            }) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            Err(e) => panic!("after the abuse: {e}"),
        }
    }
    assert_eq!(answer, Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_growth_through_ctes_is_stopped() {
    let (_dir, store) = seeded().await;
    let q = QueryEngine::new(
        store.clone(),
        QueryConfig {
            timeout_secs: 5,
            memory_limit_bytes: 64 << 20,
            ..QueryConfig::default()
        },
    );
    // Each level doubles the string: 2^40 bytes at the end if nothing stopped it.
    let mut sql = String::from("WITH a0 AS (SELECT pod AS s FROM falco_events)");
    for i in 1..=40 {
        sql.push_str(&format!(", a{i} AS (SELECT s || s AS s FROM a{})", i - 1));
    }
    sql.push_str(" SELECT max(length(s)) FROM a40");
    let r = q.sql(&sql, &NamespaceScope::all()).await;
    assert!(
        matches!(
            r,
            Err(gpusiem::Error::Query {
                kind: "resources" | "timeout",
                ..
            })
        ),
        "{r:?}"
    );
    let mut sql = String::from("WITH a0 AS (SELECT 'abcdefgh' AS s)");
    for i in 1..=40 {
        sql.push_str(&format!(
            ", a{i} AS (SELECT concat(s, s) AS s FROM a{})",
            i - 1
        ));
    }
    sql.push_str(" SELECT length(s) FROM a40");
    let r = q.sql(&sql, &NamespaceScope::all()).await;
    assert!(
        matches!(
            r,
            Err(gpusiem::Error::Query {
                kind: "resources" | "timeout",
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_capped_and_marked_truncated() {
    let (_dir, store) = seeded().await;
    let q = QueryEngine::new(
        store.clone(),
        QueryConfig {
            max_rows: 2,
            ..QueryConfig::default()
        },
    );
    let out = q
        .sql("SELECT pod FROM falco_events", &NamespaceScope::all())
        .await
        .expect("query");
    assert_eq!((out.rows, out.truncated), (2, true));
    let out = q
        .sql(
            "SELECT pod FROM falco_events LIMIT 2",
            &NamespaceScope::all(),
        )
        .await
        .expect("query");
    assert_eq!(out.rows, 2);
    let q = QueryEngine::new(
        store.clone(),
        QueryConfig {
            max_result_bytes: 10,
            ..QueryConfig::default()
        },
    );
    let out = q
        .sql("SELECT summary FROM findings", &NamespaceScope::all())
        .await
        .expect("query");
    assert!(out.truncated && out.rows == 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finding_is_queryable_as_soon_as_it_is_appended_and_the_view_keeps_its_latest_revision() {
    let (_dir, store) = seeded().await;
    let q = engine(&store);
    let shop = NamespaceScope::only(["shop"]);
    store
        .append_findings(&[finding(
            "f-new",
            T0 + 3 * HOUR,
            Some("shop"),
            "shop-web-9",
            0,
        )])
        .await
        .expect("append");
    let out = q
        .sql("SELECT pod FROM findings WHERE id = 'f-new'", &shop)
        .await
        .expect("query");
    assert_eq!(cells(&out), ["shop-web-9"]);
    // f-shop-1 has revisions 0 and 1 in Parquet and 2 in the tail: the view shows revision 2.
    let out = q
        .sql(
            "SELECT id, revision FROM findings_latest ORDER BY id",
            &shop,
        )
        .await
        .expect("query");
    assert_eq!(cells(&out), ["f-new", "f-shop-1", "0", "2"]);
    let out = q
        .sql("SELECT count(*) FROM findings WHERE id = 'f-shop-1'", &shop)
        .await
        .expect("query");
    assert_eq!(first_i64(&out), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_filters_prune_hour_files_before_they_are_opened() {
    let (_dir, store) = seeded().await;
    let q = engine(&store);
    let snap = store.snapshot("falco_events").expect("snapshot");
    let hour0 = snap
        .files
        .iter()
        .find(|(_, f)| f.path.contains("hour=00"))
        .expect("hour 0")
        .1
        .path
        .clone();
    let hour1 = snap
        .files
        .iter()
        .find(|(_, f)| f.path.contains("hour=01"))
        .expect("hour 1")
        .1
        .path
        .clone();
    let plan = q
        .sql(
            "EXPLAIN SELECT pod FROM falco_events WHERE ts >= TIMESTAMP '2024-05-01T01:00:00Z'",
            &NamespaceScope::all(),
        )
        .await
        .expect("explain");
    let plan = text(&plan);
    assert!(plan.contains(&hour1) && !plan.contains(&hour0), "{plan}");
    let out = q
        .sql("SELECT pod FROM falco_events WHERE ts >= TIMESTAMP '2024-05-01T01:00:00Z' ORDER BY pod", &NamespaceScope::all())
        .await
        .expect("query");
    assert_eq!(cells(&out), ["research-nb-2", "shop-web-2", "shop-web-3"]);
}

/// Six hours of 400 events each over 40 pods; the pod `rare` has events in hours 2 and 4 only.
async fn lookup_store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &quiet()).await.expect("open");
    for h in 0..6i64 {
        let pods: Vec<String> = (0..400)
            .map(|i| format!("pod-{}", (i * 7 + h) % 40))
            .collect();
        let mut rows: Vec<(i64, Option<&str>, &str)> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    T0 + h * HOUR + i as i64 * 1_000_000,
                    Some("shop"),
                    p.as_str(),
                )
            })
            .collect();
        if h == 2 || h == 4 {
            rows[17].2 = "rare";
            rows[301].2 = "rare";
            rows[302] = (rows[302].0, Some("research"), "rare");
        }
        store
            .append(Stream::FalcoEvents, &falco(&rows))
            .await
            .expect("append");
        store.flush().await.expect("flush");
    }
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lookups_open_only_files_holding_the_key_and_answer_like_a_full_scan() {
    let (dir, store) = lookup_store().await;
    let q = engine(&store);
    let snap = store.snapshot("falco_events").expect("snapshot");
    assert_eq!(snap.files.len(), 6);
    let sidecars: Vec<std::path::PathBuf> = snap
        .files
        .iter()
        .map(|(p, _)| {
            let mut s = p.as_os_str().to_owned();
            s.push(".keys");
            s.into()
        })
        .collect();
    assert!(
        sidecars.iter().all(|p| p.exists()),
        "every file has a key index"
    );

    // Only the files of hours 2 and 4 are planned.
    let plan = text(
        &q.sql(
            "EXPLAIN SELECT ts, pod FROM falco_events WHERE pod = 'rare'",
            &NamespaceScope::all(),
        )
        .await
        .expect("explain"),
    );
    for (path, f) in &snap.files {
        let wanted = f.path.contains("hour=02") || f.path.contains("hour=04");
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        assert_eq!(plan.contains(name.as_ref()), wanted, "{}: {plan}", f.path);
    }
    // The scan reads the selected rows itself, with the footers of files read before cached.
    assert!(
        plan.contains("KeyLookupExec: files=2, selected_rows=6"),
        "{plan}"
    );
    let analyze = "EXPLAIN ANALYZE SELECT ts, pod FROM falco_events WHERE pod = 'rare'";
    let first = text(
        &q.sql(analyze, &NamespaceScope::all())
            .await
            .expect("analyze"),
    );
    assert!(
        first.contains("files_read=2, footer_cache_hits=0"),
        "{first}"
    );
    let second = text(
        &q.sql(analyze, &NamespaceScope::all())
            .await
            .expect("analyze"),
    );
    assert!(
        second.contains("files_read=2, footer_cache_hits=2"),
        "{second}"
    );

    let shop = NamespaceScope::only(["shop".to_string()]);
    let queries: &[(&str, &NamespaceScope)] = &[
        (
            "SELECT ts, namespace, pod FROM falco_events WHERE pod = 'rare' ORDER BY ts",
            &NamespaceScope::all(),
        ),
        (
            "SELECT ts, pod FROM falco_events WHERE 'rare' = pod ORDER BY ts",
            &shop,
        ),
        (
            "SELECT ts, pod FROM falco_events WHERE pod IN ('rare', 'pod-3') ORDER BY ts, pod",
            &NamespaceScope::all(),
        ),
        (
            "SELECT count(*) FROM falco_events WHERE pod = 'pod-5' AND event_id LIKE 'ev-%'",
            &NamespaceScope::all(),
        ),
        (
            "SELECT pod FROM falco_events WHERE pod = 'rare' AND event_id = (SELECT min(event_id) FROM falco_events WHERE pod = 'rare')",
            &NamespaceScope::all(),
        ),
        (
            "SELECT count(*) FROM falco_events WHERE pod = 'absent'",
            &NamespaceScope::all(),
        ),
        (
            "SELECT count(*) FROM falco_events WHERE pod = 'rare' OR pod = 'pod-1'",
            &NamespaceScope::all(),
        ),
    ];
    let mut indexed = Vec::new();
    for (sql, scope) in queries {
        indexed.push(text(&q.sql(sql, scope).await.expect(sql)));
    }
    assert_eq!(indexed[0].matches("rare").count(), 6, "{}", indexed[0]);
    assert_eq!(indexed[1].matches("rare").count(), 4, "{}", indexed[1]);
    assert_eq!(indexed[5], "0");

    // The same answers when every index is damaged, and when there is none.
    for damage in [true, false] {
        for p in &sidecars {
            if damage {
                let mut b = std::fs::read(p).expect("read");
                let n = b.len();
                b[n / 2] ^= 0x5a;
                b[n - 1] ^= 0x5a;
                std::fs::write(p, b).expect("write");
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
        for ((sql, scope), want) in queries.iter().zip(&indexed) {
            let got = text(&q.sql(sql, scope).await.expect(sql));
            assert_eq!(&got, want, "{sql} (damaged: {damage})");
        }
    }
    drop(dir);
}

fn audit_batch() -> (Arc<Schema>, RecordBatch) {
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
    (schema, batch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tables_and_tables_without_namespace_are_hidden_from_scoped_principals() {
    let (_dir, store) = seeded().await;
    let (schema, batch) = audit_batch();
    store
        .register_admin_table("api_audit", schema.clone())
        .expect("register");
    store
        .append_table("api_audit", &batch)
        .await
        .expect("append");
    store
        .register_table("node_events", schema)
        .expect("register");
    store
        .append_table("node_events", &batch)
        .await
        .expect("append");
    let q = engine(&store);
    let shop = NamespaceScope::only(["shop"]);
    let all = NamespaceScope::all();
    for (sql, scope, admin, visible) in [
        ("SELECT principal FROM api_audit", &shop, false, false),
        ("SELECT principal FROM api_audit", &all, false, false),
        ("SELECT principal FROM api_audit", &all, true, true),
        ("SELECT principal FROM api_audit", &shop, true, true),
        ("SELECT principal FROM node_events", &shop, false, false),
        ("SELECT principal FROM node_events", &shop, true, false),
        ("SELECT principal FROM node_events", &all, false, true),
    ] {
        let r = if admin {
            q.sql_as_admin(sql, scope).await
        } else {
            q.sql(sql, scope).await
        };
        match (visible, r) {
            (true, Ok(out)) => assert_eq!(cells(&out), ["alice"], "{sql}"),
            (
                false,
                Err(gpusiem::Error::Query {
                    kind: "refused", ..
                }),
            ) => {}
            (v, r) => panic!("{sql} {scope:?} admin={admin}: visible={v} but {r:?}"),
        }
    }
    let listed = q.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", &shop).await.expect("query");
    assert_eq!(
        cells(&listed),
        [
            "falco_events",
            "findings",
            "findings_latest",
            "gpu_metrics",
            "k8s_audit"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_dataframes_stay_scoped_and_collect_with_the_limits() {
    use datafusion::prelude::{col, lit};

    let (_dir, store) = seeded().await;
    let q = engine(&store);
    let df = q
        .dataframe("findings", &NamespaceScope::only(["shop"]))
        .await
        .expect("dataframe");
    // Asking for research through the DataFrame API finds nothing.
    let df = df
        .filter(
            col("namespace")
                .eq(lit("research"))
                .or(col("pod").like(lit("%"))),
        )
        .expect("filter");
    let out = q
        .collect(df.select(vec![col("pod")]).expect("select"))
        .await
        .expect("collect");
    assert!(!text(&out).contains("research"));
    // The three revisions of shop's one finding: two flushed, one in the tail.
    assert_eq!(cells(&out), ["shop-web-1", "shop-web-1", "shop-web-1"]);
    let latest = q
        .dataframe("findings_latest", &NamespaceScope::only(["research"]))
        .await
        .expect("view");
    let out = q
        .collect(
            latest
                .select(vec![col("id")])
                .expect("select")
                .sort(vec![col("id").sort(true, true)])
                .expect("sort"),
        )
        .await
        .expect("collect");
    assert_eq!(cells(&out), ["f-research-1", "f-research-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpusiem_query_command_reads_a_data_directory_while_the_store_is_open() {
    let (dir, store) = seeded().await;
    let run = |format: &str, sql: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpusiem"))
            .args(["query", "--data"])
            .arg(dir.path())
            .args(["--format", format, sql])
            .env("RUST_LOG", "error")
            .output()
            .expect("run gpusiem query");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(
        "json",
        "SELECT id, revision FROM findings_latest WHERE namespace = 'shop'",
    );
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v, serde_json::json!([{"id": "f-shop-1", "revision": 2}]));
    let (ok, stdout, _) = run(
        "csv",
        "SELECT pod, namespace FROM falco_events WHERE pod = 'research-cluster-scoped'",
    );
    assert!(ok);
    assert_eq!(stdout, "pod,namespace\nresearch-cluster-scoped,\n");
    let (ok, stdout, _) = run("table", "SELECT count(*) AS n FROM falco_events");
    assert!(ok && stdout.contains("| 6 |"), "{stdout}");
    let (ok, _, stderr) = run("table", "DROP TABLE findings");
    assert!(!ok && stderr.contains("refused"), "{stderr}");
    drop(store);
}
