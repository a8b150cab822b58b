//! `k8s_audit` rows → inventory changes.
//!
//! | request (core group only)                              | effect                        |
//! |--------------------------------------------------------|-------------------------------|
//! | `create pods`                                          | insert from `responseObject` (it has the name and uid a `generateName` create lacks), else `requestObject` |
//! | `create pods/binding`, `create bindings`               | node := the binding's target  |
//! | `update`/`patch pods[/status,/ephemeralcontainers,…]`  | refresh from `responseObject` |
//! | `delete pods`, `create pods/eviction`                  | deleted at the event time     |
//! | `deletecollection pods`                                | each pod in the response deleted |
//!
//! A row counts only when the request succeeded: a 2xx `response_code`, or none with stage
//! `ResponseComplete`. Each request counts once: its stages (`RequestReceived`,
//! `ResponseComplete`) and redeliveries share a key. The key is the audit ID *with* the
//! request's verb, object and receive time, because a client may send its own `Audit-ID`
//! header: reusing one must not hide a second pod create behind the first.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::array::{Array, AsArray, Int32Array, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{Int32Type, TimestampNanosecondType};
use arrow::record_batch::RecordBatch;
use gpusiem_ingest::schema::{self, k8s_audit};
use serde_json::Value;

use super::{Inventory, PodInfo, pod};

/// Requests remembered for de-duplication (their stages arrive within seconds).
const MAX_SEEN: usize = 65_536;

/// Keys of requests already applied; bounded, oldest forgotten first.
#[derive(Debug, Default)]
pub(super) struct Seen {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Seen {
    /// Whether `key` is new (and remembers it).
    fn first_time(&mut self, key: u64) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// The columns the inventory reads.
struct Columns<'a> {
    ts: &'a TimestampNanosecondArray,
    audit_id: &'a StringArray,
    stage: &'a StringArray,
    verb: &'a StringArray,
    resource: &'a StringArray,
    subresource: &'a StringArray,
    api_group: &'a StringArray,
    namespace: &'a StringArray,
    name: &'a StringArray,
    pod: &'a StringArray,
    pod_uid: &'a StringArray,
    node: &'a StringArray,
    request_received: &'a TimestampNanosecondArray,
    response_code: &'a Int32Array,
    request_object: &'a StringArray,
    response_object: &'a StringArray,
}

impl<'a> Columns<'a> {
    /// The columns, or the name of the first one missing or mistyped.
    fn of(batch: &'a RecordBatch) -> Result<Self, &'static str> {
        let s = |name: &'static str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or(name)
        };
        let t = |name: &'static str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
                .ok_or(name)
        };
        Ok(Columns {
            ts: t(schema::TS)?,
            audit_id: s(k8s_audit::AUDIT_ID)?,
            stage: s(k8s_audit::STAGE)?,
            verb: s(k8s_audit::VERB)?,
            resource: s(k8s_audit::RESOURCE)?,
            subresource: s(k8s_audit::SUBRESOURCE)?,
            api_group: s(k8s_audit::API_GROUP)?,
            namespace: s(schema::NAMESPACE)?,
            name: s(k8s_audit::NAME)?,
            pod: s(schema::POD)?,
            pod_uid: s(schema::POD_UID)?,
            node: s(schema::NODE)?,
            request_received: t(k8s_audit::REQUEST_RECEIVED)?,
            response_code: batch
                .column_by_name(k8s_audit::RESPONSE_CODE)
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
                .ok_or(k8s_audit::RESPONSE_CODE)?,
            request_object: s(k8s_audit::REQUEST_OBJECT)?,
            response_object: s(k8s_audit::RESPONSE_OBJECT)?,
        })
    }
}

/// A non-null, non-empty string cell.
fn cell(a: &StringArray, row: usize) -> Option<&str> {
    (a.is_valid(row) && !a.value(row).is_empty()).then(|| a.value(row))
}

/// A JSON text cell, parsed (`None` when absent or not JSON).
fn json(a: &StringArray, row: usize) -> Option<Value> {
    cell(a, row).and_then(|t| serde_json::from_str(t).ok())
}

/// What a row does to the inventory.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Create,
    Bind,
    Refresh,
    Delete,
    DeleteCollection,
}

pub(super) fn apply(inv: &mut Inventory, batch: &RecordBatch) {
    let cols = match Columns::of(batch) {
        Ok(c) => c,
        Err(column) => {
            tracing::warn!(
                column,
                "k8s_audit batch lacks a column; inventory not updated"
            );
            return;
        }
    };
    for row in 0..batch.num_rows() {
        apply_row(inv, &cols, row);
    }
}

