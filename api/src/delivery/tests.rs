//! Configuration and router behaviour (event-time clock, no network).

use super::*;
use crate::config::Config;
use gpusiem_detect::Status;
use notifier::Alert;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * S;

fn finding(id: &str, detector: &str, ns: &str, sev: Severity, at: i64) -> Finding {
    Finding {
        id: id.into(),
        ts: at,
        last_ts: at,
        detector: detector.into(),
        severity: sev,
        status: Status::Firing,
        revision: 0,
        summary: format!("{detector} in {ns}"),
        cluster: None,
        namespace: Some(ns.into()),
        pod: Some(format!("{id}-pod")),
        pod_uid: None,
        container: None,
        node: Some("node-1".into()),
        gpu_uuid: None,
        role: gpusiem_detect::role::Role::Unknown,
        role_reason: String::new(),
        mitre: vec![],
        evidence: serde_json::Value::Null,
        event_ids: vec![],
    }
}

fn resolved(mut f: Finding, at: i64) -> Finding {
    f.status = Status::Resolved;
    f.last_ts = at;
    f.revision += 1;
    f
}

// ----- configuration ------------------------------------------------------------------------

#[test]
fn the_documented_keys_parse_and_validate() {
    let c = Config::parse(
        r#"
[[sinks]]
type = "loki"
url = "http://loki:3100"
tenant = "gpu-platform"

[[sinks]]
type = "elasticsearch"
url = "https://es:9200"
index = "gpusiem-findings"

[[notifiers]]
type = "slack"
webhook_url_file = "/run/secrets/slack-webhook"
min_severity = "high"

[[notifiers]]
type = "pagerduty"
routing_key_file = "/run/secrets/pd-routing-key"
url = "https://events.pagerduty.com/v2/enqueue"
min_severity = "high"
"#,
    )
    .expect("parse");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.sinks[0].name(), "loki");
    assert_eq!(c.notifiers[1].name(), "pagerduty");
    let SinkConfig::Loki(l) = &c.sinks[0] else {
        panic!("loki")
    };
    assert_eq!(l.tenant.as_deref(), Some("gpu-platform"));
    assert_eq!(l.encoding, LokiEncoding::Json);
    let NotifierConfig::PagerDuty(pd) = &c.notifiers[1] else {
        panic!("pd")
    };
    assert_eq!(pd.url, notifiers::pagerduty::DEFAULT_URL);
    assert_eq!(c.routing.group_wait_secs, 30);
}

#[test]
fn unknown_keys_in_a_sink_are_errors() {
    let e =
        Config::parse("[[sinks]]\ntype = \"loki\"\nurl = \"http://loki:3100\"\ntennant = \"x\"\n")
            .expect_err("unknown key");
    assert!(e.message.contains("tennant"), "{}", e.message);
    let e = Config::parse(
        "[[sinks]]\ntype = \"loki\"\nurl = \"http://loki:3100\"\nbatch = { max_itmes = 3 }\n",
    )
    .expect_err("unknown key");
    assert!(e.message.contains("max_itmes"), "{}", e.message);
    assert!(Config::parse("[[notifiers]]\ntype = \"email\"\n").is_err());
}

#[test]
fn problems_have_paths() {
    let c = Config::parse(
        r#"
[[sinks]]
type = "elasticsearch"
url = "http://169.254.169.254"
index = "Bad Index"

[[sinks]]
type = "loki"
name = "elasticsearch"
url = "ftp://loki"

[[notifiers]]
type = "slack"

[[notifiers]]
type = "pagerduty"
routing_key_env = "PD_KEY"
url = "http://127.0.0.1:1/v2/enqueue"

[routing]
receiver = "teams"
group_by = ["detector", "podname"]
[[routing.routes]]
matchers = ['severity=~"high|critical"', 'nope']
receiver = "pagerduty"
[[routing.inhibit_rules]]
source_matchers = ['detector="miner_fingerprint"']
target_matchers = []
"#,
    )
    .expect("parse");
    let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "sinks[0].url",
            "sinks[0].index",
            "sinks[1].name",
            "sinks[1].url",
            "notifiers[0].webhook_url_file",
            "notifiers[1].url",
            "routing.receiver",
            "routing.group_by[1]",
            "routing.routes[0].matchers[1]",
            "routing.inhibit_rules[0]",
        ]
    );
}

// ----- router -------------------------------------------------------------------------------

struct Harness {
    _dir: tempfile::TempDir,
    outbox: Arc<Outbox>,
    notifiers: HashMap<String, Arc<Outbox>>,
    tx: mpsc::Sender<Command>,
    metrics: DeliveryMetrics,
    shutdown: CancellationToken,
}

