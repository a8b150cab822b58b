//! The Kafka source against librdkafka's mock cluster (a Kafka-protocol broker running inside
//! this process: no network, no external service).
//!
//! What is checked (reliability plan R1, R2, R3, R5): every event of the real fixtures arrives;
//! a crash loses nothing acknowledged and re-reads everything that was not; a batch rejected
//! downstream is read again and holds the committed offset until then; a revoke drains and
//! commits, so the next owner reads nothing twice; the offset store's off-by-one; poison
//! messages are quarantined and passed.
//!
//! Committed offsets are read with a side consumer of the same group that never joins it.
//! The mock broker delays a group's first join by 3 s, so each test takes a few seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;
use gpusiem_ingest::decode::{self, DecodeContext, Reason};
use gpusiem_ingest::metrics::{ErrorLabels, IngestMetrics};
use gpusiem_ingest::source::{Source, SourceContext};
use gpusiem_ingest::sources::kafka::{KafkaSource, KafkaSourceConfig, KafkaTopics};
use gpusiem_ingest::{Batch, Delivery, Error, Stream};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/real");
const PARTITIONS: i32 = 6;
/// How long any single wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(40);

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock cluster of 3 brokers with a 6-partition topic (replication 3) per name.
fn cluster(topics: &[&str]) -> anyhow::Result<Mock> {
    let mock = MockCluster::new(3)?;
    for topic in topics {
        mock.create_topic(topic, PARTITIONS, 3)?;
    }
    Ok(mock)
}

fn producer(mock: &Mock) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?)
}

/// Produces `messages` (partition, payload; `None` = no payload) concurrently; returns their
/// offsets in the same order.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    messages: &[(i32, Option<Vec<u8>>)],
) -> anyhow::Result<Vec<i64>> {
    let sends = messages.iter().map(|(partition, payload)| {
        let mut record = FutureRecord::<str, [u8]>::to(topic).partition(*partition);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer.send(record, Duration::from_secs(10))
    });
    let mut offsets = Vec::with_capacity(messages.len());
    for result in futures::future::join_all(sends).await {
        let delivery = result
            .map_err(|(e, _)| e)
            .context("producing to the mock cluster")?;
        offsets.push(delivery.offset);
    }
    Ok(offsets)
}

/// A minimal valid Falco alert whose `event_id` is `id`.
fn alert(id: &str) -> Vec<u8> {
    format!(
        r#"{{"uuid":"{id}","output":"synthetic alert","priority":"Notice","rule":"Synthetic","time":"2024-05-01T10:00:00.000000000Z","source":"syscalls","hostname":"gpu-node-1","output_fields":{{"proc.name":"python"}}}}"#
    )
    .into_bytes()
}

/// Source settings for tests: short linger, backoff and drain, frequent auto-commits.
fn config(mock: &Mock, group: &str, topics: KafkaTopics) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig::new(mock.bootstrap_servers(), group, topics);
    c.linger = Duration::from_millis(20);
    c.retry_backoff = Duration::from_millis(50);
    c.drain_timeout = Duration::from_secs(3);
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("auto.commit.interval.ms", "100"),
    ] {
        c.properties.insert(k.into(), v.into());
    }
    c
}

fn falco_topic(topic: &str) -> KafkaTopics {
    KafkaTopics {
        falco_events: Some(topic.into()),
        ..KafkaTopics::default()
    }
}

/// A running source and the receiving end of its channel.
struct Running {
    handle: tokio::task::JoinHandle<gpusiem_ingest::Result<()>>,
    shutdown: CancellationToken,
    rx: mpsc::Receiver<Batch>,
    metrics: IngestMetrics,
}

impl Running {
    fn start(config: KafkaSourceConfig) -> Self {
        Self::with_capacity(config, 16)
    }

    fn with_capacity(config: KafkaSourceConfig, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let shutdown = CancellationToken::new();
        let metrics = IngestMetrics::default();
        let cx = SourceContext::new(tx, shutdown.clone(), metrics.clone());
        let source: Box<dyn Source> = Box::new(KafkaSource::new(config));
        assert_eq!(source.kind(), "kafka");
        let handle = tokio::spawn(source.run(cx));
        Running {
            handle,
            shutdown,
            rx,
            metrics,
        }
    }

    async fn next(&mut self) -> anyhow::Result<Batch> {
        within(WAIT, self.rx.recv())
            .await?
            .ok_or_else(|| anyhow!("the source closed its channel"))
    }

    /// Graceful shutdown: cancels, hands every batch still arriving to `late` (which decides
    /// its ack), and checks that `run` returned `Ok`.
    async fn stop(mut self, mut late: impl FnMut(Batch)) -> anyhow::Result<()> {
        self.shutdown.cancel();
        while let Some(batch) = within(WAIT, self.rx.recv()).await? {
            late(batch);
        }
        within(WAIT, self.handle)
            .await?
            .context("source task")?
            .context("source run")?;
        Ok(())
    }

