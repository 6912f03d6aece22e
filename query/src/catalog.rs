//! The tables a query sees: `spans`, `chains` and `edges` over the Parquet files of the data
//! directory or object-store URL ([`crate::store`]), `owners` and `grants` from the declared files, the views of [`crate::views`], the
//! `findings` view of [`crate::findings`] and the lineage table functions of [`crate::lineage`].
//!
//! The Parquet tables are DataFusion listing tables with the hive columns `date` and `hour`, so
//! `WHERE date = '2026-11-22' AND hour = '13'` skips whole directories, and so does a bound on
//! the time column a table is partitioned by ([`crate::partitions`]). The directory is listed
//! again for every query (no list cache), so files published while a server runs are visible to
//! the next query; footers and statistics of the immutable files are cached across queries.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionContext;
use idtrail_schemas::{chains, edges, spans};

use crate::declared::{DeclaredFiles, DeclaredTable};
use crate::error::{QueryError, Result};
use crate::findings::{self, Rule};
use crate::lineage::{self, LineageSources};
use crate::store::TableStore;
use crate::views;

/// Hive partition columns of every Parquet table, as they appear in SQL.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// Registers every table, view and function on `ctx`.
pub async fn register_all(
    ctx: &SessionContext,
    data_dir: &Path,
    owners: Arc<DeclaredFiles>,
    grants: Arc<DeclaredFiles>,
    rules: &[Rule],
) -> Result<()> {
    let runtime = ctx.runtime_env();
    let store = TableStore::open(data_dir)?;
    store.register(&runtime);
    let spans_table = listing_table(&store, spans::TABLE, spans::schema(), &runtime)?;
    let chains_table = listing_table(&store, chains::TABLE, chains::schema(), &runtime)?;
    let edges_table = listing_table(&store, edges::TABLE, edges::schema(), &runtime)?;
    let register = |name: &str, table: Arc<dyn datafusion::catalog::TableProvider>| {
        ctx.register_table(name, table)
            .map(|_| ())
            .map_err(|e| QueryError::storage(format!("registering table {name}"), e))
    };
    register(spans::TABLE, spans_table.clone())?;
    register(chains::TABLE, chains_table.clone())?;
    register(edges::TABLE, edges_table.clone())?;
    register("owners", Arc::new(DeclaredTable::new(owners.clone())))?;
    register("grants", Arc::new(DeclaredTable::new(grants.clone())))?;
    views::register(ctx).await?;
    findings::register(ctx, rules).await?;
    lineage::register(
        ctx,
        LineageSources {
            store,
            spans: spans_table,
            owners,
            grants,
        },
    );
    Ok(())
}

/// A listing table over `<store>/<table>/date=…/hour=…/*.parquet`.
fn listing_table(
    store: &TableStore,
    table: &str,
    schema: SchemaRef,
    runtime: &RuntimeEnv,
) -> Result<Arc<ListingTable>> {
    let url = store.table_url(table)?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            PARTITION_COLUMNS
                .iter()
                .map(|c| (c.to_string(), DataType::Utf8))
                .collect(),
        );
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)
        .map_err(|e| QueryError::storage(format!("table {table}"), e))?
        .with_cache(runtime.cache_manager.get_file_statistic_cache());
    Ok(Arc::new(table))
}
