//! The router: Alertmanager's routing, grouping, inhibition and silencing, over findings.
//!
//! ```text
//!  enqueue ─► router outbox ─► Router task ─► groups ─(due)─► silences, inhibition ─► Alert ─► notifier outbox
//!   (findings that route       (routing tree:  (group_wait, group_interval,          (durable; the router record
//!    to ≥ 1 notifier)           matchers,       repeat_interval timers)               is settled only then)
//!                               continue)
//! ```
//!
//! * **Routing tree.** A finding enters at the root and descends into the first child route
//!   whose matchers all match (and whose `min_severity` it meets); with `continue = true` the
//!   following siblings are tried too. The deepest matching routes are the finding's routes.
//!   A route's `receiver` is a notifier name, inherited from its parent; the root without one
//!   means every notifier. A notifier's own `min_severity` filters last.
//! * **Groups.** Per route and receiver, findings with the same values of the route's
//!   `group_by` fields form a group (`group_by = ["..."]`: one group per finding id). A new
//!   group is flushed `group_wait` after its first finding, then every `group_interval`. A
//!   flush notifies when something is new since the last notification (a finding firing or
//!   resolving, a higher severity) or, while findings fire, when `repeat_interval` has passed.
//!   The notification carries the whole group; resolved findings leave the group once flushed,
//!   firing ones not updated for `alert_ttl_secs` leave it silently, and an empty group ends.
//! * **Inhibition.** A finding matching a rule's `target_matchers` is muted while another
//!   firing finding matches its `source_matchers` with equal values of the `equal` fields.
//!   **Silences** mute findings matching all of an active silence's matchers.
//! * **Clock.** Live, timers run on the wall clock. In a replay they run on event time: the
//!   clock is the latest `last_ts` seen, and a group is flushed when a later finding passes
//!   its due time; `drain` flushes what is left.
//! * **Durability.** A router record (one finding) is settled only when every group it joined
//!   has flushed and its notification is in the notifier's outbox. After a crash, unsettled
//!   records are grouped again and notified (at least once; PagerDuty de-duplicates on the
//!   group key).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gpusiem_detect::{Finding, Severity, Status};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::matcher::{self, Matcher};
use super::metrics::{DropReason, TargetMetrics};
use super::notifier::Alert;
use super::outbox::{Appended, Outbox, Record};
use super::silences::Silences;
use super::{Clock, InhibitRuleConfig, RouteConfig, RoutingConfig};

const NS: i64 = 1_000_000_000;

/// How a route groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// These fields.
    Fields(Vec<String>),
    /// Every finding alone (`["..."]`).
    Each,
}

/// Grouping options of a route (inherited by children unless set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOpts {
    /// Grouping.
    pub group_by: GroupBy,
    /// ns.
    pub group_wait: i64,
    /// ns.
    pub group_interval: i64,
    /// ns.
    pub repeat_interval: i64,
}

/// One node of the routing tree.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the tree (`0`, `0.2`, `0.2.1`): part of the group key.
    pub id: String,
    matchers: Vec<Matcher>,
    min_severity: Option<Severity>,
    /// The notifier; `None` = every notifier.
    pub receiver: Option<String>,
    continue_: bool,
    /// Grouping.
    pub opts: GroupOpts,
    children: Vec<Route>,
}

impl Route {
    fn matches(&self, f: &Finding) -> bool {
        self.min_severity.is_none_or(|m| f.severity >= m) && matcher::all(&self.matchers, f)
    }

    fn collect<'a>(&'a self, f: &Finding, out: &mut Vec<&'a Route>) {
        let mut matched = false;
        for c in &self.children {
            if c.matches(f) {
                c.collect(f, out);
                matched = true;
                if !c.continue_ {
                    break;
                }
            }
        }
        if !matched {
            out.push(self);
        }
    }
}

/// The routing tree with the notifiers it can reach.
#[derive(Debug, Clone)]
pub struct RouteTree {
    root: Route,
    /// Notifier name → its `min_severity`.
    notifiers: Vec<(String, Severity)>,
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / NS).saturating_mul(NS)
}

fn group_by(list: &[String]) -> GroupBy {
    if list.iter().any(|s| s == "...") {
        GroupBy::Each
    } else {
        GroupBy::Fields(list.to_vec())
    }
}

