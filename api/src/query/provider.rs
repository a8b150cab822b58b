//! The table provider: one stored table, as seen by one principal.
//!
//! Namespace scoping lives here, below SQL: the plan a scan returns always ends in a
//! `FilterExec` on `namespace IN (…)` (reading the `namespace` column even when the query does
//! not), over the union of the Parquet files and the in-memory tail. Joins, unions, subqueries,
//! CTEs and views all reach rows through a scan, so no SQL text can see past it. Rows with a
//! null namespace (cluster-scoped events) are outside every scope.
//!
//! Pruning: files whose `ts` range (from the manifest) cannot match the query's `ts` bounds are
//! not opened at all; for equality and `IN` filters on a key column (`id`, `pod`, `gpu_uuid`,
//! `event_id`), each file's key index leaves out the files without such rows and selects the
//! rows in the others. When the indexes chose the rows of every file, the scan is a
//! [`KeyLookupExec`] that reads just those rows; otherwise DataFusion's Parquet reader reads the
//! files (through the row selections where there are some) and prunes row groups and pages by
//! statistics and bloom filters with the pushed-down predicates, the scope filter included.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{Column, in_list, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;

use parquet::arrow::arrow_reader::RowSelection;

use super::lookup::{FooterCache, KeyLookupExec, LookupFile};
use crate::store::keyindex::{KEY_COLUMNS, KeyIndex};
use crate::store::{FileEntry, Store};

/// `ts`, the column time pruning looks at.
const TS: &str = "ts";
/// The scope column.
const NAMESPACE: &str = gpusiem_ingest::schema::NAMESPACE;

/// A stored table seen through a namespace scope.
#[derive(Debug)]
pub(crate) struct ScopedTable {
    store: Arc<Store>,
    table: String,
    schema: SchemaRef,
    /// `None`: every row. `Some`: rows whose namespace is in the list (empty: none).
    namespaces: Option<Arc<[String]>>,
    /// Footers of the files point lookups read, shared by every scan of the engine.
    footers: Arc<FooterCache>,
}

impl ScopedTable {
    /// The table `table` of `store`, filtered to `namespaces`. A scoped table must have a
    /// `namespace` column (the engine never builds one otherwise).
    pub(crate) fn new(
        store: Arc<Store>,
        table: &str,
        schema: SchemaRef,
        namespaces: Option<Arc<[String]>>,
        footers: Arc<FooterCache>,
    ) -> Self {
        ScopedTable {
            store,
            table: table.to_string(),
            schema,
            namespaces,
            footers,
        }
    }
}

