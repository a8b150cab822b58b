//! Correlation state: event-time windows per group, evaluated as matches of the referenced
//! rules arrive, closed by the watermark.
//!
//! Events later than the watermark minus the allowed lateness are dropped (and counted): a
//! window that has been judged is never reopened. State is bounded: at most
//! [`MAX_EVENTS_PER_GROUP`] events per group (the oldest go first) and [`MAX_GROUPS`] groups
//! per rule (the least recently active go first); a group is evicted once its window has
//! passed the watermark.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::sigma::{CmpOp, Correlation, CorrelationKind, Rule};
use crate::finding::{Finding, Severity, Status, finding_id};
use crate::inventory::Inventory;

/// Most events remembered per group.
pub const MAX_EVENTS_PER_GROUP: usize = 256;
/// Most groups per correlation rule.
pub const MAX_GROUPS: usize = 100_000;
/// Events kept per step of a temporal correlation: the earliest and the latest few. A step
/// repeated a thousand times (a shell that keeps running commands) adds nothing to the chain
/// but its first and latest times, and this keeps evaluation O(steps²).
const PER_STEP: usize = 4;

/// One match of a referenced rule, as the correlation sees it.
#[derive(Debug, Clone)]
pub struct Ev {
    /// Event time, ns.
    pub ts: i64,
    /// Index of the matched rule in the correlation's `rules`.
    pub step: usize,
    /// `stream:event_id` of the source row (or `finding:<id>`).
    pub event_id: String,
    /// `value_count`'s field value.
    pub value: Option<String>,
    /// Entity of the row (shared by every correlation the row feeds).
    pub entity: std::sync::Arc<Entity>,
}

/// Entity columns of a matched row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entity {
    /// Cluster.
    pub cluster: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Pod UID.
    pub pod_uid: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// Node.
    pub node: Option<String>,
    /// GPU.
    pub gpu_uuid: Option<String>,
}

#[derive(Debug, Default)]
struct Group {
    events: VecDeque<Ev>,
    newest: i64,
    episode: Option<Episode>,
    /// Absence: first-rule events still waiting for their follower.
    pending: Vec<Ev>,
}

#[derive(Debug, Clone)]
struct Episode {
    id: String,
    start: i64,
    last_ts: i64,
    revision: u32,
    severity: Severity,
    contributed: usize,
}

/// The state of one correlation rule.
#[derive(Debug, Default)]
pub struct CorrelationState {
    groups: FxHashMap<String, Group>,
    /// Events dropped for arriving after the watermark passed their window.
    pub late: u64,
}

impl CorrelationState {
    /// Groups held.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|(k, g)| {
                k.len() + 96 + (g.events.len() + g.pending.len()) * (std::mem::size_of::<Ev>() + 64)
            })
            .sum()
    }

    /// Adds a match; pushes a raised or updated finding to `out` when the condition holds.
    #[allow(clippy::too_many_arguments)] // the window's inputs, each needed
    pub fn on_event(
        &mut self,
        rule: &Rule,
        c: &Correlation,
        key: String,
        ev: Ev,
        watermark: i64,
        lateness: i64,
        inventory: &Inventory,
        out: &mut Vec<Finding>,
    ) {
        if ev.ts < watermark.saturating_sub(lateness) {
            self.late += 1;
            return;
        }
        if !self.groups.contains_key(&key)
            && self.groups.len() >= MAX_GROUPS
            && let Some(oldest) = self
                .groups
                .iter()
                .min_by_key(|(_, g)| g.newest)
                .map(|(k, _)| k.clone())
        {
            self.groups.remove(&oldest);
        }
        let g = self.groups.entry(key.clone()).or_default();
        g.newest = g.newest.max(ev.ts);
        if c.kind == CorrelationKind::Absence {
            match ev.step {
                0 => g.pending.push(ev),
                _ => g
                    .pending
                    .retain(|p| !(p.ts <= ev.ts && ev.ts <= p.ts + c.timespan_ns)),
            }
            return;
        }
        let step = ev.step;
        let at = g.events.partition_point(|e| e.ts <= ev.ts);
        g.events.insert(at, ev);
        if matches!(
            c.kind,
            CorrelationKind::Temporal | CorrelationKind::TemporalOrdered
        ) {
            let positions: Vec<usize> = g
                .events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.step == step)
                .map(|(i, _)| i)
                .collect();
            if positions.len() > PER_STEP {
                g.events.remove(positions[1]);
            }
        }
        while g.events.len() > MAX_EVENTS_PER_GROUP {
            g.events.pop_front();
        }
        let horizon = g.newest - c.timespan_ns;
        while g.events.front().is_some_and(|e| e.ts < horizon) {
            g.events.pop_front();
        }
        if let Some(hit) = evaluate(c, &g.events) {
            emit(rule, c, &key, g, hit, inventory, out);
        }
    }

    /// Closes windows the watermark has passed: absence rules fire, count rules with `lt`/`lte`
    /// judge, idle groups are evicted.
    pub fn on_tick(
        &mut self,
        rule: &Rule,
        c: &Correlation,
        watermark: i64,
        lateness: i64,
        inventory: &Inventory,
        out: &mut Vec<Finding>,
    ) {
        let closed = watermark.saturating_sub(lateness);
        let mut evict = Vec::new();
        for (key, g) in &mut self.groups {
            if c.kind == CorrelationKind::Absence {
                let (due, waiting): (Vec<Ev>, Vec<Ev>) = std::mem::take(&mut g.pending)
                    .into_iter()
                    .partition(|p| p.ts + c.timespan_ns < closed);
                g.pending = waiting;
                for p in due {
                    let hit = Hit {
                        events: vec![p],
                        complete: true,
                    };
                    g.episode = None;
                    emit(rule, c, key, g, hit, inventory, out);
                }
            }
            if let (
                CorrelationKind::EventCount | CorrelationKind::ValueCount,
                Some((op @ (CmpOp::Lt | CmpOp::Lte), n)),
            ) = (c.kind, c.threshold)
            {
                // "Fewer than n within the window" can only be judged once the window closed.
                if g.newest + c.timespan_ns < closed && !g.events.is_empty() && g.episode.is_none()
                {
                    let count = measure(c, &g.events.iter().collect::<Vec<_>>()) as u64;
                    let holds = if op == CmpOp::Lt {
                        count < n
                    } else {
                        count <= n
                    };
                    if holds {
                        let hit = Hit {
                            events: g.events.iter().cloned().collect(),
                            complete: true,
                        };
                        emit(rule, c, key, g, hit, inventory, out);
                    }
                }
            }
            if g.newest + c.timespan_ns < closed && g.pending.is_empty() {
                evict.push(key.clone());
            }
        }
        for k in evict {
            self.groups.remove(&k);
        }
    }
}

