//! Pod inventory: what gpusiem knows about each pod, and the role that follows.
//!
//! Fed by Kubernetes audit events (pod create, binding, update/patch, delete, eviction), by the
//! `kubernetes` source (list and watch of `/api/v1/pods`, through [`Inventory::apply_pod_event`])
//! and by config. Keyed by pod UID and by namespace/name.
//!
//! ```text
//!  k8s_audit batch ─► audit::apply ─┐  (2xx only, once per request)
//!  PodEvent (kubernetes source) ────┼─► upsert / mark_deleted ─► pods (by uid, by ns/name)
//!  Pod JSON (config, tests) ────────┘                              │
//!                                             lookup ─► role_of ◄──┘ config matchers, then
//!                                                                    roles::* conventions
//! ```
//!
//! Bounded: a deleted pod is kept for `deleted_grace_secs` of *event* time (late metrics and
//! Falco events still find it), then [`Inventory::evict`] drops it; beyond `max_pods` the
//! oldest deleted pods go first, then the oldest pods. Nothing here reads the wall clock.
//!
//! Only pods whose spec was seen are held: a binding or delete for an unknown pod is kept
//! aside briefly (audit events of HA API servers arrive out of order) and applied when the
//! pod's create arrives, but never creates a pod on its own: an entry without containers
//! would look like a pod that requested no GPU.

mod audit;
mod pod;
mod roles;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use arrow::record_batch::RecordBatch;
use gpusiem_ingest::sources::kubernetes::{PodEvent, PodEventKind};
use serde::{Deserialize, Serialize};

pub use self::pod::{VALUE_FROM, is_gpu_resource};
use crate::error::Error;
use crate::role::Role;

/// Default of [`InventoryConfig::deleted_grace_secs`].
pub const DEFAULT_DELETED_GRACE_SECS: u64 = 600;
/// Default of [`InventoryConfig::max_pods`].
pub const DEFAULT_MAX_PODS: usize = 200_000;

/// Role matchers and bounds, on top of the built-in ecosystem conventions.
///
/// Images are prefixes of the image reference (`docker.io/` and `library/` implied, case
/// ignored). A prefix may end inside the repository's last name component
/// (`nvcr.io/nvidia/triton` matches `nvcr.io/nvidia/tritonserver:24.05-py3`) but never inside
/// a registry or namespace component (`ghcr.io/acme` does not match `ghcr.io/acme-evil/x`).
/// Labels match when all of a role's labels are present with these values. Roles are tried
/// in the order serving, training, notebook, batch, before any built-in matcher.
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
    /// Seconds a deleted pod is kept (late metrics still find it). Default 600.
    pub deleted_grace_secs: Option<u64>,
    /// Most pods kept; the oldest deleted ones go first. Default 200 000.
    pub max_pods: Option<usize>,
}

impl InventoryConfig {
    /// Checks the settings; every problem with its dotted path (`inventory.serving_images[2]`).
    pub fn validate(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        let err = |path: String, message: &str| Error::Config {
            path,
            message: message.to_string(),
        };
        for (field, images) in [
            ("serving_images", &self.serving_images),
            ("training_images", &self.training_images),
            ("notebook_images", &self.notebook_images),
            ("batch_images", &self.batch_images),
        ] {
            for (i, image) in images.iter().enumerate() {
                if image.trim().is_empty() {
                    errors.push(err(
                        format!("inventory.{field}[{i}]"),
                        "an empty image prefix would match every pod",
                    ));
                } else if image.trim().chars().any(char::is_whitespace) {
                    errors.push(err(
                        format!("inventory.{field}[{i}]"),
                        "an image reference has no whitespace",
                    ));
                }
            }
        }
        for (field, labels) in [
            ("serving_labels", &self.serving_labels),
            ("training_labels", &self.training_labels),
            ("notebook_labels", &self.notebook_labels),
            ("batch_labels", &self.batch_labels),
        ] {
            if labels.keys().any(|k| k.trim().is_empty()) {
                errors.push(err(
                    format!("inventory.{field}"),
                    "a label key must not be empty",
                ));
            }
        }
        if self.max_pods == Some(0) {
            errors.push(err(
                "inventory.max_pods".into(),
                "must be at least 1 (omit it for the default)",
            ));
        }
        // The grace period is compared in nanoseconds of event time (i64).
        if self
            .deleted_grace_secs
            .is_some_and(|s| s > i64::MAX.unsigned_abs() / 1_000_000_000)
        {
            errors.push(err(
                "inventory.deleted_grace_secs".into(),
                "is too large (at most about 292 years)",
            ));
        }
        errors
    }

