//! Delivery of findings: sinks (every finding), notifiers (per alert group), the router between
//! them, and a durable outbox in front of each.
//!
//! ```text
//!                      ┌─► outbox sink:loki ──────► worker ─► Loki push
//!  pipeline            ├─► outbox sink:elasticsearch ► worker ─► Elasticsearch _bulk
//!  enqueue(findings) ──┤
//!  (Ok = on disk in    └─► outbox router ─► Router ─► groups ─┬─► outbox notifier:slack ─► worker ─► Slack
//!   every outbox)          (findings that   (tree, timers,    ├─► outbox notifier:pagerduty ► worker ─► PagerDuty
//!                          route somewhere)  inhibition,      └─► outbox notifier:talon ─► worker ─► webhook
//!                                            silences)
//! ```
//!
//! * **At least once.** [`Delivery::enqueue`] returns `Ok` only when the findings are written
//!   and synced in every outbox they go to; the pipeline acknowledges its source batch only then.
//!   Workers settle outbox records when the receiver acknowledged them or they went to the
//!   dead-letter file; after a crash, everything unsettled is sent again. Receivers see
//!   duplicates as the same thing: Elasticsearch `_id`, PagerDuty `dedup_key`, Loki identical
//!   (time, line).
//! * **Retries** (`retry.rs`): 408/429/5xx/connection errors with capped, jittered exponential
//!   backoff and `Retry-After`; never other 4xx — those, and Elasticsearch per-item 4xx, go to
//!   `<data_dir>/dead-letter/<target>.jsonl` with the reason. Elasticsearch partial failures
//!   re-send only the failed items.
//! * **Accounting** (`metrics.rs`): per target, `received = delivered + queued +
//!   dead_lettered{reason} + dropped{reason}`, exported as `gpusiem_delivery_*`.
//! * **Files**: `<data_dir>/outbox/{sink-<name>,notifier-<name>,router}/`,
//!   `<data_dir>/dead-letter/`, `<data_dir>/silences.json`.
//!
//! Adding a sink or notifier: a variant in [`SinkConfig`] / [`NotifierConfig`] with its
//! validation, an implementation of [`sink::Sink`] / [`notifier::Notifier`] in `sinks/` or
//! `notifiers/`, a line in [`Delivery::start`], and a contract test against a fake receiver in
//! `tests/`.

pub mod dead_letter;
pub mod http;
pub mod matcher;
pub mod metrics;
pub mod notifier;
pub mod notifiers;
pub mod outbox;
pub mod retry;
pub mod router;
pub mod silences;
pub mod sink;
pub mod sinks;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpusiem_detect::{Finding, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Problems, Secret};
use dead_letter::DeadLetter;
use metrics::{Accounting, DeliveryMetrics};
use notifier::NotifierTarget;
use notifiers::pagerduty::PagerDuty;
use notifiers::slack::Slack;
use notifiers::webhook::{WebhookFormat, WebhookNotifier};
use outbox::Outbox;
use retry::Backoff;
use router::{Command, InhibitRule, RouteTree, Router, RouterParts};
use silences::Silences;
use sink::SinkTarget;
use sinks::elasticsearch::{Elasticsearch, EsAuth, IndexMode};
use sinks::loki::{Loki, LokiAuth, LokiEncoding};
use sinks::webhook::WebhookSink;
use worker::{Limits, Target, Worker};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `[[sinks]]`: where every finding is pushed, in batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Grafana Loki push API.
    Loki(LokiConfig),
    /// Elasticsearch `_bulk`.
    Elasticsearch(ElasticsearchConfig),
    /// A JSON array of findings `POST`ed to a URL.
    Webhook(WebhookSinkConfig),
}

/// `[[notifiers]]`: who is told, once per alert group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierConfig {
    /// Slack incoming webhook.
    Slack(SlackConfig),
    /// PagerDuty Events API v2.
    #[serde(rename = "pagerduty")]
    PagerDuty(PagerDutyConfig),
    /// A JSON `POST` per notification (for example to Falco Talon).
    Webhook(WebhookNotifierConfig),
}

/// `[[sinks]] type = "loki"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// Name in metrics, logs and the outbox directory; default `loki`.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL, e.g. `http://loki:3100`; `/loki/api/v1/push` is appended.
    pub url: String,
    /// `X-Scope-OrgID` (multi-tenant Loki); none by default.
    #[serde(default)]
    pub tenant: Option<String>,
    /// `json` (default) or `protobuf` (snappy-compressed).
    #[serde(default)]
    pub encoding: LokiEncoding,
    /// Longest line sent, bytes (Loki refuses lines over 256 KB); default 250000.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Basic-auth user (with `password_file` or `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Basic-auth password environment variable.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Bearer token file.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Bearer token environment variable.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Extra PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a loopback URL (a sidecar, tests); default false.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// The outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
}

fn default_max_line_bytes() -> usize {
    250_000
}