impl Harness {
    async fn new(routing: &str, notifiers: &[(&str, Severity)], silence: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().expect("tmp");
        let metrics = DeliveryMetrics::default();
        let cfg: RoutingConfig = toml::from_str(routing).expect("routing");
        let buffer = BufferConfig {
            max_bytes: 64 << 20,
            segment_max_bytes: 1 << 20,
            ..BufferConfig::default()
        };
        let (outbox, _) = Outbox::open(
            &dir.path().join("router"),
            buffer.clone(),
            metrics.target("router"),
        )
        .expect("outbox");
        let mut outs = HashMap::new();
        for (n, _) in notifiers {
            let (o, _) = Outbox::open(
                &dir.path().join(n),
                buffer.clone(),
                metrics.target(&format!("notifier:{n}")),
            )
            .expect("outbox");
            outs.insert(n.to_string(), o);
        }
        let silences = Arc::new(Silences::open(dir.path()).expect("silences"));
        if let Some(m) = silence {
            let req = silences::NewSilence {
                matchers: vec![m.to_string()],
                starts_at: Some("2020-01-01T00:00:00Z".into()),
                ends_at: Some("2100-01-01T00:00:00Z".into()),
                duration_secs: None,
                author: "test".into(),
                comment: "test".into(),
            };
            silences.create(req, T0).expect("silence");
        }
        let tree = Arc::new(
            RouteTree::build(
                &cfg,
                notifiers.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            )
            .expect("tree"),
        );
        let inhibit = cfg
            .inhibit_rules
            .iter()
            .map(InhibitRule::build)
            .collect::<Result<Vec<_>, _>>()
            .expect("rules");
        let router = Router::new(RouterParts {
            tree,
            outbox: outbox.clone(),
            notifiers: outs.clone(),
            silences,
            inhibit,
            clock: Clock::EventTime,
            metrics: metrics.target("router"),
            max_findings: cfg.max_findings_per_alert,
            send_resolved: cfg.send_resolved,
            alert_ttl: cfg.alert_ttl_secs as i64 * S,
        });
        let (tx, rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        tokio::spawn(router.run(rx, shutdown.clone()));
        Harness {
            _dir: dir,
            outbox,
            notifiers: outs,
            tx,
            metrics,
            shutdown,
        }
    }

    async fn push(&self, findings: &[Finding]) {
        let payloads = findings
            .iter()
            .map(|f| serde_json::to_vec(f).expect("json"))
            .collect();
        self.outbox
            .append(Arc::new(payloads))
            .await
            .expect("append");
    }

    async fn drain(&self) {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Command::Drain(reply))
            .await
            .expect("router running");
        done.await.expect("drained");
    }

    /// Alerts queued for a notifier so far (settled as delivered, as a worker would).
    async fn alerts(&self, name: &str) -> Vec<Alert> {
        let o = &self.notifiers[name];
        let recs = o.read_now(100_000, usize::MAX).await.expect("read");
        o.ack(&recs.iter().map(|r| r.seq).collect::<Vec<_>>());
        recs.iter()
            .map(|r| serde_json::from_slice(&r.payload).expect("alert"))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

const DEFAULTS: &str = "";

#[tokio::test]
async fn a_burst_on_one_group_is_one_notification() {
    let h = Harness::new(DEFAULTS, &[("slack", Severity::High)], None).await;
    let burst: Vec<Finding> = (0..1000)
        .map(|i| {
            finding(
                &format!("f{i:04}"),
                "gpu_memory_spike",
                "shop",
                Severity::High,
                T0 + i * S / 100,
            )
        })
        .collect();
    for chunk in burst.chunks(100) {
        h.push(chunk).await;
    }
    h.drain().await;
    let alerts = h.alerts("slack").await;
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!((a.firing, a.findings.len(), a.truncated), (1000, 20, 980));
    assert_eq!(
        a.group_labels.get("namespace").map(String::as_str),
        Some("shop")
    );
    let acc = h.metrics.accounting("router");
    assert_eq!((acc.received, acc.delivered, acc.queued), (1000, 1000, 0));
    assert!(acc.balanced(), "{acc:?}");
}

#[tokio::test]
async fn group_wait_and_group_interval_run_on_event_time() {
    let h = Harness::new(
        "group_wait_secs = 30\ngroup_interval_secs = 300",
        &[("slack", Severity::Info)],
        None,
    )
    .await;
    h.push(&[finding("a", "d", "shop", Severity::High, T0)])
        .await;
    h.push(&[finding("b", "d", "shop", Severity::High, T0 + 40 * S)])
        .await;
    h.push(&[finding("c", "d", "shop", Severity::High, T0 + 400 * S)])
        .await;
    h.drain().await;
    let alerts = h.alerts("slack").await;
    let summary: Vec<(i64, usize)> = alerts.iter().map(|a| ((a.ts - T0) / S, a.firing)).collect();
    // Due at 30 s (a), then 330 s (a, b: b is new), then the drain at 400 s (c is new).
    assert_eq!(summary, [(30, 1), (330, 2), (400, 3)]);
    assert!(alerts.iter().all(|a| a.group_key == alerts[0].group_key));
}

#[tokio::test]
async fn repeat_interval_re_notifies_a_firing_group() {
    let h = Harness::new(
        "group_wait_secs = 30\ngroup_interval_secs = 60\nrepeat_interval_secs = 120",
        &[("slack", Severity::Info)],
        None,
    )
    .await;
    h.push(&[finding("a", "d", "shop", Severity::High, T0)])
        .await;
    // Other groups move the clock.
    for (i, t) in [100, 200, 290].iter().enumerate() {
        h.push(&[finding(
            &format!("x{i}"),
            "other",
            &format!("ns{i}"),
            Severity::High,
            T0 + t * S,
        )])
        .await;
    }
    h.drain().await;
    let times: Vec<i64> = h
        .alerts("slack")
        .await
        .iter()
        .filter(|a| a.group_labels["detector"] == "d")
        .map(|a| (a.ts - T0) / S)
        .collect();
    // Flushes at 30 (new), 90, 150 (repeat), 210, 270 (repeat).
    assert_eq!(times, [30, 150, 270]);
}

#[tokio::test]
async fn resolution_is_notified_with_the_same_group_key() {
    let h = Harness::new(
        "group_wait_secs = 30\ngroup_interval_secs = 60",
        &[("pagerduty", Severity::High)],
        None,
    )
    .await;
    let a = finding("a", "miner_fingerprint", "research", Severity::Critical, T0);
    h.push(std::slice::from_ref(&a)).await;
    h.push(&[resolved(a, T0 + 100 * S)]).await;
    h.drain().await;
    let alerts = h.alerts("pagerduty").await;
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0].status, Status::Firing);
    assert_eq!(alerts[1].status, Status::Resolved);
    assert_eq!(alerts[0].group_key, alerts[1].group_key);
    assert!(h.metrics.accounting("router").balanced());
}

