//! The deployment files (`deploy/`, `dashboards/`) checked against the product they deploy
//! (research/reliability-security.md §4 and test rows D3–D5):
//!
//! * every YAML document parses; no Secret carries a value;
//! * Kubernetes hardening: namespace PSS `restricted`, every container non-root / read-only /
//!   no escalation / drop ALL / seccomp RuntimeDefault / limits / probes on `/healthz` and
//!   `/readyz`, no host namespaces or paths, token mounted only for the `kubernetes` source;
//! * RBAC is get/list/watch on pods only; NetworkPolicy default deny plus exactly the documented
//!   allow-list;
//! * the ConfigMap's `gpusiem.toml` passes the real `Config::parse` + `validate`, and every file
//!   it names is mounted where it says;
//! * the audit policy, evaluated like the API server does, logs secrets at `Metadata` at most
//!   and pods at `RequestResponse`; the audit webhook and Falco's `http_output` post to the real
//!   receiver routes;
//! * every Falco rule's alert, built from its output fields, triggers the built-in Sigma rules
//!   it is meant for, through the real decoder and rule engine;
//! * the admission policies' CEL mentions what it must;
//! * every dashboard query uses only metric and label names the real `/metrics` exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gpusiem::config::Config;
use gpusiem_detect::rules::testing;
use gpusiem_detect::rules::{RuleSet, RulesConfig};
use gpusiem_ingest::sources::http::{FALCO_PATH, K8S_AUDIT_PATH};
use gpusiem_tests::workspace_root;
use saphyr::{LoadableYamlNode, ScalarOwned, YamlOwned};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// One YAML document and the file it came from.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, exts, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(p);
        }
    }
}

fn to_json(y: &YamlOwned) -> Value {
    match y {
        YamlOwned::Value(s) => match s {
            ScalarOwned::Null => Value::Null,
            ScalarOwned::Boolean(b) => Value::Bool(*b),
            ScalarOwned::Integer(i) => json!(i),
            ScalarOwned::FloatingPoint(f) => json!(f.into_inner()),
            ScalarOwned::String(s) => Value::String(s.clone()),
        },
        YamlOwned::Representation(s, _, _) => Value::String(s.clone()),
        YamlOwned::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        YamlOwned::Mapping(map) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in map {
                let key = match to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(key, to_json(v));
            }
            Value::Object(obj)
        }
        YamlOwned::Tagged(_, inner) => to_json(inner),
        YamlOwned::Alias(_) | YamlOwned::BadValue => panic!("unsupported YAML node {y:?}"),
    }
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn load_yaml(path: &Path) -> Vec<Doc> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs = YamlOwned::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", rel(path)));
    docs.iter()
        .map(to_json)
        .filter(|v| !v.is_null())
        .map(|value| Doc {
            file: rel(path),
            value,
        })
        .collect()
}

/// Every YAML document under `deploy/` (or a subfolder of it).
fn deploy_docs(sub: &str) -> Vec<Doc> {
    let mut files = Vec::new();
    files_under(
        &workspace_root().join("deploy").join(sub),
        &["yaml", "yml"],
        &mut files,
    );
    assert!(!files.is_empty(), "no YAML under deploy/{sub}");
    files.iter().flat_map(|f| load_yaml(f)).collect()
}

/// Kubernetes objects (documents with `apiVersion` and `kind`) under `deploy/`.
fn objects(sub: &str) -> Vec<Doc> {
    deploy_docs(sub)
        .into_iter()
        .filter(|d| d.value.get("apiVersion").is_some() && d.value.get("kind").is_some())
        .filter(|d| d.value["kind"] != "Kustomization")
        .collect()
}

fn kind<'a>(docs: &'a [Doc], kind: &str) -> Vec<&'a Doc> {
    docs.iter().filter(|d| d.value["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Doc], k: &str) -> &'a Doc {
    let found = kind(docs, k);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {k}, found {}",
        found.len()
    );
    found[0]
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v}"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The production `gpusiem.toml` of the ConfigMap.
fn config_text() -> String {
    let objs = objects("kubernetes");
    let cms: Vec<&Doc> = kind(&objs, "ConfigMap")
        .into_iter()
        .filter(|d| d.value["data"].get("gpusiem.toml").is_some())
        .collect();
    assert_eq!(cms.len(), 1, "one ConfigMap holds gpusiem.toml");
    s(&cms[0].value["data"]["gpusiem.toml"], "data.gpusiem.toml").to_string()
}

fn config() -> Config {
    Config::parse(&config_text()).unwrap_or_else(|e| panic!("gpusiem.toml does not parse: {e}"))
}

/// The one gpusiem pod template (StatefulSet) and its object.
fn workload() -> Doc {
    let objs = objects("kubernetes");
    one(&objs, "StatefulSet").clone()
}

// ---------------------------------------------------------------------------------------------
// Files and secrets
// ---------------------------------------------------------------------------------------------

#[test]
fn every_yaml_document_parses_and_objects_are_named() {
    let docs = deploy_docs("");
    assert!(
        docs.len() >= 20,
        "only {} YAML documents under deploy/",
        docs.len()
    );
    for d in &docs {
        let Some(kind) = d.value.get("kind").and_then(Value::as_str) else {
            continue;
        };
        match kind {
            // Not API objects: the audit policy, the webhook kubeconfig, kustomize's file.
            "Policy" | "Config" | "Kustomization" => {}
            _ => {
                let name = d.value["metadata"]["name"].as_str().unwrap_or("");
                assert!(
                    !name.is_empty(),
                    "{}: a {kind} without metadata.name",
                    d.file
                );
            }
        }
    }
    let mut files = Vec::new();
    files_under(
        &workspace_root().join("dashboards"),
        &["yaml", "yml"],
        &mut files,
    );
    for f in files {
        assert!(!load_yaml(&f).is_empty(), "{} is empty", rel(&f));
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = workspace_root().join("deploy/kubernetes");
    let k = load_yaml(&dir.join("kustomization.yaml"));
    let listed: BTreeSet<String> = strings(&k[0].value["resources"]);
    let mut files = Vec::new();
    files_under(&dir, &["yaml", "yml"], &mut files);
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&dir)
                .expect("under dir")
                .display()
                .to_string()
        })
        .filter(|f| f != "kustomization.yaml" && f != "servicemonitor.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources (servicemonitor.yaml stays optional)"
    );
    assert_eq!(k[0].value["namespace"], "gpusiem");
}

#[test]
fn no_secret_value_is_committed() {
    for d in objects("") {
        if d.value["kind"] == "Secret" {
            for key in ["data", "stringData"] {
                let values = d.value.get(key).and_then(Value::as_object);
                assert!(
                    values.is_none_or(|m| m.is_empty()),
                    "{}: Secret {} carries values",
                    d.file,
                    d.value["metadata"]["name"]
                );
            }
        }
    }
    // Secrets of gpusiem.toml come from files, never inline (`token = …`) or from the environment
    // of the manifest.
    let cfg = serde_json::to_value(config()).expect("config serializes");
    let mut env_keys = Vec::new();
    walk(&cfg, "", &mut |path, v| {
        if path.ends_with("_env") && !v.is_null() {
            env_keys.push(path.to_string());
        }
    });
    assert!(
        env_keys.is_empty(),
        "gpusiem.toml reads secrets from the environment: {env_keys:?}"
    );
    let pod = &workload().value["spec"]["template"]["spec"];
    for c in arr(&pod["containers"], "containers") {
        for e in c["env"].as_array().into_iter().flatten() {
            assert!(
                e.get("valueFrom")
                    .is_none_or(|v| v.get("secretKeyRef").is_none()),
                "secrets go in files, not env: {e}"
            );
        }
    }
}