struct Hit {
    /// The contributing events, in event-time order.
    events: Vec<Ev>,
    /// Every step present (temporal kinds) — decides `full_chain_level`.
    complete: bool,
}

fn evaluate(c: &Correlation, events: &VecDeque<Ev>) -> Option<Hit> {
    match c.kind {
        CorrelationKind::EventCount | CorrelationKind::ValueCount => {
            let (op, n) = c.threshold?;
            if matches!(op, CmpOp::Lt | CmpOp::Lte) {
                return None;
            }
            let all: Vec<&Ev> = events.iter().collect();
            let count = measure(c, &all) as u64;
            let holds = if op == CmpOp::Gt {
                count > n
            } else {
                count >= n
            };
            holds.then(|| Hit {
                events: events.iter().cloned().collect(),
                complete: true,
            })
        }
        CorrelationKind::Temporal => {
            let steps = c.rules.len();
            let mut seen = vec![false; steps];
            for e in events {
                seen[e.step] = true;
            }
            let present = seen.iter().filter(|s| **s).count();
            let need = c.min_rules.unwrap_or(steps).min(steps);
            (present >= need).then(|| Hit {
                events: events.iter().cloned().collect(),
                complete: present == steps,
            })
        }
        CorrelationKind::TemporalOrdered => {
            let chain = longest_ordered_chain(events, c.timespan_ns);
            let steps = c.rules.len();
            let need = c.min_rules.unwrap_or(steps).min(steps);
            (chain.len() >= need).then_some(Hit {
                complete: chain.len() == steps,
                events: chain,
            })
        }
        CorrelationKind::Absence => None,
    }
}

fn measure(c: &Correlation, events: &[&Ev]) -> usize {
    match c.kind {
        CorrelationKind::ValueCount => {
            let mut values: Vec<&str> = events.iter().filter_map(|e| e.value.as_deref()).collect();
            values.sort_unstable();
            values.dedup();
            values.len()
        }
        _ => events.len(),
    }
}

/// The longest chain of events with strictly increasing step and non-decreasing time, all within
/// `span`. O(n²) over a bounded window.
fn longest_ordered_chain(events: &VecDeque<Ev>, span: i64) -> Vec<Ev> {
    let n = events.len();
    let mut len = vec![1usize; n];
    let mut prev = vec![usize::MAX; n];
    let mut start = vec![0usize; n];
    for i in 0..n {
        start[i] = i;
        for j in 0..i {
            let (a, b) = (&events[j], &events[i]);
            if a.step < b.step
                && a.ts <= b.ts
                && b.ts - events[start[j]].ts <= span
                && len[j] + 1 > len[i]
            {
                len[i] = len[j] + 1;
                prev[i] = j;
                start[i] = start[j];
            }
        }
    }
    let Some(end) = (0..n).max_by_key(|&i| (len[i], std::cmp::Reverse(i))) else {
        return Vec::new();
    };
    let mut chain = Vec::with_capacity(len[end]);
    let mut i = end;
    loop {
        chain.push(events[i].clone());
        if prev[i] == usize::MAX {
            break;
        }
        i = prev[i];
    }
    chain.reverse();
    chain
}

