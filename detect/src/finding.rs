//! Findings: what detectors, rules and correlation raise.
//!
//! A finding is one *episode*: it is raised once, may be updated (new evidence, higher
//! severity, later `last_ts`), and is resolved when its condition ends. Every emission carries
//! the same deterministic [`Finding::id`] — a hash of the detector or rule, the entity key and
//! the episode's window start — so a replay, or a second replica, produces the same ids. They
//! are the Elasticsearch `_id`, the PagerDuty `dedup_key` and the Slack dedup key.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
    UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::role::Role;

/// How urgent a finding is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Context, no action.
    #[default]
    Info,
    /// Worth a look.
    Low,
    /// Investigate.
    Medium,
    /// Investigate now.
    High,
    /// Page someone.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// 0 (info) … 4 (critical), for `severity >= x` filters in SQL.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }

    /// One step up, saturating at critical.
    pub fn raised(self) -> Severity {
        Severity::ALL[(self.rank() as usize + 1).min(4)]
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a finding's episode stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The condition holds.
    #[default]
    Firing,
    /// The condition ended (the series returned to its baseline, the window closed).
    Resolved,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// One finding (one emission of an episode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Deterministic id (32 hex characters), see [`finding_id`].
    pub id: String,
    /// Event time the episode was first raised, ns since the epoch.
    #[serde(with = "rfc3339")]
    pub ts: i64,
    /// Event time of the latest evidence, ns since the epoch.
    #[serde(with = "rfc3339")]
    pub last_ts: i64,
    /// Detector or rule id (`gpu_memory_spike`, `exec_into_gpu_pod`, …).
    pub detector: String,
    /// Severity.
    pub severity: Severity,
    /// Firing or resolved.
    pub status: Status,
    /// 0 when raised, +1 per later emission.
    pub revision: u32,
    /// One line for a human.
    pub summary: String,
    /// Cluster.
    pub cluster: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Pod UID.
    pub pod_uid: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// GPU UUID, where the finding is about a GPU.
    pub gpu_uuid: Option<String>,
    /// The pod's role when the finding was raised.
    pub role: Role,
    /// Why the pod has that role.
    pub role_reason: String,
    /// MITRE ATT&CK technique ids.
    pub mitre: Vec<String>,
    /// Values, baselines and contributing event ids that made the decision.
    pub evidence: serde_json::Value,
    /// Ids of the source events that contributed (`falco:<id>`, `k8s_audit:<id>`, `finding:<id>`, `gpu_metrics:<series>@<ts>`).
    pub event_ids: Vec<String>,
}

impl Finding {
    /// The finding as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a finding always serialises")
    }
}

/// The deterministic finding id: SHA-256 over the detector, the entity key and the window
/// start, as 32 hex characters (128 bits).
pub fn finding_id(detector: &str, entity_key: &str, window_start: i64) -> String {
    let mut h = Sha256::new();
    h.update(detector.as_bytes());
    h.update([0]);
    h.update(entity_key.as_bytes());
    h.update([0]);
    h.update(window_start.to_be_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Column names of the `findings` table.
pub mod columns {
    /// Finding id.
    pub const ID: &str = "id";
    /// First raised (event time).
    pub const TS: &str = "ts";
    /// Latest evidence (event time).
    pub const LAST_TS: &str = "last_ts";
    /// Detector or rule id.
    pub const DETECTOR: &str = "detector";
    /// Severity name.
    pub const SEVERITY: &str = "severity";
    /// Severity as 0 (info) … 4 (critical).
    pub const SEVERITY_RANK: &str = "severity_rank";
    /// `firing` or `resolved`.
    pub const STATUS: &str = "status";
    /// Emission number of the episode.
    pub const REVISION: &str = "revision";
    /// Summary.
    pub const SUMMARY: &str = "summary";
    /// Pod role.
    pub const ROLE: &str = "role";
    /// Why the pod has its role.
    pub const ROLE_REASON: &str = "role_reason";
    /// ATT&CK technique ids.
    pub const MITRE: &str = "mitre";
    /// Evidence, JSON text.
    pub const EVIDENCE: &str = "evidence";
    /// Contributing event ids.
    pub const EVENT_IDS: &str = "event_ids";
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use gpusiem_ingest::schema::*;
    let utf8 = |n: &str| Field::new(n, DataType::Utf8, true);
    let list = |n: &str| {
        Field::new(
            n,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new(TS, ts_type(), false),
        utf8(CLUSTER),
        utf8(NODE),
        utf8(NAMESPACE),
        utf8(POD),
        utf8(POD_UID),
        utf8(CONTAINER),
        utf8(GPU_UUID),
        Field::new(columns::ID, DataType::Utf8, false),
        Field::new(columns::LAST_TS, ts_type(), false),
        Field::new(columns::DETECTOR, DataType::Utf8, false),
        Field::new(columns::SEVERITY, DataType::Utf8, false),
        Field::new(columns::SEVERITY_RANK, DataType::UInt8, false),
        Field::new(columns::STATUS, DataType::Utf8, false),
        Field::new(columns::REVISION, DataType::Int64, false),
        Field::new(columns::SUMMARY, DataType::Utf8, false),
        Field::new(columns::ROLE, DataType::Utf8, false),
        utf8(columns::ROLE_REASON),
        list(columns::MITRE),
        utf8(columns::EVIDENCE),
        list(columns::EVENT_IDS),
    ]))
});

