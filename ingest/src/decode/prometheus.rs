//! Prometheus text exposition (dcgm-exporter's `/metrics`) → `gpu_metrics`.
//!
//! Hand-written for throughput: one pass over the bytes, no allocation per sample beyond what
//! the Arrow builders copy. Handles `# HELP`/`# TYPE` and other comments, label escapes
//! (`\\`, `\"`, `\n`), an optional trailing comma in the label set, optional millisecond
//! timestamps, `NaN`/`±Inf`, CRLF line ends, DCGM blank sentinels (an integer at or above
//! 9223372036854775792, or the FP64 blank 2^47 … 2^47+3, means "no data" and becomes a null
//! value), `Hostname` and `hostname`, dcgm-exporter's old namespace (`dcgm_*` names, `uuid`,
//! `pod_name`/`pod_namespace`/`container_name`), Prometheus' `exported_*` relabelling, MIG
//! (`GPU_I_PROFILE`, `GPU_I_ID`) and `vgpu`. Empty pod labels become nulls. Labels without a
//! column of their own are kept in `labels` as a JSON object.
//!
//! A line that does not follow the grammar, or has a label name twice (which Prometheus
//! rejects), is quarantined; the next line is decoded as usual.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, StringBuilder, UInt32Builder};
use arrow::record_batch::RecordBatch;
use rustc_hash::FxHashMap;

use super::columns::{Entity, EntityBytes, EntityColumns, Strings, estimate_lines, strings};
use super::{DecodeContext, Decoded, Location, Quarantined, Reason};
use crate::schema::{Stream, gpu_metrics};

/// Smallest integer DCGM uses as a blank sentinel (`DCGM_INT64_BLANK`).
pub const INT64_BLANK: u64 = 9_223_372_036_854_775_792;
/// DCGM's FP64 blank (`DCGM_FP64_BLANK` = 2^47); `+1`…`+3` are its other sentinels.
pub const FP64_BLANK: f64 = 140_737_488_355_328.0;

/// Decodes a Prometheus text exposition.
pub fn decode(input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    let estimate = estimate_lines(input);
    let mut b = Builder::with_capacity(estimate, cx);
    let mut quarantined = Vec::new();
    let mut blocks = LabelBlocks::default();
    let mut line_no = cx.first_line;
    let mut pos = 0;
    let mut label_buf: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(16);
    // The last metric name read: the next samples are usually of the same family.
    let mut name = "";
    while pos < input.len() {
        let location = Location::Line(line_no);
        line_no += 1;
        let bad = |line, reason, detail: String| {
            Quarantined::new(Stream::GpuMetrics, location, reason, detail, line)
        };
        let (line, parsed) = match parse_known_line(&input[pos..], &mut blocks, &mut name, cx) {
            Some((consumed, line, parsed)) => {
                pos += consumed;
                (line, parsed)
            }
            None => {
                let end = memchr::memchr(b'\n', &input[pos..]).map_or(input.len(), |i| pos + i);
                let mut line = &input[pos..end];
                pos = end + 1;
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                let start = line
                    .iter()
                    .take_while(|c| matches!(c, b' ' | b'\t'))
                    .count();
                let line = &line[start..];
                if line.is_empty() || line[0] == b'#' {
                    continue;
                }
                if line.len() > cx.max_record_bytes {
                    let detail = format!(
                        "line of {} bytes exceeds the limit of {} bytes",
                        line.len(),
                        cx.max_record_bytes
                    );
                    quarantined.push(bad(line, Reason::TooLarge, detail));
                    continue;
                }
                match std::str::from_utf8(line) {
                    Ok(text) => (line, parse_line(text, &mut blocks, &mut label_buf)),
                    Err(e) => {
                        let detail = format!("invalid UTF-8 at byte {}", e.valid_up_to());
                        quarantined.push(bad(line, Reason::InvalidUtf8, detail));
                        continue;
                    }
                }
            }
        };
        match parsed {
            Ok(sample) => {
                if let Err((reason, detail)) = b.append(&sample, &blocks, cx.default_ts) {
                    quarantined.push(bad(line, reason, detail));
                }
            }
            Err((reason, detail)) => quarantined.push(bad(line, reason, detail)),
        }
    }
    Ok(Decoded {
        batch: b.finish()?,
        quarantined,
    })
}

