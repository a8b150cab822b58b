//! `gpusiem.toml`: parse → validate (pure, every error with its path) → build.
//!
//! Every section is optional; an empty file (or no file) is the embedded default: data under
//! `./data`, API and receivers on `127.0.0.1:8080`, no external service. Closed enums are
//! tagged by `type`; unknown keys are errors; units are in option names. Secrets are read from
//! files or environment variables and never printed (see [`Secret`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gpusiem_detect::inventory::InventoryConfig;
use gpusiem_ingest::Stream;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::delivery::{NotifierConfig, RoutingConfig, SinkConfig};
use crate::query::QueryConfig;
use crate::store::StoreConfig;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Cluster name stamped on every row and finding.
    pub cluster: Option<String>,
    /// Listener and data directory.
    pub server: ServerConfig,
    /// Bearer tokens and their scopes.
    pub auth: AuthConfig,
    /// Pull sources (HTTP receivers are always on).
    pub sources: Vec<SourceConfig>,
    /// Role matchers on top of the built-in ones.
    pub inventory: InventoryConfig,
    /// Detector thresholds.
    pub detectors: gpusiem_detect::detectors::DetectorsConfig,
    /// Sigma rule directories, lateness, suppression, reload.
    pub rules: gpusiem_detect::rules::RulesConfig,
    /// Parquet storage: flushing, retention, compaction.
    pub store: StoreConfig,
    /// SQL sandbox limits.
    pub query: QueryConfig,
    /// `[[sinks]]`: where every finding is pushed (Loki, Elasticsearch, webhook).
    pub sinks: Vec<SinkConfig>,
    /// `[[notifiers]]`: who is alerted (Slack, PagerDuty, webhook).
    pub notifiers: Vec<NotifierConfig>,
    /// `[routing]`: routing tree, grouping, inhibition.
    pub routing: RoutingConfig,
    /// Pipeline tuning.
    pub pipeline: PipelineConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// API, webhook receivers and `/metrics`, on one listener.
    pub listen: String,
    /// Where data, quarantine, outboxes and checkpoints live.
    pub data_dir: PathBuf,
    /// PEM certificate chain; with `tls_key_file`, the listener speaks TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle; when set, client certificates it signed authenticate (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default) refuses a TLS handshake without a valid
    /// client certificate; `optional` also accepts handshakes without one (kubelet probes,
    /// token holders), which then need a bearer token for every route but the probes. A
    /// certificate that is presented must still be valid.
    pub client_cert: ClientCertMode,
    /// Largest ingest request body (before and after gzip), bytes.
    pub max_ingest_body_bytes: usize,
    /// Largest API request body, bytes.
    pub max_api_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            client_cert: ClientCertMode::Required,
            max_ingest_body_bytes: 8 << 20,
            max_api_body_bytes: 256 << 10,
        }
    }
}

/// `server.client_cert`: whether a client certificate is required when `client_ca_file` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertMode {
    /// Every connection presents a certificate chaining to `client_ca_file`.
    #[default]
    Required,
    /// A certificate authenticates when presented; connections without one need a token.
    Optional,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Batches buffered between sources and the pipeline (back-pressure beyond).
    pub channel_batches: usize,
    /// Largest single record accepted by decoders, bytes.
    pub max_record_bytes: usize,
    /// How late an event may arrive (event time), seconds; idle ticks hold the watermark this
    /// far behind the wall clock.
    pub allowed_lateness_secs: u64,
    /// Largest quarantine file before rotation, bytes.
    pub quarantine_max_bytes: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            channel_batches: 64,
            max_record_bytes: gpusiem_ingest::decode::DEFAULT_MAX_RECORD_BYTES,
            allowed_lateness_secs: 30,
            quarantine_max_bytes: gpusiem_ingest::quarantine::DEFAULT_MAX_BYTES,
        }
    }
}

