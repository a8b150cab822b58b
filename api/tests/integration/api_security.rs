//! Security matrix of the router (`oneshot`): every route × {no token, wrong token, wrong scope,
//! valid token}; cross-namespace SQL probes; forbidden SQL statement classes; and audit
//! completeness (one `api_audit` row per request, refusals included).
#![allow(clippy::unwrap_used, missing_docs)]

use crate::api_support;

use api_support::*;
use axum::http::{Method, StatusCode, header};

/// A request that succeeds with a token holding the route's scope.
struct Case {
    method: Method,
    path: String,
    body: Option<(&'static str, Vec<u8>)>,
    /// A token that lacks the route's scope (`None`: the route needs none).
    wrong_scope: Option<&'static str>,
    /// A token holding exactly the needed scope (besides ADMIN, which holds all).
    valid: Option<&'static str>,
}

fn query_body(sql: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "sql": sql })).unwrap()
}

fn cases(h: &Harness) -> Vec<Case> {
    let mut cases = Vec::new();
    for op in gpusiem::server::openapi::operations() {
        let method = Method::from_bytes(op.method.as_bytes()).unwrap();
        let path = concrete_path(h, &op.path);
        let body = body_for(&op.method, &op.path);
        let (wrong_scope, valid) = match op.scope.as_deref() {
            None => (None, None),
            Some("read") => (Some(INGEST), Some(READER)),
            Some("query") => (Some(READER), Some(ANALYST)),
            Some("ingest") => (Some(ANALYST), Some(INGEST)),
            Some("admin") => (Some(READER), Some(ADMIN_ONLY)),
            Some(other) => panic!("unknown scope {other}"),
        };
        cases.push(Case {
            method,
            path,
            body,
            wrong_scope,
            valid,
        });
    }
    cases
}