    fn grace_nanos(&self) -> i64 {
        let secs = self
            .deleted_grace_secs
            .unwrap_or(DEFAULT_DELETED_GRACE_SECS);
        i64::try_from(secs.saturating_mul(1_000_000_000)).unwrap_or(i64::MAX)
    }

    fn max_pods(&self) -> usize {
        self.max_pods.unwrap_or(DEFAULT_MAX_PODS).max(1)
    }
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
    /// `NVIDIA_VISIBLE_DEVICES` from `env`, if set ([`VALUE_FROM`] when set from `valueFrom`).
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
    /// Containers (init and ephemeral containers included).
    pub containers: Vec<ContainerInfo>,
    /// Service account.
    pub service_account: Option<String>,
    /// Node, from `spec.nodeName` or a binding.
    pub node: Option<String>,
    /// `spec.hostPID`.
    pub host_pid: bool,
    /// `spec.hostNetwork`.
    #[serde(default)]
    pub host_network: bool,
    /// Any `hostPath` volume.
    pub host_path: bool,
    /// Names of `spec.resourceClaims` (Dynamic Resource Allocation): such a pod may hold GPUs
    /// without requesting `nvidia.com/gpu`.
    #[serde(default)]
    pub resource_claims: Vec<String>,
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

    /// Whether anything about the pod's spec is known (containers, labels or owners).
    pub fn has_facts(&self) -> bool {
        !(self.containers.is_empty() && self.labels.is_empty() && self.owners.is_empty())
    }
}

/// Internal key of a held pod.
type Id = u64;

/// A binding or delete seen before the pod's create (see the module docs).
#[derive(Debug, Clone)]
struct Early {
    uid: Option<String>,
    /// Bound node and the binding's event time.
    node: Option<(String, i64)>,
    deleted_at: Option<i64>,
    /// Latest event time, for eviction.
    ts: i64,
}

/// Most early bindings/deletes kept while waiting for their pod.
const MAX_EARLY: usize = 10_000;

/// The inventory.
#[derive(Debug, Default)]
pub struct Inventory {
    config: InventoryConfig,
    matchers: roles::Matchers,
    pods: HashMap<Id, PodInfo>,
    // std's SipHash, not FxHash: pod names are chosen by whoever creates pods.
    by_uid: HashMap<String, Id>,
    by_name: HashMap<String, HashMap<String, Id>>,
    /// (created_at, id): the oldest pods, for the `max_pods` bound.
    by_created: BTreeSet<(i64, Id)>,
    /// (deleted_at, id): deleted pods in deletion order, for eviction.
    by_deleted: BTreeSet<(i64, Id)>,
    next_id: Id,
    /// Early bindings/deletes by namespace/name, and their arrival order.
    early: HashMap<(String, String), Early>,
    early_order: VecDeque<(i64, (String, String))>,
    audit: audit::Seen,
}

impl Inventory {
    /// An empty inventory with `config`'s matchers.
    pub fn new(config: InventoryConfig) -> Self {
        Inventory {
            matchers: roles::Matchers::new(&config),
            config,
            ..Inventory::default()
        }
    }

    /// Applies the pod-related rows of a `k8s_audit` batch (create, binding, update/patch with a
    /// response object, delete).
    ///
    /// Only successful requests count (a 2xx `responseStatus.code`, or none with stage
    /// `ResponseComplete`), each once however many stages and redeliveries carry it. A batch
    /// lacking the schema's columns (a bug upstream) is skipped with a warning.
    pub fn apply_audit(&mut self, batch: &RecordBatch) {
        audit::apply(self, batch);
    }