    fn errors(&self, error: &'static str) -> u64 {
        self.metrics
            .source_errors
            .get(&ErrorLabels {
                source: "kafka",
                error,
            })
            .map_or(0, |c| c.get())
    }
}

async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?}"))
}

/// Polls `check` every 50 ms until it returns `Some`, failing after [`WAIT`].
async fn wait_for<T>(
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer of `group` that never joins it, to read the group's committed offsets.
struct Offsets {
    consumer: BaseConsumer,
}

impl Offsets {
    fn new(mock: &Mock, group: &str) -> anyhow::Result<Self> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", group)
            .create()?;
        Ok(Offsets { consumer })
    }

    /// Committed offset (the next message to read) of each partition of `topic`.
    fn committed(&self, topic: &str) -> anyhow::Result<Vec<Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(5))?;
        (0..PARTITIONS)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Ok(Some(o)),
                Some(Offset::Invalid) | None => Ok(None),
                Some(other) => Err(anyhow!("unexpected committed offset {other:?}")),
            })
            .collect()
    }

    /// High watermark (one past the last message) of each partition of `topic`.
    fn high(&self, topic: &str) -> anyhow::Result<Vec<i64>> {
        (0..PARTITIONS)
            .map(|p| {
                Ok(self
                    .consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))?
                    .1)
            })
            .collect()
    }
}

/// `(partition, first offset, last offset)` of a batch, from its origin
/// `kafka:<topic>/<partition>@<first>-<last>`.
fn span(batch: &Batch) -> anyhow::Result<(i32, i64, i64)> {
    let origin = &*batch.origin;
    let parse = || -> Option<(i32, i64, i64)> {
        let (head, range) = origin.strip_prefix("kafka:")?.rsplit_once('@')?;
        let (_, partition) = head.rsplit_once('/')?;
        let (first, last) = range.split_once('-')?;
        Some((
            partition.parse().ok()?,
            first.parse().ok()?,
            last.parse().ok()?,
        ))
    };
    parse().ok_or_else(|| anyhow!("unexpected origin {origin:?}"))
}

fn strings(batch: &RecordBatch, column: &str) -> anyhow::Result<Vec<String>> {
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| anyhow!("no column {column}"))?;
    let array = array
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| anyhow!("{column} is not Utf8"))?;
    Ok((0..array.len())
        .map(|i| array.value(i).to_string())
        .collect())
}

/// Every row as text, all columns but `ts` (which a Prometheus exposition takes from its
/// message's timestamp when read from Kafka, and from the caller when decoded directly).
fn row_keys(batch: &RecordBatch) -> anyhow::Result<Vec<String>> {
    let schema = batch.schema();
    let mut keys = vec![String::new(); batch.num_rows()];
    for (i, field) in schema.fields().iter().enumerate() {
        if field.name() == gpusiem_ingest::schema::TS {
            continue;
        }
        // Timestamps as integers: arrow cannot display a named time zone without chrono-tz.
        let column = match field.data_type() {
            arrow::datatypes::DataType::Timestamp(..) => {
                arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Int64)?
            }
            _ => batch.column(i).clone(),
        };
        for (row, key) in keys.iter_mut().enumerate() {
            key.push_str(&arrow::util::display::array_value_to_string(&column, row)?);
            key.push('\u{1f}');
        }
    }
    Ok(keys)
}

fn falco_ids(batch: &Batch) -> anyhow::Result<Vec<String>> {
    strings(&batch.records, gpusiem_ingest::schema::EVENT_ID)
}

