//! The one HTTP listener: the API, the ingest receivers, `/metrics`, `/healthz`, `/readyz`.
//!
//! ```text
//!  TCP ─► [TLS, client certificate verified against client_ca_file] ─► hyper (header size and
//!  read timeouts) ─► router
//!     /healthz, /readyz                      open, not audited
//!     everything else ─► access layer: authenticate (token / certificate / anonymous)
//!                        ─► scope of the route (401 / 403) ─► body limit, timeout ─► handler
//!                        ─► one api_audit row, written before the response leaves
//! ```
//!
//! | route | scope |
//! |---|---|
//! | `GET /api/v1/findings`, `GET /api/v1/findings/{id}`, `GET /api/v1/openapi.json`, `GET /metrics` | `read` |
//! | `POST /api/v1/query` | `query` |
//! | `POST /ingest/falco`, `POST /ingest/k8s-audit` | `ingest` |
//! | `/api/v1/silences…` | `admin` |
//!
//! Namespace scopes are enforced by the query engine's table providers: handlers hand the
//! principal's [`NamespaceScope`](crate::query::NamespaceScope) to every query and never build
//! SQL from input. The routes and their scopes are documented in [`openapi`]; a test checks
//! that the document and the router agree.

pub mod audit;
pub mod findings;
pub mod openapi;
pub mod query;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::HttpBody;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum_server::tls::TlsInfo;
use gpusiem_ingest::sources::http::{FALCO_PATH, HttpReceivers, K8S_AUDIT_PATH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::auth::{AuthFailure, Authenticator, Scope};
use crate::metrics::{ApiReasonLabels, ApiRequestLabels, ApiRouteLabels, Metrics};
use crate::query::QueryEngine;
use audit::{AuditLog, AuditNote, AuditRecord};

/// `GET`: findings, latest revision per id, filtered and paginated.
pub const FINDINGS_PATH: &str = "/api/v1/findings";
/// `GET`: one finding with its revisions and the rows that contributed to it.
pub const FINDING_PATH: &str = "/api/v1/findings/{id}";
/// `POST`: read-only SQL.
pub const QUERY_PATH: &str = "/api/v1/query";
/// `GET`: the OpenAPI document.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Prefix of the silences routes (delivery).
pub const SILENCES_PREFIX: &str = "/api/v1/silences";
/// `GET`: Prometheus text.
pub const METRICS_PATH: &str = "/metrics";
/// `GET`: liveness.
pub const HEALTHZ_PATH: &str = "/healthz";
/// `GET`: readiness.
pub const READYZ_PATH: &str = "/readyz";

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The scope a route needs; `None` for routes any authenticated principal may reach (unknown
/// paths, which then answer 404).
pub fn required_scope(route: &str) -> Option<Scope> {
    match route {
        FINDINGS_PATH | FINDING_PATH | OPENAPI_PATH | METRICS_PATH => Some(Scope::Read),
        QUERY_PATH => Some(Scope::Query),
        FALCO_PATH | K8S_AUDIT_PATH => Some(Scope::Ingest),
        r if r == SILENCES_PREFIX || r.starts_with("/api/v1/silences/") => Some(Scope::Admin),
        _ => None,
    }
}

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest API request body (`server.max_api_body_bytes`).
    pub max_api_body_bytes: usize,
    /// Largest ingest request body (`server.max_ingest_body_bytes`).
    pub max_ingest_body_bytes: usize,
    /// Whole-request timeout of the API routes (answers 408); longer than the query timeout.
    pub api_timeout: Duration,
    /// Whole-request timeout of the ingest routes; longer than their own enqueue and
    /// acknowledgement timeouts.
    pub ingest_timeout: Duration,
    /// SQL queries one principal may run at once; more answer 429.
    pub queries_per_principal: usize,
    /// Largest page of `GET /api/v1/findings`.
    pub max_page: usize,
    /// Sustained API requests per second and principal (the ingest routes are not limited
    /// here: the pipeline's back-pressure answers 429 for them).
    pub requests_per_second: f64,
    /// Requests a principal may send in a burst above the sustained rate; beyond, 429 with
    /// `Retry-After`.
    pub burst: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_api_body_bytes: 256 << 10,
            max_ingest_body_bytes: 8 << 20,
            api_timeout: Duration::from_secs(60),
            ingest_timeout: Duration::from_secs(45),
            queries_per_principal: 2,
            max_page: 1000,
            requests_per_second: 50.0,
            burst: 500,
        }
    }
}

