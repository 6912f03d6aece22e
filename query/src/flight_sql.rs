//! Arrow Flight SQL inside `idtrail serve` (`query.flight_sql_address`), for ADBC, the Flight
//! SQL JDBC driver (DBeaver), Grafana and any other Flight SQL client.
//!
//! - **Statements**: `GetFlightInfo(CommandStatementQuery)` plans the SQL and answers with its
//!   schema and a ticket carrying the SQL; `DoGet` on the ticket runs it and streams the batches
//!   as they are produced.
//! - **Prepared statements** with bind parameters (`?` or `$1`), which is how ADBC runs
//!   `cursor.execute(sql, parameters)`: the `CreatePreparedStatement` action plans the SQL and
//!   answers the dataset and parameter schemas; `DoPut` binds one row of parameters;
//!   `GetFlightInfo`/`DoGet` run it with them; `ClosePreparedStatement` forgets it. Open
//!   statements live in a bounded table: past [`MAX_PREPARED_STATEMENTS`] or
//!   [`MAX_PREPARED_BYTES`] the least recently used is forgotten.
//! - **Metadata**: catalogs, schemas, tables (with their Arrow schemas), table types, SQL info
//!   and type info, read from the engine's `information_schema`. Parquet tables have no keys,
//!   so primary and foreign key requests answer with no rows.
//! - **Read-only**: updates, bulk ingestion and Substrait plans are refused as
//!   [`QueryError::ReadOnly`]; SQL that would change anything is refused by the engine.
//! - **Auth**: with `query.auth_keys_file`, every call, the handshake included, must carry
//!   `authorization: Bearer <key>`. One interceptor checks it before any method runs; the
//!   handshake then hands the same bearer header back, so clients that handshake first (and
//!   keep the token it returns) work unchanged. Basic credentials are refused.
//!
//! Every error is a [`QueryError`], which becomes a gRPC status in one place
//! ([`QueryError::grpc_status`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionCreatePreparedSubstraitPlanRequest,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult, Nullable,
    ProstMessageExt, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity,
    SqlSupportedTransaction, TicketStatementQuery, XdbcDataType, XdbcDatetimeSubcode,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use idtrail_collector::listener::{Incoming, Peer};

use crate::auth::BearerKeys;
use crate::engine::{PreparedQuery, QueryEngine};
use crate::error::{QueryError, Result};

/// Open prepared statements kept at once; past it the least recently used is forgotten.
pub const MAX_PREPARED_STATEMENTS: usize = 1024;
/// SQL text and bound parameters kept at once, in bytes; past it the least recently used
/// statements are forgotten.
pub const MAX_PREPARED_BYTES: usize = 64 << 20;

type DoGetStream = <FlightSqlServer as FlightService>::DoGetStream;
type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

/// Serves Flight SQL on `listener` until `shutdown` resolves (in-flight calls are let finish).
pub async fn serve(
    incoming: Incoming,
    engine: QueryEngine,
    auth: Option<Arc<BearerKeys>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = FlightServiceServer::with_interceptor(
        FlightSqlServer::new(engine, auth.is_some()),
        Authenticator { keys: auth },
    );
    Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Checks the bearer key of every call, before the call's method runs.
#[derive(Clone)]
struct Authenticator {
    keys: Option<Arc<BearerKeys>>,
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match crate::auth::authenticate(
            self.keys.as_deref(),
            authorization,
            Peer::of(request.extensions()),
        ) {
            Ok(()) => Ok(request),
            Err(e) => {
                tracing::debug!(error = %e, "Flight SQL call refused");
                Err(e.grpc_status())
            }
        }
    }
}

/// One open prepared statement: its SQL (planned again at each use, so it sees the files
/// published since) and the parameters last bound to it.
struct OpenStatement {
    sql: Arc<str>,
    params: Vec<ScalarValue>,
    last_used: u64,
}

impl OpenStatement {
    fn bytes(&self) -> usize {
        self.sql.len() + self.params.iter().map(ScalarValue::size).sum::<usize>()
    }
}

#[derive(Default)]
struct OpenStatements {
    by_handle: HashMap<Bytes, OpenStatement>,
    bytes: usize,
    clock: u64,
}

impl OpenStatements {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert(&mut self, handle: Bytes, sql: &str) {
        let last_used = self.tick();
        let statement = OpenStatement {
            sql: Arc::from(sql),
            params: Vec::new(),
            last_used,
        };
        self.bytes += statement.bytes();
        self.by_handle.insert(handle.clone(), statement);
        self.evict_beyond_bounds(&handle);
    }

    /// The statement's SQL and bound parameters.
    fn get(&mut self, handle: &[u8]) -> Result<(Arc<str>, Vec<ScalarValue>)> {
        let now = self.tick();
        let statement = self.by_handle.get_mut(handle).ok_or_else(unknown_handle)?;
        statement.last_used = now;
        Ok((statement.sql.clone(), statement.params.clone()))
    }

