//! Arrow schemas and on-disk layout of idtrail's tables.
//!
//! This crate is the single source of truth for column names: the collector writes with these
//! schemas and the query layer reads with them. Column names are a public interface (users write
//! SQL against them), so a rename is a schema-version change. `README.md` beside this crate
//! documents every column.

pub mod chains;
pub mod edges;
pub mod layout;
pub mod spans;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

/// Version of the table schemas. Written into every Parquet file's key-value metadata under
/// [`SCHEMA_VERSION_KEY`] so readers can tell which layout a file has. Version 2 added
/// `chains.upstream_credentials`; readers see it as null in version-1 files.
pub const SCHEMA_VERSION: u32 = 2;

/// Parquet/Arrow metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "idtrail.schema_version";

/// The one timestamp type of every table: nanoseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// A nullable list of strings (roles, scopes, actors, agents).
pub fn string_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// `map<utf8, utf8>` as Arrow lays it out (`entries: struct<key, value>`, keys not null).
pub fn string_map_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Utf8, true),
                ]
                .into(),
            ),
            false,
        )),
        false,
    )
}

pub(crate) fn versioned(fields: Vec<Field>) -> Schema {
    Schema::new_with_metadata(
        fields,
        HashMap::from([(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())]),
    )
}

pub(crate) fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

pub(crate) fn ts(name: &str, nullable: bool) -> Field {
    Field::new(name, timestamp_type(), nullable)
}

pub(crate) fn list(name: &str) -> Field {
    Field::new(name, string_list_type(), true)
}
