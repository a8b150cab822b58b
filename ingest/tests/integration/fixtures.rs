//! Every real capture in `shared/fixtures/real/{dcgm,falco,k8s-audit}` decodes, with exact
//! values checked on chosen rows.

use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType, UInt32Type};
use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext, Decoded, Location, Reason};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/real")
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {ext} files in {dir}");
    v
}

fn decode_file(stream: Stream, path: &PathBuf) -> Decoded {
    let bytes = std::fs::read(path).expect("read fixture");
    decode::decode(
        stream,
        &bytes,
        &DecodeContext::new(1_700_000_000_000_000_000),
    )
    .expect("decode")
}

fn strings<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_string::<i32>()
}

/// Index of the first row whose `column` equals `value`.
fn row_where(b: &RecordBatch, column: &str, value: &str) -> usize {
    let c = strings(b, column);
    (0..b.num_rows())
        .find(|&i| c.is_valid(i) && c.value(i) == value)
        .unwrap_or_else(|| panic!("no row with {column} = {value}"))
}

fn sample_lines(path: &PathBuf) -> usize {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count()
}

#[test]
fn every_dcgm_capture_decodes_every_sample() {
    for path in files("dcgm", "prom") {
        let d = decode_file(Stream::GpuMetrics, &path);
        assert!(
            d.quarantined.is_empty(),
            "{}: {:?}",
            path.display(),
            d.quarantined
        );
        assert_eq!(
            d.batch.num_rows(),
            sample_lines(&path),
            "{}",
            path.display()
        );
        let uuid = strings(&d.batch, "gpu_uuid");
        assert_eq!(
            uuid.null_count(),
            0,
            "{}: every DCGM GPU series has a UUID",
            path.display()
        );
        let ts = d
            .batch
            .column_by_name("ts")
            .expect("ts")
            .as_primitive::<TimestampNanosecondType>();
        assert!(
            ts.iter().all(|t| t == Some(1_700_000_000_000_000_000)),
            "scrape time stamps samples without timestamps"
        );
    }
}

#[test]
fn busy_t4_reports_its_framebuffer_in_mib() {
    let d = decode_file(
        Stream::GpuMetrics,
        &fixtures().join("dcgm/ericsson-t4-busy-metrics.prom"),
    );
    let i = row_where(&d.batch, "metric", "DCGM_FI_DEV_FB_USED");
    let value = d
        .batch
        .column_by_name("value")
        .expect("value")
        .as_primitive::<Float64Type>();
    assert_eq!(value.value(i), 5120.0);
    assert_eq!(
        strings(&d.batch, "gpu_uuid").value(i),
        "GPU-6d5c0ac5-74d7-3130-46f1-e93ed57f469a"
    );
    assert_eq!(strings(&d.batch, "node").value(i), "cp-bm14r7");
    assert_eq!(strings(&d.batch, "model").value(i), "Tesla T4");
    assert_eq!(strings(&d.batch, "pci_bus_id").value(i), "00000000:37:00.0");
    assert_eq!(
        d.batch
            .column_by_name("gpu")
            .expect("gpu")
            .as_primitive::<UInt32Type>()
            .value(i),
        0
    );
    let j = row_where(&d.batch, "metric", "DCGM_FI_DEV_GPU_UTIL");
    assert_eq!(value.value(j), 91.0);
    let k = row_where(&d.batch, "metric", "DCGM_FI_DEV_POWER_USAGE");
    assert_eq!(value.value(k), 68.244);
    assert_eq!(
        strings(&d.batch, "labels").value(k),
        r#"{"DCGM_FI_DRIVER_VERSION":"590.48.01"}"#
    );
}

#[test]
fn old_namespace_and_mig_labels_map_to_the_same_columns() {
    let d = decode_file(
        Stream::GpuMetrics,
        &fixtures().join("dcgm/a100-mig-old-namespace.prom"),
    );
    let b = &d.batch;
    assert_eq!(
        strings(b, "metric").value(0),
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
    );
    assert_eq!(
        strings(b, "gpu_uuid").value(0),
        "GPU-ed1353d6-52ba-8793-7230-4d5d3eb68167"
    );
    assert_eq!(strings(b, "gpu_i_profile").value(1), "4g.40gb");
    assert_eq!(
        b.column_by_name("gpu_i_id")
            .expect("gpu_i_id")
            .as_primitive::<UInt32Type>()
            .value(1),
        2
    );
    assert!(strings(b, "pod").is_null(0), "empty pod_name is null");
    assert!(strings(b, "namespace").is_null(0));
    assert!(strings(b, "container").is_null(0));
    assert_eq!(
        strings(b, "labels").value(0),
        r#"{"__name__":"dcgm_fi_prof_gr_engine_active"}"#
    );

    let d = decode_file(
        Stream::GpuMetrics,
        &fixtures().join("dcgm/h100nvl-mig-fb-used.prom"),
    );
    let ids = d
        .batch
        .column_by_name("gpu_i_id")
        .expect("gpu_i_id")
        .as_primitive::<UInt32Type>();
    assert_eq!((ids.value(0), ids.value(1)), (7, 8));
    assert_eq!(strings(&d.batch, "gpu_i_profile").value(0), "1g.11gb");
    assert_eq!(
        strings(&d.batch, "node").value(0),
        "vijay-1-bodha-h100-nvl-nfm45-5h7w7-gj5nn-9sbrb"
    );
}

