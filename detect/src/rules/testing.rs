//! Rule tests: each rule's own fixture events in, expected matches and findings out.
//!
//! A test file (`<rule>.test.yml`) holds:
//!
//! ```yaml
//! pods:                       # optional: Pod objects put in the inventory first
//!   - {metadata: {name: infer-0, namespace: ml, uid: u1}, spec: {containers: [...]}}
//! events:                     # in order; each is its own batch
//!   - k8s_audit: {kind: Event, auditID: a1, ...}     # a raw audit event
//!   - falco_events: {rule: ..., time: ..., output_fields: {...}}
//!   - gpu_metrics: 'DCGM_FI_DEV_FB_USED{UUID="GPU-1",pod="p",namespace="ml"} 25971 1764163115486'
//!   - finding: {id: ..., detector: gpu_memory_spike, ...}   # a finding, as JSON
//! expect:
//!   - rule: exec_into_gpu_pod
//!     matches: 1              # optional: matches of the rule
//!     findings: 1             # optional: distinct findings it raised
//!     severity: high          # optional: severity of its last finding
//!     event_ids: [k8s_audit:a1/ResponseStarted]   # optional: must all be in its last finding
//! ```
//!
//! Events go through the whole engine (inventory, detectors, rules), so a test can also start
//! from metrics and expect a detector finding to feed a correlation.

use gpusiem_ingest::Stream;
use gpusiem_ingest::decode::{self, DecodeContext};

use super::sigma::RuleError;
use super::yaml::{self, Node, Value};
use super::{RuleEngine, RuleSet, RulesConfig};
use crate::engine::{Engine, EngineConfig};
use crate::finding::{Finding, Severity};

/// A parsed rule test.
#[derive(Debug, Clone)]
pub struct RuleTest {
    /// File it came from.
    pub file: String,
    pods: Vec<serde_json::Value>,
    events: Vec<(usize, TestEvent)>,
    expect: Vec<Expect>,
}

#[derive(Debug, Clone)]
enum TestEvent {
    Raw(Stream, Vec<u8>),
    Finding(Box<Finding>),
}

#[derive(Debug, Clone)]
struct Expect {
    line: usize,
    rule: String,
    matches: Option<u64>,
    findings: Option<usize>,
    severity: Option<Severity>,
    event_ids: Vec<String>,
}

/// Parses a test file.
pub fn parse(file: &str, text: &str) -> Result<RuleTest, RuleError> {
    let err = |line, message: String| RuleError {
        file: file.to_string(),
        line,
        message,
    };
    let docs = yaml::load(text).map_err(|(l, m)| err(l, m))?;
    let doc = docs
        .first()
        .ok_or_else(|| err(1, "empty test file".into()))?;
    let mut t = RuleTest {
        file: file.to_string(),
        pods: Vec::new(),
        events: Vec::new(),
        expect: Vec::new(),
    };
    if let Some(pods) = doc.get("pods") {
        let Value::Seq(items) = &pods.value else {
            return Err(err(pods.line, "`pods` is a list of Pod objects".into()));
        };
        t.pods = items.iter().map(yaml::to_json).collect();
    }
    let events = doc
        .get("events")
        .ok_or_else(|| err(doc.line, "missing `events`".into()))?;
    let Value::Seq(items) = &events.value else {
        return Err(err(events.line, "`events` is a list".into()));
    };
    for item in items {
        let [(kind, body)] = item.as_map().unwrap_or_default() else {
            return Err(err(item.line, "each event is `<stream>: <record>`".into()));
        };
        let event = match kind.as_str() {
            "finding" => {
                let f: Finding = serde_json::from_value(yaml::to_json(body))
                    .map_err(|e| err(body.line, format!("not a finding: {e}")))?;
                TestEvent::Finding(Box::new(f))
            }
            name => {
                let stream = Stream::from_name(name)
                    .ok_or_else(|| err(item.line, format!("unknown stream `{name}`")))?;
                let bytes = match &body.value {
                    Value::Str(s) => s.clone().into_bytes(),
                    _ => yaml::to_json(body).to_string().into_bytes(),
                };
                TestEvent::Raw(stream, bytes)
            }
        };
        t.events.push((item.line, event));
    }
    let expect = doc
        .get("expect")
        .ok_or_else(|| err(doc.line, "missing `expect`".into()))?;
    let Value::Seq(items) = &expect.value else {
        return Err(err(expect.line, "`expect` is a list".into()));
    };
    for item in items {
        let rule = item
            .get("rule")
            .and_then(Node::as_str)
            .ok_or_else(|| err(item.line, "each expectation names a `rule`".into()))?;
        let int = |k: &str| {
            item.get(k).and_then(|n| {
                if let Value::Int(i) = n.value {
                    Some(i)
                } else {
                    None
                }
            })
        };
        t.expect.push(Expect {
            line: item.line,
            rule: rule.to_string(),
            matches: int("matches").map(|i| i as u64),
            findings: int("findings").map(|i| i as usize),
            severity: item
                .get("severity")
                .and_then(Node::as_str)
                .and_then(Severity::parse),
            event_ids: item
                .get("event_ids")
                .and_then(Node::string_list)
                .unwrap_or_default(),
        });
    }
    Ok(t)
}

