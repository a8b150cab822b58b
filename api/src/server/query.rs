//! `POST /api/v1/query`: `{"sql": "…"}` → rows as JSON, or an Arrow IPC stream when the
//! request says `Accept: application/vnd.apache.arrow.stream`.
//!
//! The SQL goes to [`QueryEngine::sql`](crate::query::QueryEngine::sql) (or `sql_as_admin` for
//! principals with the `admin` scope, who also see `api_audit`) with the principal's namespace
//! scope; the engine refuses
//! every statement that is not a read-only query (400, audited as `refused`), bounds time,
//! memory and result size, and its table providers add the namespace filter to every scan.
//! Each principal runs at most `queries_per_principal` queries at once (429 beyond).

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use axum::Extension;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::audit::{AuditNote, sql_sha256};
use super::{AppState, ErrorReply};
use crate::auth::{Principal, Scope};

/// Media type of the Arrow IPC streaming format.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
/// Response header: `true` when the engine cut the result at its row or byte cap.
pub const TRUNCATED_HEADER: &str = "x-gpusiem-truncated";
/// Response header: rows in the result.
pub const ROWS_HEADER: &str = "x-gpusiem-rows";

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One read-only SQL statement.
    pub sql: String,
}

/// Timestamps in JSON answers: RFC 3339 with nanoseconds and the offset.
const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.9f%:z";

/// Rows of `batches` as one JSON array of objects (nulls explicit).
pub fn json_array(batches: &[RecordBatch]) -> Result<Vec<u8>, ErrorReply> {
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.into())
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for b in batches {
        w.write(b).map_err(encode_error)?;
    }
    w.finish().map_err(encode_error)?;
    Ok(w.into_inner())
}

/// `batches` as an Arrow IPC stream.
pub fn ipc_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ErrorReply> {
    let mut w =
        arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema).map_err(encode_error)?;
    for b in batches {
        w.write(b).map_err(encode_error)?;
    }
    w.finish().map_err(encode_error)?;
    w.into_inner().map_err(encode_error)
}

fn encode_error(e: arrow::error::ArrowError) -> ErrorReply {
    tracing::error!(error = %e, "encoding a result");
    ErrorReply::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "could not encode the result",
    )
}

/// Whether the client asked for Arrow IPC.
fn wants_arrow(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(ARROW_STREAM))
        })
}

/// The handler.
pub async fn run(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Response, ErrorReply> {
    let Json(request) = body.map_err(|rejection| {
        // 413 (body limit) and 415 (not JSON) stand; malformed or mistyped JSON is a 400.
        let status = match rejection.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        ErrorReply::new(
            status,
            format!(
                "the body must be {{\"sql\": \"…\"}}: {}",
                rejection.body_text()
            ),
        )
    })?;
    let hash = Some(sql_sha256(&request.sql));
    let Some(_slot) = s
        .query_slots
        .try_acquire(principal.name(), s.limits.queries_per_principal)
    else {
        return Err(ErrorReply::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many concurrent queries for this principal",
        )
        .sql(hash));
    };
    s.metrics.api.queries_in_flight.inc();
    // `api_audit` and other admin-only tables are visible to admin principals only.
    let scope = principal.namespace_scope();
    let result = if principal.has(Scope::Admin) {
        s.engine.sql_as_admin(&request.sql, &scope).await
    } else {
        s.engine.sql(&request.sql, &scope).await
    };
    s.metrics.api.queries_in_flight.dec();
    let out = result.map_err(|e| ErrorReply::from(e).sql(hash.clone()))?;
    let rows = out.rows as u64;
    s.metrics.api.query_rows.inc_by(rows);
    let note = AuditNote {
        sql_sha256: hash.clone(),
        rows: Some(rows),
        ..AuditNote::default()
    };
    let mut resp = if wants_arrow(&headers) {
        let body = ipc_stream(&out.schema, &out.batches).map_err(|e| e.sql(hash.clone()))?;
        ([(header::CONTENT_TYPE, ARROW_STREAM)], body).into_response()
    } else {
        let array = json_array(&out.batches).map_err(|e| e.sql(hash.clone()))?;
        let columns: Vec<serde_json::Value> = out
            .schema
            .fields()
            .iter()
            .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
            .collect();
        let mut body = Vec::with_capacity(array.len() + 256);
        body.extend_from_slice(b"{\"columns\":");
        body.extend_from_slice(
            &serde_json::to_vec(&columns)
                .map_err(|_| ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding"))?,
        );
        body.extend_from_slice(b",\"rows\":");
        body.extend_from_slice(&array);
        body.extend_from_slice(
            format!(",\"row_count\":{rows},\"truncated\":{}}}", out.truncated).as_bytes(),
        );
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        TRUNCATED_HEADER,
        HeaderValue::from_static(if out.truncated { "true" } else { "false" }),
    );
    h.insert(ROWS_HEADER, HeaderValue::from(rows));
    resp.extensions_mut().insert(note);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("pod", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![1_000_000_001]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![None::<&str>])),
                Arc::new(Int64Array::from(vec![7])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn json_rows_keep_nulls_and_nanoseconds() {
        let v: serde_json::Value =
            serde_json::from_slice(&json_array(&[batch()]).expect("json")).expect("valid json");
        assert_eq!(
            v,
            serde_json::json!([{ "ts": "1970-01-01T00:00:01.000000001+00:00", "pod": null, "n": 7 }])
        );
        assert_eq!(json_array(&[]).expect("json"), b"[]");
    }

    #[test]
    fn ipc_stream_round_trips() {
        let b = batch();
        let bytes = ipc_stream(&b.schema(), &[b.clone(), b.clone()]).expect("ipc");
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("reader");
        let read: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
        assert_eq!(read, vec![b.clone(), b]);
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!wants_arrow(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, application/vnd.apache.arrow.stream;q=0.9"),
        );
        assert!(wants_arrow(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.apache.arrow.file"),
        );
        assert!(!wants_arrow(&h));
    }
}