#[test]
fn shared_gpu_series_keep_each_pod_and_replica() {
    let d = decode_file(
        Stream::GpuMetrics,
        &fixtures().join("dcgm/gke-a100-mps-shared-gpu-pods.prom"),
    );
    let b = &d.batch;
    let i = row_where(b, "pod", "vllm-medgemma-4b-it-d599b4c99-f95nk");
    assert_eq!(strings(b, "namespace").value(i), "vllm-inference");
    assert_eq!(strings(b, "container").value(i), "vllm");
    assert_eq!(strings(b, "vgpu").value(i), "3");
    assert_eq!(
        b.column_by_name("value")
            .expect("value")
            .as_primitive::<Float64Type>()
            .value(i),
        15866.0
    );

    let d = decode_file(
        Stream::GpuMetrics,
        &fixtures().join("dcgm/titan-v-k8s-mode-empty-pod-labels.prom"),
    );
    assert_eq!(
        strings(&d.batch, "pod").null_count(),
        d.batch.num_rows(),
        "empty pod labels are nulls"
    );
    assert_eq!(strings(&d.batch, "node").value(0), "dcgm-exporter-lcxpl");

    let d = decode_file(
        Stream::GpuMetrics,
        &fixtures().join("dcgm/pod-attributed-dcgmproftester.prom"),
    );
    let i = row_where(&d.batch, "metric", "DCGM_FI_PROF_PCIE_TX_BYTES");
    assert_eq!(strings(&d.batch, "pod").value(i), "dcgmproftester");
    assert_eq!(
        d.batch
            .column_by_name("value")
            .expect("value")
            .as_primitive::<Float64Type>()
            .value(i),
        421_894.0
    );
}

#[test]
fn every_falco_json_capture_decodes() {
    for path in files("falco", "jsonl")
        .into_iter()
        .chain([fixtures().join("falco/falcosidekick-test-input.json")])
    {
        let d = decode_file(Stream::FalcoEvents, &path);
        assert!(
            d.quarantined.is_empty(),
            "{}: {:?}",
            path.display(),
            d.quarantined
        );
        assert_eq!(
            d.batch.num_rows(),
            sample_lines(&path),
            "{}",
            path.display()
        );
    }
}

#[test]
fn falco_values_are_exact() {
    let d = decode_file(
        Stream::FalcoEvents,
        &fixtures().join("falco/elastic-falco-alerts-real.jsonl"),
    );
    let b = &d.batch;
    let evt_time = b
        .column_by_name("evt_time")
        .expect("evt_time")
        .as_primitive::<Int64Type>();
    let ts = b
        .column_by_name("ts")
        .expect("ts")
        .as_primitive::<TimestampNanosecondType>();
    // Line 1: evt.time.iso8601 is an integer above 2^53 and must survive exactly.
    assert_eq!(strings(b, "fd_name").value(0), "/etc/shadow");
    assert_eq!(evt_time.value(0), 1_715_108_059_341_081_180);
    assert_eq!(ts.value(0), 1_715_108_059_341_081_180);
    assert_eq!(
        b.column_by_name("user_uid")
            .expect("uid")
            .as_primitive::<Int64Type>()
            .value(0),
        0
    );
    assert_eq!(strings(b, "priority").value(0), "Warning");
    assert_eq!(strings(b, "container_id").value(0), "9656db3bb358");
    // Line 5 went through falcosidekick: uuid, pod and the float-rounded evt.time as sent.
    let i = row_where(b, "uuid", "7466e462-ddde-434d-8dee-390ca5656f83");
    assert_eq!(strings(b, "pod").value(i), "debug");
    assert_eq!(strings(b, "namespace").value(i), "default");
    assert_eq!(evt_time.value(i), 1_724_880_904_518_808_600);
    assert_eq!(ts.value(i), 1_724_880_904_518_808_525);
    assert_eq!(
        strings(b, "event_id").value(i),
        "7466e462-ddde-434d-8dee-390ca5656f83"
    );
    assert_eq!(strings(b, "image").value(i), "docker.io/library/busybox");
    assert_eq!(
        strings(b, "node").value(i),
        "cluster-1-default-pool-131bf483-7km9"
    );
    let tags = b.column_by_name("tags").expect("tags").as_list::<i32>();
    let t: Vec<String> = tags
        .value(i)
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        t,
        [
            "T1059",
            "container",
            "maturity_stable",
            "mitre_execution",
            "shell"
        ]
    );
    // Line 4: a null output field is kept verbatim.
    assert!(
        strings(b, "output_fields")
            .value(3)
            .contains(r#""proc.aname[7]":null"#)
    );
    // Line 6: identity only in the output suffix.
    assert_eq!(strings(b, "pod").value(5), "falco-test-pod");
    assert_eq!(
        strings(b, "rule").value(5),
        "Drop and execute new binary in container"
    );
}