/// `[[sinks]] type = "elasticsearch"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Name; default `elasticsearch`.
    #[serde(default)]
    pub name: Option<String>,
    /// Cluster URL, e.g. `https://es:9200`.
    pub url: String,
    /// Data stream or index name (prefix with `mode = "dated_index"`); default
    /// `gpusiem-findings`. Lower case, `[a-z0-9._-]`.
    #[serde(default = "default_index")]
    pub index: String,
    /// `data_stream` (default), `index` or `dated_index`.
    #[serde(default)]
    pub mode: IndexMode,
    /// Install the index template at start (skipped with a warning when not allowed);
    /// default true.
    #[serde(default = "yes")]
    pub install_template: bool,
    /// API key (the encoded form) file; sent as `Authorization: ApiKey …`.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// API key environment variable.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Basic-auth user (with `password_file` or `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Basic-auth password environment variable.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Extra PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a loopback URL; default false.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// The outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
}

fn default_index() -> String {
    "gpusiem-findings".into()
}

fn yes() -> bool {
    true
}

/// `[[sinks]] type = "webhook"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// Name; default `webhook`.
    #[serde(default)]
    pub name: Option<String>,
    /// The URL.
    pub url: String,
    /// Bearer token file.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Bearer token environment variable.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Extra PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a loopback URL; default false.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// The outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
}

/// `[[notifiers]] type = "slack"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Name (the routing `receiver`); default `slack`.
    #[serde(default)]
    pub name: Option<String>,
    /// File holding the incoming-webhook URL (it is the secret).
    #[serde(default)]
    pub webhook_url_file: Option<PathBuf>,
    /// Environment variable holding the URL.
    #[serde(default)]
    pub webhook_url_env: Option<String>,
    /// Least severity notified; default `high`.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Least time between two messages, ms (Slack allows about one per second per webhook);
    /// default 1000.
    #[serde(default = "default_slack_interval")]
    pub min_interval_ms: u64,
    /// Findings listed per message; default 10.
    #[serde(default = "default_slack_findings")]
    pub max_findings: usize,
    /// Allow a loopback URL; default false.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// The outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
}

fn default_min_severity() -> Severity {
    Severity::High
}

fn default_slack_interval() -> u64 {
    1000
}

fn default_slack_findings() -> usize {
    notifiers::slack::DEFAULT_MAX_FINDINGS
}

/// `[[notifiers]] type = "pagerduty"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// Name; default `pagerduty`.
    #[serde(default)]
    pub name: Option<String>,
    /// File holding the integration's routing key.
    #[serde(default)]
    pub routing_key_file: Option<PathBuf>,
    /// Environment variable holding the routing key.
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Events API endpoint; default `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default = "default_pd_url")]
    pub url: String,
    /// Event `source`; default the findings' cluster, else `gpusiem`.
    #[serde(default)]
    pub source: Option<String>,
    /// Least severity notified; default `high`.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Allow a loopback URL; default false.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// The outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
}

fn default_pd_url() -> String {
    notifiers::pagerduty::DEFAULT_URL.into()
}

/// `[[notifiers]] type = "webhook"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookNotifierConfig {
    /// Name; default `webhook`.
    #[serde(default)]
    pub name: Option<String>,
    /// The URL.
    pub url: String,
    /// `alert` (default: the alert group as JSON) or `falco` (one Falco-style event per
    /// firing finding, for Falco Talon).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Bearer token file.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Bearer token environment variable.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Least severity notified; default `high`.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Extra PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a loopback URL; default false.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// The outbox.
    #[serde(default)]
    pub buffer: BufferConfig,
}

/// `batch`: how a sink's worker forms requests. Unset keys take the sink's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most findings per request (Loki 1000, Elasticsearch 2000, webhook 500).
    pub max_items: Option<usize>,
    /// Most payload bytes per request, about (Loki 1 MiB, Elasticsearch 5 MiB, webhook 1 MiB).
    pub max_bytes: Option<usize>,
    /// How long to wait for a batch to fill once a finding is queued, ms (default 50).
    pub timeout_ms: Option<u64>,
}

/// `request`: timeouts and retries. Unset keys take the target's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    /// Whole-request timeout, seconds (default 30).
    pub timeout_secs: Option<u64>,
    /// First retry delay, ms (Loki 500, others 1000).
    pub retry_initial_ms: Option<u64>,
    /// Longest retry delay, seconds (Loki 300, others 30).
    pub retry_max_secs: Option<u64>,
    /// Attempts before items go to the dead-letter file (reason `retries_exhausted`);
    /// default 0 = retry for ever (the outbox is bounded and durable).
    pub retry_max_attempts: Option<u32>,
}

/// What an append does when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait up to `block_timeout_secs` for space, then fail: the pipeline does not
    /// acknowledge the batch and the source sends it again (back-pressure).
    #[default]
    Block,
    /// Drop the new findings, counted as `dropped{reason="outbox_full"}`.
    DropNewest,
}

/// `buffer`: the target's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most bytes on disk (default 256 MiB).
    pub max_bytes: u64,
    /// Segment file size before a new one is started (default 16 MiB).
    pub segment_max_bytes: u64,
    /// `block` (default) or `drop_newest`.
    pub when_full: WhenFull,
    /// How long an append waits for space with `block`, seconds (default 30).
    pub block_timeout_secs: u64,
    /// `fdatasync` every append before acknowledging it (default true). Without it a crash of
    /// the machine (not of the process) can lose acknowledged findings.
    pub fsync: bool,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: 256 << 20,
            segment_max_bytes: 16 << 20,
            when_full: WhenFull::Block,
            block_timeout_secs: 30,
            fsync: true,
        }
    }
}