/// One parsed sample line: its labels are a block in [`LabelBlocks`].
struct Sample<'a> {
    name: &'a str,
    block: usize,
    value: Option<f64>,
    timestamp_ms: Option<i64>,
}

/// The label sets of one input, each parsed once and resolved into column values.
///
/// dcgm-exporter repeats each GPU's label set, byte for byte, on every metric family, so a set
/// is parsed the first time and found again by its exact bytes: the next set in first-seen
/// order is tried first (the exporter writes the GPUs in the same order in every family), then
/// a hash lookup. Equal bytes parse to equal labels, so this never changes a result.
struct LabelBlocks<'a> {
    blocks: Vec<LabelBlock<'a>>,
    /// Blocks by their text from `{` to the first `}`: a set whose values hold a `}` is never
    /// found this way (a line's text up to its first `}` is then shorter than the set), only by
    /// the in-order guess, which compares the whole set.
    by_text: FxHashMap<&'a [u8], usize>,
    last: usize,
}

impl Default for LabelBlocks<'_> {
    fn default() -> Self {
        LabelBlocks {
            // Block 0: no labels at all.
            blocks: vec![LabelBlock::default()],
            by_text: FxHashMap::default(),
            last: 0,
        }
    }
}

impl<'a> LabelBlocks<'a> {
    /// The block of a label set seen before that starts at `open` (a `{`) in `line`, and the
    /// offset after its `}`.
    #[inline]
    fn find(&mut self, line: &[u8], open: usize) -> Option<(usize, usize)> {
        let rest = &line[open..];
        if let Some(next) = self.blocks.get(self.last + 1)
            && rest.starts_with(next.text.as_bytes())
        {
            self.last += 1;
            return Some((self.last, open + next.text.len()));
        }
        let close = memchr::memchr(b'}', rest)?;
        let found = *self.by_text.get(&rest[..=close])?;
        self.last = found;
        Some((found, open + close + 1))
    }

    /// The block of the label set that starts at `open` (a `{`) in `line`, and the offset after
    /// its `}`; parses and resolves the set the first time.
    fn find_or_parse(
        &mut self,
        line: &'a str,
        open: usize,
        buf: &mut Vec<(&'a str, Cow<'a, str>)>,
    ) -> Result<(usize, usize), LineError> {
        if let Some(found) = self.find(line.as_bytes(), open) {
            return Ok(found);
        }
        buf.clear();
        let end = parse_labels(line, open + 1, buf)?;
        let text = &line[open..end];
        let block = LabelBlock::resolve(text, buf);
        self.blocks.push(block);
        self.last = self.blocks.len() - 1;
        self.by_text.insert(text.as_bytes(), self.last);
        Ok((self.last, end))
    }
}

/// A label set resolved into column values; what every sample with these labels shares.
#[derive(Default)]
struct LabelBlock<'a> {
    /// The set's text, `{` to `}`.
    text: &'a str,
    node: Option<Cow<'a, str>>,
    namespace: Option<Cow<'a, str>>,
    pod: Option<Cow<'a, str>>,
    pod_uid: Option<Cow<'a, str>>,
    container: Option<Cow<'a, str>>,
    gpu_uuid: Option<Cow<'a, str>>,
    gpu: Option<u32>,
    device: Option<Cow<'a, str>>,
    pci_bus_id: Option<Cow<'a, str>>,
    model: Option<Cow<'a, str>>,
    gpu_i_profile: Option<Cow<'a, str>>,
    gpu_i_id: Option<u32>,
    vgpu: Option<Cow<'a, str>>,
    /// The labels without a column, as JSON object members (`"k":"v","k2":"v2"`, no braces).
    other: String,
}

