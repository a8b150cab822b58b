//! Arrow schemas of the three input streams, defined once.
//!
//! Every stream starts with the same entity columns (`ts`, `cluster`, `node`, `namespace`, `pod`,
//! `pod_uid`, `container`, `gpu_uuid`) so rules and correlation can join on them whatever the
//! source. Fields an analyst queries are typed columns; whatever else the source said is kept
//! verbatim as JSON text (`labels`, `output_fields`, `request_object`, …) so nothing is lost.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Event time, nanoseconds since the Unix epoch, UTC. Present in every stream.
pub const TS: &str = "ts";
/// Cluster name, from the source's configuration (sources do not know it by themselves).
pub const CLUSTER: &str = "cluster";
/// Kubernetes node (DCGM `Hostname`/`hostname`, Falco `hostname`).
pub const NODE: &str = "node";
/// Kubernetes namespace.
pub const NAMESPACE: &str = "namespace";
/// Pod name.
pub const POD: &str = "pod";
/// Pod UID.
pub const POD_UID: &str = "pod_uid";
/// Container name.
pub const CONTAINER: &str = "container";
/// Physical GPU UUID (`GPU-…`); for MIG instances the parent GPU's UUID.
pub const GPU_UUID: &str = "gpu_uuid";
/// Stable identifier of one source record (Falco event, audit event stage).
pub const EVENT_ID: &str = "event_id";

/// The streams gpusiem ingests, plus the findings it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// dcgm-exporter samples, one row per sample.
    GpuMetrics,
    /// Falco alerts, one row per alert.
    FalcoEvents,
    /// Kubernetes audit events, one row per event and stage.
    K8sAudit,
}

impl Stream {
    /// Every input stream, in a fixed order.
    pub const ALL: [Stream; 3] = [Stream::GpuMetrics, Stream::FalcoEvents, Stream::K8sAudit];

    /// The table name, as used in SQL, on disk and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Stream::GpuMetrics => "gpu_metrics",
            Stream::FalcoEvents => "falco_events",
            Stream::K8sAudit => "k8s_audit",
        }
    }

    /// Parses a table name.
    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stream's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Stream::GpuMetrics => gpu_metrics::schema(),
            Stream::FalcoEvents => falco_events::schema(),
            Stream::K8sAudit => k8s_audit::schema(),
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The event-time column type shared by every stream.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn string_list(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        true,
    )
}

fn entity_fields() -> Vec<Field> {
    vec![
        Field::new(TS, ts_type(), false),
        utf8(CLUSTER),
        utf8(NODE),
        utf8(NAMESPACE),
        utf8(POD),
        utf8(POD_UID),
        utf8(CONTAINER),
        utf8(GPU_UUID),
    ]
}

/// `gpu_metrics`: dcgm-exporter samples.
pub mod gpu_metrics {
    use super::*;

    /// Canonical metric name (`DCGM_FI_DEV_FB_USED`); old-namespace names are mapped to it and
    /// the original name is kept in `labels` under `__name__`.
    pub const METRIC: &str = "metric";
    /// Sample value; null when DCGM reported a blank sentinel (no data).
    pub const VALUE: &str = "value";
    /// NVML index of the GPU on its node (for MIG series the parent GPU).
    pub const GPU: &str = "gpu";
    /// `/dev/nvidiaN` name.
    pub const DEVICE: &str = "device";
    /// PCI bus id (`00000000:31:00.0`).
    pub const PCI_BUS_ID: &str = "pci_bus_id";
    /// GPU model (`modelName`).
    pub const MODEL: &str = "model";
    /// MIG GPU-instance profile (`GPU_I_PROFILE`, e.g. `3g.40gb`).
    pub const GPU_I_PROFILE: &str = "gpu_i_profile";
    /// MIG GPU-instance id (`GPU_I_ID`).
    pub const GPU_I_ID: &str = "gpu_i_id";
    /// Shared-GPU replica index (`vgpu`).
    pub const VGPU: &str = "vgpu";
    /// Every other label, as a JSON object of strings.
    pub const LABELS: &str = "labels";

    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = entity_fields();
        fields.extend([
            Field::new(METRIC, DataType::Utf8, false),
            Field::new(VALUE, DataType::Float64, true),
            Field::new(GPU, DataType::UInt32, true),
            utf8(DEVICE),
            utf8(PCI_BUS_ID),
            utf8(MODEL),
            utf8(GPU_I_PROFILE),
            Field::new(GPU_I_ID, DataType::UInt32, true),
            utf8(VGPU),
            utf8(LABELS),
        ]);
        Arc::new(Schema::new(fields))
    });

    /// The schema.
    pub fn schema() -> SchemaRef {
        SCHEMA.clone()
    }
}

