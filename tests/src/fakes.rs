//! Fake downstream receivers on `127.0.0.1`: Loki, Elasticsearch, Slack and PagerDuty.
//!
//! Each fake reproduces the documented behaviour of the real service (status codes, bodies
//! and headers from `tests/fixtures/real/` and `shared/research/formats.md` §4): what it
//! accepts, what it refuses and how it answers. A test can script the next answers
//! ([`Script`]) and inspect every request that arrived (with its arrival time), to check what
//! was sent, how often and how far apart. The fakes keep receiver-side state where it matters
//! for at-least-once delivery: Elasticsearch `create` answers 409 for an `_id` it has,
//! PagerDuty keeps incidents per `dedup_key`, Loki drops an identical entry.

pub mod elasticsearch;
pub mod loki;
pub mod pagerduty;
pub mod slack;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// A running fake: its address; stops when dropped.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    handle: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `router` on `addr` (`127.0.0.1:0` for any free port).
    pub async fn start(router: axum::Router, addr: SocketAddr) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Server { addr, handle })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// `127.0.0.1:0`.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A free port on loopback, for a receiver that is "down" now and started there later.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind(any_port()).expect("binding a loopback port");
    l.local_addr().expect("local address")
}

/// Answers to give next, in order; when empty, the fake's normal behaviour.
#[derive(Debug)]
pub struct Script<R>(Mutex<VecDeque<R>>);

impl<R> Default for Script<R> {
    fn default() -> Self {
        Script(Mutex::new(VecDeque::new()))
    }
}

impl<R> Script<R> {
    /// Queues answers.
    pub fn push(&self, replies: impl IntoIterator<Item = R>) {
        lock(&self.0).extend(replies);
    }

    /// The next scripted answer, if any.
    pub fn next(&self) -> Option<R> {
        lock(&self.0).pop_front()
    }

    /// Answers still queued.
    pub fn remaining(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Locks, ignoring poisoning (a panicking handler must not hide what was recorded).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared state handle.
pub type Shared<T> = Arc<Mutex<T>>;

/// Waits (polling every 20 ms) until `cond` holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
