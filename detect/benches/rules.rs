//! Rules benchmark: 100 Sigma rules (the built-in pack, the 16 SigmaHQ Kubernetes rules and
//! generated variants of them that, like most rules of a real deployment, rarely match) over a
//! mixed Falco + audit stream, and the correlation latency of the compromised-container
//! incident at 30k events/s.
//!
//! Run: `cargo bench -p gpusiem-detect --bench rules`. Prints events/s per core and the
//! latency percentiles; single-threaded, so "per core" is the figure itself.

use std::path::PathBuf;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use gpusiem_detect::rules::{RuleEngine, RuleSet, RulesConfig, load_dir, pack, sigma};
use gpusiem_detect::{Engine, EngineConfig, Finding};
use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext};
use serde_json::json;

const BATCH: usize = 4096;

fn rules_100() -> RuleSet {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sigma/kubernetes");
    let mut rules = pack::rules().expect("pack");
    let sigmahq = load_dir(&dir).expect("sigma");
    rules.extend(sigmahq.iter().cloned());
    // Variants: the SigmaHQ rules retargeted at other resources, and Falco rules on other
    // processes and files — shapes a SOC adds, which mostly do not match.
    let resources = [
        "configmaps",
        "services",
        "ingresses",
        "nodes",
        "persistentvolumeclaims",
        "statefulsets",
        "daemonsets",
        "replicasets",
        "leases",
        "endpoints",
        "networkpolicies",
        "podtemplates",
        "limitranges",
        "resourcequotas",
        "csinodes",
        "storageclasses",
        "priorityclasses",
        "runtimeclasses",
        "volumeattachments",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
        "certificatesigningrequests",
        "tokenreviews",
        "subjectaccessreviews",
        "customresourcedefinitions",
        "apiservices",
        "flowschemas",
        "prioritylevelconfigurations",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "ipaddresses",
        "servicecidrs",
        "resourceclaims",
        "resourceslices",
        "deviceclasses",
        "leasecandidates",
        "controllerrevisions",
        "endpointslices",
    ];
    let mut text = String::new();
    let mut n = 0;
    for r in resources {
        if rules.len() + n >= 100 {
            break;
        }
        text.push_str(&format!(
            "title: {r} deleted\nname: bench_delete_{r}\nlogsource: {{product: kubernetes, service: audit}}\ndetection:\n  selection:\n    verb: [delete, deletecollection]\n    objectRef.resource: {r}\n  filter:\n    user.username|startswith: 'system:'\n  condition: selection and not filter\nlevel: low\ntags: [attack.t1485]\n---\n"
        ));
        n += 1;
        if rules.len() + n >= 100 {
            break;
        }
        text.push_str(&format!(
            "title: Falco variant {n}\nname: bench_falco_{n}\nlogsource: {{product: falco}}\ndetection:\n  selection:\n    proc.name|endswith: miner{n}\n    fd.name|startswith: /var/lib/{r}\n  condition: selection\nlevel: low\ntags: [attack.t1496]\n---\n"
        ));
        n += 1;
    }
    rules.extend(sigma::parse_file("bench.yml", &text).expect("variants"));
    rules.truncate(100);
    RuleSet::new(rules).expect("link")
}

fn ts(i: usize) -> String {
    gpusiem_ingest::time::format_rfc3339_nanos(1_748_772_000_000_000_000 + i as i64 * 33_333)
}

/// Realistic audit events: lease renewals, configmap reads, watches, pod creates, a few execs.
fn audit(i: usize) -> serde_json::Value {
    let ns = ["ml", "shop", "research", "kube-system"][i % 4];
    let (verb, resource, sub) = match i % 20 {
        0..=9 => ("update", "leases", None),
        10..=14 => ("get", "configmaps", None),
        15..=17 => ("watch", "pods", None),
        18 => ("create", "pods", None),
        _ => ("get", "pods", Some("exec")),
    };
    let mut e = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": format!("a{i}"), "stage": "ResponseComplete",
        "requestURI": format!("/api/v1/namespaces/{ns}/{resource}/x{i}"), "verb": verb,
        "user": {"username": if i.is_multiple_of(3) { "system:node:n1".to_string() } else { format!("user{}", i % 50) }, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"], "userAgent": "kubectl/v1.31.0 (linux/amd64) kubernetes/abc",
        "objectRef": {"resource": resource, "namespace": ns, "name": format!("x{}", i % 1000), "apiVersion": "v1"},
        "responseStatus": {"code": 200}, "requestReceivedTimestamp": ts(i), "stageTimestamp": ts(i),
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}});
    if let Some(s) = sub {
        e["objectRef"]["subresource"] = json!(s);
        e["responseStatus"]["code"] = json!(101);
    }
    e
}

fn falco(i: usize) -> serde_json::Value {
    let (rule, proc_name, fd) = match i % 10 {
        0..=5 => ("Read sensitive file untrusted", "cat", "/etc/shadow"),
        6..=7 => ("Terminal shell in container", "bash", ""),
        8 => ("Container Accessing GPU Device", "python3", "/dev/nvidia0"),
        _ => (
            "Unexpected outbound connection",
            "curl",
            "10.0.0.5:40000->93.184.216.34:443",
        ),
    };
    let ns = ["ml", "shop"][i % 2];
    json!({"uuid": format!("f{i}"), "rule": rule, "priority": "Warning", "time": ts(i), "source": "syscall", "hostname": "gpu-node-1",
        "output": format!("{rule} (proc={proc_name})"), "tags": ["container", "mitre_execution"],
        "output_fields": {"container.id": "0123456789ab", "container.name": "c", "container.image.repository": "nvcr.io/nvidia/tritonserver",
            "evt.type": "execve", "fd.name": fd, "k8s.ns.name": ns, "k8s.pod.name": format!("pod-{}", i % 500),
            "proc.cmdline": format!("{proc_name} -x"), "proc.exepath": format!("/usr/bin/{proc_name}"), "proc.name": proc_name,
            "proc.pname": "containerd-shim", "user.name": "root", "user.uid": 0, "evt.time": 1_748_772_000_000_000_000i64 + i as i64}})
}

