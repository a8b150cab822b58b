//! A fake PagerDuty Events API v2: `POST /v2/enqueue`.
//!
//! Like PagerDuty it validates the event (`routing_key` of 32 characters, `event_action`
//! `trigger|acknowledge|resolve`, `dedup_key` ≤ 255 characters, and for a trigger `payload`
//! with `summary` ≤ 1024 characters, `source` and `severity` in `critical|error|warning|info`)
//! and answers `400 {"status":"invalid event",…}` when it is wrong, `202
//! {"status":"success","message":"Event processed","dedup_key":…}` when right. It keeps
//! incidents per `dedup_key`: a trigger while one is open adds to it, a resolve closes it, a
//! trigger after that opens a new one. Scripts reproduce `429` (with `Retry-After`) and `5xx`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Script, Server, lock};

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and JSON body.
    Status(u16, Value),
    /// `429` with `Retry-After: <secs>` (when given).
    Throttled(Option<u64>),
}

/// One event as received.
#[derive(Debug, Clone)]
pub struct Event {
    /// Arrival.
    pub at: Instant,
    /// The body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// Its key.
    pub dedup_key: String,
    /// Triggers that went to it.
    pub triggers: u32,
    /// Whether it is resolved.
    pub resolved: bool,
}

/// What the fake holds.
#[derive(Debug, Default)]
pub struct PdState {
    /// Every request.
    pub events: Vec<Event>,
    /// Every incident ever opened, in order.
    pub incidents: Vec<Incident>,
    open: HashMap<String, usize>,
}

/// The fake PagerDuty.
#[derive(Debug)]
pub struct FakePagerDuty {
    /// The server.
    pub server: Server,
    /// Recorded state.
    pub state: Arc<Mutex<PdState>>,
    /// Scripted answers.
    pub script: Arc<Script<Reply>>,
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<PdState>>,
    script: Arc<Script<Reply>>,
}

/// PagerDuty's validation of an event; the list of errors.
pub fn validate(v: &Value) -> Vec<String> {
    let mut e = Vec::new();
    match v["routing_key"].as_str() {
        Some(k) if k.len() == 32 => {}
        _ => e.push("'routing_key' must be a 32 character string".to_string()),
    }
    let action = v["event_action"].as_str().unwrap_or("");
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        e.push("'event_action' is invalid (must be one of: trigger acknowledge resolve)".into());
    }
    if let Some(k) = v.get("dedup_key") {
        if k.as_str().is_none_or(|k| k.is_empty() || k.len() > 255) {
            e.push("'dedup_key' must be a string of at most 255 characters".into());
        }
    } else if action != "trigger" {
        e.push("'dedup_key' is required for acknowledge and resolve".into());
    }
    if action == "trigger" {
        let p = &v["payload"];
        match p["summary"].as_str() {
            Some(s) if !s.is_empty() && s.chars().count() <= 1024 => {}
            _ => e.push("'payload.summary' is missing or longer than 1024 characters".into()),
        }
        if p["source"].as_str().is_none_or(str::is_empty) {
            e.push("'payload.source' is missing".into());
        }
        if !["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap_or(""))
        {
            e.push(
                "'payload.severity' is invalid (must be one of: critical error warning info)"
                    .into(),
            );
        }
    }
    e
}

async fn enqueue(State(cx): State<Ctx>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = lock(&cx.state);
    let mut ev = Event {
        at: Instant::now(),
        body: v.clone(),
        status: 202,
    };
    match cx.script.next() {
        Some(Reply::Status(code, body)) => {
            ev.status = code;
            st.events.push(ev);
            return (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(body),
            )
                .into_response();
        }
        Some(Reply::Throttled(after)) => {
            ev.status = 429;
            st.events.push(ev);
            let body = axum::Json(
                json!({"status": "throttle exceeded", "message": "Requests for this service are arriving too quickly.  Please retry later."}),
            );
            return match after {
                Some(s) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", s.to_string())],
                    body,
                )
                    .into_response(),
                None => (StatusCode::TOO_MANY_REQUESTS, body).into_response(),
            };
        }
        None => {}
    }
    let errors = validate(&v);
    if !errors.is_empty() {
        ev.status = 400;
        st.events.push(ev);
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}))).into_response();
    }
    let key = v["dedup_key"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("generated-{}", st.events.len()));
    match v["event_action"].as_str().unwrap_or("") {
        "trigger" => match st.open.get(&key).copied() {
            Some(i) => st.incidents[i].triggers += 1,
            None => {
                st.incidents.push(Incident {
                    dedup_key: key.clone(),
                    triggers: 1,
                    resolved: false,
                });
                let i = st.incidents.len() - 1;
                st.open.insert(key.clone(), i);
            }
        },
        "resolve" => {
            if let Some(i) = st.open.remove(&key) {
                st.incidents[i].resolved = true;
            }
        }
        _ => {}
    }
    st.events.push(ev);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "message": "Event processed", "dedup_key": key})),
    )
        .into_response()
}

impl FakePagerDuty {
    /// Starts on `addr`.
    pub async fn start(addr: std::net::SocketAddr) -> FakePagerDuty {
        let state = Arc::new(Mutex::new(PdState::default()));
        let script = Arc::new(Script::default());
        let router = axum::Router::new()
            .route("/v2/enqueue", axum::routing::post(enqueue))
            .with_state(Ctx {
                state: state.clone(),
                script: script.clone(),
            });
        let server = Server::start(router, addr)
            .await
            .expect("starting the fake PagerDuty");
        FakePagerDuty {
            server,
            state,
            script,
        }
    }

    /// The Events API URL.
    pub fn url(&self) -> String {
        format!("{}/v2/enqueue", self.server.url())
    }

    /// Events received.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.state).events.clone()
    }

    /// Incidents opened.
    pub fn incidents(&self) -> Vec<Incident> {
        lock(&self.state).incidents.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_events_validate() {
        let mut trigger: Value = serde_json::from_str(include_str!(
            "../../fixtures/real/pagerduty/events-v2-trigger-doc-example.json"
        ))
        .expect("json");
        // The doc's placeholder key is not 32 characters; everything else is valid.
        assert_eq!(validate(&trigger).len(), 1);
        trigger["routing_key"] = json!("R".repeat(32));
        assert!(validate(&trigger).is_empty());
        let mut resolve: Value = serde_json::from_str(include_str!(
            "../../fixtures/real/pagerduty/events-v2-resolve-doc-example.json"
        ))
        .expect("json");
        resolve["routing_key"] = json!("R".repeat(32));
        assert!(validate(&resolve).is_empty());
        let mut falco: Value = serde_json::from_str(include_str!(
            "../../fixtures/real/pagerduty/falcosidekick-pagerduty-event-from-falco.json"
        ))
        .expect("json");
        falco["routing_key"] = json!("R".repeat(32));
        assert!(validate(&falco).is_empty());
    }
}
