//! Generic webhook sink: every batch of findings as one JSON array, `POST`ed.
//!
//! `2xx` delivered; `408`, `429`, `5xx` retried; other `4xx` dead-lettered. The receiver
//! should de-duplicate on the finding `id` and `revision` (a batch may be sent again after a
//! crash).

use gpusiem_detect::Finding;

use crate::config::Secret;
use crate::delivery::retry::{Failure, Outcome};
use crate::delivery::sink::{Sink, destination_hash};

/// The webhook sink.
#[derive(Debug)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    bearer: Option<Secret>,
}

impl WebhookSink {
    /// A sink posting to `url`, with an optional bearer token.
    pub fn new(client: reqwest::Client, url: String, bearer: Option<Secret>) -> WebhookSink {
        WebhookSink {
            client,
            url,
            bearer,
        }
    }
}

impl Sink for WebhookSink {
    async fn send(&self, findings: &[Finding]) -> Outcome {
        let body = match serde_json::to_vec(findings) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed(Failure::reject(format!("cannot encode findings: {e}")));
            }
        };
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t.expose());
        }
        match req.send().await {
            Err(e) => Outcome::Failed(Failure::from_transport("webhook", e)),
            Ok(resp) if resp.status().is_success() => Outcome::Delivered,
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                Outcome::Failed(Failure::from_status("webhook", status, &headers, &body))
            }
        }
    }

    fn destination(&self) -> String {
        destination_hash(&[&self.url])
    }
}
