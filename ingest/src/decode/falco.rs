//! Falco JSON alerts → `falco_events`.
//!
//! Accepts what Falco's `http_output`/`file_output` write with `json_output: true` and what
//! falcosidekick accepts: one object, JSON lines, pretty-printed objects, or a JSON array of
//! alerts. `output_fields` values may be of any JSON type; `evt.time` is read as an exact
//! integer (it exceeds 2^53 and must never go through f64). When `output_fields` lacks the
//! Kubernetes identity, it is taken from the `k8s_*=`/`container_*=` suffix Falco's
//! `append_output` adds to `output`, and from CRI container names
//! (`k8s_<container>_<pod>_<namespace>_<uid>_<n>`).

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, ListBuilder, StringArray, StringBuilder};
use arrow::record_batch::RecordBatch;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::columns::{
    Entity, EntityBytes, EntityColumns, JStr, RawJson, Strings, Timestamps, append_content_id,
    append_list, estimate_lines, non_empty, parse_i64, strings,
};
use super::json_lines::scan::{KeyCache, Scanner};
use super::json_lines::{Record, RecordError, check_depth, for_each_record, parse};
use super::{DecodeContext, Decoded, Location, Quarantined, Reason};
use crate::schema::{Stream, falco_events};

/// Decodes Falco alerts.
pub fn decode(input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    let estimate = estimate_lines(input);
    let mut b = Builder::with_capacity(estimate, input.len(), cx);
    let mut quarantined = Vec::new();
    for_each_record(
        input,
        cx,
        Stream::FalcoEvents,
        &mut quarantined,
        |record, location, q| {
            let text = record.text;
            if text.starts_with('[') {
                check_depth(text)?;
                let items: Vec<&RawValue> = parse(text)?;
                for (i, item) in items.into_iter().enumerate() {
                    let raw = item.get();
                    if let Err((reason, detail)) = b.alert(Record::new(raw), Depth::Checked) {
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
                b.alert(record, Depth::Unchecked)
            }
        },
    );
    Ok(Decoded {
        batch: b.finish()?,
        quarantined,
    })
}

/// The most distinct tags arrays remembered by one decode call (a rule has one; the cache is
/// emptied when it fills).
const TAG_LISTS: usize = 256;

/// Whether an alert's nesting has been checked (see [`for_each_record`]).
#[derive(Clone, Copy, PartialEq)]
enum Depth {
    Checked,
    Unchecked,
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

#[derive(Deserialize, Default)]
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
    /// The text of the tags array when [`read_alert`] read it: the tags are then in the
    /// builder's `tag_ranges`, not in `tags`.
    #[serde(skip)]
    tags_scanned: Option<&'a str>,
    #[serde(borrow, default)]
    output_fields: Option<RawJson<'a>>,
}

/// The output fields gpusiem promotes to columns.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq, Clone))]
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

impl Fields<'_> {
    /// Whether a field that [`OutputSuffix`] can supply is missing.
    fn lacks_identity(&self) -> bool {
        self.container_id.is_none()
            || self.container_name.is_none()
            || self.image.is_none()
            || self.image_tag.is_none()
            || self.namespace.is_none()
            || self.pod.is_none()
    }
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
                    let slot = match out.slot(key.as_str().as_bytes()) {
                        Slot::EvtTime => {
                            let raw: &RawValue = map.next_value()?;
                            out.evt_time = raw.get().parse::<i64>().ok().or(out.evt_time);
                            continue;
                        }
                        Slot::UserUid => {
                            let raw: &RawValue = map.next_value()?;
                            out.user_uid = raw.get().parse::<i64>().ok();
                            continue;
                        }
                        Slot::Text(slot) => slot,
                        Slot::Other => {
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

/// [`read_alert`] into fresh structures.
#[cfg(test)]
fn scan_alert<'a>(
    record: Record<'a>,
    tags: &mut Vec<Range<usize>>,
    keys: &mut Keys,
) -> Option<(Alert<'a>, Fields<'a>)> {
    let mut a = Alert::default();
    let mut fields = Fields::default();
    read_alert(record, tags, keys, &mut a, &mut fields)?;
    Some((a, fields))
}

/// Reads an alert in one pass with the [`Scanner`] into `a` and `fields`, which start as their
/// defaults: `None` when serde_json must read it (see the scanner's contract; `a` and `fields`
/// then hold anything). Mirrors `Alert`'s derived `Deserialize` (unknown keys skipped, a known
/// key twice is an error: gives up) and `Fields`' visitor (keys in order, the last one wins).
///
/// The tags go to `tags`, as ranges of the record (a tag with escapes gives up: tags have none),
/// which spares a list per alert. `keys` remembers the keys of the alerts read before (see
/// [`Keys`]).
fn read_alert<'a>(
    record: Record<'a>,
    tags: &mut Vec<Range<usize>>,
    keys: &mut Keys,
    a: &mut Alert<'a>,
    fields: &mut Fields<'a>,
) -> Option<()> {
    tags.clear();
    let mut s = Scanner::for_record(record);
    let mut seen = 0u16;
    s.object_cached(&mut keys.alert, alert_key, |s, bit| {
        let Some(bit) = bit else {
            return s.skip();
        };
        if seen & 1 << bit != 0 {
            return None;
        }
        seen |= 1 << bit;
        let slot = match bit {
            0 => &mut a.time,
            1 => &mut a.rule,
            2 => &mut a.priority,
            3 => &mut a.source,
            4 => &mut a.hostname,
            5 => &mut a.output,
            6 => &mut a.uuid,
            7 => {
                if !s.is_null()? {
                    let start = s.value_start();
                    s.array(|s| {
                        tags.push(s.plain_string()?);
                        Some(())
                    })?;
                    a.tags_scanned = Some(s.text().get(start..s.pos())?);
                }
                return Some(());
            }
            _ => {
                if !s.is_null()? {
                    let start = s.value_start();
                    *s = scan_fields(*s, fields, &mut keys.fields)?;
                    a.output_fields = Some(RawJson(&s.text()[start..s.pos()]));
                }
                return Some(());
            }
        };
        *slot = s.opt_string()?.map(JStr);
        Some(())
    })?;
    s.finish()
}

/// The keys of the alerts read so far, by position (see [`Scanner::object_cached`]): Falco writes
/// the same keys in the same order for every alert of a rule.
#[derive(Default)]
struct Keys {
    /// The alert's own keys, as [`alert_key`] reads them.
    alert: KeyCache<Option<u8>>,
    /// The output fields' keys.
    fields: KeyCache<Field>,
}

/// The bit of an alert's key in [`read_alert`]'s set of keys seen; `None` for keys it skips.
fn alert_key(key: &[u8]) -> Option<u8> {
    let is = |name: &[u8]| key == name;
    Some(match key.len() {
        4 if is(b"time") => 0,
        4 if is(b"rule") => 1,
        4 if is(b"uuid") => 6,
        4 if is(b"tags") => 7,
        6 if is(b"source") => 3,
        6 if is(b"output") => 5,
        8 if is(b"priority") => 2,
        8 if is(b"hostname") => 4,
        13 if is(b"output_fields") => 8,
        _ => return None,
    })
}

/// `Fields`' visitor over the [`Scanner`]: the scanner after the object. `keys` remembers the
/// output fields' keys of the alerts before.
fn scan_fields<'a>(
    mut s: Scanner<'a>,
    out: &mut Fields<'a>,
    keys: &mut KeyCache<Field>,
) -> Option<Scanner<'a>> {
    s.object_cached(keys, Field::of, |s, field| {
        match out.slot_of(field) {
            Slot::EvtTime => out.evt_time = parse_i64(s.raw()?).or(out.evt_time),
            Slot::UserUid => out.user_uid = parse_i64(s.raw()?),
            Slot::Text(slot) => {
                *slot = match s.peek()? {
                    b'"' => Some(s.string()?).filter(|v| !v.is_empty() && v != "<NA>"),
                    _ => Some(FieldStr::Borrowed(s.raw()?)).filter(|v| !v.starts_with('n')),
                }
            }
            Slot::Other => s.skip()?,
        }
        Some(())
    })?;
    Some(s)
}