/// R1 happy path: every event of the real fixtures, produced to one topic per stream over 6
/// partitions, comes out exactly as decoding the files directly gives it; the shutdown commits
/// every partition up to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_event_arrives() -> anyhow::Result<()> {
    let topics = [
        (Stream::GpuMetrics, "fx-gpu"),
        (Stream::FalcoEvents, "fx-falco"),
        (Stream::K8sAudit, "fx-audit"),
    ];
    let mock = cluster(&topics.map(|(_, t)| t))?;
    let producer = producer(&mock)?;

    // One message per Falco alert and audit line, one per Prometheus file.
    let mut inputs: BTreeMap<Stream, Vec<Vec<u8>>> = BTreeMap::new();
    let read = |path: std::path::PathBuf| {
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let dir = |sub: &str| -> anyhow::Result<Vec<std::path::PathBuf>> {
        let mut files: Vec<_> = std::fs::read_dir(format!("{FIXTURES}/{sub}"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        Ok(files)
    };
    let lines = |bytes: Vec<u8>| -> Vec<Vec<u8>> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    };
    for path in dir("falco")? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.ends_with(".jsonl") || name == "falcosidekick-test-input.json" {
            inputs
                .entry(Stream::FalcoEvents)
                .or_default()
                .extend(lines(read(path)?));
        }
    }
    for path in dir("k8s-audit")? {
        if path.extension().is_some_and(|e| e == "jsonl") {
            inputs
                .entry(Stream::K8sAudit)
                .or_default()
                .extend(lines(read(path)?));
        }
    }
    for path in dir("dcgm")? {
        if path.extension().is_some_and(|e| e == "prom") {
            inputs
                .entry(Stream::GpuMetrics)
                .or_default()
                .push(read(path)?);
        }
    }

    // What decoding the same messages directly gives.
    let mut expected_rows: BTreeMap<Stream, Vec<String>> = BTreeMap::new();
    let mut expected_quarantine: BTreeMap<Stream, Vec<Reason>> = BTreeMap::new();
    for (stream, messages) in &inputs {
        for message in messages {
            let decoded = decode::decode(
                *stream,
                message,
                &DecodeContext::new(1_714_557_600_000_000_000),
            )?;
            expected_rows
                .entry(*stream)
                .or_default()
                .extend(row_keys(&decoded.batch)?);
            expected_quarantine
                .entry(*stream)
                .or_default()
                .extend(decoded.quarantined.iter().map(|q| q.reason));
        }
    }
    for stream in Stream::ALL {
        ensure!(
            expected_rows.get(&stream).is_some_and(|r| !r.is_empty()),
            "fixtures give no {stream} rows"
        );
    }

    let mut high = BTreeMap::new();
    for (stream, topic) in topics {
        let messages: Vec<_> = inputs[&stream]
            .iter()
            .enumerate()
            .map(|(i, m)| (i as i32 % PARTITIONS, Some(m.clone())))
            .collect();
        produce(&producer, topic, &messages).await?;
        high.insert(topic, messages.len());
    }

    let kafka_topics = KafkaTopics {
        gpu_metrics: Some("fx-gpu".into()),
        falco_events: Some("fx-falco".into()),
        k8s_audit: Some("fx-audit".into()),
    };
    let mut c = config(&mock, "fixtures", kafka_topics);
    // Auto-commit too slow to matter: what is committed at the end, the shutdown committed
    // (our synchronous commit; librdkafka also commits stored offsets when it closes).
    c.properties
        .insert("auto.commit.interval.ms".into(), "600000".into());
    let mut run = Running::start(c);
    let mut rows: BTreeMap<Stream, Vec<String>> = BTreeMap::new();
    let mut quarantine: BTreeMap<Stream, Vec<Reason>> = BTreeMap::new();
    let mut take = |batch: Batch| -> anyhow::Result<()> {
        ensure!(
            batch.origin.starts_with("kafka:fx-"),
            "origin {}",
            batch.origin
        );
        rows.entry(batch.stream)
            .or_default()
            .extend(row_keys(&batch.records)?);
        quarantine
            .entry(batch.stream)
            .or_default()
            .extend(batch.quarantined.iter().map(|q| q.reason));
        batch.ack.complete(Delivery::Delivered);
        Ok(())
    };
    let total_expected: usize = expected_rows.values().map(Vec::len).sum::<usize>()
        + expected_quarantine.values().map(Vec::len).sum::<usize>();
    let mut total = 0;
    while total < total_expected {
        let batch = run.next().await?;
        total += batch.records.num_rows() + batch.quarantined.len();
        take(batch)?;
    }
    // Anything still arriving (a duplicate would) is counted too, so the comparison is exact.
    let mut late_errors = Vec::new();
    run.stop(|b| late_errors.extend(take(b).err())).await?;
    ensure!(late_errors.is_empty(), "{late_errors:?}");

    for stream in Stream::ALL {
        let mut got = rows.remove(&stream).unwrap_or_default();
        let mut want = expected_rows.remove(&stream).unwrap_or_default();
        got.sort();
        want.sort();
        assert_eq!(got.len(), want.len(), "{stream}: row count");
        assert!(got == want, "{stream}: rows differ from direct decoding");
        let mut got_q = quarantine.remove(&stream).unwrap_or_default();
        let mut want_q = expected_quarantine.remove(&stream).unwrap_or_default();
        got_q.sort();
        want_q.sort();
        assert_eq!(got_q, want_q, "{stream}: quarantined records");
    }

    // Shutdown committed every partition up to its end.
    let offsets = Offsets::new(&mock, "fixtures")?;
    for (topic, produced) in high {
        let ends = offsets.high(topic)?;
        assert_eq!(
            ends.iter().sum::<i64>() as usize,
            produced,
            "{topic}: produced"
        );
        let committed = offsets.committed(topic)?;
        let want: Vec<Option<i64>> = ends.iter().map(|&h| (h > 0).then_some(h)).collect();
        assert_eq!(committed, want, "{topic}: committed offsets after shutdown");
    }
    Ok(())
}

