//! Column builders shared by the decoders: the entity columns every stream starts with, and a
//! borrowed-string newtype that lets serde hand out `&str` slices of the input.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, ListBuilder, StringBuilder, TimestampNanosecondBuilder, new_null_array,
};
use arrow::datatypes::DataType;

use crate::time::parse_rfc3339_nanos;

/// A JSON string that borrows from the input when it has no escapes.
///
/// `Option<Cow<str>>` fields never borrow with serde's derive; a newtype around the `Cow` does.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct JStr<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl JStr<'_> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON value kept as its text: what serde_json's `&RawValue` reads, as a `&str` that the
/// fast path ([`super::json_lines::scan`]) can produce too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawJson<'a>(pub &'a str);

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawJson<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a serde_json::value::RawValue>::deserialize(d).map(|raw| RawJson(raw.get()))
    }
}

/// `Option<JStr>` → `Option<&str>`, empty strings as `None`.
pub(crate) fn non_empty<'s>(v: &'s Option<JStr<'_>>) -> Option<&'s str> {
    v.as_ref().map(JStr::as_str).filter(|s| !s.is_empty())
}

/// A nullable string column that allocates nothing while all its values are null: many columns
/// are null in most inputs (MIG profile, vGPU, impersonated user, pod UID, …), and a null then
/// costs an add instead of a builder append.
pub(crate) struct Strings {
    builder: Option<StringBuilder>,
    leading_nulls: usize,
    rows: usize,
    data_bytes: usize,
}

impl Strings {
    /// A column for about `rows` values of about `bytes_per_row` bytes (reserved on the first
    /// value that is not null).
    pub(crate) fn with_capacity(rows: usize, bytes_per_row: usize) -> Self {
        Self::with_data_capacity(rows, rows * bytes_per_row)
    }

    /// A column for about `rows` values of about `data_bytes` bytes in all.
    pub(crate) fn with_data_capacity(rows: usize, data_bytes: usize) -> Self {
        Strings {
            builder: None,
            leading_nulls: 0,
            rows,
            data_bytes,
        }
    }

    #[inline]
    pub(crate) fn append_option(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.append_value(value),
            None => self.append_null(),
        }
    }

    #[inline]
    pub(crate) fn append_null(&mut self) {
        match &mut self.builder {
            Some(b) => b.append_null(),
            None => self.leading_nulls += 1,
        }
    }

    #[inline]
    pub(crate) fn append_value(&mut self, value: impl AsRef<str>) {
        self.builder().append_value(value);
    }

    #[inline]
    fn builder(&mut self) -> &mut StringBuilder {
        if self.builder.is_none() {
            self.start();
        }
        self.builder.as_mut().expect("started above")
    }

    #[cold]
    #[inline(never)]
    fn start(&mut self) {
        let mut b =
            StringBuilder::with_capacity(self.rows.max(self.leading_nulls + 1), self.data_bytes);
        b.append_nulls(self.leading_nulls);
        self.builder = Some(b);
    }

    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self.builder.take() {
            Some(mut b) => Arc::new(b.finish()),
            None => new_null_array(&DataType::Utf8, std::mem::take(&mut self.leading_nulls)),
        }
    }
}

impl std::fmt::Write for Strings {
    /// Writes into the value being built; [`Strings::append_value`] with `""` ends it.
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.builder().write_str(s)
    }
}

/// The entity columns (`ts` … `gpu_uuid`) of one batch.
pub(crate) struct EntityColumns {
    ts: TimestampNanosecondBuilder,
    node: Strings,
    namespace: Strings,
    pod: Strings,
    pod_uid: Strings,
    container: Strings,
    gpu_uuid: Strings,
    /// Stamped on every row: built in one go at the end.
    cluster_name: Option<Arc<str>>,
}

/// One row's entity values.
#[derive(Default, Clone, Copy)]
pub(crate) struct Entity<'a> {
    pub node: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    pub container: Option<&'a str>,
    pub gpu_uuid: Option<&'a str>,
}

/// Expected bytes per row of each entity column, to size the builders: a builder that grows
/// copies its buffer into fresh memory (Arrow buffers are 64-byte aligned, which `realloc` cannot
/// keep), and reserved memory that is never written costs nothing.
pub(crate) struct EntityBytes {
    pub node: usize,
    pub namespace: usize,
    pub pod: usize,
    pub pod_uid: usize,
    pub container: usize,
    pub gpu_uuid: usize,
}

