//! Rules: Sigma detection and correlation rules over `falco_events`, `k8s_audit` and findings.
//!
//! ```text
//!  falco_events / k8s_audit batch ─► detection rules (per logsource) ─► match ─┬─► finding (one per episode)
//!  findings (revision 0) ──────────► detection rules on findings ────► match ─┤
//!                                                                              └─► correlation rules (group-by,
//!                                                                                  timespan, watermark) ─► finding
//! ```
//!
//! A [`RuleSet`] is the built-in GPU/Kubernetes pack (`detect/rules/*.yml`, embedded) plus the
//! rule directories of the configuration; [`RuleEngine`] runs it as a [`Detector`]. A detection
//! rule's matches on the same entity (rule, namespace, pod or object, user) within
//! `suppress_secs` of each other are one episode: raised on the first match and updated as the
//! count doubles, never one finding per event. Rules with `generate: false` only feed
//! correlations.

pub mod condition;
pub mod correlation;
pub mod fields;
pub mod pack;
pub mod pattern;
pub mod sigma;
pub mod testing;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampNanosecondType;
use gpusiem_ingest::Stream;
use gpusiem_ingest::schema::{self, falco_events as fe, k8s_audit as ka};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use self::correlation::{CorrelationState, Entity, Ev};
use self::fields::{Access, LogSource, Rows, Val};
use self::sigma::{Correlation, Rule, RuleError, RuleKind};
use crate::detector::{DetectContext, Detector};
use crate::finding::{Finding, Status, finding_id};

/// `[rules]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Directories of `*.yml` rule files, loaded on top of the built-in pack.
    pub dirs: Vec<PathBuf>,
    /// Load the built-in GPU/Kubernetes pack.
    pub builtin: bool,
    /// How late an event may arrive for correlations, seconds of event time.
    pub allowed_lateness_secs: u64,
    /// Matches of one rule on one entity closer than this are one episode, seconds.
    pub suppress_secs: u64,
    /// Seconds between checks of the rule directories for changes (0: never reload).
    pub reload_interval_secs: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dirs: Vec::new(),
            builtin: true,
            allowed_lateness_secs: 30,
            suppress_secs: 600,
            reload_interval_secs: 10,
        }
    }
}

/// A linked set of rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Detection rules per log source.
    by_source: [Vec<usize>; 3],
    /// Per log source: rules that can only match rows whose anchor column has one of a few
    /// literal values, indexed by those values; the rest are always evaluated.
    anchors: [Arc<[AnchorIndex]>; 3],
    unanchored: [Arc<[usize]>; 3],
    /// For each rule, the correlations that reference it: (correlation rule, step, group-by accesses, value access).
    feeds: Vec<Vec<Feed>>,
}

/// Rules whose condition requires `column` to equal one of some literals (case-insensitive),
/// by literal.
#[derive(Debug, Clone)]
struct AnchorIndex {
    column: usize,
    rules: FxHashMap<String, Vec<usize>>,
}

/// Columns an anchor prefers, most selective first.
const ANCHOR_PREFERENCE: &[&str] = &[
    gpusiem_ingest::schema::k8s_audit::SUBRESOURCE,
    gpusiem_ingest::schema::k8s_audit::RESOURCE,
    gpusiem_ingest::schema::falco_events::RULE,
    crate::finding::columns::DETECTOR,
    gpusiem_ingest::schema::falco_events::EVT_TYPE,
    gpusiem_ingest::schema::k8s_audit::VERB,
];