    /// Applies a Pod object (from the Kubernetes API, config or tests) seen at event time `ts`
    /// (ns): inserts the pod or refreshes its facts. Objects that are not pods, or name no pod,
    /// are ignored; so is a pod without `spec` that is not yet known (a tombstone).
    pub fn apply_pod_json(&mut self, pod: &serde_json::Value, ts: i64) {
        let Some(info) = PodInfo::from_pod_json(pod, ts) else {
            tracing::debug!("ignoring an object that is not a named pod");
            return;
        };
        if pod.get("spec").is_none() {
            // Metadata only: refresh nothing, create nothing.
            return;
        }
        self.upsert(info);
    }

    /// Applies one event of the `kubernetes` source, at its `observed_at` time.
    pub fn apply_pod_event(&mut self, event: &PodEvent) {
        self.apply_pod_json(&event.pod, event.observed_at);
        if event.kind == PodEventKind::Deleted {
            let meta = |k: &str| {
                event
                    .pod
                    .pointer(&format!("/metadata/{k}"))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
            };
            self.mark_deleted(
                Some(meta("uid")).filter(|u| !u.is_empty()),
                meta("namespace"),
                meta("name"),
                event.observed_at,
            );
        }
    }

    /// Inserts or replaces a pod's facts (from the Kubernetes API, config or tests).
    ///
    /// A pod already held (same UID, or same namespace/name without a conflicting UID) keeps
    /// its first-seen time, its node when the new facts name none, and its deletion. A pod
    /// with the namespace/name of a held pod but another UID is a new incarnation (a
    /// StatefulSet pod recreated): the old one is marked deleted at the new one's time.
    pub fn upsert(&mut self, pod: PodInfo) {
        if pod.uid.is_empty() && (pod.namespace.is_empty() || pod.name.is_empty()) {
            tracing::debug!("ignoring a pod with neither uid nor namespace/name");
            return;
        }
        let id = self.find(
            Some(pod.uid.as_str()),
            Some(pod.namespace.as_str()),
            Some(pod.name.as_str()),
        );
        match id {
            Some(id) => self.merge(id, pod),
            None => {
                self.insert(pod);
            }
        }
    }

    /// Marks a pod deleted at event time `ts`.
    ///
    /// The first deletion counts (a graceful delete is followed by the kubelet's final one).
    /// A delete for a pod not (yet) known is kept aside briefly, see the module docs.
    pub fn mark_deleted(&mut self, uid: Option<&str>, namespace: &str, name: &str, ts: i64) {
        match self.find(uid, Some(namespace), Some(name)) {
            Some(id) => self.set_deleted(id, ts),
            None => self.remember_early(uid, namespace, name, None, Some(ts), ts),
        }
    }

    /// Sets the node of a pod (a binding). A binding for a pod not (yet) known is kept aside
    /// briefly, see the module docs.
    pub fn bind(&mut self, uid: Option<&str>, namespace: &str, name: &str, node: &str, ts: i64) {
        if node.is_empty() {
            return;
        }
        match self.find(uid, Some(namespace), Some(name)) {
            Some(id) => {
                if let Some(p) = self.pods.get_mut(&id) {
                    p.node = Some(node.to_string());
                }
            }
            None => self.remember_early(uid, namespace, name, Some(node), None, ts),
        }
    }

