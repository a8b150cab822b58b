//! `GET /api/v1/findings` and `GET /api/v1/findings/{id}`.
//!
//! The `findings` table holds one row per emission (revision) of an episode. The list answers
//! the latest revision of each finding, newest first (`ts`, then `id`, descending), filtered
//! and paginated with an opaque cursor. The single-finding route answers the latest revision,
//! every revision, and the source rows that contributed (`event_ids`). Both go through
//! [`QueryEngine::dataframe`](crate::query::QueryEngine::dataframe) with the principal's
//! namespace scope, and build their filters as expressions: no SQL text is made from input. A
//! finding of a namespace the principal may not see is indistinguishable from one that does not
//! exist (404, OWASP API1).

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use datafusion::dataframe::DataFrame;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt};
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;
use gpusiem_detect::Severity;
use gpusiem_detect::finding::columns as fc;
use gpusiem_ingest::Stream;
use gpusiem_ingest::schema as sc;
use gpusiem_ingest::time::{format_rfc3339_nanos, parse_rfc3339_nanos};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::audit::AuditNote;
use super::query::json_array;
use super::{AppState, ErrorReply};
use crate::auth::Principal;

/// The findings table.
const FINDINGS: &str = "findings";
/// Default page size.
pub const DEFAULT_PAGE: usize = 100;
/// Most contributing rows answered per stream.
pub const MAX_EVENT_ROWS: usize = 500;
/// Most `gpu_metrics` sample ids looked up for one finding.
const MAX_GPU_SAMPLES: usize = 100;
const ROW_NUMBER: &str = "__revision_rank";

/// Filters of `GET /api/v1/findings`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Minimum severity (`info` … `critical`).
    pub severity: Option<String>,
    /// Exact namespace.
    pub namespace: Option<String>,
    /// Exact pod.
    pub pod: Option<String>,
    /// Exact detector or rule id.
    pub detector: Option<String>,
    /// `firing` or `resolved` (of the latest revision).
    pub status: Option<String>,
    /// RFC 3339: findings whose latest evidence (`last_ts`) is at or after it.
    pub since: Option<String>,
    /// RFC 3339: findings first raised (`ts`) before it.
    pub until: Option<String>,
    /// Page size, 1 … the configured maximum (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(StatusCode::BAD_REQUEST, message)
}

fn internal(e: datafusion::error::DataFusionError) -> ErrorReply {
    ErrorReply::from(crate::Error::Query {
        kind: "internal",
        reason: e.to_string(),
    })
}

fn ts_lit(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(ns),
        Some(Arc::from("UTC")),
    ))
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ErrorReply> {
    value
        .map(|v| {
            parse_rfc3339_nanos(v)
                .ok_or_else(|| bad_request(format!("`{name}` must be an RFC 3339 time")))
        })
        .transpose()
}

/// Encodes a page position: hex of `<ts>.<id>`.
pub fn encode_cursor(ts: i64, id: &str) -> String {
    hex::encode(format!("{ts}.{id}"))
}

/// Decodes [`encode_cursor`]'s output.
pub fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (ts, id) = text.split_once('.')?;
    if !valid_id(id) {
        return None;
    }
    Some((ts.parse().ok()?, id.to_string()))
}

/// A finding id is 32 lower-case hex characters.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs `df` with the engine's timeout, memory pool and result caps.
async fn collect(s: &AppState, df: DataFrame) -> Result<Vec<RecordBatch>, ErrorReply> {
    Ok(s.engine.collect(df).await?.batches)
}