fn build_route(id: String, c: &RouteConfig, parent: &Route) -> Result<Route, String> {
    let matchers = Matcher::parse_all(&c.matchers).map_err(|e| e.join("; "))?;
    let opts = GroupOpts {
        group_by: c
            .group_by
            .as_deref()
            .map_or_else(|| parent.opts.group_by.clone(), group_by),
        group_wait: c.group_wait_secs.map_or(parent.opts.group_wait, secs),
        group_interval: c
            .group_interval_secs
            .map_or(parent.opts.group_interval, secs),
        repeat_interval: c
            .repeat_interval_secs
            .map_or(parent.opts.repeat_interval, secs),
    };
    let mut r = Route {
        id,
        matchers,
        min_severity: c.min_severity,
        receiver: c.receiver.clone().or_else(|| parent.receiver.clone()),
        continue_: c.continue_,
        opts,
        children: Vec::new(),
    };
    let children = c
        .routes
        .iter()
        .enumerate()
        .map(|(i, cc)| build_route(format!("{}.{i}", r.id), cc, &r))
        .collect::<Result<Vec<_>, _>>()?;
    r.children = children;
    Ok(r)
}

impl RouteTree {
    /// Builds the tree (the configuration was validated).
    pub fn build(
        cfg: &RoutingConfig,
        notifiers: Vec<(String, Severity)>,
    ) -> Result<RouteTree, String> {
        let mut root = Route {
            id: "0".into(),
            matchers: Vec::new(),
            min_severity: None,
            receiver: cfg.receiver.clone(),
            continue_: false,
            opts: GroupOpts {
                group_by: group_by(&cfg.group_by),
                group_wait: secs(cfg.group_wait_secs),
                group_interval: secs(cfg.group_interval_secs).max(1),
                repeat_interval: secs(cfg.repeat_interval_secs),
            },
            children: Vec::new(),
        };
        let children = cfg
            .routes
            .iter()
            .enumerate()
            .map(|(i, c)| build_route(format!("0.{i}"), c, &root))
            .collect::<Result<Vec<_>, _>>()?;
        root.children = children;
        Ok(RouteTree { root, notifiers })
    }

    /// Whether any notifier is reachable at all.
    pub fn is_empty(&self) -> bool {
        self.notifiers.is_empty()
    }

    /// The (route, receiver) pairs a finding goes to, without duplicates.
    pub fn route(&self, f: &Finding) -> Vec<(&Route, &str)> {
        let mut routes = Vec::new();
        self.root.collect(f, &mut routes);
        let mut out: Vec<(&Route, &str)> = Vec::new();
        for r in routes {
            for (name, min) in &self.notifiers {
                let wanted = r.receiver.as_deref().is_none_or(|rcv| rcv == name);
                if wanted
                    && f.severity >= *min
                    && !out.iter().any(|(x, n)| x.id == r.id && *n == name)
                {
                    out.push((r, name.as_str()));
                }
            }
        }
        out
    }
}

/// The group key: SHA-256 (hex) of route, receiver and group label values.
pub fn group_key(route: &str, receiver: &str, labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0x1f]);
    h.update(receiver.as_bytes());
    for (k, v) in labels {
        h.update([0x1e]);
        h.update(k.as_bytes());
        h.update([0x1f]);
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

fn group_labels(opts: &GroupOpts, f: &Finding) -> BTreeMap<String, String> {
    match &opts.group_by {
        GroupBy::Each => BTreeMap::from([("id".to_string(), f.id.clone())]),
        GroupBy::Fields(fields) => fields
            .iter()
            .map(|k| (k.clone(), matcher::field(f, k)))
            .collect(),
    }
}

/// A parsed inhibition rule.
#[derive(Debug, Clone)]
pub struct InhibitRule {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl InhibitRule {
    /// Parses a configured rule.
    pub fn build(c: &InhibitRuleConfig) -> Result<InhibitRule, String> {
        Ok(InhibitRule {
            source: Matcher::parse_all(&c.source_matchers).map_err(|e| e.join("; "))?,
            target: Matcher::parse_all(&c.target_matchers).map_err(|e| e.join("; "))?,
            equal: c.equal.clone(),
        })
    }
}

/// Why a finding was not shown in a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Silenced,
    Inhibited,
    Delivered,
}

#[derive(Debug)]
struct Group {
    receiver: String,
    labels: BTreeMap<String, String>,
    opts: GroupOpts,
    alerts: BTreeMap<String, Finding>,
    /// Router records waiting for this group's next flush: (seq, finding id).
    pending: Vec<(u64, String)>,
    /// What the last notification said per finding id.
    notified: HashMap<String, (Status, Severity)>,
    last_notify: Option<i64>,
    next_flush: i64,
}

struct Membership {
    remaining: usize,
    best: Option<Fate>,
}

/// Commands to the router task.
#[derive(Debug)]
pub enum Command {
    /// Process everything in the router outbox, flush every group with something to say,
    /// then answer.
    Drain(oneshot::Sender<()>),
}

/// The router task's state.
pub struct Router {
    tree: Arc<RouteTree>,
    outbox: Arc<Outbox>,
    notifiers: HashMap<String, Arc<Outbox>>,
    silences: Arc<Silences>,
    inhibit: Vec<InhibitRule>,
    clock: Clock,
    metrics: TargetMetrics,
    max_findings: usize,
    send_resolved: bool,
    alert_ttl: i64,
    groups: HashMap<String, Group>,
    timers: BTreeSet<(i64, String)>,
    firing: HashMap<String, Finding>,
    members: HashMap<u64, Membership>,
    settled: Vec<u64>,
    now: i64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("groups", &self.groups.len())
            .field("now", &self.now)
            .finish()
    }
}

