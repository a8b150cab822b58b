//! HTTP receivers: `POST /ingest/falco` (Falco `http_output`, falcosidekick's body) and
//! `POST /ingest/k8s-audit` (the API server's audit webhook `EventList`).
//!
//! Both live on the API listener (the API crate merges [`HttpReceivers::router`] into its
//! router and puts authentication in front). A request is answered only after its rows are
//! durable:
//!
//! * body above `max_body_bytes` (checked on `Content-Length` first, then while reading, and
//!   again after gzip decompression) → `413`;
//! * pipeline full for longer than the route's enqueue timeout → `429` with `Retry-After`
//!   (the audit webhook retries with backoff; Falco does not retry, so its route waits longer
//!   before refusing);
//! * written → `200 {"accepted":N,"quarantined":M}`; nothing decodable → `400` with the
//!   reasons (the records are in quarantine either way);
//! * the pipeline failed to write → `503` with `Retry-After`.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::decode::{self, Quarantined};
use crate::schema::Stream;
use crate::source::{SourceContext, now_nanos};
use crate::{Ack, Batch, Delivery};

/// Limits and timeouts of the receivers.
#[derive(Debug, Clone)]
pub struct HttpReceiverConfig {
    /// Largest request body, before and after decompression.
    pub max_body_bytes: usize,
    /// How long a Falco request waits for room in the pipeline before `429`.
    pub falco_enqueue_timeout: Duration,
    /// How long an audit webhook request waits for room in the pipeline before `429`.
    pub audit_enqueue_timeout: Duration,
    /// How long a request waits for its rows to be written before `503`.
    pub ack_timeout: Duration,
    /// `Retry-After` seconds sent with `429` and `503`.
    pub retry_after_secs: u32,
}

impl Default for HttpReceiverConfig {
    fn default() -> Self {
        HttpReceiverConfig {
            max_body_bytes: 8 << 20,
            falco_enqueue_timeout: Duration::from_secs(2),
            audit_enqueue_timeout: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(30),
            retry_after_secs: 1,
        }
    }
}

/// The receivers, ready to be mounted on the API router.
#[derive(Clone)]
pub struct HttpReceivers {
    inner: Arc<Inner>,
}

struct Inner {
    cx: SourceContext,
    config: HttpReceiverConfig,
}

/// Route of the Falco receiver.
pub const FALCO_PATH: &str = "/ingest/falco";
/// Route of the Kubernetes audit receiver.
pub const K8S_AUDIT_PATH: &str = "/ingest/k8s-audit";

impl HttpReceivers {
    /// Receivers that send into `cx.out`.
    pub fn new(cx: SourceContext, config: HttpReceiverConfig) -> Self {
        HttpReceivers {
            inner: Arc::new(Inner { cx, config }),
        }
    }

    /// `POST /ingest/falco` and `POST /ingest/k8s-audit`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(FALCO_PATH, post(falco))
            .route(K8S_AUDIT_PATH, post(k8s_audit))
            .with_state(self.inner.clone())
    }
}

async fn falco(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Body) -> Response {
    receive(
        &inner,
        Stream::FalcoEvents,
        FALCO_PATH,
        inner.config.falco_enqueue_timeout,
        headers,
        body,
    )
    .await
}

async fn k8s_audit(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Body) -> Response {
    receive(
        &inner,
        Stream::K8sAudit,
        K8S_AUDIT_PATH,
        inner.config.audit_enqueue_timeout,
        headers,
        body,
    )
    .await
}

