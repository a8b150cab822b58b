//! Rows for the store and query tests.
#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use gpusiem_detect::{Finding, Role, Severity, Status};

/// 2024-05-01T00:00:00Z in ns.
pub const T0: i64 = 1_714_521_600_000_000_000;
/// One hour in ns.
pub const HOUR: i64 = 3_600_000_000_000;

/// A `falco_events` batch (only the columns the tests need; the store fills the rest with
/// nulls): `(ts, namespace, pod)`; event ids are `ev-<ts>`.
pub fn falco(rows: &[(i64, Option<&str>, &str)]) -> RecordBatch {
    let ts = TimestampNanosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .with_timezone("UTC");
    let ns = StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
    let pod = StringArray::from(rows.iter().map(|r| Some(r.2)).collect::<Vec<_>>());
    let ids = StringArray::from(
        rows.iter()
            .map(|r| format!("ev-{}-{}", r.0, r.2))
            .collect::<Vec<_>>(),
    );
    let rule = StringArray::from(
        rows.iter()
            .map(|r| format!("rule for {}", r.2))
            .collect::<Vec<_>>(),
    );
    let prio = StringArray::from(vec!["Warning"; rows.len()]);
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("namespace", DataType::Utf8, true),
        Field::new("pod", DataType::Utf8, true),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("priority", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ts),
        Arc::new(ns),
        Arc::new(pod),
        Arc::new(ids),
        Arc::new(rule),
        Arc::new(prio),
    ];
    RecordBatch::try_new(schema, cols).expect("falco batch")
}

/// A finding emission.
pub fn finding(id: &str, ts: i64, namespace: Option<&str>, pod: &str, revision: u32) -> Finding {
    Finding {
        id: id.to_string(),
        ts,
        last_ts: ts + i64::from(revision) * 1_000_000_000,
        detector: "gpu_memory_spike".into(),
        severity: if revision == 0 {
            Severity::Medium
        } else {
            Severity::High
        },
        status: Status::Firing,
        revision,
        summary: format!("finding {id} on {pod} rev {revision}"),
        cluster: Some("c1".into()),
        namespace: namespace.map(str::to_string),
        pod: Some(pod.to_string()),
        pod_uid: None,
        container: None,
        node: Some(format!("node-of-{pod}")),
        gpu_uuid: Some(format!("GPU-{pod}")),
        role: Role::Unknown,
        role_reason: String::new(),
        mitre: vec!["T1496".into()],
        evidence: serde_json::json!({"pod": pod}),
        event_ids: vec![format!("falco:{id}")],
    }
}
