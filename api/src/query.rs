//! DataFusion SQL over the stored tables, sandboxed and scoped to namespaces.
//!
//! ```text
//!  sql(text, scope) ─► session for this principal ─► plan ─► verify (only queries) ─► execute ─► capped collect
//!                      (catalog: the tables the scope      (query runtime: own threads,
//!                       may see, each a ScopedTable)        memory pool, timeout)
//! ```
//!
//! Every query gets its own `SessionContext` whose catalog holds only what the principal may
//! see ([`NamespaceScope`], admin or not), each table a [`provider::ScopedTable`] that filters
//! `namespace IN (…)` inside its scan. `information_schema` is on and lists exactly that
//! catalog. The statement and function rules are in [`sandbox`]. Queries run on a dedicated
//! runtime (`threads` workers) so a heavy query cannot starve the HTTP server, under a
//! per-query memory pool of `memory_limit_bytes` with spilling disabled, at most
//! `max_concurrent` at a time, and are cancelled after `timeout_secs`. Point lookups by a key
//! column read the selected rows directly ([`lookup`]), with the footers of recently read
//! files kept in up to `footer_cache_bytes`.
//!
//! Tables: `gpu_metrics`, `falco_events`, `k8s_audit`, `findings` (one row per emission of an
//! episode), the view `findings_latest` (the latest revision of each finding id), and tables
//! the API registers (`api_audit`, admin only).

mod lookup;
mod provider;
mod sandbox;

use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::DataFusionError;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::ViewTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Problems;
use crate::store::{Store, TableAccess};

pub use sandbox::DENIED_FUNCTIONS;

/// Name of the view with the latest revision of each finding.
pub const FINDINGS_LATEST: &str = "findings_latest";

/// The view's definition: one row per finding id, its highest revision.
pub const FINDINGS_LATEST_SQL: &str = "SELECT * EXCLUDE (__rn) FROM (SELECT *, row_number() OVER \
     (PARTITION BY id ORDER BY revision DESC, last_ts DESC) AS __rn FROM findings) WHERE __rn = 1";

/// `[query]`: limits of the SQL sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Wall-clock limit of one query (planning included), seconds.
    pub timeout_secs: u64,
    /// Memory pool of one query (joins, sorts, aggregates), bytes. Nothing spills to disk: a
    /// query above it fails.
    pub memory_limit_bytes: usize,
    /// Rows returned at most; more are cut off and the result is marked truncated.
    pub max_rows: usize,
    /// Result bytes returned at most (Arrow in memory); more are cut off, marked truncated.
    pub max_result_bytes: usize,
    /// Longest SQL text accepted, bytes.
    pub max_sql_bytes: usize,
    /// Largest output of one call of an expanding function (`repeat`, `lpad`, `rpad`,
    /// `replace`, `regexp_replace`, `array_to_string`) on one batch, bytes.
    pub max_function_output_bytes: usize,
    /// Worker threads of the query runtime (and DataFusion's target partitions).
    pub threads: usize,
    /// Queries running at once; more wait (within their timeout).
    pub max_concurrent: usize,
    /// Functions to remove on top of the built-in deny-list.
    pub deny_functions: Vec<String>,
    /// Memory for the footers and page indexes of recently read Parquet files, which point
    /// lookups reuse instead of parsing them again, bytes (0: none kept).
    pub footer_cache_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout_secs: 30,
            memory_limit_bytes: 512 << 20,
            max_rows: 10_000,
            max_result_bytes: 64 << 20,
            max_sql_bytes: 64 << 10,
            max_function_output_bytes: 64 << 20,
            threads: 2,
            max_concurrent: 4,
            deny_functions: Vec::new(),
            footer_cache_bytes: 128 << 20,
        }
    }
}

impl QueryConfig {
    /// Validates the settings.
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let positive = [
            ("timeout_secs", self.timeout_secs as u128),
            ("memory_limit_bytes", self.memory_limit_bytes as u128),
            ("max_rows", self.max_rows as u128),
            ("max_result_bytes", self.max_result_bytes as u128),
            ("max_sql_bytes", self.max_sql_bytes as u128),
            (
                "max_function_output_bytes",
                self.max_function_output_bytes as u128,
            ),
            ("threads", self.threads as u128),
            ("max_concurrent", self.max_concurrent as u128),
        ];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("{path}.{name}"), "must be positive");
            }
        }
        if self.threads > 256 {
            p.push(format!("{path}.threads"), "at most 256");
        }
        for (i, f) in self.deny_functions.iter().enumerate() {
            if f.trim().is_empty() {
                p.push(format!("{path}.deny_functions[{i}]"), "must not be empty");
            }
        }
    }
}

