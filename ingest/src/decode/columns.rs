//! Column builders shared by the decoders: the entity columns every stream starts with, and a
//! borrowed-string newtype that lets serde hand out `&str` slices of the input.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, StringBuilder, TimestampNanosecondBuilder};

/// A JSON string that borrows from the input when it has no escapes.
///
/// `Option<Cow<str>>` fields never borrow with serde's derive; a newtype around the `Cow` does.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct JStr<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl JStr<'_> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `Option<JStr>` → `Option<&str>`, empty strings as `None`.
pub(crate) fn non_empty<'s>(v: &'s Option<JStr<'_>>) -> Option<&'s str> {
    v.as_ref().map(JStr::as_str).filter(|s| !s.is_empty())
}

/// The entity columns (`ts` … `gpu_uuid`) of one batch.
pub(crate) struct EntityColumns {
    ts: TimestampNanosecondBuilder,
    cluster: StringBuilder,
    node: StringBuilder,
    namespace: StringBuilder,
    pod: StringBuilder,
    pod_uid: StringBuilder,
    container: StringBuilder,
    gpu_uuid: StringBuilder,
    cluster_name: Option<Arc<str>>,
}

/// One row's entity values.
#[derive(Default, Clone, Copy)]
pub(crate) struct Entity<'a> {
    pub node: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    pub container: Option<&'a str>,
    pub gpu_uuid: Option<&'a str>,
}

impl EntityColumns {
    pub(crate) fn with_capacity(rows: usize, cluster: Option<Arc<str>>) -> Self {
        let s = || StringBuilder::with_capacity(rows, rows * 16);
        EntityColumns {
            ts: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            cluster: StringBuilder::with_capacity(rows, 0),
            node: s(),
            namespace: s(),
            pod: s(),
            pod_uid: s(),
            container: s(),
            gpu_uuid: s(),
            cluster_name: cluster,
        }
    }

    pub(crate) fn append(&mut self, ts: i64, e: &Entity<'_>) {
        self.ts.append_value(ts);
        self.cluster.append_option(self.cluster_name.as_deref());
        self.node.append_option(e.node);
        self.namespace.append_option(e.namespace);
        self.pod.append_option(e.pod);
        self.pod_uid.append_option(e.pod_uid);
        self.container.append_option(e.container);
        self.gpu_uuid.append_option(e.gpu_uuid);
    }

    pub(crate) fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.cluster.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.namespace.finish()),
            Arc::new(self.pod.finish()),
            Arc::new(self.pod_uid.finish()),
            Arc::new(self.container.finish()),
            Arc::new(self.gpu_uuid.finish()),
        ]
    }
}

/// Appends an optional list of strings.
pub(crate) fn append_list<'a>(
    b: &mut ListBuilder<StringBuilder>,
    items: Option<impl IntoIterator<Item = &'a str>>,
) {
    match items {
        Some(items) => {
            for item in items {
                b.values().append_value(item);
            }
            b.append(true);
        }
        None => b.append(false),
    }
}

/// A string column builder with room for `rows` values of about `bytes_per_row` bytes.
pub(crate) fn strings(rows: usize, bytes_per_row: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * bytes_per_row)
}

/// Hex of the XXH3-128 hash of `bytes`: a stable id for records that carry none.
pub(crate) fn content_id(bytes: &[u8]) -> String {
    format!("{:032x}", twox_hash::XxHash3_128::oneshot(bytes))
}