/// R1 under a crash: acknowledge only the first batches, abort the source (no drain, no
/// shutdown commit), restart in the same group. Nothing acknowledged is lost, everything not
/// acknowledged is read again, and the committed offsets never pass an unacknowledged batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_restart_loses_nothing_acknowledged() -> anyhow::Result<()> {
    const TOPIC: &str = "crash";
    const PER_PARTITION: usize = 100;
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    let messages: Vec<_> = (0..PER_PARTITION * PARTITIONS as usize)
        .map(|i| (i as i32 % PARTITIONS, Some(alert(&format!("crash-{i}")))))
        .collect();
    produce(&producer, TOPIC, &messages).await?;
    let all: BTreeSet<String> = (0..messages.len()).map(|i| format!("crash-{i}")).collect();

    let mut c = config(&mock, "crash", falco_topic(TOPIC));
    c.max_batch_messages = 10;
    let mut run1 = Running::start(c.clone());
    // Acknowledge the first 15 batches, hold the next 15 (neither delivered nor failed).
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut watermark: HashMap<i32, i64> = HashMap::new();
    let mut held = Vec::new();
    for n in 0..30 {
        let batch = run1.next().await?;
        let (partition, first, last) = span(&batch)?;
        if n < 15 && !held.iter().any(|(p, _): &(i32, Batch)| *p == partition) {
            // Batches of one partition arrive in offset order: these acks are a prefix.
            let previous = watermark.insert(partition, last);
            ensure!(
                previous.is_none_or(|p| p + 1 == first),
                "partition {partition}: batch starts at {first} after {previous:?}"
            );
            acked.extend(falco_ids(&batch)?);
            batch.ack.complete(Delivery::Delivered);
        } else {
            held.push((partition, batch));
        }
    }
    ensure!(!acked.is_empty() && !held.is_empty());

    // The committed offsets reach exactly the acknowledged prefix and not a message further,
    // although later batches of the same partitions were received (and are held).
    let offsets = Offsets::new(&mock, "crash")?;
    let want: Vec<Option<i64>> = (0..PARTITIONS)
        .map(|p| watermark.get(&p).map(|last| last + 1))
        .collect();
    wait_for("the acknowledged prefix to be committed", || {
        Ok((offsets.committed(TOPIC)? == want).then_some(()))
    })
    .await?;

    // Crash: the task is dropped mid-stream; held batches are never acknowledged.
    run1.handle.abort();
    ensure!(
        within(WAIT, run1.handle)
            .await?
            .is_err_and(|e| e.is_cancelled()),
        "the aborted task should report cancellation"
    );
    drop(held);
    drop(run1.rx);
    let committed_after_crash = offsets.committed(TOPIC)?;
    assert_eq!(
        committed_after_crash, want,
        "a crash must not commit past the acknowledged prefix"
    );

    let mut run2 = Running::start(c);
    let mut again: BTreeSet<String> = BTreeSet::new();
    let mut duplicates = 0;
    while !acked
        .union(&again)
        .cloned()
        .collect::<BTreeSet<_>>()
        .is_superset(&all)
    {
        let batch = run2.next().await?;
        for id in falco_ids(&batch)? {
            duplicates += usize::from(acked.contains(&id) || again.contains(&id));
            again.insert(id);
        }
        batch.ack.complete(Delivery::Delivered);
    }
    run2.stop(|b| b.ack.complete(Delivery::Delivered)).await?;

    let unacked: BTreeSet<&String> = all.iter().filter(|id| !acked.contains(*id)).collect();
    assert!(
        unacked.iter().all(|id| again.contains(*id)),
        "every record not acknowledged before the crash is read again"
    );
    // The restart began at the committed prefix: what was acknowledged is not read twice.
    assert_eq!(duplicates, 0, "records read twice after the crash");
    let ends = offsets.high(TOPIC)?;
    assert_eq!(
        offsets.committed(TOPIC)?,
        ends.iter().map(|&h| Some(h)).collect::<Vec<_>>()
    );
    Ok(())
}

