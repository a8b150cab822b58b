//! Reading a Pod object (audit request/response object, Kubernetes API) into a [`PodInfo`].
//!
//! Only the facts that decide a pod's role and its GPU exposure are kept; everything else in
//! the object (status, probes, volumes other than `hostPath`) is dropped so that 200 000 pods
//! fit in a few hundred MiB.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ContainerInfo, Owner, PodInfo};

/// Marker stored in [`ContainerInfo::nvidia_visible_devices`] when the variable is set from
/// `valueFrom` (a ConfigMap, Secret or field): set, value unknown.
pub const VALUE_FROM: &str = "(valueFrom)";

/// Whether an extended-resource name hands out NVIDIA GPUs to the container: `nvidia.com/gpu`,
/// renamed shared replicas (`nvidia.com/gpu.shared`, time-slicing / MPS with `renameByDefault`)
/// and MIG slices (`nvidia.com/mig-1g.10gb`). Exactly the resources dcgm-exporter attributes
/// to pods (formats.md §1.4), plus the renamed shared ones it can be told about.
pub fn is_gpu_resource(name: &str) -> bool {
    name == "nvidia.com/gpu"
        || name.starts_with("nvidia.com/gpu.")
        || name.starts_with("nvidia.com/mig-")
}

impl PodInfo {
    /// Reads a Pod object. `ts` (event time, ns) becomes `created_at`. `None` when `pod` is
    /// not an object with `metadata` (a JSON patch, a `Status`) or names no pod (neither
    /// `metadata.uid` nor `metadata.name`).
    pub fn from_pod_json(pod: &Value, ts: i64) -> Option<PodInfo> {
        parse(pod, ts).filter(|p| !(p.uid.is_empty() && p.name.is_empty()))
    }
}