impl EntityColumns {
    pub(crate) fn with_capacity(
        rows: usize,
        bytes: EntityBytes,
        cluster: Option<Arc<str>>,
    ) -> Self {
        EntityColumns {
            ts: TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            node: Strings::with_capacity(rows, bytes.node),
            namespace: Strings::with_capacity(rows, bytes.namespace),
            pod: Strings::with_capacity(rows, bytes.pod),
            pod_uid: Strings::with_capacity(rows, bytes.pod_uid),
            container: Strings::with_capacity(rows, bytes.container),
            gpu_uuid: Strings::with_capacity(rows, bytes.gpu_uuid),
            cluster_name: cluster,
        }
    }

    pub(crate) fn append(&mut self, ts: i64, e: &Entity<'_>) {
        self.ts.append_value(ts);
        self.node.append_option(e.node);
        self.namespace.append_option(e.namespace);
        self.pod.append_option(e.pod);
        self.pod_uid.append_option(e.pod_uid);
        self.container.append_option(e.container);
        self.gpu_uuid.append_option(e.gpu_uuid);
    }

    pub(crate) fn finish(mut self) -> Vec<ArrayRef> {
        let ts = self.ts.finish();
        let cluster: ArrayRef = match &self.cluster_name {
            Some(name) => {
                let mut b = StringBuilder::with_capacity(ts.len(), ts.len() * name.len());
                b.append_value_n(name.as_ref(), ts.len());
                Arc::new(b.finish())
            }
            None => new_null_array(&DataType::Utf8, ts.len()),
        };
        vec![
            Arc::new(ts),
            cluster,
            self.node.finish(),
            self.namespace.finish(),
            self.pod.finish(),
            self.pod_uid.finish(),
            self.container.finish(),
            self.gpu_uuid.finish(),
        ]
    }
}

/// Appends an optional list of strings.
pub(crate) fn append_list<'a>(
    b: &mut ListBuilder<StringBuilder>,
    items: Option<impl IntoIterator<Item = &'a str>>,
) {
    match items {
        Some(items) => {
            for item in items {
                b.values().append_value(item);
            }
            b.append(true);
        }
        None => b.append(false),
    }
}

/// About how many lines `input` has, for sizing builders: counted in the first 16 KiB and
/// extrapolated (with 10% to spare), so that a large input is not read an extra time from memory
/// before it is decoded.
pub(crate) fn estimate_lines(input: &[u8]) -> usize {
    const SAMPLE: usize = 16 << 10;
    let sample = &input[..input.len().min(SAMPLE)];
    let lines = memchr::memchr_iter(b'\n', sample).count() + 1;
    if sample.len() == input.len() {
        lines
    } else {
        lines * input.len() / sample.len() * 11 / 10 + 16
    }
}

