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
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, StringBuilder, UInt32Builder};
use arrow::record_batch::RecordBatch;

use super::columns::{Entity, EntityColumns, strings};
use super::{DecodeContext, Decoded, Location, Quarantined, Reason};
use crate::schema::{Stream, gpu_metrics};

/// Smallest integer DCGM uses as a blank sentinel (`DCGM_INT64_BLANK`).
pub const INT64_BLANK: u64 = 9_223_372_036_854_775_792;
/// DCGM's FP64 blank (`DCGM_FP64_BLANK` = 2^47); `+1`…`+3` are its other sentinels.
pub const FP64_BLANK: f64 = 140_737_488_355_328.0;

/// Decodes a Prometheus text exposition.
pub fn decode(input: &[u8], cx: &DecodeContext) -> crate::Result<Decoded> {
    let estimate = memchr::memchr_iter(b'\n', input).count() + 1;
    let mut b = Builder::with_capacity(estimate, cx);
    let mut quarantined = Vec::new();
    let all_utf8 = std::str::from_utf8(input).is_ok();
    let mut line_no = cx.first_line;
    let mut pos = 0;
    let mut label_buf: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(16);
    while pos < input.len() {
        let end = memchr::memchr(b'\n', &input[pos..]).map_or(input.len(), |i| pos + i);
        let mut line = &input[pos..end];
        pos = end + 1;
        let location = Location::Line(line_no);
        line_no += 1;
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
        let bad = |reason, detail: String| {
            Quarantined::new(Stream::GpuMetrics, location, reason, detail, line)
        };
        if line.len() > cx.max_record_bytes {
            let detail = format!(
                "line of {} bytes exceeds the limit of {} bytes",
                line.len(),
                cx.max_record_bytes
            );
            quarantined.push(bad(Reason::TooLarge, detail));
            continue;
        }
        let text = if all_utf8 {
            // The whole input is valid UTF-8 and lines are cut at ASCII bytes.
            std::str::from_utf8(line).unwrap_or_default()
        } else {
            match std::str::from_utf8(line) {
                Ok(t) => t,
                Err(e) => {
                    quarantined.push(bad(
                        Reason::InvalidUtf8,
                        format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                    ));
                    continue;
                }
            }
        };
        let mut sample = Sample {
            name: "",
            labels: recycle(std::mem::take(&mut label_buf)),
            value: None,
            timestamp_ms: None,
        };
        match parse_into(text, &mut sample) {
            Ok(()) => {
                if let Err((reason, detail)) = b.append(&sample, cx.default_ts) {
                    quarantined.push(bad(reason, detail));
                }
            }
            Err((reason, detail)) => quarantined.push(bad(reason, detail)),
        }
        label_buf = recycle(sample.labels);
    }
    Ok(Decoded {
        batch: b.finish()?,
        quarantined,
    })
}

/// One parsed sample line, borrowing from the input where it can.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, Cow<'a, str>)>,
    value: Option<f64>,
    timestamp_ms: Option<i64>,
}

type LineError = (Reason, String);

fn syntax(what: &str, at: usize) -> LineError {
    (
        Reason::InvalidSample,
        format!("{what} at column {}", at + 1),
    )
}

/// Empties a label vector and hands its allocation to a vector of another lifetime, so one
/// allocation serves every line (the in-place `collect` reuses the buffer: same layout).
fn recycle<'a, 'b>(mut v: Vec<(&'a str, Cow<'a, str>)>) -> Vec<(&'b str, Cow<'b, str>)> {
    v.clear();
    v.into_iter().map(|_| ("", Cow::Borrowed(""))).collect()
}