/// What the router needs to start.
pub struct RouterParts {
    /// The tree.
    pub tree: Arc<RouteTree>,
    /// The router's outbox (findings).
    pub outbox: Arc<Outbox>,
    /// Notifier name → its outbox (alerts).
    pub notifiers: HashMap<String, Arc<Outbox>>,
    /// Silences.
    pub silences: Arc<Silences>,
    /// Inhibition rules.
    pub inhibit: Vec<InhibitRule>,
    /// Wall or event time.
    pub clock: Clock,
    /// The router's counters.
    pub metrics: TargetMetrics,
    /// Findings listed per alert.
    pub max_findings: usize,
    /// Whether resolved findings are notified.
    pub send_resolved: bool,
    /// Firing findings not updated for this long (ns) leave their groups.
    pub alert_ttl: i64,
}

impl Router {
    /// A router with no groups yet.
    pub fn new(p: RouterParts) -> Router {
        let now = match p.clock {
            Clock::Wall => gpusiem_ingest::source::now_nanos(),
            Clock::EventTime => i64::MIN,
        };
        Router {
            tree: p.tree,
            outbox: p.outbox,
            notifiers: p.notifiers,
            silences: p.silences,
            inhibit: p.inhibit,
            clock: p.clock,
            metrics: p.metrics,
            max_findings: p.max_findings,
            send_resolved: p.send_resolved,
            alert_ttl: p.alert_ttl,
            groups: HashMap::new(),
            timers: BTreeSet::new(),
            firing: HashMap::new(),
            members: HashMap::new(),
            settled: Vec::new(),
            now,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let outbox = self.outbox.clone();
        loop {
            let data = outbox.data_notified();
            tokio::pin!(data);
            data.as_mut().enable();
            match self.outbox.read_now(4096, 8 << 20).await {
                Ok(records) if !records.is_empty() => {
                    self.process(records).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reading the router outbox failed"),
            }
            if self.clock == Clock::Wall {
                self.now = gpusiem_ingest::source::now_nanos();
                self.flush_due().await;
                self.commit();
            }
            let wait = match (self.clock, self.timers.first()) {
                (Clock::Wall, Some((due, _))) => {
                    Duration::from_nanos(u64::try_from(due.saturating_sub(self.now)).unwrap_or(0))
                }
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = &mut data => {}
                () = tokio::time::sleep(wait) => {}
                cmd = commands.recv() => match cmd {
                    Some(Command::Drain(reply)) => {
                        self.drain().await;
                        let _ = reply.send(());
                    }
                    None => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn drain(&mut self) {
        loop {
            match self.outbox.read_now(4096, 8 << 20).await {
                Ok(records) if !records.is_empty() => self.process(records).await,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "reading the router outbox failed");
                    break;
                }
            }
        }
        if self.clock == Clock::Wall {
            self.now = gpusiem_ingest::source::now_nanos();
        }
        let keys: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.pending.is_empty() || self.has_news(g))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.flush(&k, self.now).await;
        }
        self.commit();
    }

    async fn process(&mut self, records: Vec<Record>) {
        for r in records {
            let f: Finding = match serde_json::from_slice(&r.payload) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable router record dropped");
                    self.finish(r.seq, None);
                    continue;
                }
            };
            if self.clock == Clock::EventTime && f.last_ts > self.now {
                self.now = f.last_ts;
                self.flush_due().await;
            }
            self.add(r.seq, f);
        }
        if self.clock == Clock::Wall {
            self.now = gpusiem_ingest::source::now_nanos();
            self.flush_due().await;
        }
        self.commit();
    }

