//! Falco JSON alerts → `falco_events`.
//!
//! Accepts what Falco's `http_output`/`file_output` write with `json_output: true` and what
//! falcosidekick accepts: one object, JSON lines, pretty-printed objects, or a JSON array of
//! alerts. `output_fields` values may be of any JSON type; `evt.time` is read as an exact
//! integer (it exceeds 2^53 and must never go through f64). When `output_fields` lacks the
//! Kubernetes identity, it is taken from the `k8s_*=`/`container_*=` suffix Falco's
//! `append_output` adds to `output`, and from CRI container names
//! (`k8s_<container>_<pod>_<namespace>_<uid>_<n>`).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, ListBuilder, StringBuilder};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::columns::{Entity, EntityColumns, JStr, append_list, content_id, non_empty, strings};
use super::json_lines::{RecordError, for_each_record, parse};
use super::{DecodeContext, Decoded, Location, Quarantined, Reason};
use crate::schema::{Stream, falco_events};
use crate::time::parse_rfc3339_nanos;

/// Decodes Falco alerts.
pub fn decode(input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    let estimate = memchr::memchr_iter(b'\n', input).count() + 1;
    let mut b = Builder::with_capacity(estimate, cx);
    let mut quarantined = Vec::new();
    for_each_record(
        input,
        cx,
        Stream::FalcoEvents,
        &mut quarantined,
        |text, location, q| {
            if text.starts_with('[') {
                let items: Vec<&RawValue> = parse(text)?;
                for (i, item) in items.into_iter().enumerate() {
                    let raw = item.get();
                    if let Err((reason, detail)) = b.alert(raw) {
                        let loc = Location::Item(i as u64);
                        q.push(Quarantined::new(
                            Stream::FalcoEvents,
                            loc,
                            reason,
                            detail,
                            raw.as_bytes(),
                        ));
                    }
                }
                Ok(())
            } else {
                let _ = location;
                b.alert(text)
            }
        },
    );
    Ok(Decoded {
        batch: b.finish()?,
        quarantined,
    })
}

/// Falco's priorities, long form, as Falco writes them in JSON.
pub const PRIORITIES: [&str; 8] = [
    "Emergency",
    "Alert",
    "Critical",
    "Error",
    "Warning",
    "Notice",
    "Informational",
    "Debug",
];

/// Normalises a priority the way falcosidekick does (case-insensitive, `info` = Informational).
pub fn normalize_priority(p: &str) -> Option<&'static str> {
    if p.eq_ignore_ascii_case("info") {
        return Some("Informational");
    }
    PRIORITIES
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(p))
}

#[derive(Deserialize)]
struct Alert<'a> {
    #[serde(borrow, default)]
    time: Option<JStr<'a>>,
    #[serde(borrow, default)]
    rule: Option<JStr<'a>>,
    #[serde(borrow, default)]
    priority: Option<JStr<'a>>,
    #[serde(borrow, default)]
    source: Option<JStr<'a>>,
    #[serde(borrow, default)]
    hostname: Option<JStr<'a>>,
    #[serde(borrow, default)]
    output: Option<JStr<'a>>,
    #[serde(borrow, default)]
    uuid: Option<JStr<'a>>,
    #[serde(borrow, default)]
    tags: Option<Vec<JStr<'a>>>,
    #[serde(borrow, default)]
    output_fields: Option<&'a RawValue>,
}

/// The output fields gpusiem promotes to columns.
#[derive(Default)]
struct Fields<'a> {
    evt_time: Option<i64>,
    evt_type: Option<FieldStr<'a>>,
    container_id: Option<FieldStr<'a>>,
    container_name: Option<FieldStr<'a>>,
    image: Option<FieldStr<'a>>,
    image_tag: Option<FieldStr<'a>>,
    namespace: Option<FieldStr<'a>>,
    pod: Option<FieldStr<'a>>,
    pod_uid: Option<FieldStr<'a>>,
    proc_name: Option<FieldStr<'a>>,
    proc_exepath: Option<FieldStr<'a>>,
    proc_cmdline: Option<FieldStr<'a>>,
    proc_pname: Option<FieldStr<'a>>,
    user_name: Option<FieldStr<'a>>,
    user_uid: Option<i64>,
    fd_name: Option<FieldStr<'a>>,
}