    fn bind(&mut self, handle: &Bytes, params: Vec<ScalarValue>) -> Result<()> {
        let now = self.tick();
        let statement = self
            .by_handle
            .get_mut(handle.as_ref())
            .ok_or_else(unknown_handle)?;
        let before = statement.bytes();
        statement.params = params;
        statement.last_used = now;
        let after = statement.bytes();
        self.bytes = self.bytes + after - before;
        self.evict_beyond_bounds(handle);
        Ok(())
    }

    fn remove(&mut self, handle: &[u8]) {
        if let Some(statement) = self.by_handle.remove(handle) {
            self.bytes -= statement.bytes();
        }
    }

    /// Forgets the least recently used statements (never `keep`) until both bounds hold.
    fn evict_beyond_bounds(&mut self, keep: &Bytes) {
        while self.by_handle.len() > MAX_PREPARED_STATEMENTS || self.bytes > MAX_PREPARED_BYTES {
            let oldest = self
                .by_handle
                .iter()
                .filter(|(handle, _)| *handle != keep)
                .min_by_key(|(_, statement)| statement.last_used)
                .map(|(handle, _)| handle.clone());
            let Some(oldest) = oldest else { break };
            self.remove(&oldest);
            tracing::debug!("Flight SQL: forgot the least recently used prepared statement");
        }
    }
}

fn unknown_handle() -> QueryError {
    QueryError::BadRequest(format!(
        "unknown prepared statement handle: it was closed, or forgotten as the least recently \
         used of more than {MAX_PREPARED_STATEMENTS} open statements; prepare it again"
    ))
}

struct FlightSqlServer {
    engine: QueryEngine,
    auth_enabled: bool,
    statements: Mutex<OpenStatements>,
}

impl FlightSqlServer {
    fn new(engine: QueryEngine, auth_enabled: bool) -> FlightSqlServer {
        FlightSqlServer {
            engine,
            auth_enabled,
            statements: Mutex::new(OpenStatements::default()),
        }
    }

    fn statements(&self) -> MutexGuard<'_, OpenStatements> {
        // Nothing panics while holding the lock; if something did, the table is still usable.
        self.statements.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plans `sql` and binds `params`, checking that their number matches the placeholders.
    async fn plan(&self, sql: &str, params: Vec<ScalarValue>) -> Result<PreparedQuery> {
        let prepared = self.engine.prepare(sql).await?;
        let expected = prepared.parameter_types()?.len();
        if expected != params.len() {
            return Err(if params.is_empty() {
                QueryError::BadRequest(format!(
                    "the statement has {expected} parameter(s) and none are bound: prepare it \
                     and bind one row of values"
                ))
            } else {
                QueryError::BadRequest(format!(
                    "the statement has {expected} parameter(s) but {} value(s) are bound",
                    params.len()
                ))
            });
        }
        prepared.bind(params)
    }