/// The namespaces a principal may see: `None` = every namespace (and the tables without a
/// namespace column); `Some(list)` = rows of those namespaces only (`Some(vec![])` sees
/// nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceScope(pub Option<Vec<String>>);

impl NamespaceScope {
    /// Every namespace.
    pub fn all() -> Self {
        NamespaceScope(None)
    }

    /// Only these namespaces.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(namespaces: I) -> Self {
        NamespaceScope(Some(namespaces.into_iter().map(Into::into).collect()))
    }

    /// Whether the scope covers every namespace.
    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    /// Whether rows of `namespace` are visible (a null namespace only to [`Self::all`]).
    pub fn allows(&self, namespace: Option<&str>) -> bool {
        match (&self.0, namespace) {
            (None, _) => true,
            (Some(list), Some(ns)) => list.iter().any(|n| n == ns),
            (Some(_), None) => false,
        }
    }
}

/// A query's result.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Result schema.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// Rows returned.
    pub rows: usize,
    /// Bytes returned (Arrow, in memory).
    pub bytes: usize,
    /// Whether rows were cut off by `max_rows` or `max_result_bytes`.
    pub truncated: bool,
}

/// Output format of [`QueryOutput::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An ASCII table.
    Table,
    /// A JSON array of objects.
    Json,
    /// CSV with a header line.
    Csv,
}

impl QueryOutput {
    /// Writes the rows in `format`.
    pub fn write(&self, format: OutputFormat, out: &mut dyn Write) -> crate::Result<()> {
        let err = |e: String| crate::Error::Query {
            kind: "failed",
            reason: format!("formatting the result: {e}"),
        };
        match format {
            OutputFormat::Table => {
                let text = arrow::util::pretty::pretty_format_batches(&self.batches)
                    .map_err(|e| err(e.to_string()))?;
                writeln!(out, "{text}").map_err(|e| err(e.to_string()))
            }
            OutputFormat::Json => {
                let mut w = arrow::json::ArrayWriter::new(&mut *out);
                for b in &self.batches {
                    w.write(b).map_err(|e| err(e.to_string()))?;
                }
                w.finish().map_err(|e| err(e.to_string()))?;
                if self.batches.is_empty() {
                    write!(out, "[]").map_err(|e| err(e.to_string()))?;
                }
                writeln!(out).map_err(|e| err(e.to_string()))
            }
            OutputFormat::Csv => write_csv(self, out).map_err(|e| err(e.to_string())),
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv(o: &QueryOutput, out: &mut dyn Write) -> Result<(), Box<dyn std::error::Error>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let header: Vec<String> = o
        .schema
        .fields()
        .iter()
        .map(|f| csv_field(f.name()))
        .collect();
    writeln!(out, "{}", header.join(","))?;
    let opts = FormatOptions::default();
    for b in &o.batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            let cells: Vec<String> = fmts
                .iter()
                .zip(b.columns())
                .map(|(f, c)| {
                    if c.is_null(row) {
                        String::new()
                    } else {
                        csv_field(&f.value(row).to_string())
                    }
                })
                .collect();
            writeln!(out, "{}", cells.join(","))?;
        }
    }
    Ok(())
}

/// A tokio runtime only for query execution; shut down without blocking when dropped (the
/// engine may be dropped inside another runtime).
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The SQL engine over a [`Store`].
pub struct QueryEngine {
    store: Arc<Store>,
    config: QueryConfig,
    base: SessionState,
    base_runtime: Arc<RuntimeEnv>,
    runtime: QueryRuntime,
    permits: Arc<Semaphore>,
    footers: Arc<lookup::FooterCache>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn query_err(kind: &'static str, reason: impl Into<String>) -> crate::Error {
    crate::Error::Query {
        kind,
        reason: reason.into(),
    }
}

fn df_err(e: &DataFusionError) -> crate::Error {
    query_err(sandbox::classify(e), sandbox::reason(e))
}

impl QueryEngine {
    /// An engine over `store` with `config`'s limits.
    pub fn new(store: Arc<Store>, config: QueryConfig) -> Self {
        let threads = config.threads.clamp(1, 256);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gpusiem-query")
            .enable_all()
            .build()
            .ok();
        if runtime.is_none() {
            tracing::warn!(
                "could not start the query runtime; queries run on the caller's runtime"
            );
        }
        // The disk manager is off: nothing spills, so the memory pool is a limit, not a hint.
        let base_runtime = RuntimeEnvBuilder::new()
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .unwrap_or_else(|_| Arc::new(RuntimeEnv::default()));
        let mut session_config = SessionConfig::new()
            .with_target_partitions(threads)
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false);
        {
            let o = session_config.options_mut();
            // Late materialisation: point lookups and LIKE decode only the matching rows.
            o.execution.parquet.pushdown_filters = true;
            o.execution.parquet.reorder_filters = true;
        }
        let mut builder = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(base_runtime.clone())
            .with_default_features();
        if let Some(fns) = builder.scalar_functions().as_mut() {
            sandbox::apply_function_policy(
                fns,
                &config.deny_functions,
                config.max_function_output_bytes,
            );
        }
        // No table functions (generate_series, range), no CREATE EXTERNAL TABLE factories, no
        // file formats: nothing in a session can name a file.
        *builder.table_functions() = Some(Default::default());
        *builder.table_factories() = Some(Default::default());
        *builder.file_formats() = Some(Vec::new());
        let base = builder.build();
        QueryEngine {
            store,
            footers: Arc::new(lookup::FooterCache::new(config.footer_cache_bytes)),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            base,
            base_runtime,
            runtime: QueryRuntime(runtime),
        }
    }