/// An output field value rendered as text: strings as themselves, other scalars and arrays as
/// their JSON text.
type FieldStr<'a> = std::borrow::Cow<'a, str>;

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of output fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields<'de>, A::Error> {
                let mut out = Fields::default();
                while let Some(key) = map.next_key::<JStr<'de>>()? {
                    let slot = match key.as_str() {
                        "evt.time" | "evt.time.iso8601" | "evt_time" | "evt.rawtime" => {
                            let raw: &RawValue = map.next_value()?;
                            out.evt_time = raw.get().parse::<i64>().ok().or(out.evt_time);
                            continue;
                        }
                        "user.uid" => {
                            let raw: &RawValue = map.next_value()?;
                            out.user_uid = raw.get().parse::<i64>().ok();
                            continue;
                        }
                        "evt.type" => &mut out.evt_type,
                        "container.id" => &mut out.container_id,
                        "container.name" => &mut out.container_name,
                        "container.image.repository" | "container.image" => &mut out.image,
                        "container.image.tag" => &mut out.image_tag,
                        "k8s.ns.name" | "ka.target.namespace" => &mut out.namespace,
                        "k8s.pod.name" => &mut out.pod,
                        "k8s.pod.uid" => &mut out.pod_uid,
                        "proc.name" => &mut out.proc_name,
                        "proc.exepath" => &mut out.proc_exepath,
                        "proc.cmdline" => &mut out.proc_cmdline,
                        "proc.pname" => &mut out.proc_pname,
                        "user.name" | "ka.user.name" => &mut out.user_name,
                        "fd.name" => &mut out.fd_name,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    let raw: &RawValue = map.next_value()?;
                    *slot = render(raw).map_err(serde::de::Error::custom)?;
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

fn render(raw: &RawValue) -> Result<Option<FieldStr<'_>>, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') => {
            Some(serde_json::from_str::<JStr<'_>>(text)?.0).filter(|s| !s.is_empty() && s != "<NA>")
        }
        Some(b'n') => None,
        _ => Some(FieldStr::Borrowed(text)),
    })
}

struct Builder {
    entity: EntityColumns,
    event_id: StringBuilder,
    rule: StringBuilder,
    priority: StringBuilder,
    source: StringBuilder,
    output: StringBuilder,
    tags: ListBuilder<StringBuilder>,
    evt_time: Int64Builder,
    evt_type: StringBuilder,
    container_id: StringBuilder,
    image: StringBuilder,
    image_tag: StringBuilder,
    proc_name: StringBuilder,
    proc_exepath: StringBuilder,
    proc_cmdline: StringBuilder,
    proc_pname: StringBuilder,
    user_name: StringBuilder,
    user_uid: Int64Builder,
    fd_name: StringBuilder,
    uuid: StringBuilder,
    output_fields: StringBuilder,
}

impl Builder {
    fn with_capacity(n: usize, cx: &DecodeContext) -> Self {
        Builder {
            entity: EntityColumns::with_capacity(n, cx.cluster.clone()),
            event_id: strings(n, 32),
            rule: strings(n, 24),
            priority: strings(n, 8),
            source: strings(n, 8),
            output: strings(n, 256),
            tags: ListBuilder::with_capacity(strings(n * 4, 12), n),
            evt_time: Int64Builder::with_capacity(n),
            evt_type: strings(n, 8),
            container_id: strings(n, 12),
            image: strings(n, 24),
            image_tag: strings(n, 8),
            proc_name: strings(n, 12),
            proc_exepath: strings(n, 24),
            proc_cmdline: strings(n, 48),
            proc_pname: strings(n, 12),
            user_name: strings(n, 8),
            user_uid: Int64Builder::with_capacity(n),
            fd_name: strings(n, 24),
            uuid: strings(n, 0),
            output_fields: strings(n, 512),
        }
    }

    fn alert(&mut self, text: &str) -> Result<(), RecordError> {
        let a: Alert<'_> = parse(text)?;
        let fields: Fields<'_> = match a.output_fields {
            Some(raw) if raw.get() != "null" => parse(raw.get())?,
            _ => Fields::default(),
        };
        let rule =
            non_empty(&a.rule).ok_or((Reason::MissingField, "missing field `rule`".to_string()))?;
        let priority = a
            .priority
            .as_ref()
            .ok_or((Reason::MissingField, "missing field `priority`".to_string()))?;
        let priority = normalize_priority(priority.as_str()).ok_or((
            Reason::InvalidField,
            "`priority` is not a Falco priority".to_string(),
        ))?;
        let ts = match (&a.time, fields.evt_time) {
            (Some(t), _) => parse_rfc3339_nanos(t.as_str()).ok_or((
                Reason::InvalidTimestamp,
                "`time` is not an RFC 3339 timestamp".to_string(),
            ))?,
            (None, Some(evt)) => evt,
            (None, None) => return Err((Reason::MissingField, "missing field `time`".to_string())),
        };
        let output = non_empty(&a.output);
        let suffix = output.map(OutputSuffix::parse).unwrap_or_default();
        let cri = fields
            .container_name
            .as_deref()
            .or(suffix.container_name)
            .and_then(CriName::parse);