fn walk(v: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(path, v);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                walk(
                    x,
                    &if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    },
                    f,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), f);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn configmap_gpusiem_toml_passes_the_real_validation() {
    let c = config();
    let problems = c.validate();
    assert!(
        problems.is_empty(),
        "gpusiem.toml: {}",
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    // Production posture: reachable from the cluster, so tokens and TLS with client certificates
    // (Falco's http_output and the audit webhook cannot send a token).
    let addr = c.listen_addr().expect("listen address");
    assert!(
        !addr.ip().is_loopback(),
        "the listener must be reachable from Falco and the API server"
    );
    assert!(
        !c.auth.tokens.is_empty(),
        "a non-loopback listener needs tokens"
    );
    assert!(
        c.server.tls_cert_file.is_some() && c.server.tls_key_file.is_some(),
        "TLS on"
    );
    assert!(
        c.server.client_ca_file.is_some(),
        "client certificates authenticate Falco and the API server"
    );
    assert!(
        c.rules.dirs.is_empty(),
        "no rule directory that the image does not have"
    );
}

#[test]
fn every_file_the_config_names_is_mounted_and_the_data_dir_is_persistent() {
    let c = config();
    let sts = workload();
    let pod = &sts.value["spec"]["template"]["spec"];
    let container = &arr(&pod["containers"], "containers")[0];
    let volumes: BTreeMap<String, &Value> = arr(&pod["volumes"], "volumes")
        .iter()
        .map(|v| (s(&v["name"], "volume name").to_string(), v))
        .collect();
    let claims: BTreeSet<String> = sts.value["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| s(&t["metadata"]["name"], "claim name").to_string())
        .collect();
    // (mount path, volume name, read only)
    let mounts: Vec<(String, String, bool)> = arr(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| {
            (
                s(&m["mountPath"], "mountPath").to_string(),
                s(&m["name"], "name").to_string(),
                m["readOnly"] == true,
            )
        })
        .collect();
    let mount_of = |file: &str| -> (String, String, bool) {
        mounts
            .iter()
            .filter(|(p, _, _)| {
                file.starts_with(&format!("{}/", p.trim_end_matches('/'))) || file == p
            })
            .max_by_key(|(p, _, _)| p.len())
            .cloned()
            .unwrap_or_else(|| {
                panic!("{file} (gpusiem.toml) is on no volume mount of the container")
            })
    };

    // The data directory: a PersistentVolumeClaim, writable.
    let data = c.server.data_dir.display().to_string();
    let (_, vol, ro) = mount_of(&data);
    assert!(
        claims.contains(&vol),
        "server.data_dir {data} must be on a volumeClaimTemplate, is on `{vol}`"
    );
    assert!(!ro, "server.data_dir must be writable");

    // Every *_file of the config: on a read-only Secret (or ConfigMap) volume holding that key.
    let cfg = serde_json::to_value(&c).expect("config serializes");
    let mut files = Vec::new();
    walk(&cfg, "", &mut |path, v| {
        if path.ends_with("_file")
            && let Some(f) = v.as_str()
        {
            files.push((path.to_string(), f.to_string()));
        }
    });
    assert!(
        files.len() >= 6,
        "tls, client CA, tokens, notifiers: found {files:?}"
    );
    for (key, file) in files {
        let (mount, vol, ro) = mount_of(&file);
        assert!(ro, "{key} = {file}: mount {mount} must be read-only");
        let v = volumes
            .get(&vol)
            .unwrap_or_else(|| panic!("volume {vol} not declared"));
        assert!(
            v.get("secret").is_some(),
            "{key} = {file}: volume {vol} is not a Secret"
        );
        let name = file
            .strip_prefix(&format!("{mount}/"))
            .expect("under the mount");
        if let Some(items) = v["secret"]["items"].as_array() {
            assert!(
                items.iter().any(|i| i["path"] == name),
                "{key}: Secret volume {vol} does not project {name}"
            );
        }
    }

    // The config file itself: the ConfigMap key at the path the container is started with.
    let args: Vec<&str> = arr(&container["args"], "args")
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config in args");
    let cfg_path = args[at + 1];
    let (mount, vol, ro) = mount_of(cfg_path);
    assert!(ro);
    assert_eq!(volumes[&vol]["configMap"]["name"], "gpusiem-config");
    assert_eq!(
        cfg_path.strip_prefix(&format!("{mount}/")),
        Some("gpusiem.toml")
    );
    assert_eq!(args[0], "run");

    // The listener port is the container port the Service and the probes use.
    let port = c.listen_addr().expect("listen").port();
    let ports: Vec<u64> = arr(&container["ports"], "ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert_eq!(ports, [u64::from(port)]);
}

// ---------------------------------------------------------------------------------------------
// Pod security
// ---------------------------------------------------------------------------------------------

#[test]
fn namespace_enforces_pod_security_restricted() {
    let objs = objects("kubernetes");
    let ns = one(&objs, "Namespace");
    let labels = &ns.value["metadata"]["labels"];
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels[format!("pod-security.kubernetes.io/{mode}")],
            "restricted",
            "{mode} label"
        );
    }
    let name = s(&ns.value["metadata"]["name"], "namespace");
    for d in &objs {
        let namespaced = !matches!(
            s(&d.value["kind"], "kind"),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        if namespaced {
            assert_eq!(
                d.value["metadata"]["namespace"], name,
                "{}: {} outside the namespace",
                d.file, d.value["kind"]
            );
        }
    }
}

fn pod_specs(docs: &[Doc]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for d in docs {
        let spec = match s(&d.value["kind"], "kind") {
            "Pod" => d.value["spec"].clone(),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                d.value["spec"]["template"]["spec"].clone()
            }
            "CronJob" => d.value["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => continue,
        };
        out.push((
            format!(
                "{}: {} {}",
                d.file, d.value["kind"], d.value["metadata"]["name"]
            ),
            spec,
        ));
    }
    out
}

/// A container setting, falling back to the pod's security context where Kubernetes does.
fn effective<'a>(c: &'a Value, pod: &'a Value, key: &str) -> &'a Value {
    match c["securityContext"].get(key) {
        Some(v) => v,
        None => &pod["securityContext"][key],
    }
}

#[test]
fn every_container_is_hardened() {
    let objs = objects("kubernetes");
    let pods = pod_specs(&objs);
    assert!(!pods.is_empty(), "no workload under deploy/kubernetes");
    let c = config();
    let tls = c.server.tls_cert_file.is_some();
    let wants_token = c
        .sources
        .iter()
        .any(|s| matches!(s, gpusiem::config::SourceConfig::Kubernetes { .. }));
    for (what, pod) in pods {
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[key] != true, "{what}: {key}");
        }
        for v in pod["volumes"].as_array().into_iter().flatten() {
            assert!(
                v.get("hostPath").is_none(),
                "{what}: hostPath volume {}",
                v["name"]
            );
        }
        assert_eq!(
            pod["automountServiceAccountToken"],
            json!(wants_token),
            "{what}: token mounted only for the kubernetes source"
        );
        let containers: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod[*k].as_array().into_iter().flatten())
            .collect();
        assert!(!containers.is_empty(), "{what}: no container");
        for ctr in containers {
            let name = format!("{what} container {}", ctr["name"]);
            let sc = &ctr["securityContext"];
            assert_eq!(
                effective(ctr, &pod, "runAsNonRoot"),
                true,
                "{name}: runAsNonRoot"
            );
            let uid = effective(ctr, &pod, "runAsUser").as_u64().unwrap_or(0);
            assert!(
                uid >= 10_000,
                "{name}: runAsUser {uid} (a high, non-zero UID)"
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{name}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{name}: allowPrivilegeEscalation"
            );
            assert!(sc["privileged"] != true, "{name}: privileged");
            assert!(
                strings(&sc["capabilities"]["drop"]).contains("ALL"),
                "{name}: capabilities.drop ALL"
            );
            let added = strings(&sc["capabilities"]["add"]);
            assert!(
                added.iter().all(|c| c == "NET_BIND_SERVICE"),
                "{name}: capabilities.add {added:?}"
            );
            assert_eq!(
                effective(ctr, &pod, "seccompProfile")["type"],
                "RuntimeDefault",
                "{name}: seccompProfile"
            );
            for (k, r) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                assert!(
                    ctr["resources"][k].get(r).is_some(),
                    "{name}: resources.{k}.{r}"
                );
            }
            let image = s(&ctr["image"], "image");
            assert!(
                image.contains('@')
                    || image
                        .rsplit_once(':')
                        .is_some_and(|(_, t)| t != "latest" && !t.contains('/')),
                "{name}: image {image} needs a tag or digest"
            );
        }
        let main = &arr(&pod["containers"], "containers")[0];
        let port_names: BTreeSet<&str> = arr(&main["ports"], "ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &main[probe]["httpGet"];
            assert_eq!(get["path"], path, "{what}: {probe} on {path}");
            let port = &get["port"];
            assert!(
                port.as_str().is_some_and(|p| port_names.contains(p)) || port.is_u64(),
                "{what}: {probe} port {port}"
            );
            assert_eq!(
                get["scheme"],
                if tls { "HTTPS" } else { "HTTP" },
                "{what}: {probe} scheme follows server TLS"
            );
        }
    }
    let sa = one(&objs, "ServiceAccount");
    assert_eq!(
        sa.value["automountServiceAccountToken"], false,
        "the ServiceAccount mounts no token by default"
    );
}