/// Reads a Pod object whose identity may be incomplete (an audit `requestObject` of a create
/// by `generateName` has neither name nor uid; the audit row may supply them). `None` when
/// `pod` is not a Pod.
pub(super) fn parse(pod: &Value, ts: i64) -> Option<PodInfo> {
    let meta = pod.get("metadata")?.as_object()?;
    if pod
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Pod")
    {
        return None;
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let uid = text(meta.get("uid"));
    let name = text(meta.get("name"));
    let labels: BTreeMap<String, String> = meta
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let owners = owners(meta.get("ownerReferences"), &labels);

    let spec = pod.get("spec");
    let field = |name: &str| spec.and_then(|s| s.get(name));
    let flag = |name: &str| field(name).and_then(Value::as_bool).unwrap_or(false);
    let mut containers = Vec::new();
    // Init and ephemeral (`kubectl debug`) containers run in the pod too: their images and
    // privileges matter as much as the main containers'.
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = field(list).and_then(Value::as_array) {
            containers.extend(cs.iter().map(container));
        }
    }
    let node = field("nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let service_account = field("serviceAccountName")
        .or_else(|| field("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let volumes = field("volumes").and_then(Value::as_array);
    let host_path = volumes.is_some_and(|vs| vs.iter().any(|v| v.get("hostPath").is_some()));
    let resource_claims = field("resourceClaims")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();

    Some(PodInfo {
        uid,
        namespace: text(meta.get("namespace")),
        name,
        labels,
        owners,
        containers,
        service_account,
        node,
        host_pid: flag("hostPID"),
        host_network: flag("hostNetwork"),
        host_path,
        resource_claims,
        created_at: ts,
        deleted_at: None,
    })
}

/// The owner chain: the controller reference first, then the others, then the Deployment a
/// ReplicaSet implies.
fn owners(refs: Option<&Value>, labels: &BTreeMap<String, String>) -> Vec<Owner> {
    let mut refs: Vec<(&Value, Owner)> = refs
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let s = |k: &str| {
                        r.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    (
                        r,
                        Owner {
                            api_version: s("apiVersion"),
                            kind: s("kind"),
                            name: s("name"),
                        },
                    )
                })
                .filter(|(_, o)| !o.kind.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // Stable: the controller moves to the front, the rest keep their order.
    refs.sort_by_key(|(r, _)| {
        !r.get("controller")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    });
    let mut owners: Vec<Owner> = refs.into_iter().map(|(_, o)| o).collect();

    // Pods name only their direct owner. A ReplicaSet made by the Deployment controller is
    // named `<deployment>-<hash>` and stamps `pod-template-hash` on its pods; a bare
    // ReplicaSet has no such label, so nothing is inferred for it.
    if labels.contains_key("pod-template-hash")
        && let Some(rs) = owners
            .iter()
            .find(|o| o.kind == "ReplicaSet" && o.api_version.starts_with("apps/"))
        && let Some((deployment, _)) = rs.name.rsplit_once('-')
        && !deployment.is_empty()
    {
        let inferred = Owner {
            api_version: rs.api_version.clone(),
            kind: "Deployment".to_string(),
            name: deployment.to_string(),
        };
        owners.push(inferred);
    }
    owners
}

fn container(c: &Value) -> ContainerInfo {
    let s = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let resources = c.get("resources");
    let requests = resources
        .and_then(|r| r.get("requests"))
        .and_then(Value::as_object);
    let limits = resources
        .and_then(|r| r.get("limits"))
        .and_then(Value::as_object);
    // A GPU resource named in requests or limits counts once: for extended resources a
    // request defaults to the limit, and the two must be equal when both are set.
    let mut names: Vec<&String> = requests
        .into_iter()
        .chain(limits)
        .flat_map(|m| m.keys())
        .filter(|k| is_gpu_resource(k))
        .collect();
    names.sort();
    names.dedup();
    let gpu_request = names
        .into_iter()
        .map(|name| {
            let q = requests
                .and_then(|m| m.get(name))
                .or_else(|| limits.and_then(|m| m.get(name)));
            q.map_or(0, count)
        })
        .fold(0u32, u32::saturating_add);

    let nvidia_visible_devices = c
        .get("env")
        .and_then(Value::as_array)
        .and_then(|env| {
            // The kubelet applies env entries in order; a repeated name keeps the last value.
            env.iter()
                .rev()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("NVIDIA_VISIBLE_DEVICES"))
        })
        .map(|e| match e.get("value").and_then(Value::as_str) {
            Some(v) => v.to_string(),
            None if e.get("valueFrom").is_some() => VALUE_FROM.to_string(),
            None => String::new(),
        });

    ContainerInfo {
        name: s("name"),
        image: s("image"),
        gpu_request,
        privileged: c
            .pointer("/securityContext/privileged")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        nvidia_visible_devices,
    }
}

/// A count quantity (`"1"`, `2`, `"1000m"`, `"1k"`). A GPU resource that is present but
/// unreadable counts as 1: the pod asked for a GPU, and calling it GPU-less would make it
/// look like an intruder.
fn count(q: &Value) -> u32 {
    let parsed = match q {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0).ceil() as u64)),
        Value::String(s) => parse_quantity(s.trim()),
        _ => None,
    };
    match parsed {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => 1,
    }
}

