//! Splits a JSON input into records: JSON lines (one value per line), or one or more
//! whitespace-separated documents (pretty-printed bodies). Bad records are quarantined one by
//! one; the rest of the input is still decoded.

pub(crate) mod scan;

use serde_json::value::RawValue;

use super::{DecodeContext, Location, Quarantined, Reason, json_error};
use crate::schema::Stream;

/// What a record callback reports for a bad record.
pub(crate) type RecordError = (Reason, String);

/// One record's text, with what the splitter learned about it on the way.
#[derive(Clone, Copy)]
pub(crate) struct Record<'a> {
    pub text: &'a str,
    /// Found while looking for the end of the line: the [`scan::Scanner`] then need not pass
    /// over the record to look for them.
    pub controls: Controls,
}

/// What is known about control characters (below 0x20) in a record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Controls {
    /// There are none.
    None,
    /// There are some (whitespace, or invalid in a string).
    Some,
    /// Not looked for.
    Unknown,
}

impl<'a> Record<'a> {
    /// A record nothing is known about.
    pub(crate) fn new(text: &'a str) -> Self {
        Record {
            text,
            controls: Controls::Unknown,
        }
    }
}

/// Calls `f` with the text of every record in `input`, with its location.
///
/// Input whose first record is a complete value on its first line is read as JSON lines; input
/// whose first line is an incomplete value (`{` of a pretty-printed document) is read as a stream
/// of documents, falling back to lines from the first document that does not parse. Records
/// that are too large, not UTF-8, or for which `f` returns an error are quarantined.
///
/// Records are not checked for nesting here: `f` must call [`check_depth`] before it reads a
/// record with serde_json. A reader that gives up beyond [`MAX_DEPTH`] levels (the
/// [`scan::Scanner`] fast paths) need not, and saves a pass over the record.
pub(crate) fn for_each_record<'a>(
    input: &'a [u8],
    cx: &DecodeContext,
    stream: Stream,
    quarantined: &mut Vec<Quarantined>,
    mut f: impl FnMut(Record<'a>, Location, &mut Vec<Quarantined>) -> Result<(), RecordError>,
) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let first = first_line(input);
    let looks_multiline_document = match first {
        Some((start, end)) => {
            let line = trim(&input[start..end]);
            let open = line.first().copied();
            let close = line.last().copied();
            end < input.len()
                && matches!((open, close), (Some(b'{'), c) if c != Some(b'}'))
                    | matches!((open, close), (Some(b'['), c) if c != Some(b']'))
        }
        None => return,
    };
    if looks_multiline_document {
        let consumed = documents(input, cx, stream, quarantined, &mut f);
        if consumed < input.len() {
            let line_base = cx.first_line + count_newlines(&input[..consumed]);
            lines(
                &input[consumed..],
                line_base,
                cx,
                stream,
                quarantined,
                &mut f,
            );
        }
    } else {
        lines(input, cx.first_line, cx, stream, quarantined, &mut f);
    }
}

fn lines<'a>(
    input: &'a [u8],
    first_line: u64,
    cx: &DecodeContext,
    stream: Stream,
    quarantined: &mut Vec<Quarantined>,
    f: &mut impl FnMut(Record<'a>, Location, &mut Vec<Quarantined>) -> Result<(), RecordError>,
) {
    let mut line_no = first_line;
    let mut pos = 0;
    while pos < input.len() {
        // One pass finds the end of the line and whether it has other control characters.
        let control = first_control(input, pos);
        let (end, controls) = match input.get(control) {
            None => (input.len(), Controls::None),
            Some(b'\n') => (control, Controls::None),
            // `\r\n`: the `\r` is trimmed off below.
            Some(b'\r') if input.get(control + 1) == Some(&b'\n') => (control + 1, Controls::None),
            Some(_) => (
                memchr::memchr(b'\n', &input[control..]).map_or(input.len(), |i| control + i),
                Controls::Some,
            ),
        };
        let raw = trim(&input[pos..end]);
        let location = Location::Line(line_no);
        pos = end + 1;
        line_no += 1;
        if raw.is_empty() {
            continue;
        }
        one(raw, controls, location, cx, stream, quarantined, f);
    }
}