/// `[routing]`: the root route, grouping defaults, child routes and inhibition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The root's notifier; unset: every notifier.
    pub receiver: Option<String>,
    /// Fields grouping findings into one notification (default `["detector", "namespace"]`;
    /// `["..."]`: each finding alone). See `matcher::FIELDS`.
    pub group_by: Vec<String>,
    /// Wait before the first notification of a new group, seconds (default 30).
    pub group_wait_secs: u64,
    /// Wait between notifications of a group about new findings, seconds (default 300).
    pub group_interval_secs: u64,
    /// Notify a still-firing group again after, seconds (default 14400).
    pub repeat_interval_secs: u64,
    /// Notify when findings resolve (PagerDuty `resolve`); default true.
    pub send_resolved: bool,
    /// Findings listed per notification (the rest are counted); default 20.
    pub max_findings_per_alert: usize,
    /// A firing finding not updated for this long leaves its group without a notification
    /// (so a finding that never resolves does not repeat for ever), seconds; default 86400.
    pub alert_ttl_secs: u64,
    /// Child routes, tried in order.
    pub routes: Vec<RouteConfig>,
    /// Inhibition rules.
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    /// The router's outbox.
    pub buffer: BufferConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            receiver: None,
            group_by: vec!["detector".into(), "namespace".into()],
            group_wait_secs: 30,
            group_interval_secs: 300,
            repeat_interval_secs: 4 * 3600,
            send_resolved: true,
            max_findings_per_alert: 20,
            alert_ttl_secs: 86_400,
            routes: Vec::new(),
            inhibit_rules: Vec::new(),
            buffer: BufferConfig::default(),
        }
    }
}

/// `[[routing.routes]]` (nested as `[[routing.routes.routes]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// The notifier; inherited from the parent when unset.
    pub receiver: Option<String>,
    /// Matchers (`namespace="ml"`, `severity=~"high|critical"`), all of which must match.
    pub matchers: Vec<String>,
    /// Least severity, on top of the matchers.
    pub min_severity: Option<Severity>,
    /// Keep trying the following sibling routes after this one matched.
    #[serde(rename = "continue")]
    pub continue_: bool,
    /// Overrides the parent's `group_by`.
    pub group_by: Option<Vec<String>>,
    /// Overrides the parent's `group_wait_secs`.
    pub group_wait_secs: Option<u64>,
    /// Overrides the parent's `group_interval_secs`.
    pub group_interval_secs: Option<u64>,
    /// Overrides the parent's `repeat_interval_secs`.
    pub repeat_interval_secs: Option<u64>,
    /// Child routes.
    pub routes: Vec<RouteConfig>,
}

/// `[[routing.inhibit_rules]]`: mute `target` findings while a `source` finding fires with the
/// same values of the `equal` fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InhibitRuleConfig {
    /// Matchers of the inhibiting finding.
    pub source_matchers: Vec<String>,
    /// Matchers of the muted finding.
    pub target_matchers: Vec<String>,
    /// Fields that must be equal in both.
    pub equal: Vec<String>,
}

/// Resolved per-target settings (configuration plus the target kind's defaults).
#[derive(Debug, Clone, Copy)]
struct Tuning {
    max_items: usize,
    max_bytes: usize,
    linger: Duration,
    timeout: Duration,
    backoff: Backoff,
    max_attempts: u32,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Loki,
    Elasticsearch,
    WebhookSink,
    Notifier,
}

fn tuning(kind: Kind, batch: &BatchConfig, req: &RequestConfig) -> Tuning {
    let (items, bytes, initial_ms, max_secs) = match kind {
        Kind::Loki => (1000, 1 << 20, 500, 300),
        Kind::Elasticsearch => (2000, 5 << 20, 1000, 30),
        Kind::WebhookSink => (500, 1 << 20, 1000, 30),
        Kind::Notifier => (1, 1 << 20, 1000, 30),
    };
    let initial = Duration::from_millis(req.retry_initial_ms.unwrap_or(initial_ms));
    Tuning {
        max_items: if matches!(kind, Kind::Notifier) {
            1
        } else {
            batch.max_items.unwrap_or(items)
        },
        max_bytes: batch.max_bytes.unwrap_or(bytes),
        linger: Duration::from_millis(batch.timeout_ms.unwrap_or(50)),
        timeout: Duration::from_secs(req.timeout_secs.unwrap_or(30)),
        backoff: Backoff {
            initial,
            max: Duration::from_secs(req.retry_max_secs.unwrap_or(max_secs)).max(initial),
        },
        max_attempts: req.retry_max_attempts.unwrap_or(0),
    }
}

impl SinkConfig {
    /// The sink's name (default: its type).
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Loki(c) => c.name.as_deref().unwrap_or("loki"),
            SinkConfig::Elasticsearch(c) => c.name.as_deref().unwrap_or("elasticsearch"),
            SinkConfig::Webhook(c) => c.name.as_deref().unwrap_or("webhook"),
        }
    }
}

impl NotifierConfig {
    /// The notifier's name (default: its type).
    pub fn name(&self) -> &str {
        match self {
            NotifierConfig::Slack(c) => c.name.as_deref().unwrap_or("slack"),
            NotifierConfig::PagerDuty(c) => c.name.as_deref().unwrap_or("pagerduty"),
            NotifierConfig::Webhook(c) => c.name.as_deref().unwrap_or("webhook"),
        }
    }

