//! `api_audit`: one row per API request — who, what, how much, how it ended.
//!
//! Modelled on the Kubernetes audit event (who, verb, object, response status, timestamps). The
//! row is appended to the store *before* the response is handed to the client, for accepted and
//! refused requests alike (401, 403, 400 for forbidden SQL, 413, 429, …). The SQL text is not
//! stored, only its SHA-256: the text may hold the values an analyst searched for.
//!
//! The table is registered admin-only: the query engine shows it only to principals holding
//! the `admin` scope (and it has no `namespace` column to scope by). The liveness and readiness probes (`/healthz`, `/readyz`) are not
//! recorded: they carry no data, need no credentials, and must keep answering when the store
//! does not.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
    UInt16Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sha2::{Digest, Sha256};

use crate::store::Store;

/// The table name.
pub const TABLE: &str = "api_audit";

/// Column names of `api_audit`.
pub mod columns {
    /// When the request arrived (wall clock), ns since the epoch, UTC.
    pub const TS: &str = "ts";
    /// Principal name (`anonymous`, a token's name, `cert:<fingerprint>`, `unauthenticated`).
    pub const PRINCIPAL: &str = "principal";
    /// `anonymous`, `token`, `certificate` or `none`.
    pub const AUTH: &str = "auth";
    /// The principal's namespaces; null = every namespace.
    pub const NAMESPACES: &str = "namespaces";
    /// HTTP method.
    pub const METHOD: &str = "method";
    /// Route template (`/api/v1/findings/{id}`), or `unmatched`.
    pub const ROUTE: &str = "route";
    /// Request path (without the query string), at most 512 bytes.
    pub const PATH: &str = "path";
    /// Response status code.
    pub const STATUS: &str = "status";
    /// `ok`, `unauthenticated`, `forbidden`, `refused`, `invalid`, `not_found`, `limited`,
    /// `timeout`, `error`.
    pub const OUTCOME: &str = "outcome";
    /// Why it was refused or failed (no payload values, no secrets).
    pub const REASON: &str = "reason";
    /// SHA-256 (hex) of the SQL text, for `/api/v1/query`.
    pub const SQL_SHA256: &str = "sql_sha256";
    /// Rows returned (query and findings routes) or accepted (ingest routes).
    pub const ROWS: &str = "rows";
    /// Response body bytes.
    pub const BYTES: &str = "bytes";
    /// Duration from arrival to the response head, milliseconds.
    pub const DURATION_MS: &str = "duration_ms";
    /// Peer address (`ip:port`), when known.
    pub const REMOTE_ADDR: &str = "remote_addr";
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let utf8 = |n: &str, nullable| Field::new(n, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new(columns::TS, gpusiem_ingest::schema::ts_type(), false),
        utf8(columns::PRINCIPAL, false),
        utf8(columns::AUTH, false),
        Field::new(
            columns::NAMESPACES,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        utf8(columns::METHOD, false),
        utf8(columns::ROUTE, false),
        utf8(columns::PATH, false),
        Field::new(columns::STATUS, DataType::UInt16, false),
        utf8(columns::OUTCOME, false),
        utf8(columns::REASON, true),
        utf8(columns::SQL_SHA256, true),
        Field::new(columns::ROWS, DataType::UInt64, true),
        Field::new(columns::BYTES, DataType::UInt64, true),
        Field::new(columns::DURATION_MS, DataType::Float64, false),
        utf8(columns::REMOTE_ADDR, true),
    ]))
});

/// Arrow schema of `api_audit`.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// One audited request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditRecord {
    /// Arrival, ns since the epoch.
    pub ts: i64,
    /// Principal name.
    pub principal: String,
    /// How it authenticated.
    pub auth: &'static str,
    /// Its namespaces (`None` = every namespace).
    pub namespaces: Option<Vec<String>>,
    /// HTTP method.
    pub method: String,
    /// Route template.
    pub route: String,
    /// Request path.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Outcome class.
    pub outcome: &'static str,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    /// SHA-256 of the SQL text.
    pub sql_sha256: Option<String>,
    /// Rows returned or accepted.
    pub rows: Option<u64>,
    /// Response body bytes.
    pub bytes: Option<u64>,
    /// Milliseconds.
    pub duration_ms: f64,
    /// Peer address.
    pub remote_addr: Option<String>,
}

/// What a handler tells the audit layer about its request, through the response's extensions.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// SHA-256 of the SQL text.
    pub sql_sha256: Option<String>,
    /// Rows returned or accepted.
    pub rows: Option<u64>,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    /// Overrides the outcome derived from the status (`refused` for forbidden SQL).
    pub outcome: Option<&'static str>,
}

/// Hex SHA-256 of a SQL text.
pub fn sql_sha256(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// The outcome class of a status code.
pub fn outcome_of(status: u16) -> &'static str {
    match status {
        200..=399 => "ok",
        401 => "unauthenticated",
        403 => "forbidden",
        404 | 405 => "not_found",
        408 | 504 => "timeout",
        413 | 422 | 429 | 431 => "limited",
        400..=499 => "invalid",
        _ => "error",
    }
}

