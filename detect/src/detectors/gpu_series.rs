//! What the GPU detectors share: the series key (GPU, MIG instance, pod), a typed view of
//! `gpu_metrics` rows, GPU-allocation witnesses, attribution (role, pod facts) and the episode
//! bookkeeping that turns a decision into [`Finding`]s with deterministic ids.
//!
//! A *series* here is one (GPU UUID, MIG GPU-instance id, pod) — not one Prometheus series:
//! the detectors keep one small state per GPU and pod and fold the few metrics they read into
//! it. A row with no pod labels belongs to the GPU's `<none>` series (a GPU allocated to no
//! pod, formats.md §1.4 point 6).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{TimestampNanosecondType, UInt32Type};
use arrow::record_batch::RecordBatch;
use gpusiem_ingest::schema::{self, gpu_metrics};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::finding::{Finding, Severity, Status, finding_id};
use crate::inventory::Inventory;
use crate::role::Role;

/// Pod part of the key (and of event ids) for a series without pod labels.
pub(crate) const NO_POD: &str = "<none>";

/// ATT&CK technique of GPU misuse: T1496 Resource Hijacking.
pub(crate) const MITRE_RESOURCE_HIJACKING: &str = "T1496";

/// Canonical dcgm-exporter metric names the GPU detectors read.
pub(crate) mod metric {
    /// Framebuffer memory used, MiB.
    pub const FB_USED: &str = "DCGM_FI_DEV_FB_USED";
    /// GPU utilisation, percent 0–100.
    pub const GPU_UTIL: &str = "DCGM_FI_DEV_GPU_UTIL";
    /// Board power, W.
    pub const POWER_USAGE: &str = "DCGM_FI_DEV_POWER_USAGE";
    /// Tensor-pipe activity, ratio 0–1 (profiling).
    pub const PIPE_TENSOR_ACTIVE: &str = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE";
    /// FP32-pipe activity, ratio 0–1 (profiling, off by default).
    pub const PIPE_FP32_ACTIVE: &str = "DCGM_FI_PROF_PIPE_FP32_ACTIVE";
    /// FP16-pipe activity, ratio 0–1 (profiling, off by default).
    pub const PIPE_FP16_ACTIVE: &str = "DCGM_FI_PROF_PIPE_FP16_ACTIVE";
    /// FP64-pipe activity, ratio 0–1 (profiling, off by default).
    pub const PIPE_FP64_ACTIVE: &str = "DCGM_FI_PROF_PIPE_FP64_ACTIVE";
    /// SM activity, ratio 0–1 (profiling, off by default).
    pub const SM_ACTIVE: &str = "DCGM_FI_PROF_SM_ACTIVE";
}

/// Nanoseconds per second.
pub(crate) const NANOS: i64 = 1_000_000_000;

/// Seconds (config) to nanoseconds, saturating.
pub(crate) fn secs_to_nanos(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(NANOS)
}

/// Nanoseconds to (fractional) seconds, for evidence.
pub(crate) fn nanos_to_secs(ns: i64) -> f64 {
    ns as f64 / NANOS as f64
}

/// Rounds for evidence: enough digits to read, no float noise.
pub(crate) fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        x
    }
}

/// RFC 3339 text of an event time, for evidence.
pub(crate) fn rfc3339(ns: i64) -> String {
    gpusiem_ingest::time::format_rfc3339_nanos(ns)
}

// ---------------------------------------------------------------------------------------------
// Series key

/// A borrowed series key, straight from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyView<'a> {
    /// Physical GPU UUID.
    pub uuid: &'a str,
    /// MIG GPU-instance id.
    pub gi: Option<u32>,
    /// Pod namespace, empty for no pod.
    pub namespace: &'a str,
    /// Pod name, empty for no pod.
    pub pod: &'a str,
}

impl<'a> KeyView<'a> {
    /// Whether the series carries pod labels.
    pub fn has_pod(&self) -> bool {
        !self.pod.is_empty()
    }

