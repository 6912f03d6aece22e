//! The query engine every front end shares (`idtrail query`, Flight SQL, `POST /v1/query`):
//! read-only planning, bind parameters, and the per-query memory limit and timeout.
//!
//! One base session holds the catalog. Each query runs in a session cloned from it with its
//! own memory pool, so one heavy query fails alone instead of starving the others; the caches
//! of Parquet footers and file statistics are shared by all queries.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::{Stream, StreamExt};
use idtrail_collector::config::QueryConfig;

use crate::catalog;
use crate::declared::{DeclaredFiles, DeclaredKind};
use crate::error::{QueryError, Result};
use crate::findings::{self, Rule};

/// What the engine needs to know; [`QueryOptions::from_config`] reads it from the server config.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// The data directory holding `spans/`, `chains/` and `edges/`.
    pub data_dir: PathBuf,
    pub memory_limit_bytes: usize,
    pub timeout: Duration,
    pub owners_files: Vec<PathBuf>,
    pub grants_files: Vec<PathBuf>,
    /// Directories of extra detection rules (`*.sql`), see [`crate::findings`].
    pub rules_dirs: Vec<PathBuf>,
}

impl QueryOptions {
    pub fn from_config(data_dir: PathBuf, query: &QueryConfig) -> QueryOptions {
        QueryOptions {
            data_dir,
            memory_limit_bytes: query.memory_limit_bytes,
            timeout: query.timeout,
            owners_files: query.owners_files.clone(),
            grants_files: query.grants_files.clone(),
            rules_dirs: query.rules_dirs.clone(),
        }
    }
}

/// A planned, read-only statement, ready to run once its parameters are bound.
pub struct PreparedQuery {
    plan: LogicalPlan,
    ctx: SessionContext,
    deadline: tokio::time::Instant,
}

impl PreparedQuery {
    /// The schema of the answer (placeholders may leave some types open until bound).
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }

    /// Types of the `$n` parameters, in order (`None` where the plan leaves one open).
    pub fn parameter_types(&self) -> Result<Vec<Option<arrow::datatypes::DataType>>> {
        let types = self
            .plan
            .get_parameter_types()
            .map_err(|e| QueryError::Plan(e.to_string()))?;
        let mut ordered: Vec<(usize, Option<arrow::datatypes::DataType>)> = types
            .into_iter()
            .filter_map(|(name, t)| Some((name.strip_prefix('$')?.parse().ok()?, t)))
            .collect();
        ordered.sort_by_key(|(i, _)| *i);
        Ok(ordered.into_iter().map(|(_, t)| t).collect())
    }

    /// Binds `params` to `$1, $2, …` now, so that [`schema`](Self::schema) is the schema of
    /// the answer with these values (Flight SQL announces it before the answer is fetched).
    /// [`QueryEngine::execute`] then needs no parameters.
    pub fn bind(self, params: Vec<ScalarValue>) -> Result<PreparedQuery> {
        if params.is_empty() {
            return Ok(self);
        }
        // A value given as a number for a parameter compared with text binds as that text (and
        // the other way round where it casts), so every front end answers `user_id = $1` with
        // 42 the same way.
        let types = self.parameter_types()?;
        let params: Vec<ScalarValue> = params
            .into_iter()
            .enumerate()
            .map(|(i, value)| match types.get(i) {
                Some(Some(wanted)) if !value.is_null() && value.data_type() != *wanted => {
                    value.cast_to(wanted).unwrap_or(value)
                }
                _ => value,
            })
            .collect();
        let plan = self
            .plan
            .with_param_values(params)
            .map_err(|e| QueryError::BadRequest(format!("binding parameters: {e}")))?;
        Ok(PreparedQuery { plan, ..self })
    }
}

/// The running answer of a query: batches as they are produced, cut off at the deadline.
pub struct QueryStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    memory_limit: usize,
    finished: bool,
}