impl<'a> LabelBlock<'a> {
    fn resolve(text: &'a str, labels: &mut Vec<(&'a str, Cow<'a, str>)>) -> Self {
        let mut b = LabelBlock {
            text,
            ..LabelBlock::default()
        };
        let (mut pod_alt, mut ns_alt, mut ctr_alt) = (None, None, None);
        for (name, value) in labels.drain(..) {
            let nonempty = (!value.is_empty()).then_some(value);
            let slot = match name {
                "gpu" | "GPU_I_ID" => {
                    let v = nonempty.as_deref().unwrap_or("");
                    match v.parse::<u32>() {
                        Ok(n) if name == "gpu" => b.gpu = Some(n),
                        Ok(n) => b.gpu_i_id = Some(n),
                        Err(_) => push_json_member(&mut b.other, name, v),
                    }
                    continue;
                }
                "UUID" | "uuid" => &mut b.gpu_uuid,
                "pci_bus_id" => &mut b.pci_bus_id,
                "device" => &mut b.device,
                "modelName" => &mut b.model,
                "GPU_I_PROFILE" => &mut b.gpu_i_profile,
                "Hostname" | "hostname" => &mut b.node,
                "pod" | "pod_name" => &mut b.pod,
                "namespace" | "pod_namespace" => &mut b.namespace,
                "container" | "container_name" => &mut b.container,
                "exported_pod" => &mut pod_alt,
                "exported_namespace" => &mut ns_alt,
                "exported_container" => &mut ctr_alt,
                "pod_uid" => &mut b.pod_uid,
                "vgpu" => &mut b.vgpu,
                _ => {
                    push_json_member(&mut b.other, name, nonempty.as_deref().unwrap_or(""));
                    continue;
                }
            };
            *slot = nonempty;
        }
        b.pod = b.pod.or(pod_alt);
        b.namespace = b.namespace.or(ns_alt);
        b.container = b.container.or(ctr_alt);
        b
    }
}

type LineError = (Reason, String);

fn syntax(what: &str, at: usize) -> LineError {
    (
        Reason::InvalidSample,
        format!("{what} at column {}", at + 1),
    )
}

/// Parses the sample line at the start of `rest` (the rest of the input) without reading it
/// twice, when that is cheap: its name is ASCII, its label set one seen before (so UTF-8 and
/// free of line breaks), and the rest of the line ASCII. Returns the bytes it consumed (the line
/// and its `\n`), the line as the usual path would have cut it, and the result; `None` when
/// the usual path must read the line (a new label set, a comment, anything unusual), and its
/// result is then the same.
#[inline]
fn parse_known_line<'a>(
    rest: &'a [u8],
    blocks: &mut LabelBlocks<'a>,
    last_name: &mut &'a str,
    cx: &DecodeContext,
) -> Option<(usize, &'a [u8], Result<Sample<'a>, LineError>)> {
    let n = last_name.len();
    let name = if n > 0
        && rest.starts_with(last_name.as_bytes())
        && !rest.get(n).is_some_and(|&c| is_name_char(c, false))
    {
        *last_name
    } else {
        let n = rest
            .iter()
            .enumerate()
            .take_while(|&(i, &c)| is_name_char(c, i == 0))
            .count();
        let name = std::str::from_utf8(&rest[..n])
            .ok()
            .filter(|s| !s.is_empty())?;
        *last_name = name;
        name
    };
    let mut i = name.len();
    let mut block = 0;
    if rest.get(i) == Some(&b'{') {
        (block, i) = blocks.find(rest, i)?;
    }
    let newline = memchr::memchr(b'\n', &rest[i..]).map(|p| i + p);
    let mut line = &rest[..newline.unwrap_or(rest.len())];
    if let [cut @ .., b'\r'] = line {
        line = cut;
    }
    if line.len() > cx.max_record_bytes || line.len() < i {
        return None;
    }
    let tail = std::str::from_utf8(&line[i..]).ok()?;
    let parsed = parse_rest(tail, i).map(|(value, timestamp_ms)| Sample {
        name,
        block,
        value,
        timestamp_ms,
    });
    Some((newline.map_or(rest.len(), |p| p + 1), line, parsed))
}

fn parse_line<'a>(
    line: &'a str,
    blocks: &mut LabelBlocks<'a>,
    buf: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<Sample<'a>, LineError> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() && is_name_char(b[i], i == 0) {
        i += 1;
    }
    if i == 0 {
        return Err(syntax("expected a metric name", 0));
    }
    let name = &line[..i];
    let mut block = 0;
    if b.get(i) == Some(&b'{') {
        (block, i) = blocks.find_or_parse(line, i, buf)?;
    }
    let (value, timestamp_ms) = parse_rest(&line[i..], i)?;
    Ok(Sample {
        name,
        block,
        value,
        timestamp_ms,
    })
}

