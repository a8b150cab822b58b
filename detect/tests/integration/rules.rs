//! Rules and correlation, end to end through the engine: the SigmaHQ Kubernetes rules load
//! unchanged and fire on events built from the real audit captures; the compromised-container
//! incident fires exactly once, in order, within its window, and not otherwise.

use std::path::PathBuf;

use gpusiem_detect::rules::{RuleEngine, RuleSet, RulesConfig, load_dir, sigma};
use gpusiem_detect::{Engine, EngineConfig, Finding, Severity};
use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn audit_fixture(name: &str) -> Value {
    let text =
        std::fs::read_to_string(fixtures().join("real/k8s-audit").join(name)).expect("fixture");
    serde_json::from_str(text.lines().next().expect("a line")).expect("json")
}

fn engine(set: RuleSet) -> Engine {
    let mut e = Engine::new(EngineConfig::default()).expect("engine");
    e.set_rules(RuleEngine::new(set, &RulesConfig::default()));
    e
}

fn feed(e: &mut Engine, stream: Stream, event: &Value) -> Vec<Finding> {
    let d = decode::decode(stream, event.to_string().as_bytes(), &DecodeContext::new(0))
        .expect("decode");
    assert!(d.quarantined.is_empty(), "{:?}", d.quarantined);
    let mut out = Vec::new();
    e.observe(stream, &d.batch, &mut out);
    out
}

fn set_path(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        if cur.get(*p).is_none() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = new;
}