fn apply_row(inv: &mut Inventory, c: &Columns<'_>, row: usize) {
    let Some(resource) = cell(c.resource, row) else {
        return;
    };
    // `pods` of another group (metrics.k8s.io PodMetrics) are not pods.
    if !matches!(resource, "pods" | "bindings") || cell(c.api_group, row).is_some() {
        return;
    }
    let code = c
        .response_code
        .is_valid(row)
        .then(|| c.response_code.value(row));
    let stage = cell(c.stage, row);
    let succeeded = match code {
        Some(code) => (200..300).contains(&code),
        None => stage == Some("ResponseComplete"),
    };
    if !succeeded || !c.ts.is_valid(row) {
        return;
    }
    let Some(verb) = cell(c.verb, row) else {
        return;
    };
    let sub = cell(c.subresource, row);
    let action = match (resource, verb, sub) {
        ("pods", "create", None) => Action::Create,
        ("pods", _, Some("binding")) | ("bindings", "create", None) => Action::Bind,
        ("pods", "update" | "patch", _) => Action::Refresh,
        ("pods", "delete", None) | ("pods", "create", Some("eviction")) => Action::Delete,
        ("pods", "deletecollection", None) => Action::DeleteCollection,
        _ => return,
    };

    let namespace = cell(c.namespace, row);
    let name = cell(c.pod, row).or_else(|| cell(c.name, row));
    let mut key = DefaultHasher::new();
    (
        cell(c.audit_id, row),
        verb,
        resource,
        sub,
        namespace,
        name,
        c.request_received
            .is_valid(row)
            .then(|| c.request_received.value(row)),
    )
        .hash(&mut key);
    if !inv.audit.first_time(key.finish()) {
        return;
    }

    let ts = c.ts.value(row);
    let uid = cell(c.pod_uid, row);
    match action {
        Action::Create | Action::Refresh => {
            // The response is the pod as stored (name, uid, defaults, mutations by admission
            // webhooks); the request is what the client asked for.
            let from_response = json(c.response_object, row);
            let from_request = match action {
                Action::Create => json(c.request_object, row),
                _ => None,
            };
            let Some(mut info) = [from_response, from_request]
                .into_iter()
                .flatten()
                .find_map(|o| {
                    o.get("spec")
                        .is_some()
                        .then(|| pod::parse(&o, ts))
                        .flatten()
                })
            else {
                return;
            };
            fill_identity(&mut info, uid, namespace, name);
            inv.upsert(info);
        }
        Action::Bind => {
            let binding = json(c.request_object, row);
            let meta = |k: &str| {
                binding
                    .as_ref()
                    .and_then(|b| b.pointer(&format!("/metadata/{k}")))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            let node = cell(c.node, row).or_else(|| {
                binding
                    .as_ref()
                    .and_then(|b| b.pointer("/target/name"))
                    .and_then(Value::as_str)
            });
            let (Some(node), Some(ns), Some(name)) = (
                node,
                namespace.or_else(|| meta("namespace")),
                name.or_else(|| meta("name")),
            ) else {
                return;
            };
            inv.bind(uid.or_else(|| meta("uid")), ns, name, node, ts);
        }
        Action::Delete => {
            let response = json(c.response_object, row);
            // A delete answers with the pod (now terminating): for a pod created before
            // gpusiem started, that is the first and last time its facts are seen, and
            // late metrics within the grace period still need them.
            let mut info = response
                .as_ref()
                .filter(|o| o.get("spec").is_some())
                .and_then(|o| pod::parse(o, ts));
            if let Some(info) = &mut info {
                fill_identity(info, uid, namespace, name);
            }
            let uid = uid.map(str::to_string).or_else(|| {
                info.as_ref()
                    .map(|i| i.uid.clone())
                    .filter(|u| !u.is_empty())
            });
            let (ns, name) = match (namespace, name, &info) {
                (Some(ns), Some(name), _) => (ns.to_string(), name.to_string()),
                (_, _, Some(i)) if !i.namespace.is_empty() && !i.name.is_empty() => {
                    (i.namespace.clone(), i.name.clone())
                }
                _ => return,
            };
            if let Some(info) = info
                && inv.lookup(uid.as_deref(), Some(&ns), Some(&name)).is_none()
            {
                inv.upsert(info);
            }
            inv.mark_deleted(uid.as_deref(), &ns, &name, ts);
        }
        Action::DeleteCollection => {
            let Some(response) = json(c.response_object, row) else {
                return;
            };
            for item in response
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(mut info) = pod::parse(item, ts) else {
                    continue;
                };
                fill_identity(&mut info, None, namespace, None);
                if info.name.is_empty() {
                    continue;
                }
                let uid = Some(info.uid.as_str()).filter(|u| !u.is_empty());
                inv.mark_deleted(uid, &info.namespace, &info.name, ts);
            }
        }
    }
}

/// Fills what the object lacks (a `generateName` request, a namespace implied by the URL)
/// from the audit row.
fn fill_identity(
    info: &mut PodInfo,
    uid: Option<&str>,
    namespace: Option<&str>,
    name: Option<&str>,
) {
    if info.uid.is_empty()
        && let Some(uid) = uid
    {
        info.uid = uid.to_string();
    }
    if info.namespace.is_empty()
        && let Some(ns) = namespace
    {
        info.namespace = ns.to_string();
    }
    if info.name.is_empty()
        && let Some(name) = name
    {
        info.name = name.to_string();
    }
}