    /// The GPU (instance) this series is on, without the pod.
    pub fn gpu(&self) -> KeyView<'a> {
        KeyView {
            namespace: "",
            pod: "",
            ..*self
        }
    }

    /// The entity key hashed into finding ids: `GPU-…[/mig<N>]/<namespace>/<pod>` or
    /// `GPU-…[/mig<N>]/<none>`.
    pub fn entity_key(&self) -> String {
        let mut s =
            String::with_capacity(self.uuid.len() + self.namespace.len() + self.pod.len() + 16);
        s.push_str(self.uuid);
        if let Some(gi) = self.gi {
            s.push_str("/mig");
            s.push_str(&gi.to_string());
        }
        s.push('/');
        if self.has_pod() {
            s.push_str(self.namespace);
            s.push('/');
            s.push_str(self.pod);
        } else {
            s.push_str(NO_POD);
        }
        s
    }

    /// `gpu_metrics:<entity key>@<RFC 3339 time>`: the id of the samples of this series at `ts`.
    pub fn event_id(&self, ts: i64) -> String {
        format!("gpu_metrics:{}@{}", self.entity_key(), rfc3339(ts))
    }
}

impl Hash for KeyView<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write(self.uuid.as_bytes());
        h.write_u32(self.gi.unwrap_or(u32::MAX));
        h.write(self.namespace.as_bytes());
        h.write_u8(0xff);
        h.write(self.pod.as_bytes());
    }
}

/// An owned series key: the three strings in one shared allocation (cloned into pending lists
/// for the price of a reference count).
#[derive(Debug, Clone)]
pub(crate) struct SeriesKey {
    text: Arc<str>,
    uuid_len: u16,
    namespace_len: u16,
    gi: u32,
}

impl SeriesKey {
    /// Copies a view; `None` when a part is too long to be a real label (a hostile exporter).
    pub fn new(v: &KeyView<'_>) -> Option<Self> {
        let uuid_len = u16::try_from(v.uuid.len()).ok()?;
        let namespace_len = u16::try_from(v.namespace.len()).ok()?;
        if v.gi == Some(u32::MAX) {
            return None;
        }
        let mut text = String::with_capacity(v.uuid.len() + v.namespace.len() + v.pod.len());
        text.push_str(v.uuid);
        text.push_str(v.namespace);
        text.push_str(v.pod);
        Some(SeriesKey {
            text: Arc::from(text),
            uuid_len,
            namespace_len,
            gi: v.gi.unwrap_or(u32::MAX),
        })
    }

    /// The key as a view.
    pub fn view(&self) -> KeyView<'_> {
        let (u, rest) = self.text.split_at(usize::from(self.uuid_len));
        let (ns, pod) = rest.split_at(usize::from(self.namespace_len));
        KeyView {
            uuid: u,
            gi: (self.gi != u32::MAX).then_some(self.gi),
            namespace: ns,
            pod,
        }
    }

    /// Heap bytes held by the key (text and the two reference counts).
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + 2 * size_of::<usize>()
    }
}

/// Lets a map keyed by [`SeriesKey`] be probed with a [`KeyView`] without allocating.
pub(crate) trait AsKey {
    fn key(&self) -> KeyView<'_>;
}

impl AsKey for SeriesKey {
    fn key(&self) -> KeyView<'_> {
        self.view()
    }
}

impl AsKey for KeyView<'_> {
    fn key(&self) -> KeyView<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsKey + 'a> for SeriesKey {
    fn borrow(&self) -> &(dyn AsKey + 'a) {
        self
    }
}

impl Hash for dyn AsKey + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h);
    }
}

impl PartialEq for dyn AsKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn AsKey + '_ {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.view().hash(h);
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for SeriesKey {}

/// The per-series map every GPU detector keeps.
pub(crate) type SeriesMap<S> = FxHashMap<SeriesKey, S>;