fn emit(
    rule: &Rule,
    c: &Correlation,
    key: &str,
    g: &mut Group,
    hit: Hit,
    inventory: &Inventory,
    out: &mut Vec<Finding>,
) {
    let Some(first) = hit.events.first() else {
        return;
    };
    let last = hit.events.last().unwrap_or(first).clone();
    let severity = match (hit.complete, c.full_chain_level) {
        (true, Some(full)) => full,
        _ => rule.level,
    };
    // An episode lasts while matches keep coming within the timespan of each other.
    let episode = match g.episode.take() {
        Some(e) if last.ts <= e.last_ts + c.timespan_ns => {
            if hit.events.len() <= e.contributed && severity <= e.severity {
                g.episode = Some(Episode {
                    last_ts: e.last_ts.max(last.ts),
                    ..e
                });
                return;
            }
            Episode {
                last_ts: e.last_ts.max(last.ts),
                revision: e.revision + 1,
                severity: severity.max(e.severity),
                contributed: hit.events.len().max(e.contributed),
                ..e
            }
        }
        _ => Episode {
            id: finding_id(&rule.name, key, first.ts),
            start: first.ts,
            last_ts: last.ts,
            revision: 0,
            severity,
            contributed: hit.events.len(),
        },
    };
    let steps: Vec<serde_json::Value> = hit
        .events
        .iter()
        .map(|e| serde_json::json!({ "rule": c.rules[e.step], "ts": gpusiem_ingest::time::format_rfc3339_nanos(e.ts), "event_id": e.event_id, "value": e.value }))
        .collect();
    let mut event_ids: Vec<String> = hit.events.iter().map(|e| e.event_id.clone()).collect();
    event_ids.dedup();
    let entity = &last.entity;
    let (role, role_reason) = inventory.role_of(inventory.lookup(
        entity.pod_uid.as_deref(),
        entity.namespace.as_deref(),
        entity.pod.as_deref(),
    ));
    let where_ = match (&entity.namespace, &entity.pod) {
        (Some(ns), Some(pod)) => format!(" on pod {ns}/{pod}"),
        (Some(ns), None) => format!(" in namespace {ns}"),
        _ => String::new(),
    };
    let kind = match c.kind {
        CorrelationKind::EventCount => "event_count",
        CorrelationKind::ValueCount => "value_count",
        CorrelationKind::Temporal => "temporal",
        CorrelationKind::TemporalOrdered => "temporal_ordered",
        CorrelationKind::Absence => "absence",
    };
    let distinct_steps = {
        let mut s: Vec<usize> = hit.events.iter().map(|e| e.step).collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    out.push(Finding {
        id: episode.id.clone(),
        ts: episode.start,
        last_ts: episode.last_ts,
        detector: rule.name.clone(),
        severity: episode.severity,
        status: Status::Firing,
        revision: episode.revision,
        summary: format!(
            "{}{} ({} of {} steps)",
            rule.title,
            where_,
            distinct_steps,
            c.rules.len()
        ),
        cluster: entity.cluster.clone(),
        namespace: entity.namespace.clone(),
        pod: entity.pod.clone(),
        pod_uid: entity.pod_uid.clone(),
        container: entity.container.clone(),
        node: entity.node.clone(),
        gpu_uuid: hit
            .events
            .iter()
            .rev()
            .find_map(|e| e.entity.gpu_uuid.clone()),
        role,
        role_reason,
        mitre: rule.mitre.clone(),
        evidence: serde_json::json!({
            "correlation": kind,
            "group": key,
            "timespan_secs": c.timespan_ns / 1_000_000_000,
            "complete": hit.complete,
            "steps": steps,
        }),
        event_ids,
    });
    g.episode = Some(episode);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, step: usize) -> Ev {
        Ev {
            ts,
            step,
            event_id: format!("e{ts}"),
            value: None,
            entity: Default::default(),
        }
    }

    #[test]
    fn ordered_chain_respects_order_and_span() {
        let events: VecDeque<Ev> = [ev(1, 0), ev(2, 2), ev(3, 1), ev(4, 3), ev(5, 2)]
            .into_iter()
            .collect();
        let chain = longest_ordered_chain(&events, 10);
        assert_eq!(chain.len(), 3);
        assert!(
            chain
                .windows(2)
                .all(|w| w[0].step < w[1].step && w[0].ts <= w[1].ts)
        );
        assert_eq!(chain[0].step, 0);
        let chain = longest_ordered_chain(&events, 2);
        assert!(chain.len() <= 2);
    }
}
