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
use std::ops::Range;

use wide::u8x16;

use super::{Controls, MAX_DEPTH, Record};

/// A cursor over one JSON text. Every method returns `None` to give up.
///
/// Its slow paths are free functions of the bytes and an offset rather than methods: a scanner
/// that never escapes the function that reads a record lives in registers, and every method
/// call that could see it would put it back in memory (a store and a load per token). It is
/// `Copy` for that reason too: a reader in a function of its own takes it and gives it back.
#[derive(Clone, Copy)]
pub(crate) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    /// No control characters anywhere in `text`, so none in its strings: a string ends at the
    /// first `"` or `\\`.
    clean: bool,
}

impl<'a> Scanner<'a> {
    #[cfg(test)]
    pub(crate) fn new(text: &'a str) -> Self {
        Self::for_record(Record::new(text))
    }

    /// A scanner over a record, trusting what the splitter found out about control characters.
    #[inline]
    pub(crate) fn for_record(record: Record<'a>) -> Self {
        let text = record.text;
        let clean = match record.controls {
            Controls::None => true,
            Controls::Some => false,
            Controls::Unknown => !has_control(text.as_bytes()),
        };
        Scanner {
            text,
            pos: 0,
            depth: 0,
            clean,
        }
    }

    /// The whole text.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    #[inline(always)]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips whitespace and returns the offset of the next value.
    #[inline(always)]
    pub(crate) fn value_start(&mut self) -> usize {
        self.peek();
        self.pos
    }

    /// Offset just after the last value read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Checks that only whitespace is left.
    pub(crate) fn finish(mut self) -> Option<()> {
        self.peek();
        (self.pos == self.text.len()).then_some(())
    }

    /// The next byte after whitespace.
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        // Compact JSON has no whitespace: every byte above the space is not whitespace.
        match self.bytes().get(self.pos) {
            Some(&c) if c > b' ' => Some(c),
            _ => {
                self.pos = skip_ws(self.bytes(), self.pos);
                self.bytes().get(self.pos).copied()
            }
        }
    }

    /// Reads an object, calling `f` with the scanner and each key; `f` must read the value.
    #[inline(always)]
    pub(crate) fn object(
        &mut self,
        f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.object_with(|s, _| s.key(), f)
    }

    /// [`Scanner::object`] for objects whose keys repeat from one record to the next, in the
    /// same order: `cache` remembers the key met at each position with what `classify` made of
    /// it, and `f` gets that instead of the key. A key whose bytes are the remembered ones (its
    /// closing quote included) is taken as it is, without looking for its end or classifying it
    /// again: it was checked when it was remembered, and the same bytes read the same.
    #[inline(always)]
    pub(crate) fn object_cached<T: Copy>(
        &mut self,
        cache: &mut KeyCache<T>,
        classify: impl Fn(&'a [u8]) -> T,
        f: impl FnMut(&mut Self, T) -> Option<()>,
    ) -> Option<()> {
        let key = |s: &mut Self, index| {
            let start = s.pos + 1;
            Some(match cache.known(index, s.bytes(), start) {
                Some((len, value)) => {
                    s.pos = start + len;
                    value
                }
                None => {
                    let key = s.key()?;
                    let value = classify(key);
                    cache.remember(index, key, value);
                    value
                }
            })
        };
        self.object_with(key, f)
    }

    /// Reads an object: `key` reads each key from its opening quote (it gets the key's position
    /// in the object), `f` the value with what `key` returned.
    #[inline(always)]
    fn object_with<K>(
        &mut self,
        mut key: impl FnMut(&mut Self, usize) -> Option<K>,
        mut f: impl FnMut(&mut Self, K) -> Option<()>,
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
        let mut index = 0;
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let k = key(self, index)?;
            index += 1;
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            f(self, k)?;
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
    #[inline(always)]
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

    #[inline(always)]
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A key (at its opening quote): a string without escapes, as bytes (keys are only
    /// compared).
    #[inline(always)]
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.pos + 1;
        let (end, escaped) = string_end(self.bytes(), self.clean, start)?;
        if escaped {
            return None;
        }
        self.pos = end + 1;
        self.bytes().get(start..end)
    }

    /// A string without escapes (gives up on one with escapes): where its contents are.
    #[inline(always)]
    pub(crate) fn plain_string(&mut self) -> Option<Range<usize>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let (end, escaped) = string_end(self.bytes(), self.clean, start)?;
        if escaped {
            return None;
        }
        self.pos = end + 1;
        Some(start..end)
    }

    /// A string, unescaped (borrowed when it has no escapes).
    #[inline(always)]
    pub(crate) fn string(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let (end, escaped) = string_end(self.bytes(), self.clean, start)?;
        self.pos = end + 1;
        let raw = slice(self.text, start, end)?;
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
        slice(self.text, start, self.pos)
    }

    /// Passes over any value, validating it.
    #[inline(always)]
    pub(crate) fn skip(&mut self) -> Option<()> {
        let b = self.bytes();
        self.pos = match self.peek()? {
            b'"' => string_end(b, self.clean, self.pos + 1)?.0 + 1,
            b'-' | b'0'..=b'9' => number_end(b, self.pos)?,
            b't' => literal_end(b, self.pos, b"true")?,
            b'f' => literal_end(b, self.pos, b"false")?,
            b'n' => literal_end(b, self.pos, b"null")?,
            _ => skip_container(b, self.clean, self.pos, self.depth)?,
        };
        Some(())
    }

    #[inline(always)]
    fn literal<const N: usize>(&mut self, word: &[u8; N]) -> Option<()> {
        self.pos = literal_end(self.bytes(), self.pos, word)?;
        Some(())
    }

    /// A number as JSON spells it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    #[inline]
    pub(crate) fn number(&mut self) -> Option<&'a str> {
        let start = self.value_start();
        let end = number_end(self.bytes(), start)?;
        self.pos = end;
        slice(self.text, start, end)
    }
}

