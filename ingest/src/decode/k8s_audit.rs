//! Kubernetes audit events → `k8s_audit`, one row per event and stage.
//!
//! Accepts a bare `Event`, an `EventList` (the webhook backend's body), JSON lines of either
//! (the log backend), `audit.k8s.io/v1` and `v1beta1`, the AKS diagnostic-log wrapper
//! (`properties.log` as a JSON string or as an object) and GKE's Cloud Audit Log shape
//! (`protoPayload`). `requestObject`/`responseObject` are kept verbatim as JSON text.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Builder, ListBuilder, StringBuilder, TimestampNanosecondBuilder,
};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::columns::{Entity, EntityColumns, JStr, append_list, non_empty, strings};
use super::json_lines::{RecordError, for_each_record, parse};
use super::{DecodeContext, Decoded, Location, Quarantined, Reason};
use crate::schema::{Stream, k8s_audit};
use crate::time::parse_rfc3339_nanos;

/// Decodes Kubernetes audit events in any of the accepted envelopes.
pub fn decode(input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    let estimate = memchr::memchr_iter(b'\n', input).count() + 1;
    let mut b = Builder::with_capacity(estimate, cx);
    let mut quarantined = Vec::new();
    for_each_record(
        input,
        cx,
        Stream::K8sAudit,
        &mut quarantined,
        |text, _location, q| b.record(text, q),
    );
    Ok(Decoded {
        batch: b.finish()?,
        quarantined,
    })
}

/// Every shape we accept, read in one pass; which fields are set decides the envelope.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(borrow, default)]
    kind: Option<JStr<'a>>,
    #[serde(borrow, default)]
    api_version: Option<JStr<'a>>,
    #[serde(borrow, default)]
    level: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "auditID")]
    audit_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    stage: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "requestURI")]
    request_uri: Option<JStr<'a>>,
    #[serde(borrow, default)]
    verb: Option<JStr<'a>>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    impersonated_user: Option<UserInfo<'a>>,
    #[serde(borrow, default, rename = "sourceIPs")]
    source_ips: Option<Vec<JStr<'a>>>,
    #[serde(borrow, default)]
    user_agent: Option<JStr<'a>>,
    #[serde(borrow, default)]
    object_ref: Option<ObjectRef<'a>>,
    #[serde(borrow, default)]
    response_status: Option<Status<'a>>,
    #[serde(borrow, default)]
    request_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_received_timestamp: Option<JStr<'a>>,
    #[serde(borrow, default)]
    stage_timestamp: Option<JStr<'a>>,
    /// v1beta1 events and GKE entries.
    #[serde(borrow, default)]
    timestamp: Option<JStr<'a>>,
    #[serde(borrow, default)]
    annotations: Option<&'a RawValue>,
    /// `EventList`.
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
    /// AKS diagnostic logs.
    #[serde(borrow, default)]
    properties: Option<AksProperties<'a>>,
    /// GKE Cloud Audit Logs.
    #[serde(borrow, default)]
    proto_payload: Option<GkePayload<'a>>,
    #[serde(borrow, default)]
    labels: Option<&'a RawValue>,
    #[serde(borrow, default)]
    operation: Option<GkeOperation<'a>>,
    #[serde(borrow, default)]
    insert_id: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct UserInfo<'a> {
    #[serde(borrow, default)]
    username: Option<JStr<'a>>,
    #[serde(borrow, default)]
    groups: Option<Vec<JStr<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    #[serde(borrow, default)]
    resource: Option<JStr<'a>>,
    #[serde(borrow, default)]
    namespace: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    uid: Option<JStr<'a>>,
    #[serde(borrow, default)]
    api_group: Option<JStr<'a>>,
    #[serde(borrow, default)]
    subresource: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct Status<'a> {
    #[serde(default)]
    code: Option<i32>,
    #[serde(borrow, default)]
    reason: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct AksProperties<'a> {
    #[serde(borrow, default)]
    log: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkePayload<'a> {
    #[serde(borrow, default)]
    authentication_info: Option<GkeAuthn<'a>>,
    #[serde(borrow, default)]
    method_name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    resource_name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    request_metadata: Option<GkeRequestMetadata<'a>>,
    #[serde(default)]
    status: Option<GkeStatus>,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkeAuthn<'a> {
    #[serde(borrow, default)]
    principal_email: Option<JStr<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GkeRequestMetadata<'a> {
    #[serde(borrow, default)]
    caller_ip: Option<JStr<'a>>,
    #[serde(borrow, default)]
    caller_supplied_user_agent: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct GkeStatus {
    #[serde(default)]
    code: Option<i32>,
}

