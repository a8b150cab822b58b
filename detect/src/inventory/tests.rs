//! Inventory tests: real audit captures (tests/fixtures/real/k8s-audit), hand-written GPU pod
//! events in the same audit.k8s.io/v1 shape, and the bounds.

use std::collections::BTreeMap;

use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext};
use gpusiem_ingest::sources::kubernetes::{PodEvent, PodEventKind};
use serde_json::{Value, json};

use super::*;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/real/k8s-audit"
);

/// 2024-05-01T10:00:00Z in ns.
const T0: i64 = 1_714_557_600_000_000_000;
const SEC: i64 = 1_000_000_000;

fn decode_bytes(bytes: &[u8]) -> RecordBatch {
    let decoded = decode::decode(Stream::K8sAudit, bytes, &DecodeContext::new(0)).expect("decode");
    assert!(
        decoded.quarantined.is_empty(),
        "quarantined: {:?}",
        decoded.quarantined
    );
    decoded.batch
}

fn fixture(name: &str) -> RecordBatch {
    let bytes = std::fs::read(format!("{FIXTURES}/{name}")).expect("read fixture");
    decode_bytes(&bytes)
}

fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// One audit.k8s.io/v1 event.
struct Ev {
    audit_id: String,
    verb: &'static str,
    stage: &'static str,
    code: Option<i32>,
    object_ref: Value,
    request: Option<Value>,
    response: Option<Value>,
    ts: i64,
}

impl Ev {
    fn new(audit_id: &str, verb: &'static str, object_ref: Value, ts: i64) -> Self {
        Ev {
            audit_id: audit_id.to_string(),
            verb,
            stage: "ResponseComplete",
            code: Some(200),
            object_ref,
            request: None,
            response: None,
            ts,
        }
    }

    fn json(&self) -> Value {
        let mut e = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": self.audit_id, "stage": self.stage,
            "requestURI": "/api/v1/namespaces/x/pods", "verb": self.verb,
            "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "sourceIPs": ["10.0.0.2"], "objectRef": self.object_ref,
            "requestReceivedTimestamp": rfc3339(self.ts - 1_000_000),
            "stageTimestamp": rfc3339(self.ts),
        });
        if let Some(code) = self.code {
            e["responseStatus"] = json!({"metadata": {}, "code": code});
        }
        if let Some(r) = &self.request {
            e["requestObject"] = r.clone();
        }
        if let Some(r) = &self.response {
            e["responseObject"] = r.clone();
        }
        e
    }
}

fn batch(events: &[Ev]) -> RecordBatch {
    let mut text = String::new();
    for e in events {
        text.push_str(&e.json().to_string());
        text.push('\n');
    }
    decode_bytes(text.as_bytes())
}

/// A pod create as the replicaset controller makes it: `generateName` in the request, the
/// name and uid only in the response.
fn create(audit_id: &str, pod: &Value, ts: i64) -> Ev {
    let ns = pod["metadata"]["namespace"].as_str().expect("namespace");
    let mut request = pod.clone();
    let meta = request["metadata"].as_object_mut().expect("metadata");
    meta.remove("name");
    meta.remove("uid");
    meta.insert("generateName".into(), json!("gen-"));
    let mut e = Ev::new(
        audit_id,
        "create",
        json!({"resource": "pods", "namespace": ns, "apiVersion": "v1"}),
        ts,
    );
    e.code = Some(201);
    e.request = Some(request);
    e.response = Some(pod.clone());
    e
}

fn binding(audit_id: &str, ns: &str, name: &str, uid: &str, node: &str, ts: i64) -> Ev {
    let mut e = Ev::new(
        audit_id,
        "create",
        json!({"resource": "pods", "namespace": ns, "name": name, "subresource": "binding",
               "apiVersion": "v1"}),
        ts,
    );
    e.code = Some(201);
    e.request = Some(json!({"kind": "Binding", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "target": {"kind": "Node", "name": node}}));
    e
}