    /// The least severity it is told about.
    pub fn min_severity(&self) -> Severity {
        match self {
            NotifierConfig::Slack(c) => c.min_severity,
            NotifierConfig::PagerDuty(c) => c.min_severity,
            NotifierConfig::Webhook(c) => c.min_severity,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn validate_name(
    path: &str,
    name: &str,
    seen: &mut BTreeSet<String>,
    what: &str,
    p: &mut Problems,
) {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        p.push(
            format!("{path}.name"),
            "1 to 64 characters: letters, digits, - and _",
        );
    }
    if !seen.insert(name.to_string()) {
        p.push(
            format!("{path}.name"),
            format!("two {what} are named {name:?}; give each a distinct name"),
        );
    }
}

fn validate_secret(
    path: &str,
    key: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
    required: bool,
    p: &mut Problems,
) {
    match (file, env) {
        (Some(_), Some(_)) => p.push(
            format!("{path}.{key}_file"),
            format!("set {key}_file or {key}_env, not both"),
        ),
        (None, None) if required => p.push(
            format!("{path}.{key}_file"),
            format!("set {key}_file or {key}_env"),
        ),
        _ => {}
    }
}

fn validate_tuning(
    path: &str,
    batch: Option<&BatchConfig>,
    req: &RequestConfig,
    buffer: &BufferConfig,
    p: &mut Problems,
) {
    if let Some(b) = batch {
        if b.max_items == Some(0) {
            p.push(format!("{path}.batch.max_items"), "must be positive");
        }
        if b.max_bytes == Some(0) {
            p.push(format!("{path}.batch.max_bytes"), "must be positive");
        }
    }
    if req.timeout_secs == Some(0) {
        p.push(format!("{path}.request.timeout_secs"), "must be positive");
    }
    if req.retry_initial_ms == Some(0) {
        p.push(
            format!("{path}.request.retry_initial_ms"),
            "must be positive",
        );
    }
    validate_buffer(&format!("{path}.buffer"), buffer, p);
}

fn validate_buffer(path: &str, b: &BufferConfig, p: &mut Problems) {
    if b.max_bytes < (1 << 20) {
        p.push(format!("{path}.max_bytes"), "at least 1048576 (1 MiB)");
    }
    if b.segment_max_bytes < (64 << 10) || b.segment_max_bytes > b.max_bytes {
        p.push(
            format!("{path}.segment_max_bytes"),
            "between 65536 and max_bytes",
        );
    }
}

fn valid_index(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '_', '+', '.'])
}

fn validate_group_by(path: &str, list: &[String], p: &mut Problems) {
    for (i, f) in list.iter().enumerate() {
        if f != "..." && !matcher::FIELDS.contains(&f.as_str()) {
            p.push(
                format!("{path}[{i}]"),
                format!(
                    "unknown field {f:?}; one of {} or \"...\"",
                    matcher::FIELDS.join(", ")
                ),
            );
        }
    }
}

fn validate_matchers(path: &str, list: &[String], p: &mut Problems) {
    for (i, m) in list.iter().enumerate() {
        if let Err(e) = matcher::Matcher::parse(m) {
            p.push(format!("{path}[{i}]"), e);
        }
    }
}

fn validate_route(path: &str, r: &RouteConfig, notifiers: &BTreeSet<String>, p: &mut Problems) {
    if let Some(rcv) = &r.receiver
        && !notifiers.contains(rcv)
    {
        p.push(
            format!("{path}.receiver"),
            format!("no notifier named {rcv:?}"),
        );
    }
    validate_matchers(&format!("{path}.matchers"), &r.matchers, p);
    if let Some(g) = &r.group_by {
        validate_group_by(&format!("{path}.group_by"), g, p);
    }
    if r.group_interval_secs == Some(0) {
        p.push(format!("{path}.group_interval_secs"), "must be positive");
    }
    for (i, c) in r.routes.iter().enumerate() {
        validate_route(&format!("{path}.routes[{i}]"), c, notifiers, p);
    }
}