#[test]
fn rbac_is_get_list_watch_on_pods_only() {
    let objs = objects("");
    let roles: Vec<&Doc> = objs
        .iter()
        .filter(|d| matches!(d.value["kind"].as_str(), Some("Role" | "ClusterRole")))
        .collect();
    assert!(
        !roles.is_empty(),
        "the kubernetes source needs a ClusterRole"
    );
    let allowed: BTreeSet<&str> = ["get", "list", "watch"].into();
    for r in &roles {
        for rule in arr(&r.value["rules"], "rules") {
            assert_eq!(
                strings(&rule["apiGroups"]),
                BTreeSet::from([String::new()]),
                "{}: core group only",
                r.file
            );
            assert_eq!(
                strings(&rule["resources"]),
                BTreeSet::from(["pods".to_string()]),
                "{}: pods only",
                r.file
            );
            let verbs = strings(&rule["verbs"]);
            assert!(
                !verbs.is_empty() && verbs.iter().all(|v| allowed.contains(v.as_str())),
                "{}: verbs {verbs:?}",
                r.file
            );
            assert!(rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none());
        }
    }
    // Bound to the gpusiem ServiceAccount and nothing else.
    for b in objs.iter().filter(|d| {
        matches!(
            d.value["kind"].as_str(),
            Some("RoleBinding" | "ClusterRoleBinding")
        )
    }) {
        let subjects = arr(&b.value["subjects"], "subjects");
        assert!(
            subjects
                .iter()
                .all(|s| s["kind"] == "ServiceAccount" && s["name"] == "gpusiem"),
            "{}: subjects {subjects:?}",
            b.file
        );
        let role = &b.value["roleRef"]["name"];
        assert!(
            roles.iter().any(|r| &r.value["metadata"]["name"] == role),
            "{}: binds {role}, not a role defined here",
            b.file
        );
    }
}

