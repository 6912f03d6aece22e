//! Tables one caller adds in front of the catalog for its own queries only: an incident report
//! materialises its scope once as `scoped` and runs every section over it, while the server's
//! other queries never see that table.
//!
//! DataFusion's catalog is shared by every session cloned from the base one, so registering a
//! table there would publish it to all. An overlay is a catalog list of its own whose default
//! schema answers the added names first and passes every other name to the base schema.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    SchemaProvider, TableProvider,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::error::{QueryError, Result};

/// The base schema, with `added` tables answered first.
#[derive(Debug)]
struct OverlaySchema {
    base: Arc<dyn SchemaProvider>,
    added: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for OverlaySchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.base.table_names();
        names.extend(
            self.added
                .keys()
                .filter(|name| !self.base.table_exist(name))
                .cloned(),
        );
        names
    }

    async fn table(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        match self.added.get(name) {
            Some(table) => Ok(Some(table.clone())),
            None => self.base.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.added.contains_key(name) || self.base.table_exist(name)
    }
}

/// A context like `base` whose default schema also holds `tables`. Every other catalog, schema,
/// function and setting is `base`'s own.
pub(crate) fn with_tables(
    base: &SessionContext,
    tables: Vec<(String, Arc<dyn TableProvider>)>,
) -> Result<SessionContext> {
    let state = base.state();
    let defaults = &state.config_options().catalog;
    let (catalog_name, schema_name) = (
        defaults.default_catalog.clone(),
        defaults.default_schema.clone(),
    );
    let base_list = state.catalog_list().clone();
    let missing = || QueryError::Plan(format!("no schema {catalog_name}.{schema_name}"));
    let base_catalog = base_list.catalog(&catalog_name).ok_or_else(missing)?;
    let base_schema = base_catalog.schema(&schema_name).ok_or_else(missing)?;

    let catalog = MemoryCatalogProvider::new();
    for name in base_catalog.schema_names() {
        if let Some(schema) = base_catalog.schema(&name) {
            catalog
                .register_schema(&name, schema)
                .map_err(|e| QueryError::storage("building a query overlay", e))?;
        }
    }
    let overlay = OverlaySchema {
        base: base_schema,
        added: tables.into_iter().collect(),
    };
    catalog
        .register_schema(&schema_name, Arc::new(overlay))
        .map_err(|e| QueryError::storage("building a query overlay", e))?;

    let list = MemoryCatalogProviderList::new();
    for name in base_list.catalog_names() {
        if let Some(other) = base_list.catalog(&name) {
            list.register_catalog(name, other);
        }
    }
    list.register_catalog(catalog_name, Arc::new(catalog));
    let state = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(Arc::new(list))
        .build();
    Ok(SessionContext::new_with_state(state))
}
