//! Sigma condition expressions: `selection and not filter`, `1 of selection_*`,
//! `all of them`, parentheses, `and`/`or`/`not` (case-insensitive), compiled to a tree over
//! selection indices.

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Selection number `n` matches.
    Sel(usize),
    /// Every operand matches.
    And(Vec<Cond>),
    /// Any operand matches.
    Or(Vec<Cond>),
    /// The operand does not match.
    Not(Box<Cond>),
}

impl Cond {
    /// Evaluates with `sel(n)` telling whether selection `n` matches (called lazily).
    pub fn eval(&self, sel: &mut impl FnMut(usize) -> bool) -> bool {
        match self {
            Cond::Sel(n) => sel(*n),
            Cond::And(v) => v.iter().all(|c| c.eval(sel)),
            Cond::Or(v) => v.iter().any(|c| c.eval(sel)),
            Cond::Not(c) => !c.eval(sel),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    And,
    Or,
    Not,
    Of,
    All,
    One,
    Them,
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::Open);
            }
            ')' => {
                chars.next();
                out.push(Tok::Close);
            }
            c if c.is_alphanumeric() || c == '_' || c == '*' || c == '-' || c == '.' => {
                let start = i;
                let mut end = i;
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' || d == '*' || d == '-' || d == '.' {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &s[start..end];
                out.push(match word.to_ascii_lowercase().as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    "of" => Tok::Of,
                    "all" => Tok::All,
                    "1" | "any" => Tok::One,
                    "them" => Tok::Them,
                    _ => Tok::Ident(word.to_string()),
                });
            }
            '|' => {
                return Err(
                    "aggregation expressions (`| count()`) are deprecated; use a correlation rule"
                        .into(),
                );
            }
            other => return Err(format!("unexpected character `{other}` in condition")),
        }
    }
    Ok(out)
}

/// Parses `text` over the selection `names` (in their document order).
pub fn parse(text: &str, names: &[String]) -> Result<Cond, String> {
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        names,
    };
    let c = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!(
            "unexpected `{:?}` after the end of the condition",
            p.toks[p.pos]
        ));
    }
    Ok(c)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    names: &'a [String],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn or(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Cond::Or(v)
        })
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.not()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            v.push(self.not()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Cond::And(v)
        })
    }

    fn not(&mut self) -> Result<Cond, String> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Open) => {
                self.pos += 1;
                let c = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("missing `)`".into());
                }
                self.pos += 1;
                Ok(c)
            }
            Some(q @ (Tok::All | Tok::One)) => {
                self.pos += 1;
                if self.peek() != Some(&Tok::Of) {
                    return Err("expected `of` after a quantifier".into());
                }
                self.pos += 1;
                let matching: Vec<usize> = match self.toks.get(self.pos).cloned() {
                    Some(Tok::Them) => (0..self.names.len())
                        .filter(|&i| !self.names[i].starts_with('_'))
                        .collect(),
                    Some(Tok::Ident(pattern)) => (0..self.names.len())
                        .filter(|&i| glob(&pattern, &self.names[i]))
                        .collect(),
                    _ => return Err("expected `them` or a selection pattern after `of`".into()),
                };
                self.pos += 1;
                if matching.is_empty() {
                    return Err("the quantifier's pattern matches no selection".into());
                }
                let items = matching.into_iter().map(Cond::Sel).collect();
                Ok(if q == Tok::All {
                    Cond::And(items)
                } else {
                    Cond::Or(items)
                })
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                let i = self
                    .names
                    .iter()
                    .position(|n| *n == name)
                    .ok_or_else(|| format!("unknown selection `{name}`"))?;
                Ok(Cond::Sel(i))
            }
            Some(t) => Err(format!("unexpected `{t:?}`")),
            None => Err("the condition ends too early".into()),
        }
    }
}

/// `*` wildcard match of selection names (case-sensitive, as selection names are).
fn glob(pattern: &str, name: &str) -> bool {
    super::pattern::Wildcard::parse(pattern, false).matches(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn eval(c: &Cond, truth: &[bool]) -> bool {
        c.eval(&mut |i| truth[i])
    }

    #[test]
    fn precedence_and_not() {
        let n = names(&["a", "b", "c"]);
        let c = parse("a or b and not c", &n).expect("parse");
        assert!(eval(&c, &[true, false, false]));
        assert!(eval(&c, &[false, true, false]));
        assert!(!eval(&c, &[false, true, true]));
        let c = parse("(a or b) and not c", &n).expect("parse");
        assert!(!eval(&c, &[true, false, true]));
    }

    #[test]
    fn quantifiers() {
        let n = names(&[
            "selection_status",
            "selection_request_uri",
            "selection_request_user_agent",
            "filter",
        ]);
        let c = parse("selection_status and 1 of selection_request_*", &n).expect("parse");
        assert!(eval(&c, &[true, false, true, false]));
        assert!(!eval(&c, &[true, false, false, false]));
        let c = parse("all of selection_*", &n).expect("parse");
        assert!(!eval(&c, &[true, true, false, true]));
        let c = parse("1 of them", &n).expect("parse");
        assert!(eval(&c, &[false, false, false, true]));
    }

    #[test]
    fn errors() {
        let n = names(&["a"]);
        assert!(parse("a and", &n).is_err());
        assert!(parse("b", &n).is_err());
        assert!(parse("(a", &n).is_err());
        assert!(parse("1 of x*", &n).is_err());
        assert!(parse("a | count() > 5", &n).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob("sel_*", "sel_x"));
        assert!(glob("*_x", "sel_x"));
        assert!(glob("s*l*x", "sel_x"));
        assert!(!glob("sel_*", "filter"));
        assert!(glob("a", "a"));
    }
}