/// Where an output field goes.
enum Slot<'s, 'a> {
    /// `evt.time` and its aliases: an exact integer, or ignored.
    EvtTime,
    /// `user.uid`: an exact integer, or null.
    UserUid,
    /// A field kept as text.
    Text(&'s mut Option<FieldStr<'a>>),
    /// Not promoted.
    Other,
}

/// An output field by what becomes of it: [`Fields::slot`] of its key, as a value that the
/// scanner's key cache can keep.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    EvtTime,
    UserUid,
    EvtType,
    ContainerId,
    ContainerName,
    Image,
    ImageTag,
    Namespace,
    Pod,
    PodUid,
    ProcName,
    ProcExepath,
    ProcCmdline,
    ProcPname,
    UserName,
    FdName,
    Other,
}

impl Field {
    /// The field an output field's key names.
    #[inline(always)]
    fn of(key: &[u8]) -> Field {
        // By length first: each key is then compared whole, a word at a time.
        let is = |name: &[u8]| key == name;
        match key.len() {
            7 if is(b"fd.name") => Field::FdName,
            8 if is(b"evt.time") || is(b"evt_time") => Field::EvtTime,
            8 if is(b"evt.type") => Field::EvtType,
            8 if is(b"user.uid") => Field::UserUid,
            9 if is(b"proc.name") => Field::ProcName,
            9 if is(b"user.name") => Field::UserName,
            10 if is(b"proc.pname") => Field::ProcPname,
            11 if is(b"k8s.ns.name") => Field::Namespace,
            11 if is(b"k8s.pod.uid") => Field::PodUid,
            11 if is(b"evt.rawtime") => Field::EvtTime,
            12 if is(b"container.id") => Field::ContainerId,
            12 if is(b"k8s.pod.name") => Field::Pod,
            12 if is(b"proc.cmdline") => Field::ProcCmdline,
            12 if is(b"proc.exepath") => Field::ProcExepath,
            12 if is(b"ka.user.name") => Field::UserName,
            14 if is(b"container.name") => Field::ContainerName,
            15 if is(b"container.image") => Field::Image,
            16 if is(b"evt.time.iso8601") => Field::EvtTime,
            19 if is(b"container.image.tag") => Field::ImageTag,
            19 if is(b"ka.target.namespace") => Field::Namespace,
            26 if is(b"container.image.repository") => Field::Image,
            _ => Field::Other,
        }
    }
}

