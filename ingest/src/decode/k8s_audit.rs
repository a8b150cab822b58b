//! Kubernetes audit events → `k8s_audit`, one row per event and stage.
//!
//! Accepts a bare `Event`, an `EventList` (the webhook backend's body), JSON lines of either
//! (the log backend), `audit.k8s.io/v1` and `v1beta1`, the AKS diagnostic-log wrapper
//! (`properties.log` as a JSON string or as an object) and GKE's Cloud Audit Log shape
//! (`protoPayload`). `requestObject`/`responseObject` are kept verbatim as JSON text.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Builder, ListBuilder, StringBuilder, TimestampNanosecondBuilder,
};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::columns::{
    Entity, EntityBytes, EntityColumns, JStr, RawJson, Strings, Timestamps, append_list,
    estimate_lines, non_empty, strings,
};
use super::json_lines::scan::Scanner;
use super::json_lines::{Record, RecordError, check_depth, for_each_record, parse};
use super::{DecodeContext, Decoded, Location, Quarantined, Reason};
use crate::schema::{Stream, k8s_audit};

/// Decodes Kubernetes audit events in any of the accepted envelopes.
pub fn decode(input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    let estimate = estimate_lines(input);
    let mut b = Builder::with_capacity(estimate, input.len(), cx);
    let mut quarantined = Vec::new();
    for_each_record(
        input,
        cx,
        Stream::K8sAudit,
        &mut quarantined,
        |record, _location, q| b.record(record, q),
    );
    Ok(Decoded {
        batch: b.finish()?,
        quarantined,
    })
}

/// Every shape we accept, read in one pass; which fields are set decides the envelope.
#[derive(Deserialize, Default)]
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
    user: Option<RawJson<'a>>,
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
    request_object: Option<RawJson<'a>>,
    #[serde(borrow, default)]
    response_object: Option<RawJson<'a>>,
    #[serde(borrow, default)]
    request_received_timestamp: Option<JStr<'a>>,
    #[serde(borrow, default)]
    stage_timestamp: Option<JStr<'a>>,
    /// v1beta1 events and GKE entries.
    #[serde(borrow, default)]
    timestamp: Option<JStr<'a>>,
    #[serde(borrow, default)]
    annotations: Option<RawJson<'a>>,
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
    labels: Option<RawJson<'a>>,
    #[serde(borrow, default)]
    operation: Option<GkeOperation<'a>>,
    #[serde(borrow, default)]
    insert_id: Option<JStr<'a>>,
}

#[derive(Deserialize, Default)]
struct UserInfo<'a> {
    #[serde(borrow, default)]
    username: Option<JStr<'a>>,
    #[serde(borrow, default)]
    groups: Option<Vec<JStr<'a>>>,
}

#[derive(Deserialize, Default)]
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

#[derive(Deserialize, Default)]
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
    request: Option<RawJson<'a>>,
    #[serde(borrow, default)]
    response: Option<RawJson<'a>>,
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

/// What [`scan_event`] reads besides the envelope: the parts that `Builder::event` would
/// otherwise parse out of the raw `user`, `annotations`, `requestObject`, `responseObject`.
#[derive(Default)]
struct Parts<'a> {
    user: Option<UserInfo<'a>>,
    authz: Authz<'a>,
    request_meta: Meta<'a>,
    response_meta: Meta<'a>,
}

/// An object's `metadata`/`target`, as serde would read them into [`ObjectMeta`] — or, where
/// the scanner cannot be sure (a key twice, an unexpected type: serde's error makes the event
/// fall back to the default), `Unsure`, and `event` asks serde.
#[derive(Default)]
enum Meta<'a> {
    Read(ObjectMeta<'a>),
    #[default]
    Unsure,
}