#[test]
fn falco_text_output_is_quarantined_not_guessed() {
    let path = fixtures().join("falco/text-output-lines-kodekloud.log");
    let d = decode_file(Stream::FalcoEvents, &path);
    assert_eq!(d.batch.num_rows(), 0);
    assert_eq!(d.quarantined.len(), 3);
    for (i, q) in d.quarantined.iter().enumerate() {
        assert_eq!(q.reason, Reason::InvalidJson);
        assert_eq!(q.location, Location::Line(i as u64 + 1));
    }
}

#[test]
fn every_audit_capture_decodes() {
    let mut total = 0;
    for path in files("k8s-audit", "jsonl") {
        let d = decode_file(Stream::K8sAudit, &path);
        assert!(
            d.quarantined.is_empty(),
            "{}: {:?}",
            path.display(),
            d.quarantined
        );
        assert_eq!(
            d.batch.num_rows(),
            sample_lines(&path),
            "{}",
            path.display()
        );
        total += d.batch.num_rows();
    }
    assert_eq!(total, 29);
}

#[test]
fn audit_values_are_exact() {
    let dir = fixtures().join("k8s-audit");
    let d = decode_file(Stream::K8sAudit, &dir.join("falco-trace-exec_pod.jsonl"));
    let b = &d.batch;
    assert_eq!(strings(b, "subresource").value(0), "exec");
    assert_eq!(strings(b, "verb").value(0), "create");
    assert_eq!(
        strings(b, "pod").value(0),
        "nginx-deployment-7998647bdf-phvq7"
    );
    assert_eq!(strings(b, "container").value(0), "nginx1");
    assert_eq!(strings(b, "stage").value(0), "ResponseStarted");
    assert_eq!(strings(b, "user").value(0), "minikube-user");
    assert_eq!(
        b.column_by_name("response_code")
            .expect("code")
            .as_primitive::<Int32Type>()
            .value(0),
        101
    );
    assert_eq!(
        strings(b, "event_id").value(0),
        "ca1ed9f4-7bf4-4c85-81a8-1b11253d1ba6/ResponseStarted"
    );
    let groups = b.column_by_name("groups").expect("groups").as_list::<i32>();
    assert_eq!(groups.value(0).len(), 2);

    let d = decode_file(
        Stream::K8sAudit,
        &dir.join("falco-trace-create_nginx_pod_privileged.jsonl"),
    );
    let b = &d.batch;
    assert_eq!(
        strings(b, "pod").value(0),
        "nginx-deployment-5cdcc99dbf-rgw6z",
        "named by the response of a generateName create"
    );
    assert!(
        strings(b, "request_object")
            .value(0)
            .contains(r#""privileged":true"#)
    );
    assert_eq!(
        strings(b, "user").value(0),
        "system:serviceaccount:kube-system:replicaset-controller"
    );

    let d = decode_file(
        Stream::K8sAudit,
        &dir.join("kodekloud-cks4-impersonation-audit.jsonl"),
    );
    let b = &d.batch;
    let i = row_where(b, "audit_id", "b3e1de1c-c54c-4e4e-86a9-52f794379ddd");
    assert_eq!(strings(b, "user").value(i), "kubernetes-admin");
    assert_eq!(strings(b, "impersonated_user").value(i), "agent-smith");
    assert_eq!(strings(b, "verb").value(i), "delete");
    assert_eq!(strings(b, "decision").value(i), "allow");
    assert!(
        strings(b, "authz_reason")
            .value(i)
            .starts_with("RBAC: allowed by RoleBinding")
    );
    let ts = b
        .column_by_name("ts")
        .expect("ts")
        .as_primitive::<TimestampNanosecondType>();
    assert_eq!(ts.value(i), 1_711_466_141_310_876_000);

    let d = decode_file(
        Stream::K8sAudit,
        &dir.join("elastic-audit-mixed-wrappers.jsonl"),
    );
    let env: Vec<&str> = strings(&d.batch, "envelope")
        .iter()
        .map(|e| e.unwrap_or_default())
        .collect();
    assert_eq!(env, ["event", "gke", "aks"]);
    assert_eq!(
        strings(&d.batch, "user").value(1),
        "system:gke-master-healthcheck"
    );
    assert_eq!(strings(&d.batch, "verb").value(1), "get");
    assert_eq!(
        d.batch
            .column_by_name("response_code")
            .expect("code")
            .as_primitive::<Int32Type>()
            .value(1),
        200
    );
    assert_eq!(strings(&d.batch, "user").value(2), "aksService");

    let d = decode_file(
        Stream::K8sAudit,
        &dir.join("elastic-aks-kube-audit-wrapped.jsonl"),
    );
    assert_eq!(strings(&d.batch, "envelope").value(0), "aks");
    assert_eq!(
        strings(&d.batch, "audit_id").value(0),
        "ad26f7bc-f1c6-4097-90f1-e0924e12f257"
    );
    assert_eq!(strings(&d.batch, "resource").value(0), "leases");
}