#[tokio::test]
async fn every_route_against_no_wrong_wrong_scope_and_valid_tokens() {
    let h = harness().await;
    let cases = cases(&h);
    assert!(cases.len() >= 13, "the OpenAPI document lists every route");
    let mut audited_requests = 0usize;
    let mut table = Vec::new();
    for c in &cases {
        let probe = c.valid.is_none() && c.wrong_scope.is_none();
        // No token.
        let r = h
            .send(c.method.clone(), &c.path, None, c.body.clone())
            .await;
        if probe {
            assert!(
                r.status.is_success(),
                "{} {}: {}",
                c.method,
                c.path,
                r.status
            );
        } else {
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{} {} without a token",
                c.method,
                c.path
            );
            let challenge = r
                .headers
                .get(header::WWW_AUTHENTICATE)
                .expect("WWW-Authenticate")
                .to_str()
                .unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            audited_requests += 1;
        }
        table.push((
            c.method.to_string(),
            c.path.clone(),
            "none",
            r.status.as_u16(),
        ));
        // Wrong token.
        let r = h
            .send(c.method.clone(), &c.path, Some(WRONG), c.body.clone())
            .await;
        if probe {
            assert!(r.status.is_success());
        } else {
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{} {} with a wrong token",
                c.method,
                c.path
            );
            assert!(
                r.headers
                    .get(header::WWW_AUTHENTICATE)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .contains("invalid_token")
            );
            assert!(!r.text().contains(WRONG), "the token is never echoed");
            audited_requests += 1;
        }
        table.push((
            c.method.to_string(),
            c.path.clone(),
            "wrong",
            r.status.as_u16(),
        ));
        // Wrong scope.
        if let Some(t) = c.wrong_scope {
            let r = h
                .send(c.method.clone(), &c.path, Some(t), c.body.clone())
                .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{} {} with a token lacking the scope",
                c.method,
                c.path
            );
            audited_requests += 1;
            table.push((
                c.method.to_string(),
                c.path.clone(),
                "wrong scope",
                r.status.as_u16(),
            ));
        }
        // Valid: the minimal token and the all-scopes token.
        for t in c
            .valid
            .into_iter()
            .chain(if probe { None } else { Some(ADMIN) })
        {
            let r = h
                .send(c.method.clone(), &c.path, Some(t), c.body.clone())
                .await;
            assert!(
                r.status.is_success(),
                "{} {} with a valid token: {} {}",
                c.method,
                c.path,
                r.status,
                r.text()
            );
            audited_requests += 1;
            table.push((
                c.method.to_string(),
                c.path.clone(),
                "valid",
                r.status.as_u16(),
            ));
        }
    }
    for row in &table {
        eprintln!("{row:?}");
    }

    // S10: one audit row per request (the probes are not audited), with who, what and how.
    let rows = h.audit_rows().await;
    assert_eq!(
        rows.len(),
        audited_requests,
        "one api_audit row per request"
    );
    let unauthenticated = rows.iter().filter(|r| r["status"] == 401).count();
    let forbidden = rows.iter().filter(|r| r["status"] == 403).count();
    assert_eq!(unauthenticated, 2 * (cases.len() - 2));
    assert_eq!(forbidden, cases.len() - 2);
    for r in &rows {
        assert!(r["principal"].as_str().is_some_and(|p| !p.is_empty()));
        assert!(
            r["route"].as_str().is_some_and(|p| p.starts_with('/')),
            "{r:?}"
        );
        assert!(r["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
        assert!(r["bytes"].as_u64().is_some(), "{r:?}");
        let expected = match r["status"].as_u64().unwrap() {
            401 => "unauthenticated",
            403 => "forbidden",
            s if (200..300).contains(&s) => "ok",
            s => panic!("unexpected status {s}"),
        };
        assert_eq!(r["outcome"], expected, "{r:?}");
        if r["status"] == 401 {
            assert_eq!(r["principal"], "unauthenticated");
        }
    }
    let query_ok: Vec<_> = rows
        .iter()
        .filter(|r| r["route"] == "/api/v1/query" && r["status"] == 200)
        .collect();
    assert_eq!(query_ok.len(), 2);
    for r in query_ok {
        assert_eq!(
            r["sql_sha256"],
            gpusiem::server::audit::sql_sha256("SELECT 1 AS one")
        );
        assert_eq!(r["rows"], 1);
    }
    let ingest_ok: Vec<_> = rows
        .iter()
        .filter(|r| r["route"] == "/ingest/falco" && r["status"] == 200)
        .collect();
    assert!(
        ingest_ok
            .iter()
            .all(|r| r["rows"].as_u64().is_some_and(|n| n > 0)),
        "{ingest_ok:?}"
    );
    let shop = rows.iter().find(|r| r["principal"] == "analyst").unwrap();
    assert_eq!(shop["auth"], "token");
    h.stop().await;
}

#[tokio::test]
async fn unknown_routes_need_credentials_then_answer_404() {
    let h = harness().await;
    assert_eq!(
        h.send(Method::GET, "/api/v1/secrets", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.send(Method::GET, "/api/v1/secrets", Some(READER), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.send(Method::DELETE, "/api/v1/findings", Some(ADMIN), None)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let rows = h.audit_rows().await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["route"], "unmatched");
    assert_eq!(rows[1]["path"], "/api/v1/secrets");
    assert_eq!(rows[1]["outcome"], "not_found");
    h.stop().await;
}

/// Strings that exist only in rows of the `research` namespace or of no namespace. None of
/// them appears in any probe's SQL text.
fn foreign_markers(h: &Harness) -> Vec<String> {
    let mut m = vec![
        FOREIGN_POD.to_string(),
        "ev-research-1".to_string(),
        "in research".to_string(),
        "in no namespace".to_string(),
    ];
    m.extend(h.ids_in(Some(FOREIGN_MARKER)));
    m.extend(h.ids_in(None));
    m
}

const PROBES: &[&str] = &[
    "SELECT * FROM findings",
    "SELECT * FROM findings WHERE namespace = 'research'",
    "SELECT * FROM findings WHERE namespace <> 'shop' OR 1 = 1",
    "SELECT * FROM findings WHERE namespace IS NULL",
    "SELECT * FROM FINDINGS /* comment */ WHERE \"namespace\" = 'RESEARCH' OR lower(namespace) = 'research' -- trailing",
    "SELECT * FROM findings WHERE namespace = 'resеarch'",
    "SELECT * FROM findings UNION ALL SELECT * FROM findings WHERE namespace = 'research'",
    "SELECT * FROM findings WHERE false UNION SELECT * FROM findings",
    "SELECT pod, summary FROM findings INTERSECT SELECT pod, summary FROM findings",
    "WITH x AS (SELECT * FROM findings) SELECT * FROM x WHERE namespace = 'research'",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT f.* FROM r, findings f",
    "SELECT * FROM (SELECT * FROM falco_events) t WHERE t.namespace = 'research'",
    "SELECT * FROM findings WHERE namespace IN (SELECT namespace FROM falco_events)",
    "SELECT (SELECT max(pod) FROM falco_events WHERE namespace <> 'shop') AS p",
    "SELECT EXISTS (SELECT 1 FROM findings WHERE namespace = 'research') AS leak",
    "SELECT count(*) AS n FROM findings WHERE EXISTS (SELECT 1 FROM findings f2 WHERE f2.namespace = 'research')",
    "SELECT a.summary, b.pod, b.output FROM findings a JOIN falco_events b ON true",
    "SELECT * FROM falco_events f FULL OUTER JOIN findings g ON f.namespace = g.namespace",
    "SELECT * FROM findings t1 NATURAL JOIN findings t2",
    "SELECT * FROM findings a CROSS JOIN falco_events b",
    "SELECT namespace, count(*) FROM findings GROUP BY namespace",
    "SELECT count(*) FILTER (WHERE namespace = 'research') FROM findings",
    "SELECT * FROM datafusion.public.findings",
    "SELECT * FROM public.falco_events",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM information_schema.df_settings",
    "SHOW TABLES",
    "SHOW COLUMNS FROM findings",
    "DESCRIBE findings",
    "EXPLAIN SELECT * FROM findings WHERE namespace = 'research'",
    "EXPLAIN VERBOSE SELECT * FROM falco_events",
    "EXPLAIN ANALYZE SELECT * FROM findings",
    "SELECT * FROM api_audit",
    "SELECT * FROM gpu_metrics, k8s_audit",
    "SELECT array_agg(summary) FROM findings",
    "SELECT string_agg(pod, ',') FROM falco_events",
    "SELECT * FROM findings ORDER BY namespace DESC LIMIT 1",
    "SELECT summary FROM findings WHERE summary LIKE '%research%'",
    "SELECT * FROM 'findings'",
    "SELECT * FROM findings AS OF TIMESTAMP '2020-01-01'",
];

#[tokio::test]
async fn cross_namespace_probes_return_no_foreign_rows() {
    let h = harness().await;
    let markers = foreign_markers(&h);
    let mut answered = 0;
    for sql in PROBES {
        let r = h.sql(SHOP, sql).await;
        let text = r.text();
        for m in &markers {
            assert!(
                !text.contains(m.as_str()),
                "probe {sql:?} answered {} with a foreign value {m:?}: {text}",
                r.status
            );
        }
        // The same probe over Arrow IPC.
        let r2 = h
            .send_with(
                Method::POST,
                "/api/v1/query",
                Some(SHOP),
                Some(("application/json", query_body(sql))),
                &[("accept", "application/vnd.apache.arrow.stream")],
            )
            .await;
        let bytes = String::from_utf8_lossy(&r2.body).into_owned();
        for m in &markers {
            assert!(
                !bytes.contains(m.as_str()),
                "probe {sql:?} (Arrow) leaked {m:?}"
            );
        }
        if r.status == StatusCode::OK {
            answered += 1;
        } else {
            assert!(
                r.status.is_client_error(),
                "probe {sql:?}: {} {text}",
                r.status
            );
        }
    }
    assert!(
        answered >= PROBES.len() / 2,
        "most probes are valid SQL that ran: {answered}"
    );

    // Exact answers: nothing of the other namespace exists for this token.
    for sql in [
        "SELECT count(*) AS n FROM findings WHERE namespace = 'research'",
        "SELECT count(*) AS n FROM findings WHERE namespace IS NULL OR namespace <> 'shop'",
        "SELECT count(*) AS n FROM falco_events WHERE namespace <> 'shop'",
        "SELECT count(*) AS n FROM findings_latest WHERE namespace <> 'shop'",
        "SELECT count(*) AS n FROM findings WHERE EXISTS (SELECT 1 FROM findings f2 WHERE f2.namespace = 'research')",
    ] {
        let v = h.sql(SHOP, sql).await.json();
        assert_eq!(v["rows"][0]["n"], 0, "{sql}: {v}");
    }
    // Positive controls: the same token sees its own rows, the unscoped analyst sees everything.
    let own = h
        .sql(SHOP, "SELECT count(*) AS n FROM findings")
        .await
        .json();
    assert_eq!(
        own["rows"][0]["n"], 14,
        "12 shop findings, one with 3 revisions"
    );
    let all = h
        .sql(ANALYST, "SELECT count(*) AS n FROM findings")
        .await
        .json();
    assert_eq!(all["rows"][0]["n"], 18);
    let leak = h
        .sql(
            ANALYST,
            "SELECT summary FROM findings WHERE namespace = 'research'",
        )
        .await;
    assert!(
        leak.text().contains("in research"),
        "the marker does show for an unscoped token: the probes could fail"
    );
    let events = h.sql(SHOP, "SELECT pod FROM falco_events").await.json();
    assert_eq!(events["row_count"], 2);
    h.stop().await;
}

#[tokio::test]
async fn api_audit_is_readable_by_admin_principals_only() {
    let h = harness().await;
    let _ = h
        .send(Method::GET, "/api/v1/findings", Some(READER), None)
        .await;
    for t in [SHOP, ANALYST] {
        let r = h.sql(t, "SELECT * FROM api_audit").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        let r = h
            .sql(t, "SELECT table_name FROM information_schema.tables")
            .await;
        assert!(!r.text().contains("api_audit"), "{}", r.text());
    }
    let r = h.sql(ADMIN, "SELECT principal FROM api_audit").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["row_count"].as_u64().unwrap() >= 1);
    h.stop().await;
}

#[tokio::test]
async fn foreign_finding_ids_are_404_like_missing_ones() {
    let h = harness().await;
    for id in h
        .ids_in(Some(FOREIGN_MARKER))
        .iter()
        .chain(h.ids_in(None).iter())
    {
        let r = h
            .send(
                Method::GET,
                &format!("/api/v1/findings/{id}"),
                Some(SHOP),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}");
        assert!(!r.text().contains(FOREIGN_POD));
        // The unscoped analyst does see it: the 404 above is the scope, not a missing row.
        let r = h
            .send(
                Method::GET,
                &format!("/api/v1/findings/{id}"),
                Some(ANALYST),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{id}");
    }
    let missing = h
        .send(
            Method::GET,
            "/api/v1/findings/00000000000000000000000000000000",
            Some(SHOP),
            None,
        )
        .await;
    let foreign = h
        .send(
            Method::GET,
            &format!("/api/v1/findings/{}", h.ids_in(Some(FOREIGN_MARKER))[0]),
            Some(SHOP),
            None,
        )
        .await;
    assert_eq!(missing.status, foreign.status);
    assert_eq!(
        missing.body, foreign.body,
        "a foreign id answers exactly like a missing one"
    );
    for bad in ["..%2F..%2Fetc%2Fpasswd", "'%20OR%20'1'%3D'1", "ABCDEF"] {
        assert_eq!(
            h.send(
                Method::GET,
                &format!("/api/v1/findings/{bad}"),
                Some(SHOP),
                None
            )
            .await
            .status,
            StatusCode::NOT_FOUND
        );
    }
    // The list filters cannot widen the scope either.
    let r = h
        .send(
            Method::GET,
            "/api/v1/findings?namespace=research",
            Some(SHOP),
            None,
        )
        .await
        .json();
    assert_eq!(r["findings"].as_array().unwrap().len(), 0);
    let r = h
        .send(Method::GET, "/api/v1/findings?limit=1000", Some(SHOP), None)
        .await;
    assert!(!r.text().contains(FOREIGN_POD) && !r.text().contains("in no namespace"));
    assert_eq!(r.json()["findings"].as_array().unwrap().len(), 12);
    h.stop().await;
}

const FORBIDDEN: &[&str] = &[
    "CREATE TABLE t (x INT)",
    "CREATE TABLE t AS SELECT * FROM findings",
    "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'",
    "CREATE VIEW v AS SELECT * FROM findings",
    "CREATE SCHEMA s",
    "DROP TABLE findings",
    "DROP VIEW IF EXISTS findings",
    "INSERT INTO findings SELECT * FROM findings",
    "DELETE FROM findings",
    "UPDATE findings SET severity = 'info'",
    "COPY findings TO '/tmp/gpusiem-exfil.parquet'",
    "COPY (SELECT * FROM findings) TO '/tmp/gpusiem-exfil.csv' STORED AS CSV",
    "SET datafusion.execution.batch_size = 1",
    "SET TIME ZONE = '+08:00'",
    "BEGIN TRANSACTION",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'file:///etc/passwd'",
    "PREPARE p AS SELECT * FROM findings",
    "SELECT 1; SELECT 2",
    "",
];

#[tokio::test]
async fn forbidden_statement_classes_get_400_and_an_audit_row() {
    let h = harness().await;
    for sql in FORBIDDEN {
        let r = h.sql(ADMIN, sql).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{sql:?}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert!(!std::path::Path::new("/tmp/gpusiem-exfil.parquet").exists());
    assert!(!std::path::Path::new("/tmp/gpusiem-exfil.csv").exists());
    // Nothing changed.
    assert_eq!(
        h.sql(ADMIN, "SELECT count(*) AS n FROM findings")
            .await
            .json()["rows"][0]["n"],
        18
    );

    let rows = h.audit_rows().await;
    for sql in FORBIDDEN {
        let hash = gpusiem::server::audit::sql_sha256(sql);
        let row = rows
            .iter()
            .find(|r| r["sql_sha256"] == hash.as_str())
            .unwrap_or_else(|| panic!("no audit row for {sql:?}"));
        assert_eq!(row["status"], 400);
        assert_eq!(row["principal"], "root");
        assert!(
            matches!(row["outcome"].as_str(), Some("refused" | "invalid")),
            "{sql:?}: {row:?}"
        );
        assert!(
            row["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{row:?}"
        );
    }
    let refused = rows.iter().filter(|r| r["outcome"] == "refused").count();
    assert!(
        refused >= 12,
        "DDL, DML and statements are refused by the sandbox, not merely invalid: {refused}"
    );
    h.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_audited() {
    let h = harness_with(Options {
        limits: gpusiem::server::ApiLimits {
            max_api_body_bytes: 1024,
            max_ingest_body_bytes: 4096,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let big = format!("SELECT '{}'", "x".repeat(2048));
    let r = h.sql(ANALYST, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = h
        .send(
            Method::POST,
            "/ingest/falco",
            Some(INGEST),
            Some(("application/json", vec![b' '; 8192])),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = h
        .send(
            Method::POST,
            "/api/v1/query",
            Some(ANALYST),
            Some(("text/plain", b"SELECT 1".to_vec())),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = h
        .send(
            Method::POST,
            "/api/v1/query",
            Some(ANALYST),
            Some(("application/json", b"{\"sql\": 1}".to_vec())),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let rows = h.audit_rows().await;
    let statuses: Vec<u64> = rows.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [413, 413, 415, 400]);
    assert_eq!(rows[0]["outcome"], "limited");
    h.stop().await;
}

#[tokio::test]
async fn a_principal_over_its_query_concurrency_gets_429_with_retry_after() {
    let h = harness().await;
    let limit = h.state.limits.queries_per_principal;
    let held: Vec<_> = (0..limit)
        .map(|_| h.state.query_slots.try_acquire("analyst", limit).unwrap())
        .collect();
    let r = h.sql(ANALYST, "SELECT 1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    // Other principals are not affected.
    assert_eq!(h.sql(SHOP, "SELECT 1").await.status, StatusCode::OK);
    drop(held);
    assert_eq!(h.sql(ANALYST, "SELECT 1").await.status, StatusCode::OK);
    let rows = h.audit_rows().await;
    assert_eq!(rows[0]["status"], 429);
    assert_eq!(rows[0]["outcome"], "limited");
    assert_eq!(
        rows[0]["sql_sha256"],
        gpusiem::server::audit::sql_sha256("SELECT 1")
    );
    h.stop().await;
}

#[tokio::test]
async fn without_tokens_every_request_is_anonymous_with_every_scope() {
    let h = harness_with(Options {
        tokens: false,
        ..Options::default()
    })
    .await;
    assert_eq!(
        h.send(Method::GET, "/api/v1/findings", None, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.sql(WRONG, "SELECT count(*) AS n FROM findings")
            .await
            .json()["rows"][0]["n"],
        18
    );
    let r = h
        .send(
            Method::POST,
            "/ingest/falco",
            None,
            Some(("application/json", falco_fixture())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let rows = h.audit_rows().await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["principal"] == "anonymous"
        && r["auth"] == "anonymous"
        && r["namespaces"].is_null()));
    h.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_responses_metrics_or_the_audit() {
    let h = harness().await;
    for t in [ADMIN, SHOP, WRONG] {
        let _ = h.send(Method::GET, "/api/v1/findings", Some(t), None).await;
    }
    let metrics = h
        .send(Method::GET, "/metrics", Some(READER), None)
        .await
        .text();
    let audit = serde_json::to_string(&h.audit_rows().await).unwrap();
    let debug = format!("{:?}", h.state.auth);
    for secret in [ADMIN, SHOP, ANALYST, READER, INGEST, ADMIN_ONLY, WRONG] {
        assert!(
            !metrics.contains(secret) && !audit.contains(secret) && !debug.contains(secret),
            "{secret} leaked"
        );
    }
    assert!(metrics.contains("gpusiem_api_requests_total"), "{metrics}");
    assert!(
        metrics.contains("gpusiem_api_auth_failures_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_burst_above_the_rate_limit_gets_429_with_retry_after() {
    let h = harness_with(Options {
        limits: gpusiem::server::ApiLimits {
            requests_per_second: 0.001,
            burst: 5,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..50 {
        statuses.push(
            h.send(Method::GET, "/api/v1/findings?limit=1", Some(READER), None)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 45);
    let r = h
        .send(Method::GET, "/api/v1/findings", Some(READER), None)
        .await;
    assert!(
        r.headers
            .get(header::RETRY_AFTER)
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another principal has its own budget; ingest is limited by back-pressure, not here.
    assert_eq!(
        h.send(Method::GET, "/api/v1/findings?limit=1", Some(ANALYST), None)
            .await
            .status,
        StatusCode::OK
    );
    // Guessing tokens is limited per peer address too.
    let guesses: Vec<u16> = futures_statuses(&h, 10).await;
    assert_eq!(
        guesses.iter().filter(|s| **s == 401).count(),
        5,
        "{guesses:?}"
    );
    assert_eq!(guesses.iter().filter(|s| **s == 429).count(), 5);
    let rows = h.audit_rows().await;
    assert_eq!(
        rows.iter().filter(|r| r["outcome"] == "limited").count(),
        46 + 5,
        "limited requests are audited"
    );
    h.stop().await;
}

async fn futures_statuses(h: &Harness, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let token = format!("guess-{i:020}");
        out.push(
            h.send(Method::GET, "/api/v1/findings", Some(&token), None)
                .await
                .status
                .as_u16(),
        );
    }
    out
}
