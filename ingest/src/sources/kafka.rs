//! Kafka source (rdkafka): one topic per stream, read in a consumer group, delivered at least
//! once.
//!
//! ```text
//!  brokers ─fetch─► librdkafka ─poll─► consumer thread: decode each message, batch per partition
//!     ▲                                   │ (max messages / max bytes / linger)
//!     │ commit (auto, and sync on         ▼
//!     │ revoke and shutdown)          cx.out (bounded) ─► pipeline ─► Ack(Delivered | Failed)
//!     └── store_offset(contiguous watermark) ◄── ack queue ◄──────────────────────┘
//! ```
//!
//! **One blocking thread.** librdkafka runs the rebalance callback inside `poll`, and a revoke
//! must block there until the revoked partitions are drained. So the consumer lives on one
//! blocking thread that polls, decodes, batches, stores offsets, pauses and seeks; nothing else
//! touches it. Acks come back through a mutex-protected queue that the pipeline fills directly,
//! so a drain can wait for them while the thread sits inside `poll`, on any runtime flavour.
//!
//! **Offsets: a contiguous watermark.** `enable.auto.offset.store=false` and
//! `enable.auto.commit=true`: librdkafka commits, every `auto.commit.interval.ms`, only what we
//! stored. Per partition, the batches handed to the pipeline are kept in offset order; an offset
//! is stored only when the *oldest* batches are delivered, up to the last one below which every
//! batch is delivered. A delivered batch behind an undelivered one waits (storing "the latest
//! acked" would skip the undelivered one on restart, vectordotdev/vector#24543).
//!
//! **Off by one.** [`Consumer::store_offset`] calls librdkafka's legacy `rd_kafka_offset_store`,
//! which stores `offset + 1` (`src/rdkafka_offset.c` of librdkafka 2.12:
//! `RD_KAFKA_FETCH_POS(offset + 1, -1)`). We therefore pass the offset of the *last delivered
//! message*, and the committed offset is the next message to read. `tests/integration/kafka.rs` pins this:
//! after acknowledging exactly records `0..=k`, a restart reads `k + 1` first, exactly once.
//!
//! **Failures.** A batch reported [`Delivery::Failed`] holds the watermark. Every later batch of
//! its partition is forgotten (their acks are ignored; duplicates are fine, loss is not), the
//! partition is paused, and after `retry_backoff` it is sought back to the failed batch's first
//! offset and read again. A partition resumes only after a seek that succeeded.
//!
//! **Back-pressure without leaving the group.** The thread never stops calling `poll`: a
//! consumer that does not poll for `max.poll.interval.ms` is thrown out of the group. Instead a
//! partition with `max_in_flight_batches` unacknowledged batches is paused, and every partition
//! is paused while that many batches wait for room in the pipeline's channel. Pausing makes
//! librdkafka drop what it had prefetched and fetch it again from the application's position on
//! resume, so nothing is skipped.
//!
//! **Rebalance.** On revoke, the unsent batches of the revoked partitions are dropped (they are
//! read again by the next owner), the in-flight ones are waited for (at most `drain_timeout`,
//! which must stay below `session.timeout.ms`), their offsets stored and committed
//! synchronously, and the partitions' state forgotten. A lost assignment (session timed out) is
//! forgotten without a commit: another member already owns it.
//!
//! **Shutdown.** When `cx.shutdown` fires the source stops reading, drops unsent batches, waits
//! (bounded) for in-flight acks, stores, commits synchronously, leaves the group and returns
//! `Ok`. If the `run` future is dropped instead (the task aborted), the thread leaves without
//! waiting, like a crash: only offsets already stored can be committed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::decode::{self, DecodeContext, Location, Quarantined, Reason};
use crate::metrics::IngestMetrics;
use crate::schema::Stream;
use crate::source::{BoxFuture, Source, SourceContext, now_nanos};
use crate::{Ack, Batch, Delivery, Error, ErrorKind, Result};

/// Source kind, as used in logs and metric labels.
const KIND: &str = "kafka";

/// Default [`KafkaSourceConfig::max_batch_messages`].
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 500;
/// Default [`KafkaSourceConfig::max_batch_bytes`]: 4 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;
/// Default [`KafkaSourceConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(100);
/// Default [`KafkaSourceConfig::max_in_flight_batches`].
pub const DEFAULT_MAX_IN_FLIGHT_BATCHES: usize = 8;
/// Default [`KafkaSourceConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`KafkaSourceConfig::retry_backoff`].
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// librdkafka's default `session.timeout.ms` (45 s since librdkafka 1.9).
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// librdkafka properties the source sets itself: the first two have their own fields, the
/// last two carry the at-least-once guarantee and must not be overridden.
const RESERVED_PROPERTIES: [&str; 4] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// Longest wait in `poll`: bounds how late the thread notices acks, shutdown and lingering
/// batches (acks do not wake a thread blocked in librdkafka).
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// `poll` wait while batches wait for room in the pipeline's channel.
const BLOCKED_POLL_WAIT: Duration = Duration::from_millis(10);
/// Bound on a seek; it only waits for librdkafka's own partition thread.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// The topic each stream is read from; a stream without a topic is not consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaTopics {
    /// Topic of dcgm-exporter metrics: one Prometheus text exposition per message.
    pub gpu_metrics: Option<String>,
    /// Topic of Falco alerts: one JSON alert (or JSON lines, or an array of alerts) per message.
    pub falco_events: Option<String>,
    /// Topic of Kubernetes audit events: one `Event` or `EventList` per message.
    pub k8s_audit: Option<String>,
}

impl KafkaTopics {
    /// The configured `(stream, topic)` pairs, in [`Stream::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Stream, &str)> {
        [
            (Stream::GpuMetrics, &self.gpu_metrics),
            (Stream::FalcoEvents, &self.falco_events),
            (Stream::K8sAudit, &self.k8s_audit),
        ]
        .into_iter()
        .filter_map(|(stream, topic)| topic.as_deref().map(|t| (stream, t)))
    }
}

