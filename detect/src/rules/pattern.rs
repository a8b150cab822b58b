//! Sigma value patterns: `*` (any run) and `?` (any one character) wildcards with `\` escapes,
//! matched case-insensitively unless the rule says `|cased`.

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Wildcard {
    parts: Vec<Part>,
    case_insensitive: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Star,
    One,
}

impl Wildcard {
    /// Compiles `pattern`; `\*`, `\?` and `\\` are literal.
    pub fn parse(pattern: &str, case_insensitive: bool) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('*' | '?' | '\\')) => {
                    lit.push(chars.next().unwrap_or('\\'));
                }
                '*' | '?' => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(fold(&std::mem::take(&mut lit), case_insensitive)));
                    }
                    let p = if c == '*' { Part::Star } else { Part::One };
                    if !(p == Part::Star && parts.last() == Some(&Part::Star)) {
                        parts.push(p);
                    }
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(fold(&lit, case_insensitive)));
        }
        Wildcard {
            parts,
            case_insensitive,
        }
    }

    /// A pattern that matches exactly `text`.
    pub fn literal(text: &str, case_insensitive: bool) -> Self {
        Wildcard {
            parts: vec![Part::Lit(fold(text, case_insensitive))],
            case_insensitive,
        }
    }

    /// The folded literal, when the pattern is a case-insensitive literal without wildcards
    /// (what a rule index can look up by value).
    pub fn literal_folded(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit(l)] if self.case_insensitive => Some(l),
            _ => None,
        }
    }

    /// Whether the pattern has any wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Lit(_)))
    }

    /// Matches the whole of `text`.
    pub fn matches(&self, text: &str) -> bool {
        if let [Part::Lit(l)] = self.parts.as_slice() {
            return match (self.case_insensitive, text.is_ascii()) {
                (false, _) => text == l,
                (true, true) => text.eq_ignore_ascii_case(l),
                (true, false) => fold(text, true) == *l,
            };
        }
        // The shapes of contains/startswith/endswith, without backtracking.
        match self.parts.as_slice() {
            [Part::Star, Part::Lit(l), Part::Star] => {
                return find(text, l, self.case_insensitive && text.is_ascii()).is_some()
                    || (!text.is_ascii() && self.slow(text));
            }
            [Part::Lit(l), Part::Star] if text.is_ascii() || !self.case_insensitive => {
                return starts_with(text, l, self.case_insensitive);
            }
            [Part::Star, Part::Lit(l)] if text.is_ascii() || !self.case_insensitive => {
                return text.len() >= l.len() && text.is_char_boundary(text.len() - l.len()) && {
                    let tail = &text[text.len() - l.len()..];
                    if self.case_insensitive {
                        tail.eq_ignore_ascii_case(l)
                    } else {
                        tail == l
                    }
                };
            }
            _ => {}
        }
        self.slow(text)
    }

    fn slow(&self, text: &str) -> bool {
        let folded;
        let text = if self.case_insensitive && !text.is_ascii() {
            folded = fold(text, true);
            folded.as_str()
        } else {
            text
        };
        match_parts(&self.parts, text, self.case_insensitive)
    }
}

fn fold(s: &str, ci: bool) -> String {
    if ci { s.to_lowercase() } else { s.to_string() }
}

fn starts_with(text: &str, lit: &str, ci: bool) -> bool {
    text.len() >= lit.len()
        && text.is_char_boundary(lit.len())
        && (if ci {
            text[..lit.len()].eq_ignore_ascii_case(lit)
        } else {
            text.starts_with(lit)
        })
}

fn find(text: &str, lit: &str, ci: bool) -> Option<usize> {
    if !ci {
        return text.find(lit);
    }
    if !lit.bytes().any(|b| b.is_ascii_alphabetic()) {
        return memchr::memmem::find(text.as_bytes(), lit.as_bytes());
    }
    let (t, l) = (text.as_bytes(), lit.as_bytes());
    if l.is_empty() {
        return Some(0);
    }
    (0..=t.len().checked_sub(l.len())?)
        .find(|&i| text.is_char_boundary(i) && t[i..i + l.len()].eq_ignore_ascii_case(l))
}

/// Backtracking only at stars; iterative over the parts.
fn match_parts(parts: &[Part], text: &str, ci: bool) -> bool {
    match parts.split_first() {
        None => text.is_empty(),
        Some((Part::Lit(l), rest)) => {
            starts_with(text, l, ci) && match_parts(rest, &text[l.len()..], ci)
        }
        Some((Part::One, rest)) => {
            let mut chars = text.chars();
            chars.next().is_some() && match_parts(rest, chars.as_str(), ci)
        }
        Some((Part::Star, rest)) => {
            // A trailing star matches anything; a star before a literal jumps to each
            // occurrence of that literal.
            match rest.first() {
                None => true,
                Some(Part::Lit(l)) => {
                    let mut from = 0;
                    while let Some(i) = find(&text[from..], l, ci) {
                        if match_parts(rest, &text[from + i..], ci) {
                            return true;
                        }
                        from += i + text[from + i..].chars().next().map_or(1, char::len_utf8);
                        if from > text.len() {
                            break;
                        }
                    }
                    false
                }
                Some(_) => text
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([text.len()])
                    .any(|i| match_parts(rest, &text[i..], ci)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Wildcard::parse(p, true).matches(t)
    }

    #[test]
    fn wildcards_and_case() {
        assert!(m("create", "CREATE"));
        assert!(m("*", ""));
        assert!(m("*bash*", "/bin/bash -c x"));
        assert!(m("/bin/?ash", "/bin/dash"));
        assert!(!m("/bin/?ash", "/bin/ash"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("stratum+tcp://*", "stratum+tcp://pool:3333"));
        assert!(!Wildcard::parse("Create", false).matches("create"));
    }

    #[test]
    fn escapes_are_literal() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"c:\\temp", r"c:\temp"));
    }

    #[test]
    fn non_ascii_text() {
        assert!(m("*ü*", "grÜn"));
        assert!(m("GRÜN", "grün"));
    }
}