    /// The limits.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// Runs sandboxed user SQL as a principal with `scope` (admin-only tables invisible).
    /// Refused statements → `Error::Query { kind: "refused" }`, timeout → `"timeout"`, memory
    /// and size limits → `"resources"`.
    pub async fn sql(&self, sql: &str, scope: &NamespaceScope) -> crate::Result<QueryOutput> {
        self.run_sql(sql, scope, false).await
    }

    /// As [`Self::sql`], with admin-only tables (`api_audit`) visible too; namespace scoping
    /// still applies to namespaced tables.
    pub async fn sql_as_admin(
        &self,
        sql: &str,
        scope: &NamespaceScope,
    ) -> crate::Result<QueryOutput> {
        self.run_sql(sql, scope, true).await
    }

    /// A scoped DataFrame over one table (or `findings_latest`) for parameterised queries built
    /// with the DataFrame API; run it with [`Self::collect`] to get the same limits.
    pub async fn dataframe(&self, table: &str, scope: &NamespaceScope) -> crate::Result<DataFrame> {
        self.scoped_dataframe(table, scope, false).await
    }

    /// As [`Self::dataframe`], admin-only tables included.
    pub async fn dataframe_as_admin(
        &self,
        table: &str,
        scope: &NamespaceScope,
    ) -> crate::Result<DataFrame> {
        self.scoped_dataframe(table, scope, true).await
    }

    async fn scoped_dataframe(
        &self,
        table: &str,
        scope: &NamespaceScope,
        admin: bool,
    ) -> crate::Result<DataFrame> {
        let ctx = self.session(scope, admin).await?;
        ctx.table(table).await.map_err(|e| df_err(&e))
    }

    /// Runs a DataFrame (from [`Self::dataframe`]) with the engine's timeout and result caps.
    pub async fn collect(&self, df: DataFrame) -> crate::Result<QueryOutput> {
        let (max_rows, max_bytes) = (self.config.max_rows, self.config.max_result_bytes);
        let _permit = self.permit().await?;
        self.run(async move { collect_capped(df, max_rows, max_bytes).await })
            .await
    }

