//! Pod inventory: what gpusiem knows about each pod, and the role that follows.
//!
//! Fed by Kubernetes audit events (pod create, binding, delete), by the `kubernetes` source
//! (list and watch of `/api/v1/pods`) and by config. Keyed by pod UID and by namespace/name.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::role::Role;

/// Role matchers and bounds, on top of the built-in ecosystem conventions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Image prefixes of serving pods (`nvcr.io/nvidia/tritonserver`).
    pub serving_images: Vec<String>,
    /// Labels (all must match) of serving pods.
    pub serving_labels: BTreeMap<String, String>,
    /// Image prefixes of training pods.
    pub training_images: Vec<String>,
    /// Labels of training pods.
    pub training_labels: BTreeMap<String, String>,
    /// Image prefixes of notebook pods.
    pub notebook_images: Vec<String>,
    /// Labels of notebook pods.
    pub notebook_labels: BTreeMap<String, String>,
    /// Image prefixes of batch pods.
    pub batch_images: Vec<String>,
    /// Labels of batch pods.
    pub batch_labels: BTreeMap<String, String>,
    /// Seconds a deleted pod is kept (late metrics still find it).
    pub deleted_grace_secs: Option<u64>,
    /// Most pods kept; the oldest deleted ones go first.
    pub max_pods: Option<usize>,
}

/// A container's GPU-relevant facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// `resources.requests["nvidia.com/gpu"]` (or the limit when only that is set), MIG
    /// resources (`nvidia.com/mig-*`) counted too.
    pub gpu_request: u32,
    /// `securityContext.privileged`.
    pub privileged: bool,
    /// `NVIDIA_VISIBLE_DEVICES` from `env`, if set.
    pub nvidia_visible_devices: Option<String>,
}

/// An owner reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    /// `apiVersion` (`apps/v1`, `serving.kserve.io/v1beta1`).
    pub api_version: String,
    /// `kind` (`ReplicaSet`, `InferenceService`, `PyTorchJob`).
    pub kind: String,
    /// Owner name.
    pub name: String,
}

/// What is known about one pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Pod UID (may be empty when only the name is known).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Owner chain, nearest first (ReplicaSet, then the Deployment it implies).
    pub owners: Vec<Owner>,
    /// Containers (init containers included).
    pub containers: Vec<ContainerInfo>,
    /// Service account.
    pub service_account: Option<String>,
    /// Node, from `spec.nodeName` or a binding.
    pub node: Option<String>,
    /// `spec.hostPID`.
    pub host_pid: bool,
    /// Any `hostPath` volume.
    pub host_path: bool,
    /// Event time the pod was first seen (ns).
    pub created_at: i64,
    /// Event time the pod was deleted (ns).
    pub deleted_at: Option<i64>,
}

impl PodInfo {
    /// Total GPUs requested by the pod's containers.
    pub fn gpu_request(&self) -> u32 {
        self.containers.iter().map(|c| c.gpu_request).sum()
    }
}

/// The inventory.
#[derive(Debug, Default)]
pub struct Inventory {
    config: InventoryConfig,
}

impl Inventory {
    /// An empty inventory with `config`'s matchers.
    pub fn new(config: InventoryConfig) -> Self {
        Inventory { config }
    }

    /// Applies the pod-related rows of a `k8s_audit` batch (create, binding, update/patch with a
    /// response object, delete).
    pub fn apply_audit(&mut self, _batch: &RecordBatch) {
        let _ = &self.config;
    }

    /// Inserts or replaces a pod's facts (from the Kubernetes API, config or tests).
    pub fn upsert(&mut self, _pod: PodInfo) {}

    /// Marks a pod deleted at event time `ts`.
    pub fn mark_deleted(&mut self, _uid: Option<&str>, _namespace: &str, _name: &str, _ts: i64) {}

    /// Looks a pod up by UID, falling back to namespace/name.
    pub fn lookup(&self, _uid: Option<&str>, _namespace: Option<&str>, _name: Option<&str>) -> Option<&PodInfo> {
        None
    }

    /// The pod's role and why. `None` (no facts) is [`Role::Unknown`].
    pub fn role_of(&self, pod: Option<&PodInfo>) -> (Role, String) {
        match pod {
            None => (Role::Unknown, "no facts about the pod".to_string()),
            Some(_) => (Role::Unknown, "no matcher applies".to_string()),
        }
    }

    /// Evicts pods deleted longer than the grace period before `now` (event time).
    pub fn evict(&mut self, _now: i64) {}

    /// Number of pods held.
    pub fn len(&self) -> usize {
        0
    }

    /// Whether no pod is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