fn parse_into<'a>(line: &'a str, s: &mut Sample<'a>) -> Result<(), LineError> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() && is_name_char(b[i], i == 0) {
        i += 1;
    }
    if i == 0 {
        return Err(syntax("expected a metric name", 0));
    }
    s.name = &line[..i];
    if b.get(i) == Some(&b'{') {
        i = parse_labels(line, i + 1, &mut s.labels)?;
    }
    let ws = skip_ws(b, i);
    if ws == i && ws < b.len() {
        return Err(syntax("expected whitespace before the value", i));
    }
    i = ws;
    let v_start = i;
    while i < b.len() && !matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    if v_start == i {
        return Err(syntax("missing value", v_start));
    }
    s.value = parse_value(&line[v_start..i]).ok_or_else(|| syntax("invalid value", v_start))?;
    i = skip_ws(b, i);
    if i < b.len() {
        let t_start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        let ms: i64 = line[t_start..i].parse().map_err(|_| {
            (
                Reason::InvalidTimestamp,
                format!("invalid timestamp at column {}", t_start + 1),
            )
        })?;
        s.timestamp_ms = Some(ms);
        i = skip_ws(b, i);
        if i < b.len() {
            return Err(syntax("unexpected text after the timestamp", i));
        }
    }
    Ok(())
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
        let value = loop {
            match memchr::memchr2(b'"', b'\\', &b[i..]) {
                None => return Err(syntax("unterminated label value", v_start)),
                Some(off) if b[i + off] == b'"' => {
                    let end = i + off;
                    i = end + 1;
                    break Cow::Borrowed(&line[v_start..end]);
                }
                Some(off) => {
                    let (value, next) = unescape(line, v_start, i + off)?;
                    i = next;
                    break Cow::Owned(value);
                }
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
    if !b.is_empty() && b.len() <= 20 && b.iter().all(u8::is_ascii_digit) {
        if let Ok(n) = v.parse::<u64>() {
            return Some(if n >= INT64_BLANK {
                None
            } else {
                Some(n as f64)
            });
        }
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
    device: StringBuilder,
    pci_bus_id: StringBuilder,
    model: StringBuilder,
    gpu_i_profile: StringBuilder,
    gpu_i_id: UInt32Builder,
    vgpu: StringBuilder,
    labels: StringBuilder,
    scratch: String,
}

impl Builder {
    fn with_capacity(n: usize, cx: &DecodeContext) -> Self {
        Builder {
            entity: EntityColumns::with_capacity(n, cx.cluster.clone()),
            metric: strings(n, 24),
            value: Float64Builder::with_capacity(n),
            gpu: UInt32Builder::with_capacity(n),
            device: strings(n, 8),
            pci_bus_id: strings(n, 16),
            model: strings(n, 20),
            gpu_i_profile: strings(n, 0),
            gpu_i_id: UInt32Builder::with_capacity(n),
            vgpu: strings(n, 0),
            labels: strings(n, 40),
            scratch: String::with_capacity(256),
        }
    }

    fn append(&mut self, s: &Sample<'_>, default_ts: i64) -> Result<(), LineError> {
        let ts = match s.timestamp_ms {
            Some(ms) => ms.checked_mul(1_000_000).ok_or((
                Reason::InvalidTimestamp,
                "timestamp out of range".to_string(),
            ))?,
            None => default_ts,
        };
        let mut e = Entity::default();
        let (mut pod_alt, mut ns_alt, mut ctr_alt) = (None, None, None);
        let (mut gpu, mut device, mut pci, mut model, mut profile, mut gi_id, mut vgpu) =
            (None, None, None, None, None, None, None);
        self.scratch.clear();
        let metric = canonical_metric(s.name);
        if metric != s.name {
            push_json_pair(&mut self.scratch, "__name__", s.name);
        }
        for (name, value) in &s.labels {
            let v: &str = value;
            let nonempty = (!v.is_empty()).then_some(v);
            match *name {
                "gpu" => match v.parse::<u32>() {
                    Ok(n) => gpu = Some(n),
                    Err(_) => push_json_pair(&mut self.scratch, name, v),
                },
                "UUID" | "uuid" => e.gpu_uuid = nonempty,
                "pci_bus_id" => pci = nonempty,
                "device" => device = nonempty,
                "modelName" => model = nonempty,
                "GPU_I_PROFILE" => profile = nonempty,
                "GPU_I_ID" => match v.parse::<u32>() {
                    Ok(n) => gi_id = Some(n),
                    Err(_) => push_json_pair(&mut self.scratch, name, v),
                },
                "Hostname" | "hostname" => e.node = nonempty,
                "pod" | "pod_name" => e.pod = nonempty,
                "namespace" | "pod_namespace" => e.namespace = nonempty,
                "container" | "container_name" => e.container = nonempty,
                "exported_pod" => pod_alt = nonempty,
                "exported_namespace" => ns_alt = nonempty,
                "exported_container" => ctr_alt = nonempty,
                "pod_uid" => e.pod_uid = nonempty,
                "vgpu" => vgpu = nonempty,
                _ => push_json_pair(&mut self.scratch, name, v),
            }
        }
        e.pod = e.pod.or(pod_alt);
        e.namespace = e.namespace.or(ns_alt);
        e.container = e.container.or(ctr_alt);
        self.entity.append(ts, &e);
        self.metric.append_value(&metric);
        self.value.append_option(s.value);
        self.gpu.append_option(gpu);
        self.device.append_option(device);
        self.pci_bus_id.append_option(pci);
        self.model.append_option(model);
        self.gpu_i_profile.append_option(profile);
        self.gpu_i_id.append_option(gi_id);
        self.vgpu.append_option(vgpu);
        if self.scratch.is_empty() {
            self.labels.append_null();
        } else {
            self.scratch.push('}');
            self.labels.append_value(&self.scratch);
        }
        Ok(())
    }

    fn finish(mut self) -> crate::Result<RecordBatch> {
        let mut columns = self.entity.finish();
        let rest: [ArrayRef; 10] = [
            Arc::new(self.metric.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.gpu.finish()),
            Arc::new(self.device.finish()),
            Arc::new(self.pci_bus_id.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.gpu_i_profile.finish()),
            Arc::new(self.gpu_i_id.finish()),
            Arc::new(self.vgpu.finish()),
            Arc::new(self.labels.finish()),
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

/// Appends `"key":"value"` to a JSON object under construction (opening it if empty).
fn push_json_pair(out: &mut String, key: &str, value: &str) {
    out.push(if out.is_empty() { '{' } else { ',' });
    push_json_string(out, key);
    out.push(':');
    push_json_string(out, value);
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