#[async_trait]
impl TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Used for pruning only; DataFusion still applies every filter above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let wanted = projection.cloned().unwrap_or(all);
        let projected = Arc::new(self.schema.project(&wanted)?);
        if self.namespaces.as_ref().is_some_and(|n| n.is_empty()) {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        // The scope filter needs the namespace column even when the query does not.
        let mut cols = wanted.clone();
        let ns_pos = match &self.namespaces {
            None => None,
            Some(_) => {
                let ns = self.schema.index_of(NAMESPACE)?;
                Some(match cols.iter().position(|&c| c == ns) {
                    Some(p) => p,
                    None => {
                        cols.push(ns);
                        cols.len() - 1
                    }
                })
            }
        };
        // A limit below a filter would drop matching rows.
        let scan_limit = if self.namespaces.is_some() {
            None
        } else {
            limit
        };

        let snap = self
            .store
            .snapshot(&self.table)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let (lo, hi) = ts_bounds(filters);
        let files: Vec<_> = snap
            .files
            .into_iter()
            .filter(|(_, f)| f.max_ts >= lo && f.min_ts <= hi)
            .collect();
        let keys = key_predicates(filters);
        let files: Vec<(PathBuf, FileEntry, Option<Vec<u32>>)> = if keys.is_empty() {
            files.into_iter().map(|(p, f)| (p, f, None)).collect()
        } else {
            tokio::task::spawn_blocking(move || select_rows(files, &keys))
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
        };
        let tail: Vec<_> = snap
            .tail
            .into_iter()
            .map(|b| {
                if b.schema() == self.schema {
                    Ok(b)
                } else {
                    crate::store::arrange_batch(&b, &self.schema)
                        .map_err(datafusion::error::DataFusionError::Execution)
                }
            })
            .collect::<DfResult<_>>()?;

        let all_selected = files.iter().all(|(_, _, sel)| sel.is_some());
        let partitions = state.config().target_partitions().max(1);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() && all_selected {
            // A point lookup: the key indexes chose the rows of every file.
            let files = files
                .into_iter()
                .filter_map(|(path, _, rows)| rows.map(|rows| LookupFile { path, rows }))
                .collect();
            inputs.push(Arc::new(KeyLookupExec::new(
                files,
                Arc::new(self.schema.project(&cols)?),
                scan_limit,
                partitions,
                self.footers.clone(),
            )));
        } else if !files.is_empty() {
            let groups = file_groups(files, partitions);
            let options = state.table_options().parquet.clone();
            let format = ParquetFormat::default().with_options(options);
            let source = format.file_source(self.schema.clone().into());
            let conf = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
                .with_file_groups(groups)
                .with_projection_indices(Some(cols.clone()))?
                .with_limit(scan_limit)
                .build();
            inputs.push(format.create_physical_plan(state, conf).await?);
        }
        if !tail.is_empty() {
            let mem =
                MemorySourceConfig::try_new(&[tail], self.schema.clone(), Some(cols.clone()))?
                    .with_limit(scan_limit);
            inputs.push(datafusion::datasource::memory::DataSourceExec::from_data_source(mem));
        }
        let plan: Arc<dyn ExecutionPlan> = match inputs.len() {
            0 => return Ok(Arc::new(EmptyExec::new(projected))),
            _ => UnionExec::try_new(inputs)?,
        };
        let (Some(namespaces), Some(ns_pos)) = (&self.namespaces, ns_pos) else {
            return Ok(plan);
        };
        let plan_schema = plan.schema();
        let list = namespaces
            .iter()
            .map(|n| lit(ScalarValue::Utf8(Some(n.clone()))))
            .collect();
        let predicate = in_list(
            Arc::new(Column::new(NAMESPACE, ns_pos)),
            list,
            &false,
            &plan_schema,
        )?;
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, plan)?);
        if cols.len() == wanted.len() {
            return Ok(filtered);
        }
        // Drop the namespace column the query did not ask for.
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = (0..wanted
            .len())
            .map(|i| {
                let name = plan_schema.field(i).name().clone();
                (Arc::new(Column::new(&name, i)) as _, name)
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, filtered)?))
    }
}