/// Parses RFC 3339 timestamps as [`parse_rfc3339_nanos`] does, remembering the minute of the
/// last one in UTC: the timestamps of a stream mostly share it, and then only the seconds are
/// left to read.
#[derive(Default)]
pub(crate) struct Timestamps {
    /// `YYYY-MM-DDTHH:MM` of a timestamp the full parser accepted, and the seconds from the epoch
    /// to that minute.
    minute: Option<([u8; 16], i64)>,
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;

impl Timestamps {
    /// Nanoseconds since the epoch; `None` where [`parse_rfc3339_nanos`] gives `None`.
    pub(crate) fn parse(&mut self, s: &str) -> Option<i64> {
        let split = s.as_bytes().split_first_chunk::<16>();
        if let (Some((minute, base)), Some((prefix, rest))) = (&self.minute, split)
            && prefix == minute
            && let Some((second, nanos)) = utc_seconds(rest)
        {
            // The formula of the full parser, on a minute it has checked.
            return (base + second)
                .checked_mul(NANOS_PER_SECOND)?
                .checked_add(nanos);
        }
        let ns = parse_rfc3339_nanos(s)?;
        if let Some((prefix, rest)) = split
            && let Some((second, _)) = utc_seconds(rest)
        {
            self.minute = Some((*prefix, ns.div_euclid(NANOS_PER_SECOND) - second));
        }
        Some(ns)
    }
}

/// What follows the minute in a UTC timestamp (`:SS`, an optional fraction, `Z`): its seconds
/// and nanoseconds, read as [`parse_rfc3339_nanos`] reads them (a tenth fractional digit and
/// beyond are dropped); `None` for anything else.
fn utc_seconds(b: &[u8]) -> Option<(i64, i64)> {
    let [b':', tens @ b'0'..=b'9', ones @ b'0'..=b'9', rest @ ..] = b else {
        return None;
    };
    let second = i64::from((tens - b'0') * 10 + (ones - b'0'));
    if second > 60 {
        return None;
    }
    let (nanos, rest) = match rest {
        [b'.', fraction @ ..] => {
            let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            let kept = decimal(&fraction[..n.min(9)])? as i64;
            let scale = 10i64.pow(9u32.saturating_sub(n as u32));
            (kept * scale, &fraction[n..])
        }
        _ => (0, rest),
    };
    matches!(rest, [b'Z' | b'z']).then_some((second, nanos))
}

/// `s.parse::<i64>().ok()`, with the common case (up to 19 digits, no sign) read eight digits
/// at a time.
#[inline]
pub(crate) fn parse_i64(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if (1..=19).contains(&b.len())
        && let Some(n) = decimal(b)
    {
        // At most 19 digits: below 10^19, within `u64`.
        return i64::try_from(n).ok();
    }
    s.parse().ok()
}

/// The value of up to 19 ASCII digits; `None` where one is not a digit.
#[inline(always)]
fn decimal(digits: &[u8]) -> Option<u64> {
    let (head, groups) = digits.split_at(digits.len() % 8);
    let mut n = 0u64;
    for &c in head {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    for group in groups.chunks_exact(8) {
        let w = u64::from_le_bytes(group.try_into().expect("a chunk of 8 bytes"));
        // Every byte 0x30..=0x39: its high nibble is 3, and stays 3 when 6 is added.
        const HIGH_NIBBLES: u64 = 0xf0f0_f0f0_f0f0_f0f0;
        const THREES: u64 = 0x3030_3030_3030_3030;
        if w & HIGH_NIBBLES != THREES || (w + 0x0606_0606_0606_0606) & HIGH_NIBBLES != THREES {
            return None;
        }
        n = n * 100_000_000 + eight_digits(w);
    }
    Some(n)
}

/// The value of eight ASCII digits, the first in the lowest byte: pairs, then fours, then the
/// eight, each step a multiply-add of neighbouring lanes.
#[inline(always)]
fn eight_digits(w: u64) -> u64 {
    let v = w.wrapping_sub(0x3030_3030_3030_3030);
    let v = (v.wrapping_mul(10).wrapping_add(v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100).wrapping_add(v >> 16)) & 0x0000_ffff_0000_ffff;
    (v.wrapping_mul(10_000).wrapping_add(v >> 32)) & 0xffff_ffff
}

/// A string column builder with room for `rows` values of about `bytes_per_row` bytes (for
/// columns that are rarely null; see [`Strings`] for the others).
pub(crate) fn strings(rows: usize, bytes_per_row: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * bytes_per_row)
}

/// Appends the hex of the XXH3-128 hash of `bytes` (32 digits, as `{:032x}` prints it): a
/// stable id for records that carry none.
pub(crate) fn append_content_id(b: &mut StringBuilder, bytes: &[u8]) {
    let hex = hex32(twox_hash::XxHash3_128::oneshot(bytes));
    b.append_value(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
}

/// `format!("{:032x}", n)` without the allocation: a byte at a time.
fn hex32(n: u128) -> [u8; 32] {
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    hex
}

/// The two hex digits of each byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use std::fmt::Write;

    #[test]
    fn sparse_strings_equal_a_plain_builder() {
        let rows: [&[Option<&str>]; 4] = [
            &[None, None, None],
            &[None, Some("a"), None, Some("")],
            &[Some("x")],
            &[],
        ];
        for values in rows {
            let (mut sparse, mut plain) = (Strings::with_capacity(2, 4), StringBuilder::new());
            for v in values {
                sparse.append_option(*v);
                plain.append_option(*v);
            }
            assert_eq!(
                sparse.finish().to_data(),
                plain.finish().to_data(),
                "{values:?}"
            );
        }
        let mut sparse = Strings::with_capacity(0, 0);
        sparse.append_null();
        sparse.write_str("ab").expect("write");
        sparse.write_str("c").expect("write");
        sparse.append_value("");
        let array = sparse.finish();
        let array = array
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("utf8");
        assert!(array.is_null(0));
        assert_eq!(array.value(1), "abc");
    }

    #[test]
    fn timestamps_read_as_the_full_parser_does() {
        let mut t = Timestamps::default();
        let cases = [
            "2025-03-01T00:00:00.031256723Z",
            "2025-03-01T00:00:07.5Z",
            "2025-03-01T00:00:59Z",
            "2025-03-01T00:00:60Z",
            "2025-03-01T00:00:61Z",
            "2025-03-01T00:00:09.1234567891234z",
            "2025-03-01T00:00:09.Z",
            "2025-03-01T00:00:09.123",
            "2025-03-01T00:00:09.123Zx",
            "2025-03-01T00:00:09+02:00",
            "2025-03-01T00:00:9Z",
            "2025-03-01T00:00",
            "2025-03-01T00:00:",
            "2025-03-01T00:01:00.000001Z",
            "2025-02-29T00:01:00Z",
            "2024-02-29T00:01:00Z",
            "2024-02-29T00:01:30.25Z",
            "2024-02-29t00:01:30Z",
            "2024-02-29 00:01:30Z",
            "1969-12-31T23:59:59.999999999Z",
            "1969-12-31T23:59:00.5Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2262-04-11T23:47:16.854775807Z",
            "2262-04-11T23:47:16.854775808Z",
            "2262-04-11T23:47:17Z",
            "1677-09-21T00:12:43.145224192Z",
            "1677-09-21T00:12:43.145224191Z",
            "1677-09-21T00:12:44Z",
        ];
        // Twice, so that each is read with the minute of the one before it remembered.
        for s in cases.iter().chain(cases.iter()) {
            assert_eq!(t.parse(s), parse_rfc3339_nanos(s), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn timestamps_agree_with_the_full_parser(
            minute in 0u32..3,
            second in 0u32..62,
            fraction in "(\\.[0-9]{0,12})?",
            zone in "(Z|z|\\+01:00|-0130|)",
            noise in proptest::option::of((0usize..30, proptest::char::any())),
        ) {
            let mut t = Timestamps::default();
            let first = format!("2025-06-30T23:0{minute}:00Z");
            let mut s = format!("2025-06-30T23:0{minute}:{second:02}{fraction}{zone}");
            if let Some((at, c)) = noise {
                let at = s.char_indices().nth(at % s.chars().count()).map_or(0, |(i, _)| i);
                s.insert(at, c);
            }
            proptest::prop_assert_eq!(t.parse(&first), parse_rfc3339_nanos(&first));
            proptest::prop_assert_eq!(t.parse(&s), parse_rfc3339_nanos(&s), "{}", s);
        }
    }

    proptest::proptest! {
        #[test]
        fn integers_parse_as_std_does(s in "[-+]?[0-9]{0,21}|[0-9:/a-z.+-]{0,20}", n: i64) {
            proptest::prop_assert_eq!(parse_i64(&s), s.parse::<i64>().ok(), "{}", s);
            let n = n.to_string();
            proptest::prop_assert_eq!(parse_i64(&n), n.parse::<i64>().ok(), "{}", n);
        }
    }

    #[test]
    fn integers_at_the_limits() {
        for s in [
            "9223372036854775807",
            "9223372036854775808",
            "9999999999999999999",
            "0000000000000000000",
            "00000000000000000001",
            "1740787200031256723",
            "12345678",
            "1234567:",
            "123456789012/45678",
            "12345678 ",
            "1e5",
            "0",
            "",
        ] {
            assert_eq!(parse_i64(s), s.parse::<i64>().ok(), "{s}");
        }
    }

    #[test]
    fn line_estimates() {
        assert_eq!(estimate_lines(b""), 1);
        assert_eq!(estimate_lines(b"a\nb\n"), 3);
        let big = "x".repeat(99).to_string() + "\n";
        let big = big.repeat(10_000);
        let n = estimate_lines(big.as_bytes());
        assert!((10_000..=12_000).contains(&n), "{n}");
    }

    #[test]
    fn hex32_is_zero_padded_lower_hex() {
        for n in [
            0,
            1,
            0xf,
            0x0123_4567_89ab_cdef,
            u128::MAX,
            u128::MAX >> 4,
            1 << 127,
        ] {
            assert_eq!(hex32(n).as_slice(), format!("{n:032x}").as_bytes());
        }
    }

    #[test]
    fn content_id_is_the_hex_of_the_hash() {
        let mut b = StringBuilder::new();
        let inputs: [&[u8]; 3] = [b"", b"{\"rule\":\"r\"}", &[0u8; 1000]];
        for input in inputs {
            append_content_id(&mut b, input);
        }
        let ids = b.finish();
        for (i, input) in inputs.iter().enumerate() {
            let expected = format!("{:032x}", twox_hash::XxHash3_128::oneshot(input));
            assert_eq!(ids.value(i), expected);
        }
        assert_eq!(ids.len(), 3);
    }
}