    fn add(&mut self, seq: u64, f: Finding) {
        let tree = self.tree.clone();
        let dests = tree.route(&f);
        if f.status == Status::Resolved {
            self.firing.remove(&f.id);
        }
        if dests.is_empty() {
            self.members.insert(
                seq,
                Membership {
                    remaining: 1,
                    best: None,
                },
            );
            self.finish(seq, None);
            return;
        }
        if f.status == Status::Firing {
            // Inhibition sources: firing findings that are in some group.
            self.firing.insert(f.id.clone(), f.clone());
        }
        self.members.insert(
            seq,
            Membership {
                remaining: dests.len(),
                best: None,
            },
        );
        for (route, receiver) in dests {
            let labels = group_labels(&route.opts, &f);
            let key = group_key(&route.id, receiver, &labels);
            let group = self.groups.entry(key.clone()).or_insert_with(|| {
                let next_flush = self.now.saturating_add(route.opts.group_wait);
                self.timers.insert((next_flush, key.clone()));
                Group {
                    receiver: receiver.to_string(),
                    labels,
                    opts: route.opts.clone(),
                    alerts: BTreeMap::new(),
                    pending: Vec::new(),
                    notified: HashMap::new(),
                    last_notify: None,
                    next_flush,
                }
            });
            group.pending.push((seq, f.id.clone()));
            group.alerts.insert(f.id.clone(), f.clone());
        }
    }

    async fn flush_due(&mut self) {
        while let Some((due, key)) = self.timers.first().cloned() {
            if due > self.now {
                break;
            }
            self.timers.remove(&(due, key.clone()));
            // In event time a notification carries the time it was due, not the finding
            // that moved the clock past it.
            let at = if self.clock == Clock::EventTime {
                due
            } else {
                self.now
            };
            self.flush(&key, at).await;
        }
    }

    fn fate(&self, f: &Finding, at: i64) -> Fate {
        if self.silences.is_silenced(f, at) {
            return Fate::Silenced;
        }
        let inhibited = self.inhibit.iter().any(|rule| {
            matcher::all(&rule.target, f)
                && self.firing.values().any(|s| {
                    s.id != f.id
                        && matcher::all(&rule.source, s)
                        && rule
                            .equal
                            .iter()
                            .all(|k| matcher::field(s, k) == matcher::field(f, k))
                })
        });
        if inhibited {
            Fate::Inhibited
        } else {
            Fate::Delivered
        }
    }

    fn has_news(&self, g: &Group) -> bool {
        g.alerts.values().any(|f| {
            (self.send_resolved || f.status == Status::Firing)
                && g.notified.get(&f.id) != Some(&(f.status, f.severity))
        })
    }

