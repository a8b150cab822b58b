//! Sigma rules: detection rules (selections, field modifiers, conditions) and correlation rules,
//! parsed from YAML into compiled matchers.
//!
//! Supported: selections as maps (AND) or lists of maps (OR) or keyword lists; values as
//! strings with `*`/`?` wildcards (case-insensitive unless `|cased`), numbers, booleans, null;
//! modifiers `contains`, `startswith`, `endswith`, `re` (with `i`, `m`, `s`), `cidr`, `all`,
//! `exists`, `cased`, `gt`/`gte`/`lt`/`lte`; conditions with `and`/`or`/`not`, parentheses,
//! `1 of`/`all of` patterns and `them`; `level`, ATT&CK `tags`. Correlation rules:
//! `event_count`, `value_count`, `temporal`, `temporal_ordered`, with `group-by`, `timespan`,
//! `aliases`, `condition`; and two extensions in a `gpusiem:` block — `absence` ("A not
//! followed by B within the timespan") and, for `temporal_ordered`, `min_rules` (raise on any
//! ordered subset of that many steps, escalate to `full_chain_level` when the chain completes).

use std::net::IpAddr;

use regex::Regex;

use super::condition::{self, Cond};
use super::fields::{self, Access, LogSource, Rows, Val};
use super::pattern::Wildcard;
use super::yaml::{Node, Value};
use crate::finding::Severity;

/// A parsed rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable id used as the finding's `detector`: the rule's `name`, else its file stem (plus
    /// `#n` for later documents of a multi-document file).
    pub name: String,
    /// Sigma `id` (UUID), if any.
    pub sigma_id: Option<String>,
    /// Title.
    pub title: String,
    /// Description.
    pub description: Option<String>,
    /// Severity from `level`.
    pub level: Severity,
    /// ATT&CK technique ids from `tags` (`attack.t1609` → `T1609`).
    pub mitre: Vec<String>,
    /// Whether matches become findings (`generate: false` rules only feed correlations).
    pub generate: bool,
    /// File and line the rule starts on.
    pub origin: (String, usize),
    /// Content hash, to keep correlation state across reloads of an unchanged rule.
    pub hash: u64,
    /// Detection or correlation.
    pub kind: RuleKind,
}

/// What a rule does.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Matches single events.
    Detection(Detection),
    /// Correlates matches of other rules.
    Correlation(Correlation),
}

/// A compiled detection.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Which table it reads.
    pub source: LogSource,
    /// Named selections, in document order.
    pub selections: Vec<(String, Selection)>,
    /// The condition over them.
    pub condition: Cond,
}

/// A selection: OR over alternatives, each an AND of field matches.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Any of these AND-groups.
    AnyOf(Vec<Vec<FieldMatch>>),
    /// Keywords searched in the row's text field (`output` for Falco, the request URI and user
    /// agent for audit, the summary for findings).
    Keywords(Vec<Wildcard>),
}

/// One `field|modifiers: values` entry.
#[derive(Debug, Clone)]
pub struct FieldMatch {
    /// The field as written in the rule.
    pub field: String,
    /// How to read it.
    pub access: Access,
    /// The values (OR, or AND with `|all`).
    pub matchers: Vec<Matcher>,
    /// `|all`.
    pub all: bool,
    /// For a list of plain `|contains` values without `|all`: one automaton over all of them.
    pub contains_any: Option<aho_corasick::AhoCorasick>,
}

/// How a single rule value is compared with a field value.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Wildcard text (plain values, contains/startswith/endswith).
    Text(Wildcard),
    /// Regular expression.
    Regex(Regex),
    /// Network range.
    Cidr(ipnet::IpNet),
    /// Numeric equality.
    Num(f64),
    /// Numeric comparison.
    Cmp(CmpOp, f64),
    /// Boolean equality.
    Bool(bool),
    /// `null`: the field is absent or null.
    Null,
    /// `|exists: true/false`.
    Exists(bool),
}

/// Numeric comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `>`.
    Gt,
    /// `>=`.
    Gte,
    /// `<`.
    Lt,
    /// `<=`.
    Lte,
}