/// `[[sources]]`: pull sources.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Scrape dcgm-exporter endpoints.
    DcgmScrape {
        /// `http://node:9400/metrics` URLs.
        #[serde(default)]
        targets: Vec<String>,
        /// Also scrape every running dcgm-exporter pod the Kubernetes API reports.
        #[serde(default)]
        discover: Option<DcgmDiscoverConfig>,
        /// Seconds between scrapes.
        #[serde(default = "default_scrape_interval")]
        interval_secs: u64,
        /// Per-request timeout, seconds.
        #[serde(default = "default_scrape_timeout")]
        timeout_secs: u64,
    },
    /// Tail a file of one stream.
    File {
        /// The file.
        path: PathBuf,
        /// `gpu_metrics`, `falco_events` or `k8s_audit`.
        stream: String,
        /// Without a checkpoint, start at the `beginning` (default) or the `end`.
        #[serde(default)]
        start_at: Option<String>,
    },
    /// Consume Kafka topics.
    Kafka {
        /// `host:port,…`.
        brokers: String,
        /// Consumer group.
        group_id: String,
        /// Topic of dcgm-exporter expositions.
        #[serde(default)]
        gpu_metrics_topic: Option<String>,
        /// Topic of Falco alerts.
        #[serde(default)]
        falco_events_topic: Option<String>,
        /// Topic of audit events.
        #[serde(default)]
        k8s_audit_topic: Option<String>,
        /// Extra librdkafka properties (`security.protocol`, …).
        #[serde(default)]
        properties: std::collections::BTreeMap<String, String>,
    },
    /// List and watch pods from the Kubernetes API (in-cluster credentials by default).
    Kubernetes {
        /// API server URL; default from `KUBERNETES_SERVICE_HOST`/`PORT`.
        #[serde(default)]
        api_url: Option<String>,
        /// Bearer token file; default the service-account token.
        #[serde(default)]
        token_file: Option<PathBuf>,
        /// CA bundle; default the service-account CA.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
}

/// `discover` of a `dcgm_scrape` source: which pods are dcgm-exporters, and where they serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcgmDiscoverConfig {
    /// Namespace of the exporter pods (`gpu-operator` with NVIDIA's GPU Operator).
    pub namespace: String,
    /// Label selector of the exporter pods.
    #[serde(default = "default_dcgm_selector")]
    pub label_selector: String,
    /// The exporter's port.
    #[serde(default = "default_dcgm_port")]
    pub port: u16,
    /// `http` or `https`.
    #[serde(default = "default_dcgm_scheme")]
    pub scheme: String,
    /// The metrics path.
    #[serde(default = "default_dcgm_path")]
    pub path: String,
    /// API server URL; default from `KUBERNETES_SERVICE_HOST`/`PORT`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Bearer token file; default the service-account token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// CA bundle; default the service-account CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_dcgm_selector() -> String {
    "app=nvidia-dcgm-exporter".into()
}
fn default_dcgm_port() -> u16 {
    9400
}
fn default_dcgm_scheme() -> String {
    "http".into()
}
fn default_dcgm_path() -> String {
    "/metrics".into()
}

fn default_scrape_interval() -> u64 {
    15
}
fn default_scrape_timeout() -> u64 {
    10
}