        let namespace = fields
            .namespace
            .as_deref()
            .or(suffix.namespace)
            .or(cri.map(|c| c.namespace));
        let pod = fields.pod.as_deref().or(suffix.pod).or(cri.map(|c| c.pod));
        let pod_uid = fields.pod_uid.as_deref().or(cri.map(|c| c.uid));
        let container = cri
            .map(|c| c.container)
            .or(fields.container_name.as_deref())
            .or(suffix.container_name);
        self.entity.append(
            ts,
            &Entity {
                node: non_empty(&a.hostname),
                namespace,
                pod,
                pod_uid,
                container,
                gpu_uuid: None,
            },
        );
        match non_empty(&a.uuid) {
            Some(uuid) => self.event_id.append_value(uuid),
            None => self.event_id.append_value(content_id(text.as_bytes())),
        }
        self.rule.append_value(rule);
        self.priority.append_value(priority);
        self.source.append_option(non_empty(&a.source));
        self.output.append_option(output);
        append_list(
            &mut self.tags,
            a.tags.as_ref().map(|t| t.iter().map(JStr::as_str)),
        );
        self.evt_time.append_option(fields.evt_time);
        self.evt_type.append_option(fields.evt_type.as_deref());
        self.container_id
            .append_option(fields.container_id.as_deref().or(suffix.container_id));
        self.image
            .append_option(fields.image.as_deref().or(suffix.image));
        self.image_tag
            .append_option(fields.image_tag.as_deref().or(suffix.image_tag));
        self.proc_name.append_option(fields.proc_name.as_deref());
        self.proc_exepath
            .append_option(fields.proc_exepath.as_deref());
        self.proc_cmdline
            .append_option(fields.proc_cmdline.as_deref());
        self.proc_pname.append_option(fields.proc_pname.as_deref());
        self.user_name.append_option(fields.user_name.as_deref());
        self.user_uid.append_option(fields.user_uid);
        self.fd_name.append_option(fields.fd_name.as_deref());
        self.uuid.append_option(non_empty(&a.uuid));
        self.output_fields
            .append_option(a.output_fields.map(RawValue::get).filter(|s| *s != "null"));
        Ok(())
    }

    fn finish(mut self) -> crate::Result<RecordBatch> {
        let mut columns = self.entity.finish();
        let rest: [ArrayRef; 20] = [
            Arc::new(self.event_id.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.priority.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.output.finish()),
            Arc::new(self.tags.finish()),
            Arc::new(self.evt_time.finish()),
            Arc::new(self.evt_type.finish()),
            Arc::new(self.container_id.finish()),
            Arc::new(self.image.finish()),
            Arc::new(self.image_tag.finish()),
            Arc::new(self.proc_name.finish()),
            Arc::new(self.proc_exepath.finish()),
            Arc::new(self.proc_cmdline.finish()),
            Arc::new(self.proc_pname.finish()),
            Arc::new(self.user_name.finish()),
            Arc::new(self.user_uid.finish()),
            Arc::new(self.fd_name.finish()),
            Arc::new(self.uuid.finish()),
            Arc::new(self.output_fields.finish()),
        ];
        columns.extend(rest);
        RecordBatch::try_new(falco_events::schema(), columns).map_err(|source| {
            crate::Error::BuildBatch {
                stream: Stream::FalcoEvents,
                source,
            }
        })
    }
}

/// `key=value` pairs of Falco's suggested-output suffix (`container_id=… k8s_pod_name=…`).
#[derive(Default, Clone, Copy)]
struct OutputSuffix<'a> {
    container_id: Option<&'a str>,
    container_name: Option<&'a str>,
    image: Option<&'a str>,
    image_tag: Option<&'a str>,
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
}

impl<'a> OutputSuffix<'a> {
    fn parse(output: &'a str) -> Self {
        let mut s = OutputSuffix::default();
        for token in output.split(' ') {
            let Some((key, value)) = token.split_once('=') else {
                continue;
            };
            let value = value.trim_end_matches(')');
            if value.is_empty() || value == "<NA>" {
                continue;
            }
            let slot = match key {
                "container_id" => &mut s.container_id,
                "container_name" => &mut s.container_name,
                "container_image_repository" | "container_image" => &mut s.image,
                "container_image_tag" => &mut s.image_tag,
                "k8s_ns_name" | "k8s_ns" => &mut s.namespace,
                "k8s_pod_name" | "k8s_pod" => &mut s.pod,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        s
    }
}

/// A CRI/dockershim container name: `k8s_<container>_<pod>_<namespace>_<pod uid>_<attempt>`.
#[derive(Clone, Copy)]
struct CriName<'a> {
    container: &'a str,
    pod: &'a str,
    namespace: &'a str,
    uid: &'a str,
}

impl<'a> CriName<'a> {
    fn parse(name: &'a str) -> Option<Self> {
        let rest = name.strip_prefix("k8s_")?;
        let mut parts = rest.split('_');
        let (container, pod, namespace, uid, attempt) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || attempt.parse::<u32>().is_err() || uid.len() != 36 {
            return None;
        }
        Some(CriName {
            container,
            pod,
            namespace,
            uid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampNanosecondType};

    fn decode_str(s: &str) -> Decoded {
        decode(s.as_bytes(), &DecodeContext::new(0)).expect("decode")
    }

    fn col<'a>(d: &'a Decoded, name: &str) -> &'a arrow::array::StringArray {
        d.batch.column_by_name(name).expect(name).as_string::<i32>()
    }