    /// Looks a pod up by UID, falling back to namespace/name.
    ///
    /// The fallback refuses a pod held under that name with a *different* UID: that is another
    /// incarnation of the name, and its facts would be attributed to the wrong pod.
    pub fn lookup(
        &self,
        uid: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Option<&PodInfo> {
        self.find(uid, namespace, name)
            .and_then(|id| self.pods.get(&id))
    }

    /// The pod's role and why. `None` (no facts) is [`Role::Unknown`].
    pub fn role_of(&self, pod: Option<&PodInfo>) -> (Role, String) {
        match pod {
            None => (Role::Unknown, "no facts about the pod".to_string()),
            Some(p) => roles::role_of(&self.matchers, p),
        }
    }

    /// Evicts pods deleted longer than the grace period before `now` (event time).
    pub fn evict(&mut self, now: i64) {
        let cutoff = now.saturating_sub(self.config.grace_nanos());
        while let Some(&(deleted_at, id)) = self.by_deleted.first() {
            if deleted_at >= cutoff {
                break;
            }
            self.remove(id);
        }
        while let Some((ts, _)) = self.early_order.front() {
            if *ts >= cutoff {
                break;
            }
            self.pop_early();
        }
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pod held, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    /// Pods of `namespace` that are not deleted.
    pub fn live_pods_in(&self, namespace: &str) -> impl Iterator<Item = &PodInfo> {
        self.by_name
            .get(namespace)
            .into_iter()
            .flat_map(|names| names.values())
            .filter_map(|id| self.pods.get(id))
            .filter(|p| p.deleted_at.is_none())
    }

    // --- storage ---------------------------------------------------------------------------

    fn find(&self, uid: Option<&str>, namespace: Option<&str>, name: Option<&str>) -> Option<Id> {
        let uid = uid.filter(|u| !u.is_empty());
        if let Some(id) = uid.and_then(|u| self.by_uid.get(u)) {
            return Some(*id);
        }
        let (ns, name) = (namespace?, name.filter(|n| !n.is_empty())?);
        let id = *self.by_name.get(ns)?.get(name)?;
        let held = self.pods.get(&id)?;
        match uid {
            Some(u) if !held.uid.is_empty() && held.uid != u => None,
            _ => Some(id),
        }
    }

    fn insert(&mut self, mut pod: PodInfo) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        let key = (pod.namespace.clone(), pod.name.clone());
        if let Some(early) = self.early.remove(&key) {
            // It is this pod's when the UIDs agree; without a UID, when it happened after the
            // pod was created. A delete older than the create was for an earlier pod of the
            // same name (delete, then create again): applying it would hide a live pod.
            let uid_match = match (&early.uid, pod.uid.as_str()) {
                (Some(e), p) if !p.is_empty() => Some(e == p),
                _ => None,
            };
            let applies = |event_ts: i64| uid_match.unwrap_or(event_ts >= pod.created_at);
            if let Some((node, at)) = early.node
                && pod.node.is_none()
                && applies(at)
            {
                pod.node = Some(node);
            }
            if let Some(at) = early.deleted_at
                && applies(at)
            {
                pod.deleted_at = pod.deleted_at.or(Some(at));
            }
        }
        if !pod.name.is_empty() {
            let names = self.by_name.entry(pod.namespace.clone()).or_default();
            if let Some(old) = names.insert(pod.name.clone(), id) {
                // The name now belongs to a new pod: the old one is gone, whether or not its
                // delete was seen.
                self.set_deleted(old, pod.created_at);
            }
        }
        if !pod.uid.is_empty() {
            self.by_uid.insert(pod.uid.clone(), id);
        }
        self.by_created.insert((pod.created_at, id));
        if let Some(d) = pod.deleted_at {
            self.by_deleted.insert((d, id));
        }
        self.pods.insert(id, pod);
        self.enforce_capacity(id);
        id
    }

    fn merge(&mut self, id: Id, mut new: PodInfo) {
        let Some(old) = self.pods.get(&id) else {
            return;
        };
        new.created_at = new.created_at.min(old.created_at);
        if new.node.is_none() {
            new.node.clone_from(&old.node);
        }
        new.deleted_at = old.deleted_at.or(new.deleted_at);
        if new.uid.is_empty() {
            new.uid.clone_from(&old.uid);
        }
        if new.namespace.is_empty() || new.name.is_empty() {
            new.namespace.clone_from(&old.namespace);
            new.name.clone_from(&old.name);
        }
        if !new.has_facts() {
            // Identity only (a tombstone, a skeleton from a caller): keep what is known.
            let old = old.clone();
            new = PodInfo {
                uid: new.uid,
                node: new.node,
                created_at: new.created_at,
                deleted_at: new.deleted_at,
                ..old
            };
        }
        let (old_created, old_deleted, old_uid, old_ns, old_name) = (
            old.created_at,
            old.deleted_at,
            old.uid.clone(),
            old.namespace.clone(),
            old.name.clone(),
        );
        if old_created != new.created_at {
            self.by_created.remove(&(old_created, id));
            self.by_created.insert((new.created_at, id));
        }
        if old_deleted != new.deleted_at {
            if let Some(d) = old_deleted {
                self.by_deleted.remove(&(d, id));
            }
            if let Some(d) = new.deleted_at {
                self.by_deleted.insert((d, id));
            }
        }
        if old_uid != new.uid && !new.uid.is_empty() {
            self.by_uid.insert(new.uid.clone(), id);
        }
        if (old_ns.as_str(), old_name.as_str()) != (new.namespace.as_str(), new.name.as_str()) {
            self.unindex_name(&old_ns, &old_name, id);
            self.by_name
                .entry(new.namespace.clone())
                .or_default()
                .insert(new.name.clone(), id);
        }
        self.pods.insert(id, new);
    }

    fn set_deleted(&mut self, id: Id, ts: i64) {
        if let Some(p) = self.pods.get_mut(&id)
            && p.deleted_at.is_none()
        {
            p.deleted_at = Some(ts);
            self.by_deleted.insert((ts, id));
        }
    }

    fn remove(&mut self, id: Id) {
        let Some(p) = self.pods.remove(&id) else {
            return;
        };
        self.by_created.remove(&(p.created_at, id));
        if let Some(d) = p.deleted_at {
            self.by_deleted.remove(&(d, id));
        }
        if self.by_uid.get(&p.uid) == Some(&id) {
            self.by_uid.remove(&p.uid);
        }
        self.unindex_name(&p.namespace, &p.name, id);
    }

    fn unindex_name(&mut self, namespace: &str, name: &str, id: Id) {
        if let Some(names) = self.by_name.get_mut(namespace) {
            if names.get(name) == Some(&id) {
                names.remove(name);
            }
            if names.is_empty() {
                self.by_name.remove(namespace);
            }
        }
    }

    /// Over `max_pods`: drops the oldest deleted pods, then the oldest pods, never `keep`.
    fn enforce_capacity(&mut self, keep: Id) {
        let max = self.config.max_pods();
        let mut dropped = 0usize;
        while self.pods.len() > max {
            let victim = self
                .by_deleted
                .iter()
                .chain(self.by_created.iter())
                .map(|&(_, id)| id)
                .find(|&id| id != keep);
            match victim {
                Some(id) => self.remove(id),
                None => break,
            }
            dropped += 1;
        }
        if dropped > 0 {
            tracing::debug!(
                dropped,
                max_pods = max,
                "inventory full; dropped the oldest pods"
            );
        }
    }

    fn remember_early(
        &mut self,
        uid: Option<&str>,
        namespace: &str,
        name: &str,
        node: Option<&str>,
        deleted_at: Option<i64>,
        ts: i64,
    ) {
        if namespace.is_empty() || name.is_empty() {
            return;
        }
        let key = (namespace.to_string(), name.to_string());
        let entry = self.early.entry(key.clone()).or_insert_with(|| Early {
            uid: None,
            node: None,
            deleted_at: None,
            ts,
        });
        if entry.uid.is_none() {
            entry.uid = uid.filter(|u| !u.is_empty()).map(str::to_string);
        }
        if let Some(node) = node {
            entry.node = Some((node.to_string(), ts));
        }
        entry.deleted_at = entry.deleted_at.or(deleted_at);
        entry.ts = entry.ts.max(ts);
        self.early_order.push_back((ts, key));
        while self.early_order.len() > MAX_EARLY {
            self.pop_early();
        }
    }

    fn pop_early(&mut self) {
        if let Some((ts, key)) = self.early_order.pop_front()
            && self.early.get(&key).is_some_and(|e| e.ts == ts)
        {
            self.early.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