/// The anchor of a detection: a field every match must have equal to one of a few literals.
fn anchor(d: &sigma::Detection) -> Option<(fields::Col, Vec<String>)> {
    use self::condition::Cond;
    let required: Vec<usize> = match &d.condition {
        Cond::Sel(i) => vec![*i],
        Cond::And(items) => items
            .iter()
            .filter_map(|c| if let Cond::Sel(i) = c { Some(*i) } else { None })
            .collect(),
        _ => Vec::new(),
    };
    let mut best: Option<(usize, fields::Col, Vec<String>)> = None;
    for i in required {
        let sigma::Selection::AnyOf(groups) = &d.selections[i].1 else {
            continue;
        };
        let [group] = groups.as_slice() else { continue };
        for m in group {
            let Access::Str(col) = m.access else { continue };
            if m.all || m.matchers.len() > 16 {
                continue;
            }
            let literals: Option<Vec<String>> = m
                .matchers
                .iter()
                .map(|x| {
                    if let sigma::Matcher::Text(w) = x {
                        w.literal_folded().map(str::to_string)
                    } else {
                        None
                    }
                })
                .collect();
            let Some(literals) = literals else { continue };
            let rank = ANCHOR_PREFERENCE
                .iter()
                .position(|c| *c == col.name)
                .unwrap_or(ANCHOR_PREFERENCE.len());
            if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                best = Some((rank, col, literals));
            }
        }
    }
    best.map(|(_, c, l)| (c, l))
}

#[derive(Debug, Clone)]
struct Feed {
    correlation: usize,
    step: usize,
    group: Vec<Access>,
    value: Option<Access>,
}

fn source_slot(s: LogSource) -> usize {
    match s {
        LogSource::K8sAudit => 0,
        LogSource::Falco => 1,
        LogSource::Findings => 2,
    }
}