/// A correlation rule.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// The type.
    pub kind: CorrelationKind,
    /// Referenced rules (names or Sigma ids), in order.
    pub rules: Vec<String>,
    /// Group-by fields (after aliases: names of each referenced rule's fields).
    pub group_by: Vec<String>,
    /// `aliases`: alias → (rule → field).
    pub aliases: Vec<(String, Vec<(String, String)>)>,
    /// Window, ns.
    pub timespan_ns: i64,
    /// Threshold for counts: (op, value).
    pub threshold: Option<(CmpOp, u64)>,
    /// `value_count`'s field.
    pub value_field: Option<String>,
    /// Extension: least number of ordered steps that raises (`temporal_ordered`).
    pub min_rules: Option<usize>,
    /// Extension: severity when every step matched.
    pub full_chain_level: Option<Severity>,
}

/// Correlation types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrelationKind {
    /// Number of events.
    EventCount,
    /// Number of distinct values of a field.
    ValueCount,
    /// All referenced rules within the timespan, any order.
    Temporal,
    /// All referenced rules within the timespan, in order.
    TemporalOrdered,
    /// The first rule matched and the second did not follow within the timespan.
    Absence,
}

/// A problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// File.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Parses every rule document of a file.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    let err = |line, message: String| RuleError {
        file: file.to_string(),
        line,
        message,
    };
    let docs = super::yaml::load(text).map_err(|(line, m)| vec![err(line, m)])?;
    let stem = std::path::Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if matches!(doc.value, Value::Null) {
            continue;
        }
        let fallback = if i == 0 {
            stem.clone()
        } else {
            format!("{stem}#{}", i + 1)
        };
        match parse_rule(doc, &fallback, file, text) {
            Ok(r) => rules.push(r),
            Err((line, m)) => errors.push(err(line, m)),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

type PErr = (usize, String);

fn parse_rule(doc: &Node, fallback_name: &str, file: &str, text: &str) -> Result<Rule, PErr> {
    let map = doc
        .as_map()
        .ok_or((doc.line, "a rule must be a mapping".to_string()))?;
    let title = doc
        .get("title")
        .and_then(Node::as_str)
        .ok_or((doc.line, "missing `title`".to_string()))?
        .to_string();
    let name = match doc.get("name") {
        Some(n) => n
            .as_str()
            .ok_or((n.line, "`name` must be a string".to_string()))?
            .to_string(),
        None => fallback_name.to_string(),
    };
    let level = match doc.get("level") {
        Some(l) => level(l)?,
        None => Severity::Medium,
    };
    let mitre = doc
        .get("tags")
        .and_then(Node::string_list)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.strip_prefix("attack."))
        .filter(|t| {
            t.len() > 1
                && t.as_bytes()[0].eq_ignore_ascii_case(&b't')
                && t.as_bytes()[1].is_ascii_digit()
        })
        .map(|t| t.to_ascii_uppercase())
        .collect();
    let generate = match doc.get("generate") {
        Some(Node {
            value: Value::Bool(b),
            ..
        }) => *b,
        Some(n) => return Err((n.line, "`generate` must be true or false".to_string())),
        None => true,
    };
    let known = [
        "title",
        "id",
        "name",
        "related",
        "taxonomy",
        "status",
        "description",
        "references",
        "author",
        "date",
        "modified",
        "tags",
        "logsource",
        "detection",
        "fields",
        "falsepositives",
        "level",
        "correlation",
        "generate",
        "license",
        "scope",
        "gpusiem",
    ];
    if let Some((k, v)) = map.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err((v.line, format!("unknown key `{k}`")));
    }
    let kind = match (doc.get("detection"), doc.get("correlation")) {
        (Some(d), None) => RuleKind::Detection(detection(doc, d)?),
        (None, Some(c)) => RuleKind::Correlation(correlation(c, doc.get("gpusiem"))?),
        (Some(_), Some(c)) => {
            return Err((
                c.line,
                "a rule has either `detection` or `correlation`".to_string(),
            ));
        }
        (None, None) => {
            return Err((
                doc.line,
                "missing `detection` (or `correlation`)".to_string(),
            ));
        }
    };
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", doc.value).hash(&mut h);
        h.finish()
    };
    let _ = text;
    Ok(Rule {
        name,
        sigma_id: doc.get("id").and_then(Node::as_str).map(str::to_string),
        title,
        description: doc
            .get("description")
            .and_then(Node::as_str)
            .map(str::to_string),
        level,
        mitre,
        generate,
        origin: (file.to_string(), doc.line),
        hash,
        kind,
    })
}