    /// Runs a planned query and streams its answer as Flight data, in the schema its
    /// `FlightInfo` announced (see [`conform`]).
    async fn run(&self, prepared: PreparedQuery) -> Result<DoGetStream> {
        let schema = Arc::new(flight_schema(&prepared.schema()));
        let stream = self.engine.execute(prepared, Vec::new()).await?;
        let announced = schema.clone();
        let batches = stream
            .and_then(move |batch| futures::future::ready(conform(&announced, batch)))
            .map_err(|e| FlightError::Tonic(Box::new(e.grpc_status())));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Box::pin(data))
    }

    /// The rows of a query over `information_schema`, every column as text.
    async fn text_rows(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Vec<Vec<Option<String>>>> {
        let (_, batches) = self.engine.sql(sql, params).await?;
        let mut rows = Vec::new();
        for batch in &batches {
            let columns = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::cast(c, &DataType::Utf8))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()
                .map_err(arrow_error("reading information_schema"))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    columns
                        .iter()
                        .map(|c| {
                            let c = c.as_string::<i32>();
                            c.is_valid(row).then(|| c.value(row).to_string())
                        })
                        .collect(),
                );
            }
        }
        Ok(rows)
    }

    async fn tables_batch(&self, command: CommandGetTables) -> Result<RecordBatch> {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        let mut filter = |condition: &str, value: String, params: &mut Vec<ScalarValue>| {
            params.push(ScalarValue::Utf8(Some(value)));
            conditions.push(condition.replace('?', &format!("${}", params.len())));
        };
        if let Some(catalog) = &command.catalog {
            filter("table_catalog = ?", catalog.clone(), &mut params);
        }
        if let Some(pattern) = &command.db_schema_filter_pattern {
            filter("table_schema LIKE ?", pattern.clone(), &mut params);
        }
        if let Some(pattern) = &command.table_name_filter_pattern {
            filter("table_name LIKE ?", pattern.clone(), &mut params);
        }
        let mut sql = "SELECT table_catalog, table_schema, table_name, table_type \
                       FROM information_schema.tables"
            .to_string();
        if !conditions.is_empty() {
            sql = format!("{sql} WHERE {}", conditions.join(" AND "));
        }
        let include_schema = command.include_schema;
        let table_types = command.table_types.clone();
        let rows = self.text_rows(&sql, params).await?;
        let mut builder = command.into_builder();
        for row in rows {
            let [Some(catalog), Some(schema), Some(table), Some(kind)] = &row[..] else {
                continue;
            };
            if !table_types.is_empty() && !table_types.contains(kind) {
                continue;
            }
            let arrow_schema = if include_schema {
                self.table_schema(catalog, schema, table).await
            } else {
                Schema::empty()
            };
            builder
                .append(catalog, schema, table, kind, &arrow_schema)
                .map_err(arrow_error("listing tables"))?;
        }
        builder.build().map_err(arrow_error("listing tables"))
    }

    /// The Arrow schema of one table or view, as a query over it would answer.
    async fn table_schema(&self, catalog: &str, schema: &str, table: &str) -> Schema {
        let sql = format!(
            "SELECT * FROM {}.{}.{}",
            quote(catalog),
            quote(schema),
            quote(table)
        );
        match self.engine.prepare(&sql).await {
            Ok(prepared) => flight_schema(&prepared.schema()),
            Err(e) => {
                // One broken view must not hide every other table from a client's navigator.
                tracing::warn!(error = %e, table, "Flight SQL: cannot plan a table to list its columns");
                Schema::empty()
            }
        }
    }

    async fn db_schemas_batch(&self, command: CommandGetDbSchemas) -> Result<RecordBatch> {
        let rows = self
            .text_rows(
                "SELECT catalog_name, schema_name FROM information_schema.schemata",
                Vec::new(),
            )
            .await?;
        // The builder applies the catalog and pattern filters.
        let mut builder = command.into_builder();
        for row in rows {
            if let [Some(catalog), Some(schema)] = &row[..] {
                builder.append(catalog, schema);
            }
        }
        builder.build().map_err(arrow_error("listing schemas"))
    }

    async fn catalogs_batch(&self, command: CommandGetCatalogs) -> Result<RecordBatch> {
        let rows = self
            .text_rows(
                "SELECT DISTINCT catalog_name FROM information_schema.schemata",
                Vec::new(),
            )
            .await?;
        let mut builder = command.into_builder();
        for row in rows {
            if let [Some(catalog)] = &row[..] {
                builder.append(catalog);
            }
        }
        builder.build().map_err(arrow_error("listing catalogs"))
    }

    async fn table_types_batch(&self, command: CommandGetTableTypes) -> Result<RecordBatch> {
        let rows = self
            .text_rows(
                "SELECT DISTINCT table_type FROM information_schema.tables",
                Vec::new(),
            )
            .await?;
        let mut builder = command.into_builder();
        for row in rows {
            if let [Some(kind)] = &row[..] {
                builder.append(kind);
            }
        }
        builder.build().map_err(arrow_error("listing table types"))
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    /// The interceptor has already checked the bearer key when keys are configured (Basic
    /// credentials are refused there); the handshake hands the bearer header back so clients
    /// that keep the handshake's token go on sending it.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let authorization = request.metadata().get("authorization").cloned();
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::new(),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        if let (true, Some(authorization)) = (self.auth_enabled, authorization) {
            response
                .metadata_mut()
                .insert("authorization", authorization);
        }
        Ok(response)
    }

    // Statements.

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = self.plan(&query.query, Vec::new()).await?;
        let ticket = TicketStatementQuery {
            statement_handle: Bytes::from(query.query.into_bytes()),
        };
        let info = flight_info(&prepared.schema(), &ticket, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = std::str::from_utf8(&ticket.statement_handle)
            .map_err(|_| QueryError::BadRequest("the ticket's SQL is not UTF-8".into()))?;
        let prepared = self.plan(sql, Vec::new()).await?;
        Ok(Response::new(self.run(prepared).await?))
    }

    // Prepared statements.

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let prepared = self.engine.prepare(&query.query).await?;
        let parameters: Vec<Field> = prepared
            .parameter_types()?
            .into_iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("${}", i + 1), t.unwrap_or(DataType::Null), true))
            .collect();
        let dataset_schema = ipc_schema(&flight_schema(&prepared.schema()))?;
        let parameter_schema = ipc_schema(&Schema::new(parameters))?;
        let handle = Bytes::from(uuid::Uuid::new_v4().to_string().into_bytes());
        self.statements().insert(handle.clone(), &query.query);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle;
        // Fail fast on an unknown handle, before reading the parameters.
        self.statements().get(&handle)?;
        let params = read_parameters(request.into_inner()).await?;
        self.statements().bind(&handle, params)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, params) = self.statements().get(&query.prepared_statement_handle)?;
        let prepared = self.plan(&sql, params).await?;
        let info = flight_info(&prepared.schema(), &query, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (sql, params) = self.statements().get(&query.prepared_statement_handle)?;
        let prepared = self.plan(&sql, params).await?;
        Ok(Response::new(self.run(prepared).await?))
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Closing is idempotent: a statement already forgotten is closed too.
        self.statements().remove(&query.prepared_statement_handle);
        Ok(())
    }

    // Refused: idtrail's SQL is read-only.

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        // Planning names the refused statement (INSERT, CREATE TABLE, …) when it is one.
        self.engine.prepare(&command.query).await?;
        Err(QueryError::ReadOnly("executing an update".into()).into())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(QueryError::ReadOnly("executing a prepared update".into()).into())
    }

    async fn do_put_statement_ingest(
        &self,
        _command: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(QueryError::ReadOnly("bulk ingestion".into()).into())
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(substrait_refused().into())
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(substrait_refused().into())
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(substrait_refused().into())
    }

    // Metadata.

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(
            &schema,
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(batch_stream(
            self.catalogs_batch(query).await?,
        )))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(
            &schema,
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(batch_stream(
            self.db_schemas_batch(query).await?,
        )))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(flight_info(
            &schema,
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(batch_stream(self.tables_batch(query).await?)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Ok(Response::new(flight_info(
            &schema,
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(batch_stream(
            self.table_types_batch(query).await?,
        )))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = sql_info()?;
        let schema = query.clone().into_builder(&info).schema();
        Ok(Response::new(flight_info(
            &schema,
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let info = sql_info()?;
        let batch = query
            .into_builder(&info)
            .build()
            .map_err(arrow_error("answering SQL info"))?;
        Ok(Response::new(batch_stream(batch)))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = xdbc_type_info()?;
        let schema = query.into_builder(&info).schema();
        Ok(Response::new(flight_info(
            &schema,
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let info = xdbc_type_info()?;
        let batch = query
            .into_builder(&info)
            .build()
            .map_err(arrow_error("answering type info"))?;
        Ok(Response::new(batch_stream(batch)))
    }

    // Keys: Parquet tables have none, so these answer with no rows (clients such as DBeaver
    // ask for them whenever a table is opened).

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(flight_info(
            &primary_keys_schema(),
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(empty_stream(primary_keys_schema())))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(flight_info(
            &foreign_keys_schema(),
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(empty_stream(foreign_keys_schema())))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(flight_info(
            &foreign_keys_schema(),
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(empty_stream(foreign_keys_schema())))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(flight_info(
            &foreign_keys_schema(),
            &query,
            request.into_inner(),
        )?))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(Response::new(empty_stream(foreign_keys_schema())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn substrait_refused() -> QueryError {
    QueryError::ReadOnly("a Substrait plan (send SQL instead)".into())
}

/// Reads the one row of parameters a client binds with `DoPut`.
async fn read_parameters(stream: PeekableFlightDataStream) -> Result<Vec<ScalarValue>> {
    // Some clients open the stream with a message carrying only the descriptor.
    let data = stream
        .map_err(FlightError::from)
        .try_filter(|data| futures::future::ready(!data.data_header.is_empty()));
    let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
    let mut row: Option<RecordBatch> = None;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| match e {
            FlightError::Tonic(status) => {
                QueryError::BadRequest(format!("reading the parameters: {}", status.message()))
            }
            other => QueryError::BadRequest(format!("reading the parameters: {other}")),
        })?;
        let rows = row.as_ref().map_or(0, RecordBatch::num_rows) + batch.num_rows();
        if rows > 1 {
            return Err(QueryError::BadRequest(format!(
                "{rows} or more rows of parameters were bound: a query runs with one row of \
                 parameters at a time (bind one row, or run the statement once per row)"
            )));
        }
        if batch.num_rows() == 1 {
            row = Some(batch);
        }
    }
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    row.columns()
        .iter()
        .map(|column| {
            ScalarValue::try_from_array(column, 0)
                .map_err(|e| QueryError::BadRequest(format!("reading a parameter: {e}")))
        })
        .collect()
}

/// Gives `batch` the schema announced for the answer. DataFusion's physical plan can disagree
/// with the logical plan the schema was announced from on nullability or metadata (`min` over
/// a non-null column is nullable in one and not in the other), and clients such as ADBC refuse
/// an answer whose schema differs from the announced one. A column whose type differs (a
/// dictionary sent as its values) is cast.
fn conform(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    let mismatch = |e: &dyn std::fmt::Display| {
        QueryError::Execution(format!(
            "the answer does not fit the schema announced for it: {e}"
        ))
    };
    if batch.num_columns() != schema.fields().len() {
        return Err(mismatch(&format!(
            "{} columns instead of {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow::compute::cast(column, field.data_type()).map_err(|e| mismatch(&e))
            }
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(|e| mismatch(&e))
}

/// A `FlightInfo` with one endpoint whose ticket is `ticket`, served by this server.
fn flight_info(
    schema: &Schema,
    ticket: &impl ProstMessageExt,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo> {
    let ticket = Ticket::new(ticket.as_any().encode_to_vec());
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(arrow_error("encoding the schema"))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_total_bytes(-1))
}

fn batch_stream(batch: RecordBatch) -> DoGetStream {
    let schema = batch.schema();
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Box::pin(data)
}

fn empty_stream(schema: SchemaRef) -> DoGetStream {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::empty())
        .map_err(Status::from);
    Box::pin(data)
}

fn ipc_schema(schema: &Schema) -> Result<Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(arrow_error("encoding a schema"))?;
    Ok(bytes)
}

/// Arrow and Flight errors while building an answer: ours, not the client's.
fn arrow_error<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> QueryError {
    move |e| QueryError::Execution(format!("{context}: {e}"))
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The schema as sent: the encoder sends dictionary columns as their values, so the schema
/// announced in a `FlightInfo` says so too.
fn flight_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema.fields().iter().map(|f| flight_field(f)).collect();
    Schema::new(fields).with_metadata(schema.metadata().clone())
}

fn flight_field(field: &Field) -> Field {
    let data_type = match field.data_type() {
        DataType::Dictionary(_, values) => {
            return flight_field(&Field::new(
                field.name(),
                (**values).clone(),
                field.is_nullable(),
            ))
            .with_metadata(field.metadata().clone());
        }
        DataType::List(inner) => DataType::List(Arc::new(flight_field(inner))),
        DataType::LargeList(inner) => DataType::LargeList(Arc::new(flight_field(inner))),
        DataType::FixedSizeList(inner, n) => {
            DataType::FixedSizeList(Arc::new(flight_field(inner)), *n)
        }
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| flight_field(f)).collect())
        }
        DataType::Map(inner, sorted) => DataType::Map(Arc::new(flight_field(inner)), *sorted),
        other => other.clone(),
    };
    field.clone().with_data_type(data_type)
}

/// `CommandGetPrimaryKeys`' answer schema, from the Flight SQL specification.
fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("key_name", DataType::Utf8, true),
    ]))
}

/// The answer schema of `CommandGetExportedKeys`, `CommandGetImportedKeys` and
/// `CommandGetCrossReference`, from the Flight SQL specification.
fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// What the server tells clients about itself (JDBC `DatabaseMetaData`, ADBC `GetInfo`).
fn sql_info() -> Result<SqlInfoData> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "idtrail");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow columnar format version (decimal32/64 and view types included).
    info.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    info.append(SqlInfo::FlightSqlServerCancel, false);
    info.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    info.append(SqlInfo::SqlDdlCatalog, false);
    info.append(SqlInfo::SqlDdlSchema, false);
    info.append(SqlInfo::SqlDdlTable, false);
    // Unquoted identifiers are folded to lower case; quoted ones are kept as written.
    info.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    // Quoted identifiers keep their case and match exactly, which the enum has no value for.
    info.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityUnknown as i32,
    );
    info.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // NULLs sort as the largest value (ASC NULLS LAST, DESC NULLS FIRST).
    info.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    info.append(SqlInfo::SqlSearchStringEscape, "\\");
    info.append(SqlInfo::SqlSupportsColumnAliasing, true);
    info.append(SqlInfo::SqlNullPlusNullIsNull, true);
    info.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    info.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    info.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    info.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    info.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    info.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    info.append(SqlInfo::SqlSchemaTerm, "schema");
    info.append(SqlInfo::SqlCatalogTerm, "catalog");
    info.append(SqlInfo::SqlProcedureTerm, "procedure");
    info.append(SqlInfo::SqlCatalogAtStart, true);
    info.append(SqlInfo::SqlSelectForUpdateSupported, false);
    info.append(SqlInfo::SqlStoredProceduresSupported, false);
    info.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    info.append(SqlInfo::SqlTransactionsSupported, false);
    info.append(SqlInfo::SqlBatchUpdatesSupported, false);
    info.append(SqlInfo::SqlSavepointsSupported, false);
    info.append(SqlInfo::SqlNamedParametersSupported, false);
    info.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    info.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    info.build().map_err(arrow_error("building SQL info"))
}

/// The SQL types a client may use in casts and literals, for JDBC `getTypeInfo`.
fn xdbc_type_info() -> Result<XdbcTypeInfoData> {
    let mut types = XdbcTypeInfoDataBuilder::new();
    let simple = |name: &str, data_type: XdbcDataType, column_size: Option<i32>| XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: false,
        searchable: Searchable::Full,
        unsigned_attribute: None,
        fixed_prec_scale: false,
        auto_increment: None,
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    };
    let numeric = |name: &str, data_type: XdbcDataType, size: i32| XdbcTypeInfo {
        unsigned_attribute: Some(false),
        auto_increment: Some(false),
        num_prec_radix: Some(10),
        ..simple(name, data_type, Some(size))
    };
    let quoted = |name: &str, data_type: XdbcDataType| XdbcTypeInfo {
        literal_prefix: Some("'".into()),
        literal_suffix: Some("'".into()),
        case_sensitive: true,
        ..simple(name, data_type, None)
    };
    types.append(simple("BOOLEAN", XdbcDataType::XdbcBit, Some(1)));
    types.append(numeric("TINYINT", XdbcDataType::XdbcTinyint, 3));
    types.append(numeric("SMALLINT", XdbcDataType::XdbcSmallint, 5));
    types.append(numeric("INTEGER", XdbcDataType::XdbcInteger, 10));
    types.append(numeric("BIGINT", XdbcDataType::XdbcBigint, 19));
    types.append(numeric("REAL", XdbcDataType::XdbcReal, 7));
    types.append(numeric("DOUBLE", XdbcDataType::XdbcDouble, 15));
    types.append(XdbcTypeInfo {
        create_params: Some(vec!["precision".into(), "scale".into()]),
        fixed_prec_scale: true,
        minimum_scale: Some(0),
        maximum_scale: Some(38),
        ..numeric("DECIMAL", XdbcDataType::XdbcDecimal, 38)
    });
    types.append(quoted("VARCHAR", XdbcDataType::XdbcVarchar));
    types.append(XdbcTypeInfo {
        searchable: Searchable::Basic,
        ..simple("BYTEA", XdbcDataType::XdbcVarbinary, None)
    });
    // ODBC's SQL_DATETIME codes: DATE is subcode 1 (spelled "year" in the generated enum).
    types.append(XdbcTypeInfo {
        sql_data_type: XdbcDataType::XdbcDatetime,
        datetime_subcode: Some(XdbcDatetimeSubcode::XdbcSubcodeYear),
        ..quoted("DATE", XdbcDataType::XdbcDate)
    });
    types.append(XdbcTypeInfo {
        sql_data_type: XdbcDataType::XdbcDatetime,
        datetime_subcode: Some(XdbcDatetimeSubcode::XdbcSubcodeTime),
        ..quoted("TIME", XdbcDataType::XdbcTime)
    });
    types.append(XdbcTypeInfo {
        sql_data_type: XdbcDataType::XdbcDatetime,
        datetime_subcode: Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        ..quoted("TIMESTAMP", XdbcDataType::XdbcTimestamp)
    });
    types.build().map_err(arrow_error("building type info"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow::array::{Int64Array, StringArray, UInt32Array};
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use tokio::sync::oneshot;
    use tonic::transport::Channel;

    use super::*;
    use crate::QueryOptions;

    struct TestServer {
        url: String,
        _stop: oneshot::Sender<()>,
        _dir: tempfile::TempDir,
    }

    async fn start(auth: Option<Arc<BearerKeys>>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let engine = QueryEngine::new(QueryOptions {
            data_dir: dir.path().to_path_buf(),
            memory_limit_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            owners_files: vec![],
            grants_files: vec![],
            rules_dirs: Vec::new(),
        })
        .await
        .unwrap();
        let listener =
            idtrail_collector::listener::bind("127.0.0.1:0".parse().unwrap(), None, b"h2")
                .await
                .unwrap();
        let url = format!("http://{}", listener.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, engine, auth, async {
            let _ = stopped.await;
        }));
        TestServer {
            url,
            _stop: stop,
            _dir: dir,
        }
    }

    async fn channel(server: &TestServer) -> Channel {
        tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(server: &TestServer) -> FlightSqlServiceClient<Channel> {
        FlightSqlServiceClient::new(channel(server).await)
    }

    /// Every batch behind `info`, checking they have the schema `info` announced.
    async fn fetch(
        client: &mut FlightSqlServiceClient<Channel>,
        info: FlightInfo,
    ) -> Vec<RecordBatch> {
        let announced = info.clone().try_decode_schema().unwrap();
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
            let got: Vec<RecordBatch> = stream.try_collect().await.unwrap();
            for batch in &got {
                assert_eq!(batch.schema().as_ref(), &announced);
            }
            batches.extend(got);
        }
        batches
    }

    fn int64(batches: &[RecordBatch], column: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name(column).unwrap();
                c.as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(b.column_by_name(column).unwrap(), &DataType::Utf8)
                    .unwrap();
                let c = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
                (0..c.len()).map(move |i| c.value(i).to_string())
            })
            .collect()
    }

    fn one_row(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[tokio::test]
    async fn statements_and_prepared_statements() {
        let server = start(None).await;
        let mut client = client(&server).await;

        let info = client
            .execute("SELECT 1 AS one, 'x' AS s".into(), None)
            .await
            .unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(int64(&batches, "one"), vec![1]);
        assert_eq!(strings(&batches, "s"), vec!["x"]);

        let info = client
            .execute("SELECT count(*) AS n FROM spans".into(), None)
            .await
            .unwrap();
        assert_eq!(int64(&fetch(&mut client, info).await, "n"), vec![0]);

        // The logical plan says `min` over a non-null column is nullable, the physical plan
        // says it is not: the answer keeps the announced schema (`fetch` checks).
        let info = client
            .execute("SELECT min(start_time) AS first FROM spans".into(), None)
            .await
            .unwrap();
        let batches = fetch(&mut client, info).await;
        assert!(batches[0].schema().field(0).is_nullable());
        assert_eq!(batches[0].column(0).null_count(), 1);

        // A typed parameter (from the column it is compared with).
        let mut prepared = client
            .prepare(
                "SELECT count(*) AS n FROM spans WHERE service_name = ?".into(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 1);
        assert_eq!(prepared.dataset_schema().unwrap().field(0).name(), "n");
        prepared
            .set_parameters(one_row(vec![(
                "0",
                Arc::new(StringArray::from(vec!["svc"])) as ArrayRef,
            )]))
            .unwrap();
        let info = prepared.execute().await.unwrap();
        assert_eq!(int64(&fetch(&mut client, info).await, "n"), vec![0]);

        // Untyped parameters take the types of the bound values, and the announced schema says so.
        let mut prepared = client
            .prepare("SELECT ? AS echo, ? + 1 AS next".into(), None)
            .await
            .unwrap();
        assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 2);
        prepared
            .set_parameters(one_row(vec![
                ("0", Arc::new(StringArray::from(vec!["hi"])) as ArrayRef),
                ("1", Arc::new(Int64Array::from(vec![41])) as ArrayRef),
            ]))
            .unwrap();
        let info = prepared.execute().await.unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(strings(&batches, "echo"), vec!["hi"]);
        assert_eq!(int64(&batches, "next"), vec![42]);
        // Bound again with other values, the same handle answers for them.
        prepared
            .set_parameters(one_row(vec![
                ("0", Arc::new(StringArray::from(vec!["yo"])) as ArrayRef),
                ("1", Arc::new(UInt32Array::from(vec![1])) as ArrayRef),
            ]))
            .unwrap();
        let info = prepared.execute().await.unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(strings(&batches, "echo"), vec!["yo"]);
        assert_eq!(strings(&batches, "next"), vec!["2"]);

        // More than one row of parameters is refused, naming the rule.
        prepared
            .set_parameters(one_row(vec![
                ("0", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
                ("1", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ]))
            .unwrap();
        let error = prepared.execute().await.unwrap_err().to_string();
        assert!(error.contains("one row of parameters"), "{error}");
        prepared.close().await.unwrap();

        // Parameters that were never bound are named.
        let error = client
            .execute("SELECT ? AS x".into(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("none are bound"), "{error}");

        // A closed statement is gone.
        let prepared = client.prepare("SELECT 1 AS x".into(), None).await.unwrap();
        let mut again = prepared.clone();
        prepared.close().await.unwrap();
        let error = again.execute().await.unwrap_err().to_string();
        assert!(
            error.contains("unknown prepared statement handle"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn writes_are_refused_as_read_only() {
        let server = start(None).await;
        let mut client = client(&server).await;
        for sql in [
            "CREATE TABLE t AS SELECT 1 AS x",
            "INSERT INTO spans SELECT * FROM spans",
            "COPY (SELECT 1 AS x) TO '/tmp/idtrail-flight-sql-test.parquet'",
            "SET datafusion.execution.batch_size = 10",
        ] {
            let error = client
                .execute(sql.into(), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("read-only"), "{sql}: {error}");
            let error = client
                .prepare(sql.into(), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("read-only"), "{sql}: {error}");
            let error = client
                .execute_update(sql.into(), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("read-only"), "{sql}: {error}");
        }
        let error = client
            .execute_update("SELECT 1".into(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("read-only"), "{error}");

        // The status code is PERMISSION_DENIED, from QueryError's one mapping.
        let mut raw = FlightServiceClient::new(channel(&server).await);
        let command = CommandStatementQuery {
            query: "DROP TABLE spans".into(),
            transaction_id: None,
        };
        let status = raw
            .get_flight_info(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let command = CommandStatementSubstraitPlan::default();
        let status = raw
            .get_flight_info(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn metadata() {
        let server = start(None).await;
        let mut client = client(&server).await;

        let info = client.get_catalogs().await.unwrap();
        assert_eq!(
            strings(&fetch(&mut client, info).await, "catalog_name"),
            vec!["idtrail"]
        );

        let info = client
            .get_db_schemas(CommandGetDbSchemas {
                catalog: Some("idtrail".into()),
                db_schema_filter_pattern: None,
            })
            .await
            .unwrap();
        let schemas = strings(&fetch(&mut client, info).await, "db_schema_name");
        assert!(schemas.contains(&"public".to_string()), "{schemas:?}");

        let info = client
            .get_tables(CommandGetTables {
                catalog: Some("idtrail".into()),
                db_schema_filter_pattern: Some("public".into()),
                table_name_filter_pattern: Some("s%".into()),
                table_types: vec!["BASE TABLE".into()],
                include_schema: true,
            })
            .await
            .unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(strings(&batches, "table_name"), vec!["spans"]);
        let encoded = batches[0]
            .column_by_name("table_schema")
            .unwrap()
            .as_binary::<i32>()
            .value(0)
            .to_vec();
        let schema = Schema::try_from(IpcMessage(Bytes::from(encoded))).unwrap();
        for column in ["trace_id", "service_name", "user_id", "date", "hour"] {
            assert!(
                schema.field_with_name(column).is_ok(),
                "{column} in {schema:?}"
            );
        }

        let info = client
            .get_tables(CommandGetTables {
                table_types: vec!["VIEW".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let views = strings(&fetch(&mut client, info).await, "table_name");
        assert!(views.contains(&"chains_latest".to_string()), "{views:?}");

        let info = client.get_table_types().await.unwrap();
        let types = strings(&fetch(&mut client, info).await, "table_type");
        assert!(types.contains(&"BASE TABLE".to_string()), "{types:?}");

        let info = client
            .get_sql_info(vec![
                SqlInfo::FlightSqlServerName,
                SqlInfo::FlightSqlServerReadOnly,
            ])
            .await
            .unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);

        let info = client
            .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
            .await
            .unwrap();
        let names = strings(&fetch(&mut client, info).await, "type_name");
        assert!(names.contains(&"VARCHAR".to_string()), "{names:?}");

        let info = client
            .get_primary_keys(CommandGetPrimaryKeys {
                table: "spans".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    }

    #[tokio::test]
    async fn bearer_keys_guard_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "k-secret\n").unwrap();
        let keys = Arc::new(BearerKeys::load(&path).unwrap());
        let server = start(Some(keys)).await;

        let mut raw = FlightServiceClient::new(channel(&server).await);
        let status = raw.list_actions(arrow_flight::Empty {}).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("Bearer"), "{}", status.message());

        let mut client = client(&server).await;
        let error = client
            .execute("SELECT 1 AS x".into(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("unauthenticated"), "{error}");
        // A Basic handshake is refused, saying how to authenticate.
        let error = client
            .handshake("analyst", "k-secret")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("Bearer"), "{error}");
        client.set_token("k-wrong".into());
        assert!(client.execute("SELECT 1 AS x".into(), None).await.is_err());

        client.set_token("k-secret".into());
        // The handshake passes with the bearer key and hands it back.
        client.handshake("analyst", "").await.unwrap();
        assert_eq!(client.token().map(String::as_str), Some("k-secret"));
        let info = client.execute("SELECT 1 AS x".into(), None).await.unwrap();
        assert_eq!(int64(&fetch(&mut client, info).await, "x"), vec![1]);
    }

    #[test]
    fn batches_take_the_announced_schema() {
        let announced: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let keys = arrow::array::Int32Array::from(vec![0]);
        let values = Arc::new(StringArray::from(vec!["a"]));
        let dictionary = arrow::array::DictionaryArray::try_new(keys, values).unwrap();
        let produced = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("n", DataType::Int64, false),
                Field::new("s", dictionary.data_type().clone(), false),
            ])),
            vec![Arc::new(Int64Array::from(vec![7])), Arc::new(dictionary)],
        )
        .unwrap();
        let conformed = conform(&announced, produced).unwrap();
        assert_eq!(conformed.schema(), announced);
        assert_eq!(strings(&[conformed], "s"), vec!["a"]);

        let one_column = one_row(vec![("n", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]);
        assert!(conform(&announced, one_column).is_err());
    }

    #[test]
    fn open_statements_are_bounded() {
        let mut statements = OpenStatements::default();
        let handle = |i: usize| Bytes::from(format!("h{i}"));
        for i in 0..MAX_PREPARED_STATEMENTS {
            statements.insert(handle(i), "SELECT 1");
        }
        // Using the first keeps it; the second is now the least recently used.
        statements.get(&handle(0)).unwrap();
        statements.insert(handle(MAX_PREPARED_STATEMENTS), "SELECT 2");
        assert_eq!(statements.by_handle.len(), MAX_PREPARED_STATEMENTS);
        assert!(statements.get(&handle(0)).is_ok());
        assert!(statements.get(&handle(1)).is_err());

        // The byte bound holds too, and never forgets the statement just bound.
        let big = "x".repeat(MAX_PREPARED_BYTES / 4);
        for i in 0..8 {
            statements.insert(handle(10_000 + i), &big);
        }
        assert!(statements.bytes <= MAX_PREPARED_BYTES);
        assert!(statements.get(&handle(10_007)).is_ok());
        statements
            .bind(&handle(10_007), vec![ScalarValue::Utf8(Some("v".into()))])
            .unwrap();
        assert!(statements.get(&handle(10_007)).is_ok());
        let total: usize = statements
            .by_handle
            .values()
            .map(OpenStatement::bytes)
            .sum();
        assert_eq!(statements.bytes, total);
    }
}