/// Kafka source settings.
///
/// `Debug` prints the values of secret-looking librdkafka properties (`sasl.password`,
/// `ssl.key.password`, …) as `***`.
#[derive(Clone)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port[,host:port…]` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Consumer group (librdkafka `group.id`); replicas sharing it split the partitions.
    pub group_id: String,
    /// Topic of each stream.
    pub topics: KafkaTopics,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`,
    /// `session.timeout.ms`, `auto.offset.reset`, …). `auto.offset.reset` defaults to
    /// `earliest`. `bootstrap.servers`, `group.id`, `enable.auto.commit` and
    /// `enable.auto.offset.store` are rejected: the source owns them.
    pub properties: BTreeMap<String, String>,
    /// Most messages in one batch (per partition).
    pub max_batch_messages: usize,
    /// Batch size, in payload bytes, at which a batch is sent (it may exceed this by its last
    /// message).
    pub max_batch_bytes: usize,
    /// How long a partial batch waits for more messages before it is sent.
    pub linger: Duration,
    /// Batches of one partition sent but not yet below the committed watermark; at this many
    /// the partition is paused (polling goes on). Also the number of batches that may wait for
    /// room in the pipeline's channel before every partition is paused. Bounds the duplicates
    /// a crash can cause: at most this many batches per partition are read twice.
    pub max_in_flight_batches: usize,
    /// How long a revoke or a shutdown waits for in-flight batches to be acknowledged before
    /// committing what was delivered. Must be below `session.timeout.ms`.
    pub drain_timeout: Duration,
    /// How long a partition waits, after a batch of it failed downstream, before it is read
    /// again from that batch.
    pub retry_backoff: Duration,
}

impl KafkaSourceConfig {
    /// Defaults for reading `topics` from `brokers` in group `group_id`.
    pub fn new(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topics: KafkaTopics,
    ) -> Self {
        KafkaSourceConfig {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics,
            properties: BTreeMap::new(),
            max_batch_messages: DEFAULT_MAX_BATCH_MESSAGES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            linger: DEFAULT_LINGER,
            max_in_flight_batches: DEFAULT_MAX_IN_FLIGHT_BATCHES,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }

    /// Checks the settings without connecting; the error lists every problem found.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push("kafka: `brokers` is empty".to_string());
        }
        if self.group_id.trim().is_empty() {
            problems.push("kafka: `group_id` is empty".to_string());
        }
        let mut seen = HashSet::new();
        for (stream, topic) in self.topics.iter() {
            if topic.trim().is_empty() {
                problems.push(format!("kafka: the topic of {stream} is empty"));
            } else if !seen.insert(topic) {
                problems.push(format!(
                    "kafka: topic `{topic}` is configured for more than one stream"
                ));
            }
        }
        if seen.is_empty() && problems.is_empty() {
            problems.push("kafka: no topic configured".to_string());
        }
        for (name, value) in [
            ("max_batch_messages", self.max_batch_messages),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_in_flight_batches", self.max_in_flight_batches),
        ] {
            if value == 0 {
                problems.push(format!("kafka: `{name}` must be at least 1"));
            }
        }
        for key in RESERVED_PROPERTIES {
            if self.properties.contains_key(key) {
                problems.push(format!(
                    "kafka: property `{key}` is set by the source and cannot be overridden"
                ));
            }
        }
        match self
            .properties
            .get("session.timeout.ms")
            .map(|v| v.trim().parse::<u64>())
        {
            Some(Err(_)) => problems.push(
                "kafka: property `session.timeout.ms` is not a number of milliseconds".to_string(),
            ),
            session => {
                let session = Duration::from_millis(
                    session
                        .and_then(|s| s.ok())
                        .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS),
                );
                if self.drain_timeout >= session {
                    problems.push(format!(
                        "kafka: `drain_timeout` ({} ms) must be below `session.timeout.ms` ({} ms), or a slow drain \
                         gets the consumer thrown out of the group mid-rebalance",
                        self.drain_timeout.as_millis(),
                        session.as_millis()
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    /// The librdkafka configuration: the source's required settings over the user's.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("auto.offset.reset", "earliest");
        for (key, value) in &self.properties {
            c.set(key, value);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        c.set_log_level(
            if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
                RDKafkaLogLevel::Debug
            } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
                RDKafkaLogLevel::Info
            } else {
                RDKafkaLogLevel::Warning
            },
        );
        c
    }
}

impl std::fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSourceConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("properties", &properties)
            .field("max_batch_messages", &self.max_batch_messages)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("linger", &self.linger)
            .field("max_in_flight_batches", &self.max_in_flight_batches)
            .field("drain_timeout", &self.drain_timeout)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (passwords, keys, tokens, JAAS configs).
fn is_secret(key: &str) -> bool {
    ["password", "secret", "token", "jaas", ".key"]
        .iter()
        .any(|s| key.contains(s))
}

/// The Kafka source.
pub struct KafkaSource {
    config: KafkaSourceConfig,
}

impl KafkaSource {
    /// A source for `config` (validated when it runs).
    pub fn new(config: KafkaSourceConfig) -> Self {
        KafkaSource { config }
    }
}

impl Source for KafkaSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<Result<()>> {
        Box::pin(async move {
            let config = self.config;
            config.validate()?;
            let shared = Arc::new(Shared::new(&config, cx.metrics.clone()));
            // Dropping this future (an aborted task) makes the thread leave without draining.
            let _abandon = AbandonOnDrop(shared.clone());
            let span = tracing::info_span!("kafka_source", group = %config.group_id);
            let worker = Worker { shared, cx, config };
            match tokio::task::spawn_blocking(move || span.in_scope(|| worker.run())).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled before it started: the runtime is shutting down.
                Err(_) => Err(Error::PipelineClosed),
            }
        })
    }
}

/// Sets the abandon flag when the `run` future is dropped.
struct AbandonOnDrop(Arc<Shared>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandoned.store(true, Ordering::SeqCst);
    }
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tp {
    topic: Arc<str>,
    partition: i32,
}

/// What the consumer must do after the tracker changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// `store_offset(topic, partition, offset)`: `offset` is the last delivered message.
    Store { tp: Tp, offset: i64 },
    /// Stop fetching the partition (polling goes on).
    Pause(Tp),
    /// Fetch the partition again.
    Resume(Tp),
}

/// A batch's outcome, as reported by its [`Ack`].
#[derive(Debug)]
struct AckEvent {
    tp: Tp,
    id: u64,
    delivery: Delivery,
}

/// Where acks wait for the consumer thread. Filled by the pipeline directly, so a drain can
/// wait for acks while the thread is inside librdkafka's `poll`.
#[derive(Debug, Default)]
struct AckQueue {
    events: Mutex<Vec<AckEvent>>,
    arrived: Condvar,
}

impl AckQueue {
    fn push(&self, event: AckEvent) {
        lock(&self.events).push(event);
        self.arrived.notify_all();
    }

    fn take(&self) -> Vec<AckEvent> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Waits until an ack is queued (`true`) or `deadline` passes (`false`).
    fn wait(&self, deadline: Instant) -> bool {
        let mut events = lock(&self.events);
        while events.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            events = self
                .arrived
                .wait_timeout(events, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent at
/// each step (pushes, pops, flag flips), so a panic elsewhere cannot leave it half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tracker's limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_batch_messages: usize,
    max_batch_bytes: usize,
    linger: Duration,
    max_in_flight: usize,
    retry_backoff: Duration,
}

/// A batch handed out (or waiting in the outbox) and not yet below the watermark.
#[derive(Debug)]
struct InFlight {
    id: u64,
    first: i64,
    last: i64,
    delivered: bool,
}

/// A batch being filled.
struct Building {
    first: i64,
    last: i64,
    messages: usize,
    bytes: usize,
    deadline: Instant,
    records: Vec<RecordBatch>,
    quarantined: Vec<Quarantined>,
}

/// A failed batch's partition waiting to be read again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    offset: i64,
}

/// What the source knows about one assigned partition.
struct Part {
    stream: Stream,
    /// Batches not yet below the watermark, in offset order (the order they were made in).
    in_flight: VecDeque<InFlight>,
    building: Option<Building>,
    /// Offset of the last message handed to `store_offset`.
    stored: Option<i64>,
    /// Offset of the last message accepted since the assignment or the last seek.
    last_seen: Option<i64>,
    /// Whether we asked librdkafka to pause it.
    paused: bool,
    retry: Option<Retry>,
    /// Being revoked or shut down: wait for acks, never re-read.
    draining: bool,
}

impl Part {
    fn new(stream: Stream) -> Self {
        Part {
            stream,
            in_flight: VecDeque::new(),
            building: None,
            stored: None,
            last_seen: None,
            paused: false,
            retry: None,
            draining: false,
        }
    }
}

/// A batch waiting for room in the pipeline's channel.
struct Outgoing {
    tp: Tp,
    batch: Batch,
}

/// Per-partition batching and offset tracking. Sans-IO: it returns [`Action`]s for the
/// consumer to carry out.
struct State {
    limits: Limits,
    acks: Arc<AckQueue>,
    metrics: IngestMetrics,
    parts: HashMap<Tp, Part>,
    /// Batches made but not yet accepted by the channel, oldest first. Each is also the newest
    /// entry (or entries) of its partition's `in_flight`.
    outbox: VecDeque<Outgoing>,
    /// Every partition is paused because the outbox is full.
    held: bool,
    next_id: u64,
}

impl State {
    fn new(limits: Limits, acks: Arc<AckQueue>, metrics: IngestMetrics) -> Self {
        State {
            limits,
            acks,
            metrics,
            parts: HashMap::new(),
            outbox: VecDeque::new(),
            held: false,
            next_id: 0,
        }
    }

    fn assign(&mut self, tp: Tp, stream: Stream) {
        self.parts.entry(tp).or_insert_with(|| Part::new(stream));
    }

    /// Adds one message to its partition's batch; sends the batch on when it is full.
    #[allow(clippy::too_many_arguments)] // one message's facts; a struct would only repeat them
    fn on_message(
        &mut self,
        tp: &Tp,
        stream: Stream,
        offset: i64,
        payload: Option<&[u8]>,
        cx: &DecodeContext,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<()> {
        let part = self
            .parts
            .entry(tp.clone())
            .or_insert_with(|| Part::new(stream));
        if part.retry.is_some() || part.draining {
            // Fetched before the partition was paused for a re-read (librdkafka discards those,
            // this is a second guard): it is read again from the seek offset.
            return Ok(());
        }
        if part.last_seen.is_some_and(|last| offset <= last) {
            // The fetch position went back (an `auto.offset.reset` after the log was truncated
            // or recreated). Close the current batch so no batch spans the jump.
            tracing::warn!(topic = %tp.topic, partition = tp.partition, offset, "kafka offsets went backwards");
            self.metrics.record_error(KIND, "offset_rewind");
            self.flush(tp, actions)?;
        }
        let (records, quarantined) = decode_message(stream, offset, payload, cx);
        let bytes = payload.map_or(0, <[u8]>::len);
        let limits = self.limits;
        let Some(part) = self.parts.get_mut(tp) else {
            return Ok(());
        };
        part.last_seen = Some(offset);
        let b = part.building.get_or_insert_with(|| Building {
            first: offset,
            last: offset,
            messages: 0,
            bytes: 0,
            deadline: now + limits.linger,
            records: Vec::new(),
            quarantined: Vec::new(),
        });
        b.last = offset;
        b.messages += 1;
        b.bytes += bytes;
        b.records.extend(records);
        b.quarantined.extend(quarantined);
        if b.messages >= limits.max_batch_messages || b.bytes >= limits.max_batch_bytes {
            self.flush(tp, actions)?;
        }
        Ok(())
    }

    /// Sends the batches whose linger ran out.
    fn flush_due(&mut self, now: Instant, actions: &mut Vec<Action>) -> Result<()> {
        let due: Vec<Tp> = self
            .parts
            .iter()
            .filter(|(_, p)| p.building.as_ref().is_some_and(|b| b.deadline <= now))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in due {
            self.flush(&tp, actions)?;
        }
        Ok(())
    }

    /// Turns the partition's current batch into a [`Batch`] in the outbox.
    fn flush(&mut self, tp: &Tp, actions: &mut Vec<Action>) -> Result<()> {
        let Some(part) = self.parts.get_mut(tp) else {
            return Ok(());
        };
        let Some(b) = part.building.take() else {
            return Ok(());
        };
        let stream = part.stream;
        let records = arrow::compute::concat_batches(&stream.schema(), &b.records)
            .map_err(|source| Error::BuildBatch { stream, source })?;
        let id = self.next_id;
        self.next_id += 1;
        self.metrics
            .record_rows(stream, KIND, records.num_rows(), b.bytes);
        if records.num_rows() == 0 && b.quarantined.is_empty() {
            // Nothing to write (say, expositions of comments only): delivered as it stands.
            part.in_flight.push_back(InFlight {
                id,
                first: b.first,
                last: b.last,
                delivered: true,
            });
            self.advance(tp, actions);
        } else {
            part.in_flight.push_back(InFlight {
                id,
                first: b.first,
                last: b.last,
                delivered: false,
            });
            let acks = self.acks.clone();
            let ack_tp = tp.clone();
            let ack = Ack::new(move |delivery| {
                acks.push(AckEvent {
                    tp: ack_tp,
                    id,
                    delivery,
                })
            });
            let origin = format!("kafka:{}/{}@{}-{}", tp.topic, tp.partition, b.first, b.last);
            let batch = Batch {
                stream,
                records,
                quarantined: b.quarantined,
                origin: origin.into(),
                ack,
            };
            self.outbox.push_back(Outgoing {
                tp: tp.clone(),
                batch,
            });
        }
        self.update_pause(tp, actions);
        self.update_hold(actions);
        Ok(())
    }

    /// Hands outbox batches to the channel until it is full. `Err(())` when the channel is
    /// closed (the pipeline is gone).
    fn send_outbox(
        &mut self,
        out: &mpsc::Sender<Batch>,
        actions: &mut Vec<Action>,
    ) -> Result<(), ()> {
        let mut result = Ok(());
        while let Some(Outgoing { tp, batch }) = self.outbox.pop_front() {
            match out.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(batch)) => {
                    self.outbox.push_front(Outgoing { tp, batch });
                    break;
                }
                Err(TrySendError::Closed(_)) => {
                    result = Err(());
                    break;
                }
            }
        }
        self.update_hold(actions);
        result
    }

    fn apply_acks(&mut self, events: Vec<AckEvent>, now: Instant, actions: &mut Vec<Action>) {
        for event in events {
            self.apply_ack(event, now, actions);
        }
    }

    fn apply_ack(&mut self, event: AckEvent, now: Instant, actions: &mut Vec<Action>) {
        let AckEvent { tp, id, delivery } = event;
        // Unknown partition: revoked since. Unknown batch: discarded by an earlier failure.
        let Some(part) = self.parts.get_mut(&tp) else {
            return;
        };
        let Some(i) = part.in_flight.iter().position(|b| b.id == id) else {
            return;
        };
        match delivery {
            Delivery::Delivered => {
                part.in_flight[i].delivered = true;
                self.advance(&tp, actions);
            }
            Delivery::Failed => {
                let first = part.in_flight[i].first;
                // Everything from the failed batch on is read again; batches made after it are
                // forgotten (acks of those already sent are ignored, the unsent ones dropped).
                part.in_flight.truncate(i);
                part.building = None;
                part.last_seen = None;
                self.outbox.retain(|o| o.tp != tp);
                if !part.draining {
                    let offset = part.retry.map_or(first, |r| r.offset.min(first));
                    part.retry = Some(Retry {
                        at: now + self.limits.retry_backoff,
                        offset,
                    });
                    self.metrics.record_error(KIND, "redelivery");
                    tracing::info!(topic = %tp.topic, partition = tp.partition, offset, "batch not delivered; reading it again");
                }
                self.update_pause(&tp, actions);
                self.update_hold(actions);
            }
        }
    }

    /// Moves the watermark over the delivered batches at the front.
    fn advance(&mut self, tp: &Tp, actions: &mut Vec<Action>) {
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        let mut last = None;
        while part.in_flight.front().is_some_and(|b| b.delivered) {
            last = part.in_flight.pop_front().map(|b| b.last);
        }
        if let Some(offset) = last {
            part.stored = Some(offset);
            actions.push(Action::Store {
                tp: tp.clone(),
                offset,
            });
        }
        self.update_pause(tp, actions);
    }

    fn update_pause(&mut self, tp: &Tp, actions: &mut Vec<Action>) {
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if part.draining {
            return;
        }
        let want =
            self.held || part.retry.is_some() || part.in_flight.len() >= self.limits.max_in_flight;
        if want != part.paused {
            part.paused = want;
            actions.push(if want {
                Action::Pause(tp.clone())
            } else {
                Action::Resume(tp.clone())
            });
        }
    }

    /// Pauses everything while `max_in_flight` batches wait for the channel; resumes once the
    /// outbox is empty (hysteresis, so a channel on the edge does not flap).
    fn update_hold(&mut self, actions: &mut Vec<Action>) {
        let want = if self.held {
            !self.outbox.is_empty()
        } else {
            self.outbox.len() >= self.limits.max_in_flight
        };
        if want != self.held {
            self.held = want;
            let tps: Vec<Tp> = self.parts.keys().cloned().collect();
            for tp in tps {
                self.update_pause(&tp, actions);
            }
        }
    }

    /// Partitions whose re-read is due, with the offset to seek to.
    fn due_retries(&self, now: Instant) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| {
                p.retry
                    .filter(|r| r.at <= now && !p.draining)
                    .map(|r| (tp.clone(), r.offset))
            })
            .collect()
    }

    /// Records a seek's outcome: resume after success, try again later after a failure.
    fn seek_done(&mut self, tp: &Tp, ok: bool, now: Instant, actions: &mut Vec<Action>) {
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if ok {
            part.retry = None;
            part.last_seen = None;
        } else if let Some(r) = &mut part.retry {
            r.at = now + self.limits.retry_backoff;
        }
        self.update_pause(tp, actions);
    }

    /// How long `poll` may block: until the next linger or retry deadline, at most
    /// [`MAX_POLL_WAIT`], and briefly while the channel is full.
    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.outbox.is_empty() {
            return BLOCKED_POLL_WAIT;
        }
        self.parts
            .values()
            .flat_map(|p| {
                p.building
                    .as_ref()
                    .map(|b| b.deadline)
                    .into_iter()
                    .chain(p.retry.map(|r| r.at))
            })
            .map(|deadline| deadline.saturating_duration_since(now))
            .fold(MAX_POLL_WAIT, Duration::min)
    }

    /// Starts draining `tps`: drops their unsent work, keeps waiting for what was sent.
    fn start_drain(&mut self, tps: &[Tp]) {
        let tps: HashSet<&Tp> = tps.iter().collect();
        let mut dropped = Vec::new();
        self.outbox.retain_mut(|o| {
            let keep = !tps.contains(&o.tp);
            if !keep {
                dropped.push(o.tp.clone());
            }
            keep
        });
        for (tp, part) in self.parts.iter_mut().filter(|(tp, _)| tps.contains(tp)) {
            part.draining = true;
            part.building = None;
            part.retry = None;
            // Unsent batches are the newest entries of their partition.
            let n = dropped.iter().filter(|d| *d == tp).count();
            let keep = part.in_flight.len().saturating_sub(n);
            part.in_flight.truncate(keep);
        }
    }

    /// Batches of `tps` sent and not yet acknowledged.
    fn pending(&self, tps: &[Tp]) -> usize {
        tps.iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.in_flight.iter().filter(|b| !b.delivered).count())
            .sum()
    }

    fn forget(&mut self, tps: &[Tp]) {
        for tp in tps {
            self.parts.remove(tp);
        }
        self.outbox.retain(|o| !tps.contains(&o.tp));
    }
}

/// Decodes one message on its own, so a quarantined record names its exact offset.
fn decode_message(
    stream: Stream,
    offset: i64,
    payload: Option<&[u8]>,
    cx: &DecodeContext,
) -> (Option<RecordBatch>, Vec<Quarantined>) {
    let bytes = match payload {
        Some(bytes) if !bytes.is_empty() => bytes,
        _ => {
            let detail = format!("offset {offset}: message has no payload");
            return (
                None,
                vec![Quarantined::new(
                    stream,
                    Location::Body,
                    Reason::InvalidField,
                    detail,
                    &[],
                )],
            );
        }
    };
    match decode::decode(stream, bytes, cx) {
        Ok(decoded) => {
            let mut quarantined = decoded.quarantined;
            for q in &mut quarantined {
                q.detail = format!("offset {offset}: {}", q.detail);
            }
            (Some(decoded.batch), quarantined)
        }
        Err(e) => {
            // A decoder bug, not bad input; the message is kept in quarantine rather than
            // dropped, so the offset can move on without losing it.
            tracing::error!(stream = %stream, offset, error = %e, "decoder failed");
            let detail = format!("offset {offset}: decoder failed: {e}");
            (
                None,
                vec![Quarantined::new(
                    stream,
                    Location::Body,
                    Reason::InvalidField,
                    detail,
                    bytes,
                )],
            )
        }
    }
}

/// What the consumer thread and the rebalance callback share.
struct Shared {
    drain_timeout: Duration,
    /// Topic name → (shared name, stream).
    topics: HashMap<String, (Arc<str>, Stream)>,
    metrics: IngestMetrics,
    acks: Arc<AckQueue>,
    /// Locked by the consumer thread only (the rebalance callback runs on it too, inside
    /// `poll`, which is never called with the lock held).
    state: Mutex<State>,
    abandoned: AtomicBool,
}

impl Shared {
    fn new(config: &KafkaSourceConfig, metrics: IngestMetrics) -> Self {
        let acks = Arc::new(AckQueue::default());
        let limits = Limits {
            max_batch_messages: config.max_batch_messages,
            max_batch_bytes: config.max_batch_bytes,
            linger: config.linger,
            max_in_flight: config.max_in_flight_batches,
            retry_backoff: config.retry_backoff,
        };
        Shared {
            drain_timeout: config.drain_timeout,
            topics: config
                .topics
                .iter()
                .map(|(stream, topic)| (topic.to_string(), (Arc::from(topic), stream)))
                .collect(),
            metrics: metrics.clone(),
            acks: acks.clone(),
            state: Mutex::new(State::new(limits, acks, metrics)),
            abandoned: AtomicBool::new(false),
        }
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Our partitions of `tpl`, with their streams.
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<(Tp, Stream)> {
        tpl.elements()
            .iter()
            .filter_map(|e| {
                let (topic, stream) = self.topics.get(e.topic())?;
                Some((
                    Tp {
                        topic: topic.clone(),
                        partition: e.partition(),
                    },
                    *stream,
                ))
            })
            .collect()
    }

    /// Waits (at most `drain_timeout`) for the in-flight batches of `tps`, stores the offsets
    /// they reach and commits synchronously.
    fn drain_and_commit(&self, consumer: &BaseConsumer<KafkaContext>, tps: &[Tp]) {
        let deadline = Instant::now() + self.drain_timeout;
        {
            let mut state = lock(&self.state);
            if !tps.iter().any(|tp| state.parts.contains_key(tp)) {
                // Already drained and forgotten (the revoke of a consumer closing after its
                // shutdown): nothing to wait for, nothing new to commit.
                return;
            }
            state.start_drain(tps);
        }
        loop {
            let events = self.acks.take();
            let mut actions = Vec::new();
            let pending = {
                let mut state = lock(&self.state);
                state.apply_acks(events, Instant::now(), &mut actions);
                state.pending(tps)
            };
            execute(consumer, actions, &self.metrics);
            if pending == 0 {
                break;
            }
            if !self.acks.wait(deadline) {
                tracing::warn!(
                    pending,
                    timeout_ms = self.drain_timeout.as_millis() as u64,
                    "drain timed out; undelivered batches will be read again"
                );
                self.metrics.record_error(KIND, "drain_timeout");
                break;
            }
        }
        commit(consumer, &self.metrics);
    }
}

/// The consumer's callbacks.
struct KafkaContext {
    shared: Arc<Shared>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", fac, "{message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
            L::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        self.shared.metrics.record_error(KIND, "client");
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.shared.partitions(tpl);
                tracing::info!(partitions = parts.len(), "kafka partitions assigned");
                let mut state = lock(&self.shared.state);
                for (tp, stream) in parts {
                    state.assign(tp, stream);
                }
                drop(state);
                // librdkafka keeps an application pause across a revoke and a new assignment; a
                // partition we had paused would otherwise never be fetched again.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(error = %e, "resuming newly assigned partitions failed");
                }
            }
            Rebalance::Revoke(tpl) => {
                let tps: Vec<Tp> = self
                    .shared
                    .partitions(tpl)
                    .into_iter()
                    .map(|(tp, _)| tp)
                    .collect();
                if self.shared.abandoned() {
                    tracing::info!(
                        partitions = tps.len(),
                        "kafka partitions revoked while abandoning; not draining"
                    );
                } else if consumer.assignment_lost() {
                    tracing::warn!(
                        partitions = tps.len(),
                        "kafka assignment lost; in-flight batches will be read again"
                    );
                    self.shared.metrics.record_error(KIND, "assignment_lost");
                } else {
                    tracing::info!(partitions = tps.len(), "kafka partitions revoked; draining");
                    self.shared.drain_and_commit(consumer, &tps);
                }
                lock(&self.shared.state).forget(&tps);
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "kafka rebalance error");
                self.shared.metrics.record_error(KIND, "rebalance");
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "kafka offset commit failed");
                self.shared.metrics.record_error(KIND, "commit");
            }
        }
    }
}

/// Carries out the tracker's actions.
fn execute(consumer: &BaseConsumer<KafkaContext>, actions: Vec<Action>, metrics: &IngestMetrics) {
    for action in actions {
        match action {
            Action::Store { tp, offset } => {
                // The legacy per-partition call: stores `offset + 1`, see the module docs.
                if let Err(e) = consumer.store_offset(&tp.topic, tp.partition, offset) {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, offset, error = %e, "storing the offset failed");
                    metrics.record_error(KIND, "store_offset");
                }
            }
            Action::Pause(tp) => pause_resume(consumer, &tp, true, metrics),
            Action::Resume(tp) => pause_resume(consumer, &tp, false, metrics),
        }
    }
}

fn pause_resume(
    consumer: &BaseConsumer<KafkaContext>,
    tp: &Tp,
    pause: bool,
    metrics: &IngestMetrics,
) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::warn!(topic = %tp.topic, partition = tp.partition, pause, error = %e, "pausing or resuming a partition failed");
        metrics.record_error(KIND, "pause");
    }
}

/// Commits the stored offsets synchronously.
fn commit(consumer: &BaseConsumer<KafkaContext>, metrics: &IngestMetrics) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // NoOffset: nothing stored since the last commit.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "synchronous kafka commit failed");
            metrics.record_error(KIND, "commit");
        }
    }
}

/// The consumer thread.
struct Worker {
    shared: Arc<Shared>,
    cx: SourceContext,
    config: KafkaSourceConfig,
}

impl Worker {
    fn run(self) -> Result<()> {
        let context = KafkaContext {
            shared: self.shared.clone(),
        };
        let consumer: BaseConsumer<KafkaContext> = self
            .config
            .client_config()
            .create_with_context(context)
            .map_err(creation_error)?;
        let topics: Vec<&str> = self.config.topics.iter().map(|(_, t)| t).collect();
        consumer.subscribe(&topics).map_err(|source| Error::Kafka {
            op: "subscribe",
            source,
        })?;
        tracing::info!(topics = ?topics, "kafka source started");
        let result = self.poll_loop(&consumer);
        if self.shared.abandoned() {
            // An aborted task is a crash: leave without committing more than is stored.
            tracing::info!("kafka source abandoned");
        } else {
            let tps: Vec<Tp> = lock(&self.shared.state).parts.keys().cloned().collect();
            self.shared.drain_and_commit(&consumer, &tps);
            lock(&self.shared.state).forget(&tps);
            tracing::info!("kafka source stopped");
        }
        // Dropping the consumer leaves the group (its revoke finds nothing left to drain).
        drop(consumer);
        result
    }

    fn poll_loop(&self, consumer: &BaseConsumer<KafkaContext>) -> Result<()> {
        let shared = &self.shared;
        loop {
            if shared.abandoned() || self.cx.shutdown.is_cancelled() {
                return Ok(());
            }
            let now = Instant::now();
            let mut actions = Vec::new();
            let (closed, retries, timeout) = {
                let mut state = lock(&shared.state);
                state.apply_acks(shared.acks.take(), now, &mut actions);
                state.flush_due(now, &mut actions)?;
                let closed = state.send_outbox(&self.cx.out, &mut actions).is_err();
                (closed, state.due_retries(now), state.poll_timeout(now))
            };
            execute(consumer, actions, &shared.metrics);
            if closed {
                tracing::info!("pipeline closed; kafka source stopping");
                return Ok(());
            }
            for (tp, offset) in retries {
                let ok = match consumer.seek(
                    &tp.topic,
                    tp.partition,
                    Offset::Offset(offset),
                    SEEK_TIMEOUT,
                ) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(topic = %tp.topic, partition = tp.partition, offset, error = %e, "seek failed; retrying");
                        shared.metrics.record_error(KIND, "seek");
                        false
                    }
                };
                let mut actions = Vec::new();
                lock(&shared.state).seek_done(&tp, ok, Instant::now(), &mut actions);
                execute(consumer, actions, &shared.metrics);
            }
            // The state lock is not held here: `poll` may run the rebalance callback.
            match consumer.poll(timeout) {
                None => {}
                Some(Ok(message)) => self.on_message(consumer, &message)?,
                Some(Err(e)) => on_error(e, &shared.metrics)?,
            }
        }
    }

    fn on_message(
        &self,
        consumer: &BaseConsumer<KafkaContext>,
        message: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<()> {
        let Some((topic, stream)) = self.shared.topics.get(message.topic()) else {
            tracing::warn!(
                topic = message.topic(),
                "message from a topic not subscribed to"
            );
            return Ok(());
        };
        let tp = Tp {
            topic: topic.clone(),
            partition: message.partition(),
        };
        // The producer's (or broker's) time stands in for samples without their own: for a
        // Prometheus exposition it is the scrape time, and a replay gives the same rows.
        let ts = message
            .timestamp()
            .to_millis()
            .and_then(|ms| ms.checked_mul(1_000_000))
            .filter(|ns| *ns > 0)
            .unwrap_or_else(now_nanos);
        let cx = self.cx.decode_context(ts);
        let mut actions = Vec::new();
        lock(&self.shared.state).on_message(
            &tp,
            *stream,
            message.offset(),
            message.payload(),
            &cx,
            Instant::now(),
            &mut actions,
        )?;
        execute(consumer, actions, &self.shared.metrics);
        Ok(())
    }
}

/// Logs and counts a consumer error; `Err` for the ones the source cannot go on after.
fn on_error(e: KafkaError, metrics: &IngestMetrics) -> Result<()> {
    let code = e.rdkafka_error_code();
    if matches!(e, KafkaError::PartitionEOF(_)) {
        return Ok(());
    }
    let fatal = matches!(e, KafkaError::MessageConsumptionFatal(_));
    let err = Error::Kafka {
        op: "consume",
        source: e,
    };
    // An unknown topic is retried: librdkafka picks it up once it is created, and deployments
    // often start consumers before their topics exist.
    if fatal
        || (err.kind() == ErrorKind::Permanent
            && code != Some(RDKafkaErrorCode::UnknownTopicOrPartition))
    {
        return Err(err);
    }
    tracing::warn!(error = %err, "kafka consumer error");
    metrics.record_error(KIND, "consume");
    Ok(())
}

/// Maps a consumer-creation error; a bad property's value may be a secret, so it is not quoted.
fn creation_error(e: KafkaError) -> Error {
    match e {
        KafkaError::ClientConfig(res, _, key, _) => Error::Config(format!(
            "kafka: property `{key}` is {}",
            match res {
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => "unknown",
                _ => "invalid",
            }
        )),
        KafkaError::ClientCreation(reason) => {
            Error::Config(format!("kafka: creating the consumer failed: {reason}"))
        }
        source => Error::Kafka {
            op: "create consumer",
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "t";

    fn tp() -> Tp {
        Tp {
            topic: Arc::from(TOPIC),
            partition: 0,
        }
    }

    fn state(max_batch_messages: usize, max_in_flight: usize) -> (State, Arc<AckQueue>) {
        let limits = Limits {
            max_batch_messages,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_secs(60),
            max_in_flight,
            retry_backoff: Duration::from_millis(500),
        };
        let acks = Arc::new(AckQueue::default());
        let mut state = State::new(limits, acks.clone(), IngestMetrics::default());
        state.assign(tp(), Stream::FalcoEvents);
        (state, acks)
    }

    fn alert(id: &str) -> Vec<u8> {
        format!(r#"{{"uuid":"{id}","output":"o","priority":"Notice","rule":"r","time":"2024-05-01T10:00:00Z"}}"#)
            .into_bytes()
    }

    /// Feeds messages `offsets` and returns the actions they caused.
    fn feed(state: &mut State, offsets: std::ops::Range<i64>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for offset in offsets {
            let payload = alert(&format!("e{offset}"));
            state
                .on_message(
                    &tp(),
                    Stream::FalcoEvents,
                    offset,
                    Some(&payload),
                    &DecodeContext::new(1),
                    now,
                    &mut actions,
                )
                .expect("valid batches concatenate");
        }
        actions
    }

    /// Sends the outbox's batches through a channel with room for all of them.
    fn sent(state: &mut State) -> Vec<Batch> {
        let (tx, mut rx) = mpsc::channel(64);
        let mut actions = Vec::new();
        assert!(state.send_outbox(&tx, &mut actions).is_ok());
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn acked(
        state: &mut State,
        acks: &AckQueue,
        batch: Batch,
        delivery: Delivery,
        now: Instant,
    ) -> Vec<Action> {
        batch.ack.complete(delivery);
        let mut actions = Vec::new();
        state.apply_acks(acks.take(), now, &mut actions);
        actions
    }

    fn store(offset: i64) -> Action {
        Action::Store { tp: tp(), offset }
    }

    #[test]
    fn the_watermark_only_moves_over_contiguous_deliveries() {
        let (mut state, acks) = state(2, 10);
        let now = Instant::now();
        assert!(feed(&mut state, 0..6, now).is_empty());
        let mut batches = sent(&mut state).into_iter();
        let (b0, b1, b2) = (batches.next(), batches.next(), batches.next());
        let (Some(b0), Some(b1), Some(b2)) = (b0, b1, b2) else {
            panic!("three batches of two")
        };
        assert_eq!(&*b0.origin, "kafka:t/0@0-1");
        assert_eq!(b2.records.num_rows(), 2);
        // Later batches delivered first: nothing may be stored yet.
        assert!(acked(&mut state, &acks, b2, Delivery::Delivered, now).is_empty());
        assert!(acked(&mut state, &acks, b1, Delivery::Delivered, now).is_empty());
        // The oldest one completes the run: the last offset of all three is stored.
        assert_eq!(
            acked(&mut state, &acks, b0, Delivery::Delivered, now),
            [store(5)]
        );
    }

    #[test]
    fn a_failed_batch_holds_the_watermark_and_is_read_again() {
        let (mut state, acks) = state(2, 10);
        let now = Instant::now();
        feed(&mut state, 0..6, now);
        let mut batches = sent(&mut state).into_iter();
        let (Some(b0), Some(b1), Some(b2)) = (batches.next(), batches.next(), batches.next())
        else {
            panic!("three batches")
        };
        assert_eq!(
            acked(&mut state, &acks, b0, Delivery::Delivered, now),
            [store(1)]
        );
        // The failed batch pauses its partition ...
        assert_eq!(
            acked(&mut state, &acks, b1, Delivery::Failed, now),
            [Action::Pause(tp())]
        );
        // ... and what came after it no longer counts.
        assert!(acked(&mut state, &acks, b2, Delivery::Delivered, now).is_empty());
        // Messages fetched before the pause took effect are ignored.
        assert!(feed(&mut state, 6..8, now).is_empty());
        assert!(state.outbox.is_empty());
        // After the backoff it is sought back to the failed batch's first offset.
        assert!(state.due_retries(now).is_empty());
        let later = now + Duration::from_secs(1);
        assert_eq!(state.due_retries(later), [(tp(), 2)]);
        let mut actions = Vec::new();
        state.seek_done(&tp(), false, later, &mut actions);
        assert!(actions.is_empty(), "no resume after a failed seek");
        assert!(state.due_retries(later).is_empty());
        let retry = later + Duration::from_secs(1);
        state.seek_done(&tp(), true, retry, &mut actions);
        assert_eq!(actions, [Action::Resume(tp())]);
        // The re-read is batched from the failed offset on and moves the watermark over it.
        feed(&mut state, 2..4, retry);
        let reread = sent(&mut state);
        assert_eq!(reread.len(), 1);
        assert_eq!(&*reread[0].origin, "kafka:t/0@2-3");
        let batch = reread.into_iter().next().expect("one batch");
        assert_eq!(
            acked(&mut state, &acks, batch, Delivery::Delivered, retry),
            [store(3)]
        );
    }

    #[test]
    fn the_in_flight_limit_pauses_and_resumes() {
        let (mut state, acks) = state(1, 2);
        let now = Instant::now();
        assert!(feed(&mut state, 0..1, now).is_empty());
        assert_eq!(feed(&mut state, 1..2, now), [Action::Pause(tp())]);
        let mut batches = sent(&mut state).into_iter();
        let b0 = batches.next().expect("first batch");
        assert_eq!(
            acked(&mut state, &acks, b0, Delivery::Delivered, now),
            [store(0), Action::Resume(tp())]
        );
    }

    #[test]
    fn a_full_outbox_pauses_every_partition_until_it_empties() {
        let (mut state, _acks) = state(1, 2);
        let other = Tp {
            topic: Arc::from(TOPIC),
            partition: 1,
        };
        state.assign(other.clone(), Stream::FalcoEvents);
        let now = Instant::now();
        let actions = feed(&mut state, 0..2, now);
        assert!(
            actions.contains(&Action::Pause(other.clone())),
            "{actions:?}"
        );
        let (tx, mut rx) = mpsc::channel(8);
        let mut actions = Vec::new();
        assert!(state.send_outbox(&tx, &mut actions).is_ok());
        // Partition 0 stays paused (two batches in flight), partition 1 resumes.
        assert_eq!(actions, [Action::Resume(other)]);
        assert!(rx.try_recv().is_ok());
        drop(rx);
        // A closed channel is reported.
        feed(&mut state, 2..3, now);
        assert!(state.send_outbox(&tx, &mut Vec::new()).is_err());
    }

    #[test]
    fn empty_and_bad_payloads_are_quarantined_with_their_offset() {
        let (mut state, _acks) = state(10, 10);
        let now = Instant::now();
        let mut actions = Vec::new();
        let cx = DecodeContext::new(1);
        for (offset, payload) in [(7, None), (8, Some(&b"{oops"[..])), (9, Some(&b""[..]))] {
            state
                .on_message(
                    &tp(),
                    Stream::FalcoEvents,
                    offset,
                    payload,
                    &cx,
                    now,
                    &mut actions,
                )
                .expect("decodes");
        }
        state.flush(&tp(), &mut actions).expect("flushes");
        let batch = sent(&mut state).into_iter().next().expect("one batch");
        assert_eq!(&*batch.origin, "kafka:t/0@7-9");
        assert_eq!(batch.records.num_rows(), 0);
        let got: Vec<(Reason, &str)> = batch
            .quarantined
            .iter()
            .map(|q| (q.reason, q.detail.as_str()))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got[0].0, got[0].1),
            (Reason::InvalidField, "offset 7: message has no payload")
        );
        assert_eq!(got[1].0, Reason::InvalidJson);
        assert!(got[1].1.starts_with("offset 8: "), "{}", got[1].1);
        assert!(got[2].1.starts_with("offset 9: "), "{}", got[2].1);
    }

    #[test]
    fn a_drain_drops_unsent_batches_and_waits_for_sent_ones() {
        let (mut state, acks) = state(1, 10);
        let now = Instant::now();
        feed(&mut state, 0..3, now);
        let first = state.outbox.pop_front().expect("a batch").batch;
        state.start_drain(&[tp()]);
        assert!(state.outbox.is_empty(), "unsent batches are dropped");
        assert_eq!(state.pending(&[tp()]), 1, "the sent one is waited for");
        // A failure while draining is not read again: the partition goes to another member.
        assert!(acked(&mut state, &acks, first, Delivery::Failed, now).is_empty());
        assert_eq!(state.pending(&[tp()]), 0);
        assert!(state.due_retries(now + Duration::from_secs(10)).is_empty());
        state.forget(&[tp()]);
        assert!(state.parts.is_empty());
    }

    #[test]
    fn validation_lists_every_problem() {
        let mut c = KafkaSourceConfig::new("", "", KafkaTopics::default());
        c.max_batch_messages = 0;
        c.properties.insert("group.id".into(), "x".into());
        c.properties
            .insert("session.timeout.ms".into(), "soon".into());
        let Err(Error::Config(message)) = c.validate() else {
            panic!("invalid")
        };
        for part in [
            "brokers",
            "group_id",
            "max_batch_messages",
            "group.id",
            "session.timeout.ms",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        assert!(
            is_secret("sasl.password")
                && is_secret("ssl.key.location")
                && !is_secret("security.protocol")
        );
    }

    #[test]
    fn secured_clusters_and_zstd_topics_are_supported() {
        let topics = KafkaTopics {
            falco_events: Some("falco".into()),
            ..KafkaTopics::default()
        };
        let mut c = KafkaSourceConfig::new("127.0.0.1:9", "gpusiem", topics);
        c.properties = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "gpusiem"),
            ("sasl.password", "secret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(c.validate().is_ok());
        // librdkafka refuses these settings when it was built without OpenSSL or zstd.
        let consumer: std::result::Result<BaseConsumer, _> = c.client_config().create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        let mut zstd = ClientConfig::new();
        zstd.set("bootstrap.servers", "127.0.0.1:9")
            .set("compression.codec", "zstd");
        let producer: std::result::Result<rdkafka::producer::BaseProducer, _> = zstd.create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }
}