/// `falco_events`: Falco alerts (Falco JSON output, falcosidekick's body).
pub mod falco_events {
    use super::*;

    /// Rule name.
    pub const RULE: &str = "rule";
    /// Priority, long form (`Warning`, `Informational`, …).
    pub const PRIORITY: &str = "priority";
    /// Event source (`syscall`, `k8s_audit`, …).
    pub const SOURCE: &str = "source";
    /// Rendered output text.
    pub const OUTPUT: &str = "output";
    /// Rule tags.
    pub const TAGS: &str = "tags";
    /// `evt.time` in nanoseconds, when present (exact: never parsed through f64).
    pub const EVT_TIME: &str = "evt_time";
    /// `evt.type`.
    pub const EVT_TYPE: &str = "evt_type";
    /// `container.id`.
    pub const CONTAINER_ID: &str = "container_id";
    /// `container.image.repository`.
    pub const IMAGE: &str = "image";
    /// `container.image.tag`.
    pub const IMAGE_TAG: &str = "image_tag";
    /// `proc.name`.
    pub const PROC_NAME: &str = "proc_name";
    /// `proc.exepath`.
    pub const PROC_EXEPATH: &str = "proc_exepath";
    /// `proc.cmdline`.
    pub const PROC_CMDLINE: &str = "proc_cmdline";
    /// `proc.pname`.
    pub const PROC_PNAME: &str = "proc_pname";
    /// `user.name`.
    pub const USER_NAME: &str = "user_name";
    /// `user.uid`.
    pub const USER_UID: &str = "user_uid";
    /// `fd.name` (file path or `ip:port->ip:port`).
    pub const FD_NAME: &str = "fd_name";
    /// falcosidekick's `uuid`.
    pub const UUID: &str = "uuid";
    /// Every output field as Falco sent it, JSON object text.
    pub const OUTPUT_FIELDS: &str = "output_fields";

    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = entity_fields();
        fields.extend([
            Field::new(EVENT_ID, DataType::Utf8, false),
            Field::new(RULE, DataType::Utf8, false),
            Field::new(PRIORITY, DataType::Utf8, false),
            utf8(SOURCE),
            utf8(OUTPUT),
            string_list(TAGS),
            Field::new(EVT_TIME, DataType::Int64, true),
            utf8(EVT_TYPE),
            utf8(CONTAINER_ID),
            utf8(IMAGE),
            utf8(IMAGE_TAG),
            utf8(PROC_NAME),
            utf8(PROC_EXEPATH),
            utf8(PROC_CMDLINE),
            utf8(PROC_PNAME),
            utf8(USER_NAME),
            Field::new(USER_UID, DataType::Int64, true),
            utf8(FD_NAME),
            utf8(UUID),
            utf8(OUTPUT_FIELDS),
        ]);
        Arc::new(Schema::new(fields))
    });

    /// The schema.
    pub fn schema() -> SchemaRef {
        SCHEMA.clone()
    }
}

/// `k8s_audit`: Kubernetes audit events, one row per event and stage.
pub mod k8s_audit {
    use super::*;