    /// Flushes one group at time `at`.
    async fn flush(&mut self, key: &str, at: i64) {
        // Findings not updated for `alert_ttl` leave the group without a notification (a
        // one-shot finding that never resolves must not repeat for ever).
        let ttl = self.alert_ttl;
        if let Some(g) = self.groups.get_mut(key) {
            let stale: Vec<String> = g
                .alerts
                .values()
                .filter(|f| f.status == Status::Firing && at.saturating_sub(f.last_ts) > ttl)
                .map(|f| f.id.clone())
                .collect();
            for id in stale {
                g.alerts.remove(&id);
                g.notified.remove(&id);
                self.firing.remove(&id);
            }
        }
        let Some(g) = self.groups.get(key) else {
            return;
        };
        let fates: HashMap<String, Fate> = g
            .alerts
            .values()
            .map(|f| (f.id.clone(), self.fate(f, at)))
            .collect();
        let visible: Vec<&Finding> = g
            .alerts
            .values()
            .filter(|f| {
                fates.get(&f.id) == Some(&Fate::Delivered)
                    && (self.send_resolved || f.status == Status::Firing)
            })
            .collect();
        let news = visible
            .iter()
            .any(|f| g.notified.get(&f.id) != Some(&(f.status, f.severity)));
        let firing = visible.iter().any(|f| f.status == Status::Firing);
        let repeat = firing
            && g.last_notify
                .is_some_and(|l| at.saturating_sub(l) >= g.opts.repeat_interval);
        let mut notified_ok = true;
        if !visible.is_empty() && (news || repeat) {
            let alert = self.alert(key, g, &visible, at);
            let receiver = g.receiver.clone();
            let snapshot: HashMap<String, (Status, Severity)> = visible
                .iter()
                .map(|f| (f.id.clone(), (f.status, f.severity)))
                .collect();
            match self.write_alert(&receiver, &alert).await {
                Ok(()) => {
                    if let Some(g) = self.groups.get_mut(key) {
                        g.notified = snapshot;
                        g.last_notify = Some(at);
                    }
                }
                Err(e) => {
                    notified_ok = false;
                    tracing::error!(receiver = %receiver, error = %e, "cannot queue a notification; the group is flushed again later");
                }
            }
        }
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        if notified_ok {
            let pending = std::mem::take(&mut g.pending);
            // Resolved findings leave the group once flushed.
            g.alerts.retain(|_, f| f.status == Status::Firing);
            for id in fates.keys().filter(|id| !g.alerts.contains_key(*id)) {
                self.firing.remove(id);
            }
            let ids: BTreeSet<String> = g.alerts.keys().cloned().collect();
            g.notified.retain(|id, _| ids.contains(id));
            let empty = g.alerts.is_empty();
            for (seq, id) in pending {
                let fate = fates.get(&id).copied().unwrap_or(Fate::Delivered);
                self.finish(seq, Some(fate));
            }
            if empty {
                if let Some(g) = self.groups.remove(key) {
                    self.timers.remove(&(g.next_flush, key.to_string()));
                }
                return;
            }
        }
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        self.timers.remove(&(g.next_flush, key.to_string()));
        let interval = if notified_ok {
            g.opts.group_interval
        } else {
            g.opts.group_interval.min(5 * NS)
        };
        g.next_flush = at.saturating_add(interval.max(1));
        self.timers.insert((g.next_flush, key.to_string()));
    }