#[derive(Deserialize)]
struct GkeOperation<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(default)]
    last: Option<bool>,
}

/// `authorization.k8s.io/*` annotations.
#[derive(Deserialize, Default)]
struct Authz<'a> {
    #[serde(borrow, default, rename = "authorization.k8s.io/decision")]
    decision: Option<JStr<'a>>,
    #[serde(borrow, default, rename = "authorization.k8s.io/reason")]
    reason: Option<JStr<'a>>,
}

/// `metadata.name`/`uid` of a pod object, and a binding's `target.name`.
#[derive(Deserialize, Default)]
struct ObjectMeta<'a> {
    #[serde(borrow, default)]
    metadata: Option<MetaFields<'a>>,
    #[serde(borrow, default)]
    target: Option<MetaFields<'a>>,
}

#[derive(Deserialize, Default)]
struct MetaFields<'a> {
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    uid: Option<JStr<'a>>,
}

/// Which wrapper an event came in.
#[derive(Clone, Copy)]
enum Envelope_ {
    Event,
    EventList,
    Aks,
    Gke,
}

impl Envelope_ {
    fn as_str(self) -> &'static str {
        match self {
            Envelope_::Event => "event",
            Envelope_::EventList => "event_list",
            Envelope_::Aks => "aks",
            Envelope_::Gke => "gke",
        }
    }
}

struct Builder {
    entity: EntityColumns,
    event_id: StringBuilder,
    request_received: TimestampNanosecondBuilder,
    audit_id: StringBuilder,
    stage: StringBuilder,
    level: StringBuilder,
    verb: StringBuilder,
    user: StringBuilder,
    groups: ListBuilder<StringBuilder>,
    impersonated_user: StringBuilder,
    source_ips: ListBuilder<StringBuilder>,
    user_agent: StringBuilder,
    resource: StringBuilder,
    subresource: StringBuilder,
    name: StringBuilder,
    api_group: StringBuilder,
    request_uri: StringBuilder,
    response_code: Int32Builder,
    response_reason: StringBuilder,
    decision: StringBuilder,
    authz_reason: StringBuilder,
    annotations: StringBuilder,
    user_info: StringBuilder,
    request_object: StringBuilder,
    response_object: StringBuilder,
    envelope: StringBuilder,
}

impl Builder {
    fn with_capacity(n: usize, cx: &DecodeContext) -> Self {
        Builder {
            entity: EntityColumns::with_capacity(n, cx.cluster.clone()),
            event_id: strings(n, 56),
            request_received: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            audit_id: strings(n, 36),
            stage: strings(n, 16),
            level: strings(n, 8),
            verb: strings(n, 6),
            user: strings(n, 32),
            groups: ListBuilder::with_capacity(strings(n * 2, 20), n),
            impersonated_user: strings(n, 0),
            source_ips: ListBuilder::with_capacity(strings(n, 14), n),
            user_agent: strings(n, 48),
            resource: strings(n, 8),
            subresource: strings(n, 0),
            name: strings(n, 24),
            api_group: strings(n, 8),
            request_uri: strings(n, 64),
            response_code: Int32Builder::with_capacity(n),
            response_reason: strings(n, 0),
            decision: strings(n, 5),
            authz_reason: strings(n, 32),
            annotations: strings(n, 96),
            user_info: strings(n, 96),
            request_object: strings(n, 0),
            response_object: strings(n, 0),
            envelope: strings(n, 5),
        }
    }