/// The keys of an object by their position, for [`Scanner::object_cached`]: each with its
/// closing quote, as two 16-byte blocks compared in one go, and a value.
pub(crate) struct KeyCache<T> {
    keys: Vec<Option<CachedKey<T>>>,
}

impl<T> Default for KeyCache<T> {
    fn default() -> Self {
        KeyCache { keys: Vec::new() }
    }
}

struct CachedKey<T> {
    /// The key and its closing quote, then zeros.
    blocks: [u8x16; 2],
    /// One bit per byte of the key and its quote.
    mask: u32,
    /// The key's length with its quote.
    len: usize,
    value: T,
}

/// Positions remembered at most: objects with more keys are read key by key past them.
const CACHED_KEYS: usize = 64;

impl<T: Copy> KeyCache<T> {
    /// The length (with the closing quote) and value of the key remembered at `index`, when the
    /// bytes of `b` at `at` are that key and its quote.
    #[inline(always)]
    fn known(&self, index: usize, b: &[u8], at: usize) -> Option<(usize, T)> {
        let key = self.keys.get(index)?.as_ref()?;
        let bytes = b.get(at..at + 32)?;
        let block = |i: usize| {
            let chunk: [u8; 16] = bytes[16 * i..16 * i + 16]
                .try_into()
                .expect("a slice of 16 bytes");
            u8x16::from(chunk).simd_eq(key.blocks[i]).to_bitmask()
        };
        let equal = block(0) | block(1) << 16;
        (equal & key.mask == key.mask).then_some((key.len, key.value))
    }