async fn receive(
    inner: &Inner,
    stream: Stream,
    path: &'static str,
    enqueue_timeout: Duration,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cx = &inner.cx;
    let limit = inner.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        cx.metrics.record_error("http", "too_large");
        return too_large(limit);
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            cx.metrics.record_error("http", "too_large");
            return too_large(limit);
        }
    };
    let bytes = match decompress(&headers, bytes, limit) {
        Ok(b) => b,
        Err(refusal) => {
            cx.metrics.record_error("http", refusal.reason());
            return refusal.response(limit);
        }
    };
    let decode_cx = cx.decode_context(now_nanos());
    let decoded = match decode::decode(stream, &bytes, &decode_cx) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, %stream, "decoder failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "decoder failed", None);
        }
    };
    let (accepted, quarantined) = (decoded.batch.num_rows(), decoded.quarantined.len());
    if accepted == 0 && quarantined == 0 {
        return summary(StatusCode::OK, 0, &[]);
    }
    let reasons = decoded.quarantined.clone();
    let permit = tokio::select! {
        p = tokio::time::timeout(enqueue_timeout, cx.out.reserve()) => p,
        () = cx.shutdown.cancelled() => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down", Some(inner.config.retry_after_secs)),
    };
    let permit = match permit {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "pipeline closed",
                Some(inner.config.retry_after_secs),
            );
        }
        Err(_) => {
            cx.metrics.record_error("http", "rejected_full");
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "pipeline full",
                Some(inner.config.retry_after_secs),
            );
        }
    };
    cx.metrics
        .record_rows(stream, "http", accepted, bytes.len());
    let (ack, done) = Ack::channel();
    permit.send(Batch {
        stream,
        records: decoded.batch,
        quarantined: decoded.quarantined,
        origin: Arc::from(format!("http:{path}")),
        ack,
    });
    match tokio::time::timeout(inner.config.ack_timeout, done).await {
        Ok(Ok(Delivery::Delivered)) if accepted == 0 => {
            summary(StatusCode::BAD_REQUEST, 0, &reasons)
        }
        Ok(Ok(Delivery::Delivered)) => summary(StatusCode::OK, accepted, &reasons),
        _ => {
            cx.metrics.record_error("http", "not_written");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "rows were not written",
                Some(inner.config.retry_after_secs),
            )
        }
    }
}

/// Why a body's encoding was refused.
enum Refusal {
    /// Over the limit once decompressed.
    TooLarge,
    /// Says gzip, is not.
    NotGzip,
    /// Neither identity nor gzip.
    Unsupported,
}

impl Refusal {
    /// The error metric's reason.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::NotGzip | Refusal::Unsupported => "bad_encoding",
        }
    }

    fn response(&self, limit: usize) -> Response {
        match self {
            Refusal::TooLarge => too_large(limit),
            Refusal::NotGzip => error(StatusCode::BAD_REQUEST, "body is not valid gzip", None),
            Refusal::Unsupported => error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported Content-Encoding (identity or gzip)",
                None,
            ),
        }
    }
}

fn decompress(headers: &HeaderMap, bytes: Bytes, limit: usize) -> Result<Bytes, Refusal> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"identity") => Ok(bytes),
        Some(b"gzip") | Some(b"x-gzip") => {
            let mut out = Vec::with_capacity(bytes.len() * 4);
            let mut reader = flate2::read::GzDecoder::new(&bytes[..]).take(limit as u64 + 1);
            reader.read_to_end(&mut out).map_err(|_| Refusal::NotGzip)?;
            if out.len() > limit {
                return Err(Refusal::TooLarge);
            }
            Ok(Bytes::from(out))
        }
        Some(_) => Err(Refusal::Unsupported),
    }
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body exceeds {limit} bytes"),
        None,
    )
}

fn error(status: StatusCode, message: &str, retry_after: Option<u32>) -> Response {
    let mut resp = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn summary(status: StatusCode, accepted: usize, quarantined: &[Quarantined]) -> Response {
    let reasons: Vec<_> = quarantined
        .iter()
        .take(20)
        .map(|q| serde_json::json!({ "location": q.location, "reason": q.reason.as_str(), "detail": q.detail }))
        .collect();
    let body = serde_json::json!({ "accepted": accepted, "quarantined": quarantined.len(), "errors": reasons });
    (status, axum::Json(body)).into_response()
}
