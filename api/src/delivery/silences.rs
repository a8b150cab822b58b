//! Silences: operator-managed mutes of notifications, through `/api/v1/silences`.
//!
//! A silence has matchers (the [`Matcher`] syntax), a start and an end, an author and a
//! comment. While active, a finding matching all of its matchers is not notified (the router
//! counts it as dropped with reason `silenced`); sinks still receive every finding. Silences are
//! kept in `<data_dir>/silences.json` (written through a synced temporary file and a rename)
//! and survive restarts; expired ones are kept for [`RETENTION_SECS`] for the record.
//!
//! ```text
//!  GET    /               list (with status active | pending | expired)
//!  POST   /               create: {"matchers":[…],"starts_at"?,"ends_at"|"duration_secs","author","comment"} → 201 {"id"}
//!  GET    /{id}           one silence
//!  DELETE /{id}           expire now (the record stays)
//! ```
//!
//! The API layer mounts [`router`] under `/api/v1/silences` behind the `admin` scope and
//! records each request in the audit trail.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gpusiem_detect::Finding;
use serde::{Deserialize, Serialize};

use super::matcher::{self, Matcher};

/// How long expired silences are kept, seconds.
pub const RETENTION_SECS: i64 = 5 * 86_400;

/// Most silences kept at once.
pub const MAX_SILENCES: usize = 1000;

/// One silence as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Random id (32 hex characters).
    pub id: String,
    /// Matchers, all of which must match.
    pub matchers: Vec<String>,
    /// Start, RFC 3339.
    pub starts_at: String,
    /// End, RFC 3339.
    pub ends_at: String,
    /// Who created it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// `active`, `pending` or `expired` (computed when listed).
    #[serde(default, skip_deserializing)]
    pub status: String,
}

/// A request to create a silence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Matchers (at least one).
    pub matchers: Vec<String>,
    /// Start (RFC 3339); default now.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// End (RFC 3339); or give `duration_secs`.
    #[serde(default)]
    pub ends_at: Option<String>,
    /// Length from the start, seconds.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// Who (required).
    pub author: String,
    /// Why (required).
    pub comment: String,
}

#[derive(Debug, Clone)]
struct Entry {
    silence: Silence,
    matchers: Vec<Matcher>,
    starts: i64,
    ends: i64,
}

/// The silences, shared by the router and the API.
#[derive(Debug)]
pub struct Silences {
    path: PathBuf,
    entries: RwLock<Vec<Entry>>,
}

fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

fn format_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn entry(s: Silence) -> Option<Entry> {
    let matchers = Matcher::parse_all(&s.matchers).ok()?;
    Some(Entry {
        starts: parse_time(&s.starts_at)?,
        ends: parse_time(&s.ends_at)?,
        matchers,
        silence: s,
    })
}

/// Why a silence request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such silence.
    #[error("no such silence")]
    NotFound,
    /// Too many silences.
    #[error("at most {MAX_SILENCES} silences")]
    TooMany,
    /// Writing `silences.json` failed.
    #[error("cannot save silences: {0}")]
    Save(String),
}