    /// Remembers `key` (without escapes, as [`Scanner::key`] reads it) at `index`, the positions
    /// before it being remembered already.
    fn remember(&mut self, index: usize, key: &[u8], value: T) {
        if index >= CACHED_KEYS {
            return;
        }
        let cached = (key.len() < 32).then(|| {
            let mut bytes = [0u8; 32];
            bytes[..key.len()].copy_from_slice(key);
            bytes[key.len()] = b'"';
            let len = key.len() + 1;
            let (lo, hi) = bytes.split_at(16);
            CachedKey {
                blocks: [
                    u8x16::from(<[u8; 16]>::try_from(lo).expect("16 bytes")),
                    u8x16::from(<[u8; 16]>::try_from(hi).expect("16 bytes")),
                ],
                mask: u32::MAX >> (32 - len),
                len,
                value,
            }
        });
        match self.keys.get_mut(index) {
            Some(slot) => *slot = cached,
            None => {
                self.keys.resize_with(index, || None);
                self.keys.push(cached);
            }
        }
    }
}

/// `text[start..end]`, or `None` where that is not a string: `str::get` with checks that
/// inline (the scanner's ends are next to ASCII bytes, so they always pass).
#[inline(always)]
fn slice(text: &str, start: usize, end: usize) -> Option<&str> {
    let (head, _) = text.split_at_checked(end)?;
    let (_, value) = head.split_at_checked(start)?;
    Some(value)
}

/// The offset of the first byte at or after `i` that is not JSON whitespace (or `b.len()`).
#[inline(never)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
            break;
        }
        i += 1;
    }
    i
}

/// The offset after `word` when it comes at `i`.
#[inline(always)]
fn literal_end<const N: usize>(b: &[u8], i: usize, word: &[u8; N]) -> Option<usize> {
    (b.get(i..i + N)? == word).then_some(i + N)
}

/// The end of the number that starts at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
#[inline]
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
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
    Some(i)
}

/// The closing quote of the string whose contents start at `i`, and whether it has escapes.
/// Gives up on control characters, bad escapes and escaped surrogates.
#[inline(always)]
fn string_end(b: &[u8], clean: bool, i: usize) -> Option<(usize, bool)> {
    // Most strings are short and plain: look at the next 32 bytes, 16 at a time, and leave
    // the rest (escapes, long strings) to the slow path from the first block with a `"` or `\\`.
    let mut j = i;
    if clean {
        for _ in 0..2 {
            let Some(chunk) = b.get(j..j + 16) else {
                break;
            };
            let (quotes, specials) = quotes_and_backslashes(chunk);
            if specials != 0 {
                let first = specials & specials.wrapping_neg();
                if first & quotes != 0 {
                    return Some((j + first.trailing_zeros() as usize, false));
                }
                break;
            }
            j += 16;
        }
    }
    string_end_slow(b, clean, j)
}

