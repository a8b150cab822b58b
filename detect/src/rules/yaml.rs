//! A small owned YAML tree that remembers the line of every node, so rule errors can name
//! `file:line`. Built from saphyr's marked loader.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// A YAML value with the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line.
    pub line: usize,
    /// The value.
    pub value: Value,
}

/// YAML values as rules use them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or empty.
    Null,
    /// `true`/`false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order (keys are strings; other keys are rendered as text).
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The string, if this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The mapping entries, if this is a mapping.
    pub fn as_map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value of `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// A scalar rendered as text (strings as themselves, numbers and booleans in YAML form).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// A string or a list of strings, as a list.
    pub fn string_list(&self) -> Option<Vec<String>> {
        match &self.value {
            Value::Seq(items) => items.iter().map(Node::scalar_text).collect(),
            _ => self.scalar_text().map(|s| vec![s]),
        }
    }
}

/// The node as JSON (mappings become objects, in document order).
pub fn to_json(n: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &n.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// Parses every document of `text`. Errors carry the 1-based line.
pub fn load(text: &str) -> Result<Vec<Node>, (usize, String)> {
    let docs = MarkedYaml::load_from_str(text)
        .map_err(|e| (e.marker().line().max(1), e.info().to_string()))?;
    docs.iter().map(convert).collect()
}

fn convert(y: &MarkedYaml<'_>) -> Result<Node, (usize, String)> {
    let line = y.span.start.line().max(1);
    let value = match &y.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(text, _, _) => Value::Str(text.to_string()),
        YamlData::Sequence(items) => {
            Value::Seq(items.iter().map(convert).collect::<Result<_, _>>()?)
        }
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                let key = match &k.data {
                    YamlData::Value(s) => scalar_key(s),
                    YamlData::Representation(text, _, _) => text.to_string(),
                    _ => {
                        return Err((
                            k.span.start.line().max(1),
                            "mapping keys must be scalars".to_string(),
                        ));
                    }
                };
                entries.push((key, convert(v)?));
            }
            Value::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner),
        YamlData::Alias(_) => {
            return Err((line, "YAML aliases are not supported in rules".to_string()));
        }
        YamlData::BadValue => return Err((line, "invalid scalar".to_string())),
    };
    Ok(Node { line, value })
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}

fn scalar_key(s: &Scalar<'_>) -> String {
    match s {
        Scalar::Null => String::new(),
        Scalar::Boolean(b) => b.to_string(),
        Scalar::Integer(i) => i.to_string(),
        Scalar::FloatingPoint(f) => f.into_inner().to_string(),
        Scalar::String(s) => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_remembered() {
        let docs = load("title: x\ndetection:\n  selection:\n    verb: create\n  condition: selection\n---\ntitle: y\n").expect("yaml");
        assert_eq!(docs.len(), 2);
        let sel = docs[0]
            .get("detection")
            .and_then(|d| d.get("selection"))
            .expect("selection");
        assert_eq!(sel.get("verb").map(|v| v.line), Some(4));
        assert_eq!(docs[1].get("title").map(|t| t.line), Some(7));
    }

    #[test]
    fn syntax_errors_name_a_line() {
        let (line, _) = load("a: 1\nb: [1, 2\nc: 3\n").expect_err("unclosed");
        assert!(line >= 2, "{line}");
    }
}
