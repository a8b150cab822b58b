//! A validating, allocation-free JSON scanner: the decoders' fast path.
//!
//! A decoder reads each record with a [`Scanner`] first and, when the scanner gives up (`None`),
//! again with serde_json, whose errors choose the quarantine reason and detail. So the scanner
//! may give up on anything, but must never accept text serde_json rejects, and must read what
//! it accepts exactly as serde_json does. It validates every byte it passes over (the skipped
//! parts too, as serde_json does) and gives up on: any syntax error, a control character in a
//! string, a key with escapes, a `\u` escape of a surrogate (serde_json's rules for those
//! differ between reading and skipping), and nesting deeper than [`MAX_DEPTH`] (so a record it
//! reads needs no separate nesting check).
//!
//! It is about 4× faster than serde_json on the decoders' records because it reads each byte
//! once: serde_json needs a pass per `RawValue` kept as text and another per nested structure
//! read out of it.

use std::borrow::Cow;

use super::MAX_DEPTH;

/// A cursor over one JSON text. Every method returns `None` to give up.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    /// No control characters anywhere in `text`, so none in its strings: a string ends at the
    /// first `"` or `\\`, which memchr finds fastest.
    clean: bool,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
            clean: !has_control(text.as_bytes()),
        }
    }

    /// The whole text.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// Skips whitespace and returns the offset of the next value.
    #[inline(always)]
    pub(crate) fn value_start(&mut self) -> usize {
        self.ws();
        self.pos
    }

    /// Offset just after the last value read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Checks that only whitespace is left.
    pub(crate) fn finish(mut self) -> Option<()> {
        self.ws();
        (self.pos == self.text.len()).then_some(())
    }

    #[inline]
    fn ws(&mut self) {
        self.peek();
    }

    /// The next byte after whitespace.
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        // Compact JSON has no whitespace: every byte above the space is not whitespace.
        match self.text.as_bytes().get(self.pos) {
            Some(&c) if c > b' ' => Some(c),
            _ => self.peek_after_ws(),
        }
    }

    #[inline(never)]
    fn peek_after_ws(&mut self) -> Option<u8> {
        let b = self.text.as_bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    /// Reads an object, calling `f` with the scanner and each key; `f` must read the value.
    pub(crate) fn object(
        &mut self,
        mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        self.enter()?;
        if self.peek()? == b'}' {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.key()?;
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            f(self, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads an array, calling `f` for each element; `f` must read it.
    pub(crate) fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.peek()? != b'[' {
            return None;
        }
        self.pos += 1;
        self.enter()?;
        if self.peek()? == b']' {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A key (at its opening quote): a string without escapes, as bytes (keys are only
    /// compared).
    #[inline(always)]
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.pos + 1;
        let (end, escaped) = self.string_end(start)?;
        if escaped {
            return None;
        }
        self.pos = end + 1;
        self.text.as_bytes().get(start..end)
    }

    /// A string, unescaped (borrowed when it has no escapes).
    #[inline(always)]
    pub(crate) fn string(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let (end, escaped) = self.string_end(start)?;
        self.pos = end + 1;
        let raw = &self.text[start..end];
        Some(if escaped {
            Cow::Owned(unescape(raw)?)
        } else {
            Cow::Borrowed(raw)
        })
    }

    /// `null` as `None`, a string as `Some`; gives up on anything else (serde's
    /// `Option<String>`).
    #[inline(always)]
    pub(crate) fn opt_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            _ => self.string().map(Some),
        }
    }

    /// Reads `null` when it comes next: `Some(true)`; `Some(false)` when another value comes.
    #[inline(always)]
    pub(crate) fn is_null(&mut self) -> Option<bool> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| true),
            _ => Some(false),
        }
    }

    /// Any value, validated; returns its text (without surrounding whitespace).
    #[inline(always)]
    pub(crate) fn raw(&mut self) -> Option<&'a str> {
        let start = self.value_start();
        self.skip()?;
        Some(&self.text[start..self.pos])
    }

    /// Passes over any value, validating it.
    #[inline(always)]
    pub(crate) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                let (end, _) = self.string_end(self.pos + 1)?;
                self.pos = end + 1;
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => self.skip_nested(),
        }
    }

    #[inline(never)]
    fn skip_nested(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(|s, _| s.skip()),
            b'[' => self.array(Self::skip),
            _ => None,
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.text.as_bytes()[self.pos..].starts_with(word) {
            self.pos += word.len();
            Some(())
        } else {
            None
        }
    }

    /// The closing quote of the string whose contents start at `i`, and whether it has
    /// escapes. Gives up on control characters, bad escapes and escaped surrogates.
    #[inline(always)]
    fn string_end(&self, i: usize) -> Option<(usize, bool)> {
        // Most strings are short and plain: look at the next 16 bytes without branching on
        // where in them the string ends.
        if self.clean {
            if let Some(chunk) = self.text.as_bytes().get(i..i + 16) {
                let (w0, w1) = (word(&chunk[..8]), word(&chunk[8..]));
                let (q0, s0) = (zero_bytes(w0 ^ QUOTE), zero_bytes(w0 ^ BACKSLASH));
                let (q1, s1) = (zero_bytes(w1 ^ QUOTE), zero_bytes(w1 ^ BACKSLASH));
                let (m0, m1) = (q0 | s0, q1 | s1);
                let (first, quotes, base) = if m0 != 0 { (m0, q0, 0) } else { (m1, q1, 8) };
                let first = first & first.wrapping_neg();
                if first & quotes != 0 {
                    return Some((i + base + (first.trailing_zeros() / 8) as usize, false));
                }
            }
        }
        self.string_end_slow(i)
    }

    #[inline(never)]
    fn string_end_slow(&self, mut i: usize) -> Option<(usize, bool)> {
        let b = self.text.as_bytes();
        let mut escaped = false;
        loop {
            i = if self.clean {
                find_quote_or_backslash(b, i)?
            } else {
                find_special(b, i)?
            };
            match b[i] {
                b'"' => return Some((i, escaped)),
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            let cp = hex4(b.get(i + 2..i + 6)?)?;
                            if (0xD800..0xE000).contains(&cp) {
                                return None;
                            }
                            i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// A number as JSON spells it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    #[inline]
    pub(crate) fn number(&mut self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        let start = self.value_start();
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits(b, i + 1),
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            let end = digits(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits(b, i);
            if end == i {
                return None;
            }
            i = end;
        }
        self.pos = i;
        Some(&self.text[start..i])
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const QUOTE: u64 = ONES * b'"' as u64;
const BACKSLASH: u64 = ONES * b'\\' as u64;
const SPACE: u64 = ONES * 0x20;

fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().expect("a slice of 8 bytes"))
}

/// Whether any byte is a control character (below 0x20).
fn has_control(b: &[u8]) -> bool {
    // A fixed-size block folded with `|` compiles to a few SIMD instructions per block.
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        let block: &[u8; 32] = block.try_into().expect("a chunk of 32 bytes");
        if block.iter().fold(0u8, |acc, &x| acc | u8::from(x < 0x20)) != 0 {
            return true;
        }
    }
    blocks.remainder().iter().any(|&x| x < 0x20)
}

/// Offset of the first `"` or `\\` at or after `i`: a few words at a time (strings here are
/// mostly short), then memchr.
fn find_quote_or_backslash(b: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..6 {
        let Some(chunk) = b.get(i..i + 8) else {
            break;
        };
        let w = word(chunk);
        let m = zero_bytes(w ^ QUOTE) | zero_bytes(w ^ BACKSLASH);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', b.get(i..)?).map(|p| i + p)
}

/// The high bit of every byte of `w` that is zero, and possibly of bytes above one: borrows
/// only carry upwards, so the lowest flag is exact.
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGH
}

/// Offset of the first `"`, `\` or control character at or after `i`, eight bytes at a time.
#[inline]
fn find_special(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(chunk) = b.get(i..i + 8) {
        let w = word(chunk);
        // Flagged: bytes that are zero after the XOR (`"`, `\`) or below 0x20.
        let below_space = w.wrapping_sub(SPACE) & !w & HIGH;
        let m = zero_bytes(w ^ QUOTE) | zero_bytes(w ^ BACKSLASH) | below_space;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i.min(b.len())..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

fn hex4(b: &[u8]) -> Option<u32> {
    b.iter()
        .try_fold(0u32, |acc, &c| Some(acc << 4 | (c as char).to_digit(16)?))
}

/// Unescapes string contents already checked by [`Scanner::string_end`].
fn unescape(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut from = 0;
    while let Some(off) = memchr::memchr(b'\\', &b[from..]) {
        let at = from + off;
        out.push_str(&raw[from..at]);
        let c = match *b.get(at + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                out.push(char::from_u32(hex4(b.get(at + 2..at + 6)?)?)?);
                from = at + 6;
                continue;
            }
            _ => return None,
        };
        out.push(c);
        from = at + 2;
    }
    out.push_str(&raw[from..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the scanner accepts, serde_json accepts, with the same strings.
    fn agrees(text: &str) -> bool {
        let ours = Scanner::new(text).raw_ok();
        let theirs = serde_json::from_str::<serde_json::Value>(text).is_ok();
        if ours {
            assert!(theirs, "scanner accepted what serde_json rejects: {text:?}");
        }
        ours
    }

    impl Scanner<'_> {
        fn raw_ok(mut self) -> bool {
            self.skip().is_some() && self.finish().is_some()
        }
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for text in [
            r#"{"a":[1,-2.5e+3,0,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9"],"b":{}}"#,
            " [ ] ",
            r#""é☃""#,
            "-0",
            "0.5",
            "1E9",
        ] {
            assert!(agrees(text), "{text}");
        }
    }

    #[test]
    fn gives_up_on_what_serde_json_rejects_or_reads_differently() {
        for text in [
            "{\"a\":1,}",
            "[1,]",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "\"a\u{1}\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "{\"a\" 1}",
            "{a:1}",
            "[1 2]",
            "{\"a\":1}x",
            "\"abc",
            "\"abcdefghijklmnop",
            "{\"a\\u0062\":1}",
        ] {
            assert!(!agrees(text), "{text:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(!agrees(&deep));
        let limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(agrees(&limit));
        let over = format!("[{limit}]");
        assert!(!agrees(&over));
    }

    #[test]
    fn strings_unescape_like_serde_json() {
        for text in [
            r#""plain""#,
            r#""a\"b\\c\/d\be\ff\ng\rh\ti\u0000j\u00e9k\u2603""#,
            r#""\\\\""#,
            "\"0123456789abcdef\\\"0123456789abcdef\"",
            "\"é☃ and ascii after the multibyte part, long enough for chunks\"",
        ] {
            let ours = Scanner::new(text).string().expect(text);
            let theirs: String = serde_json::from_str(text).expect(text);
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn control_characters_are_found_in_every_lane() {
        for at in 0..24 {
            let mut s = "x".repeat(24);
            s.replace_range(at..at + 1, "\u{1f}");
            assert!(!agrees(&format!("\"{s}\"")), "{at}");
            s.replace_range(at..at + 1, "\"");
            let text = format!("\"{s}");
            for clean in [false, true] {
                let mut scanner = Scanner::new(&text);
                scanner.clean = clean;
                let end = scanner.string_end(1).map(|(e, _)| e);
                assert_eq!(end, Some(at + 1), "{at} {clean}");
            }
            let escaped = format!("\"{}\\n{}\"", "y".repeat(at), "z".repeat(30 - at));
            assert_eq!(
                Scanner::new(&escaped).string().as_deref(),
                Some(format!("{}\n{}", "y".repeat(at), "z".repeat(30 - at)).as_str())
            );
        }
    }
}
