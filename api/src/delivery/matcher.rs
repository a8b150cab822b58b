//! Matchers on finding fields, in Alertmanager's syntax: `name="value"`, `name!="value"`,
//! `name=~"regex"`, `name!~"regex"` (regexes are anchored, as in Alertmanager). Used by routes,
//! inhibition rules and silences.
//!
//! Fields: `id`, `detector`, `severity`, `status`, `cluster`, `namespace`, `pod`, `pod_uid`,
//! `container`, `node`, `gpu_uuid`, `role`, `mitre`. A missing field is the empty string.
//! `mitre` is a list: `=`/`=~` match when any technique matches, `!=`/`!~` when none does.

use std::fmt;

use gpusiem_detect::Finding;
use regex::Regex;

/// Field names a matcher or `group_by` may use.
pub const FIELDS: &[&str] = &[
    "id",
    "detector",
    "severity",
    "status",
    "cluster",
    "namespace",
    "pod",
    "pod_uid",
    "container",
    "node",
    "gpu_uuid",
    "role",
    "mitre",
];

/// The value of a field of a finding (`mitre` joined with `,`).
pub fn field(f: &Finding, name: &str) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    match name {
        "id" => f.id.clone(),
        "detector" => f.detector.clone(),
        "severity" => f.severity.as_str().to_string(),
        "status" => f.status.as_str().to_string(),
        "cluster" => opt(&f.cluster),
        "namespace" => opt(&f.namespace),
        "pod" => opt(&f.pod),
        "pod_uid" => opt(&f.pod_uid),
        "container" => opt(&f.container),
        "node" => opt(&f.node),
        "gpu_uuid" => opt(&f.gpu_uuid),
        "role" => f.role.as_str().to_string(),
        "mitre" => f.mitre.join(","),
        _ => String::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Re,
    Nre,
}

/// One parsed matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: Op,
    value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Re => "=~",
            Op::Nre => "!~",
        };
        write!(f, "{}{}{:?}", self.name, op, self.value)
    }
}

impl Matcher {
    /// Parses `name<op>"value"` (the quotes may be left out).
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let s = s.trim();
        let at = s.find(['=', '!']).ok_or_else(|| {
            format!("{s:?}: expected name=\"value\", name!=\"value\", name=~\"re\" or name!~\"re\"")
        })?;
        let name = s[..at].trim();
        let rest = &s[at..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (Op::Re, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (Op::Nre, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (Op::Ne, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Eq, v)
        } else {
            return Err(format!("{s:?}: unknown operator"));
        };
        if !FIELDS.contains(&name) {
            return Err(format!(
                "{s:?}: unknown field {name:?}; one of {}",
                FIELDS.join(", ")
            ));
        }
        let value = value.trim();
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) => v.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => value.to_string(),
        };
        let re = match op {
            Op::Re | Op::Nre => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("{s:?}: bad regex: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
            re,
        })
    }

    /// Parses a list, returning every error.
    pub fn parse_all(list: &[String]) -> Result<Vec<Matcher>, Vec<String>> {
        let (ok, err): (Vec<_>, Vec<_>) = list
            .iter()
            .map(|s| Matcher::parse(s))
            .partition(Result::is_ok);
        if err.is_empty() {
            Ok(ok.into_iter().filter_map(Result::ok).collect())
        } else {
            Err(err.into_iter().filter_map(Result::err).collect())
        }
    }

    /// The field name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn test(&self, v: &str) -> bool {
        match (&self.op, &self.re) {
            (Op::Eq | Op::Ne, _) => v == self.value,
            (_, Some(re)) => re.is_match(v),
            (_, None) => false,
        }
    }

    /// Whether the finding matches.
    pub fn matches(&self, f: &Finding) -> bool {
        let positive = matches!(self.op, Op::Eq | Op::Re);
        let any = if self.name == "mitre" {
            if f.mitre.is_empty() {
                self.test("")
            } else {
                f.mitre.iter().any(|m| self.test(m))
            }
        } else {
            self.test(&field(f, &self.name))
        };
        if positive { any } else { !any }
    }
}

/// Whether every matcher matches.
pub fn all(matchers: &[Matcher], f: &Finding) -> bool {
    matchers.iter().all(|m| m.matches(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpusiem_detect::{Severity, Status};

    fn f() -> Finding {
        Finding {
            id: "x".into(),
            ts: 0,
            last_ts: 0,
            detector: "gpu_memory_spike".into(),
            severity: Severity::High,
            status: Status::Firing,
            revision: 0,
            summary: String::new(),
            cluster: None,
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            pod_uid: None,
            container: None,
            node: None,
            gpu_uuid: None,
            role: gpusiem_detect::role::Role::NonGpu,
            role_reason: String::new(),
            mitre: vec!["T1496".into(), "T1610".into()],
            evidence: serde_json::Value::Null,
            event_ids: vec![],
        }
    }

    #[test]
    fn operators() {
        let m = |s: &str| Matcher::parse(s).expect(s).matches(&f());
        assert!(m(r#"namespace="shop""#));
        assert!(m("namespace=shop"));
        assert!(!m(r#"namespace!="shop""#));
        assert!(m(r#"severity=~"high|critical""#));
        assert!(!m(r#"severity=~"hi""#), "anchored");
        assert!(m(r#"pod!~"kube-.*""#));
        assert!(m(r#"cluster="""#), "missing is empty");
        assert!(m(r#"mitre="T1610""#));
        assert!(!m(r#"mitre!="T1610""#));
        assert!(m(r#"mitre=~"T14.*""#));
        assert!(m(r#"role="non_gpu""#));
    }

    #[test]
    fn bad_matchers_say_why() {
        assert!(Matcher::parse("nope").is_err());
        assert!(
            Matcher::parse(r#"podname="x""#)
                .expect_err("field")
                .contains("unknown field")
        );
        assert!(
            Matcher::parse(r#"pod=~"(""#)
                .expect_err("re")
                .contains("bad regex")
        );
        assert_eq!(
            Matcher::parse_all(&["pod=a".into(), "x=1".into(), "y~2".into()])
                .expect_err("two")
                .len(),
            2
        );
        assert_eq!(
            Matcher::parse(r#"pod=~"a.*""#).expect("ok").to_string(),
            r#"pod=~"a.*""#
        );
    }
}