/// Validates sinks, notifiers and routing (pure: no files, no network).
pub fn validate(
    sinks: &[SinkConfig],
    notifiers: &[NotifierConfig],
    routing: &RoutingConfig,
    p: &mut Problems,
) {
    let mut names = BTreeSet::new();
    for (i, s) in sinks.iter().enumerate() {
        let path = format!("sinks[{i}]");
        validate_name(&path, s.name(), &mut names, "sinks", p);
        match s {
            SinkConfig::Loki(c) => {
                http::validate_url(&format!("{path}.url"), &c.url, c.allow_loopback, p);
                if let Some(t) = &c.tenant
                    && (t.is_empty()
                        || t.len() > 150
                        || !t
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c)))
                {
                    p.push(
                        format!("{path}.tenant"),
                        "1 to 150 characters: letters, digits and !-_.*'()",
                    );
                }
                if c.max_line_bytes < 1024 || c.max_line_bytes > 256 * 1024 {
                    p.push(
                        format!("{path}.max_line_bytes"),
                        "between 1024 and 262144 (Loki's limit)",
                    );
                }
                validate_secret(
                    &path,
                    "password",
                    &c.password_file,
                    &c.password_env,
                    c.username.is_some(),
                    p,
                );
                if c.username.is_none() && (c.password_file.is_some() || c.password_env.is_some()) {
                    p.push(format!("{path}.username"), "a password needs a username");
                }
                validate_secret(
                    &path,
                    "bearer_token",
                    &c.bearer_token_file,
                    &c.bearer_token_env,
                    false,
                    p,
                );
                if c.username.is_some()
                    && (c.bearer_token_file.is_some() || c.bearer_token_env.is_some())
                {
                    p.push(
                        format!("{path}.bearer_token_file"),
                        "use basic auth or a bearer token, not both",
                    );
                }
                validate_tuning(&path, Some(&c.batch), &c.request, &c.buffer, p);
            }
            SinkConfig::Elasticsearch(c) => {
                http::validate_url(&format!("{path}.url"), &c.url, c.allow_loopback, p);
                if !valid_index(&c.index) {
                    p.push(
                        format!("{path}.index"),
                        "lower-case letters, digits, - _ . (not first), at most 200 characters",
                    );
                }
                validate_secret(&path, "api_key", &c.api_key_file, &c.api_key_env, false, p);
                validate_secret(
                    &path,
                    "password",
                    &c.password_file,
                    &c.password_env,
                    c.username.is_some(),
                    p,
                );
                if c.username.is_some() && (c.api_key_file.is_some() || c.api_key_env.is_some()) {
                    p.push(
                        format!("{path}.api_key_file"),
                        "use an API key or basic auth, not both",
                    );
                }
                validate_tuning(&path, Some(&c.batch), &c.request, &c.buffer, p);
            }
            SinkConfig::Webhook(c) => {
                http::validate_url(&format!("{path}.url"), &c.url, c.allow_loopback, p);
                validate_secret(
                    &path,
                    "bearer_token",
                    &c.bearer_token_file,
                    &c.bearer_token_env,
                    false,
                    p,
                );
                validate_tuning(&path, Some(&c.batch), &c.request, &c.buffer, p);
            }
        }
    }
    let mut notifier_names = BTreeSet::new();
    for (i, n) in notifiers.iter().enumerate() {
        let path = format!("notifiers[{i}]");
        validate_name(&path, n.name(), &mut notifier_names, "notifiers", p);
        match n {
            NotifierConfig::Slack(c) => {
                validate_secret(
                    &path,
                    "webhook_url",
                    &c.webhook_url_file,
                    &c.webhook_url_env,
                    true,
                    p,
                );
                if c.max_findings == 0 {
                    p.push(format!("{path}.max_findings"), "must be positive");
                }
                validate_tuning(&path, None, &c.request, &c.buffer, p);
            }
            NotifierConfig::PagerDuty(c) => {
                validate_secret(
                    &path,
                    "routing_key",
                    &c.routing_key_file,
                    &c.routing_key_env,
                    true,
                    p,
                );
                http::validate_url(&format!("{path}.url"), &c.url, c.allow_loopback, p);
                validate_tuning(&path, None, &c.request, &c.buffer, p);
            }
            NotifierConfig::Webhook(c) => {
                http::validate_url(&format!("{path}.url"), &c.url, c.allow_loopback, p);
                validate_secret(
                    &path,
                    "bearer_token",
                    &c.bearer_token_file,
                    &c.bearer_token_env,
                    false,
                    p,
                );
                validate_tuning(&path, None, &c.request, &c.buffer, p);
            }
        }
    }
    let r = routing;
    if let Some(rcv) = &r.receiver
        && !notifier_names.contains(rcv)
    {
        p.push("routing.receiver", format!("no notifier named {rcv:?}"));
    }
    if r.group_by.is_empty() {
        p.push("routing.group_by", "name at least one field (or \"...\")");
    }
    validate_group_by("routing.group_by", &r.group_by, p);
    if r.group_interval_secs == 0 {
        p.push("routing.group_interval_secs", "must be positive");
    }
    if r.alert_ttl_secs == 0 {
        p.push("routing.alert_ttl_secs", "must be positive");
    }
    if r.max_findings_per_alert == 0 {
        p.push("routing.max_findings_per_alert", "must be positive");
    }
    for (i, c) in r.routes.iter().enumerate() {
        validate_route(&format!("routing.routes[{i}]"), c, &notifier_names, p);
    }
    for (i, rule) in r.inhibit_rules.iter().enumerate() {
        let path = format!("routing.inhibit_rules[{i}]");
        if rule.source_matchers.is_empty() || rule.target_matchers.is_empty() {
            p.push(path.clone(), "needs source_matchers and target_matchers");
        }
        validate_matchers(&format!("{path}.source_matchers"), &rule.source_matchers, p);
        validate_matchers(&format!("{path}.target_matchers"), &rule.target_matchers, p);
        validate_group_by(&format!("{path}.equal"), &rule.equal, p);
    }
    validate_buffer("routing.buffer", &r.buffer, p);
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// Which clock drives the router's group timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The wall clock (`gpusiem run`).
    Wall,
    /// Event time: the latest `last_ts` of the findings seen (`gpusiem replay`).
    EventTime,
}