impl Silences {
    /// Loads `<data_dir>/silences.json` (missing: none). Unreadable entries are skipped.
    pub fn open(data_dir: &Path) -> crate::Result<Silences> {
        let path = data_dir.join("silences.json");
        let stored: Vec<Silence> = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "silences file unreadable; starting without silences");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(crate::Error::File { op: "reading", path, source }),
        };
        let entries = stored.into_iter().filter_map(entry).collect();
        Ok(Silences {
            path,
            entries: RwLock::new(entries),
        })
    }

    /// Whether an active silence mutes the finding at `now` (ns).
    pub fn is_silenced(&self, f: &Finding, now: i64) -> bool {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .any(|e| e.starts <= now && now < e.ends && matcher::all(&e.matchers, f))
    }

    /// Every silence, with its status at `now`.
    pub fn list(&self, now: i64) -> Vec<Silence> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|e| with_status(e, now)).collect()
    }

    /// One silence.
    pub fn get(&self, id: &str, now: i64) -> Option<Silence> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.silence.id == id)
            .map(|e| with_status(e, now))
    }

    /// Creates a silence; returns it.
    pub fn create(&self, req: NewSilence, now: i64) -> Result<Silence, SilenceError> {
        let invalid = |m: &str| SilenceError::Invalid(m.to_string());
        if req.matchers.is_empty() || req.matchers.len() > 20 {
            return Err(invalid("between 1 and 20 matchers"));
        }
        let matchers =
            Matcher::parse_all(&req.matchers).map_err(|e| SilenceError::Invalid(e.join("; ")))?;
        let author = req.author.trim();
        let comment = req.comment.trim();
        if author.is_empty() || author.chars().count() > 256 || author.chars().any(char::is_control)
        {
            return Err(invalid("author: 1 to 256 printable characters"));
        }
        if comment.is_empty() || comment.chars().count() > 4096 {
            return Err(invalid("comment: 1 to 4096 characters"));
        }
        let starts = match &req.starts_at {
            Some(s) => parse_time(s).ok_or_else(|| invalid("starts_at: RFC 3339 time"))?,
            None => now,
        };
        let ends = match (&req.ends_at, req.duration_secs) {
            (Some(e), None) => parse_time(e).ok_or_else(|| invalid("ends_at: RFC 3339 time"))?,
            (None, Some(d)) => starts.saturating_add(
                i64::try_from(d)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000),
            ),
            _ => return Err(invalid("give ends_at or duration_secs")),
        };
        if ends <= starts || ends <= now {
            return Err(invalid(
                "the silence must end after it starts and after now",
            ));
        }
        let silence = Silence {
            id: hex::encode(rand::random::<[u8; 16]>()),
            matchers: matchers.iter().map(ToString::to_string).collect(),
            starts_at: format_time(starts),
            ends_at: format_time(ends),
            author: author.to_string(),
            comment: comment.to_string(),
            created_at: format_time(now),
            status: String::new(),
        };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.ends > now - RETENTION_SECS * 1_000_000_000);
        if entries.len() >= MAX_SILENCES {
            return Err(SilenceError::TooMany);
        }
        let e = Entry {
            silence,
            matchers,
            starts,
            ends,
        };
        let out = with_status(&e, now);
        entries.push(e);
        self.save(&entries)?;
        Ok(out)
    }

    /// Expires a silence now.
    pub fn expire(&self, id: &str, now: i64) -> Result<Silence, SilenceError> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let e = entries
            .iter_mut()
            .find(|e| e.silence.id == id)
            .ok_or(SilenceError::NotFound)?;
        if e.ends > now {
            e.ends = now;
            e.silence.ends_at = format_time(now);
            if e.starts > now {
                e.starts = now;
                e.silence.starts_at = format_time(now);
            }
        }
        let out = with_status(e, now);
        self.save(&entries)?;
        Ok(out)
    }

    fn save(&self, entries: &[Entry]) -> Result<(), SilenceError> {
        let list: Vec<&Silence> = entries.iter().map(|e| &e.silence).collect();
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| SilenceError::Save(e.kind().to_string()))
    }
}

fn with_status(e: &Entry, now: i64) -> Silence {
    let mut s = e.silence.clone();
    s.status = if now < e.starts {
        "pending"
    } else if now < e.ends {
        "active"
    } else {
        "expired"
    }
    .to_string();
    s
}

fn error(status: StatusCode, e: &SilenceError) -> Response {
    (status, Json(serde_json::json!({"error": e.to_string()}))).into_response()
}

async fn list(State(s): State<Arc<Silences>>) -> Response {
    Json(serde_json::json!({"silences": s.list(gpusiem_ingest::source::now_nanos())}))
        .into_response()
}