/// The value and optional timestamp after the name and labels; `base` is the offset of `rest`
/// in its line, for error columns.
fn parse_rest(rest: &str, base: usize) -> Result<(Option<f64>, Option<i64>), LineError> {
    let b = rest.as_bytes();
    let mut i = 0;
    let ws = skip_ws(b, i);
    if ws == i && ws < b.len() {
        return Err(syntax("expected whitespace before the value", base + i));
    }
    i = ws;
    let v_start = i;
    while i < b.len() && !matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    if v_start == i {
        return Err(syntax("missing value", base + v_start));
    }
    let value =
        parse_value(&rest[v_start..i]).ok_or_else(|| syntax("invalid value", base + v_start))?;
    let mut timestamp_ms = None;
    i = skip_ws(b, i);
    if i < b.len() {
        let t_start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        let ms: i64 = rest[t_start..i].parse().map_err(|_| {
            (
                Reason::InvalidTimestamp,
                format!("invalid timestamp at column {}", base + t_start + 1),
            )
        })?;
        timestamp_ms = Some(ms);
        i = skip_ws(b, i);
        if i < b.len() {
            return Err(syntax("unexpected text after the timestamp", base + i));
        }
    }
    Ok((value, timestamp_ms))
}

/// Parses `name="value",…}` starting after `{`; returns the index after `}`.
fn parse_labels<'a>(
    line: &'a str,
    mut i: usize,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<usize, LineError> {
    let b = line.as_bytes();
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => return Ok(i + 1),
            None => return Err(syntax("unterminated label set", i)),
            _ => {}
        }
        let n_start = i;
        while i < b.len() && is_label_char(b[i], i == n_start) {
            i += 1;
        }
        if i == n_start {
            return Err(syntax("expected a label name", i));
        }
        let name = &line[n_start..i];
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'=') {
            return Err(syntax("expected '=' after a label name", i));
        }
        i = skip_ws(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return Err(syntax("expected '\"' to open a label value", i));
        }
        i += 1;
        let v_start = i;
        let value = match memchr::memchr2(b'"', b'\\', &b[i..]) {
            None => return Err(syntax("unterminated label value", v_start)),
            Some(off) if b[i + off] == b'"' => {
                let end = i + off;
                i = end + 1;
                Cow::Borrowed(&line[v_start..end])
            }
            Some(off) => {
                let (value, next) = unescape(line, v_start, i + off)?;
                i = next;
                Cow::Owned(value)
            }
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err((
                Reason::DuplicateLabel,
                format!("label `{name}` appears twice"),
            ));
        }
        out.push((name, value));
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            _ => return Err(syntax("expected ',' or '}' after a label value", i)),
        }
    }
}

/// Unescapes a label value whose first backslash is at `esc`; returns the value and the index
/// after the closing quote.
fn unescape(line: &str, start: usize, mut esc: usize) -> Result<(String, usize), LineError> {
    let b = line.as_bytes();
    let mut out = String::with_capacity(esc - start + 16);
    out.push_str(&line[start..esc]);
    loop {
        match b.get(esc + 1) {
            Some(b'\\') => out.push('\\'),
            Some(b'"') => out.push('"'),
            Some(b'n') => out.push('\n'),
            Some(_) => return Err(syntax("invalid escape in a label value", esc)),
            None => return Err(syntax("unterminated label value", start)),
        }
        let from = esc + 2;
        match memchr::memchr2(b'"', b'\\', &b[from..]) {
            None => return Err(syntax("unterminated label value", start)),
            Some(off) if b[from + off] == b'"' => {
                out.push_str(&line[from..from + off]);
                return Ok((out, from + off + 1));
            }
            Some(off) => {
                out.push_str(&line[from..from + off]);
                esc = from + off;
            }
        }
    }
}