/// A validation problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path (`sources[2].targets[0]`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects validation errors.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<ConfigError>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Parses TOML text. Syntax and type errors name the key and line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            path: e
                .span()
                .map(|s| line_of(text, s.start))
                .unwrap_or_else(|| "(file)".into()),
            message: e.message().to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text)
    }

    /// Checks everything that can be checked without touching the network; returns every
    /// problem found.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut p = Problems::default();
        match self.server.listen.parse::<SocketAddr>() {
            Err(_) => p.push("server.listen", "must be an IP:port address, e.g. 127.0.0.1:8080"),
            Ok(addr) if !addr.ip().is_loopback() && self.auth.tokens.is_empty() => {
                p.push("server.listen", "a non-loopback address needs [[auth.tokens]]; without tokens the server only binds loopback")
            }
            Ok(_) => {}
        }
        if self.server.tls_cert_file.is_some() != self.server.tls_key_file.is_some() {
            p.push(
                "server.tls_key_file",
                "tls_cert_file and tls_key_file go together",
            );
        }
        if self.server.client_cert == ClientCertMode::Optional
            && self.server.client_ca_file.is_none()
        {
            p.push(
                "server.client_cert",
                "`optional` only applies with client_ca_file",
            );
        }
        if self.server.client_ca_file.is_some() && self.server.tls_cert_file.is_none() {
            p.push(
                "server.client_ca_file",
                "client certificates need TLS (tls_cert_file, tls_key_file)",
            );
        }
        if self.server.max_ingest_body_bytes == 0 {
            p.push("server.max_ingest_body_bytes", "must be positive");
        }
        if self.pipeline.channel_batches == 0 {
            p.push("pipeline.channel_batches", "must be positive");
        }
        for (i, s) in self.sources.iter().enumerate() {
            validate_source(&format!("sources[{i}]"), s, &mut p);
        }
        for (i, d) in self.rules.dirs.iter().enumerate() {
            if !d.is_dir() {
                p.push(format!("rules.dirs[{i}]"), "not a directory");
            }
        }
        if p.0.iter().all(|e| !e.path.starts_with("rules."))
            && let Err(errors) = gpusiem_detect::rules::RuleSet::load(&self.rules)
        {
            for e in errors {
                p.push("rules", e.to_string());
            }
        }
        for e in self
            .inventory
            .validate()
            .into_iter()
            .chain(self.detectors.validate())
        {
            match e {
                gpusiem_detect::Error::Config { path, message } => p.push(path, message),
                other => p.push("detectors", other.to_string()),
            }
        }
        self.auth.validate("auth", &mut p);
        self.store.validate("store", &mut p);
        self.query.validate("query", &mut p);
        crate::delivery::validate(&self.sinks, &self.notifiers, &self.routing, &mut p);
        p.0
    }

    /// The listen address (validated).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| ConfigError {
            path: "server.listen".into(),
            message: "must be an IP:port address".into(),
        })
    }
}