/// Kubernetes quantity → a whole count, rounded up. Handles the forms used for countable
/// resources: plain integers and decimals, milli (`m`) and the decimal / binary multipliers.
fn parse_quantity(s: &str) -> Option<u64> {
    let (number, multiplier): (&str, f64) = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1.0));
    if let Ok(n) = number.parse::<u64>()
        && multiplier == 1.0
    {
        return Some(n);
    }
    let value = number.parse::<f64>().ok()? * multiplier;
    (value.is_finite() && value >= 0.0).then(|| value.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities_round_up_and_unreadable_gpu_quantities_count_as_one() {
        assert_eq!(count(&json!("1")), 1);
        assert_eq!(count(&json!("8")), 8);
        assert_eq!(count(&json!(2)), 2);
        assert_eq!(count(&json!("0")), 0);
        assert_eq!(count(&json!("1000m")), 1);
        assert_eq!(count(&json!("500m")), 1);
        assert_eq!(count(&json!("2k")), 2000);
        assert_eq!(count(&json!("1.5")), 2);
        assert_eq!(count(&json!("lots")), 1);
        assert_eq!(count(&json!(null)), 1);
    }

    #[test]
    fn gpu_resources_are_the_ones_dcgm_exporter_attributes() {
        assert!(is_gpu_resource("nvidia.com/gpu"));
        assert!(is_gpu_resource("nvidia.com/gpu.shared"));
        assert!(is_gpu_resource("nvidia.com/mig-1g.10gb"));
        assert!(!is_gpu_resource("nvidia.com/gpumem"));
        assert!(!is_gpu_resource("amd.com/gpu"));
        assert!(!is_gpu_resource("cpu"));
    }

    #[test]
    fn a_container_counts_requests_or_limits_once_and_sums_mig_slices() {
        let c = container(&json!({
            "name": "main", "image": "x",
            "resources": {
                "requests": {"nvidia.com/gpu": "1", "cpu": "4"},
                "limits": {"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "2", "memory": "8Gi"}
            },
            "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "0"},
                    {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
            "securityContext": {"privileged": true}
        }));
        assert_eq!(c.gpu_request, 3);
        assert!(c.privileged);
        assert_eq!(c.nvidia_visible_devices.as_deref(), Some("all"));

        let c = container(&json!({"name": "x", "image": "y",
            "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {}}}]}));
        assert_eq!(c.gpu_request, 0);
        assert!(!c.privileged);
        assert_eq!(c.nvidia_visible_devices.as_deref(), Some(VALUE_FROM));
    }

    #[test]
    fn a_replicaset_with_a_template_hash_implies_its_deployment() {
        let pod = json!({"metadata": {"name": "web-5cdcc99dbf-rgw6z", "uid": "u",
            "labels": {"pod-template-hash": "5cdcc99dbf"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "o"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5cdcc99dbf", "controller": true}
            ]}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let p = PodInfo::from_pod_json(&pod, 1).expect("pod");
        let kinds: Vec<(&str, &str)> = p
            .owners
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("ReplicaSet", "web-5cdcc99dbf"),
                ("Other", "o"),
                ("Deployment", "web")
            ]
        );

        // Without the label (a bare ReplicaSet) nothing is inferred.
        let mut bare = pod.clone();
        bare["metadata"]["labels"] = json!({});
        let p = PodInfo::from_pod_json(&bare, 1).expect("pod");
        assert!(p.owners.iter().all(|o| o.kind != "Deployment"));
    }

    #[test]
    fn non_pods_and_nameless_objects_are_refused() {
        assert!(PodInfo::from_pod_json(&json!([{"op": "replace"}]), 1).is_none());
        assert!(
            PodInfo::from_pod_json(&json!({"kind": "Status", "metadata": {}, "code": 200}), 1)
                .is_none()
        );
        assert!(PodInfo::from_pod_json(&json!({"metadata": {"generateName": "x-"}}), 1).is_none());
        let p = PodInfo::from_pod_json(&json!({"metadata": {"name": "x"}}), 7).expect("pod");
        assert_eq!(
            (p.name.as_str(), p.created_at, p.containers.len()),
            ("x", 7, 0)
        );
    }

    #[test]
    fn pod_level_flags_volumes_claims_and_identity_are_read() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"nodeName": "n1", "serviceAccount": "legacy", "hostPID": true, "hostNetwork": true,
                     "volumes": [{"name": "dev", "hostPath": {"path": "/dev"}}],
                     "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}],
                     "initContainers": [{"name": "init", "image": "busybox"}],
                     "containers": [{"name": "main", "image": "app"}],
                     "ephemeralContainers": [{"name": "debugger", "image": "nicolaka/netshoot",
                                              "securityContext": {"privileged": true}}]}});
        let p = PodInfo::from_pod_json(&pod, 1).expect("pod");
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(p.service_account.as_deref(), Some("legacy"));
        assert!(p.host_pid && p.host_network && p.host_path);
        assert_eq!(p.resource_claims, ["gpu"]);
        let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["init", "main", "debugger"]);
        assert!(p.containers[2].privileged);
    }
}