/// Parses a sample value. `Ok(None)` is a DCGM blank sentinel.
fn parse_value(v: &str) -> Option<Option<f64>> {
    let b = v.as_bytes();
    if let Some(n) = plain_u64(b) {
        return Some(if n >= INT64_BLANK {
            None
        } else {
            Some(n as f64)
        });
    }
    if let Some(f) = plain_decimal(b) {
        // Not all digits, so only the FP64 sentinels can be blanks.
        return Some((!(FP64_BLANK..=FP64_BLANK + 3.0).contains(&f)).then_some(f));
    }
    let f: f64 = match v {
        "NaN" | "Nan" | "nan" => f64::NAN,
        "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
        "-Inf" | "-inf" => f64::NEG_INFINITY,
        _ => {
            if !b
                .first()
                .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.'))
            {
                return None;
            }
            v.parse().ok()?
        }
    };
    if (FP64_BLANK..=FP64_BLANK + 3.0).contains(&f)
        || (f.is_finite()
            && f >= INT64_BLANK as f64
            && f <= u64::MAX as f64
            && v.bytes().all(|c| c.is_ascii_digit()))
    {
        return Some(None);
    }
    Some(Some(f))
}

/// An unsigned integer of at most 20 digits that fits a `u64` (what `str::parse::<u64>` reads from
/// digits alone).
fn plain_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        let digit = c.wrapping_sub(b'0');
        (digit < 10).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `-?D+(.D+)?` with at most 19 digits whose value is below 2^53 and at most 22 after the point:
/// the mantissa and the power of ten are exact in an `f64`, so one division rounds exactly as
/// `str::parse` does (Clinger's fast path). `None` for anything else, and for unsigned integers,
/// which the caller reads as `u64`.
fn plain_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    let dot = digits.iter().position(|&c| c == b'.');
    let (int, frac) = match dot {
        Some(d) => (&digits[..d], &digits[d + 1..]),
        None if negative => (digits, &[][..]),
        None => return None,
    };
    if int.is_empty() || (dot.is_some() && frac.is_empty()) || int.len() + frac.len() > 19 {
        return None;
    }
    let mut m: u64 = 0;
    for &c in int.iter().chain(frac) {
        if !c.is_ascii_digit() {
            return None;
        }
        m = m * 10 + u64::from(c - b'0');
    }
    if m > 1 << 53 {
        return None;
    }
    let f = m as f64 / POW10[frac.len()];
    Some(if negative { -f } else { f })
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

fn is_name_char(c: u8, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':' || (!first && c.is_ascii_digit())
}

fn is_label_char(c: u8, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || (!first && c.is_ascii_digit())
}

/// dcgm-exporter 1.x-compatibility names (`--use-old-namespace`) → current field names.
fn canonical_metric(name: &str) -> Cow<'_, str> {
    if name.starts_with("DCGM_") || !name.starts_with("dcgm_") {
        return Cow::Borrowed(name);
    }
    if name.starts_with("dcgm_fi_") || name.starts_with("dcgm_exp_") {
        return Cow::Owned(name.to_ascii_uppercase());
    }
    let canonical = match name {
        "dcgm_sm_clock" => "DCGM_FI_DEV_SM_CLOCK",
        "dcgm_memory_clock" => "DCGM_FI_DEV_MEM_CLOCK",
        "dcgm_memory_temp" => "DCGM_FI_DEV_MEMORY_TEMP",
        "dcgm_gpu_temp" => "DCGM_FI_DEV_GPU_TEMP",
        "dcgm_power_usage" => "DCGM_FI_DEV_POWER_USAGE",
        "dcgm_total_energy_consumption" => "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "dcgm_pcie_tx_throughput" => "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
        "dcgm_pcie_rx_throughput" => "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
        "dcgm_pcie_replay_counter" => "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "dcgm_gpu_utilization" => "DCGM_FI_DEV_GPU_UTIL",
        "dcgm_mem_copy_utilization" => "DCGM_FI_DEV_MEM_COPY_UTIL",
        "dcgm_enc_utilization" => "DCGM_FI_DEV_ENC_UTIL",
        "dcgm_dec_utilization" => "DCGM_FI_DEV_DEC_UTIL",
        "dcgm_xid_errors" => "DCGM_FI_DEV_XID_ERRORS",
        "dcgm_power_violation" => "DCGM_FI_DEV_POWER_VIOLATION",
        "dcgm_thermal_violation" => "DCGM_FI_DEV_THERMAL_VIOLATION",
        "dcgm_sync_boost_violation" => "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
        "dcgm_board_limit_violation" => "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
        "dcgm_low_util_violation" => "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
        "dcgm_reliability_violation" => "DCGM_FI_DEV_RELIABILITY_VIOLATION",
        "dcgm_fb_free" => "DCGM_FI_DEV_FB_FREE",
        "dcgm_fb_used" => "DCGM_FI_DEV_FB_USED",
        "dcgm_ecc_sbe_volatile_total" => "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "dcgm_ecc_dbe_volatile_total" => "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "dcgm_ecc_sbe_aggregate_total" => "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "dcgm_ecc_dbe_aggregate_total" => "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "dcgm_retired_pages_sbe" => "DCGM_FI_DEV_RETIRED_SBE",
        "dcgm_retired_pages_dbe" => "DCGM_FI_DEV_RETIRED_DBE",
        "dcgm_retired_pages_pending" => "DCGM_FI_DEV_RETIRED_PENDING",
        "dcgm_nvlink_bandwidth_total" => "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        _ => return Cow::Borrowed(name),
    };
    Cow::Borrowed(canonical)
}