/// Spreads `items` over at most `n` groups (one at least), heaviest first onto the lightest
/// group.
pub(super) fn balance<T>(mut items: Vec<T>, n: usize, weight: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    items.sort_by_key(|i| std::cmp::Reverse(weight(i)));
    let mut groups: Vec<(u64, Vec<T>)> = (0..n.min(items.len()).max(1))
        .map(|_| (0, Vec::new()))
        .collect();
    for item in items {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += weight(&item);
            g.1.push(item);
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Spreads files over `n` groups by the bytes a scan reads (a file read through a row
/// selection weighs its selected share).
fn file_groups(files: Vec<(PathBuf, FileEntry, Option<Vec<u32>>)>, n: usize) -> Vec<FileGroup> {
    let weight = |(_, f, sel): &(PathBuf, FileEntry, Option<Vec<u32>>)| match sel {
        Some(rows) => f.bytes * rows.len() as u64 / f.rows.max(1),
        None => f.bytes,
    };
    balance(files, n, weight)
        .into_iter()
        .map(|g| {
            FileGroup::new(
                g.into_iter()
                    .map(|(path, f, sel)| {
                        let file =
                            PartitionedFile::new(path.to_string_lossy().into_owned(), f.bytes);
                        match sel {
                            Some(rows) => {
                                let total = usize::try_from(f.rows).unwrap_or(usize::MAX);
                                let sel = RowSelection::from_consecutive_ranges(runs(&rows), total);
                                file.with_extension(ParquetRowSelection::new(sel))
                            }
                            None => file,
                        }
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The conjuncts of `filters` a key index answers: `(column, values)` for `column = 'v'`,
/// `'v' = column` and `column IN ('v', …)` on a key column.
pub(crate) fn key_predicates(filters: &[Expr]) -> Vec<(String, Vec<String>)> {
    fn column(e: &Expr) -> Option<&str> {
        match e {
            Expr::Column(c) if KEY_COLUMNS.contains(&c.name.as_str()) => Some(&c.name),
            Expr::Cast(c) => column(&c.expr),
            _ => None,
        }
    }
    fn string(e: &Expr) -> Option<String> {
        match e {
            Expr::Literal(
                ScalarValue::Utf8(Some(v))
                | ScalarValue::LargeUtf8(Some(v))
                | ScalarValue::Utf8View(Some(v)),
                _,
            ) => Some(v.clone()),
            Expr::Cast(c) => string(&c.expr),
            _ => None,
        }
    }
    fn visit(e: &Expr, out: &mut Vec<(String, Vec<String>)>) {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                visit(left, out);
                visit(right, out);
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if let Some((c, v)) = column(left)
                    .zip(string(right))
                    .or_else(|| column(right).zip(string(left)))
                {
                    out.push((c.to_string(), vec![v]));
                }
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) => {
                if let (Some(c), Some(values)) = (
                    column(expr),
                    list.iter().map(string).collect::<Option<Vec<_>>>(),
                ) {
                    out.push((c.to_string(), values));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for f in filters {
        visit(f, &mut out);
    }
    out
}

/// Asks each file's key index which rows can satisfy `keys`: files without such rows are
/// left out, files where they are few get the rows to select (ascending). A file without a
/// usable index is read as a whole.
fn select_rows(
    files: Vec<(PathBuf, FileEntry)>,
    keys: &[(String, Vec<String>)],
) -> Vec<(PathBuf, FileEntry, Option<Vec<u32>>)> {
    let mut out = Vec::with_capacity(files.len());
    for (path, f) in files {
        let rows = match KeyIndex::open(&path, f.rows, f.bytes) {
            Ok(Some(mut ix)) => {
                let mut rows: Option<Vec<u32>> = None;
                let mut failed = None;
                for (column, values) in keys {
                    match ix.lookup(column, values) {
                        Ok(Some(r)) => {
                            rows = Some(match rows {
                                None => r,
                                Some(prev) => intersect(&prev, &r),
                            })
                        }
                        Ok(None) => {}
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "key index unusable; reading the whole file");
                        None
                    }
                    None => rows,
                }
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "key index unusable; reading the whole file");
                None
            }
        };
        match rows {
            Some(r) if r.is_empty() => {}
            // Selecting most of a file costs more than it saves.
            Some(r) if (r.len() as u64) * 2 < f.rows => out.push((path, f, Some(r))),
            _ => out.push((path, f, None)),
        }
    }
    out
}

/// The rows in both ascending lists.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Ascending rows as ranges of consecutive rows.
pub(super) fn runs(rows: &[u32]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = *rows.get(i)? as usize;
        let mut end = start + 1;
        i += 1;
        while rows.get(i).is_some_and(|&r| r as usize == end) {
            end += 1;
            i += 1;
        }
        Some(start..end)
    })
}

/// The `[lo, hi]` range of `ts` (ns) that the conjunction of `filters` allows; conservative.
pub(crate) fn ts_bounds(filters: &[Expr]) -> (i64, i64) {
    let mut b = (i64::MIN, i64::MAX);
    for f in filters {
        visit(f, &mut b);
    }
    b
}

fn visit(e: &Expr, b: &mut (i64, i64)) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            visit(left, b);
            visit(right, b);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if is_ts(left) {
                if let Some(v) = ts_literal(right) {
                    apply(*op, v, b);
                }
            } else if is_ts(right)
                && let (Some(v), Some(op)) = (ts_literal(left), op.swap())
            {
                apply(op, v, b);
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_ts(expr) => {
            if let Some(v) = ts_literal(low) {
                b.0 = b.0.max(v);
            }
            if let Some(v) = ts_literal(high) {
                b.1 = b.1.min(v);
            }
        }
        _ => {}
    }
}

fn apply(op: Operator, v: i64, b: &mut (i64, i64)) {
    match op {
        Operator::Gt | Operator::GtEq => b.0 = b.0.max(v),
        Operator::Lt | Operator::LtEq => b.1 = b.1.min(v),
        Operator::Eq => {
            b.0 = b.0.max(v);
            b.1 = b.1.min(v);
        }
        _ => {}
    }
}

fn is_ts(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == TS)
}

/// A timestamp literal in nanoseconds (rounded outwards is not needed: coarser units are exact
/// multiples).
fn ts_literal(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(x.saturating_mul(1_000)),
        ScalarValue::TimestampMillisecond(Some(x), _) => Some(x.saturating_mul(1_000_000)),
        ScalarValue::TimestampSecond(Some(x), _) => Some(x.saturating_mul(1_000_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn key_predicates_come_from_equalities_and_in_lists_on_key_columns_only() {
        let keys = key_predicates(&[
            col("pod").eq(lit("a")).and(lit("g").eq(col("gpu_uuid"))),
            col("id").in_list(vec![lit("x"), lit("y")], false),
        ]);
        assert_eq!(
            keys,
            [
                ("pod".to_string(), vec!["a".to_string()]),
                ("gpu_uuid".to_string(), vec!["g".to_string()]),
                ("id".to_string(), vec!["x".to_string(), "y".to_string()]),
            ]
        );
        // A disjunction, a negation, another column or a non-literal says nothing.
        assert!(key_predicates(&[col("pod").eq(lit("a")).or(col("pod").eq(lit("b")))]).is_empty());
        assert!(key_predicates(&[col("pod").in_list(vec![lit("a")], true)]).is_empty());
        assert!(key_predicates(&[col("rule").eq(lit("a"))]).is_empty());
        assert!(key_predicates(&[col("pod").eq(col("container"))]).is_empty());
        assert!(key_predicates(&[col("pod").not_eq(lit("a"))]).is_empty());
    }

    #[test]
    fn runs_and_intersections() {
        assert_eq!(
            runs(&[1, 2, 3, 7, 9, 10]).collect::<Vec<_>>(),
            [1..4, 7..8, 9..11]
        );
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 7, 8]), [3, 7]);
    }

    #[test]
    fn bounds_come_from_conjunctions_on_ts_only() {
        assert_eq!(
            ts_bounds(&[col("ts").gt_eq(ts(10)), col("ts").lt(ts(20))]),
            (10, 20)
        );
        assert_eq!(
            ts_bounds(&[ts(10).lt_eq(col("ts")).and(col("ts").lt_eq(ts(30)))]),
            (10, 30)
        );
        assert_eq!(ts_bounds(&[col("ts").between(ts(5), ts(7))]), (5, 7));
        assert_eq!(ts_bounds(&[col("ts").eq(ts(9))]), (9, 9));
        // A disjunction or another column gives no bound.
        assert_eq!(
            ts_bounds(&[col("ts").gt(ts(10)).or(col("ts").lt(ts(5)))]),
            (i64::MIN, i64::MAX)
        );
        assert_eq!(
            ts_bounds(&[col("last_ts").gt(ts(10))]),
            (i64::MIN, i64::MAX)
        );
        let secs = lit(ScalarValue::TimestampSecond(Some(2), None));
        assert_eq!(
            ts_bounds(&[col("ts").gt_eq(secs)]),
            (2_000_000_000, i64::MAX)
        );
    }
}