/// Per-principal SQL concurrency.
#[derive(Debug, Default)]
pub struct QuerySlots {
    per_principal: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl QuerySlots {
    /// A slot for `principal`, or `None` when it already runs `limit` queries.
    pub fn try_acquire(&self, principal: &str, limit: usize) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut map = self
                .per_principal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(principal.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
                .clone()
        };
        sem.try_acquire_owned().ok()
    }
}

/// Token buckets: one per principal for the API routes, one per peer address for requests
/// that fail authentication (token guessing).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token of `principal`'s bucket; `Err(seconds)` until one is available.
    pub fn take(
        &self,
        principal: &str,
        per_second: f64,
        burst: u32,
        now: Instant,
    ) -> Result<(), u64> {
        self.take_key(format!("p:{principal}"), per_second, burst, now)
    }

    /// Takes one token of the bucket of unauthenticated requests from `address`.
    pub fn take_unauthenticated(
        &self,
        address: &str,
        per_second: f64,
        burst: u32,
        now: Instant,
    ) -> Result<(), u64> {
        self.take_key(format!("a:{address}"), per_second, burst, now)
    }

    fn take_key(&self, key: String, per_second: f64, burst: u32, now: Instant) -> Result<(), u64> {
        let burst = f64::from(burst.max(1));
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bound the map: forget buckets that are full again (they behave like new ones).
        if map.len() > 10_000 {
            map.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_second < burst
            });
        }
        let (tokens, at) = map.entry(key).or_insert((burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * per_second;
        *tokens = (*tokens + refill).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if per_second > 0.0 {
            Err(((1.0 - *tokens) / per_second).ceil().max(1.0) as u64)
        } else {
            Err(60)
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Metrics to render and update.
    pub metrics: Arc<Metrics>,
    /// Cleared while shutting down or before the pipeline runs.
    pub ready: Arc<AtomicBool>,
    /// Who is calling.
    pub auth: Arc<Authenticator>,
    /// SQL and DataFrame access to the stored tables.
    pub engine: Arc<QueryEngine>,
    /// Where every request is recorded.
    pub audit: AuditLog,
    /// Limits.
    pub limits: Arc<ApiLimits>,
    /// Per-principal SQL concurrency.
    pub query_slots: Arc<QuerySlots>,
    /// Per-principal request rate.
    pub rate: Arc<RateLimiter>,
}

/// A route as registered: method and path template.
pub type RouteKey = (Method, &'static str);

fn add(
    router: Router<AppState>,
    seen: &mut Vec<RouteKey>,
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
) -> Router<AppState> {
    seen.push((method, path));
    router.route(path, handler)
}

/// The API routes (findings, query, OpenAPI, metrics) and the list of what was registered, as
/// the OpenAPI test walks it.
fn api_routes() -> (Router<AppState>, Vec<RouteKey>) {
    let mut seen = Vec::new();
    let r = Router::new();
    let r = add(
        r,
        &mut seen,
        Method::GET,
        FINDINGS_PATH,
        get(findings::list),
    );
    let r = add(
        r,
        &mut seen,
        Method::GET,
        FINDING_PATH,
        get(findings::get_one),
    );
    let r = add(r, &mut seen, Method::POST, QUERY_PATH, post(query::run));
    let r = add(r, &mut seen, Method::GET, OPENAPI_PATH, get(openapi::serve));
    let r = add(r, &mut seen, Method::GET, METRICS_PATH, get(metrics));
    (r, seen)
}

/// Every route this module registers (method, template), the receivers' and the probes
/// included; the silences routes are mounted from delivery and listed in the OpenAPI document.
pub fn registered_routes() -> Vec<RouteKey> {
    let (_, mut seen) = api_routes();
    seen.extend([(Method::POST, FALCO_PATH), (Method::POST, K8S_AUDIT_PATH)]);
    seen.extend([(Method::GET, HEALTHZ_PATH), (Method::GET, READYZ_PATH)]);
    seen
}

/// The router: API, receivers, optional extra routes under `/api/v1/silences`, health,
/// metrics. Everything but the probes goes through authentication, scopes and the audit.
pub fn router(state: AppState, receivers: &HttpReceivers, silences: Option<Router>) -> Router {
    let limits = state.limits.clone();
    let (api, _) = api_routes();
    let api = api
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.api_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_api_body_bytes))
        .layer(DefaultBodyLimit::max(limits.max_api_body_bytes))
        .with_state(state.clone());
    let ingest = receivers
        .router()
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.ingest_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_ingest_body_bytes));
    let mut guarded = api.merge(ingest);
    if let Some(extra) = silences {
        let extra = extra
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.api_timeout,
            ))
            .layer(RequestBodyLimitLayer::new(limits.max_api_body_bytes))
            .layer(DefaultBodyLimit::max(limits.max_api_body_bytes));
        guarded = guarded.nest(SILENCES_PREFIX, extra);
    }
    let guarded = guarded
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), access));
    Router::new()
        .route(HEALTHZ_PATH, get(healthz))
        .route(READYZ_PATH, get(readyz))
        .with_state(state)
        .merge(guarded)
}