struct Builder {
    entity: EntityColumns,
    metric: StringBuilder,
    value: Float64Builder,
    gpu: UInt32Builder,
    device: Strings,
    pci_bus_id: Strings,
    model: Strings,
    gpu_i_profile: Strings,
    gpu_i_id: UInt32Builder,
    vgpu: Strings,
    labels: Strings,
}

impl Builder {
    fn with_capacity(n: usize, cx: &DecodeContext) -> Self {
        Builder {
            entity: EntityColumns::with_capacity(
                n,
                EntityBytes {
                    node: 24,
                    namespace: 16,
                    pod: 32,
                    pod_uid: 0,
                    container: 16,
                    gpu_uuid: 40,
                },
                cx.cluster.clone(),
            ),
            metric: strings(n, 24),
            value: Float64Builder::with_capacity(n),
            gpu: UInt32Builder::with_capacity(n),
            device: Strings::with_capacity(n, 8),
            pci_bus_id: Strings::with_capacity(n, 16),
            model: Strings::with_capacity(n, 20),
            gpu_i_profile: Strings::with_capacity(n, 0),
            gpu_i_id: UInt32Builder::with_capacity(n),
            vgpu: Strings::with_capacity(n, 0),
            labels: Strings::with_capacity(n, 40),
        }
    }

    fn append(
        &mut self,
        s: &Sample<'_>,
        blocks: &LabelBlocks<'_>,
        default_ts: i64,
    ) -> Result<(), LineError> {
        let ts = match s.timestamp_ms {
            Some(ms) => ms.checked_mul(1_000_000).ok_or_else(|| {
                (
                    Reason::InvalidTimestamp,
                    "timestamp out of range".to_string(),
                )
            })?,
            None => default_ts,
        };
        let l = &blocks.blocks[s.block];
        self.entity.append(
            ts,
            &Entity {
                node: l.node.as_deref(),
                namespace: l.namespace.as_deref(),
                pod: l.pod.as_deref(),
                pod_uid: l.pod_uid.as_deref(),
                container: l.container.as_deref(),
                gpu_uuid: l.gpu_uuid.as_deref(),
            },
        );
        let metric = canonical_metric(s.name);
        self.metric.append_value(&metric);
        self.value.append_option(s.value);
        self.gpu.append_option(l.gpu);
        self.device.append_option(l.device.as_deref());
        self.pci_bus_id.append_option(l.pci_bus_id.as_deref());
        self.model.append_option(l.model.as_deref());
        self.gpu_i_profile.append_option(l.gpu_i_profile.as_deref());
        self.gpu_i_id.append_option(l.gpu_i_id);
        self.vgpu.append_option(l.vgpu.as_deref());
        // `{"__name__":…,` when the name was mapped, then the other labels.
        let renamed = metric != s.name;
        if !renamed && l.other.is_empty() {
            self.labels.append_null();
        } else {
            let mut name = String::new();
            if renamed {
                push_json_member(&mut name, "__name__", s.name);
                if !l.other.is_empty() {
                    name.push(',');
                }
            }
            for part in ["{", &name, &l.other, "}"] {
                self.labels
                    .write_str(part)
                    .expect("writing to a builder cannot fail");
            }
            self.labels.append_value("");
        }
        Ok(())
    }