fn delete(audit_id: &str, ns: &str, name: &str, ts: i64) -> Ev {
    Ev::new(
        audit_id,
        "delete",
        json!({"resource": "pods", "namespace": ns, "name": name, "apiVersion": "v1"}),
        ts,
    )
}

/// A Pod object.
fn pod(ns: &str, name: &str, uid: &str, containers: Value) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {}},
        "spec": {"containers": containers, "serviceAccountName": "default"}})
}

fn gpu_container(image: &str, gpus: &str) -> Value {
    json!({"name": "main", "image": image,
           "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"cpu": "2"}}})
}

fn with(mut pod: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    pod.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent object")
        .insert(key.to_string(), value);
    pod
}

fn inventory() -> Inventory {
    Inventory::new(InventoryConfig::default())
}

/// Applies one create and returns the pod's role and reason.
fn role_after_create(inv: &mut Inventory, pod: &Value) -> (Role, String) {
    let id = format!("audit-{}", pod["metadata"]["uid"]);
    inv.apply_audit(&batch(&[create(&id, pod, T0)]));
    let uid = pod["metadata"]["uid"].as_str();
    let found = inv.lookup(uid, None, None);
    assert!(found.is_some(), "pod {uid:?} not in the inventory");
    inv.role_of(found)
}

// --- real captures -------------------------------------------------------------------------

#[test]
fn privileged_pod_create_is_named_from_the_response_object() {
    let mut inv = inventory();
    inv.apply_audit(&fixture("falco-trace-create_nginx_pod_privileged.jsonl"));
    assert_eq!(inv.len(), 1);
    let p = inv
        .lookup(
            None,
            Some("default"),
            Some("nginx-deployment-5cdcc99dbf-rgw6z"),
        )
        .expect("named from responseObject.metadata.name");
    assert_eq!(p.uid, "8c845395-d85f-11e8-88b6-080027728ac4");
    assert_eq!(p.namespace, "default");
    assert_eq!(p.containers.len(), 1);
    assert_eq!(p.containers[0].image, "nginx");
    assert!(p.containers[0].privileged);
    assert_eq!(p.gpu_request(), 0);
    assert_eq!(p.service_account.as_deref(), Some("default"));
    assert!(!p.host_path && !p.host_network && !p.host_pid);
    let owners: Vec<(&str, &str)> = p
        .owners
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(
        owners,
        [
            ("ReplicaSet", "nginx-deployment-5cdcc99dbf"),
            ("Deployment", "nginx-deployment")
        ]
    );
    // stageTimestamp 2018-10-25T14:09:12.581541Z.
    assert_eq!(p.created_at, 1_540_476_552_581_541_000);
    assert_eq!(p.deleted_at, None);
    assert_eq!(
        inv.role_of(Some(p)),
        (
            Role::NonGpu,
            "requests no nvidia.com/gpu; privileged".to_string()
        )
    );
    // The same pod by uid.
    assert_eq!(
        inv.lookup(Some("8c845395-d85f-11e8-88b6-080027728ac4"), None, None)
            .map(|p| p.name.as_str()),
        Some("nginx-deployment-5cdcc99dbf-rgw6z")
    );
}

#[test]
fn host_network_and_sensitive_mount_creates_are_flagged() {
    let mut inv = inventory();
    inv.apply_audit(&fixture("falco-trace-create_nginx_pod_hostnetwork.jsonl"));
    inv.apply_audit(&fixture(
        "falco-trace-create_nginx_pod_sensitive_mount.jsonl",
    ));
    assert_eq!(inv.len(), 2);
    let host_network: Vec<&PodInfo> = inv.pods().filter(|p| p.host_network).collect();
    let host_path: Vec<&PodInfo> = inv.pods().filter(|p| p.host_path).collect();
    assert_eq!(host_network.len(), 1);
    assert_eq!(host_path.len(), 1);
    assert_ne!(host_network[0].uid, host_path[0].uid);
    for p in inv.pods() {
        assert!(!p.name.is_empty() && !p.uid.is_empty(), "{p:?}");
        assert!(p.name.starts_with("nginx-deployment-"), "{}", p.name);
        assert_eq!(inv.role_of(Some(p)).0, Role::NonGpu);
    }
}

#[test]
fn exec_attach_and_non_pod_events_change_nothing() {
    let mut inv = inventory();
    for f in [
        "falco-trace-exec_pod.jsonl",
        "falco-trace-attach_pod.jsonl",
        "falco-trace-create_configmap_sensitive_values.jsonl",
        "falco-trace-create_clusterrolebinding.jsonl",
        "falco-trace-create_secret.jsonl",
        "elastic-audit-mixed-wrappers.jsonl",
        "elastic-aks-kube-audit-wrapped.jsonl",
    ] {
        inv.apply_audit(&fixture(f));
    }
    assert!(inv.is_empty(), "{:?}", inv.pods().collect::<Vec<_>>());
}

#[test]
fn a_metadata_level_create_after_a_delete_holds_no_pod_and_no_stale_delete() {
    // kodekloud capture: delete pods citadel/webapp-color (200), get (404), create again at
    // Metadata level (no objects). Nothing about the spec is known, so nothing is held.
    let mut inv = inventory();
    inv.apply_audit(&fixture("kodekloud-cks4-impersonation-audit.jsonl"));
    assert!(inv.is_empty());
    assert_eq!(
        inv.role_of(inv.lookup(None, Some("citadel"), Some("webapp-color")))
            .0,
        Role::Unknown
    );

    // The new pod's full create arriving later is not taken for deleted by the old delete.
    let p = pod(
        "citadel",
        "webapp-color",
        "new-uid",
        json!([{"name": "web", "image": "kodekloud/webapp-color"}]),
    );
    inv.apply_audit(&batch(&[create("later", &p, T0)]));
    let held = inv
        .lookup(None, Some("citadel"), Some("webapp-color"))
        .expect("held");
    assert_eq!(held.deleted_at, None);
}

// --- roles of GPU pods ---------------------------------------------------------------------

#[test]
fn vllm_deployment_is_serving_by_image() {
    let mut inv = inventory();
    let p = pod(
        "llm",
        "vllm-7d9f8-abcde",
        "u-vllm",
        json!([gpu_container("vllm/vllm-openai:v0.6.3", "1")]),
    );
    let p = with(
        p,
        "/metadata/ownerReferences",
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "vllm-7d9f8",
                "controller": true}]),
    );
    let (role, reason) = role_after_create(&mut inv, &p);
    assert_eq!(role, Role::Serving);
    assert_eq!(
        reason,
        "image vllm/vllm-openai:v0.6.3 matches serving (vLLM)"
    );
    assert_eq!(
        inv.lookup(Some("u-vllm"), None, None)
            .map(PodInfo::gpu_request),
        Some(1)
    );
}

