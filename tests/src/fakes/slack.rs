//! A fake Slack incoming webhook: `POST /services/<T>/<B>/<token>`.
//!
//! Like Slack it answers `200` with the plain-text body `ok`; refuses a body without `text`,
//! `blocks` or `attachments` with `400 invalid_payload`; and, when `rate_limit` is set, answers
//! a message sooner than that after the previous one with `429` and `Retry-After`. Scripts
//! reproduce the documented tokens: `429` + `Retry-After`, `404 channel_not_found`,
//! `410 channel_is_archived`, `500 rollup_error`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Script, Server, lock};

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and plain-text body.
    Status(u16, &'static str),
    /// `429` with `Retry-After: <secs>`.
    RateLimited(u64),
}

/// One message as received.
#[derive(Debug, Clone)]
pub struct Message {
    /// Arrival.
    pub at: Instant,
    /// The request path (holds the webhook token).
    pub path: String,
    /// The JSON body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

/// What the fake holds.
#[derive(Debug, Default)]
pub struct SlackState {
    /// Every request.
    pub messages: Vec<Message>,
    /// Refuse messages closer than this (Slack's ~1 per second per webhook).
    pub rate_limit: Option<Duration>,
    last_ok: Option<Instant>,
}

/// The fake Slack.
#[derive(Debug)]
pub struct FakeSlack {
    /// The server.
    pub server: Server,
    /// Recorded state.
    pub state: Arc<Mutex<SlackState>>,
    /// Scripted answers.
    pub script: Arc<Script<Reply>>,
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<SlackState>>,
    script: Arc<Script<Reply>>,
}

async fn post(State(cx): State<Ctx>, uri: axum::http::Uri, body: Bytes) -> Response {
    let now = Instant::now();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = lock(&cx.state);
    let mut msg = Message {
        at: now,
        path: uri.path().to_string(),
        body: parsed.clone(),
        status: 200,
    };
    let reply = cx.script.next();
    let (status, text, retry_after): (u16, &str, Option<u64>) = match reply {
        Some(Reply::Status(s, t)) => (s, t, None),
        Some(Reply::RateLimited(secs)) => (429, "rate_limited", Some(secs)),
        None if parsed.get("text").is_none()
            && parsed.get("blocks").is_none()
            && parsed.get("attachments").is_none() =>
        {
            (400, "invalid_payload", None)
        }
        None => match (st.rate_limit, st.last_ok) {
            (Some(limit), Some(last)) if now.duration_since(last) < limit => {
                (429, "rate_limited", Some(limit.as_secs().max(1)))
            }
            _ => (200, "ok", None),
        },
    };
    if status == 200 {
        st.last_ok = Some(now);
    }
    msg.status = status;
    st.messages.push(msg);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match retry_after {
        Some(s) => (
            code,
            [
                ("retry-after", s.to_string()),
                ("content-type", "text/plain".to_string()),
            ],
            text.to_string(),
        )
            .into_response(),
        None => (code, [("content-type", "text/plain")], text.to_string()).into_response(),
    }
}

impl FakeSlack {
    /// Starts on `addr`.
    pub async fn start(addr: std::net::SocketAddr) -> FakeSlack {
        let state = Arc::new(Mutex::new(SlackState::default()));
        let script = Arc::new(Script::default());
        let router = axum::Router::new()
            .fallback(axum::routing::post(post))
            .with_state(Ctx {
                state: state.clone(),
                script: script.clone(),
            });
        let server = Server::start(router, addr)
            .await
            .expect("starting the fake Slack");
        FakeSlack {
            server,
            state,
            script,
        }
    }

    /// A webhook URL on this fake.
    pub fn webhook_url(&self) -> String {
        format!(
            "{}/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
            self.server.url()
        )
    }

    /// Messages received.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.state).messages.clone()
    }

    /// Messages answered `200 ok`.
    pub fn accepted(&self) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.status == 200)
            .collect()
    }
}