/// Approximate bytes of a [`SeriesMap`]: table slots (key, value, control byte) plus key text.
pub(crate) fn map_bytes<S>(map: &SeriesMap<S>, key_heap: usize) -> usize {
    map.capacity() * (size_of::<SeriesKey>() + size_of::<S>() + 1) + key_heap
}

/// Where a row lands in a series' scrape slot (detectors that combine several metrics of one
/// scrape collect them in a slot and judge the scrape once the watermark has passed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// Older than the slot, or of a scrape already judged: dropped.
    Late,
    /// Same scrape as the open slot.
    Same,
    /// A new scrape: the slot was (re)opened; the series goes on the pending list.
    Opened,
}

/// Series with an open scrape slot: `(slot time, key)`. Ticks judge those the watermark has
/// passed, so a tick costs O(open slots), not O(series). Stale entries (the slot was judged
/// when the series' next scrape arrived) are dropped when met.
pub(crate) type PendingSlots = Vec<(i64, SeriesKey)>;

/// How often (event time) idle series are swept out.
pub(crate) const SWEEP_NANOS: i64 = 60 * NANOS;

// ---------------------------------------------------------------------------------------------
// Rows

/// Typed access to the columns of a `gpu_metrics` batch the detectors read.
pub(crate) struct GpuRows<'a> {
    ts: &'a [i64],
    metric: &'a StringArray,
    value: &'a Float64Array,
    uuid: &'a StringArray,
    namespace: &'a StringArray,
    pod: &'a StringArray,
    pod_uid: &'a StringArray,
    container: &'a StringArray,
    node: &'a StringArray,
    cluster: &'a StringArray,
    gi: &'a UInt32Array,
}

impl<'a> GpuRows<'a> {
    /// The view, or `None` when the batch does not follow the `gpu_metrics` schema (a bug
    /// upstream: the batch is skipped, once, with a debug log).
    pub fn new(batch: &'a RecordBatch) -> Option<Self> {
        let s = |name: &str| batch.column_by_name(name)?.as_string_opt::<i32>();
        let rows = GpuRows {
            ts: batch
                .column_by_name(schema::TS)?
                .as_primitive_opt::<TimestampNanosecondType>()?
                .values(),
            metric: s(gpu_metrics::METRIC)?,
            value: batch
                .column_by_name(gpu_metrics::VALUE)?
                .as_primitive_opt()?,
            uuid: s(schema::GPU_UUID)?,
            namespace: s(schema::NAMESPACE)?,
            pod: s(schema::POD)?,
            pod_uid: s(schema::POD_UID)?,
            container: s(schema::CONTAINER)?,
            node: s(schema::NODE)?,
            cluster: s(schema::CLUSTER)?,
            gi: batch
                .column_by_name(gpu_metrics::GPU_I_ID)?
                .as_primitive_opt::<UInt32Type>()?,
        };
        Some(rows)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Event time of row `i`.
    pub fn ts(&self, i: usize) -> i64 {
        self.ts[i]
    }

    /// Canonical metric name of row `i`.
    pub fn metric(&self, i: usize) -> &'a str {
        self.metric.value(i)
    }

    /// The value of row `i`; `None` for no data (DCGM blank sentinel → null), NaN and ±Inf.
    pub fn value(&self, i: usize) -> Option<f64> {
        if self.value.is_null(i) {
            return None;
        }
        let v = self.value.value(i);
        v.is_finite().then_some(v)
    }