/// Offset of the first byte below 0x20 at or after `i` (or `b.len()`).
#[inline]
fn first_control(b: &[u8], mut i: usize) -> usize {
    // Fixed-size blocks folded with `|` compile to a few SIMD instructions per block.
    while let Some(block) = b.get(i..i + 32) {
        let block: &[u8; 32] = block.try_into().expect("a slice of 32 bytes");
        if block.iter().fold(0u8, |acc, &x| acc | u8::from(x < 0x20)) != 0 {
            break;
        }
        i += 32;
    }
    b[i..]
        .iter()
        .position(|&x| x < 0x20)
        .map_or(b.len(), |p| i + p)
}

/// Reads whitespace-separated JSON documents; returns how many bytes were consumed before the
/// first one that does not parse (or the input's length).
fn documents<'a>(
    input: &'a [u8],
    cx: &DecodeContext,
    stream: Stream,
    quarantined: &mut Vec<Quarantined>,
    f: &mut impl FnMut(Record<'a>, Location, &mut Vec<Quarantined>) -> Result<(), RecordError>,
) -> usize {
    let mut values = serde_json::Deserializer::from_slice(input).into_iter::<&RawValue>();
    let mut consumed = 0;
    let mut line = cx.first_line;
    loop {
        let start = consumed + leading_ws(&input[consumed..]);
        line += count_newlines(&input[consumed..start]);
        match values.next() {
            None => return input.len(),
            Some(Err(_)) => return start,
            Some(Ok(value)) => {
                let end = values.byte_offset();
                let raw = value.get();
                one(
                    raw.as_bytes(),
                    Controls::Unknown,
                    Location::Line(line),
                    cx,
                    stream,
                    quarantined,
                    f,
                );
                line += count_newlines(&input[start..end]);
                consumed = end;
            }
        }
    }
}

fn one<'a>(
    raw: &'a [u8],
    controls: Controls,
    location: Location,
    cx: &DecodeContext,
    stream: Stream,
    quarantined: &mut Vec<Quarantined>,
    f: &mut impl FnMut(Record<'a>, Location, &mut Vec<Quarantined>) -> Result<(), RecordError>,
) {
    if raw.len() > cx.max_record_bytes {
        let detail = format!(
            "record of {} bytes exceeds the limit of {} bytes",
            raw.len(),
            cx.max_record_bytes
        );
        quarantined.push(Quarantined::new(
            stream,
            location,
            Reason::TooLarge,
            detail,
            raw,
        ));
        return;
    }
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => {
            let detail = format!("invalid UTF-8 at byte {}", e.valid_up_to());
            quarantined.push(Quarantined::new(
                stream,
                location,
                Reason::InvalidUtf8,
                detail,
                raw,
            ));
            return;
        }
    };
    let record = Record { text, controls };
    if let Err((reason, detail)) = f(record, location, quarantined) {
        quarantined.push(Quarantined::new(stream, location, reason, detail, raw));
    }
}

/// Deepest JSON nesting accepted. Deeper records are quarantined as `too_deep` even where the
/// decoder would skip the deep part, so nothing downstream (analysts' tools included) has to
/// parse them.
pub(crate) const MAX_DEPTH: usize = 64;

/// Quarantines (`too_deep`) a record that nests deeper than [`MAX_DEPTH`].
pub(crate) fn check_depth(text: &str) -> Result<(), RecordError> {
    match too_deep(text.as_bytes()) {
        None => Ok(()),
        Some(depth) => Err((
            Reason::TooDeep,
            format!("nesting deeper than {MAX_DEPTH} levels (at least {depth})"),
        )),
    }
}