/// A JSON error answer: `{"error": message}` plus what the audit should record. Not an error
/// type of its own: [`crate::Error`] values become replies through `From`, by their kind.
#[derive(Debug)]
pub struct ErrorReply {
    /// Status.
    pub status: StatusCode,
    /// Message for the client (no payload values, no secrets, no paths).
    pub message: String,
    /// Outcome override and details for `api_audit`.
    pub note: AuditNote,
}

impl ErrorReply {
    /// An error with `status` and `message`; the reason recorded is the message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ErrorReply {
        let message = message.into();
        ErrorReply {
            status,
            note: AuditNote {
                reason: Some(message.clone()),
                ..AuditNote::default()
            },
            message,
        }
    }

    /// Sets the audit outcome.
    pub fn outcome(mut self, outcome: &'static str) -> ErrorReply {
        self.note.outcome = Some(outcome);
        self
    }

    /// Records the SQL hash.
    pub fn sql(mut self, sha256: Option<String>) -> ErrorReply {
        self.note.sql_sha256 = sha256;
        self
    }
}

impl From<crate::Error> for ErrorReply {
    fn from(e: crate::Error) -> ErrorReply {
        match &e {
            crate::Error::Query {
                kind: "refused",
                reason,
            } => ErrorReply::new(StatusCode::BAD_REQUEST, format!("refused: {reason}"))
                .outcome("refused"),
            crate::Error::Query {
                kind: "timeout",
                reason,
            } => ErrorReply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query timed out: {reason}"),
            )
            .outcome("timeout"),
            crate::Error::Query {
                kind: "resources",
                reason,
            } => ErrorReply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query exceeded its resources: {reason}"),
            )
            .outcome("limited"),
            crate::Error::Query {
                kind: "internal",
                reason,
            } => {
                tracing::error!(reason = %reason, "internal query failed");
                let mut err = ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                err.note.reason = Some(reason.clone());
                err
            }
            crate::Error::Query { kind, reason } => {
                tracing::debug!(kind = *kind, reason = %reason, "query failed");
                ErrorReply::new(StatusCode::BAD_REQUEST, format!("query failed: {reason}"))
            }
            other => {
                tracing::error!(error = %other, "request failed");
                let mut err = match other.kind() {
                    crate::error::ErrorKind::Transient => {
                        ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable")
                    }
                    _ => ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                };
                err.note.reason = Some(other.to_string());
                err
            }
        }
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp.extensions_mut().insert(self.note);
        resp
    }
}