/// Reads a plain `Event` in one pass with the [`Scanner`]; `None` for anything else (an
/// `EventList`, a wrapper, any doubt: see the scanner's contract), which serde_json reads.
/// Mirrors `Envelope`'s derived `Deserialize`: unknown keys skipped, a known key twice gives up.
fn scan_event(record: Record<'_>) -> Option<(Envelope<'_>, Parts<'_>)> {
    let mut s = Scanner::for_record(record);
    let mut e = Envelope::default();
    let mut parts = Parts::default();
    let mut seen = 0u32;
    s.object(|s, key| {
        let bit = match key {
            b"kind" => 0,
            b"apiVersion" => 1,
            b"level" => 2,
            b"auditID" => 3,
            b"stage" => 4,
            b"requestURI" => 5,
            b"verb" => 6,
            b"userAgent" => 7,
            b"requestReceivedTimestamp" => 8,
            b"stageTimestamp" => 9,
            b"timestamp" => 10,
            b"user" => 11,
            b"impersonatedUser" => 12,
            b"sourceIPs" => 13,
            b"objectRef" => 14,
            b"responseStatus" => 15,
            b"requestObject" => 16,
            b"responseObject" => 17,
            b"annotations" => 18,
            // Other envelopes, or fields only they use.
            b"items" | b"properties" | b"protoPayload" | b"labels" | b"operation" | b"insertId" => {
                return None;
            }
            _ => return s.skip(),
        };
        if seen & 1 << bit != 0 {
            return None;
        }
        seen |= 1 << bit;
        let slot = match bit {
            0 => &mut e.kind,
            1 => &mut e.api_version,
            2 => &mut e.level,
            3 => &mut e.audit_id,
            4 => &mut e.stage,
            5 => &mut e.request_uri,
            6 => &mut e.verb,
            7 => &mut e.user_agent,
            8 => &mut e.request_received_timestamp,
            9 => &mut e.stage_timestamp,
            10 => &mut e.timestamp,
            _ => {
                if s.is_null()? {
                    return Some(());
                }
                let start = s.value_start();
                match bit {
                    11 => {
                        parts.user = Some(scan_user(s)?);
                        e.user = Some(RawJson(&s.text()[start..s.pos()]));
                    }
                    12 => e.impersonated_user = Some(scan_user(s)?),
                    13 => e.source_ips = Some(scan_strings(s)?),
                    14 => e.object_ref = Some(scan_object_ref(s)?),
                    15 => e.response_status = Some(scan_status(s)?),
                    16 => {
                        parts.request_meta = scan_meta(s)?;
                        e.request_object = Some(RawJson(&s.text()[start..s.pos()]));
                    }
                    17 => {
                        parts.response_meta = scan_meta(s)?;
                        e.response_object = Some(RawJson(&s.text()[start..s.pos()]));
                    }
                    _ => {
                        parts.authz = scan_authz(s)?;
                        e.annotations = Some(RawJson(&s.text()[start..s.pos()]));
                    }
                }
                return Some(());
            }
        };
        *slot = s.opt_string()?.map(JStr);
        Some(())
    })?;
    s.finish()?;
    Some((e, parts))
}

/// A list of strings (`sourceIPs`, `groups`).
fn scan_strings<'a>(s: &mut Scanner<'a>) -> Option<Vec<JStr<'a>>> {
    let mut items = Vec::new();
    s.array(|s| {
        items.push(JStr(s.string()?));
        Some(())
    })?;
    Some(items)
}

/// `UserInfo`'s derived `Deserialize` (an object only).
fn scan_user<'a>(s: &mut Scanner<'a>) -> Option<UserInfo<'a>> {
    let mut u = UserInfo::default();
    let mut seen = 0u8;
    s.object(|s, key| {
        let bit = match key {
            b"username" => 1,
            b"groups" => 2,
            _ => return s.skip(),
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        if bit == 1 {
            u.username = s.opt_string()?.map(JStr);
        } else if !s.is_null()? {
            u.groups = Some(scan_strings(s)?);
        }
        Some(())
    })?;
    Some(u)
}

/// `ObjectRef`'s derived `Deserialize` (an object only).
fn scan_object_ref<'a>(s: &mut Scanner<'a>) -> Option<ObjectRef<'a>> {
    let mut o = ObjectRef::default();
    let mut seen = 0u8;
    s.object(|s, key| {
        let (bit, slot) = match key {
            b"resource" => (1, &mut o.resource),
            b"namespace" => (2, &mut o.namespace),
            b"name" => (4, &mut o.name),
            b"uid" => (8, &mut o.uid),
            b"apiGroup" => (16, &mut o.api_group),
            b"subresource" => (32, &mut o.subresource),
            _ => return s.skip(),
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        *slot = s.opt_string()?.map(JStr);
        Some(())
    })?;
    Some(o)
}

