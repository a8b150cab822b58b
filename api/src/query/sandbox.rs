//! The read-only SQL sandbox: which statements run, which functions exist, and what an error
//! means to the caller.
//!
//! * Statements: only queries. `SQLOptions` refuses DDL (`CREATE [EXTERNAL] TABLE/VIEW`,
//!   `DROP`, `SELECT … INTO`), DML (`INSERT`, `COPY … TO`) and statements (`SET`, `PREPARE`,
//!   transactions); the plan is verified with subqueries included. URL tables are never enabled,
//!   there are no table functions, table factories or file formats in the session, so
//!   `SELECT * FROM '/etc/passwd'` is an unknown table. `EXPLAIN` and `DESCRIBE` are allowed:
//!   they show plans and schemas of the tables the principal can see, never rows of others.
//! * Functions that turn a small input into a huge output (DataFusion's memory pool does not see
//!   them: apache/datafusion#12919, #5415) are removed — `generate_series`, `range` (table and
//!   array forms), `array_repeat`, `array_resize` — or capped: `repeat`, `lpad`, `rpad`,
//!   `replace`, `regexp_replace` and `array_to_string` compute an upper bound of their output
//!   from their arguments before allocating it and fail with a resource error above
//!   `max_function_output_bytes`. This includes constant folding at planning time, which runs
//!   the same code.
//! * Everything else is bounded by the per-query memory pool (joins, sorts, aggregates; no
//!   spilling to disk), the row and byte caps on the result, and the wall-clock timeout, which
//!   stops cartesian products and long scans.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// Functions removed from every session (they build large outputs from tiny inputs).
pub const DENIED_FUNCTIONS: &[&str] = &[
    "generate_series",
    "range",
    "array_repeat",
    "list_repeat",
    "array_resize",
    "list_resize",
];

/// How a capped function's output size is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cap {
    /// `repeat(s, n)`: len(s) × n.
    Repeat,
    /// `lpad/rpad(s, n [, fill])`: n characters of at most 4 bytes.
    Pad,
    /// `replace(s, from, to)`: every position may become `to`.
    Replace,
    /// `regexp_replace(s, re, repl [, flags])`: every position may become `repl`, and each
    /// group reference in `repl` may copy the whole input.
    RegexpReplace,
    /// `array_to_string(list, delim [, null])`: every element may add a delimiter.
    ArrayToString,
}

fn cap_of(name: &str) -> Option<Cap> {
    Some(match name {
        "repeat" => Cap::Repeat,
        "lpad" | "rpad" => Cap::Pad,
        "replace" => Cap::Replace,
        "regexp_replace" => Cap::RegexpReplace,
        "array_to_string" | "list_to_string" | "array_join" | "list_join" => Cap::ArrayToString,
        _ => return None,
    })
}

/// Applies the function policy to the session's scalar functions: denied ones are dropped,
/// expanding ones wrapped with their cap.
pub(crate) fn apply_function_policy(
    functions: &mut Vec<Arc<ScalarUDF>>,
    extra_denied: &[String],
    max_output_bytes: usize,
) {
    let denied = |n: &str| {
        DENIED_FUNCTIONS.contains(&n) || extra_denied.iter().any(|d| d.eq_ignore_ascii_case(n))
    };
    functions.retain(|f| !denied(f.name()) && !f.aliases().iter().any(|a| denied(a)));
    for f in functions.iter_mut() {
        if let Some(cap) = cap_of(f.name()) {
            *f = Arc::new(ScalarUDF::new_from_impl(Capped {
                inner: f.clone(),
                cap,
                max_output_bytes,
            }));
        }
    }
}

/// A scalar function that checks the size of what it is about to produce.
#[derive(Debug)]
struct Capped {
    inner: Arc<ScalarUDF>,
    cap: Cap,
    max_output_bytes: usize,
}