/// `GET /api/v1/findings`.
pub async fn list(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ErrorReply> {
    let Query(p) = params.map_err(|e| bad_request(e.body_text()))?;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > s.limits.max_page {
        return Err(bad_request(format!(
            "`limit` must be 1 … {}",
            s.limits.max_page
        )));
    }
    let min_rank = p
        .severity
        .as_deref()
        .map(|v| {
            Severity::parse(v).map(Severity::rank).ok_or_else(|| {
                bad_request("`severity` must be info, low, medium, high or critical")
            })
        })
        .transpose()?;
    if p.status
        .as_deref()
        .is_some_and(|st| st != "firing" && st != "resolved")
    {
        return Err(bad_request("`status` must be firing or resolved"));
    }
    let since = time_param("since", p.since.as_deref())?;
    let until = time_param("until", p.until.as_deref())?;
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c).ok_or_else(|| bad_request("`cursor` is not a cursor of this API"))
        })
        .transpose()?;

    let mut df = s
        .engine
        .dataframe(FINDINGS, &principal.namespace_scope())
        .await?;
    // Filters on what every revision of a finding shares go before the window.
    let mut shared: Vec<Expr> = Vec::new();
    if let Some(ns) = &p.namespace {
        shared.push(col(sc::NAMESPACE).eq(lit(ns.as_str())));
    }
    if let Some(pod) = &p.pod {
        shared.push(col(sc::POD).eq(lit(pod.as_str())));
    }
    if let Some(d) = &p.detector {
        shared.push(col(fc::DETECTOR).eq(lit(d.as_str())));
    }
    if let Some(u) = until {
        shared.push(col(sc::TS).lt(ts_lit(u)));
    }
    if let Some((ts, id)) = &cursor {
        shared.push(
            col(sc::TS).lt(ts_lit(*ts)).or(col(sc::TS)
                .eq(ts_lit(*ts))
                .and(col(fc::ID).lt(lit(id.as_str())))),
        );
    }
    for f in shared {
        df = df.filter(f).map_err(internal)?;
    }
    let rank = row_number()
        .partition_by(vec![col(fc::ID)])
        .order_by(vec![
            col(fc::REVISION).sort(false, false),
            col(fc::LAST_TS).sort(false, false),
        ])
        .build()
        .map_err(internal)?
        .alias(ROW_NUMBER);
    df = df
        .window(vec![rank])
        .map_err(internal)?
        .filter(col(ROW_NUMBER).eq(lit(1u64)))
        .map_err(internal)?;
    if let Some(r) = min_rank {
        df = df
            .filter(col(fc::SEVERITY_RANK).gt_eq(lit(r)))
            .map_err(internal)?;
    }
    if let Some(st) = &p.status {
        df = df
            .filter(col(fc::STATUS).eq(lit(st.as_str())))
            .map_err(internal)?;
    }
    if let Some(since) = since {
        df = df
            .filter(col(fc::LAST_TS).gt_eq(ts_lit(since)))
            .map_err(internal)?;
    }
    let df = df
        .sort(vec![
            col(sc::TS).sort(false, false),
            col(fc::ID).sort(false, false),
        ])
        .map_err(internal)?
        .limit(0, Some(limit + 1))
        .map_err(internal)?;
    let mut rows = finding_rows(&collect(&s, df).await?)?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .and_then(row_position)
            .map(|(ts, id)| encode_cursor(ts, &id))
    } else {
        None
    };
    let n = rows.len() as u64;
    let mut resp = axum::Json(serde_json::json!({ "findings": rows, "next_cursor": next_cursor }))
        .into_response();
    resp.extensions_mut().insert(AuditNote {
        rows: Some(n),
        ..AuditNote::default()
    });
    Ok(resp)
}

/// The (ts, id) of a finding row, as written by [`finding_rows`].
fn row_position(row: &Map<String, Value>) -> Option<(i64, String)> {
    let ts = parse_rfc3339_nanos(row.get(sc::TS)?.as_str()?)?;
    Some((ts, row.get(fc::ID)?.as_str()?.to_string()))
}