async fn not_found() -> ErrorReply {
    ErrorReply::new(StatusCode::NOT_FOUND, "no such route")
}

fn unauthenticated(failure: AuthFailure) -> Response {
    let challenge = match failure {
        AuthFailure::Missing => "Bearer realm=\"gpusiem\"",
        AuthFailure::Invalid => "Bearer realm=\"gpusiem\", error=\"invalid_token\"",
    };
    let mut resp = ErrorReply::new(StatusCode::UNAUTHORIZED, failure.as_str()).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// Authentication, scope, audit and metrics around every route but the probes.
async fn access(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let ts = gpusiem_ingest::source::now_nanos();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |m| m.as_str())
        .to_string();
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(512).collect();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let remote = peer.map(|p| p.to_string());
    let cert = req
        .extensions()
        .get::<Arc<TlsInfo>>()
        .and_then(|t| t.peer_certificates.first().cloned());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());

    let mut record = AuditRecord {
        ts,
        principal: "unauthenticated".into(),
        auth: "none",
        method: method.as_str().to_string(),
        route: route.clone(),
        path,
        remote_addr: remote,
        ..AuditRecord::default()
    };
    let resp = match s
        .auth
        .authenticate(authorization.as_deref(), cert.as_deref())
    {
        Err(failure) => {
            let reason = if failure == AuthFailure::Missing {
                "missing"
            } else {
                "invalid"
            };
            s.metrics
                .api
                .auth_failures
                .get_or_create(&ApiReasonLabels { reason })
                .inc();
            let address = peer.map_or_else(|| "unknown".to_string(), |p| p.ip().to_string());
            match s.rate.take_unauthenticated(
                &address,
                s.limits.requests_per_second,
                s.limits.burst,
                Instant::now(),
            ) {
                Ok(()) => unauthenticated(failure),
                Err(wait) => {
                    let mut resp = ErrorReply::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many failed authentications",
                    )
                    .into_response();
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                    resp
                }
            }
        }
        Ok(principal) => {
            record.principal = principal.name().to_string();
            record.auth = principal.method().as_str();
            record.namespaces = principal.namespaces().map(<[String]>::to_vec);
            match required_scope(&route) {
                Some(scope) if !principal.has(scope) => {
                    s.metrics
                        .api
                        .auth_failures
                        .get_or_create(&ApiReasonLabels { reason: "scope" })
                        .inc();
                    ErrorReply::new(
                        StatusCode::FORBIDDEN,
                        format!("this principal lacks the `{}` scope", scope.as_str()),
                    )
                    .into_response()
                }
                scope => {
                    let allowed = if scope == Some(Scope::Ingest) {
                        Ok(())
                    } else {
                        s.rate.take(
                            principal.name(),
                            s.limits.requests_per_second,
                            s.limits.burst,
                            Instant::now(),
                        )
                    };
                    match allowed {
                        Err(wait) => {
                            let mut resp = ErrorReply::new(
                                StatusCode::TOO_MANY_REQUESTS,
                                "request rate limit exceeded",
                            )
                            .into_response();
                            resp.headers_mut()
                                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                            resp
                        }
                        Ok(()) => {
                            req.extensions_mut().insert(principal);
                            next.run(req).await
                        }
                    }
                }
            }
        }
    };

    let (resp, ingest_rows) = if route == FALCO_PATH || route == K8S_AUDIT_PATH {
        accepted_rows(resp).await
    } else {
        (resp, None)
    };
    let status = resp.status();
    let note = resp
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    record.status = status.as_u16();
    record.outcome = note
        .outcome
        .unwrap_or_else(|| audit::outcome_of(status.as_u16()));
    record.reason = note.reason;
    record.sql_sha256 = note.sql_sha256;
    record.rows = note.rows.or(ingest_rows);
    record.bytes = resp.body().size_hint().exact();
    let elapsed = started.elapsed();
    record.duration_ms = elapsed.as_secs_f64() * 1e3;

    let resp = match s.audit.record(record).await {
        Ok(()) => resp,
        Err(e) => {
            s.metrics.api.audit_failures.inc();
            tracing::error!(error = %e, route = %route, "api_audit row not written");
            // Ingest answers stand (their rows are durable and Falco does not retry); every other
            // request fails closed: no unaudited answer leaves.
            if route == FALCO_PATH || route == K8S_AUDIT_PATH {
                resp
            } else {
                ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, "audit unavailable")
                    .into_response()
            }
        }
    };
    s.metrics
        .api
        .requests
        .get_or_create(&ApiRequestLabels {
            route: route.clone(),
            method: method.as_str().to_string(),
            status: resp.status().as_u16(),
        })
        .inc();
    s.metrics
        .api
        .duration
        .get_or_create(&ApiRouteLabels { route })
        .observe(elapsed.as_secs_f64());
    resp
}