/// R2: batches acknowledged out of order never move the committed offset past one still
/// pending; when that one is rejected downstream it is read again, and the committed offset
/// stays on it until it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batch_is_read_again_and_holds_the_offset() -> anyhow::Result<()> {
    const TOPIC: &str = "rejected";
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    // 100 records on partition 0, and 10 on partition 1 whose commit serves as a clock.
    let mut messages: Vec<_> = (0..100)
        .map(|i| (0, Some(alert(&format!("rej-{i}")))))
        .collect();
    messages.extend((0..10).map(|i| (1, Some(alert(&format!("marker-{i}"))))));
    let produced = produce(&producer, TOPIC, &messages).await?;
    ensure!(
        produced[..100] == (0..100).collect::<Vec<i64>>()[..],
        "rej-i is at offset i"
    );

    let mut c = config(&mock, "rejected", falco_topic(TOPIC));
    c.max_batch_messages = 10;
    let offsets = Offsets::new(&mock, "rejected")?;
    let mut run = Running::start(c);

    // Deliver partition 0 up to the batch holding offset 30, hold that one, deliver the two
    // batches after it; hold the marker batches of partition 1.
    let mut received: BTreeSet<String> = BTreeSet::new();
    let mut pending: Option<Batch> = None;
    let mut after_pending = 0;
    let mut markers = Vec::new();
    while pending.is_none()
        || after_pending < 2
        || markers
            .iter()
            .map(|b: &Batch| b.records.num_rows())
            .sum::<usize>()
            < 10
    {
        let batch = run.next().await?;
        let (partition, _, last) = span(&batch)?;
        if partition == 1 {
            markers.push(batch);
            continue;
        }
        if pending.is_none() && last >= 30 {
            pending = Some(batch);
            continue;
        }
        after_pending += usize::from(pending.is_some());
        received.extend(falco_ids(&batch)?);
        batch.ack.complete(Delivery::Delivered);
    }
    let pending = pending.ok_or_else(|| anyhow!("no pending batch"))?;
    let (_, failed_first, _) = span(&pending)?;
    let failed_ids: BTreeSet<String> = falco_ids(&pending)?.into_iter().collect();
    assert!(failed_first <= 30, "the pending batch holds offset 30");

    // Acks are handled in order and one auto-commit carries every partition's stored offset,
    // so once the marker's commit is visible, the acks before it are reflected too.
    for marker in markers {
        marker.ack.complete(Delivery::Delivered);
    }
    wait_for("the marker partition to be committed", || {
        Ok((offsets.committed(TOPIC)?[1] == Some(10)).then_some(()))
    })
    .await?;
    assert_eq!(
        offsets.committed(TOPIC)?[0],
        Some(failed_first),
        "the watermark stops at the pending batch"
    );

    // Rejected: everything from it on is read again.
    pending.ack.complete(Delivery::Failed);
    let rest: BTreeSet<String> = (failed_first..100).map(|i| format!("rej-{i}")).collect();
    let mut reread = BTreeSet::new();
    let mut redelivered = BTreeSet::new();
    while !reread.is_superset(&rest) {
        let batch = run.next().await?;
        let (partition, first, _) = span(&batch)?;
        ensure!(partition == 0, "partition 1 was done");
        let ids = falco_ids(&batch)?;
        // Batches after the failed one still on their way are delivered; they must not move
        // the offset either.
        if first <= failed_first {
            ensure!(
                first == failed_first,
                "the re-read starts at {first}, not at the failed batch {failed_first}"
            );
            if redelivered.is_empty() {
                // Everything before the failed batch is delivered: the committed offset is
                // exactly on it, never beyond.
                let committed = offsets.committed(TOPIC)?[0];
                ensure!(
                    committed == Some(failed_first),
                    "committed {committed:?} while the failed batch at {failed_first} is undelivered"
                );
            }
            redelivered.extend(ids.iter().filter(|id| failed_ids.contains(*id)).cloned());
        }
        if !redelivered.is_empty() {
            reread.extend(ids.iter().cloned());
        }
        received.extend(ids);
        batch.ack.complete(Delivery::Delivered);
    }
    assert_eq!(received.len(), 100);
    assert_eq!(
        redelivered, failed_ids,
        "every record of the failed batch is read again"
    );
    assert_eq!(run.errors("redelivery"), 1, "one redelivery counted");
    run.stop(|b| b.ack.complete(Delivery::Delivered)).await?;
    assert_eq!(
        offsets.committed(TOPIC)?[0],
        Some(100),
        "after the re-read everything is committed"
    );
    Ok(())
}

/// R5: the offset handed to `store_offset` is the last processed message and librdkafka
/// commits the one after it. After acknowledging exactly records 0..=k, a restart reads k + 1
/// first, and every later record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_prefix_restarts_at_the_next_record() -> anyhow::Result<()> {
    const TOPIC: &str = "offbyone";
    const K: i64 = 6;
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    let messages: Vec<_> = (0..20)
        .map(|i| (0, Some(alert(&format!("r5-{i}")))))
        .collect();
    let produced = produce(&producer, TOPIC, &messages).await?;
    assert_eq!(
        produced,
        (0..20).collect::<Vec<i64>>(),
        "one partition, offsets 0..20"
    );

    let mut c = config(&mock, "offbyone", falco_topic(TOPIC));
    c.max_batch_messages = 1;
    let offsets = Offsets::new(&mock, "offbyone")?;
    let mut run1 = Running::start(c.clone());
    let mut held = Vec::new();
    let mut next = 0;
    while next <= K + 1 {
        let batch = run1.next().await?;
        let (_, first, last) = span(&batch)?;
        assert_eq!(
            (first, last),
            (next, next),
            "one record per batch, in order"
        );
        next += 1;
        if first <= K {
            batch.ack.complete(Delivery::Delivered);
        } else {
            held.push(batch);
        }
    }
    wait_for("records 0..=k to be committed", || {
        Ok((offsets.committed(TOPIC)?[0] == Some(K + 1)).then_some(()))
    })
    .await?;
    // A graceful stop: the held record and anything after it fail, and do not move the offset.
    drop(held);
    run1.stop(drop).await?;
    assert_eq!(
        offsets.committed(TOPIC)?[0],
        Some(K + 1),
        "stored k is committed as k + 1"
    );

    let mut run2 = Running::start(c);
    let mut seen = Vec::new();
    while seen.len() < 20 - (K as usize + 1) {
        let batch = run2.next().await?;
        seen.push(span(&batch)?.1);
        batch.ack.complete(Delivery::Delivered);
    }
    run2.stop(|b| {
        seen.extend(span(&b).ok().map(|s| s.1));
        b.ack.complete(Delivery::Delivered);
    })
    .await?;
    assert_eq!(
        seen.first(),
        Some(&(K + 1)),
        "the first record after the restart"
    );
    assert_eq!(
        seen,
        (K + 1..20).collect::<Vec<_>>(),
        "every later record exactly once"
    );
    assert_eq!(offsets.committed(TOPIC)?[0], Some(20));
    Ok(())
}