impl<'a> Fields<'a> {
    /// Where the output field `key` goes.
    fn slot(&mut self, key: &[u8]) -> Slot<'_, 'a> {
        self.slot_of(Field::of(key))
    }

    /// Where `field` goes.
    #[inline(always)]
    fn slot_of(&mut self, field: Field) -> Slot<'_, 'a> {
        Slot::Text(match field {
            Field::EvtTime => return Slot::EvtTime,
            Field::UserUid => return Slot::UserUid,
            Field::Other => return Slot::Other,
            Field::EvtType => &mut self.evt_type,
            Field::ContainerId => &mut self.container_id,
            Field::ContainerName => &mut self.container_name,
            Field::Image => &mut self.image,
            Field::ImageTag => &mut self.image_tag,
            Field::Namespace => &mut self.namespace,
            Field::Pod => &mut self.pod,
            Field::PodUid => &mut self.pod_uid,
            Field::ProcName => &mut self.proc_name,
            Field::ProcExepath => &mut self.proc_exepath,
            Field::ProcCmdline => &mut self.proc_cmdline,
            Field::ProcPname => &mut self.proc_pname,
            Field::UserName => &mut self.user_name,
            Field::FdName => &mut self.fd_name,
        })
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
    source: Strings,
    output: Strings,
    tags: ListBuilder<StringBuilder>,
    evt_time: Int64Builder,
    evt_type: Strings,
    container_id: Strings,
    image: Strings,
    image_tag: Strings,
    proc_name: Strings,
    proc_exepath: Strings,
    proc_cmdline: Strings,
    proc_pname: Strings,
    user_name: Strings,
    user_uid: Int64Builder,
    fd_name: Strings,
    uuid: Strings,
    output_fields: Strings,
    /// Where the tags of the alert being read are in its text (see [`read_alert`]).
    tag_ranges: Vec<Range<usize>>,
    /// The tags arrays seen so far, by their text: a rule's alerts carry the same tags, which
    /// are then appended in one go.
    tag_lists: FxHashMap<Box<str>, StringArray>,
    /// The keys of the alerts read so far.
    keys: Keys,
    timestamps: Timestamps,
}

impl Builder {
    /// Builders for about `n` alerts in `bytes` bytes of input.
    fn with_capacity(n: usize, bytes: usize, cx: &DecodeContext) -> Self {
        let entity = EntityBytes {
            node: 24,
            namespace: 16,
            pod: 32,
            pod_uid: 0,
            container: 16,
            gpu_uuid: 0,
        };
        Builder {
            entity: EntityColumns::with_capacity(n, entity, cx.cluster.clone()),
            event_id: strings(n, 36),
            rule: strings(n, 40),
            priority: strings(n, 8),
            source: Strings::with_capacity(n, 8),
            // The two long texts are slices of the input: size them by it.
            output: Strings::with_data_capacity(n, bytes / 2),
            tags: ListBuilder::with_capacity(strings(n * 8, 10), n),
            evt_time: Int64Builder::with_capacity(n),
            evt_type: Strings::with_capacity(n, 8),
            container_id: Strings::with_capacity(n, 12),
            image: Strings::with_capacity(n, 32),
            image_tag: Strings::with_capacity(n, 12),
            proc_name: Strings::with_capacity(n, 16),
            proc_exepath: Strings::with_capacity(n, 24),
            proc_cmdline: Strings::with_capacity(n, 64),
            proc_pname: Strings::with_capacity(n, 16),
            user_name: Strings::with_capacity(n, 8),
            user_uid: Int64Builder::with_capacity(n),
            fd_name: Strings::with_capacity(n, 32),
            uuid: Strings::with_capacity(n, 36),
            output_fields: Strings::with_data_capacity(n, bytes * 5 / 8),
            tag_ranges: Vec::new(),
            tag_lists: FxHashMap::default(),
            keys: Keys::default(),
            timestamps: Timestamps::default(),
        }
    }

