//! HTTP clients for sinks and notifiers, and the checks on their URLs (SSRF).
//!
//! Receiver URLs come only from the operator's configuration, but a mistaken or tampered one
//! must not turn gpusiem into a way to reach the cloud metadata service or local admin ports:
//!
//! * only `http` and `https`, no credentials in the URL (use the `*_file`/`*_env` options);
//! * never link-local (`169.254.0.0/16`, `fe80::/10`, which hold the metadata services),
//!   the unspecified address, multicast or broadcast, nor the known metadata addresses
//!   (`fd00:ec2::254`, `100.100.100.200`);
//! * loopback only with `allow_loopback = true` (a sidecar, a test);
//! * the same rules are applied to every address a host name resolves to, at connect time
//!   (DNS rebinding), and redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::Problems;

/// Whether an address may never be contacted, and if so why.
pub fn forbidden(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() || v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some("a link-local or cloud metadata address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not a unicast address")
            } else if v4.is_loopback() && !allow_loopback {
                Some("a loopback address (set allow_loopback = true to allow it)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let metadata = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            if (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == metadata {
                Some("a link-local or cloud metadata address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if v6.is_loopback() && !allow_loopback {
                Some("a loopback address (set allow_loopback = true to allow it)")
            } else {
                None
            }
        }
    }
}

/// Checks a receiver URL; records problems at `path`.
pub fn validate_url(path: &str, url: &str, allow_loopback: bool, p: &mut Problems) {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(_) => {
            p.push(path, "must be an http(s) URL");
            return;
        }
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        p.push(path, "must be an http(s) URL");
        return;
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        p.push(
            path,
            "must not hold credentials; use the *_file or *_env options",
        );
    }
    let Some(host) = parsed.host_str() else {
        p.push(path, "has no host");
        return;
    };
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => {
            if let Some(why) = forbidden(ip, allow_loopback) {
                p.push(path, format!("is {why}"));
            }
        }
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            if (d == "localhost" || d.ends_with(".localhost")) && !allow_loopback {
                p.push(
                    path,
                    "is a loopback address (set allow_loopback = true to allow it)",
                );
            }
            if d == "metadata.google.internal" || d == "metadata" {
                p.push(path, "is a cloud metadata address");
            }
        }
    }
}

/// Resolves with the system resolver and refuses forbidden addresses (DNS rebinding).
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| forbidden(a.ip(), allow_loopback).is_none())
                .collect();
            if ok.is_empty() {
                let why = all
                    .first()
                    .and_then(|a| forbidden(a.ip(), allow_loopback))
                    .unwrap_or("no address");
                return Err(format!("{host} resolves only to forbidden addresses ({why})").into());
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

/// Options of one receiver's client.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Extra PEM CA bundle to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// Allow loopback addresses.
    pub allow_loopback: bool,
}

/// Builds a client: rustls, no redirects, timeouts, the guarded resolver, extra CAs.
pub fn client(target: &str, o: &ClientOptions) -> crate::Result<reqwest::Client> {
    let fail = |reason: String| crate::Error::Delivery {
        target: target.to_string(),
        op: "building the HTTP client",
        reason,
    };
    let mut b = gpusiem_ingest::source::http_client_builder()
        .timeout(o.timeout)
        .connect_timeout(o.timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .dns_resolver(Arc::new(GuardedResolver {
            allow_loopback: o.allow_loopback,
        }));
    if let Some(ca) = &o.ca_file {
        b = b.tls_certs_merge(load_ca(ca).map_err(fail)?);
    }
    b.build().map_err(|e| fail(e.without_url().to_string()))
}

fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not a PEM CA bundle: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(url: &str, allow_loopback: bool) -> Vec<String> {
        let mut p = Problems::default();
        validate_url("u", url, allow_loopback, &mut p);
        p.0.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn ssrf_targets_are_refused_at_load() {
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0:9200",
            "file:///etc/passwd",
            "gopher://x",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://user:pw@es:9200",
            "not a url",
        ] {
            assert!(!problems(bad, true).is_empty(), "{bad} accepted");
        }
        for loopback in [
            "http://127.0.0.1:3100",
            "http://[::1]:3100",
            "http://localhost:3100",
        ] {
            assert!(!problems(loopback, false).is_empty(), "{loopback} accepted");
            assert!(
                problems(loopback, true).is_empty(),
                "{loopback} refused with allow_loopback"
            );
        }
        for good in [
            "http://loki:3100",
            "https://es.example.com:9200",
            "https://hooks.slack.com/services/T/B/x",
            "http://10.0.0.5:3100",
        ] {
            assert!(problems(good, false).is_empty(), "{good} refused");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect() {
        let r = GuardedResolver {
            allow_loopback: false,
        };
        let name: Name = "localhost".parse().expect("name");
        let err = r.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("forbidden"), "{err}");
        let r = GuardedResolver {
            allow_loopback: true,
        };
        assert!(r.resolve("localhost".parse().expect("name")).await.is_ok());
    }
}