/// `GET /api/v1/findings/{id}`.
pub async fn get_one(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ErrorReply> {
    let not_found = || ErrorReply::new(StatusCode::NOT_FOUND, "no such finding");
    if !valid_id(&id) {
        return Err(not_found());
    }
    let scope = principal.namespace_scope();
    let df = s
        .engine
        .dataframe(FINDINGS, &scope)
        .await?
        .filter(col(fc::ID).eq(lit(id.as_str())))
        .map_err(internal)?
        .sort(vec![col(fc::REVISION).sort(true, false)])
        .map_err(internal)?;
    let batches = collect(&s, df).await?;
    let mut event_ids: Vec<String> = Vec::new();
    for b in &batches {
        if let Some(list) = b
            .column_by_name(fc::EVENT_IDS)
            .and_then(|c| c.as_list_opt::<i32>())
        {
            for i in 0..list.len() {
                if list.is_null(i) {
                    continue;
                }
                let values = list.value(i);
                if let Some(strings) = values.as_string_opt::<i32>() {
                    for e in strings.iter().flatten() {
                        if !event_ids.iter().any(|x| x == e) {
                            event_ids.push(e.to_string());
                        }
                    }
                }
            }
        }
    }
    let revisions = finding_rows(&batches)?;
    let Some(latest) = revisions.last().cloned() else {
        return Err(not_found());
    };

    let mut events = Map::new();
    let mut total = 0u64;
    for (stream, filter) in contributing_filters(&event_ids) {
        let df = s
            .engine
            .dataframe(stream.name(), &scope)
            .await?
            .filter(filter)
            .map_err(internal)?
            .sort(vec![col(sc::TS).sort(true, false)])
            .map_err(internal)?
            .limit(0, Some(MAX_EVENT_ROWS))
            .map_err(internal)?;
        let rows = event_rows(&collect(&s, df).await?)?;
        total += rows.len() as u64;
        events.insert(
            stream.name().to_string(),
            Value::Array(rows.into_iter().map(Value::Object).collect()),
        );
    }
    let body = serde_json::json!({ "finding": latest, "revisions": revisions, "events": events });
    let mut resp = axum::Json(body).into_response();
    resp.extensions_mut().insert(AuditNote {
        rows: Some(1 + total),
        ..AuditNote::default()
    });
    Ok(resp)
}

/// One filter per stream that has contributing event ids: `falco:<event_id>`,
/// `k8s_audit:<event_id>`, `gpu_metrics:<GPU uuid>[/…]@<RFC 3339 time>`.
pub fn contributing_filters(event_ids: &[String]) -> Vec<(Stream, Expr)> {
    let mut falco = Vec::new();
    let mut audit = Vec::new();
    let mut gpu: Vec<Expr> = Vec::new();
    for e in event_ids {
        if let Some(id) = e
            .strip_prefix("falco:")
            .or_else(|| e.strip_prefix("falco_events:"))
        {
            falco.push(lit(id.to_string()));
        } else if let Some(id) = e.strip_prefix("k8s_audit:") {
            audit.push(lit(id.to_string()));
        } else if let Some(rest) = e.strip_prefix("gpu_metrics:") {
            if gpu.len() >= MAX_GPU_SAMPLES {
                continue;
            }
            let Some((key, at)) = rest.rsplit_once('@') else {
                continue;
            };
            let (Some(uuid), Some(ts)) = (
                key.split('/').next().filter(|u| !u.is_empty()),
                parse_rfc3339_nanos(at),
            ) else {
                continue;
            };
            gpu.push(
                col(sc::GPU_UUID)
                    .eq(lit(uuid.to_string()))
                    .and(col(sc::TS).eq(ts_lit(ts))),
            );
        }
    }
    let mut out = Vec::new();
    if !falco.is_empty() {
        out.push((Stream::FalcoEvents, col(sc::EVENT_ID).in_list(falco, false)));
    }
    if !audit.is_empty() {
        out.push((Stream::K8sAudit, col(sc::EVENT_ID).in_list(audit, false)));
    }
    if let Some(first) = gpu.pop() {
        out.push((Stream::GpuMetrics, gpu.into_iter().fold(first, Expr::or)));
    }
    out
}

/// Rows as JSON objects, every nanosecond timestamp column as RFC 3339 (`…Z`, nanoseconds),
/// like a finding's JSON.
fn event_rows(batches: &[RecordBatch]) -> Result<Vec<Map<String, Value>>, ErrorReply> {
    let mut out = Vec::new();
    for b in batches {
        let rows: Vec<Map<String, Value>> =
            serde_json::from_slice(&json_array(std::slice::from_ref(b))?)
                .map_err(|_| ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding"))?;
        let schema = b.schema();
        let ts_columns: Vec<(&str, &arrow::array::PrimitiveArray<TimestampNanosecondType>)> =
            schema
                .fields()
                .iter()
                .zip(b.columns())
                .filter(|(f, _)| {
                    matches!(f.data_type(), DataType::Timestamp(TimeUnit::Nanosecond, _))
                })
                .filter_map(|(f, c)| {
                    Some((
                        f.name().as_str(),
                        c.as_primitive_opt::<TimestampNanosecondType>()?,
                    ))
                })
                .collect();
        for (i, mut row) in rows.into_iter().enumerate() {
            for (name, array) in &ts_columns {
                let v = if array.is_null(i) {
                    Value::Null
                } else {
                    Value::String(format_rfc3339_nanos(array.value(i)))
                };
                row.insert((*name).to_string(), v);
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// Finding rows in the shape of a finding's JSON: times RFC 3339, `evidence` an object, no
/// `severity_rank`.
fn finding_rows(batches: &[RecordBatch]) -> Result<Vec<Map<String, Value>>, ErrorReply> {
    let mut rows = event_rows(batches)?;
    for row in &mut rows {
        row.remove(fc::SEVERITY_RANK);
        row.remove(ROW_NUMBER);
        let parsed = match row.get(fc::EVIDENCE) {
            Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok(),
            _ => None,
        };
        if let Some(v) = parsed {
            row.insert(fc::EVIDENCE.to_string(), v);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let id = "0123456789abcdef0123456789abcdef";
        let c = encode_cursor(-5, id);
        assert_eq!(decode_cursor(&c), Some((-5, id.to_string())));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(
            decode_cursor(&hex::encode("12.' OR 1=1 --")),
            None,
            "the id part must be a finding id"
        );
        assert_eq!(decode_cursor(&hex::encode(format!("x.{id}"))), None);
    }

    #[test]
    fn ids_are_32_lowercase_hex() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_id("0123456789abcdef0123456789abcde"));
        assert!(!valid_id("' OR '1'='1"));
    }

    #[test]
    fn event_ids_become_one_filter_per_stream() {
        let ids: Vec<String> = [
            "falco:abc",
            "k8s_audit:a1/ResponseComplete",
            "gpu_metrics:GPU-1/ml/nb-0@1970-01-01T00:00:01.000000000Z",
            "gpu_metrics:GPU-2/<none>@1970-01-01T00:00:02.000000000Z",
            "gpu_metrics:broken",
            "finding:0123",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = contributing_filters(&ids);
        let streams: Vec<Stream> = f.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            streams,
            [Stream::FalcoEvents, Stream::K8sAudit, Stream::GpuMetrics]
        );
        let gpu = f[2].1.to_string();
        assert!(
            gpu.contains("GPU-1") && gpu.contains("GPU-2") && gpu.contains(" OR "),
            "{gpu}"
        );
        assert!(contributing_filters(&[]).is_empty());
    }
}