#[test]
fn kserve_predictor_is_serving_by_label() {
    let mut inv = inventory();
    let p = pod(
        "models",
        "llama-predictor-00001-deployment-5f7c-x",
        "u-kserve",
        json!([gpu_container("kserve/huggingfaceserver:v0.14.0", "1")]),
    );
    let p = with(
        p,
        "/metadata/labels",
        json!({"serving.kserve.io/inferenceservice": "llama", "component": "predictor"}),
    );
    assert_eq!(
        role_after_create(&mut inv, &p),
        (
            Role::Serving,
            "label serving.kserve.io/inferenceservice=llama (KServe)".into()
        )
    );
}

#[test]
fn pytorchjob_worker_is_training_even_with_a_serving_image() {
    let mut inv = inventory();
    let owner = json!([{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "bert-ft",
                        "controller": true}]);
    let worker = with(
        with(
            pod(
                "research",
                "bert-ft-worker-0",
                "u-ptj",
                json!([gpu_container(
                    "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
                    "8"
                )]),
            ),
            "/metadata/ownerReferences",
            owner.clone(),
        ),
        "/metadata/labels",
        json!({"training.kubeflow.org/job-name": "bert-ft",
               "training.kubeflow.org/replica-type": "worker"}),
    );
    assert_eq!(
        role_after_create(&mut inv, &worker),
        (Role::Training, "owner PyTorchJob bert-ft".into())
    );
    // RL rollouts run vLLM inside training jobs: the owner says what the pod is for.
    let rollout = with(
        pod(
            "research",
            "rl-worker-1",
            "u-rl",
            json!([gpu_container("vllm/vllm-openai:v0.6.3", "1")]),
        ),
        "/metadata/ownerReferences",
        owner,
    );
    assert_eq!(role_after_create(&mut inv, &rollout).0, Role::Training);
    // A CRD of another group with the same kind name is not Kubeflow's.
    let fake = with(
        pod(
            "research",
            "impostor",
            "u-imp",
            json!([gpu_container("busybox", "1")]),
        ),
        "/metadata/ownerReferences",
        json!([{"apiVersion": "example.com/v1", "kind": "PyTorchJob", "name": "x"}]),
    );
    assert_eq!(role_after_create(&mut inv, &fake).0, Role::Unknown);
}