fn level(n: &Node) -> Result<Severity, PErr> {
    match n.as_str() {
        Some("informational") => Ok(Severity::Info),
        Some("low") => Ok(Severity::Low),
        Some("medium") => Ok(Severity::Medium),
        Some("high") => Ok(Severity::High),
        Some("critical") => Ok(Severity::Critical),
        _ => Err((
            n.line,
            "`level` must be informational, low, medium, high or critical".to_string(),
        )),
    }
}

fn logsource(n: &Node) -> Result<LogSource, PErr> {
    let get = |k: &str| n.get(k).and_then(Node::as_str).map(str::to_ascii_lowercase);
    match (get("product").as_deref(), get("service").as_deref()) {
        (Some("kubernetes"), Some("audit")) => Ok(LogSource::K8sAudit),
        (Some("falco"), _) => Ok(LogSource::Falco),
        (Some("gpusiem"), Some("findings")) => Ok(LogSource::Findings),
        _ => Err((
            n.line,
            "unsupported logsource (product: kubernetes + service: audit, product: falco, or product: gpusiem + service: findings)".into(),
        )),
    }
}

fn detection(doc: &Node, d: &Node) -> Result<Detection, PErr> {
    let source = logsource(
        doc.get("logsource")
            .ok_or((doc.line, "missing `logsource`".to_string()))?,
    )?;
    let entries = d
        .as_map()
        .ok_or((d.line, "`detection` must be a mapping".to_string()))?;
    let mut selections = Vec::new();
    let mut cond_node = None;
    for (name, node) in entries {
        if name == "condition" {
            cond_node = Some(node);
            continue;
        }
        if name == "timeframe" {
            return Err((
                node.line,
                "`timeframe` is deprecated; use a correlation rule".into(),
            ));
        }
        selections.push((name.clone(), selection(source, node)?));
    }
    let cond_node = cond_node.ok_or((d.line, "missing `condition`".to_string()))?;
    let names: Vec<String> = selections.iter().map(|(n, _)| n.clone()).collect();
    let condition = match &cond_node.value {
        Value::Str(s) => condition::parse(s, &names).map_err(|m| (cond_node.line, m))?,
        Value::Seq(items) => Cond::Or(
            items
                .iter()
                .map(|i| {
                    let s = i
                        .as_str()
                        .ok_or((i.line, "conditions must be strings".to_string()))?;
                    condition::parse(s, &names).map_err(|m| (i.line, m))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err((cond_node.line, "`condition` must be a string".into())),
    };
    Ok(Detection {
        source,
        selections,
        condition,
    })
}

fn selection(source: LogSource, n: &Node) -> Result<Selection, PErr> {
    match &n.value {
        Value::Map(_) => Ok(Selection::AnyOf(vec![field_group(source, n)?])),
        Value::Seq(items) if items.iter().all(|i| matches!(i.value, Value::Map(_))) => {
            Ok(Selection::AnyOf(
                items
                    .iter()
                    .map(|i| field_group(source, i))
                    .collect::<Result<_, _>>()?,
            ))
        }
        Value::Seq(items) => Ok(Selection::Keywords(
            items
                .iter()
                .map(|i| {
                    i.scalar_text()
                        .map(|t| Wildcard::parse(&format!("*{t}*"), true))
                        .ok_or((i.line, "keywords must be scalars".to_string()))
                })
                .collect::<Result<_, _>>()?,
        )),
        Value::Str(s) => Ok(Selection::Keywords(vec![Wildcard::parse(
            &format!("*{s}*"),
            true,
        )])),
        _ => Err((
            n.line,
            "a selection is a mapping, a list of mappings, or a list of keywords".into(),
        )),
    }
}

fn field_group(source: LogSource, n: &Node) -> Result<Vec<FieldMatch>, PErr> {
    let mut out = Vec::new();
    for (key, values) in n.as_map().unwrap_or_default() {
        let mut parts = key.split('|');
        let field = parts.next().unwrap_or_default().to_string();
        let modifiers: Vec<&str> = parts.collect();
        let mut access = fields::resolve(source, &field).map_err(|m| (values.line, m))?;
        let items: Vec<&Node> = match &values.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![values],
        };
        // SigmaHQ's enumeration rule compares responseStatus.code with 'ALLOW': that is the
        // authorization decision, not an HTTP code.
        if access
            == Access::Int(
                LogSource::K8sAudit.col(gpusiem_ingest::schema::k8s_audit::RESPONSE_CODE),
            )
            && items.iter().all(|i| {
                i.as_str().is_some_and(|s| {
                    matches!(s.to_ascii_uppercase().as_str(), "ALLOW" | "FORBID" | "DENY")
                })
            })
        {
            access = fields::decision();
        }
        let all = modifiers.contains(&"all");
        let matchers = items
            .iter()
            .map(|v| matcher(v, &modifiers))
            .collect::<Result<Vec<_>, _>>()?;
        if matchers.is_empty() {
            return Err((
                values.line,
                "an empty list of values matches nothing".into(),
            ));
        }
        // Several `contains` values: one pass of an Aho-Corasick automaton instead of one scan
        // per value (SigmaHQ's enumeration rule has 23 of them).
        let plain_contains = modifiers == ["contains"]
            && items.len() > 1
            && items.iter().all(|i| {
                i.scalar_text()
                    .is_some_and(|t| !t.contains(['*', '?', '\\']))
            });
        let contains_any = if plain_contains {
            let needles: Vec<String> = items.iter().filter_map(|i| i.scalar_text()).collect();
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&needles)
                .ok()
        } else {
            None
        };
        out.push(FieldMatch {
            field,
            access,
            matchers,
            all,
            contains_any,
        });
    }
    // Cheap checks first: plain columns before JSON look-ups and inventory facts.
    out.sort_by_key(|m| match m.access {
        Access::Str(_) | Access::Int(_) | Access::Decision(_) => 0,
        Access::List(_) => 1,
        Access::Pod(_) | Access::NamespaceGpuPods | Access::ServiceAccountRoles => 2,
        Access::Json { .. } => 3,
    });
    Ok(out)
}

fn matcher(v: &Node, modifiers: &[&str]) -> Result<Matcher, PErr> {
    let bad = |m: String| (v.line, m);
    let cased = modifiers.contains(&"cased");
    for m in modifiers {
        if !matches!(
            *m,
            "contains"
                | "startswith"
                | "endswith"
                | "re"
                | "i"
                | "m"
                | "s"
                | "cidr"
                | "all"
                | "exists"
                | "cased"
                | "gt"
                | "gte"
                | "lt"
                | "lte"
        ) {
            return Err(bad(format!("unsupported modifier `{m}`")));
        }
    }
    if modifiers.contains(&"exists") {
        return match v.value {
            Value::Bool(b) => Ok(Matcher::Exists(b)),
            _ => Err(bad("`|exists` takes true or false".into())),
        };
    }
    if let Some(op) = modifiers.iter().find_map(|m| match *m {
        "gt" => Some(CmpOp::Gt),
        "gte" => Some(CmpOp::Gte),
        "lt" => Some(CmpOp::Lt),
        "lte" => Some(CmpOp::Lte),
        _ => None,
    }) {
        let n = match v.value {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            _ => return Err(bad("numeric comparisons take a number".into())),
        };
        return Ok(Matcher::Cmp(op, n));
    }
    let text = match &v.value {
        Value::Null => return Ok(Matcher::Null),
        Value::Bool(b) if modifiers.is_empty() || modifiers == ["all"] => {
            return Ok(Matcher::Bool(*b));
        }
        Value::Int(i) if modifiers.is_empty() || modifiers == ["all"] => {
            return Ok(Matcher::Num(*i as f64));
        }
        Value::Float(f) if modifiers.is_empty() || modifiers == ["all"] => {
            return Ok(Matcher::Num(*f));
        }
        Value::Seq(_) | Value::Map(_) => return Err(bad("values must be scalars".into())),
        _ => v.scalar_text().unwrap_or_default(),
    };
    if modifiers.contains(&"re") {
        let flags: String = ["i", "m", "s"]
            .iter()
            .filter(|f| modifiers.contains(f))
            .copied()
            .collect();
        let pattern = if flags.is_empty() {
            text
        } else {
            format!("(?{flags}){text}")
        };
        return Regex::new(&pattern)
            .map(Matcher::Regex)
            .map_err(|e| bad(format!("invalid regular expression: {e}")));
    }
    if modifiers.contains(&"cidr") {
        return text
            .parse()
            .map(Matcher::Cidr)
            .map_err(|_| bad("invalid CIDR network".into()));
    }
    let pattern = if modifiers.contains(&"contains") {
        format!("*{text}*")
    } else if modifiers.contains(&"startswith") {
        format!("{text}*")
    } else if modifiers.contains(&"endswith") {
        format!("*{text}")
    } else {
        text
    };
    Ok(Matcher::Text(Wildcard::parse(&pattern, !cased)))
}

fn correlation(c: &Node, ext: Option<&Node>) -> Result<Correlation, PErr> {
    let get = |k: &str| c.get(k);
    let kind_node = get("type").ok_or((c.line, "missing `correlation.type`".to_string()))?;
    let mut kind = match kind_node.as_str() {
        Some("event_count") => CorrelationKind::EventCount,
        Some("value_count") => CorrelationKind::ValueCount,
        Some("temporal") => CorrelationKind::Temporal,
        Some("temporal_ordered") => CorrelationKind::TemporalOrdered,
        _ => {
            return Err((
                kind_node.line,
                "`type` is event_count, value_count, temporal or temporal_ordered".into(),
            ));
        }
    };
    let rules = get("rules")
        .and_then(Node::string_list)
        .ok_or((c.line, "missing `correlation.rules`".to_string()))?;
    let group_by = get("group-by")
        .and_then(Node::string_list)
        .unwrap_or_default();
    let ts_node = get("timespan").ok_or((c.line, "missing `correlation.timespan`".to_string()))?;
    let timespan_ns = ts_node.as_str().and_then(duration_ns).ok_or((
        ts_node.line,
        "`timespan` like 30s, 5m, 1h or 1d".to_string(),
    ))?;
    let mut aliases = Vec::new();
    if let Some(a) = get("aliases") {
        for (alias, per_rule) in a
            .as_map()
            .ok_or((a.line, "`aliases` must be a mapping".to_string()))?
        {
            let pairs = per_rule
                .as_map()
                .ok_or((
                    per_rule.line,
                    "each alias maps rule names to field names".to_string(),
                ))?
                .iter()
                .map(|(rule, field)| {
                    field
                        .as_str()
                        .map(|f| (rule.clone(), f.to_string()))
                        .ok_or((field.line, "field names are strings".to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            aliases.push((alias.clone(), pairs));
        }
    }
    let mut threshold = None;
    let mut value_field = None;
    if let Some(cond) = get("condition") {
        for (k, v) in cond.as_map().ok_or((
            cond.line,
            "`condition` is a mapping like {gte: 10}".to_string(),
        ))? {
            match k.as_str() {
                "field" => value_field = v.as_str().map(str::to_string),
                op => {
                    let op = match op {
                        "gt" => CmpOp::Gt,
                        "gte" => CmpOp::Gte,
                        "lt" => CmpOp::Lt,
                        "lte" => CmpOp::Lte,
                        "eq" => CmpOp::Gte,
                        _ => return Err((v.line, format!("unknown condition operator `{op}`"))),
                    };
                    let n = match v.value {
                        Value::Int(i) if i >= 0 => i as u64,
                        _ => return Err((v.line, "thresholds are non-negative integers".into())),
                    };
                    threshold = Some((op, n));
                }
            }
        }
    }
    if matches!(
        kind,
        CorrelationKind::EventCount | CorrelationKind::ValueCount
    ) && threshold.is_none()
    {
        return Err((
            c.line,
            "count correlations need a `condition` like {gte: 10}".into(),
        ));
    }
    if kind == CorrelationKind::ValueCount && value_field.is_none() {
        return Err((c.line, "value_count needs `condition.field`".into()));
    }
    let (mut min_rules, mut full_chain_level) = (None, None);
    if let Some(e) = ext {
        for (k, v) in e
            .as_map()
            .ok_or((e.line, "`gpusiem` must be a mapping".to_string()))?
        {
            match k.as_str() {
                "absence" => {
                    if v.value == Value::Bool(true) {
                        kind = CorrelationKind::Absence;
                    }
                }
                "min_rules" => match v.value {
                    Value::Int(n) if n >= 1 => min_rules = Some(n as usize),
                    _ => return Err((v.line, "`min_rules` is a positive integer".into())),
                },
                "full_chain_level" => full_chain_level = Some(level(v)?),
                _ => return Err((v.line, format!("unknown gpusiem extension `{k}`"))),
            }
        }
    }
    if kind == CorrelationKind::Absence && rules.len() != 2 {
        return Err((
            c.line,
            "an absence rule names exactly two rules: the first, and the one that must follow"
                .into(),
        ));
    }
    if matches!(
        kind,
        CorrelationKind::Temporal | CorrelationKind::TemporalOrdered
    ) && rules.len() < 2
    {
        return Err((
            c.line,
            "temporal correlations need at least two rules".into(),
        ));
    }
    Ok(Correlation {
        kind,
        rules,
        group_by,
        aliases,
        timespan_ns,
        threshold,
        value_field,
        min_rules,
        full_chain_level,
    })
}

/// `30s`, `5m`, `1h`, `1d` → ns.
pub fn duration_ns(s: &str) -> Option<i64> {
    let (n, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    secs.checked_mul(1_000_000_000).filter(|&v| v > 0)
}

impl Detection {
    /// Whether row `row` matches.
    pub fn matches(&self, rows: &mut Rows<'_>, row: usize) -> bool {
        let mut cache: [Option<bool>; 16] = [None; 16];
        let selections = &self.selections;
        let source = self.source;
        self.condition.eval(&mut |i| {
            if let Some(Some(hit)) = cache.get(i) {
                return *hit;
            }
            let hit = selections[i].1.matches(source, rows, row);
            if let Some(slot) = cache.get_mut(i) {
                *slot = Some(hit);
            }
            hit
        })
    }
}

impl Selection {
    fn matches(&self, source: LogSource, rows: &mut Rows<'_>, row: usize) -> bool {
        match self {
            Selection::AnyOf(groups) => groups
                .iter()
                .any(|g| g.iter().all(|m| m.matches(rows, row))),
            Selection::Keywords(words) => {
                let texts: &[&str] = match source {
                    LogSource::Falco => &[gpusiem_ingest::schema::falco_events::OUTPUT],
                    LogSource::K8sAudit => &[
                        gpusiem_ingest::schema::k8s_audit::REQUEST_URI,
                        gpusiem_ingest::schema::k8s_audit::USER_AGENT,
                    ],
                    LogSource::Findings => &[crate::finding::columns::SUMMARY],
                };
                texts
                    .iter()
                    .filter_map(|c| rows.str(c, row))
                    .any(|t| words.iter().any(|w| w.matches(t)))
            }
        }
    }
}

impl FieldMatch {
    fn matches(&self, rows: &mut Rows<'_>, row: usize) -> bool {
        // Plain string columns (most fields): read the value once and test every value of the
        // rule against it.
        if let Access::Str(c) | Access::Decision(c) = &self.access {
            let v = rows.str_at(c.index, row);
            if let Some(ac) = &self.contains_any {
                return v.is_some_and(|s| ac.is_match(s));
            }
            let test = |m: &Matcher| match (m, v) {
                (Matcher::Null, v) => v.is_none(),
                (Matcher::Exists(want), v) => v.is_some() == *want,
                (m, Some(s)) => value_matches(m, &Val::Str(std::borrow::Cow::Borrowed(s))),
                (_, None) => false,
            };
            return if self.all {
                self.matchers.iter().all(test)
            } else {
                self.matchers.iter().any(test)
            };
        }
        if let [Matcher::Exists(want)] = self.matchers.as_slice() {
            return rows.any(&self.access, row, &mut |_| true) == *want;
        }
        if self.all {
            return self
                .matchers
                .iter()
                .all(|m| one(m, &self.access, rows, row));
        }
        self.matchers
            .iter()
            .any(|m| one(m, &self.access, rows, row))
    }
}

fn one(m: &Matcher, access: &Access, rows: &mut Rows<'_>, row: usize) -> bool {
    if let Matcher::Null = m {
        return !rows.any(access, row, &mut |_| true);
    }
    rows.any(access, row, &mut |v| value_matches(m, v))
}

fn value_matches(m: &Matcher, v: &Val<'_>) -> bool {
    match (m, v) {
        (Matcher::Text(w), Val::Str(s)) => w.matches(s),
        (Matcher::Text(w), Val::Int(i)) => w.matches(&i.to_string()),
        (Matcher::Text(w), Val::Float(f)) => w.matches(&f.to_string()),
        (Matcher::Text(w), Val::Bool(b)) => w.matches(if *b { "true" } else { "false" }),
        (Matcher::Regex(r), Val::Str(s)) => r.is_match(s),
        (Matcher::Regex(r), Val::Int(i)) => r.is_match(&i.to_string()),
        (Matcher::Cidr(net), Val::Str(s)) => s.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
        (Matcher::Num(n), v) => number(v).is_some_and(|x| x == *n),
        (Matcher::Cmp(op, n), v) => number(v).is_some_and(|x| match op {
            CmpOp::Gt => x > *n,
            CmpOp::Gte => x >= *n,
            CmpOp::Lt => x < *n,
            CmpOp::Lte => x <= *n,
        }),
        (Matcher::Bool(b), Val::Bool(x)) => b == x,
        (Matcher::Bool(b), Val::Str(s)) => {
            s.eq_ignore_ascii_case(if *b { "true" } else { "false" })
        }
        _ => false,
    }
}

fn number(v: &Val<'_>) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        Val::Str(s) => s.trim().parse().ok(),
        Val::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_sigma_rule() {
        let rules = parse_file(
            "exec.yml",
            "title: Exec\nid: abc\nstatus: test\nlogsource:\n  product: kubernetes\n  service: audit\ndetection:\n  selection:\n    verb: [create, get]\n    objectRef.subresource|startswith: ex\n  filter:\n    user.username|re: '^system:'\n  condition: selection and not filter\nlevel: high\ntags:\n  - attack.t1609\n  - attack.execution\n",
        )
        .expect("parse");
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(
            (r.name.as_str(), r.level, r.mitre.clone()),
            ("exec", Severity::High, vec!["T1609".to_string()])
        );
        let RuleKind::Detection(d) = &r.kind else {
            panic!("detection")
        };
        assert_eq!(d.selections.len(), 2);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse_file("bad.yml", "title: x\nlogsource:\n  product: kubernetes\n  service: audit\ndetection:\n  selection:\n    verb|frobnicate: x\n  condition: selection\n")
            .expect_err("bad modifier");
        assert_eq!(e[0].line, 7);
        assert!(
            e[0].to_string()
                .starts_with("bad.yml:7: unsupported modifier"),
            "{}",
            e[0]
        );
        let e = parse_file("bad.yml", "title: x\nlogsource:\n  product: kubernetes\n  service: audit\ndetection:\n  selection:\n    verb: x\n  condition: selection and other\n")
            .expect_err("bad condition");
        assert_eq!(e[0].line, 8);
    }

    #[test]
    fn correlation_and_extensions() {
        let rules = parse_file(
            "c.yml",
            "title: chain\nname: chain\ncorrelation:\n  type: temporal_ordered\n  rules: [a, b, c]\n  group-by: [pod]\n  timespan: 10m\ngpusiem:\n  min_rules: 2\n  full_chain_level: critical\nlevel: high\n",
        )
        .expect("parse");
        let RuleKind::Correlation(c) = &rules[0].kind else {
            panic!("correlation")
        };
        assert_eq!(
            (c.kind, c.timespan_ns, c.min_rules),
            (CorrelationKind::TemporalOrdered, 600_000_000_000, Some(2))
        );
        assert_eq!(c.full_chain_level, Some(Severity::Critical));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1d"), Some(86_400_000_000_000));
        assert_eq!(duration_ns("5x"), None);
        assert_eq!(duration_ns("m"), None);
    }
}