    fn alert(&mut self, record: Record<'_>, depth: Depth) -> Result<(), RecordError> {
        let text = record.text;
        let mut a = Alert::default();
        let mut fields = Fields::default();
        if read_alert(
            record,
            &mut self.tag_ranges,
            &mut self.keys,
            &mut a,
            &mut fields,
        )
        .is_none()
        {
            if depth == Depth::Unchecked {
                check_depth(text)?;
            }
            a = parse(text)?;
            fields = match a.output_fields {
                Some(raw) if raw.0 != "null" => parse(raw.0)?,
                _ => Fields::default(),
            };
        }
        let rule = non_empty(&a.rule)
            .ok_or_else(|| (Reason::MissingField, "missing field `rule`".to_string()))?;
        let priority = a
            .priority
            .as_ref()
            .ok_or_else(|| (Reason::MissingField, "missing field `priority`".to_string()))?;
        let priority = normalize_priority(priority.as_str()).ok_or_else(|| {
            (
                Reason::InvalidField,
                "`priority` is not a Falco priority".to_string(),
            )
        })?;
        let ts = match (&a.time, fields.evt_time) {
            (Some(t), _) => self.timestamps.parse(t.as_str()).ok_or_else(|| {
                (
                    Reason::InvalidTimestamp,
                    "`time` is not an RFC 3339 timestamp".to_string(),
                )
            })?,
            (None, Some(evt)) => evt,
            (None, None) => return Err((Reason::MissingField, "missing field `time`".to_string())),
        };
        let output = non_empty(&a.output);
        // The suffix only fills in what the output fields lack.
        let suffix = match output {
            Some(output) if fields.lacks_identity() => OutputSuffix::parse(output),
            _ => OutputSuffix::default(),
        };
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
            None => append_content_id(&mut self.event_id, text.as_bytes()),
        }
        self.rule.append_value(rule);
        self.priority.append_value(priority);
        self.source.append_option(non_empty(&a.source));
        self.output.append_option(output);
        if let Some(raw) = a.tags_scanned {
            let list = match self.tag_lists.get(raw) {
                Some(list) => list,
                None => {
                    if self.tag_lists.len() >= TAG_LISTS {
                        self.tag_lists.clear();
                    }
                    let tags = self.tag_ranges.iter().map(|r| &text[r.clone()]);
                    self.tag_lists
                        .entry(raw.into())
                        .or_insert_with(|| StringArray::from_iter_values(tags))
                }
            };
            // Fails only past 2 GiB of tags in one batch, where `append_value` panics too.
            self.tags
                .values()
                .append_array(list)
                .expect("tags of one batch fit i32 offsets");
            self.tags.append(true);
        } else {
            append_list(
                &mut self.tags,
                a.tags.as_ref().map(|t| t.iter().map(JStr::as_str)),
            );
        }
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
            .append_option(a.output_fields.map(|raw| raw.0).filter(|s| *s != "null"));
        Ok(())
    }