/// What delivery needs from the process.
#[derive(Debug, Clone)]
pub struct DeliveryContext {
    /// Outboxes go to `<data_dir>/outbox`, dead letters to `<data_dir>/dead-letter`.
    pub data_dir: PathBuf,
    /// Registered metrics.
    pub metrics: DeliveryMetrics,
    /// Stops workers and the router.
    pub shutdown: CancellationToken,
    /// Wall clock or event time.
    pub clock: Clock,
}

/// A target's outbox with its metric label.
#[derive(Debug)]
struct Queue {
    label: String,
    outbox: Arc<Outbox>,
}

/// The delivery service: routes findings to sinks and notifiers through durable outboxes.
#[derive(Debug)]
pub struct Delivery {
    sinks: Vec<Queue>,
    notifiers: Vec<Queue>,
    router: Option<(Queue, mpsc::Sender<Command>)>,
    tree: Arc<RouteTree>,
    silences: Arc<Silences>,
    metrics: DeliveryMetrics,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn start_err(target: &str, op: &'static str, reason: impl ToString) -> crate::Error {
    crate::Error::Delivery {
        target: target.to_string(),
        op,
        reason: reason.to_string(),
    }
}

fn secret(
    target: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> crate::Result<Option<Secret>> {
    if file.is_none() && env.is_none() {
        return Ok(None);
    }
    Secret::load(file.as_deref(), env.as_deref())
        .map(Some)
        .map_err(|e| start_err(target, "loading a secret", e))
}

fn required(target: &str, s: Option<Secret>) -> crate::Result<Secret> {
    s.ok_or_else(|| start_err(target, "loading a secret", "not configured"))
}

fn dir_name(label: &str) -> String {
    label.replace(':', "-")
}

struct Opened {
    queue: Queue,
    dead_letter: Arc<DeadLetter>,
}

async fn open_queue(
    cx: &DeliveryContext,
    label: &str,
    buffer: &BufferConfig,
) -> crate::Result<Opened> {
    let dir = cx.data_dir.join("outbox").join(dir_name(label));
    let m = cx.metrics.target(label);
    let buffer = buffer.clone();
    let (outbox, rec) = tokio::task::spawn_blocking(move || Outbox::open(&dir, buffer, m))
        .await
        .map_err(|e| start_err(label, "opening the outbox", e))?
        .map_err(|e| start_err(label, "opening the outbox", e))?;
    if rec.pending > 0 || rec.lost > 0 {
        tracing::info!(
            target = label,
            pending = rec.pending,
            lost = rec.lost,
            "outbox recovered"
        );
    }
    let dead_letter = Arc::new(DeadLetter::new(
        &cx.data_dir.join("dead-letter"),
        label,
        dead_letter::DEFAULT_MAX_BYTES,
    ));
    Ok(Opened {
        queue: Queue {
            label: label.to_string(),
            outbox,
        },
        dead_letter,
    })
}

fn spawn_worker<T: Target>(
    target: T,
    opened: &Opened,
    t: Tuning,
    cx: &DeliveryContext,
) -> JoinHandle<()> {
    let worker = Worker::new(
        Arc::new(target),
        opened.queue.label.clone(),
        opened.queue.outbox.clone(),
        opened.dead_letter.clone(),
        cx.metrics.target(&opened.queue.label),
        Limits {
            max_items: t.max_items,
            max_bytes: t.max_bytes,
            linger: t.linger,
            backoff: t.backoff,
            max_attempts: t.max_attempts,
        },
        cx.shutdown.clone(),
    );
    tokio::spawn(worker.run())
}

fn client(
    label: &str,
    t: &Tuning,
    ca: &Option<PathBuf>,
    allow_loopback: bool,
) -> crate::Result<reqwest::Client> {
    http::client(
        label,
        &http::ClientOptions {
            timeout: t.timeout,
            ca_file: ca.clone(),
            allow_loopback,
        },
    )
}

impl Delivery {
    /// Opens every outbox (recovering what they hold), loads secrets, builds clients and
    /// starts a worker per sink and notifier and the router. Fails on an unreadable secret or
    /// outbox; receivers being down is not an error (items wait in the outboxes).
    pub async fn start(
        sinks: &[SinkConfig],
        notifiers: &[NotifierConfig],
        routing: &RoutingConfig,
        cx: DeliveryContext,
    ) -> crate::Result<Arc<Delivery>> {
        let mut tasks = Vec::new();
        let mut sink_queues = Vec::new();
        for s in sinks {
            let label = format!("sink:{}", s.name());
            match s {
                SinkConfig::Loki(c) => {
                    let t = tuning(Kind::Loki, &c.batch, &c.request);
                    let auth = match (
                        &c.username,
                        secret(&label, &c.password_file, &c.password_env)?,
                        secret(&label, &c.bearer_token_file, &c.bearer_token_env)?,
                    ) {
                        (Some(u), Some(pw), _) => LokiAuth::Basic {
                            username: u.clone(),
                            password: pw,
                        },
                        (_, _, Some(token)) => LokiAuth::Bearer(token),
                        _ => LokiAuth::None,
                    };
                    let sink = Loki::new(
                        client(&label, &t, &c.ca_file, c.allow_loopback)?,
                        &c.url,
                        c.tenant.clone(),
                        c.encoding,
                        c.max_line_bytes,
                        auth,
                    );
                    let opened = open_queue(&cx, &label, &c.buffer).await?;
                    tasks.push(spawn_worker(SinkTarget(Arc::new(sink)), &opened, t, &cx));
                    sink_queues.push(opened.queue);
                }
                SinkConfig::Elasticsearch(c) => {
                    let t = tuning(Kind::Elasticsearch, &c.batch, &c.request);
                    let auth = match (
                        secret(&label, &c.api_key_file, &c.api_key_env)?,
                        &c.username,
                    ) {
                        (Some(key), _) => EsAuth::ApiKey(key),
                        (None, Some(u)) => EsAuth::Basic {
                            username: u.clone(),
                            password: required(
                                &label,
                                secret(&label, &c.password_file, &c.password_env)?,
                            )?,
                        },
                        (None, None) => EsAuth::None,
                    };
                    let sink = Elasticsearch::new(
                        client(&label, &t, &c.ca_file, c.allow_loopback)?,
                        &c.url,
                        c.index.clone(),
                        c.mode,
                        auth,
                        c.install_template,
                    );
                    let opened = open_queue(&cx, &label, &c.buffer).await?;
                    tasks.push(spawn_worker(SinkTarget(Arc::new(sink)), &opened, t, &cx));
                    sink_queues.push(opened.queue);
                }
                SinkConfig::Webhook(c) => {
                    let t = tuning(Kind::WebhookSink, &c.batch, &c.request);
                    let bearer = secret(&label, &c.bearer_token_file, &c.bearer_token_env)?;
                    let sink = WebhookSink::new(
                        client(&label, &t, &c.ca_file, c.allow_loopback)?,
                        c.url.clone(),
                        bearer,
                    );
                    let opened = open_queue(&cx, &label, &c.buffer).await?;
                    tasks.push(spawn_worker(SinkTarget(Arc::new(sink)), &opened, t, &cx));
                    sink_queues.push(opened.queue);
                }
            }
        }
        let mut notifier_queues = Vec::new();
        let mut notifier_outboxes = HashMap::new();
        for n in notifiers {
            let label = format!("notifier:{}", n.name());
            let opened = match n {
                NotifierConfig::Slack(c) => {
                    let t = tuning(Kind::Notifier, &BatchConfig::default(), &c.request);
                    let url = required(
                        &label,
                        secret(&label, &c.webhook_url_file, &c.webhook_url_env)?,
                    )?;
                    let mut p = Problems::default();
                    http::validate_url(
                        &format!("{label}.webhook_url"),
                        url.expose(),
                        c.allow_loopback,
                        &mut p,
                    );
                    if let Some(e) = p.0.first() {
                        return Err(start_err(&label, "checking the webhook URL", &e.message));
                    }
                    let slack = Slack::new(
                        client(&label, &t, &None, c.allow_loopback)?,
                        url,
                        Duration::from_millis(c.min_interval_ms),
                        c.max_findings,
                    );
                    let opened = open_queue(&cx, &label, &c.buffer).await?;
                    tasks.push(spawn_worker(
                        NotifierTarget(Arc::new(slack)),
                        &opened,
                        t,
                        &cx,
                    ));
                    opened
                }
                NotifierConfig::PagerDuty(c) => {
                    let t = tuning(Kind::Notifier, &BatchConfig::default(), &c.request);
                    let key = required(
                        &label,
                        secret(&label, &c.routing_key_file, &c.routing_key_env)?,
                    )?;
                    let pd = PagerDuty::new(
                        client(&label, &t, &None, c.allow_loopback)?,
                        c.url.clone(),
                        key,
                        c.source.clone(),
                    );
                    let opened = open_queue(&cx, &label, &c.buffer).await?;
                    tasks.push(spawn_worker(NotifierTarget(Arc::new(pd)), &opened, t, &cx));
                    opened
                }
                NotifierConfig::Webhook(c) => {
                    let t = tuning(Kind::Notifier, &BatchConfig::default(), &c.request);
                    let bearer = secret(&label, &c.bearer_token_file, &c.bearer_token_env)?;
                    let wh = WebhookNotifier::new(
                        client(&label, &t, &c.ca_file, c.allow_loopback)?,
                        c.url.clone(),
                        c.format,
                        bearer,
                    );
                    let opened = open_queue(&cx, &label, &c.buffer).await?;
                    tasks.push(spawn_worker(NotifierTarget(Arc::new(wh)), &opened, t, &cx));
                    opened
                }
            };
            notifier_outboxes.insert(n.name().to_string(), opened.queue.outbox.clone());
            notifier_queues.push(opened.queue);
        }
        let tree = Arc::new(
            RouteTree::build(
                routing,
                notifiers
                    .iter()
                    .map(|n| (n.name().to_string(), n.min_severity()))
                    .collect(),
            )
            .map_err(|e| start_err("router", "building the routing tree", e))?,
        );
        let silences = Arc::new(Silences::open(&cx.data_dir)?);
        let router = if notifiers.is_empty() {
            None
        } else {
            let inhibit = routing
                .inhibit_rules
                .iter()
                .map(InhibitRule::build)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| start_err("router", "building inhibition rules", e))?;
            let opened = open_queue(&cx, "router", &routing.buffer).await?;
            let (tx, rx) = mpsc::channel(4);
            let router = Router::new(RouterParts {
                tree: tree.clone(),
                outbox: opened.queue.outbox.clone(),
                notifiers: notifier_outboxes,
                silences: silences.clone(),
                inhibit,
                clock: cx.clock,
                metrics: cx.metrics.target("router"),
                max_findings: routing.max_findings_per_alert,
                send_resolved: routing.send_resolved,
                alert_ttl: i64::try_from(routing.alert_ttl_secs)
                    .unwrap_or(i64::MAX / 1_000_000_000)
                    .saturating_mul(1_000_000_000),
            });
            tasks.push(tokio::spawn(router.run(rx, cx.shutdown.clone())));
            Some((opened.queue, tx))
        };
        tracing::info!(sinks = sink_queues.len(), notifiers = notifier_queues.len(), clock = ?cx.clock, "delivery started");
        Ok(Arc::new(Delivery {
            sinks: sink_queues,
            notifiers: notifier_queues,
            router,
            tree,
            silences,
            metrics: cx.metrics,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Whether any sink or notifier is configured.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty() && self.notifiers.is_empty()
    }

    /// The silences (for the API's `/api/v1/silences`, see [`silences::router`]).
    pub fn silences(&self) -> Arc<Silences> {
        self.silences.clone()
    }

    /// One target's accounting (`sink:<name>`, `notifier:<name>`, `router`).
    pub fn accounting(&self, target: &str) -> Accounting {
        self.metrics.accounting(target)
    }

    /// Every target's label.
    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .sinks
            .iter()
            .chain(&self.notifiers)
            .map(|q| q.label.clone())
            .collect();
        if let Some((q, _)) = &self.router {
            t.push(q.label.clone());
        }
        t
    }

    /// Queues findings: every sink's outbox gets all of them, the router's those that route to
    /// a notifier. Durable (written and synced in every outbox) when it returns `Ok`; on `Err`
    /// some outboxes may hold them already (a retry duplicates, which receivers absorb).
    pub async fn enqueue(&self, findings: &[Finding]) -> crate::Result<()> {
        if findings.is_empty() || self.is_empty() {
            return Ok(());
        }
        let encode = |list: Vec<&Finding>| -> crate::Result<Arc<Vec<Vec<u8>>>> {
            list.into_iter()
                .map(|f| {
                    serde_json::to_vec(f)
                        .map_err(|e| start_err("delivery", "encoding a finding", e))
                })
                .collect::<crate::Result<Vec<_>>>()
                .map(Arc::new)
        };
        let all = encode(findings.iter().collect())?;
        let mut appends = Vec::new();
        for q in &self.sinks {
            let (label, outbox, payloads) = (q.label.clone(), q.outbox.clone(), all.clone());
            appends.push(
                Box::pin(async move { (label, outbox.append(payloads).await) })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
            );
        }
        if let Some((q, _)) = &self.router {
            let routed: Vec<Vec<u8>> = findings
                .iter()
                .zip(all.iter())
                .filter(|(f, _)| !self.tree.route(f).is_empty())
                .map(|(_, p)| p.clone())
                .collect();
            if !routed.is_empty() {
                let (label, outbox) = (q.label.clone(), q.outbox.clone());
                appends.push(Box::pin(async move {
                    (label, outbox.append(Arc::new(routed)).await)
                }));
            }
        }
        for (label, result) in futures::future::join_all(appends).await {
            result.map_err(|e| start_err(&label, "enqueue", e))?;
        }
        Ok(())
    }

    /// Flushes pending groups and waits until every queued item is delivered or dead-lettered
    /// (a replay's end). Receivers that stay down keep this waiting, retrying, unless
    /// `request.retry_max_attempts` is set.
    pub async fn drain(&self) -> crate::Result<()> {
        let queued: u64 = self
            .sinks
            .iter()
            .chain(&self.notifiers)
            .map(|q| q.outbox.queued())
            .sum();
        tracing::info!(
            queued,
            "delivery draining: waiting for every outbox to be delivered or dead-lettered"
        );
        if let Some((q, tx)) = &self.router {
            loop {
                let (reply, done) = oneshot::channel();
                tx.send(Command::Drain(reply))
                    .await
                    .map_err(|_| start_err("router", "drain", "the router stopped"))?;
                done.await
                    .map_err(|_| start_err("router", "drain", "the router stopped"))?;
                if q.outbox.queued() == 0 {
                    break;
                }
                // A notification could not be queued (a full notifier outbox): try again.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        for q in self.sinks.iter().chain(&self.notifiers) {
            let mut rx = q.outbox.watch_queued();
            rx.wait_for(|n| *n == 0)
                .await
                .map_err(|_| start_err(&q.label, "drain", "the outbox closed"))?;
        }
        for t in self.targets() {
            let a = self.accounting(&t);
            tracing::info!(target = %t, received = a.received, delivered = a.delivered, queued = a.queued, dead_lettered = a.dead_lettered, dropped = a.dropped, retries = a.retries, "delivery drained");
        }
        Ok(())
    }

    /// Waits for the workers and the router to stop (after the shutdown token fired).
    pub async fn stopped(&self) {
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The outbox directory of a target label (for tests and tooling).
pub fn outbox_dir(data_dir: &Path, label: &str) -> PathBuf {
    data_dir.join("outbox").join(dir_name(label))
}

#[cfg(test)]
mod tests;