/// `Status`' derived `Deserialize` (an object only; `code` an integer that fits an `i32`).
fn scan_status<'a>(s: &mut Scanner<'a>) -> Option<Status<'a>> {
    let mut status = Status::default();
    let mut seen = 0u8;
    s.object(|s, key| {
        let bit = match key {
            b"code" => 1,
            b"reason" => 2,
            _ => return s.skip(),
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        if bit == 2 {
            status.reason = s.opt_string()?.map(JStr);
        } else if !s.is_null()? {
            let n = s.number()?;
            // serde_json reads fractions, exponents and `-0` as floats: not an `i32`.
            if n.contains(['.', 'e', 'E']) || n.starts_with("-0") {
                return None;
            }
            status.code = Some(n.parse::<i32>().ok()?);
        }
        Some(())
    })?;
    Some(status)
}

/// `Authz`'s derived `Deserialize` (an object only).
fn scan_authz<'a>(s: &mut Scanner<'a>) -> Option<Authz<'a>> {
    let mut authz = Authz::default();
    let mut seen = 0u8;
    s.object(|s, key| {
        let (bit, slot) = match key {
            b"authorization.k8s.io/decision" => (1, &mut authz.decision),
            b"authorization.k8s.io/reason" => (2, &mut authz.reason),
            _ => return s.skip(),
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        *slot = s.opt_string()?.map(JStr);
        Some(())
    })?;
    Some(authz)
}

/// Passes over a request or response object, reading its `metadata`/`target` names as
/// `ObjectMeta`'s derived `Deserialize` would. `None` only for text that is not JSON.
fn scan_meta<'a>(s: &mut Scanner<'a>) -> Option<Meta<'a>> {
    if s.peek()? != b'{' {
        s.skip()?;
        return Some(Meta::Unsure);
    }
    let mut meta = ObjectMeta::default();
    let (mut seen, mut sure) = (0u8, true);
    s.object(|s, key| {
        let (bit, slot) = match key {
            b"metadata" => (1, &mut meta.metadata),
            b"target" => (2, &mut meta.target),
            _ => return s.skip(),
        };
        sure &= seen & bit == 0;
        seen |= bit;
        match s.peek()? {
            b'{' => match scan_meta_fields(s)? {
                Some(fields) => *slot = Some(fields),
                None => sure = false,
            },
            b'n' => {
                s.skip()?;
                *slot = None;
            }
            _ => {
                s.skip()?;
                sure = false;
            }
        }
        Some(())
    })?;
    Some(if sure { Meta::Read(meta) } else { Meta::Unsure })
}

/// `MetaFields` of an object: `Some(None)` where the scanner is not sure what serde reads.
fn scan_meta_fields<'a>(s: &mut Scanner<'a>) -> Option<Option<MetaFields<'a>>> {
    let mut fields = MetaFields::default();
    let (mut seen, mut sure) = (0u8, true);
    s.object(|s, key| {
        let (bit, slot) = match key {
            b"name" => (1, &mut fields.name),
            b"uid" => (2, &mut fields.uid),
            _ => return s.skip(),
        };
        sure &= seen & bit == 0;
        seen |= bit;
        match s.peek()? {
            b'"' => *slot = Some(JStr(s.string()?)),
            b'n' => {
                s.skip()?;
                *slot = None;
            }
            _ => {
                s.skip()?;
                sure = false;
            }
        }
        Some(())
    })?;
    Some(sure.then_some(fields))
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
    stage: Strings,
    level: Strings,
    verb: Strings,
    user: Strings,
    groups: ListBuilder<StringBuilder>,
    impersonated_user: Strings,
    source_ips: ListBuilder<StringBuilder>,
    user_agent: Strings,
    resource: Strings,
    subresource: Strings,
    name: Strings,
    api_group: Strings,
    request_uri: Strings,
    response_code: Int32Builder,
    response_reason: Strings,
    decision: Strings,
    authz_reason: Strings,
    annotations: Strings,
    user_info: Strings,
    request_object: Strings,
    response_object: Strings,
    envelope: StringBuilder,
    timestamps: Timestamps,
}