    /// One top-level record: an Event, an EventList, or a wrapped event.
    fn record(&mut self, text: &str, q: &mut Vec<Quarantined>) -> Result<(), RecordError> {
        let env: Envelope<'_> = parse(text)?;
        if let Some(items) = &env.items {
            if env.kind.as_ref().is_some_and(|k| k.as_str() != "EventList") {
                return Err((Reason::UnknownShape, "`items` outside an EventList".into()));
            }
            check_api_version(&env)?;
            for (i, item) in items.iter().enumerate() {
                let raw = item.get();
                let result =
                    parse::<Envelope<'_>>(raw).and_then(|e| self.event(&e, Envelope_::EventList));
                if let Err((reason, detail)) = result {
                    q.push(Quarantined::new(
                        Stream::K8sAudit,
                        Location::Item(i as u64),
                        reason,
                        detail,
                        raw.as_bytes(),
                    ));
                }
            }
            return Ok(());
        }
        if let Some(log) = env.properties.as_ref().and_then(|p| p.log) {
            let inner: Cow<'_, str> = match log.get().as_bytes().first() {
                Some(b'"') => parse::<JStr<'_>>(log.get())?.0,
                _ => Cow::Borrowed(log.get()),
            };
            let event: Envelope<'_> = parse(&inner)?;
            return self.event(&event, Envelope_::Aks);
        }
        if let Some(payload) = &env.proto_payload {
            return self.gke(&env, payload);
        }
        self.event(&env, Envelope_::Event)
    }

    fn event(&mut self, e: &Envelope<'_>, envelope: Envelope_) -> Result<(), RecordError> {
        check_api_version(e)?;
        if e.kind.as_ref().is_some_and(|k| k.as_str() != "Event") {
            return Err((
                Reason::UnknownShape,
                "`kind` is neither Event nor EventList".into(),
            ));
        }
        let audit_id = non_empty(&e.audit_id)
            .ok_or((Reason::MissingField, "missing field `auditID`".to_string()))?;
        let ts_text = e
            .stage_timestamp
            .as_ref()
            .or(e.request_received_timestamp.as_ref())
            .or(e.timestamp.as_ref());
        let ts = ts_text
            .ok_or((
                Reason::MissingField,
                "missing field `stageTimestamp`".to_string(),
            ))
            .and_then(|t| timestamp(t.as_str(), "stageTimestamp"))?;
        let received = match &e.request_received_timestamp {
            Some(t) => Some(timestamp(t.as_str(), "requestReceivedTimestamp")?),
            None => None,
        };
        let user: Option<UserInfo<'_>> = match e.user {
            Some(raw) if raw.get() != "null" => Some(parse(raw.get())?),
            _ => None,
        };
        let authz: Authz<'_> = match e.annotations {
            Some(raw) if raw.get() != "null" => parse(raw.get())?,
            _ => Authz::default(),
        };
        let obj = e.object_ref.as_ref();
        let resource = obj.and_then(|o| non_empty(&o.resource));
        let subresource = obj.and_then(|o| non_empty(&o.subresource));
        let name = obj.and_then(|o| non_empty(&o.name));
        let uri = non_empty(&e.request_uri);

        // For pods, the row's pod is the object itself; a create by generateName only names it
        // in the response, and a binding names the node it was scheduled to.
        let is_pod = resource == Some("pods");
        let meta: ObjectMeta<'_> = match (is_pod, name, e.response_object) {
            (true, None, Some(raw)) => parse(raw.get()).unwrap_or_default(),
            _ => ObjectMeta::default(),
        };
        let binding: ObjectMeta<'_> = match (is_pod, subresource, e.request_object) {
            (true, Some("binding"), Some(raw)) => parse(raw.get()).unwrap_or_default(),
            _ => ObjectMeta::default(),
        };
        let response_meta = meta.metadata.as_ref();
        let pod = if is_pod {
            name.or(response_meta.and_then(|m| non_empty(&m.name)))
        } else {
            None
        };
        let pod_uid = if is_pod {
            obj.and_then(|o| non_empty(&o.uid))
                .or(response_meta.and_then(|m| non_empty(&m.uid)))
        } else {
            None
        };
        let container = if is_pod {
            uri.and_then(|u| query_param(u, "container"))
        } else {
            None
        };
        let node = binding.target.as_ref().and_then(|t| non_empty(&t.name));

        self.entity.append(
            ts,
            &Entity {
                node,
                namespace: obj.and_then(|o| non_empty(&o.namespace)),
                pod,
                pod_uid,
                container: container.as_deref(),
                gpu_uuid: None,
            },
        );
        let stage = non_empty(&e.stage);
        match stage {
            Some(stage) => self.event_id.append_value(format!("{audit_id}/{stage}")),
            None => self.event_id.append_value(audit_id),
        }
        self.request_received.append_option(received);
        self.audit_id.append_value(audit_id);
        self.stage.append_option(stage);
        self.level.append_option(non_empty(&e.level));
        self.verb.append_option(non_empty(&e.verb));
        self.user
            .append_option(user.as_ref().and_then(|u| non_empty(&u.username)));
        append_list(
            &mut self.groups,
            user.as_ref()
                .and_then(|u| u.groups.as_ref())
                .map(|g| g.iter().map(JStr::as_str)),
        );
        self.impersonated_user.append_option(
            e.impersonated_user
                .as_ref()
                .and_then(|u| non_empty(&u.username)),
        );
        append_list(
            &mut self.source_ips,
            e.source_ips
                .as_ref()
                .map(|ips| ips.iter().map(JStr::as_str)),
        );
        self.user_agent.append_option(non_empty(&e.user_agent));
        self.resource.append_option(resource);
        self.subresource.append_option(subresource);
        self.name.append_option(name.or(pod));
        self.api_group
            .append_option(obj.and_then(|o| o.api_group.as_ref()).map(JStr::as_str));
        self.request_uri.append_option(uri);
        self.response_code
            .append_option(e.response_status.as_ref().and_then(|s| s.code));
        self.response_reason.append_option(
            e.response_status
                .as_ref()
                .and_then(|s| non_empty(&s.reason)),
        );
        self.decision.append_option(non_empty(&authz.decision));
        self.authz_reason.append_option(non_empty(&authz.reason));
        self.annotations.append_option(raw_text(e.annotations));
        self.user_info.append_option(raw_text(e.user));
        self.request_object
            .append_option(raw_text(e.request_object));
        self.response_object
            .append_option(raw_text(e.response_object));
        self.envelope.append_value(envelope.as_str());
        Ok(())
    }

    /// GKE Cloud Audit Log entry: `protoPayload` with `methodName` `io.k8s.<group>.<version>.<resource>[.<sub>].<verb>`.
    fn gke(&mut self, env: &Envelope<'_>, p: &GkePayload<'_>) -> Result<(), RecordError> {
        let ts = env
            .timestamp
            .as_ref()
            .ok_or((
                Reason::MissingField,
                "missing field `timestamp`".to_string(),
            ))
            .and_then(|t| timestamp(t.as_str(), "timestamp"))?;
        let audit_id = env
            .operation
            .as_ref()
            .and_then(|o| non_empty(&o.id))
            .or(non_empty(&env.insert_id))
            .ok_or((
                Reason::MissingField,
                "missing field `operation.id`".to_string(),
            ))?;
        let method = non_empty(&p.method_name).ok_or((
            Reason::MissingField,
            "missing field `protoPayload.methodName`".to_string(),
        ))?;
        let verb = method.rsplit('.').next().filter(|v| !v.is_empty());
        let path = GkeResource::parse(non_empty(&p.resource_name).unwrap_or(""));
        let authz: Authz<'_> = match env.labels {
            Some(raw) if raw.get() != "null" => parse(raw.get())?,
            _ => Authz::default(),
        };
        let stage = match env.operation.as_ref().and_then(|o| o.last) {
            Some(false) => "ResponseStarted",
            _ => "ResponseComplete",
        };
        let is_pod = path.resource == Some("pods");
        self.entity.append(
            ts,
            &Entity {
                namespace: path.namespace,
                pod: if is_pod { path.name } else { None },
                ..Entity::default()
            },
        );
        self.event_id.append_value(format!("{audit_id}/{stage}"));
        self.request_received.append_null();
        self.audit_id.append_value(audit_id);
        self.stage.append_value(stage);
        self.level.append_null();
        self.verb.append_option(verb);
        self.user.append_option(
            p.authentication_info
                .as_ref()
                .and_then(|a| non_empty(&a.principal_email)),
        );
        append_list(&mut self.groups, None::<[&str; 0]>);
        self.impersonated_user.append_null();
        let ip = p
            .request_metadata
            .as_ref()
            .and_then(|m| non_empty(&m.caller_ip));
        append_list(&mut self.source_ips, ip.map(|ip| [ip]));
        self.user_agent.append_option(
            p.request_metadata
                .as_ref()
                .and_then(|m| non_empty(&m.caller_supplied_user_agent)),
        );
        self.resource.append_option(path.resource);
        self.subresource.append_option(path.subresource);
        self.name.append_option(path.name);
        self.api_group.append_option(path.group);
        self.request_uri
            .append_option(non_empty(&p.resource_name).map(|r| format!("/{r}")));
        self.response_code
            .append_option(p.status.as_ref().and_then(|s| s.code).map(grpc_to_http));
        self.response_reason.append_null();
        self.decision.append_option(non_empty(&authz.decision));
        self.authz_reason.append_option(non_empty(&authz.reason));
        self.annotations.append_option(raw_text(env.labels));
        self.user_info.append_null();
        self.request_object.append_option(raw_text(p.request));
        self.response_object.append_option(raw_text(p.response));
        self.envelope.append_value(Envelope_::Gke.as_str());
        Ok(())
    }

    fn finish(mut self) -> crate::Result<RecordBatch> {
        let mut columns = self.entity.finish();
        let rest: [ArrayRef; 25] = [
            Arc::new(self.event_id.finish()),
            Arc::new(self.request_received.finish()),
            Arc::new(self.audit_id.finish()),
            Arc::new(self.stage.finish()),
            Arc::new(self.level.finish()),
            Arc::new(self.verb.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.groups.finish()),
            Arc::new(self.impersonated_user.finish()),
            Arc::new(self.source_ips.finish()),
            Arc::new(self.user_agent.finish()),
            Arc::new(self.resource.finish()),
            Arc::new(self.subresource.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.api_group.finish()),
            Arc::new(self.request_uri.finish()),
            Arc::new(self.response_code.finish()),
            Arc::new(self.response_reason.finish()),
            Arc::new(self.decision.finish()),
            Arc::new(self.authz_reason.finish()),
            Arc::new(self.annotations.finish()),
            Arc::new(self.user_info.finish()),
            Arc::new(self.request_object.finish()),
            Arc::new(self.response_object.finish()),
            Arc::new(self.envelope.finish()),
        ];
        columns.extend(rest);
        RecordBatch::try_new(k8s_audit::schema(), columns).map_err(|source| {
            crate::Error::BuildBatch {
                stream: Stream::K8sAudit,
                source,
            }
        })
    }
}