impl QueryStream {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Every batch of the answer.
    pub async fn collect(mut self) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next().await {
            batches.push(batch?);
        }
        Ok(batches)
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            // Dropping the inner stream cancels the plan's tasks.
            self.finished = true;
            return Poll::Ready(Some(Err(QueryError::Timeout(self.timeout))));
        }
        let limit = self.memory_limit;
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                Poll::Ready(Some(Err(QueryError::from_datafusion(e, limit))))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            other => other.map(|o| o.map(|r| r.map_err(|e| QueryError::from_datafusion(e, limit)))),
        }
    }
}

/// Shared by every query of a process; cheap to clone.
#[derive(Clone)]
pub struct QueryEngine {
    base: SessionContext,
    options: Arc<QueryOptions>,
    rules: Arc<Vec<Rule>>,
}

impl QueryEngine {
    pub async fn new(options: QueryOptions) -> Result<QueryEngine> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("idtrail", "public")
            .with_create_default_catalog_and_schema(true);
        let execution = &mut config.options_mut().execution;
        // Late materialisation: point lookups (a credential, a trace) decode only the rows that
        // pass the filter, after bloom filters and the page index have skipped what they can.
        execution.parquet.pushdown_filters = true;
        execution.parquet.reorder_filters = true;
        execution.collect_statistics = true;
        let runtime = RuntimeEnvBuilder::new()
            // No list cache: a file published a moment ago is in the next query.
            .with_object_list_cache_limit(0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| QueryError::storage("building the query runtime", e))?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let base = SessionContext::new_with_state(state);
        base.add_optimizer_rule(Arc::new(crate::partitions::TimePartitionPruning));
        let owners = Arc::new(DeclaredFiles::new(
            DeclaredKind::Owners,
            options.owners_files.clone(),
        ));
        let grants = Arc::new(DeclaredFiles::new(
            DeclaredKind::Grants,
            options.grants_files.clone(),
        ));
        // Bad declared files are reported now rather than at the first query that reads them.
        owners.load()?;
        grants.load()?;
        let rules = findings::load_rules(&options.rules_dirs)?;
        catalog::register_all(&base, &options.data_dir, owners, grants, &rules).await?;
        Ok(QueryEngine {
            base,
            options: Arc::new(options),
            rules: Arc::new(rules),
        })
    }

    pub fn options(&self) -> &QueryOptions {
        &self.options
    }

    /// An engine whose queries also see a table `name` holding `batches`, in front of the
    /// catalog's own tables, with the same options and caches. The table stays private to it:
    /// an incident report materialises its scope once as `scoped` and runs each section over it.
    pub fn with_batches(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<QueryEngine> {
        self.with_tables(vec![(
            name.to_string(),
            memory_table(name, schema, batches)?,
        )])
    }

    /// An engine in which `table` holds only `batches` (rows of that table, with its columns),
    /// and the views of [`views::VIEWS`](crate::views::VIEWS) are planned again over them; every
    /// other table, function and cache is this engine's. An incident report copies every
    /// revision of the chains in its scope once, and `chains_latest`, `chains_attributed` and
    /// the rules that judge one chain then read that copy instead of every chains file: the
    /// same SQL, over the rows it would have kept. `findings`, `detection_rules` and the table
    /// functions still read the store.
    pub async fn with_table_rows(
        &self,
        table: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<QueryEngine> {
        let mut tables = vec![(table.to_string(), memory_table(table, schema, batches)?)];
        // Views are planned in dependency order, each over the copy and the views before it.
        for (name, sql) in crate::views::VIEWS {
            let ctx = crate::overlay::with_tables(&self.base, tables.clone())?;
            let plan = ctx
                .state()
                .create_logical_plan(sql)
                .await
                .map_err(|e| QueryError::storage(format!("planning view {name} again"), e))?;
            let view = datafusion::catalog::view::ViewTable::new(plan, Some(sql.to_string()));
            tables.push((name.to_string(), Arc::new(view)));
        }
        self.with_tables(tables)
    }

    /// This engine with `tables` in front of its catalog's.
    fn with_tables(&self, tables: Vec<(String, Arc<dyn TableProvider>)>) -> Result<QueryEngine> {
        Ok(QueryEngine {
            base: crate::overlay::with_tables(&self.base, tables)?,
            options: self.options.clone(),
            rules: self.rules.clone(),
        })
    }

    /// The detection rules behind the `findings` view, most severe first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Plans `sql` (one statement; `$1` or `?` placeholders allowed) and refuses anything that
    /// is not read-only.
    pub async fn prepare(&self, sql: &str) -> Result<PreparedQuery> {
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let ctx = self.query_context()?;
        let sql = positional_placeholders(sql);
        let state = ctx.state();
        let planning = state.create_logical_plan(&sql);
        let plan = match tokio::time::timeout_at(deadline, planning).await {
            Err(_) => return Err(QueryError::Timeout(self.options.timeout)),
            Ok(plan) => {
                plan.map_err(|e| QueryError::from_datafusion(e, self.options.memory_limit_bytes))?
            }
        };
        read_only()
            .verify_plan(&plan)
            .map_err(|_| QueryError::ReadOnly(statement_kind(&plan)))?;
        Ok(PreparedQuery {
            plan,
            ctx,
            deadline,
        })
    }

    /// Binds `params` to `$1, $2, …` and starts the query.
    pub async fn execute(
        &self,
        query: PreparedQuery,
        params: Vec<ScalarValue>,
    ) -> Result<QueryStream> {
        let limit = self.options.memory_limit_bytes;
        let query = query.bind(params)?;
        let plan = query.plan;
        let starting = async {
            let frame = query.ctx.execute_logical_plan(plan).await?;
            frame.execute_stream().await
        };
        let inner = match tokio::time::timeout_at(query.deadline, starting).await {
            Err(_) => return Err(QueryError::Timeout(self.options.timeout)),
            Ok(stream) => stream.map_err(|e| QueryError::from_datafusion(e, limit))?,
        };
        Ok(QueryStream {
            schema: inner.schema(),
            inner,
            deadline: Box::pin(tokio::time::sleep_until(query.deadline)),
            timeout: self.options.timeout,
            memory_limit: limit,
            finished: false,
        })
    }

    /// Plans, binds and runs `sql`, returning the whole answer.
    pub async fn sql(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let prepared = self.prepare(sql).await?;
        let stream = self.execute(prepared, params).await?;
        let schema = stream.schema();
        Ok((schema, stream.collect().await?))
    }

    /// A session sharing the catalog and caches, with a memory pool of its own.
    fn query_context(&self) -> Result<SessionContext> {
        let base_runtime = self.base.runtime_env();
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(self.options.memory_limit_bytes),
            std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN),
        );
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: Arc::new(pool),
            disk_manager: base_runtime.disk_manager.clone(),
            cache_manager: base_runtime.cache_manager.clone(),
            object_store_registry: base_runtime.object_store_registry.clone(),
        });
        let state = SessionStateBuilder::new_from_existing(self.base.state())
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