#[test]
fn service_pdb_and_policies_select_the_pod() {
    let objs = objects("kubernetes");
    let sts = workload();
    let labels = sts.value["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels")
        .clone();
    let selects = |sel: &Value, what: &str| {
        let m = sel
            .as_object()
            .unwrap_or_else(|| panic!("{what}: selector"));
        assert!(!m.is_empty(), "{what}: empty selector");
        for (k, v) in m {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{what}: selector {k}={v} does not match the pod"
            );
        }
    };
    selects(&sts.value["spec"]["selector"]["matchLabels"], "StatefulSet");
    let svc = one(&objs, "Service");
    selects(&svc.value["spec"]["selector"], "Service");
    assert_eq!(
        sts.value["spec"]["serviceName"],
        svc.value["metadata"]["name"]
    );
    let pdb = one(&objs, "PodDisruptionBudget");
    selects(
        &pdb.value["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    let container_ports: BTreeSet<String> = arr(
        &sts.value["spec"]["template"]["spec"]["containers"][0]["ports"],
        "ports",
    )
    .iter()
    .map(|p| s(&p["name"], "port name").to_string())
    .collect();
    for p in arr(&svc.value["spec"]["ports"], "service ports") {
        assert!(
            container_ports.contains(s(&p["targetPort"], "targetPort")),
            "Service targetPort {}",
            p["targetPort"]
        );
    }
    for np in kind(&objs, "NetworkPolicy") {
        let sel = &np.value["spec"]["podSelector"]["matchLabels"];
        if sel.as_object().is_some_and(|m| !m.is_empty()) {
            selects(sel, "NetworkPolicy");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

fn peer(p: &Value) -> String {
    if let Some(b) = p.get("ipBlock") {
        let mut except: Vec<String> = strings(&b["except"]).into_iter().collect();
        except.sort();
        return format!("cidr {} except {}", s(&b["cidr"], "cidr"), except.join(","));
    }
    let ns = p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        .as_str()
        .unwrap_or("?");
    let pods = &p["podSelector"];
    let mut sel: Vec<String> = pods["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in pods["matchExpressions"].as_array().into_iter().flatten() {
        sel.push(format!(
            "{} {} {:?}",
            s(&e["key"], "key"),
            s(&e["operator"], "operator"),
            strings(&e["values"])
        ));
    }
    format!("ns {ns} pods {}", sel.join(","))
}

fn allow_list(policies: &[&Doc], direction: &str, peers_key: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for np in policies {
        for rule in np.value["spec"][direction].as_array().into_iter().flatten() {
            let peers = arr(&rule[peers_key], peers_key);
            assert!(
                !peers.is_empty(),
                "{}: a {direction} rule without peers allows everyone",
                np.file
            );
            let ports = arr(&rule["ports"], "ports");
            assert!(
                !ports.is_empty(),
                "{}: a {direction} rule without ports allows every port",
                np.file
            );
            for p in peers {
                for port in ports {
                    out.insert(format!(
                        "{} {}/{}",
                        peer(p),
                        port["port"],
                        port["protocol"].as_str().unwrap_or("TCP")
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn network_policies_default_deny_then_the_documented_allow_list() {
    let objs = objects("kubernetes");
    let policies = kind(&objs, "NetworkPolicy");
    let deny = policies
        .iter()
        .find(|p| {
            p.value["spec"]["podSelector"]
                .as_object()
                .is_some_and(|m| m.is_empty())
                && strings(&p.value["spec"]["policyTypes"])
                    == BTreeSet::from(["Ingress".to_string(), "Egress".to_string()])
                && p.value["spec"].get("ingress").is_none()
                && p.value["spec"].get("egress").is_none()
        })
        .expect("a default-deny NetworkPolicy for ingress and egress");
    let _ = deny;

    let ingress: BTreeSet<String> = allow_list(&policies, "ingress", "from");
    let expected_ingress: BTreeSet<String> = [
        r#"ns falco pods app.kubernetes.io/name In {"falco", "falcosidekick"} 8443/TCP"#,
        "cidr 192.0.2.0/24 except  8443/TCP",
        "ns monitoring pods app.kubernetes.io/name=prometheus 8443/TCP",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        ingress, expected_ingress,
        "ingress allow-list (deploy/README.md)"
    );

    let internet = "cidr 0.0.0.0/0 except 10.0.0.0/8,100.64.0.0/10,127.0.0.0/8,169.254.0.0/16,172.16.0.0/12,192.168.0.0/16";
    let egress = allow_list(&policies, "egress", "to");
    let expected_egress: BTreeSet<String> = [
        "ns kube-system pods k8s-app=kube-dns 53/UDP".to_string(),
        "ns kube-system pods k8s-app=kube-dns 53/TCP".to_string(),
        "ns gpu-operator pods app=nvidia-dcgm-exporter 9400/TCP".to_string(),
        "cidr 192.0.2.0/24 except  443/TCP".to_string(),
        "cidr 192.0.2.0/24 except  6443/TCP".to_string(),
        "ns monitoring pods app.kubernetes.io/name=loki 80/TCP".to_string(),
        "ns monitoring pods app.kubernetes.io/name=loki 8080/TCP".to_string(),
        "ns monitoring pods app.kubernetes.io/name=loki 3100/TCP".to_string(),
        format!("{internet} 443/TCP"),
    ]
    .into();
    assert_eq!(
        egress, expected_egress,
        "egress allow-list (deploy/README.md)"
    );

    // Every ingress port is the listener's.
    let port = config().listen_addr().expect("listen").port();
    assert!(
        ingress.iter().all(|r| r.ends_with(&format!(" {port}/TCP"))),
        "{ingress:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Image
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_a_non_root_shell_less_image() {
    let text = std::fs::read_to_string(workspace_root().join("deploy/Dockerfile"))
        .expect("deploy/Dockerfile");
    // Logical lines: comments dropped, continuations joined.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        cur.push_str(t.trim_end_matches('\\'));
        cur.push(' ');
        if !t.ends_with('\\') {
            lines.push(cur.trim().to_string());
            cur.clear();
        }
    }
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage build");
    let last = &lines[*stages.last().expect("a stage")..];
    let args: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let from = last[0]
        .trim_start_matches("FROM ")
        .split_whitespace()
        .next()
        .expect("base image");
    let base = from
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .map_or(from.to_string(), |v| {
            args.get(v).cloned().unwrap_or_default()
        });
    assert!(
        base.contains("distroless") && base.contains("nonroot"),
        "runtime base {base}: distroless nonroot"
    );
    assert!(
        !last.iter().any(|l| l.starts_with("RUN ")),
        "no RUN in the runtime stage (no shell there)"
    );
    let user = last
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric USER");
    assert!(uid >= 10_000, "USER {uid}");
    let entry = last
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert!(entry.starts_with('['), "exec-form ENTRYPOINT (no shell)");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cargo build --release --locked -p gpusiem")),
        "builds the gpusiem binary"
    );

    let pod = &workload().value["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_u64(),
        Some(uid),
        "manifest UID = image USER"
    );
    let volume = last
        .iter()
        .find_map(|l| l.strip_prefix("VOLUME "))
        .expect("VOLUME");
    assert!(
        volume.contains(&config().server.data_dir.display().to_string()),
        "VOLUME {volume} is the data_dir"
    );
}

// ---------------------------------------------------------------------------------------------
// Audit policy and webhook
// ---------------------------------------------------------------------------------------------

/// A request as the audit policy checker sees it (k8s.io/apiserver/pkg/audit/policy/checker.go).
#[derive(Debug, Clone)]
struct Req<'a> {
    user: &'a str,
    groups: &'a [&'a str],
    verb: &'a str,
    /// `None` for non-resource requests.
    resource: Option<(&'a str, &'a str, Option<&'a str>)>,
    namespace: &'a str,
    path: &'a str,
}

fn level_rank(level: &str) -> u8 {
    match level {
        "None" => 0,
        "Metadata" => 1,
        "Request" => 2,
        "RequestResponse" => 3,
        other => panic!("unknown audit level {other}"),
    }
}

fn rule_matches(rule: &Value, r: &Req) -> bool {
    let users = strings(&rule["users"]);
    if !users.is_empty() && !users.contains(r.user) {
        return false;
    }
    let groups = strings(&rule["userGroups"]);
    if !groups.is_empty() && !r.groups.iter().any(|g| groups.contains(*g)) {
        return false;
    }
    let verbs = strings(&rule["verbs"]);
    if !verbs.is_empty() && !verbs.contains(r.verb) {
        return false;
    }
    let namespaces = strings(&rule["namespaces"]);
    let resources = rule["resources"].as_array().cloned().unwrap_or_default();
    if !namespaces.is_empty() || !resources.is_empty() {
        let Some((group, resource, sub)) = r.resource else {
            return false;
        };
        if !namespaces.is_empty() && !namespaces.contains(r.namespace) {
            return false;
        }
        if resources.is_empty() {
            return true;
        }
        let combined = sub.map_or(resource.to_string(), |s| format!("{resource}/{s}"));
        return resources.iter().any(|gr| {
            gr["group"].as_str().unwrap_or("") == group && {
                let names = strings(&gr["resources"]);
                names.is_empty()
                    || names.iter().any(|n| {
                        n == &combined
                            || n == "*"
                            || sub.is_some_and(|s| n.strip_prefix("*/") == Some(s))
                            || n.strip_suffix("/*") == Some(resource)
                    })
            }
        });
    }
    let urls = strings(&rule["nonResourceURLs"]);
    if !urls.is_empty() {
        return r.resource.is_none()
            && urls.iter().any(|u| {
                u.strip_suffix('*')
                    .map_or(u == r.path, |prefix| r.path.starts_with(prefix))
            });
    }
    true
}

fn audit_policy() -> Doc {
    let docs = objects("audit");
    one(&docs, "Policy").clone()
}

fn audit_level(policy: &Value, r: &Req) -> &'static str {
    for rule in arr(&policy["rules"], "rules") {
        if rule_matches(rule, r) {
            return match s(&rule["level"], "level") {
                "None" => "None",
                "Metadata" => "Metadata",
                "Request" => "Request",
                "RequestResponse" => "RequestResponse",
                other => panic!("unknown level {other}"),
            };
        }
    }
    "None"
}

fn res<'a>(
    user: &'a str,
    groups: &'a [&'a str],
    verb: &'a str,
    resource: (&'a str, &'a str, Option<&'a str>),
    ns: &'a str,
) -> Req<'a> {
    Req {
        user,
        groups,
        verb,
        resource: Some(resource),
        namespace: ns,
        path: "",
    }
}

#[test]
fn audit_policy_logs_what_the_rules_need_and_never_secret_bodies() {
    let policy = audit_policy();
    let p = &policy.value;
    assert_eq!(p["apiVersion"], "audit.k8s.io/v1");
    let authn: &[&str] = &["system:authenticated"];
    let sa: &[&str] = &[
        "system:serviceaccounts",
        "system:serviceaccounts:ml",
        "system:authenticated",
    ];
    let controller: &[&str] = &[
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
        "system:authenticated",
    ];
    let nodes: &[&str] = &["system:nodes", "system:authenticated"];
    let cases: Vec<(Req, &str, &str)> = vec![
        // The inventory reads requestObject/responseObject of pod creates, also by controllers.
        (
            res("alice", authn, "create", ("", "pods", None), "ml"),
            "RequestResponse",
            "pod create",
        ),
        (
            res(
                "system:serviceaccount:kube-system:replicaset-controller",
                controller,
                "create",
                ("", "pods", None),
                "ml",
            ),
            "RequestResponse",
            "controller pod create",
        ),
        (
            res(
                "system:kube-scheduler",
                authn,
                "create",
                ("", "pods", Some("binding")),
                "ml",
            ),
            "RequestResponse",
            "binding",
        ),
        (
            res("alice", authn, "delete", ("", "pods", None), "ml"),
            "RequestResponse",
            "pod delete",
        ),
        (
            res(
                "alice",
                authn,
                "patch",
                ("", "pods", Some("ephemeralcontainers")),
                "ml",
            ),
            "RequestResponse",
            "kubectl debug",
        ),
        (
            res(
                "alice",
                authn,
                "create",
                ("", "pods", Some("eviction")),
                "ml",
            ),
            "RequestResponse",
            "eviction",
        ),
        // exec/attach: SPDY (`create`) and WebSocket (`get`).
        (
            res("alice", authn, "create", ("", "pods", Some("exec")), "ml"),
            "Metadata",
            "exec (SPDY)",
        ),
        (
            res("alice", authn, "get", ("", "pods", Some("exec")), "ml"),
            "Metadata",
            "exec (WebSocket)",
        ),
        (
            res("alice", authn, "create", ("", "pods", Some("attach")), "ml"),
            "Metadata",
            "attach",
        ),
        (
            res(
                "alice",
                authn,
                "create",
                ("", "pods", Some("portforward")),
                "ml",
            ),
            "Metadata",
            "port-forward",
        ),
        // secrets read by an inference service account: seen, without the body.
        (
            res(
                "system:serviceaccount:ml:triton",
                sa,
                "get",
                ("", "secrets", None),
                "ml",
            ),
            "Metadata",
            "secret read",
        ),
        (
            res("alice", authn, "create", ("", "secrets", None), "ml"),
            "Metadata",
            "secret create",
        ),
        // cluster_admin_binding reads requestObject.roleRef.
        (
            res(
                "alice",
                authn,
                "create",
                ("rbac.authorization.k8s.io", "clusterrolebindings", None),
                "",
            ),
            "RequestResponse",
            "clusterrolebinding",
        ),
        (
            res(
                "alice",
                authn,
                "patch",
                ("rbac.authorization.k8s.io", "rolebindings", None),
                "ml",
            ),
            "RequestResponse",
            "rolebinding",
        ),
        (
            res(
                "alice",
                authn,
                "delete",
                ("networking.k8s.io", "networkpolicies", None),
                "ml",
            ),
            "RequestResponse",
            "networkpolicy delete",
        ),
        (
            res(
                "alice",
                authn,
                "delete",
                (
                    "admissionregistration.k8s.io",
                    "validatingadmissionpolicybindings",
                    None,
                ),
                "",
            ),
            "RequestResponse",
            "admission binding delete",
        ),
        (
            res(
                "alice",
                authn,
                "create",
                ("apps", "deployments", None),
                "ml",
            ),
            "Metadata",
            "other write",
        ),
        // Noise.
        (
            res("system:node:gpu-1", nodes, "get", ("", "nodes", None), ""),
            "None",
            "kubelet read",
        ),
        (
            res(
                "system:node:gpu-1",
                nodes,
                "patch",
                ("", "pods", Some("status")),
                "ml",
            ),
            "None",
            "kubelet status",
        ),
        (
            res("alice", authn, "list", ("", "pods", None), "ml"),
            "None",
            "read",
        ),
        (
            res("alice", authn, "create", ("", "events", None), "ml"),
            "None",
            "events",
        ),
        (
            Req {
                user: "system:anonymous",
                groups: &[],
                verb: "get",
                resource: None,
                namespace: "",
                path: "/healthz",
            },
            "None",
            "healthz",
        ),
    ];
    for (req, want, what) in &cases {
        assert_eq!(audit_level(p, req), *want, "{what}: {req:?}");
    }

    // Secrets: whoever asks, however, never above Metadata.
    let mut users: BTreeSet<String> = [
        "alice",
        "system:serviceaccount:ml:triton",
        "system:kube-controller-manager",
        "system:apiserver",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut groups: BTreeSet<String> = ["system:authenticated", "system:masters"]
        .into_iter()
        .map(String::from)
        .collect();
    for rule in arr(&p["rules"], "rules") {
        users.extend(strings(&rule["users"]));
        groups.extend(strings(&rule["userGroups"]));
    }
    let verbs = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    for user in &users {
        for group in &groups {
            for verb in verbs {
                for ns in ["", "kube-system", "ml"] {
                    for (g, r, sub) in [
                        ("", "secrets", None),
                        ("", "configmaps", None),
                        ("", "serviceaccounts", Some("token")),
                        ("authentication.k8s.io", "tokenreviews", None),
                    ] {
                        let gs = [group.as_str()];
                        let req = Req {
                            user,
                            groups: &gs,
                            verb,
                            resource: Some((g, r, sub)),
                            namespace: ns,
                            path: "",
                        };
                        let level = audit_level(p, &req);
                        assert!(
                            level_rank(level) <= level_rank("Metadata"),
                            "{req:?} is logged at {level}"
                        );
                    }
                }
            }
        }
    }
    assert!(strings(&p["omitStages"]).contains("RequestReceived"));
}

#[test]
fn audit_webhook_posts_to_the_receiver_with_a_client_certificate() {
    let docs = objects("audit");
    let kc = one(&docs, "Config");
    let ctx_name = s(&kc.value["current-context"], "current-context");
    let ctx = arr(&kc.value["contexts"], "contexts")
        .iter()
        .find(|c| c["name"] == ctx_name)
        .expect("current context");
    let cluster = arr(&kc.value["clusters"], "clusters")
        .iter()
        .find(|c| c["name"] == ctx["context"]["cluster"])
        .expect("cluster");
    let user = arr(&kc.value["users"], "users")
        .iter()
        .find(|u| u["name"] == ctx["context"]["user"])
        .expect("user");
    let url = s(&cluster["cluster"]["server"], "server");
    check_receiver_url(url, K8S_AUDIT_PATH, "audit webhook");
    assert!(
        cluster["cluster"]["certificate-authority"].is_string(),
        "verifies gpusiem's certificate"
    );
    assert!(cluster["cluster"]["insecure-skip-tls-verify"] != true);
    assert!(
        user["user"]["client-certificate"].is_string() && user["user"]["client-key"].is_string(),
        "authenticates with a client certificate"
    );
}

/// `url` is gpusiem's Service, over TLS, at `path` (the receiver route the server registers).
fn check_receiver_url(url: &str, path: &str, what: &str) {
    let u = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{what}: {url}: {e}"));
    assert_eq!(u.path(), path, "{what}: {url} must post to {path}");
    assert_eq!(u.scheme(), "https", "{what}: TLS");
    let objs = objects("kubernetes");
    let svc = one(&objs, "Service");
    let host = format!(
        "{}.{}.svc",
        s(&svc.value["metadata"]["name"], "name"),
        s(&svc.value["metadata"]["namespace"], "ns")
    );
    let h = u.host_str().unwrap_or("");
    assert!(
        h == host || h == format!("{host}.cluster.local"),
        "{what}: host {h}, the Service is {host}"
    );
    let ports: Vec<u64> = arr(&svc.value["spec"]["ports"], "ports")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert!(
        u.port().is_some_and(|p| ports.contains(&u64::from(p))),
        "{what}: port {:?} not a Service port {ports:?}",
        u.port()
    );
}

// ---------------------------------------------------------------------------------------------
// Falco
// ---------------------------------------------------------------------------------------------

#[test]
fn falco_sends_json_alerts_to_the_falco_receiver_over_mtls() {
    let mut found = 0;
    for d in deploy_docs("falco") {
        // Helm values nest falco.yaml under `falco:`; the drop-in is falco.yaml itself.
        let cfg = if d.value.get("falco").is_some() {
            &d.value["falco"]
        } else {
            &d.value
        };
        let Some(http) = cfg.get("http_output") else {
            continue;
        };
        found += 1;
        let what = &d.file;
        for key in [
            "json_output",
            "json_include_output_property",
            "json_include_tags_property",
        ] {
            assert_eq!(cfg[key], true, "{what}: {key}");
        }
        assert!(
            cfg.get("json_include_output_fields_property")
                .is_none_or(|v| v == true),
            "{what}: output_fields are what gpusiem decodes"
        );
        assert_eq!(http["enabled"], true, "{what}: http_output.enabled");
        check_receiver_url(s(&http["url"], "http_output.url"), FALCO_PATH, what);
        assert_eq!(
            http["mtls"], true,
            "{what}: Falco cannot send a token; it authenticates with mTLS"
        );
        assert_eq!(
            http["insecure"], false,
            "{what}: verify gpusiem's certificate"
        );
        for key in ["client_cert", "client_key", "ca_cert"] {
            assert!(
                http[key].as_str().is_some_and(|v| !v.is_empty()),
                "{what}: http_output.{key}"
            );
        }
        assert!(
            cfg["outputs_queue"]["capacity"]
                .as_u64()
                .is_some_and(|c| c > 0),
            "{what}: bounded outputs queue"
        );
    }
    assert!(
        found >= 1,
        "no Falco configuration with http_output under deploy/falco"
    );
}

/// The `%field` names a Falco output format references.
fn output_fields(format: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in format.match_indices('%') {
        let rest = &format[i + 1..];
        // A field name, with an optional `[argument]` (`proc.aname[2]`).
        let mut end = 0;
        let mut in_brackets = false;
        for (j, c) in rest.char_indices() {
            match c {
                '[' if !in_brackets => in_brackets = true,
                ']' if in_brackets => in_brackets = false,
                _ if in_brackets => {}
                c if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {}
                _ => break,
            }
            end = j + c.len_utf8();
        }
        let f = rest[..end].trim_end_matches('.');
        if !f.is_empty() {
            out.insert(f.to_string());
        }
    }
    out
}

/// Sample values of the fields the Falco rules output, as Falco's JSON has them.
fn sample_value(field: &str, overrides: &[(&str, Value)]) -> Value {
    if let Some((_, v)) = overrides.iter().find(|(f, _)| *f == field) {
        return v.clone();
    }
    match field {
        "k8s.ns.name" => json!("ml"),
        "k8s.pod.name" => json!("infer-0"),
        "k8s.pod.uid" => json!("44444444-4444-4444-4444-444444444444"),
        "container.id" => json!("0123456789ab"),
        "container.name" => json!("triton"),
        "container.image.repository" => json!("nvcr.io/nvidia/tritonserver"),
        "container.image.tag" => json!("24.05-py3"),
        "user.name" => json!("root"),
        "user.uid" => json!(0),
        "proc.pname" => json!("bash"),
        "proc.exepath" => json!("/tmp/kworkerds"),
        "proc.cmdline" => json!("kworkerds --quiet"),
        "proc.name" => json!("kworkerds"),
        "fd.rip" => json!("203.0.113.7"),
        "fd.l4proto" => json!("tcp"),
        other => panic!("no sample value for Falco field {other}: add one to the deploy test"),
    }
}

struct FalcoCase {
    rule: &'static str,
    /// Field values that make this alert what the rule catches.
    sample: Vec<(&'static str, Value)>,
    /// Built-in rules it must trigger: (rule, raises a finding).
    expect: &'static [(&'static str, bool)],
}

fn falco_cases() -> Vec<FalcoCase> {
    vec![
        FalcoCase {
            rule: "Container Accessing GPU Device",
            sample: vec![
                ("fd.name", json!("/dev/nvidia0")),
                ("evt.type", json!("openat")),
            ],
            expect: &[
                ("gpu_device_opened", false),
                ("gpu_device_opened_by_unexpected_process", true),
            ],
        },
        FalcoCase {
            rule: "Detect crypto miners using the Stratum protocol",
            sample: vec![
                ("evt.type", json!("execve")),
                (
                    "proc.cmdline",
                    json!("kworkerds -o stratum+tcp://pool.example:3333 -u wallet"),
                ),
                ("evt.arg.flags", json!("EXE_WRITABLE")),
            ],
            expect: &[("miner_pool_connection", true)],
        },
        FalcoCase {
            rule: "Detect outbound connections to common miner pool ports",
            sample: vec![
                ("evt.type", json!("connect")),
                ("fd.name", json!("10.1.2.3:40312->203.0.113.7:3333")),
                ("fd.rport", json!(3333)),
            ],
            expect: &[("miner_pool_connection", true)],
        },
        FalcoCase {
            rule: "Known Cryptominer Process Executed",
            sample: vec![
                ("evt.type", json!("execve")),
                ("proc.name", json!("xmrig")),
                ("proc.exepath", json!("/tmp/xmrig")),
                ("evt.arg.flags", json!("EXE_WRITABLE")),
            ],
            expect: &[("miner_pool_connection", true)],
        },
        FalcoCase {
            rule: "New Binary Executed in GPU Inference Container",
            sample: vec![
                ("evt.type", json!("execve")),
                ("evt.arg.flags", json!("EXE_WRITABLE|EXE_UPPER_LAYER")),
            ],
            expect: &[("new_binary_in_inference_container", true)],
        },
    ]
}

#[test]
fn falco_rules_trigger_the_builtin_rules_they_feed() {
    let path = workspace_root().join("deploy/falco/rules/gpusiem_gpu_rules.yaml");
    let docs = load_yaml(&path);
    assert_eq!(
        docs.len(),
        1,
        "one document: a list of lists, macros and rules"
    );
    let items = arr(&docs[0].value, "Falco rules file");
    let rules: Vec<&Value> = items.iter().filter(|i| i.get("rule").is_some()).collect();
    assert!(!rules.is_empty());
    let cases = falco_cases();
    let set = RuleSet::builtin().unwrap_or_else(|e| panic!("built-in pack: {e:?}"));
    let pod = json!({
        "metadata": {"name": "infer-0", "namespace": "ml", "uid": "44444444-4444-4444-4444-444444444444"},
        "spec": {"containers": [{"name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.05-py3",
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    });
    for rule in rules {
        let name = s(&rule["rule"], "rule");
        for key in ["desc", "condition", "output", "priority"] {
            assert!(rule.get(key).is_some(), "Falco rule {name}: {key}");
        }
        let case = cases
            .iter()
            .find(|c| c.rule == name)
            .unwrap_or_else(|| panic!("Falco rule `{name}` has no case in the deploy test"));
        let fields = output_fields(s(&rule["output"], "output"));
        // gpusiem correlates per namespace and pod, and decodes these into columns.
        for f in [
            "k8s.ns.name",
            "k8s.pod.name",
            "k8s.pod.uid",
            "container.id",
            "container.name",
            "proc.name",
            "evt.type",
        ] {
            assert!(fields.contains(f), "Falco rule {name}: output lacks %{f}");
        }
        // The alert Falco sends: exactly the output fields (plus the event time it adds).
        let mut output_fields = serde_json::Map::new();
        for f in &fields {
            output_fields.insert(f.clone(), sample_value(f, &case.sample));
        }
        for (f, _) in &case.sample {
            assert!(
                fields.contains(*f),
                "Falco rule {name}: the test sets {f}, but the rule does not output it"
            );
        }
        output_fields.insert("evt.time".into(), json!(1_748_772_000_000_000_000_i64));
        let alert = json!({
            "time": "2025-06-01T10:00:00.000000000Z",
            "rule": name,
            "priority": "Critical",
            "source": "syscall",
            "hostname": "gpu-node-1",
            "output": format!("10:00:00.000000000: Critical {name}"),
            "tags": rule["tags"].clone(),
            "output_fields": output_fields,
        });
        let expect: Vec<Value> = case
            .expect
            .iter()
            .map(|(r, finding)| {
                if *finding {
                    json!({"rule": r, "matches": 1, "findings": 1})
                } else {
                    json!({"rule": r, "matches": 1})
                }
            })
            .collect();
        let test = json!({"pods": [pod], "events": [{"falco_events": alert}], "expect": expect});
        let parsed =
            testing::parse(name, &test.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let run = testing::run(&parsed, &set, &RulesConfig::default());
        assert!(
            run.failures.is_empty(),
            "Falco rule `{name}` does not trigger {:?}: {}",
            case.expect,
            run.failures
                .iter()
                .map(|f| f.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    // No stale cases.
    for c in &cases {
        assert!(
            items.iter().any(|i| i["rule"] == c.rule),
            "the deploy test covers `{}`, which the rules file lacks",
            c.rule
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Admission policies
// ---------------------------------------------------------------------------------------------

#[test]
fn admission_policies_check_what_they_must() {
    let docs = objects("admission");
    let policies = kind(&docs, "ValidatingAdmissionPolicy");
    let bindings = kind(&docs, "ValidatingAdmissionPolicyBinding");
    let by_name = |n: &str| -> &Doc {
        policies
            .iter()
            .copied()
            .find(|p| p.value["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("policy {n}"))
    };
    let cel = |p: &Doc| -> String {
        arr(&p.value["spec"]["validations"], "validations")
            .iter()
            .map(|v| s(&v["expression"], "expression").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for p in &policies {
        assert_eq!(
            p.value["apiVersion"], "admissionregistration.k8s.io/v1",
            "{}",
            p.file
        );
        assert_eq!(p.value["spec"]["failurePolicy"], "Fail");
        let rules = arr(
            &p.value["spec"]["matchConstraints"]["resourceRules"],
            "resourceRules",
        );
        assert!(
            rules
                .iter()
                .any(|r| strings(&r["resources"]).contains("pods")
                    && strings(&r["operations"]).is_superset(&BTreeSet::from([
                        "CREATE".to_string(),
                        "UPDATE".to_string()
                    ]))
                    && strings(&r["apiGroups"]).contains("")),
            "{}: matches pod CREATE and UPDATE",
            p.value["metadata"]["name"]
        );
        for v in arr(&p.value["spec"]["validations"], "validations") {
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "every validation explains itself"
            );
        }
        let name = &p.value["metadata"]["name"];
        let bound: Vec<&&Doc> = bindings
            .iter()
            .filter(|b| &b.value["spec"]["policyName"] == name)
            .collect();
        assert!(!bound.is_empty(), "policy {name} has no binding");
        for b in bound {
            assert!(
                strings(&b.value["spec"]["validationActions"]).contains("Deny"),
                "binding of {name} denies"
            );
        }
    }
    for b in &bindings {
        assert!(
            policies
                .iter()
                .any(|p| p.value["metadata"]["name"] == b.value["spec"]["policyName"]),
            "binding to an unknown policy"
        );
    }
    // GPU-namespace policies are bound by the GPU-namespace label.
    let gpu_ns = |n: &str| {
        let b = bindings
            .iter()
            .find(|b| b.value["spec"]["policyName"] == n)
            .expect("binding");
        assert_eq!(
            b.value["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["gpusiem.io/gpu-workloads"],
            "true",
            "{n}"
        );
    };

    let isolation = cel(by_name("gpusiem-gpu-pod-isolation"));
    for needle in [
        "securityContext.privileged",
        "hostPID",
        "hostPath",
        "initContainers",
        "ephemeralContainers",
    ] {
        assert!(
            isolation.contains(needle),
            "isolation policy does not check {needle}"
        );
    }
    gpu_ns("gpusiem-gpu-pod-isolation");

    let devices = cel(by_name("gpusiem-gpu-visible-devices"));
    for needle in [
        "NVIDIA_VISIBLE_DEVICES",
        "'nvidia.com/gpu' in c.resources.limits",
        "initContainers",
    ] {
        assert!(
            devices.contains(needle),
            "visible-devices policy does not check {needle}"
        );
    }
    // Any value of the variable: the policy must not compare it with `all` only.
    assert!(
        !devices.contains("== 'all'"),
        "NVIDIA_VISIBLE_DEVICES with any value needs a GPU limit"
    );

    let digest = cel(by_name("gpusiem-gpu-image-digest"));
    for needle in [
        "containers.all(c, c.image.contains('@sha256:'))",
        "initContainers",
        "ephemeralContainers",
    ] {
        assert!(
            digest.contains(needle),
            "digest policy does not check {needle}"
        );
    }
    gpu_ns("gpusiem-gpu-image-digest");
}

// ---------------------------------------------------------------------------------------------
// Dashboards
// ---------------------------------------------------------------------------------------------

/// Sample names and their label names, from the real registry with every family populated
/// once (families without a sample are not rendered).
async fn exposed_metrics() -> BTreeMap<String, BTreeSet<String>> {
    use gpusiem::delivery::metrics::{ReasonLabels, TargetLabels};
    use gpusiem::metrics::{
        ApiReasonLabels, ApiRequestLabels, ApiRouteLabels, FindingLabels, Metrics, RuleLabels,
    };
    use gpusiem_ingest::Stream;
    use gpusiem_ingest::decode::Reason;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = gpusiem::store::Store::open(dir.path(), &gpusiem::store::StoreConfig::default())
        .await
        .expect("store opens");
    let mut m = Metrics::new();
    m.register_store(store);
    m.ingest.record_rows(Stream::FalcoEvents, "http", 1, 100);
    m.ingest
        .record_quarantined(Stream::FalcoEvents, Reason::InvalidJson);
    m.ingest.record_error("http", "rejected_full");
    m.ingest.quarantine_dropped.inc();
    m.pipeline
        .findings
        .get_or_create(&FindingLabels {
            detector: "d".into(),
            severity: "high",
            status: "firing",
        })
        .inc();
    m.pipeline
        .rule_matches
        .get_or_create(&RuleLabels { rule: "r".into() })
        .inc();
    m.api
        .requests
        .get_or_create(&ApiRequestLabels {
            route: "/metrics".into(),
            method: "GET".into(),
            status: 200,
        })
        .inc();
    m.api
        .duration
        .get_or_create(&ApiRouteLabels {
            route: "/metrics".into(),
        })
        .observe(0.01);
    m.api
        .auth_failures
        .get_or_create(&ApiReasonLabels { reason: "missing" })
        .inc();
    let d = &m.delivery;
    let t = TargetLabels {
        target: "sink:loki".into(),
    };
    let r = ReasonLabels {
        target: "sink:loki".into(),
        reason: "rejected",
    };
    d.received.get_or_create(&t).inc();
    d.delivered.get_or_create(&t).inc();
    d.queued.get_or_create(&t).set(0);
    d.dead_lettered.get_or_create(&r).inc();
    d.dropped.get_or_create(&r).inc();
    d.retries.get_or_create(&t).inc();
    d.requests.get_or_create(&t).inc();
    d.outbox_bytes.get_or_create(&t).set(0);
    d.latency.get_or_create(&t).observe(0.1);
    let text = m.render();

    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split_whitespace().next().unwrap_or("").to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = out.entry(name.to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.find('}').expect("closing brace")];
            for pair in body.split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    // Every registered family rendered (if one is missing here, populate it above).
    for f in &families {
        assert!(
            out.keys()
                .any(|k| k == f || k.starts_with(&format!("{f}_"))),
            "family {f} rendered no sample"
        );
    }
    out
}

const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "Inf",
    "NaN",
];

/// Metric names and label names a PromQL expression references.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let b = expr.as_bytes();
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    let mut grouping = false; // the next `( … )` is a label list (after by/without/on/…)
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c == b'{' {
            // Label matchers: name op "value", …
            i += 1;
            while i < b.len() && b[i] != b'}' {
                if b[i] == b'"' {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                } else if ident(b[i]) {
                    let start = i;
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                    labels.insert(expr[start..i].to_string());
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == b'(' && grouping {
            let end = expr[i..].find(')').map_or(b.len(), |e| i + e);
            for l in expr[i + 1..end].split(',') {
                let l = l.trim();
                if !l.is_empty() {
                    labels.insert(l.to_string());
                }
            }
            grouping = false;
            i = end + 1;
        } else if c == b'$' {
            i += 1;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit())
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == b'(';
            if matches!(
                word,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                grouping = call;
            } else if !call && !PROMQL_KEYWORDS.contains(&word) {
                metrics.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    (metrics, labels)
}

fn dashboards() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    files_under(&workspace_root().join("dashboards"), &["json"], &mut files);
    assert!(!files.is_empty(), "no dashboard under dashboards/");
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("dashboard");
            (
                rel(f),
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", rel(f))),
            )
        })
        .collect()
}

fn all_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        all_panels(&p["panels"], out);
    }
}

#[test]
fn dashboards_are_provisionable_and_use_the_datasource_variable() {
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
            "{file}: schemaVersion >= 39"
        );
        let uid = s(&d["uid"], "uid");
        assert!(
            !uid.is_empty() && uid.len() <= 40 && uids.insert(uid.to_string()),
            "{file}: unique uid of at most 40 characters"
        );
        let vars = arr(&d["templating"]["list"], "templating.list");
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{file}: no `datasource` variable"));
        assert_eq!(ds["type"], "datasource");
        assert_eq!(ds["query"], "prometheus");
        let mut panels = Vec::new();
        all_panels(&d["panels"], &mut panels);
        let mut ids = BTreeSet::new();
        for p in &panels {
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel without id"));
            assert!(ids.insert(id), "{file}: duplicate panel id {id}");
            assert!(
                p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64(),
                "{file}: panel {id} gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            let targets = arr(&p["targets"], "targets");
            assert!(
                !targets.is_empty(),
                "{file}: panel {} has no query",
                p["title"]
            );
            for t in
                std::iter::once(&p["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
            {
                assert_eq!(
                    t,
                    &json!({"type": "prometheus", "uid": "${datasource}"}),
                    "{file}: panel {} datasource",
                    p["title"]
                );
            }
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{file}: variable {}",
                v["name"]
            );
        }
    }
    let prov = load_yaml(&workspace_root().join("dashboards/provisioning/dashboards.yaml"));
    let providers = arr(&prov[0].value["providers"], "providers");
    assert!(
        providers
            .iter()
            .all(|p| p["type"] == "file" && p["options"]["path"].is_string())
    );
    let ds = load_yaml(&workspace_root().join("dashboards/provisioning/datasources.yaml"));
    let sources = arr(&ds[0].value["datasources"], "datasources");
    assert!(
        sources.iter().any(|d| d["type"] == "prometheus"),
        "a Prometheus data source"
    );
    assert_eq!(ds[0].value["apiVersion"], 1);
}

#[tokio::test]
async fn dashboards_query_only_metrics_and_labels_that_metrics_exposes() {
    let exposed = exposed_metrics().await;
    let target_labels: BTreeSet<String> =
        ["job", "instance"].into_iter().map(String::from).collect();
    let mut used = BTreeSet::new();
    for (file, d) in dashboards() {
        let mut panels = Vec::new();
        all_panels(&d["panels"], &mut panels);
        let mut exprs: Vec<(String, String, String)> = Vec::new();
        for p in &panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let title = p["title"].as_str().unwrap_or("?").to_string();
                exprs.push((
                    title,
                    s(&t["expr"], "expr").to_string(),
                    t["legendFormat"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        for v in arr(&d["templating"]["list"], "templating.list")
            .iter()
            .filter(|v| v["type"] == "query")
        {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("variable query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .expect("label_values(metric, label)");
            let (sel, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
            exprs.push((
                format!("variable {}", v["name"]),
                sel.to_string(),
                format!("{{{{{}}}}}", label.trim()),
            ));
        }
        assert!(!exprs.is_empty(), "{file}: no query");
        for (title, expr, legend) in exprs {
            let (metrics, labels) = promql_names(&expr);
            assert!(
                !metrics.is_empty(),
                "{file}: `{title}`: no metric in {expr}"
            );
            let mut known = target_labels.clone();
            for m in &metrics {
                let l = exposed.get(m).unwrap_or_else(|| {
                    panic!("{file}: `{title}` queries {m}, which /metrics does not expose. Exposed: {:?}", exposed.keys().collect::<Vec<_>>())
                });
                known.extend(l.iter().cloned());
                used.insert(m.clone());
            }
            for l in &labels {
                assert!(
                    known.contains(l),
                    "{file}: `{title}`: label `{l}` is not a label of {metrics:?} ({known:?})"
                );
            }
            let mut rest = legend.as_str();
            while let Some(start) = rest.find("{{") {
                let end = rest[start..].find("}}").map_or(rest.len(), |e| start + e);
                let l = rest[start + 2..end].trim();
                assert!(
                    known.contains(l),
                    "{file}: `{title}`: legend uses `{l}`, not a label of {metrics:?}"
                );
                rest = &rest[end.min(rest.len())..];
                if rest.len() >= 2 {
                    rest = &rest[2..];
                }
            }
        }
    }
    // Pipeline health at a glance: these families must be on a dashboard.
    for m in [
        "gpusiem_ingest_rows_total",
        "gpusiem_ingest_quarantined_total",
        "gpusiem_detect_findings_total",
        "gpusiem_pipeline_batch_failures_total",
        "gpusiem_store_flush_failures_total",
        "gpusiem_delivery_queued",
        "gpusiem_delivery_delivered_total",
        "gpusiem_delivery_dead_lettered_total",
        "gpusiem_delivery_dropped_total",
        "gpusiem_api_requests_total",
        "gpusiem_api_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(m), "no dashboard shows {m}");
    }
}

#[test]
fn promql_scanner_finds_metrics_and_labels() {
    let (m, l) = promql_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(gpusiem_api_request_duration_seconds_bucket{job=~"$job", x="a,b}"}[$__rate_interval]))) / on (job) group_left up"#,
    );
    assert_eq!(
        m,
        BTreeSet::from([
            "gpusiem_api_request_duration_seconds_bucket".to_string(),
            "up".to_string()
        ])
    );
    assert_eq!(
        l,
        ["job", "le", "route", "x"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        output_fields(
            "dev=%fd.name img=%container.image.repository:%container.image.tag a=%proc.aname[2] end %evt.type."
        ),
        [
            "container.image.repository",
            "container.image.tag",
            "evt.type",
            "fd.name",
            "proc.aname[2]"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
}

// ---------------------------------------------------------------------------------------------
// Probes under the production TLS settings
// ---------------------------------------------------------------------------------------------

/// The kubelet's HTTPS probes present no client certificate. With `server.client_ca_file` set
/// (the production config: Falco and the audit webhook authenticate by certificate), the
/// listener must still complete such handshakes for `/healthz` and `/readyz` (the routes are
/// open; every other route still needs a token or a verified certificate): the production
/// config's `client_cert` mode, run with a throwaway CA and certificate, must allow it.
#[tokio::test]
async fn kubelet_style_probes_pass_with_client_certificates_configured() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().expect("tempdir");
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let production = config();
    assert!(
        production.server.client_ca_file.is_some(),
        "the production config uses client certificates"
    );
    let mode = serde_json::to_value(production.server.client_cert).expect("mode");
    let config = dir.path().join("gpusiem.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\nclient_ca_file = {:?}\nclient_cert = {}\n",
            dir.path().join("data"),
            cert,
            key,
            cert,
            mode
        ),
    )
    .expect("write config");
    let mut child = std::process::Command::new(gpusiem_tests::gpusiem_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gpusiem starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v["listening"].as_str().map(str::to_string));

    gpusiem_ingest::source::install_crypto_provider();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let mut results = Vec::new();
    if let Some(addr) = &addr {
        for path in ["/healthz", "/readyz"] {
            let r = client.get(format!("https://{addr}{path}")).send().await;
            results.push((
                path,
                r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}")),
            ));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(addr.is_some(), "gpusiem did not start: {line}");
    for (path, r) in results {
        assert_eq!(
            r,
            Ok(200),
            "GET {path} without a client certificate, as the kubelet probes"
        );
    }
}