/// Arrow schema of the `findings` table (entity columns first, like every stream).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Findings as one Arrow batch in [`schema`].
pub fn to_record_batch(findings: &[Finding]) -> RecordBatch {
    let n = findings.len();
    let mut ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut last_ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut s: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
    let (
        mut id,
        mut detector,
        mut severity,
        mut status,
        mut summary,
        mut role,
        mut role_reason,
        mut evidence,
    ) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut rank = UInt8Builder::with_capacity(n);
    let mut revision = Int64Builder::with_capacity(n);
    let mut mitre = ListBuilder::new(StringBuilder::new());
    let mut event_ids = ListBuilder::new(StringBuilder::new());
    for f in findings {
        ts.append_value(f.ts);
        for (b, v) in s.iter_mut().zip([
            &f.cluster,
            &f.node,
            &f.namespace,
            &f.pod,
            &f.pod_uid,
            &f.container,
            &f.gpu_uuid,
        ]) {
            b.append_option(v.as_deref());
        }
        id.append_value(&f.id);
        last_ts.append_value(f.last_ts);
        detector.append_value(&f.detector);
        severity.append_value(f.severity.as_str());
        rank.append_value(f.severity.rank());
        status.append_value(f.status.as_str());
        revision.append_value(i64::from(f.revision));
        summary.append_value(&f.summary);
        role.append_value(f.role.as_str());
        role_reason.append_value(&f.role_reason);
        for m in &f.mitre {
            mitre.values().append_value(m);
        }
        mitre.append(true);
        evidence.append_value(f.evidence.to_string());
        for e in &f.event_ids {
            event_ids.values().append_value(e);
        }
        event_ids.append(true);
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(ts.finish())];
    columns.extend(s.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend([
        Arc::new(id.finish()) as ArrayRef,
        Arc::new(last_ts.finish()),
        Arc::new(detector.finish()),
        Arc::new(severity.finish()),
        Arc::new(rank.finish()),
        Arc::new(status.finish()),
        Arc::new(revision.finish()),
        Arc::new(summary.finish()),
        Arc::new(role.finish()),
        Arc::new(role_reason.finish()),
        Arc::new(mitre.finish()),
        Arc::new(evidence.finish()),
        Arc::new(event_ids.finish()),
    ]);
    RecordBatch::try_new(schema(), columns).expect("builders follow the findings schema")
}

/// RFC 3339 (nanoseconds, UTC) for the JSON form of event times.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&gpusiem_ingest::time::format_rfc3339_nanos(*ns))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        gpusiem_ingest::time::parse_rfc3339_nanos(&s)
            .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Finding {
        Finding {
            id: finding_id("gpu_memory_spike", "GPU-1/ml/p", 1_000),
            ts: 1_764_163_115_486_000_000,
            last_ts: 1_764_163_116_000_000_000,
            detector: "gpu_memory_spike".into(),
            severity: Severity::High,
            status: Status::Firing,
            revision: 0,
            summary: "s".into(),
            cluster: None,
            namespace: Some("ml".into()),
            pod: Some("p".into()),
            pod_uid: None,
            container: None,
            node: Some("n".into()),
            gpu_uuid: Some("GPU-1".into()),
            role: Role::NonGpu,
            role_reason: "no nvidia.com/gpu request".into(),
            mitre: vec!["T1496".into()],
            evidence: serde_json::json!({"fb_used_mib": 25971}),
            event_ids: vec![],
        }
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(finding_id("a", "k", 1), finding_id("a", "k", 1));
        assert_ne!(finding_id("a", "k", 1), finding_id("a", "k", 2));
        assert_ne!(finding_id("a", "k1", 1), finding_id("a1", "k", 1));
        assert_eq!(finding_id("a", "k", 1).len(), 32);
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).expect("json");
        for key in [
            "id",
            "ts",
            "last_ts",
            "detector",
            "severity",
            "summary",
            "namespace",
            "pod",
            "node",
            "gpu_uuid",
            "role",
            "mitre",
            "evidence",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["ts"], "2025-11-26T13:18:35.486000000Z");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["role"], "non_gpu");
        let back: Finding = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, sample());
    }

    #[test]
    fn record_batch_follows_the_schema() {
        let b = to_record_batch(&[sample(), sample()]);
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), schema());
    }

    #[test]
    fn severity_order() {
        assert!(Severity::Critical > Severity::High);
        assert_eq!(Severity::parse("HIGH"), Some(Severity::High));
        assert_eq!(Severity::Critical.raised(), Severity::Critical);
    }
}