/// Shutdown waits for in-flight batches (bounded by `drain_timeout`), stores what they
/// delivered and commits it synchronously; a batch never acknowledged is not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_batches_then_commits() -> anyhow::Result<()> {
    const TOPIC: &str = "drain";
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    let messages: Vec<_> = (0..20)
        .map(|i| (0, Some(alert(&format!("dr-{i}")))))
        .collect();
    produce(&producer, TOPIC, &messages).await?;

    let mut c = config(&mock, "drain", falco_topic(TOPIC));
    c.max_batch_messages = 10;
    c.drain_timeout = Duration::from_secs(2);
    // Auto-commit too slow to matter: only the shutdown commits.
    c.properties
        .insert("auto.commit.interval.ms".into(), "600000".into());
    let offsets = Offsets::new(&mock, "drain")?;
    let mut run = Running::start(c);
    let first = run.next().await?;
    let second = run.next().await?;
    let (_, start, first_last) = span(&first)?;
    let (partition, second_first, _) = span(&second)?;
    assert_eq!(
        (partition, start, second_first),
        (0, 0, first_last + 1),
        "two consecutive batches of partition 0"
    );

    // Shut down with both batches in flight; the first is acknowledged only afterwards, the
    // second never (until the source is gone).
    run.shutdown.cancel();
    let late_ack = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.ack.complete(Delivery::Delivered);
    });
    while let Some(batch) = within(WAIT, run.rx.recv()).await? {
        drop(batch);
    }
    within(WAIT, run.handle)
        .await?
        .context("source task")?
        .context("source run")?;
    late_ack.await?;
    drop(second);
    assert_eq!(
        offsets.committed(TOPIC)?[0],
        Some(first_last + 1),
        "the drained batch is committed, the unacknowledged one is not"
    );
    assert_eq!(
        run.metrics
            .source_errors
            .get(&ErrorLabels {
                source: "kafka",
                error: "drain_timeout"
            })
            .map(|c| c.get()),
        Some(1)
    );
    Ok(())
}

/// R4: a stalled pipeline (longer than `max.poll.interval.ms`) pauses the partition at
/// `max_in_flight_batches` while polling goes on, so the consumer keeps its assignment: after
/// the stall every record arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_pipeline_pauses_without_leaving_the_group() -> anyhow::Result<()> {
    const TOPIC: &str = "stall";
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    let messages: Vec<_> = (0..200)
        .map(|i| (0, Some(alert(&format!("st-{i}")))))
        .collect();
    produce(&producer, TOPIC, &messages).await?;
    let all: BTreeSet<String> = (0..200).map(|i| format!("st-{i}")).collect();

    let mut c = config(&mock, "stall", falco_topic(TOPIC));
    c.max_batch_messages = 5;
    c.max_in_flight_batches = 2;
    c.properties
        .insert("max.poll.interval.ms".into(), "6000".into());
    let mut run = Running::with_capacity(c.clone(), 1);
    let first = run.next().await?;
    // The stall is the scenario: nobody reads or acknowledges for longer than
    // max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(8)).await;

    // Without acknowledging anything, no more than the in-flight limit is handed out (plus the
    // one batch that may have been filling when the pause was asked for); without the pause,
    // every batch of the partition would come as the channel frees up.
    let mut outstanding = vec![first];
    while let Ok(Some(batch)) =
        tokio::time::timeout(Duration::from_millis(500), run.rx.recv()).await
    {
        outstanding.push(batch);
    }
    let limit = c.max_in_flight_batches + 1;
    assert!(
        outstanding.len() <= limit,
        "{} batches handed out while none was acknowledged; limit {limit}",
        outstanding.len()
    );

    let mut seen = Vec::new();
    for batch in outstanding {
        seen.extend(falco_ids(&batch)?);
        batch.ack.complete(Delivery::Delivered);
    }
    while seen.len() < all.len() {
        let batch = run.next().await?;
        seen.extend(falco_ids(&batch)?);
        batch.ack.complete(Delivery::Delivered);
    }
    assert_eq!(
        run.errors("assignment_lost"),
        0,
        "the consumer kept its assignment"
    );
    run.stop(|b| b.ack.complete(Delivery::Delivered)).await?;
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, all);
    assert_eq!(
        seen.len(),
        all.len(),
        "no record read twice: no rebalance happened"
    );
    Ok(())
}