    fn alert(&self, key: &str, g: &Group, visible: &[&Finding], at: i64) -> Alert {
        let mut list: Vec<&Finding> = visible.to_vec();
        list.sort_by(|a, b| {
            (
                a.status != Status::Firing,
                std::cmp::Reverse(a.severity),
                a.ts,
                &a.id,
            )
                .cmp(&(
                    b.status != Status::Firing,
                    std::cmp::Reverse(b.severity),
                    b.ts,
                    &b.id,
                ))
        });
        let firing = list.iter().filter(|f| f.status == Status::Firing).count();
        let resolved = list.len() - firing;
        let status = if firing > 0 {
            Status::Firing
        } else {
            Status::Resolved
        };
        let severity = list
            .iter()
            .filter(|f| status == Status::Resolved || f.status == Status::Firing)
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Info);
        let shown = list.len().min(self.max_findings);
        Alert {
            group_key: key.to_string(),
            receiver: g.receiver.clone(),
            status,
            group_labels: g.labels.clone(),
            severity,
            firing,
            resolved,
            findings: list[..shown].iter().map(|f| (*f).clone()).collect(),
            truncated: list.len() - shown,
            ts: at,
        }
    }

    async fn write_alert(&self, receiver: &str, alert: &Alert) -> Result<(), String> {
        let outbox = self
            .notifiers
            .get(receiver)
            .ok_or_else(|| format!("no notifier named {receiver}"))?;
        let payload = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
        match outbox.append(Arc::new(vec![payload])).await {
            Ok(Appended::Stored { .. }) | Ok(Appended::Dropped) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One membership of record `seq` ended with `fate` (`None`: not routed).
    fn finish(&mut self, seq: u64, fate: Option<Fate>) {
        let Some(m) = self.members.get_mut(&seq) else {
            // A record with no membership (undecodable): settle it as dropped.
            self.metrics.dropped(DropReason::Unrouted, 1);
            self.settled.push(seq);
            return;
        };
        m.remaining = m.remaining.saturating_sub(1);
        m.best = m.best.max(fate);
        if m.remaining > 0 {
            return;
        }
        let best = m.best;
        self.members.remove(&seq);
        match best {
            Some(Fate::Delivered) => {
                self.metrics.delivered.inc();
            }
            Some(Fate::Inhibited) => self.metrics.dropped(DropReason::Inhibited, 1),
            Some(Fate::Silenced) => self.metrics.dropped(DropReason::Silenced, 1),
            None => self.metrics.dropped(DropReason::Unrouted, 1),
        }
        self.settled.push(seq);
    }

    fn commit(&mut self) {
        if !self.settled.is_empty() {
            let seqs = std::mem::take(&mut self.settled);
            self.outbox.ack(&seqs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> RoutingConfig {
        toml::from_str(text).expect("routing config")
    }

    fn finding(id: &str, detector: &str, ns: &str, sev: Severity) -> Finding {
        Finding {
            id: id.into(),
            ts: 0,
            last_ts: 0,
            detector: detector.into(),
            severity: sev,
            status: Status::Firing,
            revision: 0,
            summary: String::new(),
            cluster: None,
            namespace: Some(ns.into()),
            pod: Some(format!("{id}-pod")),
            pod_uid: None,
            container: None,
            node: None,
            gpu_uuid: None,
            role: gpusiem_detect::role::Role::Unknown,
            role_reason: String::new(),
            mitre: vec![],
            evidence: serde_json::Value::Null,
            event_ids: vec![],
        }
    }

    fn names(dests: Vec<(&Route, &str)>) -> Vec<String> {
        dests
            .into_iter()
            .map(|(r, n)| format!("{}>{n}", r.id))
            .collect()
    }

    #[test]
    fn routing_tree_with_continue_and_inherited_receivers() {
        let c = cfg(r#"
receiver = "slack"
[[routes]]
matchers = ['severity=~"high|critical"']
receiver = "pagerduty"
continue = true
[[routes]]
matchers = ['namespace="research"']
[[routes.routes]]
matchers = ['detector="miner_fingerprint"']
receiver = "talon"
[[routes]]
matchers = ['namespace="never"']
receiver = "pagerduty"
"#);
        let notifiers = vec![
            ("slack".into(), Severity::Info),
            ("pagerduty".into(), Severity::High),
            ("talon".into(), Severity::Info),
        ];
        let t = RouteTree::build(&c, notifiers).expect("tree");
        // High in research: pagerduty (continue) and the research route (slack inherited).
        assert_eq!(
            names(t.route(&finding(
                "a",
                "gpu_memory_spike",
                "research",
                Severity::High
            ))),
            ["0.0>pagerduty", "0.1>slack"]
        );
        // Nested match: talon.
        assert_eq!(
            names(t.route(&finding(
                "b",
                "miner_fingerprint",
                "research",
                Severity::Low
            ))),
            ["0.1.0>talon"]
        );
        // Nothing matches: the root's receiver.
        assert_eq!(
            names(t.route(&finding("c", "x", "shop", Severity::Low))),
            ["0>slack"]
        );
        // The notifier's min_severity filters last.
        let c = cfg("");
        let t = RouteTree::build(
            &c,
            vec![
                ("slack".into(), Severity::Medium),
                ("pagerduty".into(), Severity::High),
            ],
        )
        .expect("tree");
        assert_eq!(
            names(t.route(&finding("d", "x", "shop", Severity::High))),
            ["0>slack", "0>pagerduty"]
        );
        assert_eq!(
            names(t.route(&finding("e", "x", "shop", Severity::Medium))),
            ["0>slack"]
        );
        assert!(
            t.route(&finding("f", "x", "shop", Severity::Low))
                .is_empty()
        );
    }

    #[test]
    fn group_keys_are_stable_and_distinct() {
        let l = BTreeMap::from([("detector".to_string(), "a".to_string())]);
        assert_eq!(group_key("0", "slack", &l), group_key("0", "slack", &l));
        assert_ne!(group_key("0", "slack", &l), group_key("0", "pagerduty", &l));
        assert_ne!(group_key("0", "slack", &l), group_key("0.1", "slack", &l));
        assert_eq!(group_key("0", "slack", &l).len(), 64);
    }
}