fn check_api_version(e: &Envelope<'_>) -> Result<(), RecordError> {
    match non_empty(&e.api_version) {
        Some(v) if !v.starts_with("audit.k8s.io/") => Err((
            Reason::UnknownShape,
            "`apiVersion` is not audit.k8s.io/*".into(),
        )),
        _ => Ok(()),
    }
}

fn timestamp(s: &str, field: &str) -> Result<i64, RecordError> {
    parse_rfc3339_nanos(s).ok_or_else(|| {
        (
            Reason::InvalidTimestamp,
            format!("`{field}` is not an RFC 3339 timestamp"),
        )
    })
}

fn raw_text(v: Option<&RawValue>) -> Option<&str> {
    v.map(RawValue::get).filter(|s| *s != "null")
}

/// The first value of `key` in a request URI's query, percent-decoded.
fn query_param<'a>(uri: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') && !s.contains('+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// gRPC status code (Cloud Audit Logs) → the HTTP status the API server answered.
fn grpc_to_http(code: i32) -> i32 {
    match code {
        0 => 200,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        4 => 504,
        12 => 501,
        14 => 503,
        _ => 500,
    }
}

/// A GKE `resourceName`: `<group>/<version>/namespaces/<ns>/<resource>/<name>[/<sub>]`,
/// `<group>/<version>/<resource>/<name>` for cluster-scoped objects, or a non-resource path.
#[derive(Default)]
struct GkeResource<'a> {
    group: Option<&'a str>,
    namespace: Option<&'a str>,
    resource: Option<&'a str>,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

impl<'a> GkeResource<'a> {
    fn parse(path: &'a str) -> Self {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 3 {
            return GkeResource::default();
        }
        let group = if parts[0] == "core" { "" } else { parts[0] };
        let rest = &parts[2..];
        let (namespace, rest) = match rest {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(*ns), tail),
            _ => (None, rest),
        };
        GkeResource {
            group: Some(group),
            namespace,
            resource: rest.first().copied(),
            name: rest.get(1).copied(),
            subresource: rest.get(2).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;

    fn decode_str(s: &str) -> Decoded {
        decode(s.as_bytes(), &DecodeContext::new(0)).expect("decode")
    }

    fn col<'a>(d: &'a Decoded, name: &str) -> &'a arrow::array::StringArray {
        d.batch.column_by_name(name).expect(name).as_string::<i32>()
    }

    #[test]
    fn exec_with_websocket_get_keeps_the_subresource_and_container() {
        let d = decode_str(
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"a1","stage":"ResponseStarted","requestURI":"/api/v1/namespaces/ml/pods/infer-0/exec?command=sh\u0026container=triton\u0026stdin=true","verb":"get","user":{"username":"alice"},"objectRef":{"resource":"pods","namespace":"ml","name":"infer-0","subresource":"exec","apiVersion":"v1"},"responseStatus":{"code":101},"requestReceivedTimestamp":"2025-01-01T00:00:00.000001Z","stageTimestamp":"2025-01-01T00:00:00.000002Z"}"#,
        );
        assert!(d.quarantined.is_empty(), "{:?}", d.quarantined);
        assert_eq!(col(&d, "verb").value(0), "get");
        assert_eq!(col(&d, "subresource").value(0), "exec");
        assert_eq!(col(&d, "pod").value(0), "infer-0");
        assert_eq!(col(&d, "container").value(0), "triton");
        assert_eq!(col(&d, "event_id").value(0), "a1/ResponseStarted");
        let code = d
            .batch
            .column_by_name("response_code")
            .expect("code")
            .as_primitive::<Int32Type>();
        assert_eq!(code.value(0), 101);
    }

    #[test]
    fn event_list_items_are_rows_and_bad_items_are_quarantined() {
        let d = decode_str(
            r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[
              {"auditID":"x","stage":"ResponseComplete","verb":"list","stageTimestamp":"2025-01-01T00:00:00Z"},
              {"stage":"ResponseComplete","verb":"list","stageTimestamp":"2025-01-01T00:00:00Z"},
              {"auditID":"y","stage":"ResponseComplete","verb":"list","stageTimestamp":"not a time"}
            ]}"#,
        );
        assert_eq!(d.batch.num_rows(), 1);
        let q: Vec<_> = d
            .quarantined
            .iter()
            .map(|q| (q.location, q.reason))
            .collect();
        assert_eq!(
            q,
            vec![
                (Location::Item(1), Reason::MissingField),
                (Location::Item(2), Reason::InvalidTimestamp)
            ]
        );
        assert_eq!(col(&d, "envelope").value(0), "event_list");
    }

    #[test]
    fn gke_resource_names() {
        let r = GkeResource::parse("core/v1/namespaces/default/pods/web-1/exec");
        assert_eq!(
            (r.group, r.namespace, r.resource, r.name, r.subresource),
            (
                Some(""),
                Some("default"),
                Some("pods"),
                Some("web-1"),
                Some("exec")
            )
        );
        let r = GkeResource::parse("rbac.authorization.k8s.io/v1/clusterrolebindings/admin");
        assert_eq!(
            (r.namespace, r.resource, r.name),
            (None, Some("clusterrolebindings"), Some("admin"))
        );
        let r = GkeResource::parse("readyz");
        assert_eq!(r.resource, None);
    }

    #[test]
    fn binding_names_the_node_and_unknown_api_versions_are_rejected() {
        let d = decode_str(concat!(
            r#"{"apiVersion":"audit.k8s.io/v1","auditID":"b","stage":"ResponseComplete","verb":"create","objectRef":{"resource":"pods","namespace":"ml","name":"train-0","subresource":"binding"},"requestObject":{"kind":"Binding","target":{"kind":"Node","name":"gpu-node-7"}},"stageTimestamp":"2025-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"apiVersion":"audit.example.com/v9","auditID":"c","stageTimestamp":"2025-01-01T00:00:00Z"}"#,
        ));
        assert_eq!(col(&d, "node").value(0), "gpu-node-7");
        assert_eq!(d.quarantined.len(), 1);
        assert_eq!(d.quarantined[0].reason, Reason::UnknownShape);
        assert!(col(&d, "request_object").value(0).contains("gpu-node-7"));
        assert!(col(&d, "response_object").is_null(0));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            query_param("/x?container=a%2Db&y=1", "container").as_deref(),
            Some("a-b")
        );
        assert_eq!(query_param("/x?y=1", "container"), None);
        assert_eq!(percent_decode("50%"), "50%");
    }
}