fn validate_source(path: &str, s: &SourceConfig, p: &mut Problems) {
    match s {
        SourceConfig::DcgmScrape {
            targets,
            discover,
            interval_secs,
            timeout_secs,
        } => {
            if targets.is_empty() && discover.is_none() {
                p.push(
                    format!("{path}.targets"),
                    "at least one target, or discover",
                );
            }
            if let Some(d) = discover {
                if d.namespace.is_empty() {
                    p.push(format!("{path}.discover.namespace"), "must not be empty");
                }
                if d.port == 0 {
                    p.push(format!("{path}.discover.port"), "must be positive");
                }
                if !matches!(d.scheme.as_str(), "http" | "https") {
                    p.push(format!("{path}.discover.scheme"), "http or https");
                }
                if !d.path.starts_with('/') {
                    p.push(format!("{path}.discover.path"), "must start with /");
                }
                if let Some(u) = &d.api_url
                    && reqwest::Url::parse(u).is_err()
                {
                    p.push(format!("{path}.discover.api_url"), "must be a URL");
                }
            }
            for (i, t) in targets.iter().enumerate() {
                match reqwest::Url::parse(t) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => p.push(format!("{path}.targets[{i}]"), "must be an http(s) URL"),
                }
            }
            if *interval_secs == 0 {
                p.push(format!("{path}.interval_secs"), "must be positive");
            }
            if *timeout_secs == 0 || timeout_secs > interval_secs {
                p.push(
                    format!("{path}.timeout_secs"),
                    "must be positive and at most interval_secs",
                );
            }
        }
        SourceConfig::File {
            stream, start_at, ..
        } => {
            if Stream::from_name(stream).is_none() {
                p.push(
                    format!("{path}.stream"),
                    "one of gpu_metrics, falco_events, k8s_audit",
                );
            }
            if let Some(s) = start_at
                && s != "beginning"
                && s != "end"
            {
                p.push(format!("{path}.start_at"), "beginning or end");
            }
        }
        SourceConfig::Kafka {
            brokers,
            group_id,
            gpu_metrics_topic,
            falco_events_topic,
            k8s_audit_topic,
            ..
        } => {
            if brokers.trim().is_empty() {
                p.push(format!("{path}.brokers"), "must not be empty");
            }
            if group_id.trim().is_empty() {
                p.push(format!("{path}.group_id"), "must not be empty");
            }
            if gpu_metrics_topic.is_none()
                && falco_events_topic.is_none()
                && k8s_audit_topic.is_none()
            {
                p.push(
                    path.to_string(),
                    "name at least one of gpu_metrics_topic, falco_events_topic, k8s_audit_topic",
                );
            }
        }
        SourceConfig::Kubernetes { api_url, .. } => {
            if let Some(u) = api_url
                && reqwest::Url::parse(u).is_err()
            {
                p.push(format!("{path}.api_url"), "must be a URL");
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1;
    format!("line {line}")
}

/// A secret value read from a file or an environment variable. Prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads from `file` (trimmed) or the environment variable `env`; exactly one must be set.
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Secret, String> {
        match (file, env) {
            (Some(f), None) => std::fs::read_to_string(f)
                .map(|s| Secret(s.trim().to_string()))
                .map_err(|e| format!("cannot read {}: {}", f.display(), e.kind())),
            (None, Some(v)) => std::env::var(v)
                .map(|s| Secret(s.trim().to_string()))
                .map_err(|_| format!("environment variable {v} is not set")),
            (Some(_), Some(_)) => {
                Err("set either the file or the environment variable, not both".into())
            }
            (None, None) => Err("set a file or an environment variable".into()),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::parse("").expect("parse");
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.data_dir, PathBuf::from("./data"));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n")
            .expect_err("unknown key");
        assert_eq!(e.path, "line 3");
        assert!(e.message.contains("listen_port"), "{}", e.message);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = Config::parse(
            r#"
[server]
listen = "0.0.0.0:8080"
tls_key_file = "/k.pem"

[[sources]]
type = "dcgm_scrape"
targets = ["ftp://x", "http://10.0.0.5:9400/metrics"]
interval_secs = 5
timeout_secs = 10

[[sources]]
type = "file"
path = "/var/log/falco.json"
stream = "falco"
"#,
        )
        .expect("parse");
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "server.listen",
                "server.tls_key_file",
                "sources[0].targets[0]",
                "sources[0].timeout_secs",
                "sources[1].stream"
            ]
        );
    }

    #[test]
    fn detector_and_inventory_settings_are_checked_with_their_paths() {
        let c = Config::parse(
            r#"
[inventory]
serving_images = ["nvcr.io/nvidia/tritonserver", ""]

[detectors.gpu_memory_spike]
baseline_alpha = 0.0
"#,
        )
        .expect("parse");
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "inventory.serving_images[1]",
                "detectors.gpu_memory_spike.baseline_alpha"
            ]
        );
    }

    #[test]
    fn dcgm_discovery_stands_in_for_targets_and_is_checked() {
        let ok = Config::parse(
            "[[sources]]\ntype = \"dcgm_scrape\"\ndiscover = { namespace = \"gpu-operator\" }\n",
        )
        .expect("parse");
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        match &ok.sources[0] {
            SourceConfig::DcgmScrape {
                discover: Some(d), ..
            } => {
                assert_eq!(
                    (
                        d.label_selector.as_str(),
                        d.port,
                        d.scheme.as_str(),
                        d.path.as_str()
                    ),
                    ("app=nvidia-dcgm-exporter", 9400, "http", "/metrics")
                );
            }
            other => panic!("{other:?}"),
        }
        let bad = Config::parse(
            "[[sources]]\ntype = \"dcgm_scrape\"\ndiscover = { namespace = \"\", port = 0, scheme = \"ftp\", path = \"metrics\" }\n\n[[sources]]\ntype = \"dcgm_scrape\"\n",
        )
        .expect("parse");
        let paths: Vec<String> = bad.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "sources[0].discover.namespace",
                "sources[0].discover.port",
                "sources[0].discover.scheme",
                "sources[0].discover.path",
                "sources[1].targets",
            ]
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
