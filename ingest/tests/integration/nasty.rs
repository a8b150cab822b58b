//! Hostile and broken input: every bad record is quarantined with its reason, the good records
//! around it still decode, and nothing panics.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext, Decoded, Location, Reason};

fn run(stream: Stream, input: &[u8]) -> Decoded {
    decode::decode(stream, input, &DecodeContext::new(0)).expect("decoders never fail on bad input")
}

fn reasons(d: &Decoded) -> Vec<(Location, Reason)> {
    d.quarantined
        .iter()
        .map(|q| (q.location, q.reason))
        .collect()
}

const GOOD_FALCO: &str = r#"{"rule":"Terminal shell in container","priority":"Notice","time":"2024-08-28T21:35:04.518808525Z","output_fields":{"k8s.pod.name":"p"}}"#;
const GOOD_AUDIT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","stage":"ResponseComplete","verb":"get","stageTimestamp":"2025-01-01T00:00:00Z"}"#;

#[test]
fn falco_corpus() {
    let deep = format!(
        r#"{{"rule":"r","priority":"Notice","time":"2024-01-01T00:00:00Z","tags":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let huge = format!(
        r#"{{"rule":"r","priority":"Notice","time":"2024-01-01T00:00:00Z","output":"{}"}}"#,
        "x".repeat(16 << 20)
    );
    let mut input = Vec::new();
    for line in [
        GOOD_FALCO.as_bytes(),
        &GOOD_FALCO.as_bytes()[..60],                                       // 2 truncated
        b"{\"rule\":\"r\xff\",\"priority\":\"Notice\",\"time\":\"2024-01-01T00:00:00Z\"}", // 3 invalid UTF-8
        deep.as_bytes(),                                                     // 4 10,000-deep nesting
        huge.as_bytes(),                                                     // 5 16 MiB line
        br#"{"rule":"r","priority":"Notice","time":"2024-01-01T00:00:00Z","output":"\ud800"}"#, // 6 lone surrogate
        br#"{"rule":"r","priority":"Notice","time":"0000-00-00T00:00:00Z"}"#, // 7 impossible time
        br#"["not","an","alert"]"#,                                          // 8: three bad items
        br#"{"rule":"<!channel> \u001b[31m","priority":"Notice","time":"2024-01-01T00:00:00Z","output":"a\r\nb"}"#, // 9 hostile but valid
        GOOD_FALCO.as_bytes(),
    ] {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let d = run(Stream::FalcoEvents, &input);
    assert_eq!(d.batch.num_rows(), 3, "{:?}", reasons(&d));
    assert_eq!(
        reasons(&d),
        vec![
            (Location::Line(2), Reason::InvalidJson),
            (Location::Line(3), Reason::InvalidUtf8),
            (Location::Line(4), Reason::TooDeep),
            (Location::Line(5), Reason::TooLarge),
            (Location::Line(6), Reason::InvalidJson),
            (Location::Line(7), Reason::InvalidTimestamp),
            (Location::Item(0), Reason::InvalidField),
            (Location::Item(1), Reason::InvalidField),
            (Location::Item(2), Reason::InvalidField),
        ]
    );
    let huge_q = &d.quarantined[3];
    assert_eq!(huge_q.raw.len(), 4096, "raw bytes are truncated to 4 KiB");
    assert_eq!(huge_q.raw_len, huge.len());
    let rule = d
        .batch
        .column_by_name("rule")
        .expect("rule")
        .as_string::<i32>();
    assert_eq!(
        rule.value(1),
        "<!channel> \u{1b}[31m",
        "hostile text is data, kept verbatim for later escaping"
    );
}

#[test]
fn audit_corpus() {
    let list_of_many: String = {
        let items: Vec<String> = (0..10_000)
            .map(|i| format!(r#"{{"auditID":"id-{i}","stage":"ResponseComplete","verb":"get","stageTimestamp":"2025-01-01T00:00:00Z"}}"#))
            .collect();
        format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
            items.join(",")
        )
    };
    let big_object = format!(
        r#"{{"auditID":"big","stage":"ResponseComplete","verb":"create","stageTimestamp":"2025-01-01T00:00:00Z","requestObject":{{"data":"{}"}}}}"#,
        "y".repeat(3 << 20)
    );
    let mut input = Vec::new();
    for line in [
        GOOD_AUDIT.as_bytes(),
        list_of_many.as_bytes(),                              // 2: 10,000 rows
        big_object.as_bytes(),                                // 3: 3 MiB requestObject, accepted
        br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"x","#, // 4 truncated
        br#"{"apiVersion":"audit.k8s.io/v2alpha9","kind":"Event","auditID":"z","stageTimestamp":"2025-01-01T00:00:00Z"}"#, // 5 accepted: audit group
        br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#, // 6 not an audit event
        br#"{"auditID":"n","stage":"ResponseComplete","stageTimestamp":1735689600}"#, // 7 number as timestamp
        br#"{"kind":"EventList","items":[{"auditID":"ok","stageTimestamp":"2025-01-01T00:00:00Z"},{"auditID":7}]}"#, // 8: one good, item 1 bad
        b"\xef\xbb\xbf",                                       // 9 stray BOM
    ] {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let d = run(Stream::K8sAudit, &input);
    assert_eq!(
        reasons(&d),
        vec![
            (Location::Line(4), Reason::InvalidJson),
            (Location::Line(6), Reason::UnknownShape),
            (Location::Line(7), Reason::InvalidField),
            (Location::Item(1), Reason::InvalidField),
            (Location::Line(9), Reason::InvalidJson),
        ]
    );
    assert_eq!(d.batch.num_rows(), 1 + 10_000 + 1 + 1 + 1);
    let req = d
        .batch
        .column_by_name("request_object")
        .expect("request_object")
        .as_string::<i32>();
    assert_eq!(req.value(10_001).len(), (3 << 20) + 11);
}

#[test]
fn prometheus_corpus() {
    let long_label = format!(
        "DCGM_FI_DEV_FB_USED{{UUID=\"GPU-1\",pod=\"{}\"}} 1\n",
        "p".repeat(16 << 20)
    );
    let mut input = String::new();
    input.push_str("# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).\r\n# TYPE DCGM_FI_DEV_FB_USED gauge\r\n");
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\",pod=\"\"} 25971\r\n"); // 3 good, CRLF
    input.push_str("DCGM_FI_DEV_MEMORY_TEMP{gpu=\"0\",UUID=\"GPU-a\"} 9223372036854775794\n"); // 4 INT64 blank → null
    input.push_str("DCGM_FI_DEV_POWER_USAGE{gpu=\"0\",UUID=\"GPU-a\"} 140737488355328.000000\n"); // 5 FP64 blank → null
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\",UUID=\"GPU-b\"} 1\n"); // 6 duplicate label
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\"\n"); // 7 truncated
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\",} NaN\n"); // 8 trailing comma, NaN: good
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\"} +Inf 1714000000000\n"); // 9 good with ms timestamp
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\"} 12 99999999999999999999\n"); // 10 timestamp overflow
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\"} 0x1F\n"); // 11 hex value
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\"}\n"); // 12 missing value
    input.push_str("DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\",err_msg=\"a\\\"b\\\\c\\nd\"} 3\n"); // 13 escapes: good
    input.push_str(&long_label); // 14 16 MiB line
    input.push_str("{UUID=\"GPU-a\"} 1\n"); // 15 no name
    input.push_str("DCGM_FI_DEV_GPU_UTIL{UUID=\"GPU-a\"} 808334905\n"); // 16 out-of-range util is data
    let mut bytes = input.into_bytes();
    bytes.extend_from_slice(b"DCGM_FI_DEV_FB_USED{UUID=\"GPU-\xff\"} 1\n"); // 17 invalid UTF-8
    let d = run(Stream::GpuMetrics, &bytes);
    assert_eq!(
        reasons(&d),
        vec![
            (Location::Line(6), Reason::DuplicateLabel),
            (Location::Line(7), Reason::InvalidSample),
            (Location::Line(10), Reason::InvalidTimestamp),
            (Location::Line(11), Reason::InvalidSample),
            (Location::Line(12), Reason::InvalidSample),
            (Location::Line(14), Reason::TooLarge),
            (Location::Line(15), Reason::InvalidSample),
            (Location::Line(17), Reason::InvalidUtf8),
        ]
    );
    let b = &d.batch;
    assert_eq!(b.num_rows(), 7);
    let v = b
        .column_by_name("value")
        .expect("value")
        .as_primitive::<Float64Type>();
    assert_eq!(v.value(0), 25971.0);
    assert!(v.is_null(1), "INT64 blank sentinel is no data");
    assert!(v.is_null(2), "FP64 blank sentinel is no data");
    assert!(v.value(3).is_nan());
    assert_eq!(v.value(4), f64::INFINITY);
    assert_eq!(v.value(6), 808_334_905.0);
    let ts = b
        .column_by_name("ts")
        .expect("ts")
        .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
    assert_eq!(ts.value(4), 1_714_000_000_000_000_000);
    let labels = b
        .column_by_name("labels")
        .expect("labels")
        .as_string::<i32>();
    let parsed: serde_json::Value = serde_json::from_str(labels.value(5)).expect("labels are JSON");
    assert_eq!(parsed["err_msg"], "a\"b\\c\nd");
    assert!(b.column_by_name("pod").expect("pod").is_null(0));
}

#[test]
fn empty_and_blank_inputs_give_empty_batches() {
    for stream in Stream::ALL {
        for input in [&b""[..], b"\n\n  \r\n", b"# only a comment\n"] {
            let d = run(stream, input);
            assert_eq!(d.batch.num_rows(), 0);
            assert_eq!(d.batch.schema(), stream.schema());
            if stream == Stream::GpuMetrics || !input.starts_with(b"#") {
                assert!(d.quarantined.is_empty(), "{stream} {input:?}");
            }
        }
    }
}