#[test]
fn jupyter_notebooks_are_notebooks_by_label_or_image() {
    let mut inv = inventory();
    let kubeflow = with(
        with(
            pod(
                "alice",
                "alice-nb-0",
                "u-nb",
                json!([gpu_container(
                    "kubeflownotebookswg/jupyter-pytorch-cuda-full:v1.9.0",
                    "1"
                )]),
            ),
            "/metadata/labels",
            json!({"notebook-name": "alice-nb", "statefulset": "alice-nb"}),
        ),
        "/metadata/ownerReferences",
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "alice-nb"}]),
    );
    assert_eq!(
        role_after_create(&mut inv, &kubeflow),
        (
            Role::Notebook,
            "label notebook-name=alice-nb (Kubeflow Notebooks)".into()
        )
    );
    let plain = pod(
        "bob",
        "jupyter-bob",
        "u-jb",
        json!([gpu_container(
            "quay.io/jupyter/pytorch-notebook:cuda12-2024-05-01",
            "1"
        )]),
    );
    assert_eq!(
        role_after_create(&mut inv, &plain),
        (
            Role::Notebook,
            "image quay.io/jupyter/pytorch-notebook:cuda12-2024-05-01 matches notebook (Jupyter)"
                .into()
        )
    );
}

#[test]
fn nvidia_visible_devices_all_without_a_gpu_request_is_non_gpu() {
    let mut inv = inventory();
    let p = pod(
        "shop",
        "web-backend",
        "u-web",
        json!([{"name": "app", "image": "acme/web-backend:1.2",
                "env": [{"name": "PORT", "value": "8080"},
                        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}]),
    );
    let (role, reason) = role_after_create(&mut inv, &p);
    assert_eq!(role, Role::NonGpu);
    assert_eq!(
        reason,
        "requests no nvidia.com/gpu but sets NVIDIA_VISIBLE_DEVICES=all"
    );
    let held = inv.lookup(Some("u-web"), None, None).expect("held");
    assert_eq!(
        held.containers[0].nvidia_visible_devices.as_deref(),
        Some("all")
    );
    assert_eq!(held.gpu_request(), 0);
}

#[test]
fn gpu_jobs_are_batch_and_gpu_less_jobs_are_non_gpu() {
    let mut inv = inventory();
    let job = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "embed-corpus",
                      "controller": true}]);
    let gpu = with(
        pod(
            "batch",
            "embed-corpus-x1",
            "u-job",
            json!([gpu_container("acme/embedder:3", "2")]),
        ),
        "/metadata/ownerReferences",
        job.clone(),
    );
    assert_eq!(
        role_after_create(&mut inv, &gpu),
        (
            Role::Batch,
            "owner Job embed-corpus with 2 GPU(s) requested".into()
        )
    );
    let cpu = with(
        pod(
            "batch",
            "report-x2",
            "u-cpu",
            json!([{"name": "r", "image": "acme/report:1"}]),
        ),
        "/metadata/ownerReferences",
        job,
    );
    assert_eq!(
        role_after_create(&mut inv, &cpu),
        (Role::NonGpu, "requests no nvidia.com/gpu".into())
    );
}