    fn text(a: &'a StringArray, i: usize) -> &'a str {
        if a.is_null(i) { "" } else { a.value(i) }
    }

    fn opt(a: &'a StringArray, i: usize) -> Option<&'a str> {
        Some(Self::text(a, i)).filter(|s| !s.is_empty())
    }

    /// The series key of row `i`; `None` for rows without a GPU UUID (NVLink, NVSwitch, CPU
    /// entities). A pod needs both namespace and name, else the row counts as "no pod".
    pub fn key(&self, i: usize) -> Option<KeyView<'a>> {
        let uuid = Self::text(self.uuid, i);
        if uuid.is_empty() {
            return None;
        }
        let (namespace, pod) = (Self::text(self.namespace, i), Self::text(self.pod, i));
        let (namespace, pod) = if namespace.is_empty() || pod.is_empty() {
            ("", "")
        } else {
            (namespace, pod)
        };
        let gi = (!self.gi.is_null(i)).then(|| self.gi.value(i));
        Some(KeyView {
            uuid,
            gi,
            namespace,
            pod,
        })
    }

    /// Node, pod UID, container and cluster of row `i`, kept for the finding.
    pub fn context(&self, i: usize) -> RowContext {
        let own = |a, i| Self::opt(a, i).map(str::to_owned);
        RowContext {
            node: own(self.node, i),
            pod_uid: own(self.pod_uid, i),
            container: own(self.container, i),
            cluster: own(self.cluster, i),
        }
    }
}

/// Row facts a finding carries beyond the series key.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RowContext {
    pub node: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub cluster: Option<String>,
}

impl RowContext {
    fn heap_bytes(&self) -> usize {
        [&self.node, &self.pod_uid, &self.container, &self.cluster]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::capacity))
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation witnesses

/// Which GPUs (and MIG instances) were recently seen on a series *with* pod labels.
///
/// dcgm-exporter may emit a device-level series without pod labels beside per-pod ones (per-pod
/// `FB_USED`/`GPU_UTIL` since 4.5.3, MPS/time-slicing), and parent-GPU series beside MIG ones.
/// Such a `<none>` series is not "a GPU allocated to no pod": a GPU counts as allocated while a
/// pod-labelled series of it (or of one of its MIG instances) was seen within the grace period.
#[derive(Debug, Default)]
pub(crate) struct Allocations {
    last: FxHashMap<SeriesKey, i64>,
    key_heap: usize,
}

impl Allocations {
    /// Records that `key` (a pod-labelled series) was seen at `ts`.
    pub fn witness(&mut self, key: &KeyView<'_>, ts: i64) {
        let gpu = key.gpu();
        self.touch(&gpu, ts);
        if gpu.gi.is_some() {
            self.touch(&KeyView { gi: None, ..gpu }, ts);
        }
    }

    fn touch(&mut self, gpu: &KeyView<'_>, ts: i64) {
        match self.last.get_mut(gpu as &dyn AsKey) {
            Some(t) => *t = (*t).max(ts),
            None => {
                if let Some(k) = SeriesKey::new(gpu) {
                    self.key_heap += k.heap_bytes();
                    self.last.insert(k, ts);
                }
            }
        }
    }

    /// Whether `key`'s GPU (instance) had a pod-labelled series within `grace` ns before `ts`
    /// (or after it).
    pub fn allocated(&self, key: &KeyView<'_>, ts: i64, grace: i64) -> bool {
        self.last
            .get(&key.gpu() as &dyn AsKey)
            .is_some_and(|&t| t >= ts.saturating_sub(grace))
    }

    /// Forgets GPUs not witnessed for `idle` ns before `now`.
    pub fn evict(&mut self, now: i64, idle: i64) {
        let heap = &mut self.key_heap;
        self.last.retain(|k, t| {
            let keep = *t >= now.saturating_sub(idle);
            if !keep {
                *heap -= k.heap_bytes();
            }
            keep
        });
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        map_bytes(&self.last, self.key_heap)
    }
}

// ---------------------------------------------------------------------------------------------
// Roles and severities

/// What a detector reports for a role: nothing (`ignore`) or a severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    /// No finding: the behaviour is normal for this role.
    Ignore,
    /// [`Severity::Info`].
    Info,
    /// [`Severity::Low`].
    Low,
    /// [`Severity::Medium`].
    Medium,
    /// [`Severity::High`].
    High,
    /// [`Severity::Critical`].
    Critical,
}

