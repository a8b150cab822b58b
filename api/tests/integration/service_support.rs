//! `gpusiem run` as a child process for end-to-end tests: started on `127.0.0.1:0`, its bound
//! address read from the first stdout line, stopped by SIGTERM (checked to exit 0) or killed
//! when dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `gpusiem run`.
pub struct Service {
    /// The process; `None` once taken (to be killed elsewhere) or terminated.
    pub child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `gpusiem run ARGS…` and waits until it is listening.
pub fn start<I, S>(args: I) -> Service
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpusiem"))
        .arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("first stdout line {line:?}: {e}"));
    let addr = v["listening"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    Service {
        child: Some(child),
        base: format!("http://{addr}"),
    }
}

/// Starts `gpusiem run --listen 127.0.0.1:0 --config CONFIG --data DATA`.
pub fn start_with(config: Option<&Path>, data: &Path) -> Service {
    let mut args: Vec<&OsStr> = vec![
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
    ];
    if let Some(c) = config {
        args.extend(["--config".as_ref(), c.as_os_str()]);
    }
    start(args)
}

impl Service {
    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "gpusiem run exited with {status} after SIGTERM"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gpusiem run did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .unwrap()
            .status()
            != 200
        {
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        metrics_at(client, &self.base).await
    }

    /// `POST /api/v1/query`; asserts 200 and returns the JSON answer.
    pub async fn query(&self, client: &reqwest::Client, sql: &str) -> serde_json::Value {
        query_at(client, &self.base, sql).await
    }
}

/// `GET {base}/metrics` as text.
pub async fn metrics_at(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `POST {base}/api/v1/query`; asserts 200 and returns the JSON answer.
pub async fn query_at(client: &reqwest::Client, base: &str, sql: &str) -> serde_json::Value {
    let r = client
        .post(format!("{base}/api/v1/query"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{sql}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A file of `tests/fixtures/real`.
pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/real")
            .join(rel),
    )
    .unwrap()
}