fn batches(n: usize, make: fn(usize) -> serde_json::Value, stream: Stream) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&make(i).to_string());
        text.push('\n');
        if (i + 1) % BATCH == 0 || i + 1 == n {
            let d =
                decode::decode(stream, text.as_bytes(), &DecodeContext::new(0)).expect("decode");
            assert!(d.quarantined.is_empty());
            out.push(d.batch);
            text.clear();
        }
    }
    out
}

fn engine(set: RuleSet) -> Engine {
    let mut e = Engine::new(EngineConfig::default()).expect("engine");
    e.set_rules(RuleEngine::new(set, &RulesConfig::default()));
    e
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let set = rules_100();
    println!("rules loaded: {}", set.rules().len());
    let n = 200_000;
    let audit_batches = batches(n / 2, audit, Stream::K8sAudit);
    let falco_batches = batches(n / 2, falco, Stream::FalcoEvents);

    // Throughput: interleaved audit and Falco batches, ten runs, best reported. The rate per
    // core is taken from the thread's CPU time, which a busy machine does not inflate; the
    // wall-clock rate is printed beside it.
    let mut best = f64::MAX;
    let mut best_cpu = f64::MAX;
    let mut findings = 0;
    for _ in 0..10 {
        let mut e = engine(set.clone());
        let mut out: Vec<Finding> = Vec::new();
        let start = Instant::now();
        let cpu_start = thread_cpu_secs();
        for (a, f) in audit_batches.iter().zip(&falco_batches) {
            e.observe(Stream::K8sAudit, a, &mut out);
            e.observe(Stream::FalcoEvents, f, &mut out);
        }
        best = best.min(start.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu_start, thread_cpu_secs()) {
            best_cpu = best_cpu.min(b - a);
        }
        findings = out.len();
    }
    let per_core = if best_cpu < f64::MAX { best_cpu } else { best };
    println!(
        "throughput: {n} events, 100 rules: {:.0} events/s per core on CPU time ({:.0} on wall-clock; {:.1} ms; {findings} finding emissions); target 500000: {}",
        n as f64 / per_core,
        n as f64 / best,
        per_core * 1e3,
        if n as f64 / per_core >= 500_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );

    // Correlation latency at 30k events/s: batches of 300 events every 10 ms of event time,
    // with the incident's steps spread over pods; latency = the time the engine takes from a
    // batch's arrival to the findings it yields (the pipeline is synchronous per batch).
    let rate = 30_000usize;
    let per_batch = rate / 100;
    let seconds = 10;
    let mut e = engine(set);
    let mut lat = Vec::new();
    let mut incident_lat = Vec::new();
    let mut out = Vec::new();
    for b in 0..(seconds * 100) {
        let mut audit_text = String::new();
        let mut falco_text = String::new();
        for k in 0..per_batch {
            let i = b * per_batch + k;
            if k % 2 == 0 {
                let mut ev = audit(i);
                if k == 0 {
                    ev["verb"] = json!("get");
                    // Step 1 of an incident on pod inc-<b/10>.
                    ev["objectRef"] = json!({"resource": "pods", "namespace": "ml", "name": format!("inc-{}", b / 10), "subresource": "exec"});
                    ev["responseStatus"]["code"] = json!(101);
                }
                audit_text.push_str(&ev.to_string());
                audit_text.push('\n');
            } else {
                let mut ev = falco(i);
                if k == 1 && b % 10 == 5 {
                    // Step 5, miner traffic on the same pod: completes a two-step chain.
                    ev["output_fields"]["k8s.pod.name"] = json!(format!("inc-{}", b / 10));
                    ev["output_fields"]["k8s.ns.name"] = json!("ml");
                    ev["output_fields"]["proc.cmdline"] = json!("xmrig -o stratum+tcp://pool:3333");
                }
                falco_text.push_str(&ev.to_string());
                falco_text.push('\n');
            }
        }
        let a = decode::decode(
            Stream::K8sAudit,
            audit_text.as_bytes(),
            &DecodeContext::new(0),
        )
        .expect("decode")
        .batch;
        let f = decode::decode(
            Stream::FalcoEvents,
            falco_text.as_bytes(),
            &DecodeContext::new(0),
        )
        .expect("decode")
        .batch;
        let start = Instant::now();
        let before = out.len();
        e.observe(Stream::K8sAudit, &a, &mut out);
        e.observe(Stream::FalcoEvents, &f, &mut out);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        lat.push(ms);
        if out[before..]
            .iter()
            .any(|x| x.detector == "compromised_gpu_container")
        {
            incident_lat.push(ms);
        }
    }
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let incidents = incident_lat.len();
    let ip99 = if incident_lat.is_empty() {
        f64::NAN
    } else {
        percentile(&mut incident_lat, 0.99)
    };
    println!(
        "correlation at {rate} events/s: per-batch processing p50 {p50:.2} ms, p99 {p99:.2} ms; batches raising the incident: {incidents}, their p99 {ip99:.2} ms (plus up to 10 ms of batching)"
    );
}

/// Seconds the current thread has spent on a CPU (`/proc/thread-self/schedstat`, Linux).
fn thread_cpu_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}