impl Builder {
    /// Builders for about `n` events in `bytes` bytes of input.
    fn with_capacity(n: usize, bytes: usize, cx: &DecodeContext) -> Self {
        let entity = EntityBytes {
            node: 8,
            namespace: 16,
            pod: 8,
            pod_uid: 8,
            container: 0,
            gpu_uuid: 0,
        };
        Builder {
            entity: EntityColumns::with_capacity(n, entity, cx.cluster.clone()),
            event_id: strings(n, 56),
            request_received: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            audit_id: strings(n, 36),
            stage: Strings::with_capacity(n, 16),
            level: Strings::with_capacity(n, 8),
            verb: Strings::with_capacity(n, 6),
            user: Strings::with_capacity(n, 32),
            groups: ListBuilder::with_capacity(strings(n * 2, 20), n),
            impersonated_user: Strings::with_capacity(n, 0),
            source_ips: ListBuilder::with_capacity(strings(n, 14), n),
            user_agent: Strings::with_capacity(n, 48),
            resource: Strings::with_capacity(n, 8),
            subresource: Strings::with_capacity(n, 0),
            name: Strings::with_capacity(n, 24),
            api_group: Strings::with_capacity(n, 8),
            request_uri: Strings::with_capacity(n, 64),
            response_code: Int32Builder::with_capacity(n),
            response_reason: Strings::with_capacity(n, 0),
            decision: Strings::with_capacity(n, 5),
            authz_reason: Strings::with_capacity(n, 32),
            annotations: Strings::with_capacity(n, 160),
            user_info: Strings::with_capacity(n, 160),
            // Objects are slices of the input: size them by it.
            request_object: Strings::with_data_capacity(n, bytes / 3),
            response_object: Strings::with_data_capacity(n, bytes / 2),
            envelope: strings(n, 5),
            timestamps: Timestamps::default(),
        }
    }