/// `Some(depth reached)` when `raw` nests deeper than [`MAX_DEPTH`]. Only records with many
/// brackets are scanned, so ordinary events cost one vectorised count.
fn too_deep(raw: &[u8]) -> Option<usize> {
    if brackets(raw) <= MAX_DEPTH {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &c in raw {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// How many `[` and `{` there are, at least up to `MAX_DEPTH + 1`.
fn brackets(raw: &[u8]) -> usize {
    let mut n = 0;
    // Byte-wide counters over chunks of at most 255 bytes: the loop vectorises.
    for chunk in raw.chunks(255) {
        let in_chunk = chunk
            .iter()
            .fold(0u8, |n, &c| n + u8::from(c == b'[' || c == b'{'));
        n += usize::from(in_chunk);
        if n > MAX_DEPTH {
            break;
        }
    }
    n
}

/// Parses `text` as `T`, mapping serde errors to quarantine reasons.
pub(crate) fn parse<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, RecordError> {
    serde_json::from_str(text).map_err(|e| {
        // A type error may stem from text that is not JSON at all (`14:08:26 Error …` reads
        // as the number 14 first); report the syntax error then.
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(syntax) if e.is_data() => json_error(&syntax),
            _ => json_error(&e),
        }
    })
}

fn first_line(input: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 0;
    while pos < input.len() {
        let end = memchr::memchr(b'\n', &input[pos..]).map_or(input.len(), |i| pos + i);
        if !trim(&input[pos..end]).is_empty() {
            return Some((pos, end));
        }
        pos = end + 1;
    }
    None
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn leading_ws(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_whitespace()).count()
}

fn count_newlines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &[u8]) -> (Vec<(String, Location)>, Vec<Quarantined>) {
        let cx = DecodeContext::new(0);
        let mut out = Vec::new();
        let mut q = Vec::new();
        for_each_record(input, &cx, Stream::FalcoEvents, &mut q, |record, loc, _| {
            let text = record.text;
            check_depth(text)?;
            let _: serde::de::IgnoredAny = parse(text)?;
            out.push((text.to_string(), loc));
            Ok(())
        });
        (out, q)
    }

    #[test]
    fn json_lines_with_blank_and_crlf_lines() {
        let (ok, q) = records(b"{\"a\":1}\r\n\r\n{\"a\":2}\n");
        assert!(q.is_empty());
        assert_eq!(
            ok,
            vec![
                ("{\"a\":1}".into(), Location::Line(1)),
                ("{\"a\":2}".into(), Location::Line(3))
            ]
        );
    }

    #[test]
    fn control_characters_are_reported_with_each_line() {
        let cx = DecodeContext::new(0);
        let mut seen = Vec::new();
        let input = b"{\"a\":1}\r\n{\"a\":\"\t\"}\n\t{\"a\":3}\n{\"a\":\"\x01\"}\r\r\n{\"a\":5}";
        for_each_record(
            input,
            &cx,
            Stream::FalcoEvents,
            &mut Vec::new(),
            |r, loc, _| {
                seen.push((loc, r.controls));
                Ok(())
            },
        );
        assert_eq!(
            seen,
            vec![
                (Location::Line(1), Controls::None),
                (Location::Line(2), Controls::Some),
                (Location::Line(3), Controls::Some),
                (Location::Line(4), Controls::Some),
                (Location::Line(5), Controls::None),
            ]
        );
    }

    #[test]
    fn pretty_printed_documents() {
        let (ok, q) = records(b"{\n  \"a\": 1\n}\n{\n  \"a\": 2\n}\n");
        assert!(q.is_empty());
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].1, Location::Line(4));
    }

    #[test]
    fn truncated_first_line_does_not_take_the_rest_down() {
        let (ok, q) = records(b"{\"a\":1,\"b\":\n{\"a\":2}\n{\"a\":3}\n");
        assert_eq!(ok.len(), 2);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].location, Location::Line(1));
        assert_eq!(q[0].reason, Reason::InvalidJson);
    }

    #[test]
    fn bad_lines_are_quarantined_with_their_line_number() {
        let (ok, q) = records(b"{\"a\":1}\n{\"a\":\xff}\n[1,\n{\"a\":4}\n");
        assert_eq!(ok.len(), 2);
        assert_eq!(
            q.iter().map(|q| (q.location, q.reason)).collect::<Vec<_>>(),
            vec![
                (Location::Line(2), Reason::InvalidUtf8),
                (Location::Line(3), Reason::InvalidJson)
            ]
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let s = format!(r#"{{"a":"{}"}}"#, "[".repeat(500));
        let (ok, q) = records(s.as_bytes());
        assert_eq!((ok.len(), q.len()), (1, 0));
    }

    #[test]
    fn brackets_are_counted_past_byte_counters() {
        let s = format!("{}{}", "[{".repeat(300), "x".repeat(1000));
        assert!(brackets(s.as_bytes()) > MAX_DEPTH);
        assert_eq!(brackets(b"{\"a\":[1,{}]}"), 3);
        let shallow = format!("[{}]", "[],".repeat(100));
        assert!(brackets(shallow.as_bytes()) > MAX_DEPTH);
        assert_eq!(too_deep(shallow.as_bytes()), None);
    }

    #[test]
    fn deep_nesting_is_quarantined_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let (ok, q) = records(deep.as_bytes());
        assert!(ok.is_empty());
        assert_eq!(q[0].reason, Reason::TooDeep);
        assert_eq!(q[0].raw.len(), super::super::QUARANTINE_RAW_BYTES);
        assert_eq!(q[0].raw_len, 20_000);
    }
}