impl PartialEq for Capped {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name()
            && self.cap == other.cap
            && self.max_output_bytes == other.max_output_bytes
    }
}
impl Eq for Capped {}
impl Hash for Capped {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.cap.hash(state);
        self.max_output_bytes.hash(state);
    }
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, args: &[datafusion::logical_expr::Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.inner().return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let bound = output_bound(self.cap, &args.args, args.number_rows);
        if bound > self.max_output_bytes as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would produce up to {bound} bytes, above the limit of {} bytes per call",
                self.inner.name(),
                self.max_output_bytes
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

/// Total and largest byte length of a string argument over `rows` rows.
fn string_stats(v: Option<&ColumnarValue>, rows: usize) -> (u128, u128) {
    match v {
        None => (0, 0),
        Some(ColumnarValue::Scalar(s)) => {
            let n = match s {
                ScalarValue::Utf8(Some(x))
                | ScalarValue::LargeUtf8(Some(x))
                | ScalarValue::Utf8View(Some(x)) => x.len() as u128,
                _ => 0,
            };
            (n * rows.max(1) as u128, n)
        }
        Some(ColumnarValue::Array(a)) => {
            let mut total = 0u128;
            let mut max = 0u128;
            let mut add = |n: usize| {
                total += n as u128;
                max = max.max(n as u128);
            };
            match a.data_type() {
                DataType::Utf8 => a
                    .as_string::<i32>()
                    .iter()
                    .for_each(|s| add(s.map_or(0, str::len))),
                DataType::LargeUtf8 => a
                    .as_string::<i64>()
                    .iter()
                    .for_each(|s| add(s.map_or(0, str::len))),
                DataType::Utf8View => a
                    .as_string_view()
                    .iter()
                    .for_each(|s| add(s.map_or(0, str::len))),
                _ => {
                    let n = a.get_array_memory_size();
                    add(n);
                }
            }
            (total, max)
        }
    }
}

/// Sum and largest value (negatives as 0) of an integer argument over `rows` rows.
fn int_stats(v: Option<&ColumnarValue>, rows: usize) -> (u128, u128) {
    let clamp = |x: i64| u128::from(x.max(0).unsigned_abs());
    match v {
        None => (0, 0),
        Some(ColumnarValue::Scalar(s)) => {
            let n = match s.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(x))) => clamp(x),
                _ => 0,
            };
            (n * rows.max(1) as u128, n)
        }
        Some(ColumnarValue::Array(a)) => match arrow::compute::cast(a, &DataType::Int64) {
            Ok(c) => {
                let ints = c.as_primitive::<arrow::datatypes::Int64Type>();
                let mut total = 0u128;
                let mut max = 0u128;
                for x in ints.iter().flatten() {
                    total += clamp(x);
                    max = max.max(clamp(x));
                }
                (total, max)
            }
            Err(_) => (u128::MAX / 4, u128::MAX / 4),
        },
    }
}

/// Elements and value bytes of a list argument.
fn list_stats(v: Option<&ColumnarValue>, rows: usize) -> (u128, u128) {
    let of_array = |a: &dyn Array| -> (u128, u128) {
        let values = match a.data_type() {
            DataType::List(_) => a.as_list::<i32>().values().clone(),
            DataType::LargeList(_) => a.as_list::<i64>().values().clone(),
            DataType::FixedSizeList(_, _) => a.as_fixed_size_list().values().clone(),
            _ => return (a.len() as u128, a.get_array_memory_size() as u128),
        };
        (values.len() as u128, values.get_array_memory_size() as u128)
    };
    match v {
        None => (0, 0),
        Some(ColumnarValue::Array(a)) => of_array(a.as_ref()),
        Some(ColumnarValue::Scalar(s)) => match s.to_array() {
            Ok(a) => {
                let (n, b) = of_array(a.as_ref());
                (n * rows.max(1) as u128, b * rows.max(1) as u128)
            }
            Err(_) => (0, 0),
        },
    }
}