#[test]
fn sigmahq_kubernetes_rules_load_unchanged_and_fire() {
    let rules = load_dir(&fixtures().join("sigma/kubernetes")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(rules.len(), 16);
    let set = RuleSet::new(rules).unwrap_or_else(|e| panic!("{e:?}"));

    let exec = audit_fixture("falco-trace-exec_pod.jsonl");
    let lease = audit_fixture("elastic-aks-kube-audit-wrapped.jsonl");
    let lease = serde_json::from_str::<Value>(lease["properties"]["log"].as_str().expect("log"))
        .expect("inner event");
    let secret = audit_fixture("falco-trace-create_secret.jsonl");
    let crb = audit_fixture("falco-trace-create_clusterrolebinding.jsonl");
    let mount = audit_fixture("falco-trace-create_nginx_pod_sensitive_mount.jsonl");
    let privileged = audit_fixture("falco-trace-create_nginx_pod_privileged.jsonl");

    let edit = |base: &Value, edits: &[(&str, Value)]| {
        let mut v = base.clone();
        for (p, x) in edits {
            set_path(&mut v, p, x.clone());
        }
        v
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "kubernetes_audit_change_admission_controller",
            edit(
                &lease,
                &[
                    ("objectRef/apiGroup", json!("admissionregistration.k8s.io")),
                    (
                        "objectRef/resource",
                        json!("validatingwebhookconfigurations"),
                    ),
                    ("verb", json!("patch")),
                ],
            ),
        ),
        (
            "kubernetes_audit_cronjob_modification",
            edit(
                &lease,
                &[
                    ("objectRef/apiGroup", json!("batch")),
                    ("objectRef/resource", json!("cronjobs")),
                    ("verb", json!("create")),
                ],
            ),
        ),
        (
            "kubernetes_audit_deployment_deleted",
            edit(
                &lease,
                &[
                    ("objectRef/apiGroup", json!("apps")),
                    ("objectRef/resource", json!("deployments")),
                    ("verb", json!("delete")),
                ],
            ),
        ),
        (
            "kubernetes_audit_events_deleted",
            edit(
                &lease,
                &[
                    ("objectRef/apiGroup", json!("")),
                    ("objectRef/resource", json!("events")),
                    ("verb", json!("delete")),
                ],
            ),
        ),
        ("kubernetes_audit_exec_into_container", exec.clone()),
        ("kubernetes_audit_hostpath_mount", mount.clone()),
        (
            "kubernetes_audit_pod_in_system_namespace",
            edit(
                &privileged,
                &[("objectRef/namespace", json!("kube-system"))],
            ),
        ),
        (
            "kubernetes_audit_potential_enumeration_activity",
            edit(&lease, &[("userAgent", json!("trufflehog/3.63"))]),
        ),
        (
            "kubernetes_audit_privileged_pod_creation",
            edit(
                &mount,
                &[(
                    "requestObject/spec/containers",
                    json!([{"name": "c", "image": "x", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]),
                )],
            ),
        ),
        (
            "kubernetes_audit_rbac_permisions_listing",
            edit(
                &lease,
                &[
                    ("objectRef/apiGroup", json!("authorization.k8s.io")),
                    ("objectRef/resource", json!("selfsubjectrulesreviews")),
                    ("verb", json!("create")),
                ],
            ),
        ),
        ("kubernetes_audit_rolebinding_modification", crb.clone()),
        (
            "kubernetes_audit_secrets_enumeration",
            edit(&secret, &[("verb", json!("list"))]),
        ),
        (
            "kubernetes_audit_secrets_modified_or_deleted",
            secret.clone(),
        ),
        (
            "kubernetes_audit_serviceaccount_creation",
            edit(&secret, &[("objectRef/resource", json!("serviceaccounts"))]),
        ),
        (
            "kubernetes_audit_sidecar_injection",
            edit(
                &lease,
                &[
                    ("objectRef/apiGroup", json!("apps")),
                    ("objectRef/resource", json!("deployments")),
                    ("verb", json!("patch")),
                ],
            ),
        ),
        (
            "kubernetes_audit_unauthorized_unauthenticated_actions",
            edit(&lease, &[("responseStatus/code", json!(403))]),
        ),
    ];
    let names: Vec<&str> = set.rules().iter().map(|r| r.name.as_str()).collect();
    for (rule, _) in &cases {
        assert!(names.contains(rule), "{rule} not loaded");
    }
    for (rule, event) in &cases {
        let mut e = engine(set.clone());
        let findings = feed(&mut e, Stream::K8sAudit, event);
        let fired: Vec<&str> = findings.iter().map(|f| f.detector.as_str()).collect();
        assert!(fired.contains(rule), "{rule} did not fire; fired {fired:?}");
    }
    // The lease update the real AKS capture holds is routine: none of them fire on it.
    let mut e = engine(set);
    assert_eq!(feed(&mut e, Stream::K8sAudit, &lease), vec![]);
}

const T0: &str = "2025-06-01T10:00:00Z";

fn at(secs: i64) -> String {
    let base = gpusiem_ingest::time::parse_rfc3339_nanos(T0).expect("t0");
    gpusiem_ingest::time::format_rfc3339_nanos(base + secs * 1_000_000_000)
}

fn exec(id: &str, ns: &str, pod: &str, t: i64) -> (Stream, Value) {
    (
        Stream::K8sAudit,
        json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": id, "stage": "ResponseStarted", "verb": "get",
            "user": {"username": "stolen"}, "objectRef": {"resource": "pods", "namespace": ns, "name": pod, "subresource": "exec"},
            "responseStatus": {"code": 101}, "stageTimestamp": at(t)}),
    )
}

fn falco(uuid: &str, rule: &str, ns: &str, pod: &str, t: i64, fields: Value) -> (Stream, Value) {
    let mut of = json!({"k8s.ns.name": ns, "k8s.pod.name": pod});
    if let (Some(o), Some(extra)) = (of.as_object_mut(), fields.as_object()) {
        o.extend(extra.clone());
    }
    (
        Stream::FalcoEvents,
        json!({"uuid": uuid, "rule": rule, "priority": "Critical", "time": at(t), "output_fields": of}),
    )
}

fn shell(uuid: &str, ns: &str, pod: &str, t: i64) -> (Stream, Value) {
    falco(
        uuid,
        "Terminal shell in container",
        ns,
        pod,
        t,
        json!({"evt.type": "execve", "proc.name": "sh"}),
    )
}

fn gpu_open(uuid: &str, ns: &str, pod: &str, t: i64) -> (Stream, Value) {
    falco(
        uuid,
        "Container Accessing GPU Device",
        ns,
        pod,
        t,
        json!({"fd.name": "/dev/nvidiactl", "proc.name": "kworkerds"}),
    )
}

