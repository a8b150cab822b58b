//! The field-mapping table: Sigma field names → how to read them from a row of our tables.
//!
//! Rules name fields the way their source does: the audit `Event` (`verb`,
//! `objectRef.resource`, `user.username`, `requestObject.spec.containers.image`), Falco's output
//! fields (`proc.name`, `fd.name`, `k8s.pod.name`), or the finding (`detector`, `severity`).
//! Typed columns are read directly; other fields are looked up in the verbatim JSON the decoders
//! keep (`request_object`, `output_fields`, `annotations`, `evidence`), walking arrays (a path
//! through a list matches if any element matches). `gpusiem.pod.*` fields come from the pod
//! inventory.

use std::borrow::Cow;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type, UInt8Type};
use gpusiem_ingest::Stream;
use gpusiem_ingest::schema::{self, falco_events as fe, k8s_audit as ka};

use crate::finding::columns as fc;
use crate::inventory::{Inventory, PodInfo};

/// The table a rule reads (its Sigma `logsource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// `product: kubernetes, service: audit`.
    K8sAudit,
    /// `product: falco`.
    Falco,
    /// `product: gpusiem, service: findings` — findings of detectors and other rules.
    Findings,
}

impl LogSource {
    /// Table name.
    pub fn table(self) -> &'static str {
        match self {
            LogSource::K8sAudit => "k8s_audit",
            LogSource::Falco => "falco_events",
            LogSource::Findings => "findings",
        }
    }
}

/// A fact about the row's pod, from the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodFact {
    /// `gpusiem.pod.role`.
    Role,
    /// `gpusiem.pod.gpu_request` (total GPUs requested).
    GpuRequest,
    /// `gpusiem.pod.privileged` (any privileged container).
    Privileged,
    /// `gpusiem.pod.image` (every container image).
    Image,
    /// `gpusiem.pod.host_pid` (`spec.hostPID`).
    HostPid,
    /// `gpusiem.pod.host_path` (any `hostPath` volume).
    HostPath,
    /// `gpusiem.pod.nvidia_visible_devices` (every container's `NVIDIA_VISIBLE_DEVICES`).
    NvidiaVisibleDevices,
    /// `gpusiem.pod.service_account`.
    ServiceAccount,
}

/// How to read one field. Columns are named here and bound to their index in the log
/// source's schema by [`resolve`], so matching never looks a column up by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// A string column.
    Str(Col),
    /// A list-of-strings column.
    List(Col),
    /// An integer column.
    Int(Col),
    /// A path inside a JSON-text column.
    Json {
        /// The column holding JSON text.
        column: Col,
        /// Keys to walk (arrays are walked element by element).
        path: Vec<String>,
    },
    /// `responseStatus.code` compared with `ALLOW`/`FORBID`: the authorization decision.
    Decision(Col),
    /// From the inventory.
    Pod(PodFact),
    /// `gpusiem.namespace.gpu_pods`: live pods of the row's namespace that requested a GPU.
    NamespaceGpuPods,
    /// `gpusiem.user.service_account_roles`: for a service-account user
    /// (`system:serviceaccount:<ns>:<name>`), the roles of the live pods running as it.
    ServiceAccountRoles,
}

/// A column: its name and its index in the log source's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Col {
    /// Column name.
    pub name: &'static str,
    /// Index in the schema.
    pub index: usize,
}

impl LogSource {
    /// The schema rows of this source follow.
    pub fn schema(self) -> arrow::datatypes::SchemaRef {
        match self {
            LogSource::K8sAudit => Stream::K8sAudit.schema(),
            LogSource::Falco => Stream::FalcoEvents.schema(),
            LogSource::Findings => crate::finding::schema(),
        }
    }

    /// The column `name` of this source.
    pub fn col(self, name: &'static str) -> Col {
        let index = self
            .schema()
            .index_of(name)
            .expect("field-mapping columns exist in their schema");
        Col { name, index }
    }
}

