//! The source contract.
//!
//! A source moves bytes from one transport into the pipeline. It is started once by the
//! pipeline with [`Source::run`], decodes what it reads with the stream's sans-IO decoder, and
//! sends [`Batch`]es into a bounded channel. A full channel is back-pressure: a pull source
//! (file, Kafka, scrape) waits; a push receiver refuses with 429 and `Retry-After`.
//!
//! Acknowledgement: a source acknowledges upstream (commits a Kafka offset, answers 2xx,
//! advances a file checkpoint) only after the batch's [`Ack`](crate::Ack) reported
//! [`Delivery::Delivered`](crate::Delivery::Delivered), i.e. after the pipeline wrote the rows
//! and their quarantined records durably. Batches dropped on the way report a failure, so an
//! error path can never acknowledge data that was not written.
//!
//! Shutdown: when the cancellation token fires, a source stops reading, lets in-flight batches
//! finish (bounded by its drain timeout), acknowledges what was delivered, and returns `Ok`.
//! An `Err` from `run` means the source cannot go on (bad configuration, fatal transport
//! error); the pipeline logs it and reports the source unhealthy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Batch;
use crate::decode::DEFAULT_MAX_RECORD_BYTES;
use crate::metrics::IngestMetrics;

/// A boxed, sendable future, as returned by [`Source::run`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a running source is given.
#[derive(Clone, Debug)]
pub struct SourceContext {
    /// Where batches go; bounded.
    pub out: mpsc::Sender<Batch>,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
    /// Counters to update.
    pub metrics: IngestMetrics,
    /// Cluster name stamped on every row.
    pub cluster: Option<Arc<str>>,
    /// Largest single record accepted.
    pub max_record_bytes: usize,
}

impl SourceContext {
    /// A context with default limits.
    pub fn new(
        out: mpsc::Sender<Batch>,
        shutdown: CancellationToken,
        metrics: IngestMetrics,
    ) -> Self {
        SourceContext {
            out,
            shutdown,
            metrics,
            cluster: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// The decode context for input read at `default_ts` (ns since the epoch).
    pub fn decode_context(&self, default_ts: i64) -> crate::decode::DecodeContext {
        let mut cx =
            crate::decode::DecodeContext::new(default_ts).with_cluster(self.cluster.clone());
        cx.max_record_bytes = self.max_record_bytes;
        cx
    }
}

/// A transport that feeds the pipeline. See the module docs for the contract.
pub trait Source: Send {
    /// A short name for logs and metrics (`dcgm_scrape`, `file`, `kafka`).
    fn kind(&self) -> &'static str;

    /// Runs until shutdown or a fatal error.
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<crate::Result<()>>;
}

/// The wall clock in nanoseconds since the epoch; sources (never decoders) stamp scrape times
/// with it.
pub fn now_nanos() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

/// Installs rustls' ring crypto provider as the process default (once; later calls do nothing).
///
/// reqwest and the TLS listener are built without a compiled-in provider so that only one
/// (ring) is linked; whoever builds a TLS client or server calls this first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client builder with gpusiem's defaults: rustls with the ring provider, no redirects
/// (a redirect to an internal address is a classic SSRF), a user agent naming gpusiem.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gpusiem/", env!("CARGO_PKG_VERSION")))
}
