//! Lineage table functions:
//!
//! - `blast_radius(kind, id [, max_depth [, since]])`: what an identity reached (observed, via
//!   edges last seen at or after `since`) and could reach (potential, via grants).
//!   Unused privilege: `WHERE reach = 'potential'`.
//! - `upstream(kind, id [, max_depth])`: who stands behind an identity, with declared owners.
//! - `chain_of(trace_id, span_id)`: who stands behind one action.
//!
//! Arguments are constant expressions (literals, `now() - INTERVAL '1 day'`, …), evaluated when
//! the query is planned; `max_depth` defaults to 6.

mod chain_of;
mod graph;
mod graph_files;
mod reach;

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, Expr, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;

pub use graph::{Graph, GraphCache};

use crate::declared::DeclaredFiles;
use crate::error::QueryError;

/// Default `max_depth` of `blast_radius` and `upstream`.
pub const DEFAULT_MAX_DEPTH: u32 = 6;

/// What the lineage functions read.
pub struct LineageSources {
    pub store: crate::store::TableStore,
    pub spans: Arc<dyn TableProvider>,
    pub owners: Arc<DeclaredFiles>,
    pub grants: Arc<DeclaredFiles>,
}

struct Shared {
    graph: GraphCache,
    spans: Arc<dyn TableProvider>,
    owners: Arc<DeclaredFiles>,
    grants: Arc<DeclaredFiles>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineageSources").finish_non_exhaustive()
    }
}

pub fn register(ctx: &SessionContext, sources: LineageSources) {
    let shared = Arc::new(Shared {
        graph: GraphCache::new(sources.store),
        spans: sources.spans,
        owners: sources.owners,
        grants: sources.grants,
    });
    for function in [Function::BlastRadius, Function::Upstream, Function::ChainOf] {
        ctx.register_udtf(
            function.name(),
            Arc::new(LineageFunction {
                function,
                shared: shared.clone(),
            }),
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Function {
    BlastRadius,
    Upstream,
    ChainOf,
}

impl Function {
    fn name(self) -> &'static str {
        match self {
            Function::BlastRadius => "blast_radius",
            Function::Upstream => "upstream",
            Function::ChainOf => "chain_of",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Function::BlastRadius => "blast_radius(kind, id [, max_depth [, since]])",
            Function::Upstream => "upstream(kind, id [, max_depth])",
            Function::ChainOf => "chain_of(trace_id, span_id)",
        }
    }

    fn schema(self) -> SchemaRef {
        match self {
            Function::BlastRadius => reach::blast_radius_schema(),
            Function::Upstream => reach::upstream_schema(),
            Function::ChainOf => chain_of::schema(),
        }
    }
}

#[derive(Debug)]
struct LineageFunction {
    function: Function,
    shared: Arc<Shared>,
}

/// The evaluated arguments of one call.
#[derive(Debug, Clone)]
struct Call {
    first: String,
    second: String,
    max_depth: u32,
    since: Option<i64>,
}

impl TableFunctionImpl for LineageFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let usage = self.function.usage();
        let values = args
            .exprs()
            .iter()
            .map(|e| constant(args.session(), e, usage))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let max_args = match self.function {
            Function::BlastRadius => 4,
            Function::Upstream => 3,
            Function::ChainOf => 2,
        };
        if values.len() < 2 || values.len() > max_args {
            return plan_error(format!(
                "{usage}: expected 2 to {max_args} arguments, got {}",
                values.len()
            ));
        }
        let text = |v: &ScalarValue, what: &str| match v {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Ok(s.clone()),
            other => plan_error(format!("{usage}: {what} must be a string, got {other}")),
        };
        let max_depth = match values.get(2) {
            None | Some(ScalarValue::Null) => DEFAULT_MAX_DEPTH,
            Some(v) => match v.cast_to(&arrow::datatypes::DataType::Int64) {
                Ok(ScalarValue::Int64(Some(d))) if (0..=64).contains(&d) => d as u32,
                _ => {
                    return plan_error(format!(
                        "{usage}: max_depth must be an integer from 0 to 64"
                    ));
                }
            },
        };
        let since = match values.get(3) {
            None | Some(ScalarValue::Null) => None,
            Some(v) => Some(timestamp_nanos(v).ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "{usage}: since must be a timestamp, e.g. TIMESTAMP '2026-11-22T10:00:00Z'"
                ))
            })?),
        };
        let call = Call {
            first: text(&values[0], "the first argument")?,
            second: text(&values[1], "the second argument")?,
            max_depth,
            since,
        };
        Ok(Arc::new(LineageTable {
            function: self.function,
            call,
            shared: self.shared.clone(),
        }))
    }
}