impl RuleSet {
    /// Links parsed rules: correlation references must name loaded rules, group-by fields
    /// must resolve for every referenced rule.
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut seen = FxHashMap::default();
        for (i, r) in rules.iter().enumerate() {
            if let Some(prev) = seen.insert(r.name.clone(), i) {
                let (f, l) = &rules[prev].origin;
                errors.push(RuleError {
                    file: r.origin.0.clone(),
                    line: r.origin.1,
                    message: format!("rule name `{}` already used at {f}:{l}", r.name),
                });
            }
        }
        let find = |name: &str| {
            rules
                .iter()
                .position(|r| r.name == name || r.sigma_id.as_deref() == Some(name))
        };
        let mut by_source: [Vec<usize>; 3] = Default::default();
        let mut feeds = vec![Vec::new(); rules.len()];
        for (ci, r) in rules.iter().enumerate() {
            match &r.kind {
                RuleKind::Detection(d) => by_source[source_slot(d.source)].push(ci),
                RuleKind::Correlation(c) => {
                    for (step, name) in c.rules.iter().enumerate() {
                        let err = |m: String| RuleError {
                            file: r.origin.0.clone(),
                            line: r.origin.1,
                            message: m,
                        };
                        let Some(target) = find(name) else {
                            errors
                                .push(err(format!("correlation references unknown rule `{name}`")));
                            continue;
                        };
                        let RuleKind::Detection(d) = &rules[target].kind else {
                            errors.push(err(format!(
                                "`{name}` is a correlation; correlations reference detection rules"
                            )));
                            continue;
                        };
                        let field_of = |f: &str| -> String {
                            c.aliases
                                .iter()
                                .find(|(alias, _)| alias == f)
                                .and_then(|(_, per)| {
                                    per.iter()
                                        .find(|(rule, _)| {
                                            rule == name || *rule == rules[target].name
                                        })
                                        .map(|(_, field)| field.clone())
                                })
                                .unwrap_or_else(|| f.to_string())
                        };
                        let mut group = Vec::new();
                        for f in &c.group_by {
                            match fields::resolve(d.source, &field_of(f)) {
                                Ok(a) => group.push(a),
                                Err(m) => errors
                                    .push(err(format!("group-by `{f}` for rule `{name}`: {m}"))),
                            }
                        }
                        let value = match &c.value_field {
                            Some(f) => match fields::resolve(d.source, &field_of(f)) {
                                Ok(a) => Some(a),
                                Err(m) => {
                                    errors.push(err(format!(
                                        "value field `{f}` for rule `{name}`: {m}"
                                    )));
                                    None
                                }
                            },
                            None => None,
                        };
                        feeds[target].push(Feed {
                            correlation: ci,
                            step,
                            group,
                            value,
                        });
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut anchors: [Vec<AnchorIndex>; 3] = Default::default();
        let mut unanchored: [Vec<usize>; 3] = Default::default();
        for (slot, list) in by_source.iter().enumerate() {
            for &ri in list {
                let RuleKind::Detection(d) = &rules[ri].kind else {
                    continue;
                };
                match anchor(d) {
                    Some((col, literals)) => {
                        let idx = match anchors[slot].iter().position(|a| a.column == col.index) {
                            Some(i) => i,
                            None => {
                                anchors[slot].push(AnchorIndex {
                                    column: col.index,
                                    rules: FxHashMap::default(),
                                });
                                anchors[slot].len() - 1
                            }
                        };
                        for l in literals {
                            anchors[slot][idx].rules.entry(l).or_default().push(ri);
                        }
                    }
                    None => unanchored[slot].push(ri),
                }
            }
        }
        Ok(RuleSet {
            rules,
            by_source,
            anchors: anchors.map(Arc::from),
            unanchored: unanchored.map(Arc::from),
            feeds,
        })
    }

    /// The built-in pack alone.
    pub fn builtin() -> Result<RuleSet, Vec<RuleError>> {
        RuleSet::new(pack::rules()?)
    }

    /// The built-in pack (when `config.builtin`) plus every `*.yml`/`*.yaml` under `config.dirs`.
    pub fn load(config: &RulesConfig) -> Result<RuleSet, Vec<RuleError>> {
        let mut rules = if config.builtin {
            pack::rules()?
        } else {
            Vec::new()
        };
        let mut errors = Vec::new();
        for dir in &config.dirs {
            match load_dir(dir) {
                Ok(mut r) => rules.append(&mut r),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        RuleSet::new(rules)
    }

    /// The anchor indexes and unanchored rules of a log source (shared, so the engine can hold
    /// them while it mutates its own state).
    fn clone_index(&self, slot: usize) -> (Arc<[AnchorIndex]>, Arc<[usize]>) {
        (self.anchors[slot].clone(), self.unanchored[slot].clone())
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Looks a rule up by name or Sigma id.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.name == name || r.sigma_id.as_deref() == Some(name))
    }
}

/// Parses every rule file under `dir` (recursively, sorted, `*.test.yml` excluded).
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, Vec<RuleError>> {
    let mut files = Vec::new();
    collect(dir, &mut files).map_err(|e| {
        vec![RuleError {
            file: dir.display().to_string(),
            line: 0,
            message: e.to_string(),
        }]
    })?;
    files.sort();
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(&f) {
            Ok(text) => match sigma::parse_file(&name, &text) {
                Ok(mut r) => rules.append(&mut r),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(RuleError {
                file: name,
                line: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if is_rule_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_rule_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (name.ends_with(".yml") || name.ends_with(".yaml")) && !name.contains(".test.")
}

/// The newest modification time of the rule files under `dirs` (for reload on change).
pub fn newest_mtime(dirs: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut files = Vec::new();
    for d in dirs {
        let _ = collect(d, &mut files);
    }
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .max()
}

/// Runs a [`RuleSet`] as a detector.
pub struct RuleEngine {
    set: RuleSet,
    lateness_ns: i64,
    suppress_ns: i64,
    episodes: FxHashMap<(usize, String), RuleEpisode>,
    correlations: FxHashMap<usize, CorrelationState>,
    /// Matches per rule, indexed like the rule set.
    matches: Vec<u64>,
}

#[derive(Debug)]
struct RuleEpisode {
    id: String,
    start: i64,
    last_ts: i64,
    count: u64,
    revision: u32,
    event_ids: Vec<String>,
}

/// Contributing event ids kept per rule episode.
const MAX_EPISODE_EVENTS: usize = 64;

impl RuleEngine {
    /// An engine for `set`.
    pub fn new(set: RuleSet, config: &RulesConfig) -> Self {
        RuleEngine {
            lateness_ns: secs(config.allowed_lateness_secs),
            suppress_ns: secs(config.suppress_secs),
            episodes: FxHashMap::default(),
            correlations: FxHashMap::default(),
            matches: vec![0; set.rules.len()],
            set,
        }
    }

    /// Matches per rule name so far.
    pub fn matches(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.set
            .rules
            .iter()
            .zip(&self.matches)
            .map(|(r, n)| (r.name.as_str(), *n))
    }

    /// Swaps in a new rule set. Episode and correlation state is kept for rules whose text did
    /// not change (same name and content hash); the rest starts fresh.
    pub fn reload(&mut self, set: RuleSet) {
        let old = std::mem::replace(&mut self.set, set);
        let remap: FxHashMap<usize, usize> = old
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                self.set
                    .rules
                    .iter()
                    .position(|n| n.name == r.name && n.hash == r.hash)
                    .map(|j| (i, j))
            })
            .collect();
        self.episodes = std::mem::take(&mut self.episodes)
            .into_iter()
            .filter_map(|((i, k), e)| remap.get(&i).map(|&j| ((j, k), e)))
            .collect();
        self.correlations = std::mem::take(&mut self.correlations)
            .into_iter()
            .filter_map(|(i, s)| remap.get(&i).map(|&j| (j, s)))
            .collect();
        let mut matches = vec![0; self.set.rules.len()];
        for (i, j) in &remap {
            matches[*j] = self.matches[*i];
        }
        self.matches = matches;
    }

    /// The loaded rules.
    pub fn rule_set(&self) -> &RuleSet {
        &self.set
    }

    /// Events dropped by correlations for arriving later than the allowed lateness.
    pub fn late_events(&self) -> u64 {
        self.correlations.values().map(|c| c.late).sum()
    }

    fn run(
        &mut self,
        cx: &DetectContext<'_>,
        source: LogSource,
        stream_name: &str,
        batch: &RecordBatch,
        out: &mut Vec<Finding>,
    ) {
        let slot = source_slot(source);
        if self.set.by_source[slot].is_empty() || batch.num_rows() == 0 {
            return;
        }
        let set = self.set.clone_index(slot);
        let mut candidates: Vec<usize> = Vec::with_capacity(self.set.by_source[slot].len());
        let mut folded = String::new();
        let ts = batch
            .column_by_name(schema::TS)
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .cloned();
        let Some(ts) = ts else { return };
        let id_col = if source == LogSource::Findings {
            crate::finding::columns::ID
        } else {
            schema::EVENT_ID
        };
        let mut rows = Rows::new(batch, cx.inventory);
        for row in 0..batch.num_rows() {
            candidates.clear();
            for a in set.0.iter() {
                if let Some(v) = rows.str_at(a.column, row) {
                    folded.clear();
                    if v.is_ascii() {
                        folded.push_str(v);
                        folded.make_ascii_lowercase();
                    } else {
                        folded.extend(v.chars().flat_map(char::to_lowercase));
                    }
                    if let Some(r) = a.rules.get(folded.as_str()) {
                        candidates.extend_from_slice(r);
                    }
                }
            }
            candidates.extend_from_slice(&set.1);
            candidates.sort_unstable();
            candidates.dedup();
            for &ri in &candidates {
                let RuleKind::Detection(d) = &self.set.rules[ri].kind else {
                    continue;
                };
                if !d.matches(&mut rows, row) {
                    continue;
                }
                self.matches[ri] += 1;
                if !self.set.rules[ri].generate && self.set.feeds[ri].is_empty() {
                    continue;
                }
                let event_id = format!("{stream_name}:{}", rows.str(id_col, row).unwrap_or(""));
                let t = ts.value(row);
                let entity = Arc::new(entity(&mut rows, row));
                if self.set.rules[ri].generate {
                    self.rule_finding(ri, &mut rows, row, t, &event_id, &entity, out);
                }
                for feed in &self.set.feeds[ri] {
                    let key = group_key(&mut rows, row, &feed.group);
                    let value = feed
                        .value
                        .as_ref()
                        .and_then(|a| first_text(&mut rows, row, a));
                    let ev = Ev {
                        ts: t,
                        step: feed.step,
                        event_id: event_id.clone(),
                        value,
                        entity: entity.clone(),
                    };
                    let rule = &self.set.rules[feed.correlation];
                    let RuleKind::Correlation(c) = &rule.kind else {
                        continue;
                    };
                    self.correlations
                        .entry(feed.correlation)
                        .or_default()
                        .on_event(
                            rule,
                            c,
                            key,
                            ev,
                            cx.watermark,
                            self.lateness_ns,
                            cx.inventory,
                            out,
                        );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the row's facts, passed apart to avoid re-reading them
    fn rule_finding(
        &mut self,
        ri: usize,
        rows: &mut Rows<'_>,
        row: usize,
        ts: i64,
        event_id: &str,
        entity: &Entity,
        out: &mut Vec<Finding>,
    ) {
        let rule = &self.set.rules[ri];
        let user = rows
            .str(ka::USER, row)
            .or_else(|| rows.str(fe::USER_NAME, row));
        let object = rows
            .str(ka::NAME, row)
            .or_else(|| rows.str(fe::PROC_NAME, row));
        let key = format!(
            "{}/{}/{}/{}/{}",
            entity.cluster.as_deref().unwrap_or(""),
            entity.namespace.as_deref().unwrap_or(""),
            entity.pod.as_deref().or(object).unwrap_or(""),
            user.unwrap_or(""),
            entity.gpu_uuid.as_deref().unwrap_or("")
        );
        let suppress = self.suppress_ns;
        let slot = self.episodes.entry((ri, key.clone()));
        let ep = slot
            .and_modify(|e| {
                if ts > e.last_ts + suppress {
                    *e = RuleEpisode {
                        id: finding_id(&rule.name, &key, ts),
                        start: ts,
                        last_ts: ts,
                        count: 0,
                        revision: 0,
                        event_ids: Vec::new(),
                    };
                }
            })
            .or_insert_with(|| RuleEpisode {
                id: finding_id(&rule.name, &key, ts),
                start: ts,
                last_ts: ts,
                count: 0,
                revision: 0,
                event_ids: Vec::new(),
            });
        ep.count += 1;
        ep.last_ts = ep.last_ts.max(ts);
        if ep.event_ids.len() < MAX_EPISODE_EVENTS {
            ep.event_ids.push(event_id.to_string());
        }
        // Raised on the first match, updated when the count doubles: bounded emissions.
        if !ep.count.is_power_of_two() {
            return;
        }
        if ep.count > 1 {
            ep.revision += 1;
        }
        let where_ = match (&entity.namespace, &entity.pod, object) {
            (Some(ns), Some(pod), _) => format!(" on pod {ns}/{pod}"),
            (Some(ns), None, Some(o)) => format!(" on {ns}/{o}"),
            (None, None, Some(o)) => format!(" on {o}"),
            _ => String::new(),
        };
        let by = user.map(|u| format!(" by {u}")).unwrap_or_default();
        let (role, role_reason) = rows.role(row);
        out.push(Finding {
            id: ep.id.clone(),
            ts: ep.start,
            last_ts: ep.last_ts,
            detector: rule.name.clone(),
            severity: rule.level,
            status: Status::Firing,
            revision: ep.revision,
            summary: format!("{}{where_}{by}", rule.title),
            cluster: entity.cluster.clone(),
            namespace: entity.namespace.clone(),
            pod: entity.pod.clone(),
            pod_uid: entity.pod_uid.clone(),
            container: entity.container.clone(),
            node: entity.node.clone(),
            gpu_uuid: entity.gpu_uuid.clone(),
            role,
            role_reason,
            mitre: rule.mitre.clone(),
            evidence: serde_json::json!({
                "rule": { "name": rule.name, "title": rule.title, "id": rule.sigma_id, "file": rule.origin.0, "line": rule.origin.1 },
                "matches": ep.count,
                "user": user,
            }),
            event_ids: ep.event_ids.clone(),
        });
    }
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1_000_000_000) * 1_000_000_000
}

fn entity(rows: &mut Rows<'_>, row: usize) -> Entity {
    let s = |c| rows.str(c, row).map(str::to_string);
    let mut e = Entity {
        cluster: s(schema::CLUSTER),
        namespace: s(schema::NAMESPACE),
        pod: s(schema::POD),
        pod_uid: s(schema::POD_UID),
        container: s(schema::CONTAINER),
        node: s(schema::NODE),
        gpu_uuid: s(schema::GPU_UUID),
    };
    if e.node.is_none() {
        e.node = rows.pod(row).and_then(|p| p.node.clone());
    }
    e
}

fn first_text(rows: &mut Rows<'_>, row: usize, a: &Access) -> Option<String> {
    let mut out = None;
    rows.any(a, row, &mut |v| {
        out = Some(match v {
            Val::Str(s) => s.to_string(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => b.to_string(),
        });
        true
    });
    out
}

fn group_key(rows: &mut Rows<'_>, row: usize, group: &[Access]) -> String {
    let mut key = String::new();
    for (i, a) in group.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        key.push_str(first_text(rows, row, a).as_deref().unwrap_or(""));
    }
    key
}

impl Detector for RuleEngine {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn observe(
        &mut self,
        cx: &DetectContext<'_>,
        stream: Stream,
        batch: &RecordBatch,
        out: &mut Vec<Finding>,
    ) {
        let source = match stream {
            Stream::K8sAudit => LogSource::K8sAudit,
            Stream::FalcoEvents => LogSource::Falco,
            Stream::GpuMetrics => return,
        };
        self.run(cx, source, stream.name(), batch, out);
    }

    fn observe_findings(
        &mut self,
        cx: &DetectContext<'_>,
        findings: &[Finding],
        out: &mut Vec<Finding>,
    ) {
        if self.set.by_source[source_slot(LogSource::Findings)].is_empty() {
            return;
        }
        // A finding is an event once, when its episode is raised.
        let raised: Vec<Finding> = findings
            .iter()
            .filter(|f| f.revision == 0 && f.status == Status::Firing)
            .cloned()
            .collect();
        if raised.is_empty() {
            return;
        }
        let batch = crate::finding::to_record_batch(&raised);
        self.run(cx, LogSource::Findings, "finding", &batch, out);
    }

    fn on_tick(&mut self, cx: &DetectContext<'_>, now: i64, out: &mut Vec<Finding>) {
        for (i, state) in &mut self.correlations {
            let rule = &self.set.rules[*i];
            if let RuleKind::Correlation(c) = &rule.kind {
                state.on_tick(
                    rule,
                    c,
                    cx.watermark.max(now),
                    self.lateness_ns,
                    cx.inventory,
                    out,
                );
            }
        }
        let horizon = now.saturating_sub(self.suppress_ns);
        self.episodes.retain(|_, e| e.last_ts >= horizon);
    }

    fn state_bytes(&self) -> usize {
        self.episodes
            .iter()
            .map(|((_, k), e)| {
                k.len() + 96 + e.event_ids.iter().map(|s| s.len() + 24).sum::<usize>()
            })
            .sum::<usize>()
            + self
                .correlations
                .values()
                .map(CorrelationState::state_bytes)
                .sum::<usize>()
    }

    fn series(&self) -> usize {
        self.episodes.len()
            + self
                .correlations
                .values()
                .map(CorrelationState::groups)
                .sum::<usize>()
    }
}

/// Correlation of a rule, if it is one.
pub fn correlation_of(rule: &Rule) -> Option<&Correlation> {
    match &rule.kind {
        RuleKind::Correlation(c) => Some(c),
        RuleKind::Detection(_) => None,
    }
}