/// Poison messages (not JSON, no payload) are quarantined with their offsets, and the
/// partition's offset moves past them once their batch is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_quarantined_and_passed() -> anyhow::Result<()> {
    const TOPIC: &str = "poison";
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    let messages = vec![
        (0, Some(alert("good-0"))),
        (0, Some(b"{\"rule\": \"cut off".to_vec())),
        (0, None),
        (0, Some(alert("good-3"))),
    ];
    produce(&producer, TOPIC, &messages).await?;

    let offsets = Offsets::new(&mock, "poison")?;
    let mut run = Running::start(config(&mock, "poison", falco_topic(TOPIC)));
    let mut ids = Vec::new();
    let mut quarantined = Vec::new();
    while ids.len() + quarantined.len() < 4 {
        let batch = run.next().await?;
        let (partition, first, last) = span(&batch)?;
        assert!(partition == 0 && first <= last, "origin {}", batch.origin);
        ids.extend(falco_ids(&batch)?);
        quarantined.extend(
            batch
                .quarantined
                .iter()
                .map(|q| (q.reason, q.detail.clone(), q.raw.clone())),
        );
        batch.ack.complete(Delivery::Delivered);
    }
    assert_eq!(ids, ["good-0", "good-3"]);
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let (reason, detail, raw) = &quarantined[0];
    assert_eq!(*reason, Reason::InvalidJson);
    assert!(detail.starts_with("offset 1: "), "{detail}");
    assert_eq!(
        raw.as_slice(),
        b"{\"rule\": \"cut off",
        "the bad message is kept"
    );
    let (reason, detail, _) = &quarantined[1];
    assert_eq!(*reason, Reason::InvalidField);
    assert!(detail.starts_with("offset 2: "), "{detail}");
    wait_for("the offset to pass the poison messages", || {
        Ok((offsets.committed(TOPIC)?[0] == Some(4)).then_some(()))
    })
    .await?;
    run.stop(|b| b.ack.complete(Delivery::Delivered)).await?;
    Ok(())
}