    fn finish(mut self) -> crate::Result<RecordBatch> {
        let mut columns = self.entity.finish();
        let rest: [ArrayRef; 20] = [
            Arc::new(self.event_id.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.priority.finish()),
            self.source.finish(),
            self.output.finish(),
            Arc::new(self.tags.finish()),
            Arc::new(self.evt_time.finish()),
            self.evt_type.finish(),
            self.container_id.finish(),
            self.image.finish(),
            self.image_tag.finish(),
            self.proc_name.finish(),
            self.proc_exepath.finish(),
            self.proc_cmdline.finish(),
            self.proc_pname.finish(),
            self.user_name.finish(),
            Arc::new(self.user_uid.finish()),
            self.fd_name.finish(),
            self.uuid.finish(),
            self.output_fields.finish(),
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
    fn tags_of_every_alert_are_its_own_whatever_the_alerts_before_it() {
        // Repeated arrays (appended from the cache), arrays that differ by a tag or by spacing,
        // empty and null arrays, a tag with an escape (read by serde_json), and more distinct
        // arrays than the cache holds.
        let mut expected: Vec<Option<Vec<String>>> = Vec::new();
        let mut input = String::new();
        let mut push = |tags_json: &str, tags: Option<Vec<String>>| {
            input.push_str(&format!(
                r#"{{"rule":"r","priority":"Notice","time":"2025-01-01T00:00:00Z","tags":{tags_json}}}"#
            ));
            input.push('\n');
            expected.push(tags);
        };
        let owned = |tags: &[&str]| Some(tags.iter().map(|t| t.to_string()).collect());
        for round in 0..2 {
            push(r#"["a","b"]"#, owned(&["a", "b"]));
            push(r#"["a","b"]"#, owned(&["a", "b"]));
            push(r#"["a", "b"]"#, owned(&["a", "b"]));
            push(r#"["a","c"]"#, owned(&["a", "c"]));
            push("[]", owned(&[]));
            push("null", None);
            push(r#"["q\"uote"]"#, owned(&["q\"uote"]));
            for i in 0..TAG_LISTS + 3 {
                let tag = format!("t{}", (i + round) % (TAG_LISTS + 7));
                push(&format!(r#"["x","{tag}"]"#), owned(&["x", &tag]));
            }
            push(r#"["a","b"]"#, owned(&["a", "b"]));
        }
        let d = decode_str(&input);
        assert!(d.quarantined.is_empty(), "{:?}", d.quarantined);
        let tags = d
            .batch
            .column_by_name("tags")
            .expect("tags")
            .as_list::<i32>();
        assert_eq!(tags.len(), expected.len());
        for (row, want) in expected.iter().enumerate() {
            let got = tags.is_valid(row).then(|| {
                let list = tags.value(row);
                let list = list.as_string::<i32>();
                list.iter()
                    .map(|t| t.expect("tags are not null").to_string())
                    .collect()
            });
            assert_eq!(&got, want, "row {row}");
        }
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
    fn control_characters_in_strings_are_invalid_json_on_every_path() {
        let alert = |rule: &str| {
            format!(
                r#"{{"rule":"{rule}","priority":"Notice","time":"2024-01-01T00:00:00Z","tags":["a"]}}"#
            )
        };
        let input = [
            alert("plain"),
            alert("tab\there"),
            alert("unit\u{1f}separator"),
            alert("escaped\\ttab"),
        ]
        .join("\r\n");
        let d = decode_str(&input);
        let reasons: Vec<_> = d
            .quarantined
            .iter()
            .map(|q| (q.location, q.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (Location::Line(2), Reason::InvalidJson),
                (Location::Line(3), Reason::InvalidJson),
            ]
        );
        assert_eq!(col(&d, "rule").value(0), "plain");
        assert_eq!(col(&d, "rule").value(1), "escaped\ttab");
    }

    /// An alert as read: its top-level values, the promoted output fields, the tags.
    type Reading<'a> = (Vec<Option<String>>, Fields<'a>, Vec<String>);

    /// The scanner's reading of an alert, or `None` where it gives up.
    fn scanned(text: &str) -> Option<Reading<'_>> {
        scanned_after(&[], text)
    }

    /// [`scanned`] with the output fields' keys of the alerts `before` remembered.
    fn scanned_after<'a>(before: &[&str], text: &'a str) -> Option<Reading<'a>> {
        let mut keys = Keys::default();
        let mut tags = Vec::new();
        for earlier in before {
            let _ = scan_alert(Record::new(earlier), &mut tags, &mut keys);
        }
        let (a, fields) = scan_alert(Record::new(text), &mut tags, &mut keys)?;
        let tags = tags.into_iter().map(|r| text[r].to_string()).collect();
        Some((alert_values(&a), fields, tags))
    }

    /// serde_json's reading of an alert (the decoder's slow path).
    fn parsed(text: &str) -> Result<Reading<'_>, RecordError> {
        check_depth(text)?;
        let a: Alert<'_> = parse(text)?;
        let fields = match a.output_fields {
            Some(raw) if raw.0 != "null" => parse(raw.0)?,
            _ => Fields::default(),
        };
        let tags = a
            .tags
            .iter()
            .flatten()
            .map(|t| t.as_str().to_string())
            .collect();
        Ok((alert_values(&a), fields, tags))
    }

    fn alert_values(a: &Alert<'_>) -> Vec<Option<String>> {
        let s = |v: &Option<JStr<'_>>| v.as_ref().map(|v| v.as_str().to_string());
        vec![
            s(&a.time),
            s(&a.rule),
            s(&a.priority),
            s(&a.source),
            s(&a.hostname),
            s(&a.output),
            s(&a.uuid),
            a.output_fields.map(|raw| raw.0.to_string()),
        ]
    }

    proptest::proptest! {
        /// What the scanner reads from an alert, serde_json reads the same, control characters,
        /// escapes and random edits included.
        #[test]
        fn scanner_reads_alerts_as_serde_json_does(
            strings in proptest::collection::vec("[a-z<>A \"\\\\/\u{1}\u{1f}\t\n\r\u{7f}é☃]{0,70}", 4),
            tag in "[a-z_]{0,12}",
            evt_time: i64,
            uid in proptest::option::of(proptest::prelude::any::<i32>()),
            pretty: bool,
            edit in proptest::option::of((0usize..10_000, 0usize..4, "[]{}\\[,:\" \\\\0-9\u{1}\n\t\rnul]{0,3}")),
        ) {
            use proptest::prelude::*;
            let value = serde_json::json!({
                "rule": strings[0],
                "priority": "Notice",
                "time": "2024-01-01T00:00:00Z",
                "output": strings[1],
                // Tags with escapes are left to serde_json.
                "tags": ["a", tag],
                "output_fields": {
                    "proc.name": strings[2],
                    "proc.cmdline": strings[3],
                    "evt.time": evt_time,
                    "user.uid": uid,
                    "proc.tty": [1, {"x": strings[3]}],
                    "fd.name": null,
                    "container.id": 12,
                },
            });
            let mut text = if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .expect("a value serializes");
            let original = text.clone();
            if let Some((at, cut, insert)) = &edit {
                let at = at % (text.len() + 1);
                let end = (at + cut).min(text.len());
                if text.is_char_boundary(at) && text.is_char_boundary(end) {
                    text.replace_range(at..end, insert);
                }
            }
            let theirs = parsed(&text);
            if edit.is_none() {
                prop_assert!(theirs.is_ok(), "{}", text);
            }
            if let Some(ours) = scanned(&text) {
                prop_assert_eq!(Ok(ours), theirs.clone(), "{}", text);
            }
            // With the keys of the alert before the edit remembered, and of itself: an edit in
            // a key must not be read as the remembered key.
            if let Some(ours) = scanned_after(&[&original], &text) {
                prop_assert_eq!(Ok(ours), theirs.clone(), "after the original: {}", text);
            }
            if let Some(ours) = scanned_after(&[&text], &text) {
                prop_assert_eq!(Ok(ours), theirs, "again: {}", text);
            }
        }
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