fn pool(uuid: &str, ns: &str, pod: &str, t: i64) -> (Stream, Value) {
    falco(
        uuid,
        "Unexpected outbound connection",
        ns,
        pod,
        t,
        json!({"evt.type": "connect", "fd.rport": 3333, "fd.name": "10.0.0.5:4000->198.51.100.7:3333"}),
    )
}

fn spike(ns: &str, pod: &str, t: i64) -> Finding {
    Finding {
        id: format!("{:032x}", t),
        ts: gpusiem_ingest::time::parse_rfc3339_nanos(&at(t)).expect("ts"),
        last_ts: gpusiem_ingest::time::parse_rfc3339_nanos(&at(t)).expect("ts"),
        detector: "gpu_memory_spike".into(),
        severity: Severity::High,
        status: gpusiem_detect::Status::Firing,
        revision: 0,
        summary: "spike".into(),
        cluster: None,
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        pod_uid: None,
        container: None,
        node: None,
        gpu_uuid: Some("GPU-716284d3-73df-565d-3003-77fb02fe2d00".into()),
        role: gpusiem_detect::Role::Unknown,
        role_reason: String::new(),
        mitre: vec!["T1496".into()],
        evidence: json!({}),
        event_ids: vec![],
    }
}

enum Step {
    Event((Stream, Value)),
    Finding(Box<Finding>),
}

fn run(steps: Vec<Step>) -> Vec<Finding> {
    let mut e = engine(RuleSet::builtin().expect("pack"));
    let mut out = Vec::new();
    for s in steps {
        match s {
            Step::Event((stream, v)) => out.extend(feed(&mut e, stream, &v)),
            Step::Finding(f) => e.inject_findings(&[*f], &mut out),
        }
    }
    out
}

fn incidents(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.detector == "compromised_gpu_container")
        .collect()
}

fn full_chain(ns: &str, pod: &str, offset: i64) -> Vec<Step> {
    vec![
        Step::Event(exec("c1", ns, pod, offset)),
        Step::Event(shell("f-shell", ns, pod, offset + 10)),
        Step::Event(gpu_open("f-gpu", ns, pod, offset + 20)),
        Step::Finding(Box::new(spike(ns, pod, offset + 30))),
        Step::Event(pool("f-pool", ns, pod, offset + 40)),
    ]
}