/// Rows accepted by an ingest receiver, read from its small JSON answer
/// (`{"accepted":N,"quarantined":M,…}`); the response is rebuilt unchanged.
async fn accepted_rows(resp: Response) -> (Response, Option<u64>) {
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, 1 << 20).await {
        Ok(bytes) => {
            let rows = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("accepted")?.as_u64());
            (
                Response::from_parts(parts, axum::body::Body::from(bytes)),
                rows,
            )
        }
        Err(_) => (
            ErrorReply::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
            None,
        ),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Limits of the HTTP connection layer.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Largest request head (request line and headers), bytes; more answers 431.
    pub max_header_bytes: usize,
    /// Time allowed to send a request head (slowloris).
    pub header_read_timeout: Duration,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` (TLS when `tls` is given) until `shutdown` fires, then drains
/// requests in flight for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let grace = limits.shutdown_grace;
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        h.graceful_shutdown(Some(grace));
    });
    let mut server = axum_server::from_tcp(listener)?
        .handle(handle)
        .first_request_timeout(limits.header_read_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    server
        .http_builder()
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(config) => {
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )
            .handshake_timeout(limits.tls_handshake_timeout);
            server.acceptor(acceptor).serve(make).await
        }
        None => server.serve(make).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_route_but_the_probes_needs_a_scope() {
        for (_, path) in registered_routes() {
            let scope = required_scope(path);
            assert_eq!(
                scope.is_none(),
                path == HEALTHZ_PATH || path == READYZ_PATH,
                "{path}"
            );
        }
        assert_eq!(required_scope("/api/v1/silences/{id}"), Some(Scope::Admin));
        assert_eq!(required_scope("/api/v1/silencesx"), None);
    }

    #[test]
    fn rate_limits_are_per_principal_token_buckets() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(r.take("a", 1.0, 3, t0), Ok(()));
        }
        assert_eq!(r.take("a", 1.0, 3, t0), Err(1), "burst spent");
        assert_eq!(r.take("b", 1.0, 3, t0), Ok(()), "b has its own bucket");
        assert_eq!(
            r.take("a", 1.0, 3, t0 + Duration::from_millis(1500)),
            Ok(()),
            "refilled"
        );
        // Half a token left; at 0.25 tokens/s the next one is 2 s away.
        assert_eq!(
            r.take("a", 0.25, 3, t0 + Duration::from_millis(1500)),
            Err(2)
        );
    }

    #[test]
    fn query_slots_are_per_principal() {
        let slots = QuerySlots::default();
        let a1 = slots.try_acquire("a", 2);
        let a2 = slots.try_acquire("a", 2);
        assert!(a1.is_some() && a2.is_some());
        assert!(
            slots.try_acquire("a", 2).is_none(),
            "third concurrent query of a"
        );
        assert!(slots.try_acquire("b", 2).is_some(), "b has its own slots");
        drop(a1);
        assert!(slots.try_acquire("a", 2).is_some(), "a slot came back");
    }
}