/// A field access before its columns are bound.
enum Named {
    Str(&'static str),
    List(&'static str),
    Int(&'static str),
    Json {
        column: &'static str,
        path: Vec<String>,
    },
    Pod(PodFact),
    NamespaceGpuPods,
    ServiceAccountRoles,
}

/// Maps a Sigma field name of `source` to its access, or explains why it cannot be read.
pub fn resolve(source: LogSource, field: &str) -> Result<Access, String> {
    Ok(match named(source, field)? {
        Named::Str(c) => Access::Str(source.col(c)),
        Named::List(c) => Access::List(source.col(c)),
        Named::Int(c) => Access::Int(source.col(c)),
        Named::Json { column, path } => Access::Json {
            column: source.col(column),
            path,
        },
        Named::Pod(f) => Access::Pod(f),
        Named::NamespaceGpuPods => Access::NamespaceGpuPods,
        Named::ServiceAccountRoles => Access::ServiceAccountRoles,
    })
}

/// The authorization-decision access of audit rows (`responseStatus.code: ALLOW`).
pub fn decision() -> Access {
    Access::Decision(LogSource::K8sAudit.col(ka::DECISION))
}

fn named(source: LogSource, field: &str) -> Result<Named, String> {
    match field {
        "gpusiem.namespace.gpu_pods" => return Ok(Named::NamespaceGpuPods),
        "gpusiem.user.service_account_roles" if source == LogSource::K8sAudit => {
            return Ok(Named::ServiceAccountRoles);
        }
        _ => {}
    }
    if let Some(fact) = field.strip_prefix("gpusiem.pod.") {
        return Ok(Named::Pod(match fact {
            "role" => PodFact::Role,
            "gpu_request" => PodFact::GpuRequest,
            "privileged" => PodFact::Privileged,
            "image" => PodFact::Image,
            "host_pid" => PodFact::HostPid,
            "host_path" => PodFact::HostPath,
            "nvidia_visible_devices" => PodFact::NvidiaVisibleDevices,
            "service_account" => PodFact::ServiceAccount,
            _ => {
                return Err(format!(
                    "unknown inventory field `{field}` (role, gpu_request, privileged, image, host_pid, host_path, nvidia_visible_devices, service_account)"
                ));
            }
        }));
    }
    if let Some(a) = entity(field) {
        return Ok(a);
    }
    match source {
        LogSource::K8sAudit => audit(field),
        LogSource::Falco => Ok(falco(field)),
        LogSource::Findings => findings(field),
    }
}

fn entity(field: &str) -> Option<Named> {
    Some(Named::Str(match field {
        "cluster" => schema::CLUSTER,
        "node" => schema::NODE,
        "namespace" => schema::NAMESPACE,
        "pod" => schema::POD,
        "pod_uid" => schema::POD_UID,
        "container" => schema::CONTAINER,
        "gpu_uuid" => schema::GPU_UUID,
        _ => return None,
    }))
}

fn json(column: &'static str, path: &str) -> Named {
    Named::Json {
        column,
        path: path.split('.').map(str::to_string).collect(),
    }
}

fn audit(field: &str) -> Result<Named, String> {
    Ok(match field {
        "verb" => Named::Str(ka::VERB),
        "stage" => Named::Str(ka::STAGE),
        "level" => Named::Str(ka::LEVEL),
        "auditID" => Named::Str(ka::AUDIT_ID),
        "requestURI" => Named::Str(ka::REQUEST_URI),
        "userAgent" => Named::Str(ka::USER_AGENT),
        "user.username" => Named::Str(ka::USER),
        "user.groups" => Named::List(ka::GROUPS),
        "impersonatedUser.username" => Named::Str(ka::IMPERSONATED_USER),
        "sourceIPs" => Named::List(ka::SOURCE_IPS),
        "objectRef.resource" => Named::Str(ka::RESOURCE),
        "objectRef.subresource" => Named::Str(ka::SUBRESOURCE),
        "objectRef.namespace" => Named::Str(schema::NAMESPACE),
        "objectRef.name" => Named::Str(ka::NAME),
        "objectRef.apiGroup" | "apiGroup" => Named::Str(ka::API_GROUP),
        "responseStatus.code" => Named::Int(ka::RESPONSE_CODE),
        "responseStatus.reason" => Named::Str(ka::RESPONSE_REASON),
        // SigmaHQ writes bare `hostPath` / `capabilities` for "the pod spec has one".
        "hostPath" => json(ka::REQUEST_OBJECT, "spec.volumes.hostPath"),
        "capabilities" => json(
            ka::REQUEST_OBJECT,
            "spec.containers.securityContext.capabilities",
        ),
        _ => {
            if let Some(rest) = field.strip_prefix("annotations.") {
                return Ok(Named::Json {
                    column: ka::ANNOTATIONS,
                    path: vec![rest.to_string()],
                });
            }
            if let Some(rest) = field.strip_prefix("requestObject.") {
                return Ok(json(ka::REQUEST_OBJECT, rest));
            }
            if let Some(rest) = field.strip_prefix("responseObject.") {
                return Ok(json(ka::RESPONSE_OBJECT, rest));
            }
            if let Some(rest) = field.strip_prefix("user.") {
                return Ok(json(ka::USER_INFO, rest));
            }
            return Err(format!("unknown audit field `{field}`"));
        }
    })
}

fn falco(field: &str) -> Named {
    match field {
        "rule" => Named::Str(fe::RULE),
        "priority" => Named::Str(fe::PRIORITY),
        "source" => Named::Str(fe::SOURCE),
        "output" => Named::Str(fe::OUTPUT),
        "tags" => Named::List(fe::TAGS),
        "hostname" => Named::Str(schema::NODE),
        "k8s.ns.name" => Named::Str(schema::NAMESPACE),
        "k8s.pod.name" => Named::Str(schema::POD),
        "k8s.pod.uid" => Named::Str(schema::POD_UID),
        "container.name" => Named::Str(schema::CONTAINER),
        "container.id" => Named::Str(fe::CONTAINER_ID),
        "container.image.repository" => Named::Str(fe::IMAGE),
        "container.image.tag" => Named::Str(fe::IMAGE_TAG),
        "proc.name" => Named::Str(fe::PROC_NAME),
        "proc.exepath" => Named::Str(fe::PROC_EXEPATH),
        "proc.cmdline" => Named::Str(fe::PROC_CMDLINE),
        "proc.pname" => Named::Str(fe::PROC_PNAME),
        "user.name" => Named::Str(fe::USER_NAME),
        "user.uid" => Named::Int(fe::USER_UID),
        "fd.name" => Named::Str(fe::FD_NAME),
        "evt.type" => Named::Str(fe::EVT_TYPE),
        "evt.time" => Named::Int(fe::EVT_TIME),
        // Any other Falco field is read from output_fields by its exact name.
        other => Named::Json {
            column: fe::OUTPUT_FIELDS,
            path: vec![other.to_string()],
        },
    }
}

fn findings(field: &str) -> Result<Named, String> {
    Ok(match field {
        "id" => Named::Str(fc::ID),
        "detector" => Named::Str(fc::DETECTOR),
        "severity" => Named::Str(fc::SEVERITY),
        "severity_rank" => Named::Int(fc::SEVERITY_RANK),
        "status" => Named::Str(fc::STATUS),
        "summary" => Named::Str(fc::SUMMARY),
        "role" => Named::Str(fc::ROLE),
        "mitre" => Named::List(fc::MITRE),
        _ => match field.strip_prefix("evidence.") {
            Some(rest) => json(fc::EVIDENCE, rest),
            None => return Err(format!("unknown findings field `{field}`")),
        },
    })
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// Text.
    Str(Cow<'a, str>),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// One batch's columns, downcast once, plus per-row caches.
pub struct Rows<'a> {
    batch: &'a RecordBatch,
    inventory: &'a Inventory,
    /// String columns, downcast once per batch (None for other types).
    strings: Vec<Option<&'a StringArray>>,
    json: Vec<(usize, usize, Option<TopLevel<'a>>)>,
    pod: Option<(usize, Option<&'a PodInfo>)>,
}

impl<'a> Rows<'a> {
    /// Wraps a batch.
    pub fn new(batch: &'a RecordBatch, inventory: &'a Inventory) -> Self {
        let strings = batch
            .columns()
            .iter()
            .map(|c| c.as_string_opt::<i32>())
            .collect();
        Rows {
            batch,
            inventory,
            strings,
            json: Vec::new(),
            pod: None,
        }
    }

    /// The string value of column `index` at `row` (the hot path of rule matching).
    #[inline]
    pub fn str_at(&self, index: usize, row: usize) -> Option<&'a str> {
        let c = self.strings.get(index).copied().flatten()?;
        if c.is_null(row) {
            None
        } else {
            Some(c.value(row))
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        self.batch.column_by_name(name)
    }

    /// A string column's value, by name (for the few look-ups outside rule matching).
    pub fn str(&self, name: &str, row: usize) -> Option<&'a str> {
        self.str_col(self.column(name)?, row)
    }

    fn str_col(&self, c: &'a ArrayRef, row: usize) -> Option<&'a str> {
        if c.is_null(row) {
            return None;
        }
        match c.data_type() {
            DataType::Utf8 => Some(c.as_string::<i32>().value(row)),
            _ => None,
        }
    }

    /// An integer column's value, by name.
    pub fn int(&self, name: &str, row: usize) -> Option<i64> {
        self.int_col(self.column(name)?, row)
    }

    fn int_col(&self, c: &ArrayRef, row: usize) -> Option<i64> {
        if c.is_null(row) {
            return None;
        }
        match c.data_type() {
            DataType::Int64 => Some(c.as_primitive::<Int64Type>().value(row)),
            DataType::Int32 => Some(i64::from(c.as_primitive::<Int32Type>().value(row))),
            DataType::UInt8 => Some(i64::from(c.as_primitive::<UInt8Type>().value(row))),
            DataType::Timestamp(_, _) => Some(
                c.as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                    .value(row),
            ),
            _ => None,
        }
    }

    /// Calls `f` with each value of `access` at `row` until it returns true; returns whether it
    /// did. No call at all means the field is absent or null.
    pub fn any(
        &mut self,
        access: &Access,
        row: usize,
        f: &mut dyn FnMut(&Val<'_>) -> bool,
    ) -> bool {
        match access {
            Access::Str(c) | Access::Decision(c) => self
                .str_at(c.index, row)
                .is_some_and(|s| f(&Val::Str(Cow::Borrowed(s)))),
            Access::Int(c) => self
                .int_col(self.batch.column(c.index), row)
                .is_some_and(|i| f(&Val::Int(i))),
            Access::List(c) => {
                let col = self.batch.column(c.index);
                if col.is_null(row) {
                    return false;
                }
                let list = col.as_list::<i32>().value(row);
                let items = list.as_string::<i32>();
                (0..items.len())
                    .any(|i| items.is_valid(i) && f(&Val::Str(Cow::Borrowed(items.value(i)))))
            }
            Access::Json { column, path } => {
                let Some(top) = self.json(column.index, row) else {
                    return false;
                };
                let Some((first, rest)) = path.split_first() else {
                    return false;
                };
                let Some(raw) = top.get(first) else {
                    return false;
                };
                walk_raw(raw, rest, f)
            }
            Access::NamespaceGpuPods => {
                let Some(ns) = self.str(schema::NAMESPACE, row) else {
                    return false;
                };
                let n = self
                    .inventory
                    .live_pods_in(ns)
                    .filter(|p| p.gpu_request() > 0)
                    .count();
                f(&Val::Int(n as i64))
            }
            Access::ServiceAccountRoles => {
                let Some(user) = self.str(ka::USER, row) else {
                    return false;
                };
                let Some((ns, sa)) = user
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|r| r.split_once(':'))
                else {
                    return false;
                };
                let inventory = self.inventory;
                inventory
                    .live_pods_in(ns)
                    .filter(|p| p.service_account.as_deref() == Some(sa))
                    .any(|p| {
                        f(&Val::Str(Cow::Borrowed(
                            inventory.role_of(Some(p)).0.as_str(),
                        )))
                    })
            }
            Access::Pod(fact) => {
                let Some(pod) = self.pod(row) else {
                    return false;
                };
                match fact {
                    PodFact::Role => {
                        let (role, _) = self.inventory.role_of(Some(pod));
                        f(&Val::Str(Cow::Borrowed(role.as_str())))
                    }
                    PodFact::GpuRequest => f(&Val::Int(i64::from(pod.gpu_request()))),
                    PodFact::Privileged => {
                        f(&Val::Bool(pod.containers.iter().any(|c| c.privileged)))
                    }
                    PodFact::Image => pod
                        .containers
                        .iter()
                        .any(|c| f(&Val::Str(Cow::Borrowed(c.image.as_str())))),
                    PodFact::HostPid => f(&Val::Bool(pod.host_pid)),
                    PodFact::HostPath => f(&Val::Bool(pod.host_path)),
                    PodFact::NvidiaVisibleDevices => pod
                        .containers
                        .iter()
                        .filter_map(|c| c.nvidia_visible_devices.as_deref())
                        .any(|v| f(&Val::Str(Cow::Borrowed(v)))),
                    PodFact::ServiceAccount => pod
                        .service_account
                        .as_deref()
                        .is_some_and(|s| f(&Val::Str(Cow::Borrowed(s)))),
                }
            }
        }
    }

    /// The role of the row's pod, and why.
    pub fn role(&mut self, row: usize) -> (crate::role::Role, String) {
        let pod = self.pod(row);
        self.inventory.role_of(pod)
    }

    /// The row's pod in the inventory.
    pub fn pod(&mut self, row: usize) -> Option<&'a PodInfo> {
        if let Some((r, p)) = self.pod
            && r == row
        {
            return p;
        }
        let p = self.inventory.lookup(
            self.str(schema::POD_UID, row),
            self.str(schema::NAMESPACE, row),
            self.str(schema::POD, row),
        );
        self.pod = Some((row, p));
        p
    }

    /// The top-level entries of a JSON-object column, parsed once per row and column; values
    /// stay unparsed until a rule walks into them.
    fn json(&mut self, column: usize, row: usize) -> Option<&TopLevel<'a>> {
        let i = match self
            .json
            .iter()
            .position(|(c, r, _)| *c == column && *r == row)
        {
            Some(i) => i,
            None => {
                let parsed = self
                    .str_at(column, row)
                    .and_then(|t| serde_json::from_str::<TopLevel<'a>>(t).ok());
                // Keep at most one parsed document per column: rows are visited in order.
                self.json.retain(|(c, _, _)| *c != column);
                self.json.push((column, row, parsed));
                self.json.len() - 1
            }
        };
        self.json[i].2.as_ref()
    }
}

/// The top-level entries of a JSON object, keys borrowed where unescaped, values raw.
pub struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'a> TopLevel<'a> {
    fn get(&self, key: &str) -> Option<&'a serde_json::value::RawValue> {
        // Duplicate keys: the last wins, as in every JSON object model.
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    out.push((k.0, map.next_value()?));
                }
                Ok(TopLevel(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// Walks `path` from a raw JSON value: scalars are read without building a tree; objects and
/// arrays are parsed only when the path goes into them.
fn walk_raw(
    raw: &serde_json::value::RawValue,
    path: &[String],
    f: &mut dyn FnMut(&Val<'_>) -> bool,
) -> bool {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') if path.is_empty() => {
            serde_json::from_str::<Key<'_>>(text).is_ok_and(|k| f(&Val::Str(k.0)))
        }
        Some(b'{' | b'[') => {
            serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| walk(&v, path, f))
        }
        Some(b't') if path.is_empty() => f(&Val::Bool(true)),
        Some(b'f') if path.is_empty() => f(&Val::Bool(false)),
        Some(b'n') => false,
        Some(_) if path.is_empty() => match text.parse::<i64>() {
            Ok(i) => f(&Val::Int(i)),
            Err(_) => text.parse::<f64>().is_ok_and(|x| f(&Val::Float(x))),
        },
        _ => false,
    }
}

/// Walks `path` through objects, fanning out over arrays; calls `f` on every leaf reached.
fn walk(value: &serde_json::Value, path: &[String], f: &mut dyn FnMut(&Val<'_>) -> bool) -> bool {
    use serde_json::Value as J;
    match (value, path.split_first()) {
        (J::Array(items), _) => items.iter().any(|v| walk(v, path, f)),
        (J::Object(map), Some((key, rest))) => map.get(key).is_some_and(|v| walk(v, rest, f)),
        (_, Some(_)) => false,
        (J::Null, None) => false,
        (J::String(s), None) => f(&Val::Str(Cow::Borrowed(s))),
        (J::Bool(b), None) => f(&Val::Bool(*b)),
        (J::Number(n), None) => match n.as_i64() {
            Some(i) => f(&Val::Int(i)),
            None => f(&Val::Float(n.as_f64().unwrap_or(f64::NAN))),
        },
        (J::Object(_), None) => f(&Val::Str(Cow::Owned(value.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_audit_names_resolve() {
        let a = LogSource::K8sAudit;
        assert_eq!(
            resolve(a, "objectRef.resource"),
            Ok(Access::Str(a.col(ka::RESOURCE)))
        );
        assert_eq!(
            resolve(a, "apiGroup"),
            Ok(Access::Str(a.col(ka::API_GROUP)))
        );
        assert_eq!(
            resolve(a, "annotations.authorization.k8s.io/decision"),
            Ok(Access::Json {
                column: a.col(ka::ANNOTATIONS),
                path: vec!["authorization.k8s.io/decision".into()]
            })
        );
        assert!(resolve(a, "proc.name").is_err());
        let f = LogSource::Falco;
        assert_eq!(
            resolve(f, "fd.rport"),
            Ok(Access::Json {
                column: f.col(fe::OUTPUT_FIELDS),
                path: vec!["fd.rport".into()]
            })
        );
        assert_eq!(
            resolve(LogSource::Findings, "pod"),
            Ok(Access::Str(LogSource::Findings.col(schema::POD)))
        );
    }

    #[test]
    fn json_walk_fans_out_over_arrays() {
        let v: serde_json::Value =
            serde_json::json!({"spec": {"volumes": [{"name": "a"}, {"hostPath": {"path": "/"}}]}});
        let mut seen = Vec::new();
        walk(
            &v,
            &[
                "spec".into(),
                "volumes".into(),
                "hostPath".into(),
                "path".into(),
            ],
            &mut |x| {
                seen.push(x.clone().into_owned_string());
                false
            },
        );
        assert_eq!(seen, ["/"]);
    }

    impl Val<'_> {
        fn into_owned_string(self) -> String {
            match self {
                Val::Str(s) => s.into_owned(),
                Val::Int(i) => i.to_string(),
                Val::Float(f) => f.to_string(),
                Val::Bool(b) => b.to_string(),
            }
        }
    }
}