/// An upper bound of the bytes `cap`'s function returns for these arguments.
fn output_bound(cap: Cap, args: &[ColumnarValue], rows: usize) -> u128 {
    let rows128 = rows.max(1) as u128;
    match cap {
        Cap::Repeat => {
            let (s_total, s_max) = string_stats(args.first(), rows);
            let (n_total, n_max) = int_stats(args.get(1), rows);
            match (args.first(), args.get(1)) {
                (Some(ColumnarValue::Scalar(_)), _) => s_max.saturating_mul(n_total),
                (_, Some(ColumnarValue::Scalar(_))) => s_total.saturating_mul(n_max),
                _ => s_total.saturating_mul(n_max),
            }
        }
        Cap::Pad => {
            let (n_total, _) = int_stats(args.get(1), rows);
            n_total.saturating_mul(4)
        }
        Cap::Replace => {
            let (s_total, _) = string_stats(args.first(), rows);
            let (_, to_max) = string_stats(args.get(2), rows);
            s_total.saturating_add((s_total + rows128).saturating_mul(to_max))
        }
        Cap::RegexpReplace => {
            let (s_total, s_max) = string_stats(args.first(), rows);
            let (_, repl_max) = string_stats(args.get(2), rows);
            let refs = match args.get(2) {
                Some(ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(r))
                    | ScalarValue::LargeUtf8(Some(r))
                    | ScalarValue::Utf8View(Some(r)),
                )) => r.bytes().filter(|&b| b == b'$' || b == b'\\').count() as u128,
                _ => repl_max,
            };
            let per_match = repl_max.saturating_add(refs.saturating_mul(s_max));
            s_total.saturating_add((s_total + rows128).saturating_mul(per_match))
        }
        Cap::ArrayToString => {
            let (elements, value_bytes) = list_stats(args.first(), rows);
            let (_, delim_max) = string_stats(args.get(1), rows);
            let (_, null_max) = string_stats(args.get(2), rows);
            value_bytes.saturating_add(elements.saturating_mul(delim_max.saturating_add(null_max)))
        }
    }
}

/// What a DataFusion error means to the caller: `refused` (the query is not allowed or not
/// valid), `resources` (a memory or size limit), or `failed`.
pub(crate) fn classify(e: &DataFusionError) -> &'static str {
    let root = e.find_root();
    match root {
        DataFusionError::ResourcesExhausted(_) => "resources",
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_) => "refused",
        _ => {
            // Errors from inside execution sometimes arrive wrapped in Arrow/External errors.
            let text = root.to_string();
            if text.contains("Resources exhausted")
                || text.contains("memory") && text.contains("limit")
            {
                "resources"
            } else {
                "failed"
            }
        }
    }
}

/// A message for the caller: one line, bounded, without the SQL text.
pub(crate) fn reason(e: &DataFusionError) -> String {
    let text = e.find_root().to_string().replace('\n', " ");
    let mut s: String = text.chars().take(400).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf8(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.to_string())))
    }
    fn int(n: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))
    }

    #[test]
    fn bounds_cover_the_known_abuses() {
        assert_eq!(
            output_bound(Cap::Pad, &[utf8("a"), int(1 << 30), utf8("a")], 1),
            4 << 30
        );
        assert_eq!(output_bound(Cap::Repeat, &[utf8("ab"), int(1000)], 1), 2000);
        assert_eq!(output_bound(Cap::Repeat, &[utf8("ab"), int(-5)], 1), 0);
        // replace with an empty pattern inserts `to` at every position.
        assert_eq!(
            output_bound(Cap::Replace, &[utf8("abc"), utf8(""), utf8("xy")], 1),
            3 + 4 * 2
        );
        // A group reference may copy the whole input once per match.
        assert_eq!(
            output_bound(
                Cap::RegexpReplace,
                &[utf8("abcd"), utf8(".*"), utf8("$0$0")],
                1
            ),
            4 + 5 * (4 + 2 * 4)
        );
        let arr = ColumnarValue::Array(Arc::new(arrow::array::StringArray::from(vec![
            "aa", "bbbb",
        ])));
        assert_eq!(output_bound(Cap::Repeat, &[arr, int(3)], 2), 18);
    }

    #[test]
    fn denied_functions_are_removed_and_capped_ones_wrapped() {
        let mut fns = datafusion::execution::SessionStateDefaults::default_scalar_functions();
        let before = fns.len();
        apply_function_policy(&mut fns, &["uuid".to_string()], 1 << 20);
        let names: Vec<&str> = fns.iter().map(|f| f.name()).collect();
        for d in [
            "range",
            "generate_series",
            "array_repeat",
            "array_resize",
            "uuid",
        ] {
            assert!(!names.contains(&d), "{d} is still there");
        }
        assert!(fns.len() < before);
        let rpad = fns.iter().find(|f| f.name() == "rpad").expect("rpad kept");
        assert!(format!("{:?}", rpad.inner()).contains("Capped"));
    }
}