/// R3: a second member joins while the first has batches in flight (acknowledged 50 ms late),
/// and later the first leaves. Nothing is lost across either rebalance, the revoke's drain
/// sees the acks while librdkafka blocks in the rebalance callback (it never runs into its
/// timeout), and duplicates stay within the in-flight bound.
///
/// The bound is not zero only because of the mock broker: it answers `OffsetCommit` with
/// REBALANCE_IN_PROGRESS while the group is joining (`rdkafka_mock_cgrp.c`,
/// `rd_kafka_mock_cgrp_classic_check_state`), where Kafka accepts commits from members of the
/// current generation, so the revoke's synchronous commit cannot land here and the next owner
/// re-reads what was stored after the last auto-commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_drains_and_loses_nothing() -> anyhow::Result<()> {
    const TOPIC: &str = "rebalance";
    let mock = cluster(&[TOPIC])?;
    let producer = producer(&mock)?;
    let batch_of = |from: usize| -> Vec<(i32, Option<Vec<u8>>)> {
        (from..from + 300)
            .map(|i| (i as i32 % PARTITIONS, Some(alert(&format!("rb-{i}")))))
            .collect()
    };
    produce(&producer, TOPIC, &batch_of(0)).await?;
    let all: BTreeSet<String> = (0..600).map(|i| format!("rb-{i}")).collect();

    let mut c = config(&mock, "rebalance", falco_topic(TOPIC));
    c.max_batch_messages = 5;
    c.max_in_flight_batches = 2;

    // Each member's harness acknowledges in the background, reports the ids it saw, and
    // returns how often its drains timed out.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(char, Vec<String>)>();
    let member = |name: char, delay: Duration| {
        let mut run = Running::start(c.clone());
        let seen = seen_tx.clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    b = run.rx.recv() => b,
                    () = stopped.cancelled() => break,
                };
                let Some(batch) = batch else { break };
                let ids = falco_ids(&batch)?;
                tokio::time::sleep(delay).await;
                batch.ack.complete(Delivery::Delivered);
                seen.send((name, ids)).map_err(|_| anyhow!("test gone"))?;
            }
            let metrics = run.metrics.clone();
            let late = seen.clone();
            run.stop(move |b| {
                let ids = falco_ids(&b).unwrap_or_default();
                b.ack.complete(Delivery::Delivered);
                let _ = late.send((name, ids));
            })
            .await?;
            Ok::<_, anyhow::Error>(
                metrics
                    .source_errors
                    .get(&ErrorLabels {
                        source: "kafka",
                        error: "drain_timeout",
                    })
                    .map_or(0, |c| c.get()),
            )
        });
        (stop, task)
    };

    // How often each id was seen, and how many records each member saw.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_member: BTreeMap<char, usize> = BTreeMap::new();
    fn record(
        counts: &mut BTreeMap<String, usize>,
        per_member: &mut BTreeMap<char, usize>,
        (name, ids): (char, Vec<String>),
    ) {
        *per_member.entry(name).or_default() += ids.len();
        for id in ids {
            *counts.entry(id).or_default() += 1;
        }
    }
    let (stop_a, task_a) = member('a', Duration::from_millis(50));
    while counts.len() < 50 {
        record(
            &mut counts,
            &mut per_member,
            within(WAIT, seen_rx.recv())
                .await?
                .ok_or_else(|| anyhow!("member a stopped"))?,
        );
    }
    let (stop_b, task_b) = member('b', Duration::ZERO);
    produce(&producer, TOPIC, &batch_of(300)).await?;
    while counts.len() < all.len() {
        record(
            &mut counts,
            &mut per_member,
            within(WAIT, seen_rx.recv())
                .await?
                .ok_or_else(|| anyhow!("members stopped"))?,
        );
    }
    let per_member_before_leave = per_member.clone();

    // A leaves (its shutdown commit lands: the group is stable); B takes its partitions over.
    stop_a.cancel();
    let timeouts_a = within(WAIT, task_a).await??.context("member a")?;
    let offsets = Offsets::new(&mock, "rebalance")?;
    let ends: Vec<Option<i64>> = offsets.high(TOPIC)?.into_iter().map(Some).collect();
    wait_for("member b to commit every partition", || {
        Ok((offsets.committed(TOPIC)? == ends).then_some(()))
    })
    .await?;
    stop_b.cancel();
    let timeouts_b = within(WAIT, task_b).await??.context("member b")?;
    drop(seen_tx);
    while let Some(item) = within(WAIT, seen_rx.recv()).await? {
        record(&mut counts, &mut per_member, item);
    }

    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "every record arrives"
    );
    assert!(
        per_member_before_leave.get(&'b').is_some_and(|n| *n > 0),
        "the joining member got partitions: {per_member_before_leave:?}"
    );
    assert_eq!(
        (timeouts_a, timeouts_b),
        (0, 0),
        "drains finish within drain_timeout"
    );
    // Per rebalance and partition at most the in-flight window (max_in_flight_batches) plus
    // what was stored since the last auto-commit (100 ms: two batches at most at these rates).
    let rebalances = 2;
    let bound =
        rebalances * PARTITIONS as usize * (c.max_in_flight_batches + 2) * c.max_batch_messages;
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= bound,
        "{duplicates} records read twice; the in-flight bound is {bound}"
    );
    assert_eq!(offsets.committed(TOPIC)?, ends);
    Ok(())
}

/// Invalid settings are refused before anything connects, and errors never quote property
/// values (they may be secrets).
#[tokio::test]
async fn invalid_configuration_is_refused() -> anyhow::Result<()> {
    let topics = falco_topic("t");
    let base = KafkaSourceConfig::new("127.0.0.1:1", "g", topics.clone());
    base.validate()?;

    let run = |config: KafkaSourceConfig| async move {
        let (tx, _rx) = mpsc::channel(1);
        let cx = SourceContext::new(tx, CancellationToken::new(), IngestMetrics::default());
        within(WAIT, Box::new(KafkaSource::new(config)).run(cx)).await
    };
    let config_error = |result: gpusiem_ingest::Result<()>| match result {
        Err(Error::Config(message)) => Ok(message),
        other => Err(anyhow!("expected a configuration error, got {other:?}")),
    };

    let mut slow_drain = base.clone();
    slow_drain
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    slow_drain.drain_timeout = Duration::from_secs(6);
    assert!(config_error(run(slow_drain).await?)?.contains("drain_timeout"));

    let mut reserved = base.clone();
    reserved
        .properties
        .insert("enable.auto.offset.store".into(), "true".into());
    assert!(config_error(run(reserved).await?)?.contains("enable.auto.offset.store"));

    let no_topics = KafkaSourceConfig::new("127.0.0.1:1", "g", KafkaTopics::default());
    assert!(config_error(run(no_topics).await?)?.contains("no topic"));

    let mut same_topic = base.clone();
    same_topic.topics.k8s_audit = Some("t".into());
    assert!(config_error(run(same_topic).await?)?.contains("more than one stream"));

    let mut unknown = base.clone();
    unknown
        .properties
        .insert("no.such.property".into(), "hunter2-secret".into());
    let message = config_error(run(unknown).await?)?;
    assert!(
        message.contains("no.such.property") && !message.contains("hunter2"),
        "{message}"
    );

    let mut secret = base;
    secret
        .properties
        .insert("sasl.password".into(), "hunter2-secret".into());
    let debug = format!("{secret:?}");
    assert!(
        debug.contains("sasl.password") && !debug.contains("hunter2"),
        "{debug}"
    );
    Ok(())
}