#[test]
fn the_incident_fires_once_in_order_with_every_contributing_id() {
    let out = run(full_chain("ml", "infer-0", 0));
    let inc = incidents(&out);
    let ids: std::collections::BTreeSet<&str> = inc.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one episode: {inc:#?}");
    // Raised at two steps, then updated as steps arrive, ending critical with the full chain.
    assert_eq!(
        inc.first().map(|f| (f.severity, f.revision)),
        Some((Severity::High, 0))
    );
    let last = inc.last().expect("incident");
    assert_eq!(last.severity, Severity::Critical);
    assert_eq!(last.revision as usize, inc.len() - 1);
    assert_eq!(last.mitre, ["T1609", "T1496"]);
    assert_eq!(
        (last.namespace.as_deref(), last.pod.as_deref()),
        (Some("ml"), Some("infer-0"))
    );
    assert_eq!(
        last.event_ids,
        [
            "k8s_audit:c1/ResponseStarted".to_string(),
            "falco_events:f-shell".into(),
            "falco_events:f-gpu".into(),
            format!("finding:{:032x}", 30),
            "falco_events:f-pool".into(),
        ]
    );
    let steps: Vec<&str> = last.evidence["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["rule"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        steps,
        [
            "exec_into_pod",
            "shell_or_new_process_in_container",
            "gpu_device_opened",
            "gpu_misuse_finding",
            "miner_pool_connection"
        ]
    );
}

#[test]
fn steps_on_different_pods_do_not_correlate() {
    let out = run(vec![
        Step::Event(exec("c1", "ml", "a", 0)),
        Step::Event(shell("s1", "ml", "b", 10)),
        Step::Event(gpu_open("g1", "ml", "c", 20)),
        Step::Finding(Box::new(spike("ml", "d", 30))),
        Step::Event(pool("p1", "other", "a", 40)),
    ]);
    assert_eq!(incidents(&out).len(), 0);
}

#[test]
fn steps_outside_the_window_do_not_correlate() {
    let out = run(vec![
        Step::Event(exec("c1", "ml", "a", 0)),
        Step::Event(shell("s1", "ml", "a", 31 * 60)),
    ]);
    assert_eq!(incidents(&out).len(), 0);
    let out = run(vec![
        Step::Event(exec("c1", "ml", "a", 0)),
        Step::Event(shell("s1", "ml", "a", 29 * 60)),
    ]);
    assert_eq!(incidents(&out).len(), 1);
}

#[test]
fn steps_in_the_wrong_order_do_not_correlate() {
    // The shell came before the exec: not the ordered chain.
    let out = run(vec![
        Step::Event(shell("s1", "ml", "a", 0)),
        Step::Event(exec("c1", "ml", "a", 10)),
    ]);
    assert_eq!(incidents(&out).len(), 0);
}

#[test]
fn late_events_beyond_the_allowed_lateness_are_dropped() {
    // Another pod's traffic moves the watermark ten minutes on; an exec stamped before that
    // minus the 30 s lateness arrives afterwards and cannot start a chain.
    let late = run(vec![
        Step::Event(shell("x", "other", "z", 600)),
        Step::Event(exec("c1", "ml", "a", 0)),
        Step::Event(shell("s1", "ml", "a", 601)),
    ]);
    assert_eq!(incidents(&late).len(), 0);
    // Within the lateness it is accepted and ordered by event time.
    let ok = run(vec![
        Step::Event(shell("x", "other", "z", 600)),
        Step::Event(exec("c1", "ml", "a", 580)),
        Step::Event(shell("s1", "ml", "a", 601)),
    ]);
    assert_eq!(incidents(&ok).len(), 1);
}

#[test]
fn replaying_twice_gives_identical_ids() {
    let a: Vec<String> = run(full_chain("ml", "infer-0", 0))
        .into_iter()
        .map(|f| f.id)
        .collect();
    let b: Vec<String> = run(full_chain("ml", "infer-0", 0))
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

fn custom(yaml: &str) -> RuleSet {
    let mut rules = sigma::parse_file("custom.yml", yaml).unwrap_or_else(|e| panic!("{e:?}"));
    rules.extend(gpusiem_detect::rules::pack::rules().expect("pack"));
    RuleSet::new(rules).unwrap_or_else(|e| panic!("{e:?}"))
}

const ABSENCE: &str = r#"
title: Binding created and not removed within 5 minutes
name: binding_created
logsource: {product: kubernetes, service: audit}
detection:
  selection: {objectRef.resource: clusterrolebindings, verb: create}
  condition: selection
generate: false
level: low
tags: [attack.t1098]
---
title: Binding deleted
name: binding_deleted
logsource: {product: kubernetes, service: audit}
detection:
  selection: {objectRef.resource: clusterrolebindings, verb: delete}
  condition: selection
generate: false
level: low
tags: [attack.t1098]
---
title: Temporary binding left behind
name: binding_left_behind
correlation:
  type: temporal_ordered
  rules: [binding_created, binding_deleted]
  group-by: [objectRef.name]
  timespan: 5m
gpusiem: {absence: true}
level: medium
tags: [attack.t1098]
"#;

fn binding(verb: &str, name: &str, t: i64) -> Value {
    json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": format!("{verb}-{name}-{t}"), "stage": "ResponseComplete", "verb": verb,
        "user": {"username": "admin"}, "objectRef": {"resource": "clusterrolebindings", "name": name, "apiGroup": "rbac.authorization.k8s.io"},
        "responseStatus": {"code": 200}, "stageTimestamp": at(t)})
}