#[test]
fn mig_and_dra_pods_are_not_taken_for_gpu_less_and_unmatched_gpu_pods_are_unknown() {
    let mut inv = inventory();
    let mig = pod(
        "team",
        "mig-user",
        "u-mig",
        json!([{"name": "m", "image": "acme/app",
                "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}]),
    );
    assert_eq!(
        role_after_create(&mut inv, &mig),
        (
            Role::Unknown,
            "requests 1 GPU(s); no role matcher applies".into()
        )
    );
    let dra = with(
        pod(
            "team",
            "dra-user",
            "u-dra",
            json!([{"name": "m", "image": "acme/app"}]),
        ),
        "/spec/resourceClaims",
        json!([{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}]),
    );
    let (role, reason) = role_after_create(&mut inv, &dra);
    assert_eq!(role, Role::Unknown);
    assert!(reason.contains("resource claims"), "{reason}");
    // "serve" in an image name is not a serving convention.
    let server = pod(
        "team",
        "model-server",
        "u-ms",
        json!([gpu_container("acme/model-server:2", "1")]),
    );
    assert_eq!(role_after_create(&mut inv, &server).0, Role::Unknown);
    assert_eq!(
        inv.role_of(None),
        (Role::Unknown, "no facts about the pod".into())
    );
}

#[test]
fn config_matchers_come_first_and_name_themselves() {
    let mut config = InventoryConfig {
        serving_labels: BTreeMap::from([(
            "app.kubernetes.io/component".to_string(),
            "predictor".to_string(),
        )]),
        ..InventoryConfig::default()
    };
    config.serving_images = vec!["registry.corp/ml/".into()];
    config.training_images = vec!["vllm/vllm-openai".into()];
    let mut inv = Inventory::new(config);

    let by_label = with(
        pod("a", "p1", "u1", json!([gpu_container("acme/app:1", "1")])),
        "/metadata/labels",
        json!({"app.kubernetes.io/component": "predictor"}),
    );
    assert_eq!(
        role_after_create(&mut inv, &by_label),
        (
            Role::Serving,
            "label app.kubernetes.io/component=predictor (config)".into()
        )
    );
    let by_image = pod(
        "a",
        "p2",
        "u2",
        json!([gpu_container("registry.corp/ml/llm-gateway:4", "1")]),
    );
    assert_eq!(
        role_after_create(&mut inv, &by_image),
        (
            Role::Serving,
            "image registry.corp/ml/llm-gateway:4 matches serving prefix registry.corp/ml/ (config)"
                .into()
        )
    );
    // The config beats the built-in vLLM convention.
    let vllm = pod(
        "a",
        "p3",
        "u3",
        json!([gpu_container("docker.io/vllm/vllm-openai:v0.6.3", "1")]),
    );
    assert_eq!(role_after_create(&mut inv, &vllm).0, Role::Training);
    // A look-alike organisation does not match a prefix.
    let lookalike = pod(
        "a",
        "p4",
        "u4",
        json!([gpu_container("registry.corp/ml-evil/miner:1", "1")]),
    );
    assert_eq!(role_after_create(&mut inv, &lookalike).0, Role::Unknown);
}

#[test]
fn config_validation_reports_every_problem_with_its_path() {
    let config = InventoryConfig {
        serving_images: vec!["ok/image".into(), " ".into()],
        batch_images: vec!["two words".into()],
        notebook_labels: BTreeMap::from([(String::new(), "x".into())]),
        max_pods: Some(0),
        ..InventoryConfig::default()
    };
    let paths: Vec<String> = config
        .validate()
        .into_iter()
        .map(|e| match e {
            Error::Config { path, .. } => path,
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "inventory.serving_images[1]",
            "inventory.batch_images[0]",
            "inventory.notebook_labels",
            "inventory.max_pods"
        ]
    );
    assert!(InventoryConfig::default().validate().is_empty());
    let parsed: Result<InventoryConfig, _> = serde_json::from_value(json!({"serving_image": []}));
    assert!(parsed.is_err(), "unknown fields are refused");
}

// --- audit semantics -----------------------------------------------------------------------

#[test]
fn binding_sets_the_node_even_when_it_arrives_before_the_create() {
    let mut inv = inventory();
    let p = pod(
        "ml",
        "trainer-0",
        "u-b",
        json!([gpu_container("acme/train", "1")]),
    );
    inv.apply_audit(&batch(&[create("c1", &p, T0)]));
    assert_eq!(
        inv.lookup(Some("u-b"), None, None)
            .and_then(|p| p.node.clone()),
        None
    );
    inv.apply_audit(&batch(&[binding(
        "b1",
        "ml",
        "trainer-0",
        "u-b",
        "gpu-node-7",
        T0 + SEC,
    )]));
    let held = inv.lookup(Some("u-b"), None, None).expect("held");
    assert_eq!(held.node.as_deref(), Some("gpu-node-7"));

    // Two API servers, two webhook batches: the binding's batch first.
    let q = pod(
        "ml",
        "trainer-1",
        "u-q",
        json!([gpu_container("acme/train", "1")]),
    );
    inv.apply_audit(&batch(&[binding(
        "b2",
        "ml",
        "trainer-1",
        "u-q",
        "gpu-node-8",
        T0 + 2 * SEC,
    )]));
    assert!(
        inv.lookup(Some("u-q"), None, None).is_none(),
        "a binding alone holds no pod"
    );
    inv.apply_audit(&batch(&[create("c2", &q, T0 + SEC)]));
    let held = inv.lookup(Some("u-q"), None, None).expect("held");
    assert_eq!(held.node.as_deref(), Some("gpu-node-8"));
}

#[test]
fn only_successful_requests_count_and_each_once() {
    let mut inv = inventory();
    let p = pod("ns", "p", "u-p", json!([gpu_container("acme/app", "1")]));
    // RequestReceived (no status) and a refused create change nothing.
    let mut received = create("r1", &p, T0);
    received.stage = "RequestReceived";
    received.code = None;
    received.response = None;
    let mut forbidden = create("r2", &p, T0);
    forbidden.code = Some(403);
    forbidden.response = Some(
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "Forbidden", "code": 403}),
    );
    inv.apply_audit(&batch(&[received, forbidden]));
    assert!(inv.is_empty());

    // A status-less ResponseComplete (some backends omit responseStatus) counts.
    let mut complete = create("r3", &p, T0);
    complete.code = None;
    inv.apply_audit(&batch(&[complete]));
    assert_eq!(inv.len(), 1);

    // Deleted, evicted after the grace period; a redelivery of the create changes nothing.
    inv.apply_audit(&batch(&[delete("d1", "ns", "p", T0 + SEC)]));
    inv.evict(T0 + SEC + 601 * SEC);
    assert!(inv.is_empty());
    let mut again = create("r3", &p, T0);
    again.code = None;
    inv.apply_audit(&batch(&[again]));
    assert!(inv.is_empty(), "the same request was applied twice");

    // A client-chosen Audit-ID reused for another pod does not hide that pod.
    let other = pod(
        "ns",
        "other",
        "u-o",
        json!([gpu_container("acme/app", "1")]),
    );
    let mut spoofed = create("r3", &other, T0 + 5 * SEC);
    spoofed.code = None;
    inv.apply_audit(&batch(&[spoofed]));
    assert!(inv.lookup(Some("u-o"), None, None).is_some());
}

#[test]
fn deleted_pods_stay_for_the_grace_period_of_event_time() {
    let mut inv = Inventory::new(InventoryConfig {
        deleted_grace_secs: Some(60),
        ..InventoryConfig::default()
    });
    let p = pod("ns", "gone", "u-g", json!([gpu_container("acme/app", "1")]));
    inv.apply_audit(&batch(&[
        create("c", &p, T0),
        delete("d", "ns", "gone", T0 + 10 * SEC),
    ]));
    let held = inv.lookup(None, Some("ns"), Some("gone")).expect("held");
    assert_eq!(held.deleted_at, Some(T0 + 10 * SEC));
    assert_eq!(held.created_at, T0);
    // A second (final) delete does not move the deletion time.
    inv.apply_audit(&batch(&[delete("d2", "ns", "gone", T0 + 40 * SEC)]));
    inv.evict(T0 + 70 * SEC);
    assert_eq!(
        inv.lookup(Some("u-g"), None, None)
            .and_then(|p| p.deleted_at),
        Some(T0 + 10 * SEC)
    );
    inv.evict(T0 + 71 * SEC);
    assert!(inv.lookup(Some("u-g"), Some("ns"), Some("gone")).is_none());
    assert!(inv.is_empty());
}

#[test]
fn update_patch_refresh_facts_and_eviction_deletes() {
    let mut inv = inventory();
    let p = pod("ns", "p", "u-p", json!([gpu_container("acme/app", "1")]));
    inv.apply_audit(&batch(&[create("c", &p, T0)]));
    let patched = with(
        with(p.clone(), "/metadata/labels", json!({"notebook-name": "x"})),
        "/spec/nodeName",
        json!("gpu-node-2"),
    );
    let mut patch = Ev::new(
        "pa",
        "patch",
        json!({"resource": "pods", "namespace": "ns", "name": "p", "apiVersion": "v1"}),
        T0 + SEC,
    );
    // The request of a patch is the patch, not a pod.
    patch.request =
        Some(json!([{"op": "add", "path": "/metadata/labels/notebook-name", "value": "x"}]));
    patch.response = Some(patched);
    inv.apply_audit(&batch(&[patch]));
    let held = inv.lookup(Some("u-p"), None, None).expect("held");
    assert_eq!(
        held.labels.get("notebook-name").map(String::as_str),
        Some("x")
    );
    assert_eq!(held.node.as_deref(), Some("gpu-node-2"));
    assert_eq!(held.created_at, T0, "first-seen time survives a refresh");
    assert_eq!(inv.role_of(Some(held)).0, Role::Notebook);

    let mut evict = Ev::new(
        "ev",
        "create",
        json!({"resource": "pods", "namespace": "ns", "name": "p", "subresource": "eviction",
               "apiVersion": "v1"}),
        T0 + 2 * SEC,
    );
    evict.code = Some(201);
    inv.apply_audit(&batch(&[evict]));
    assert_eq!(
        inv.lookup(Some("u-p"), None, None)
            .and_then(|p| p.deleted_at),
        Some(T0 + 2 * SEC)
    );
}

#[test]
fn a_recreated_name_is_a_new_pod_and_lookups_do_not_mix_incarnations() {
    let mut inv = inventory();
    let old = pod(
        "db",
        "shard-0",
        "u-old",
        json!([gpu_container("acme/db", "1")]),
    );
    let new = pod(
        "db",
        "shard-0",
        "u-new",
        json!([{"name": "db", "image": "acme/db"}]),
    );
    inv.apply_audit(&batch(&[create("c1", &old, T0)]));
    inv.apply_audit(&batch(&[create("c2", &new, T0 + 30 * SEC)]));
    assert_eq!(inv.len(), 2);
    let by_name = inv
        .lookup(None, Some("db"), Some("shard-0"))
        .expect("by name");
    assert_eq!(by_name.uid, "u-new");
    let old_held = inv.lookup(Some("u-old"), None, None).expect("old by uid");
    assert_eq!(
        old_held.deleted_at,
        Some(T0 + 30 * SEC),
        "the old incarnation is gone"
    );
    // An unknown uid does not fall back to a pod of that name with another uid.
    assert!(
        inv.lookup(Some("u-other"), Some("db"), Some("shard-0"))
            .is_none()
    );
    // An unknown uid with a name held without uid does.
    let mut nameless = inventory();
    nameless.upsert(PodInfo {
        namespace: "db".into(),
        name: "x".into(),
        containers: vec![ContainerInfo::default()],
        ..PodInfo::default()
    });
    assert!(
        nameless
            .lookup(Some("u-any"), Some("db"), Some("x"))
            .is_some()
    );
}

#[test]
fn max_pods_drops_the_oldest_deleted_then_the_oldest() {
    let mut inv = Inventory::new(InventoryConfig {
        max_pods: Some(3),
        ..InventoryConfig::default()
    });
    let mk = |i: i64| {
        json!({"metadata": {"name": format!("p{i}"), "namespace": "ns", "uid": format!("u{i}")},
               "spec": {"containers": [{"name": "c", "image": "i"}]}})
    };
    for i in 0..3 {
        inv.apply_pod_json(&mk(i), T0 + i * SEC);
    }
    inv.mark_deleted(Some("u1"), "ns", "p1", T0 + 10 * SEC);
    inv.apply_pod_json(&mk(3), T0 + 11 * SEC);
    assert_eq!(inv.len(), 3);
    assert!(
        inv.lookup(Some("u1"), None, None).is_none(),
        "the deleted pod goes first"
    );
    inv.apply_pod_json(&mk(4), T0 + 12 * SEC);
    assert_eq!(inv.len(), 3);
    assert!(
        inv.lookup(Some("u0"), None, None).is_none(),
        "then the oldest"
    );
    for i in [2, 3, 4] {
        assert!(
            inv.lookup(Some(&format!("u{i}")), None, None).is_some(),
            "u{i}"
        );
    }
}

#[test]
fn kubernetes_source_events_insert_refresh_and_delete() {
    let mut inv = inventory();
    let p = with(
        pod(
            "ml",
            "serve-0",
            "u-k",
            json!([gpu_container("nvcr.io/nvidia/tritonserver:24.05-py3", "1")]),
        ),
        "/spec/nodeName",
        json!("gpu-node-3"),
    );
    inv.apply_pod_event(&PodEvent {
        kind: PodEventKind::Added,
        pod: p,
        observed_at: T0,
    });
    let held = inv.lookup(Some("u-k"), None, None).expect("held");
    assert_eq!(held.node.as_deref(), Some("gpu-node-3"));
    assert_eq!(
        inv.role_of(Some(held)),
        (
            Role::Serving,
            "image nvcr.io/nvidia/tritonserver:24.05-py3 matches serving (Triton Inference Server)"
                .into()
        )
    );
    // A relist tombstone: metadata only. Facts are kept, the pod is marked deleted.
    inv.apply_pod_event(&PodEvent {
        kind: PodEventKind::Deleted,
        pod: json!({"metadata": {"uid": "u-k", "namespace": "ml", "name": "serve-0",
                                 "resourceVersion": "9"}}),
        observed_at: T0 + SEC,
    });
    let held = inv.lookup(Some("u-k"), None, None).expect("held");
    assert_eq!(held.deleted_at, Some(T0 + SEC));
    assert_eq!(held.containers.len(), 1);
    // A tombstone of an unknown pod creates nothing.
    inv.apply_pod_event(&PodEvent {
        kind: PodEventKind::Deleted,
        pod: json!({"metadata": {"uid": "u-z", "namespace": "ml", "name": "z"}}),
        observed_at: T0 + SEC,
    });
    assert_eq!(inv.len(), 1);
}