    fn finish(mut self) -> crate::Result<RecordBatch> {
        let mut columns = self.entity.finish();
        let rest: [ArrayRef; 10] = [
            Arc::new(self.metric.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.gpu.finish()),
            self.device.finish(),
            self.pci_bus_id.finish(),
            self.model.finish(),
            self.gpu_i_profile.finish(),
            Arc::new(self.gpu_i_id.finish()),
            self.vgpu.finish(),
            self.labels.finish(),
        ];
        columns.extend(rest);
        RecordBatch::try_new(gpu_metrics::schema(), columns).map_err(|source| {
            crate::Error::BuildBatch {
                stream: Stream::GpuMetrics,
                source,
            }
        })
    }
}

/// Appends `"key":"value"` to the members of a JSON object (after a comma unless the first).
fn push_json_member(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    push_json_string(out, key);
    out.push(':');
    push_json_string(out, value);
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    // Runs of characters that need no escape are copied whole; the escapes are ASCII, so the
    // run boundaries are character boundaries.
    let mut from = 0;
    for (i, c) in s.bytes().enumerate() {
        let escape = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            c if c < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{c:04x}"));
        } else {
            out.push_str(escape);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_value` without the fast path, as it was.
    fn general(v: &str) -> Option<Option<f64>> {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 20
            && b.iter().all(u8::is_ascii_digit)
            && let Ok(n) = v.parse::<u64>()
        {
            return Some((n < INT64_BLANK).then_some(n as f64));
        }
        let f: f64 = match v {
            "NaN" | "Nan" | "nan" => f64::NAN,
            "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
            "-Inf" | "-inf" => f64::NEG_INFINITY,
            _ => {
                if !b
                    .first()
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.'))
                {
                    return None;
                }
                v.parse().ok()?
            }
        };
        if (FP64_BLANK..=FP64_BLANK + 3.0).contains(&f)
            || (f.is_finite()
                && f >= INT64_BLANK as f64
                && f <= u64::MAX as f64
                && v.bytes().all(|c| c.is_ascii_digit()))
        {
            return Some(None);
        }
        Some(Some(f))
    }

    #[test]
    fn json_strings_escape_like_serde_json() {
        for s in [
            "",
            "plain",
            "a\"b\\c\nd\re\tf",
            "\u{1}\u{1f}x",
            "é☃ \u{7f}",
            "\"\"",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, s);
            let back: String = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(back, s);
        }
        let mut out = String::new();
        push_json_string(&mut out, "a\u{1}\n");
        assert_eq!(out, "\"a\\u0001\\n\"");
    }

    #[test]
    fn plain_decimals_parse_exactly_like_str_parse() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "35.686000",
            "0.000001",
            "-1",
            "-12.5",
            "1.",
            ".5",
            "-.5",
            "1e3",
            "+1.5",
            "9007199254740992",
            "9007199254740993",
            "-9007199254740993",
            "900719925474099.3",
            "0.1234567890123456789",
            "1234567890.123456789",
            "140737488355328.000000",
            "140737488355331.0",
            "140737488355332.0",
            "-140737488355328.0",
            "1.0000000000000000000001",
            "00012.50",
            "-",
            "-.",
            "1.2.3",
            "1-2",
            "NaN",
            "-Inf",
            "18446744073709551615",
            "9223372036854775794",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A deterministic sweep of decimals with up to 19 digits.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 19 + 1) as usize;
            let m = x % 10u64.pow(digits as u32);
            let point = (x >> 32) as usize % (digits + 1);
            let mut s = format!("{m:0digits$}");
            if point < digits {
                s.insert(point.max(1), '.');
            }
            if x & 1 == 1 {
                s.insert(0, '-');
            }
            cases.push(s);
        }
        for v in &cases {
            let (ours, theirs) = (parse_value(v), general(v));
            let same = match (ours, theirs) {
                (Some(Some(a)), Some(Some(b))) => a.to_bits() == b.to_bits(),
                (a, b) => a == b,
            };
            assert!(same, "{v}: {ours:?} vs {theirs:?}");
        }
    }
}