    /// `requestReceivedTimestamp`.
    pub const REQUEST_RECEIVED: &str = "request_received";
    /// `auditID` (shared by every stage of one request).
    pub const AUDIT_ID: &str = "audit_id";
    /// `stage` (`RequestReceived`, `ResponseStarted`, `ResponseComplete`, `Panic`).
    pub const STAGE: &str = "stage";
    /// `level`.
    pub const LEVEL: &str = "level";
    /// `verb` (`get`, `create`, …; lower-case HTTP method for non-resource URLs).
    pub const VERB: &str = "verb";
    /// `user.username`.
    pub const USER: &str = "user";
    /// `user.groups`.
    pub const GROUPS: &str = "groups";
    /// `impersonatedUser.username`.
    pub const IMPERSONATED_USER: &str = "impersonated_user";
    /// `sourceIPs`.
    pub const SOURCE_IPS: &str = "source_ips";
    /// `userAgent`.
    pub const USER_AGENT: &str = "user_agent";
    /// `objectRef.resource`.
    pub const RESOURCE: &str = "resource";
    /// `objectRef.subresource` (`exec`, `attach`, `log`, …).
    pub const SUBRESOURCE: &str = "subresource";
    /// `objectRef.name`.
    pub const NAME: &str = "name";
    /// `objectRef.apiGroup` (empty for the core group).
    pub const API_GROUP: &str = "api_group";
    /// `requestURI`.
    pub const REQUEST_URI: &str = "request_uri";
    /// `responseStatus.code`.
    pub const RESPONSE_CODE: &str = "response_code";
    /// `responseStatus.reason`.
    pub const RESPONSE_REASON: &str = "response_reason";
    /// `authorization.k8s.io/decision` annotation (`allow`, `forbid`).
    pub const DECISION: &str = "decision";
    /// `authorization.k8s.io/reason` annotation.
    pub const AUTHZ_REASON: &str = "authz_reason";
    /// The whole `annotations` object, JSON text.
    pub const ANNOTATIONS: &str = "annotations";
    /// `user` object (uid, extra) as JSON text.
    pub const USER_INFO: &str = "user_info";
    /// `requestObject`, verbatim JSON text.
    pub const REQUEST_OBJECT: &str = "request_object";
    /// `responseObject`, verbatim JSON text.
    pub const RESPONSE_OBJECT: &str = "response_object";
    /// Envelope the event arrived in: `event`, `aks`, `gke`.
    pub const ENVELOPE: &str = "envelope";

    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = entity_fields();
        fields.extend([
            Field::new(EVENT_ID, DataType::Utf8, false),
            Field::new(REQUEST_RECEIVED, ts_type(), true),
            Field::new(AUDIT_ID, DataType::Utf8, false),
            utf8(STAGE),
            utf8(LEVEL),
            utf8(VERB),
            utf8(USER),
            string_list(GROUPS),
            utf8(IMPERSONATED_USER),
            string_list(SOURCE_IPS),
            utf8(USER_AGENT),
            utf8(RESOURCE),
            utf8(SUBRESOURCE),
            utf8(NAME),
            utf8(API_GROUP),
            utf8(REQUEST_URI),
            Field::new(RESPONSE_CODE, DataType::Int32, true),
            utf8(RESPONSE_REASON),
            utf8(DECISION),
            utf8(AUTHZ_REASON),
            utf8(ANNOTATIONS),
            utf8(USER_INFO),
            utf8(REQUEST_OBJECT),
            utf8(RESPONSE_OBJECT),
            utf8(ENVELOPE),
        ]);
        Arc::new(Schema::new(fields))
    });

    /// The schema.
    pub fn schema() -> SchemaRef {
        SCHEMA.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_starts_with_the_entity_columns() {
        for stream in Stream::ALL {
            let schema = stream.schema();
            let names: Vec<&str> = schema
                .fields()
                .iter()
                .take(8)
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(
                names,
                [
                    TS, CLUSTER, NODE, NAMESPACE, POD, POD_UID, CONTAINER, GPU_UUID
                ],
                "{stream}"
            );
            assert_eq!(Stream::from_name(stream.name()), Some(stream));
        }
    }

    #[test]
    fn column_names_are_unique() {
        for stream in Stream::ALL {
            let schema = stream.schema();
            let mut names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
            let before = names.len();
            names.sort();
            names.dedup();
            assert_eq!(before, names.len(), "{stream}");
        }
    }
}