impl Grade {
    /// The severity, `None` for `ignore`.
    pub fn severity(self) -> Option<Severity> {
        match self {
            Grade::Ignore => None,
            Grade::Info => Some(Severity::Info),
            Grade::Low => Some(Severity::Low),
            Grade::Medium => Some(Severity::Medium),
            Grade::High => Some(Severity::High),
            Grade::Critical => Some(Severity::Critical),
        }
    }
}

/// A severity per pod role (and for a GPU allocated to no pod).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSeverities {
    /// Model-serving pods.
    pub serving: Grade,
    /// Training jobs.
    pub training: Grade,
    /// Interactive notebooks.
    pub notebook: Grade,
    /// Batch jobs that requested a GPU.
    pub batch: Grade,
    /// Pods that requested no `nvidia.com/gpu`.
    pub non_gpu: Grade,
    /// Pods the inventory knows nothing about (or no matcher applies to).
    pub unknown: Grade,
    /// A GPU allocated to no pod (a series without pod labels).
    pub unallocated: Grade,
}

impl RoleSeverities {
    /// The grade of a series: `unallocated` for `<none>` series, else by role.
    pub fn grade(&self, role: Role, unallocated: bool) -> Grade {
        if unallocated {
            return self.unallocated;
        }
        match role {
            Role::Serving => self.serving,
            Role::Training => self.training,
            Role::Notebook => self.notebook,
            Role::Batch => self.batch,
            Role::NonGpu => self.non_gpu,
            Role::Unknown => self.unknown,
        }
    }
}

/// Who a series belongs to, as a finding reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attribution {
    pub role: Role,
    pub role_reason: String,
    /// The series has no pod labels.
    pub unallocated: bool,
    /// `nvidia.com/gpu` requested by the pod, where the inventory knows the pod.
    pub gpu_request: Option<u32>,
    pub context: RowContext,
}