#[test]
fn absence_fires_when_the_follower_never_comes() {
    let mut e = engine(custom(ABSENCE));
    let mut out = Vec::new();
    out.extend(feed(
        &mut e,
        Stream::K8sAudit,
        &binding("create", "temp-admin", 0),
    ));
    out.extend(feed(
        &mut e,
        Stream::K8sAudit,
        &binding("create", "cleaned-up", 0),
    ));
    out.extend(feed(
        &mut e,
        Stream::K8sAudit,
        &binding("delete", "cleaned-up", 120),
    ));
    assert!(
        out.iter().all(|f| f.detector != "binding_left_behind"),
        "not before the window closed"
    );
    // Event time moves past the window plus the lateness.
    let wm = gpusiem_ingest::time::parse_rfc3339_nanos(&at(5 * 60 + 31)).expect("t");
    e.tick(wm, &mut out);
    let left: Vec<&Finding> = out
        .iter()
        .filter(|f| f.detector == "binding_left_behind")
        .collect();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].evidence["group"], "temp-admin");
    assert_eq!(
        left[0].event_ids,
        ["k8s_audit:create-temp-admin-0/ResponseComplete"]
    );
}

const COUNTS: &str = r#"
title: Forbidden request
name: forbidden
logsource: {product: kubernetes, service: audit}
detection:
  selection: {responseStatus.code: 403}
  condition: selection
generate: false
level: low
tags: [attack.t1613]
---
title: Many forbidden requests by one user
name: forbidden_burst
correlation:
  type: event_count
  rules: [forbidden]
  group-by: [user.username]
  timespan: 1m
  condition: {gte: 5}
level: medium
tags: [attack.t1613]
---
title: One user probing many resources
name: forbidden_spread
correlation:
  type: value_count
  rules: [forbidden]
  group-by: [user.username]
  timespan: 1m
  condition: {field: objectRef.resource, gte: 3}
level: high
tags: [attack.t1613]
"#;

#[test]
fn count_correlations() {
    let mut e = engine(custom(COUNTS));
    let mut out = Vec::new();
    let denied = |user: &str, resource: &str, t: i64| {
        json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": format!("{user}-{resource}-{t}"), "stage": "ResponseComplete", "verb": "list",
            "user": {"username": user}, "objectRef": {"resource": resource}, "responseStatus": {"code": 403}, "stageTimestamp": at(t)})
    };
    for t in 0..4 {
        out.extend(feed(&mut e, Stream::K8sAudit, &denied("eve", "secrets", t)));
    }
    assert!(
        out.iter().all(|f| f.detector != "forbidden_burst"),
        "four is below the threshold"
    );
    out.extend(feed(&mut e, Stream::K8sAudit, &denied("eve", "secrets", 5)));
    out.extend(feed(&mut e, Stream::K8sAudit, &denied("eve", "secrets", 6)));
    let burst: std::collections::BTreeSet<&str> = out
        .iter()
        .filter(|f| f.detector == "forbidden_burst")
        .map(|f| f.id.as_str())
        .collect();
    assert_eq!(burst.len(), 1);
    assert!(
        out.iter().all(|f| f.detector != "forbidden_spread"),
        "one resource only"
    );
    out.extend(feed(
        &mut e,
        Stream::K8sAudit,
        &denied("eve", "configmaps", 7),
    ));
    out.extend(feed(&mut e, Stream::K8sAudit, &denied("eve", "pods", 8)));
    assert_eq!(
        out.iter()
            .filter(|f| f.detector == "forbidden_spread")
            .count(),
        1
    );
    // Another user stays apart.
    let before = out.len();
    out.extend(feed(&mut e, Stream::K8sAudit, &denied("bob", "secrets", 9)));
    assert_eq!(out.len(), before);
}

#[test]
fn rule_errors_name_file_and_line() {
    let dir = tempdir();
    std::fs::write(dir.join("bad.yml"), "title: bad\nlogsource: {product: kubernetes, service: audit}\ndetection:\n  selection:\n    verb|frob: x\n  condition: selection\n").expect("write");
    let errors = load_dir(&dir).expect_err("bad rule");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 5);
    assert!(errors[0].file.ends_with("bad.yml"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gpusiem-rules-{}-{}",
        std::process::id(),
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace("::", "-")
    ));
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}
