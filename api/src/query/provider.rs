//! The table provider: one stored table, as seen by one principal.
//!
//! Namespace scoping lives here, below SQL: the plan a scan returns always ends in a
//! `FilterExec` on `namespace IN (…)` (reading the `namespace` column even when the query does
//! not), over the union of the Parquet files and the in-memory tail. Joins, unions, subqueries,
//! CTEs and views all reach rows through a scan, so no SQL text can see past it. Rows with a
//! null namespace (cluster-scoped events) are outside every scope.
//!
//! Pruning: files whose `ts` range (from the manifest) cannot match the query's `ts` bounds are
//! not opened at all; inside a file, DataFusion's Parquet reader prunes row groups and pages by
//! statistics and bloom filters with the pushed-down predicates, the scope filter included.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{Column, in_list, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;

use crate::store::Store;

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
}

impl ScopedTable {
    /// The table `table` of `store`, filtered to `namespaces`. A scoped table must have a
    /// `namespace` column (the engine never builds one otherwise).
    pub(crate) fn new(
        store: Arc<Store>,
        table: &str,
        schema: SchemaRef,
        namespaces: Option<Arc<[String]>>,
    ) -> Self {
        ScopedTable {
            store,
            table: table.to_string(),
            schema,
            namespaces,
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
        let tail: Vec<_> = snap
            .tail
            .into_iter()
            .map(|b| {
                if b.schema() == self.schema {
                    Ok(b)
                } else {
                    crate::store::conform_batch(&b, &self.schema)
                        .map_err(datafusion::error::DataFusionError::Execution)
                }
            })
            .collect::<DfResult<_>>()?;

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() {
            let groups = file_groups(files, state.config().target_partitions().max(1));
            let format =
                ParquetFormat::default().with_options(state.table_options().parquet.clone());
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

/// Spreads files over `n` groups, largest first onto the lightest group.
fn file_groups(
    mut files: Vec<(std::path::PathBuf, crate::store::FileEntry)>,
    n: usize,
) -> Vec<FileGroup> {
    files.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> =
        (0..n.min(files.len())).map(|_| (0, Vec::new())).collect();
    for (path, f) in files {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += f.bytes;
            g.1.push(PartitionedFile::new(
                path.to_string_lossy().into_owned(),
                f.bytes,
            ));
        }
    }
    groups.into_iter().map(|(_, f)| FileGroup::new(f)).collect()
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
            } else if is_ts(right) {
                if let (Some(v), Some(op)) = (ts_literal(left), op.swap()) {
                    apply(op, v, b);
                }
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