    #[test]
    fn falcosidekick_minimal_body() {
        let d = decode_str(
            r#"{"output":"This is a test from falcosidekick","priority":"Debug","rule":"Test rule", "time":"2001-01-01T01:10:00Z","source":"syscalls","output_fields": {"proc.name":"falcosidekick", "proc.tty": 1234}, "tags":["test","example"], "hostname":"test-host"}"#,
        );
        assert!(d.quarantined.is_empty());
        assert_eq!(d.batch.num_rows(), 1);
        assert_eq!(col(&d, "rule").value(0), "Test rule");
        assert_eq!(col(&d, "proc_name").value(0), "falcosidekick");
        assert_eq!(col(&d, "node").value(0), "test-host");
        let ts = d.batch.column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!(ts.value(0), 978_311_400_000_000_000);
        assert_eq!(
            col(&d, "output_fields").value(0),
            r#"{"proc.name":"falcosidekick", "proc.tty": 1234}"#
        );
    }

    #[test]
    fn suffix_and_cri_name_give_the_pod() {
        let d = decode_str(
            r#"{"output":"13:12:32.137915184: Critical Executing binary not part of base image | proc_exe=openssl container_id=044d7c551e4a container_name=k8s_test-container_falco-test-pod_default_32d24baa-e844-4cdf-877e-6f51911bde7d_0 container_image_repository=ubuntu container_image_tag=latest k8s_pod_name=falco-test-pod k8s_ns_name=default","output_fields":{"evt_time":1764940352137915184},"hostname":"minikube","rule":"Drop and execute new binary in container","time":"2025-12-05T13:12:32.137915184Z","source":"syscall","priority":"Critical"}"#,
        );
        assert!(d.quarantined.is_empty(), "{:?}", d.quarantined);
        assert_eq!(col(&d, "pod").value(0), "falco-test-pod");
        assert_eq!(col(&d, "namespace").value(0), "default");
        assert_eq!(col(&d, "container").value(0), "test-container");
        assert_eq!(
            col(&d, "pod_uid").value(0),
            "32d24baa-e844-4cdf-877e-6f51911bde7d"
        );
        assert_eq!(col(&d, "container_id").value(0), "044d7c551e4a");
        assert_eq!(col(&d, "image").value(0), "ubuntu");
        let evt = d
            .batch
            .column_by_name("evt_time")
            .expect("evt_time")
            .as_primitive::<Int64Type>();
        assert_eq!(evt.value(0), 1_764_940_352_137_915_184);
    }

    #[test]
    fn required_fields_and_priorities() {
        let d = decode_str(concat!(
            r#"{"priority":"Warning","time":"2024-01-01T00:00:00Z","output_fields":{}}"#,
            "\n",
            r#"{"rule":"r","priority":"Loud","time":"2024-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"rule":"r","priority":"info","time":"yesterday"}"#,
            "\n",
            r#"{"rule":"r","priority":"info","output_fields":{"evt.time":1715108059341081180}}"#,
            "\n",
            r#"{"rule":"r","priority":"WARNING","time":"2024-01-01T00:00:00Z","tags":"T1059"}"#,
            "\n",
        ));
        let reasons: Vec<_> = d
            .quarantined
            .iter()
            .map(|q| (q.location, q.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (Location::Line(1), Reason::MissingField),
                (Location::Line(2), Reason::InvalidField),
                (Location::Line(3), Reason::InvalidTimestamp),
                (Location::Line(5), Reason::InvalidField),
            ]
        );
        assert_eq!(d.batch.num_rows(), 1);
        assert_eq!(col(&d, "priority").value(0), "Informational");
        let ts = d.batch.column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!(ts.value(0), 1_715_108_059_341_081_180);
    }

    #[test]
    fn array_of_alerts() {
        let d = decode_str(
            r#"[{"rule":"a","priority":"Notice","time":"2024-01-01T00:00:00Z"},{"rule":"b"},{"rule":"c","priority":"Notice","time":"2024-01-01T00:00:01Z"}]"#,
        );
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.quarantined.len(), 1);
        assert_eq!(d.quarantined[0].location, Location::Item(1));
        assert!(col(&d, "event_id").value(0) != col(&d, "event_id").value(1));
        assert!(col(&d, "uuid").is_null(0));
    }
}