    /// One top-level record: an Event, an EventList, or a wrapped event.
    fn record(&mut self, record: Record<'_>, q: &mut Vec<Quarantined>) -> Result<(), RecordError> {
        let text = record.text;
        if let Some((event, read)) = scan_event(record) {
            return self.event(&event, Envelope_::Event, Some(read));
        }
        check_depth(text)?;
        let env: Envelope<'_> = parse(text)?;
        if let Some(items) = &env.items {
            if env.kind.as_ref().is_some_and(|k| k.as_str() != "EventList") {
                return Err((Reason::UnknownShape, "`items` outside an EventList".into()));
            }
            check_api_version(&env)?;
            for (i, item) in items.iter().enumerate() {
                let raw = item.get();
                let result = match scan_event(Record::new(raw)) {
                    Some((e, read)) => self.event(&e, Envelope_::EventList, Some(read)),
                    None => parse::<Envelope<'_>>(raw)
                        .and_then(|e| self.event(&e, Envelope_::EventList, None)),
                };
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
            return self.event(&event, Envelope_::Aks, None);
        }
        if let Some(payload) = &env.proto_payload {
            return self.gke(&env, payload);
        }
        self.event(&env, Envelope_::Event, None)
    }

    /// One event. `read`: what [`scan_event`] read out of it; `None` when serde_json read the
    /// envelope, and the parts below are parsed here from their raw text.
    fn event<'a>(
        &mut self,
        e: &Envelope<'a>,
        envelope: Envelope_,
        read: Option<Parts<'a>>,
    ) -> Result<(), RecordError> {
        check_api_version(e)?;
        if e.kind.as_ref().is_some_and(|k| k.as_str() != "Event") {
            return Err((
                Reason::UnknownShape,
                "`kind` is neither Event nor EventList".into(),
            ));
        }
        let audit_id = non_empty(&e.audit_id)
            .ok_or_else(|| (Reason::MissingField, "missing field `auditID`".to_string()))?;
        let ts_text = e
            .stage_timestamp
            .as_ref()
            .or(e.request_received_timestamp.as_ref())
            .or(e.timestamp.as_ref());
        let ts = ts_text
            .ok_or_else(|| {
                (
                    Reason::MissingField,
                    "missing field `stageTimestamp`".to_string(),
                )
            })
            .and_then(|t| timestamp(&mut self.timestamps, t.as_str(), "stageTimestamp"))?;
        let received = match &e.request_received_timestamp {
            Some(t) => Some(timestamp(
                &mut self.timestamps,
                t.as_str(),
                "requestReceivedTimestamp",
            )?),
            None => None,
        };
        let (user, authz, read_metas) = match read {
            Some(read) => (
                read.user,
                read.authz,
                Some((read.request_meta, read.response_meta)),
            ),
            None => {
                let user: Option<UserInfo<'_>> = match e.user {
                    Some(raw) if raw.0 != "null" => Some(parse(raw.0)?),
                    _ => None,
                };
                let authz: Authz<'_> = match e.annotations {
                    Some(raw) if raw.0 != "null" => parse(raw.0)?,
                    _ => Authz::default(),
                };
                (user, authz, None)
            }
        };
        let obj = e.object_ref.as_ref();
        let resource = obj.and_then(|o| non_empty(&o.resource));
        let subresource = obj.and_then(|o| non_empty(&o.subresource));
        let name = obj.and_then(|o| non_empty(&o.name));
        let uri = non_empty(&e.request_uri);

        // For pods, the row's pod is the object itself; a create by generateName only names it
        // in the response, and a binding names the node it was scheduled to.
        let is_pod = resource == Some("pods");
        let (request_meta, response_meta) = read_metas.unwrap_or_default();
        let meta: ObjectMeta<'_> = match (is_pod, name, e.response_object) {
            (true, None, Some(raw)) => match response_meta {
                Meta::Read(meta) => meta,
                Meta::Unsure => parse(raw.0).unwrap_or_default(),
            },
            _ => ObjectMeta::default(),
        };
        let binding: ObjectMeta<'_> = match (is_pod, subresource, e.request_object) {
            (true, Some("binding"), Some(raw)) => match request_meta {
                Meta::Read(meta) => meta,
                Meta::Unsure => parse(raw.0).unwrap_or_default(),
            },
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
            Some(stage) => {
                // `{audit_id}/{stage}`, written straight into the column.
                for part in [audit_id, "/", stage] {
                    self.event_id
                        .write_str(part)
                        .expect("writing to a builder cannot fail");
                }
                self.event_id.append_value("");
            }
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
            .ok_or_else(|| {
                (
                    Reason::MissingField,
                    "missing field `timestamp`".to_string(),
                )
            })
            .and_then(|t| timestamp(&mut self.timestamps, t.as_str(), "timestamp"))?;
        let audit_id = env
            .operation
            .as_ref()
            .and_then(|o| non_empty(&o.id))
            .or(non_empty(&env.insert_id))
            .ok_or_else(|| {
                (
                    Reason::MissingField,
                    "missing field `operation.id`".to_string(),
                )
            })?;
        let method = non_empty(&p.method_name).ok_or_else(|| {
            (
                Reason::MissingField,
                "missing field `protoPayload.methodName`".to_string(),
            )
        })?;
        let verb = method.rsplit('.').next().filter(|v| !v.is_empty());
        let path = GkeResource::parse(non_empty(&p.resource_name).unwrap_or(""));
        let authz: Authz<'_> = match env.labels {
            Some(raw) if raw.0 != "null" => parse(raw.0)?,
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
        self.request_uri.append_option(
            non_empty(&p.resource_name)
                .map(|r| format!("/{r}"))
                .as_deref(),
        );
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
            self.stage.finish(),
            self.level.finish(),
            self.verb.finish(),
            self.user.finish(),
            Arc::new(self.groups.finish()),
            self.impersonated_user.finish(),
            Arc::new(self.source_ips.finish()),
            self.user_agent.finish(),
            self.resource.finish(),
            self.subresource.finish(),
            self.name.finish(),
            self.api_group.finish(),
            self.request_uri.finish(),
            Arc::new(self.response_code.finish()),
            self.response_reason.finish(),
            self.decision.finish(),
            self.authz_reason.finish(),
            self.annotations.finish(),
            self.user_info.finish(),
            self.request_object.finish(),
            self.response_object.finish(),
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

fn timestamp(timestamps: &mut Timestamps, s: &str, field: &str) -> Result<i64, RecordError> {
    timestamps.parse(s).ok_or_else(|| {
        (
            Reason::InvalidTimestamp,
            format!("`{field}` is not an RFC 3339 timestamp"),
        )
    })
}

fn raw_text(v: Option<RawJson<'_>>) -> Option<&str> {
    v.map(|raw| raw.0).filter(|s| *s != "null")
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