#[tokio::test]
async fn inhibition_mutes_targets_with_equal_fields() {
    let routing = r#"
group_by = ["detector", "namespace"]
[[inhibit_rules]]
source_matchers = ['detector="miner_fingerprint"']
target_matchers = ['detector="gpu_memory_spike"']
equal = ["namespace"]
"#;
    let h = Harness::new(routing, &[("slack", Severity::Info)], None).await;
    h.push(&[
        finding("m", "miner_fingerprint", "research", Severity::Critical, T0),
        finding("s1", "gpu_memory_spike", "research", Severity::High, T0 + S),
        finding("s2", "gpu_memory_spike", "shop", Severity::High, T0 + 2 * S),
    ])
    .await;
    h.drain().await;
    let mut got: Vec<String> = h.alerts("slack").await.iter().map(|a| a.title()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "[FIRING:1] gpu_memory_spike namespace=shop",
            "[FIRING:1] miner_fingerprint namespace=research"
        ]
    );
    let acc = h.metrics.accounting("router");
    assert_eq!((acc.delivered, acc.dropped), (2, 1));
    assert!(acc.balanced());
}

#[tokio::test]
async fn silences_mute_and_are_counted() {
    let h = Harness::new(
        DEFAULTS,
        &[("slack", Severity::Info)],
        Some(r#"namespace="research""#),
    )
    .await;
    h.push(&[
        finding("a", "d", "research", Severity::High, T0),
        finding("b", "d", "shop", Severity::High, T0),
    ])
    .await;
    h.drain().await;
    let alerts = h.alerts("slack").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].group_labels["namespace"], "shop");
    let acc = h.metrics.accounting("router");
    assert_eq!((acc.received, acc.delivered, acc.dropped), (2, 1, 1));
}

#[tokio::test]
async fn continue_sends_to_several_receivers_and_min_severity_filters() {
    let routing = r#"
receiver = "slack"
[[routes]]
matchers = ['severity="critical"']
receiver = "pagerduty"
continue = true
[[routes]]
matchers = ['namespace=~".+"']
receiver = "slack"
"#;
    let h = Harness::new(
        routing,
        &[("slack", Severity::Medium), ("pagerduty", Severity::High)],
        None,
    )
    .await;
    h.push(&[
        finding(
            "crit",
            "miner_fingerprint",
            "research",
            Severity::Critical,
            T0,
        ),
        finding("med", "gpu_memory_spike", "shop", Severity::Medium, T0),
        finding("low", "gpu_memory_spike", "shop", Severity::Low, T0),
    ])
    .await;
    h.drain().await;
    assert_eq!(h.alerts("pagerduty").await.len(), 1);
    let slack = h.alerts("slack").await;
    assert_eq!(
        slack.len(),
        2,
        "{:?}",
        slack.iter().map(Alert::title).collect::<Vec<_>>()
    );
    // `low` reaches no notifier: the router settles it as unrouted.
    let acc = h.metrics.accounting("router");
    assert_eq!((acc.received, acc.delivered, acc.dropped), (3, 2, 1));
}

#[tokio::test]
async fn unsettled_router_records_are_grouped_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = DeliveryMetrics::default();
    let buffer = BufferConfig::default();
    {
        let (o, _) = Outbox::open(
            &dir.path().join("router"),
            buffer.clone(),
            m.target("router"),
        )
        .expect("open");
        let payloads =
            vec![serde_json::to_vec(&finding("a", "d", "shop", Severity::High, T0)).expect("json")];
        o.append(Arc::new(payloads)).await.expect("append");
    }
    let (o, rec) =
        Outbox::open(&dir.path().join("router"), buffer, m.target("router2")).expect("reopen");
    assert_eq!(rec.pending, 1);
    assert_eq!(o.read_now(10, usize::MAX).await.expect("read").len(), 1);
}