async fn create(
    State(s): State<Arc<Silences>>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &SilenceError::Invalid(e.body_text()),
            );
        }
    };
    match s.create(req, gpusiem_ingest::source::now_nanos()) {
        Ok(silence) => {
            tracing::info!(id = %silence.id, author = %silence.author, matchers = ?silence.matchers, ends_at = %silence.ends_at, "silence created");
            (StatusCode::CREATED, Json(silence)).into_response()
        }
        Err(e @ SilenceError::Save(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e @ SilenceError::TooMany) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

async fn get_one(State(s): State<Arc<Silences>>, UrlPath(id): UrlPath<String>) -> Response {
    match s.get(&id, gpusiem_ingest::source::now_nanos()) {
        Some(silence) => Json(silence).into_response(),
        None => error(StatusCode::NOT_FOUND, &SilenceError::NotFound),
    }
}

async fn expire(State(s): State<Arc<Silences>>, UrlPath(id): UrlPath<String>) -> Response {
    match s.expire(&id, gpusiem_ingest::source::now_nanos()) {
        Ok(silence) => {
            tracing::info!(id = %silence.id, "silence expired");
            Json(silence).into_response()
        }
        Err(e @ SilenceError::NotFound) => error(StatusCode::NOT_FOUND, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// The silences API, to be nested under `/api/v1/silences`.
pub fn router(silences: Arc<Silences>) -> axum::Router {
    axum::Router::new()
        .route("/", get(list).post(create))
        .route("/{id}", get(get_one).delete(expire))
        .with_state(silences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const NOW: i64 = 1_800_000_000_000_000_000;

    fn finding(ns: &str) -> Finding {
        Finding {
            id: "x".into(),
            ts: 0,
            last_ts: 0,
            detector: "gpu_memory_spike".into(),
            severity: gpusiem_detect::Severity::High,
            status: gpusiem_detect::Status::Firing,
            revision: 0,
            summary: String::new(),
            cluster: None,
            namespace: Some(ns.into()),
            pod: None,
            pod_uid: None,
            container: None,
            node: None,
            gpu_uuid: None,
            role: gpusiem_detect::role::Role::Unknown,
            role_reason: String::new(),
            mitre: vec![],
            evidence: serde_json::Value::Null,
            event_ids: vec![],
        }
    }

    fn new(matchers: &[&str], secs: u64) -> NewSilence {
        NewSilence {
            matchers: matchers.iter().map(|s| s.to_string()).collect(),
            starts_at: None,
            ends_at: None,
            duration_secs: Some(secs),
            author: "alice".into(),
            comment: "maintenance".into(),
        }
    }

    #[test]
    fn silences_mute_match_expire_and_persist() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Silences::open(dir.path()).expect("open");
        let sil = s
            .create(new(&[r#"namespace="research""#], 3600), NOW)
            .expect("create");
        assert_eq!(sil.status, "active");
        assert!(s.is_silenced(&finding("research"), NOW + 1));
        assert!(!s.is_silenced(&finding("shop"), NOW + 1));
        assert!(!s.is_silenced(&finding("research"), NOW + 3601 * 1_000_000_000));
        let s2 = Silences::open(dir.path()).expect("reopen");
        assert!(s2.is_silenced(&finding("research"), NOW + 1));
        s2.expire(&sil.id, NOW + 2).expect("expire");
        assert!(!s2.is_silenced(&finding("research"), NOW + 3));
        assert_eq!(s2.get(&sil.id, NOW + 3).expect("kept").status, "expired");
        assert_eq!(s2.expire("nope", NOW), Err(SilenceError::NotFound));
    }

    #[test]
    fn invalid_requests_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Silences::open(dir.path()).expect("open");
        assert!(s.create(new(&[], 60), NOW).is_err());
        assert!(s.create(new(&["bogus=1"], 60), NOW).is_err());
        let mut r = new(&["pod=x"], 60);
        r.author = " ".into();
        assert!(s.create(r, NOW).is_err());
        let mut r = new(&["pod=x"], 60);
        r.ends_at = Some("2020-01-01T00:00:00Z".into());
        r.duration_secs = None;
        assert!(s.create(r, NOW).is_err());
    }

    #[tokio::test]
    async fn http_api_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Arc::new(Silences::open(dir.path()).expect("open"));
        let app = axum::Router::new().nest("/api/v1/silences", router(s.clone()));
        let body = serde_json::json!({"matchers": ["namespace=\"ml\""], "duration_secs": 600, "author": "bob", "comment": "drill"});
        let req = axum::http::Request::post("/api/v1/silences")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let created: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
                .expect("json");
        let id = created["id"].as_str().expect("id").to_string();
        let resp = app
            .clone()
            .oneshot(
                axum::http::Request::get("/api/v1/silences")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::OK);
        let listed: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
                .expect("json");
        assert_eq!(listed["silences"][0]["author"], "bob");
        let resp = app
            .clone()
            .oneshot(
                axum::http::Request::delete(format!("/api/v1/silences/{id}"))
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = app
            .clone()
            .oneshot(
                axum::http::Request::post("/api/v1/silences")
                    .header("content-type", "application/json")
                    .body(Body::from("{\"matchers\":[]}"))
                    .expect("req"),
            )
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let resp = app
            .oneshot(
                axum::http::Request::get("/api/v1/silences/unknown")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