impl Attribution {
    /// Looks the series' pod up in the inventory.
    pub fn of(inventory: &Inventory, key: &KeyView<'_>, context: RowContext) -> Self {
        if !key.has_pod() {
            return Attribution {
                role: Role::Unknown,
                role_reason: "GPU allocated to no pod: the DCGM series has no pod labels".into(),
                unallocated: true,
                gpu_request: None,
                context,
            };
        }
        let pod = inventory.lookup(
            context.pod_uid.as_deref(),
            Some(key.namespace),
            Some(key.pod),
        );
        let (role, role_reason) = inventory.role_of(pod);
        Attribution {
            role,
            role_reason,
            unallocated: false,
            gpu_request: pod.map(|p| p.gpu_request()),
            context,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.role_reason.capacity() + self.context.heap_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Episodes

/// The part of an open episode every GPU detector keeps: identity, severity, attribution and
/// the ids of the samples that decided.
#[derive(Debug, Clone)]
pub(crate) struct EpisodeCore {
    /// Window start: the id is hashed from it.
    pub window_start: i64,
    /// Event time the episode was raised (the finding's `ts`).
    pub raised_ts: i64,
    pub severity: Severity,
    /// Emissions so far.
    pub revision: u32,
    pub attribution: Attribution,
    /// Samples that decided (bounded: raise and the latest material change).
    pub event_ids: Vec<String>,
}

/// Most event ids an episode keeps.
const MAX_EVENT_IDS: usize = 8;

impl EpisodeCore {
    pub fn new(
        window_start: i64,
        raised_ts: i64,
        severity: Severity,
        attribution: Attribution,
    ) -> Self {
        EpisodeCore {
            window_start,
            raised_ts,
            severity,
            revision: 0,
            attribution,
            event_ids: Vec::new(),
        }
    }

    /// Adds the id of a deciding sample (the first ones and the latest are kept).
    pub fn add_event(&mut self, key: &KeyView<'_>, ts: i64) {
        let id = key.event_id(ts);
        if self.event_ids.contains(&id) {
            return;
        }
        if self.event_ids.len() >= MAX_EVENT_IDS {
            self.event_ids.remove(MAX_EVENT_IDS / 2);
        }
        self.event_ids.push(id);
    }

    /// One emission of the episode; bumps the revision.
    pub fn emit(
        &mut self,
        detector: &'static str,
        key: &KeyView<'_>,
        status: Status,
        last_ts: i64,
        summary: String,
        evidence: serde_json::Value,
    ) -> Finding {
        let v = key;
        let a = &self.attribution;
        let f = Finding {
            id: finding_id(detector, &key.entity_key(), self.window_start),
            ts: self.raised_ts,
            last_ts,
            detector: detector.to_string(),
            severity: self.severity,
            status,
            revision: self.revision,
            summary,
            cluster: a.context.cluster.clone(),
            namespace: v.has_pod().then(|| v.namespace.to_string()),
            pod: v.has_pod().then(|| v.pod.to_string()),
            pod_uid: a.context.pod_uid.clone(),
            container: a.context.container.clone(),
            node: a.context.node.clone(),
            gpu_uuid: Some(v.uuid.to_string()),
            role: a.role,
            role_reason: a.role_reason.clone(),
            mitre: vec![MITRE_RESOURCE_HIJACKING.to_string()],
            evidence,
            event_ids: self.event_ids.clone(),
        };
        self.revision += 1;
        f
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.attribution.heap_bytes()
            + self
                .event_ids
                .iter()
                .map(|s| s.capacity() + size_of::<String>())
                .sum::<usize>()
    }
}

/// Who the series is, for a summary line: `pod ns/name (role)` or `no pod`.
pub(crate) fn who(v: &KeyView<'_>, a: &Attribution) -> String {
    if v.has_pod() {
        format!("pod {}/{} ({})", v.namespace, v.pod, a.role)
    } else {
        "no pod".to_string()
    }
}

/// The GPU, for a summary line: `GPU-…` or `GPU-… MIG instance N`.
pub(crate) fn gpu_name(v: &KeyView<'_>) -> String {
    match v.gi {
        Some(gi) => format!("{} MIG instance {gi}", v.uuid),
        None => v.uuid.to_string(),
    }
}

/// Hand-made `gpu_metrics` batches for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
    };
    use gpusiem_ingest::Stream;

    /// One row: time (ns), metric, GPU UUID, pod (namespace `ml`) or none, value.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Row<'a> {
        pub ts: i64,
        pub metric: &'a str,
        pub uuid: &'a str,
        pub pod: Option<&'a str>,
        pub value: Option<f64>,
    }

    impl<'a> Row<'a> {
        pub fn pod(
            ts: i64,
            metric: &'a str,
            uuid: &'a str,
            pod: &'a str,
            value: Option<f64>,
        ) -> Self {
            Row {
                ts,
                metric,
                uuid,
                pod: Some(pod),
                value,
            }
        }

        pub fn none(ts: i64, metric: &'a str, uuid: &'a str, value: Option<f64>) -> Self {
            Row {
                ts,
                metric,
                uuid,
                pod: None,
                value,
            }
        }
    }