    async fn run_sql(
        &self,
        sql: &str,
        scope: &NamespaceScope,
        admin: bool,
    ) -> crate::Result<QueryOutput> {
        if sql.len() > self.config.max_sql_bytes {
            return Err(query_err(
                "refused",
                format!(
                    "the SQL text is longer than {} bytes",
                    self.config.max_sql_bytes
                ),
            ));
        }
        let _permit = self.permit().await?;
        let ctx = self.session(scope, admin).await?;
        let sql = sql.to_string();
        let (max_rows, max_bytes) = (self.config.max_rows, self.config.max_result_bytes);
        let scoped = !scope.is_all();
        self.run(async move {
            let plan = ctx
                .state()
                .create_logical_plan(&sql)
                .await
                .map_err(|e| df_err(&e))?;
            if scoped && matches!(plan, LogicalPlan::Analyze(_)) {
                // Its scan metrics count rows before the scope filter: other tenants' volumes.
                return Err(query_err(
                    "refused",
                    "EXPLAIN ANALYZE needs a principal scoped to every namespace",
                ));
            }
            SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false)
                .verify_plan(&plan)
                .map_err(|e| {
                    query_err(
                        "refused",
                        format!("only queries are allowed: {}", sandbox::reason(&e)),
                    )
                })?;
            let df = ctx
                .execute_logical_plan(plan)
                .await
                .map_err(|e| df_err(&e))?;
            collect_capped(df, max_rows, max_bytes).await
        })
        .await
    }

    async fn permit(&self) -> crate::Result<tokio::sync::OwnedSemaphorePermit> {
        let wait = Duration::from_secs(self.config.timeout_secs);
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(query_err("failed", "the query engine is shutting down")),
            Err(_) => Err(query_err(
                "timeout",
                "too many queries are running; try again",
            )),
        }
    }

    /// Runs `fut` on the query runtime under the timeout; on timeout the task is aborted, which
    /// drops its streams and cancels DataFusion's tasks.
    async fn run<T, F>(&self, fut: F) -> crate::Result<T>
    where
        F: std::future::Future<Output = crate::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let mut handle = match &self.runtime.0 {
            Some(rt) => rt.spawn(fut),
            None => tokio::spawn(fut),
        };
        match tokio::time::timeout(timeout, &mut handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_panic() => Err(query_err("failed", "the query panicked")),
            Ok(Err(_)) => Err(query_err("failed", "the query was cancelled")),
            Err(_) => {
                handle.abort();
                Err(query_err(
                    "timeout",
                    format!("the query ran longer than {} s", self.config.timeout_secs),
                ))
            }
        }
    }

    /// A session whose catalog holds exactly what this principal may see.
    async fn session(&self, scope: &NamespaceScope, admin: bool) -> crate::Result<SessionContext> {
        let schema = Arc::new(MemorySchemaProvider::new());
        let namespaces: Option<Arc<[String]>> =
            scope.0.as_ref().map(|v| v.iter().cloned().collect());
        let mut has_findings = false;
        for info in self.store.tables() {
            let visible = match info.access {
                TableAccess::Namespaced => true,
                TableAccess::Unscoped => scope.is_all(),
                TableAccess::Admin => admin,
            };
            if !visible {
                continue;
            }
            // Admin-only and unscoped tables have no namespace column to filter on; they are
            // only visible where no filtering is owed (admin, or every namespace).
            let filter = match info.access {
                TableAccess::Namespaced => namespaces.clone(),
                TableAccess::Unscoped | TableAccess::Admin => None,
            };
            has_findings |= info.name == crate::store::FINDINGS;
            let table = provider::ScopedTable::new(
                self.store.clone(),
                &info.name,
                info.schema.clone(),
                filter,
                self.footers.clone(),
            );
            schema
                .register_table(info.name.clone(), Arc::new(table))
                .map_err(|e| df_err(&e))?;
        }
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog
            .register_schema("public", schema)
            .map_err(|e| df_err(&e))?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog("datafusion".to_string(), catalog);
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(self.config.memory_limit_bytes),
            NonZeroUsize::MIN.saturating_add(4),
        );
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: Arc::new(pool),
            disk_manager: self.base_runtime.disk_manager.clone(),
            cache_manager: self.base_runtime.cache_manager.clone(),
            object_store_registry: self.base_runtime.object_store_registry.clone(),
        });
        let state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_catalog_list(catalogs)
            .with_runtime_env(runtime)
            .build();
        let ctx = SessionContext::new_with_state(state);
        if has_findings {
            let plan = ctx
                .state()
                .create_logical_plan(FINDINGS_LATEST_SQL)
                .await
                .map_err(|e| df_err(&e))?;
            ctx.register_table(
                FINDINGS_LATEST,
                Arc::new(ViewTable::new(plan, Some(FINDINGS_LATEST_SQL.to_string()))),
            )
            .map_err(|e| df_err(&e))?;
        }
        Ok(ctx)
    }
}

/// Bytes a batch holds (its slices, not the buffers it shares).
fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

async fn collect_capped(
    df: DataFrame,
    max_rows: usize,
    max_bytes: usize,
) -> crate::Result<QueryOutput> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(|e| df_err(&e))?;
    let mut out = QueryOutput {
        schema,
        batches: Vec::new(),
        rows: 0,
        bytes: 0,
        truncated: false,
    };
    while let Some(batch) = stream.next().await {
        let mut batch = batch.map_err(|e| df_err(&e))?;
        if batch.num_rows() == 0 {
            continue;
        }
        if out.rows >= max_rows {
            out.truncated = true;
            break;
        }
        if batch.num_rows() > max_rows - out.rows {
            batch = batch.slice(0, max_rows - out.rows);
            out.truncated = true;
        }
        let bytes = batch_bytes(&batch);
        if out.bytes + bytes > max_bytes {
            out.truncated = true;
            break;
        }
        out.rows += batch.num_rows();
        out.bytes += bytes;
        out.batches.push(batch);
        if out.truncated {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert!(NamespaceScope::all().allows(None));
        let s = NamespaceScope::only(["shop"]);
        assert!(s.allows(Some("shop")) && !s.allows(Some("shop2")) && !s.allows(None));
        assert!(!NamespaceScope(Some(vec![])).allows(Some("shop")));
    }

    #[test]
    fn default_config_is_valid() {
        let mut p = Problems::default();
        QueryConfig::default().validate("query", &mut p);
        assert!(p.0.is_empty());
        let mut p = Problems::default();
        QueryConfig {
            threads: 0,
            ..QueryConfig::default()
        }
        .validate("query", &mut p);
        assert_eq!(p.0[0].path, "query.threads");
    }
}