/// What a test run produced.
#[derive(Debug, Default)]
pub struct TestRun {
    /// Every finding emission, in order.
    pub findings: Vec<Finding>,
    /// Failed expectations (empty = passed).
    pub failures: Vec<RuleError>,
}

/// Runs `test` through a fresh engine with `set`.
pub fn run(test: &RuleTest, set: &RuleSet, config: &RulesConfig) -> TestRun {
    let mut engine = match Engine::new(EngineConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            return TestRun {
                findings: Vec::new(),
                failures: vec![RuleError {
                    file: test.file.clone(),
                    line: 1,
                    message: e.to_string(),
                }],
            };
        }
    };
    engine.set_rules(RuleEngine::new(set.clone(), config));
    for pod in &test.pods {
        engine.inventory_mut().apply_pod_json(pod, 0);
    }
    let mut run = TestRun::default();
    for (line, event) in &test.events {
        match event {
            TestEvent::Raw(stream, bytes) => {
                match decode::decode(*stream, bytes, &DecodeContext::new(0)) {
                    Ok(d) if d.quarantined.is_empty() => {
                        engine.observe(*stream, &d.batch, &mut run.findings)
                    }
                    Ok(d) => run.failures.push(RuleError {
                        file: test.file.clone(),
                        line: *line,
                        message: format!(
                            "event does not decode: {} ({})",
                            d.quarantined[0].reason, d.quarantined[0].detail
                        ),
                    }),
                    Err(e) => run.failures.push(RuleError {
                        file: test.file.clone(),
                        line: *line,
                        message: e.to_string(),
                    }),
                }
            }
            TestEvent::Finding(f) => {
                engine.inject_findings(std::slice::from_ref(f), &mut run.findings)
            }
        }
    }
    let matches: std::collections::HashMap<String, u64> = engine
        .rules()
        .map(|r| r.matches().map(|(k, n)| (k.to_string(), n)).collect())
        .unwrap_or_default();
    for e in &test.expect {
        let mut fail = |message: String| {
            run.failures.push(RuleError {
                file: test.file.clone(),
                line: e.line,
                message,
            })
        };
        let got = matches.get(&e.rule).copied().unwrap_or(0);
        if let Some(want) = e.matches
            && got != want
        {
            fail(format!("rule `{}`: {got} matches, expected {want}", e.rule));
        }
        let mine: Vec<&Finding> = run
            .findings
            .iter()
            .filter(|f| f.detector == e.rule)
            .collect();
        let mut ids: Vec<&str> = mine.iter().map(|f| f.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if let Some(want) = e.findings
            && ids.len() != want
        {
            fail(format!(
                "rule `{}`: {} findings, expected {want}",
                e.rule,
                ids.len()
            ));
        }
        if let Some(want) = e.severity {
            match mine.last() {
                Some(f) if f.severity == want => {}
                Some(f) => fail(format!(
                    "rule `{}`: severity {}, expected {want}",
                    e.rule, f.severity
                )),
                None => fail(format!(
                    "rule `{}`: no finding, expected severity {want}",
                    e.rule
                )),
            }
        }
        for id in &e.event_ids {
            if !mine
                .last()
                .is_some_and(|f| f.event_ids.iter().any(|x| x == id))
            {
                fail(format!(
                    "rule `{}`: event `{id}` not among the finding's contributing events",
                    e.rule
                ));
            }
        }
    }
    run
}