/// Records as one batch in [`schema`].
pub fn to_record_batch(records: &[AuditRecord]) -> RecordBatch {
    let n = records.len();
    let mut ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut principal = StringBuilder::new();
    let mut auth = StringBuilder::new();
    let mut namespaces = ListBuilder::new(StringBuilder::new());
    let mut method = StringBuilder::new();
    let mut route = StringBuilder::new();
    let mut path = StringBuilder::new();
    let mut status = UInt16Builder::with_capacity(n);
    let mut outcome = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut sql = StringBuilder::new();
    let mut rows = UInt64Builder::with_capacity(n);
    let mut bytes = UInt64Builder::with_capacity(n);
    let mut duration = Float64Builder::with_capacity(n);
    let mut remote = StringBuilder::new();
    for r in records {
        ts.append_value(r.ts);
        principal.append_value(&r.principal);
        auth.append_value(r.auth);
        match &r.namespaces {
            Some(list) => {
                for ns in list {
                    namespaces.values().append_value(ns);
                }
                namespaces.append(true);
            }
            None => namespaces.append(false),
        }
        method.append_value(&r.method);
        route.append_value(&r.route);
        path.append_value(&r.path);
        status.append_value(r.status);
        outcome.append_value(r.outcome);
        reason.append_option(r.reason.as_deref());
        sql.append_option(r.sql_sha256.as_deref());
        rows.append_option(r.rows);
        bytes.append_option(r.bytes);
        duration.append_value(r.duration_ms);
        remote.append_option(r.remote_addr.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        Arc::new(principal.finish()),
        Arc::new(auth.finish()),
        Arc::new(namespaces.finish()),
        Arc::new(method.finish()),
        Arc::new(route.finish()),
        Arc::new(path.finish()),
        Arc::new(status.finish()),
        Arc::new(outcome.finish()),
        Arc::new(reason.finish()),
        Arc::new(sql.finish()),
        Arc::new(rows.finish()),
        Arc::new(bytes.finish()),
        Arc::new(duration.finish()),
        Arc::new(remote.finish()),
    ];
    RecordBatch::try_new(schema(), columns).expect("builders follow the api_audit schema")
}

/// Appends audit rows to the store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<Store>,
}

impl AuditLog {
    /// Registers `api_audit` in `store` as an admin-only table and returns the log that
    /// appends to it.
    pub fn open(store: Arc<Store>) -> crate::Result<AuditLog> {
        store.register_admin_table(TABLE, schema())?;
        Ok(AuditLog { store })
    }

    /// Appends one record; returns once the store has it.
    pub async fn record(&self, record: AuditRecord) -> crate::Result<()> {
        self.store
            .append_table(TABLE, &to_record_batch(std::slice::from_ref(&record)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt64Type;

    use super::*;

    #[test]
    fn records_round_trip_through_the_schema() {
        let r = AuditRecord {
            ts: 1,
            principal: "analyst".into(),
            auth: "token",
            namespaces: Some(vec!["shop".into()]),
            method: "POST".into(),
            route: "/api/v1/query".into(),
            path: "/api/v1/query".into(),
            status: 400,
            outcome: "refused",
            reason: Some("DDL is not allowed".into()),
            sql_sha256: Some(sql_sha256("CREATE TABLE t (x INT)")),
            rows: None,
            bytes: Some(40),
            duration_ms: 1.5,
            remote_addr: None,
        };
        let anon = AuditRecord {
            principal: "anonymous".into(),
            namespaces: None,
            rows: Some(3),
            ..r.clone()
        };
        let b = to_record_batch(&[r, anon]);
        assert_eq!(b.num_rows(), 2);
        let ns = b
            .column_by_name(columns::NAMESPACES)
            .expect("namespaces")
            .as_list::<i32>();
        assert!(ns.is_valid(0) && ns.is_null(1));
        let rows = b
            .column_by_name(columns::ROWS)
            .expect("rows")
            .as_primitive::<UInt64Type>();
        assert!(rows.is_null(0));
        assert_eq!(rows.value(1), 3);
        assert!(
            b.schema().column_with_name("namespace").is_none(),
            "no namespace column: admin-only table"
        );
    }

    #[test]
    fn sql_hash_is_sha256_hex() {
        assert_eq!(
            sql_sha256(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn outcomes_follow_status_classes() {
        assert_eq!(outcome_of(200), "ok");
        assert_eq!(outcome_of(401), "unauthenticated");
        assert_eq!(outcome_of(403), "forbidden");
        assert_eq!(outcome_of(413), "limited");
        assert_eq!(outcome_of(429), "limited");
        assert_eq!(outcome_of(400), "invalid");
        assert_eq!(outcome_of(503), "error");
    }
}