    /// A batch in the `gpu_metrics` schema (node `node-1`, other columns null).
    pub(crate) fn batch(rows: &[Row<'_>]) -> RecordBatch {
        let schema = Stream::GpuMetrics.schema();
        let n = rows.len();
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "ts" => Arc::new(
                        TimestampNanosecondArray::from(
                            rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    "metric" => Arc::new(StringArray::from(
                        rows.iter().map(|r| r.metric).collect::<Vec<_>>(),
                    )),
                    "gpu_uuid" => Arc::new(StringArray::from(
                        rows.iter().map(|r| Some(r.uuid)).collect::<Vec<_>>(),
                    )),
                    "node" => Arc::new(StringArray::from(vec![Some("node-1"); n])),
                    "namespace" => Arc::new(StringArray::from(
                        rows.iter().map(|r| r.pod.map(|_| "ml")).collect::<Vec<_>>(),
                    )),
                    "pod" => Arc::new(StringArray::from(
                        rows.iter().map(|r| r.pod).collect::<Vec<_>>(),
                    )),
                    "value" => Arc::new(Float64Array::from(
                        rows.iter().map(|r| r.value).collect::<Vec<_>>(),
                    )),
                    "gpu" | "gpu_i_id" => Arc::new(UInt32Array::from(vec![None; n])),
                    _ => Arc::new(StringArray::from(vec![None::<&str>; n])),
                }
            })
            .collect();
        RecordBatch::try_new(schema, cols).expect("test batch follows the schema")
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn view<'a>(uuid: &'a str, gi: Option<u32>, ns: &'a str, pod: &'a str) -> KeyView<'a> {
        KeyView {
            uuid,
            gi,
            namespace: ns,
            pod,
        }
    }

    #[test]
    fn owned_and_borrowed_keys_hash_and_compare_alike() {
        let v = view("GPU-1", Some(3), "ml", "nb-0");
        let k = SeriesKey::new(&v).expect("short key");
        let b = rustc_hash::FxBuildHasher;
        assert_eq!(b.hash_one(&k), b.hash_one(&v as &dyn AsKey));
        assert_eq!(k.view(), v);
        let mut m: SeriesMap<u8> = SeriesMap::default();
        m.insert(k, 7);
        assert_eq!(m.get(&v as &dyn AsKey), Some(&7));
        assert_eq!(
            m.get(&view("GPU-1", None, "ml", "nb-0") as &dyn AsKey),
            None
        );
        // The split between namespace and pod is part of the key.
        assert_eq!(
            m.get(&view("GPU-1", Some(3), "mln", "b-0") as &dyn AsKey),
            None
        );
    }

    #[test]
    fn entity_keys_and_event_ids() {
        let k = SeriesKey::new(&view("GPU-1", None, "ml", "nb-0")).expect("key");
        assert_eq!(k.view().entity_key(), "GPU-1/ml/nb-0");
        assert_eq!(
            k.view().event_id(1_000_000_000),
            "gpu_metrics:GPU-1/ml/nb-0@1970-01-01T00:00:01.000000000Z"
        );
        assert_eq!(
            view("GPU-1", Some(2), "", "").entity_key(),
            "GPU-1/mig2/<none>"
        );
    }

    #[test]
    fn allocations_cover_the_parent_gpu_of_a_mig_instance() {
        let mut a = Allocations::default();
        a.witness(&view("GPU-1", Some(2), "ml", "p"), 100);
        assert!(a.allocated(&view("GPU-1", Some(2), "", ""), 150, 100));
        assert!(a.allocated(&view("GPU-1", None, "", ""), 150, 100));
        assert!(!a.allocated(&view("GPU-1", Some(5), "", ""), 150, 100));
        assert!(!a.allocated(&view("GPU-1", Some(2), "", ""), 201, 100));
        a.evict(1_000, 100);
        assert!(!a.allocated(&view("GPU-1", Some(2), "", ""), 150, 100));
        assert_eq!(a.key_heap, 0);
    }

    #[test]
    fn episode_event_ids_are_bounded() {
        let k = view("GPU-1", None, "", "");
        let a = Attribution::of(&Inventory::default(), &k, RowContext::default());
        let mut e = EpisodeCore::new(0, 0, Severity::High, a);
        for t in 0..20 {
            e.add_event(&k, t);
        }
        assert_eq!(e.event_ids.len(), MAX_EVENT_IDS);
        assert!(e.event_ids[0].ends_with("00:00:00.000000000Z"));
        assert!(e.event_ids[MAX_EVENT_IDS - 1].ends_with("00:00:00.000000019Z"));
    }
}