/// `batches` as the table `name` (for error messages).
fn memory_table(
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Arc<dyn TableProvider>> {
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
        .map_err(|e| QueryError::storage(format!("holding {name}"), e))?;
    Ok(Arc::new(table))
}

pub(crate) fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// How the refused statement is named in the error.
fn statement_kind(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Ddl(ddl) => ddl.name().to_string(),
        LogicalPlan::Dml(dml) => dml.op.to_string(),
        LogicalPlan::Copy(_) => "COPY".to_string(),
        LogicalPlan::Statement(statement) => statement.name().to_string(),
        _ => "a statement that changes state".to_string(),
    }
}

/// JDBC and ADBC clients write `?` placeholders; DataFusion numbers them `$1, $2, …`. Tokenising
/// (rather than replacing characters) leaves a `?` inside a string literal alone.
pub fn positional_placeholders(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return sql.to_string();
    };
    let mut next = 0;
    tokens
        .into_iter()
        .map(|token| match token {
            Token::Placeholder(p) if p == "?" => {
                next += 1;
                format!("${next}")
            }
            other => other.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_placeholders_outside_literals() {
        assert_eq!(
            positional_placeholders("SELECT * FROM spans WHERE a = ? AND b = '?' AND c = ?"),
            "SELECT * FROM spans WHERE a = $1 AND b = '?' AND c = $2"
        );
        assert_eq!(positional_placeholders("SELECT 1"), "SELECT 1");
    }
}