fn plan_error<T>(message: String) -> datafusion::error::Result<T> {
    Err(DataFusionError::Plan(message))
}

/// Evaluates a constant argument expression (a literal, a cast, `now() - INTERVAL …`).
fn constant(
    session: &dyn Session,
    expr: &Expr,
    usage: &str,
) -> datafusion::error::Result<ScalarValue> {
    let physical = session
        .create_physical_expr(expr.clone(), &DFSchema::empty())
        .map_err(|e| DataFusionError::Plan(format!("{usage}: arguments must be constants: {e}")))?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    Ok(match physical.evaluate(&one_row)? {
        ColumnarValue::Scalar(value) => value,
        ColumnarValue::Array(array) => ScalarValue::try_from_array(&array, 0)?,
    })
}

fn timestamp_nanos(value: &ScalarValue) -> Option<i64> {
    let ty = arrow::datatypes::DataType::Timestamp(
        arrow::datatypes::TimeUnit::Nanosecond,
        Some("UTC".into()),
    );
    match value.cast_to(&ty).ok()? {
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(t),
        _ => None,
    }
}

/// `columns` of `table` (rows passing `filter`), planned and optimised like a query so that the
/// filter reaches the Parquet scan and the files are read in parallel from whichever store
/// holds them.
pub(crate) async fn scan_columns(
    session: &dyn Session,
    table: &Arc<dyn TableProvider>,
    name: &str,
    columns: &[&str],
    filter: Option<Expr>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let schema = table.schema();
    let projection: Vec<usize> = columns
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    let storage = |e: DataFusionError| QueryError::storage(format!("reading {name}"), e);
    let mut plan =
        LogicalPlanBuilder::scan(name, provider_as_source(table.clone()), Some(projection))
            .map_err(storage)?;
    if let Some(filter) = filter {
        plan = plan.filter(filter).map_err(storage)?;
    }
    let plan = plan.build().map_err(storage)?;
    let plan = session.create_physical_plan(&plan).await.map_err(storage)?;
    collect(plan, session.task_ctx()).await.map_err(storage)
}

/// One call's answer, computed when the plan is executed.
#[derive(Debug)]
struct LineageTable {
    function: Function,
    call: Call,
    shared: Arc<Shared>,
}

impl LineageTable {
    async fn compute(&self, session: &dyn Session) -> Result<RecordBatch, QueryError> {
        let shared = self.shared.clone();
        let call = self.call.clone();
        let function = self.function;
        let grants = shared.grants.load()?;
        let needs_scopes = matches!(function, Function::BlastRadius)
            && grants.grants.iter().any(|g| g.subject_kind == "scope");
        let graph = shared.graph.get(needs_scopes).await?;
        match function {
            Function::BlastRadius => reach::blast_radius(
                &graph,
                &grants,
                (&call.first, &call.second),
                call.max_depth,
                call.since,
            ),
            Function::Upstream => reach::upstream(
                &graph,
                &*shared.owners.load()?,
                (&call.first, &call.second),
                call.max_depth,
                now_nanos(),
            ),
            Function::ChainOf => {
                chain_of::chain_of(
                    session,
                    &shared.spans,
                    &graph,
                    &*shared.owners.load()?,
                    &call.first,
                    &call.second,
                )
                .await
            }
        }
    }
}

fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

#[async_trait]
impl TableProvider for LineageTable {
    fn schema(&self) -> SchemaRef {
        self.function.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batch = self
            .compute(state)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let exec =
            MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}