#[inline(never)]
fn string_end_slow(b: &[u8], clean: bool, mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i = if clean {
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

/// Passes over the object or array whose opening bracket is at `i`, inside `depth` levels,
/// validating it as [`Scanner::object`] and [`Scanner::array`] with [`Scanner::skip`] on each
/// value would (keys with escapes give up too); returns the offset after it.
///
/// A loop with a stack of one bit per level (set: an object) instead of recursion: skipped
/// values are most of what the decoders pass over.
#[inline(never)]
fn skip_container(b: &[u8], clean: bool, mut i: usize, depth: usize) -> Option<usize> {
    // Levels opened here, innermost in bit 0.
    let mut stack = 0u64;
    let mut levels = 0usize;
    // Offset of the next non-whitespace byte at or after `i`.
    let next = |i: usize| match b.get(i) {
        Some(&c) if c > b' ' => i,
        _ => skip_ws(b, i),
    };
    // `i` is at a value; after the `match`, just past it.
    'value: loop {
        i = match *b.get(i)? {
            open @ (b'{' | b'[') => {
                levels += 1;
                if depth + levels > MAX_DEPTH {
                    return None;
                }
                stack = stack << 1 | u64::from(open == b'{');
                i = next(i + 1);
                match (*b.get(i)?, open) {
                    (b'}', b'{') | (b']', b'[') => {
                        stack >>= 1;
                        levels -= 1;
                        i + 1
                    }
                    (_, b'{') => {
                        i = object_key(b, clean, i)?;
                        continue 'value;
                    }
                    _ => continue 'value,
                }
            }
            b'"' => string_end(b, clean, i + 1)?.0 + 1,
            b'-' | b'0'..=b'9' => number_end(b, i)?,
            b't' => literal_end(b, i, b"true")?,
            b'f' => literal_end(b, i, b"false")?,
            b'n' => literal_end(b, i, b"null")?,
            _ => return None,
        };
        // After a value: close levels until one has more values.
        loop {
            if levels == 0 {
                return Some(i);
            }
            i = next(i);
            let in_object = stack & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i = next(i + 1);
                    if in_object {
                        i = object_key(b, clean, i)?;
                    }
                    continue 'value;
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            i += 1;
            stack >>= 1;
            levels -= 1;
        }
    }
}

/// Passes over `"key":` at `i` (a key without escapes) and the whitespace after it; returns the
/// offset of the value.
#[inline(always)]
fn object_key(b: &[u8], clean: bool, i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (end, escaped) = string_end(b, clean, i + 1)?;
    if escaped {
        return None;
    }
    let colon = match b.get(end + 1) {
        Some(&c) if c > b' ' => end + 1,
        _ => skip_ws(b, end + 1),
    };
    if b.get(colon) != Some(&b':') {
        return None;
    }
    Some(match b.get(colon + 1) {
        Some(&c) if c > b' ' => colon + 1,
        _ => skip_ws(b, colon + 1),
    })
}

/// The offset of the first byte at or after `i` that is not an ASCII digit (or `b.len()`):
/// eight bytes at a time (`evt.time` has 19 digits).
fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let w = word(chunk);
        // A byte's high bit is set here when it is not a digit: at or above 0x80 (`w`), above
        // 0x39 (adding 0x46 carries into the high bit), or below 0x30 (subtracting borrows).
        // Borrows and carries only reach the bytes above, so the lowest flag is exact.
        let flags =
            (w | w.wrapping_add(0x4646_4646_4646_4646) | w.wrapping_sub(ONES * 0x30)) & HIGH;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
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

/// Offset of the first `"` or `\\` at or after `i`: a few blocks at a time (strings here are
/// mostly short), then memchr.
fn find_quote_or_backslash(b: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..4 {
        let Some(chunk) = b.get(i..i + 16) else {
            break;
        };
        let (_, m) = quotes_and_backslashes(chunk);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    memchr::memchr2(b'"', b'\\', b.get(i..)?).map(|p| i + p)
}

/// Bit masks of the `"` and of the `"` or `\\` among 16 bytes (bit `n`: byte `n`).
#[inline(always)]
fn quotes_and_backslashes(chunk: &[u8]) -> (u32, u32) {
    let block: [u8; 16] = chunk.try_into().expect("a slice of 16 bytes");
    let v = u8x16::from(block);
    let quotes = v.simd_eq(u8x16::splat(b'"')).to_bitmask();
    let backslashes = v.simd_eq(u8x16::splat(b'\\')).to_bitmask();
    (quotes, quotes | backslashes)
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
        // `Value` is the strictest reading, save for numbers beyond the range of `f64`: it
        // rejects those, where the decoders' serde_json path passes over them (`IgnoredAny`) or
        // keeps them as text (`RawValue`), as the scanner does.
        let theirs = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(_) => true,
            Err(e) => {
                e.to_string().starts_with("number out of range")
                    && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
            }
        };
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

    /// JSON values whose object keys need no escapes (the scanner gives up on those).
    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z\"\\\\/\u{1}\u{1f}é☃ ]{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(8, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(("[a-z.]{0,20}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Valid JSON is read, and anything it reads after a random edit, serde_json reads.
        #[test]
        fn skipping_agrees_with_serde_json(
            value in json(),
            pretty: bool,
            edit in proptest::option::of((0usize..10_000, 0usize..4, "[]{}\\[,:\" \\\\0-9eE.+\u{1}\n\tnulltrefas]{0,3}")),
        ) {
            let mut text = if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .expect("a value serializes");
            match edit {
                None => proptest::prop_assert!(agrees(&text), "{}", text),
                Some((at, cut, insert)) => {
                    let at = at % (text.len() + 1);
                    let end = (at + cut).min(text.len());
                    if text.is_char_boundary(at) && text.is_char_boundary(end) {
                        text.replace_range(at..end, &insert);
                        agrees(&text);
                    }
                }
            }
        }
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
    fn digits_end_at_the_first_other_byte() {
        // Every byte value after runs of digits of every length up to three words, in each lane.
        for run in 0..24 {
            for stop in 0..=255u8 {
                let mut b: Vec<u8> = (0..run).map(|i| b'0' + (i % 10) as u8).collect();
                b.push(stop);
                b.extend_from_slice(b"123456789");
                let want = b
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .unwrap_or(b.len());
                assert_eq!(digits(&b, 0), want, "{run} {stop}");
                assert_eq!(digits(&b[..run], 0), run);
            }
        }
    }

    #[test]
    fn cached_keys_read_as_fresh_ones() {
        // Keys of every length around the 32-byte blocks, each read after objects whose key at
        // the same position differs by its last byte, by its length, or not at all.
        let read = |cache: &mut KeyCache<usize>, text: &str| {
            let mut keys = Vec::new();
            let mut s = Scanner::new(text);
            s.object_cached(
                cache,
                |k| k.len(),
                |s, len| {
                    keys.push((len, s.raw()?.to_string()));
                    Some(())
                },
            )?;
            s.finish().map(|()| keys)
        };
        for len in 0..40 {
            let key = "k".repeat(len);
            let longer = format!("{key}x");
            let other = format!("{}y", "k".repeat(len.saturating_sub(1)));
            let text = format!(r#"{{"{key}":1,"b":"{key}"}}"#);
            let want = Some(vec![(len, "1".to_string()), (1, format!("\"{key}\""))]);
            for before in [&key, &longer, &other] {
                let mut cache = KeyCache::default();
                let earlier = format!(r#"{{"{before}":0,"b":2}}"#);
                assert!(read(&mut cache, &earlier).is_some());
                assert_eq!(read(&mut cache, &text), want, "{len} after {before:?}");
                assert_eq!(read(&mut cache, &text), want, "{len} again");
            }
            // The same key at the end of the text, where no 32 bytes follow it.
            let mut cache = KeyCache::default();
            let short = format!(r#"{{"{key}":1}}"#);
            assert!(read(&mut cache, &short).is_some());
            assert_eq!(read(&mut cache, &short), Some(vec![(len, "1".to_string())]));
            // A remembered key is not taken where the text has an escape or a control there.
            let escaped = format!(r#"{{"{key}\"":1}}"#);
            assert_eq!(read(&mut cache, &escaped), None);
        }
    }

    #[test]
    fn string_ends_are_found_past_the_inline_blocks() {
        for len in 0..80 {
            for escape in (0..len).step_by(7).map(Some).chain([None]) {
                let mut s = "x".repeat(len);
                if let Some(at) = escape {
                    s.replace_range(at..at + 1, "\\\"");
                }
                let text = format!("\"{s}\"...");
                let end = text.len() - 4;
                for clean in [false, true] {
                    let found = string_end(text.as_bytes(), clean, 1);
                    assert_eq!(
                        found,
                        Some((end, escape.is_some())),
                        "{len} {escape:?} {clean}"
                    );
                }
            }
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
                let end = string_end(text.as_bytes(), clean, 1).map(|(e, _)| e);
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
