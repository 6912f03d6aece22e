//! `owners` and `grants`: what people declare rather than what traces show, loaded from YAML or
//! CSV files (`query.owners_files`, `query.grants_files`) and re-read whenever a file changes.
//!
//! owners — who answers for an identity, and until when:
//! `kind, id, owner, approved, expires_at, revoked_at`.
//! grants — what an identity, or any credential carrying a scope, may reach:
//! `subject_kind, subject_id, target_kind, target_pattern` (`*` matches any run of characters).
//!
//! YAML files hold a list of such records (or a map with the list under `owners:`/`grants:`);
//! CSV files have a header row naming the columns. Times are RFC 3339.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use serde::Deserialize;

use crate::error::{QueryError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredKind {
    Owners,
    Grants,
}

impl DeclaredKind {
    pub fn table(self) -> &'static str {
        match self {
            DeclaredKind::Owners => "owners",
            DeclaredKind::Grants => "grants",
        }
    }

    pub fn schema(self) -> SchemaRef {
        let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
        let ts = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                true,
            )
        };
        Arc::new(Schema::new(match self {
            DeclaredKind::Owners => vec![
                utf8("kind"),
                utf8("id"),
                utf8("owner"),
                Field::new("approved", DataType::Boolean, false),
                ts("expires_at"),
                ts("revoked_at"),
            ],
            DeclaredKind::Grants => vec![
                utf8("subject_kind"),
                utf8("subject_id"),
                utf8("target_kind"),
                utf8("target_pattern"),
            ],
        }))
    }
}

/// One row of `owners`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub kind: String,
    pub id: String,
    pub owner: String,
    #[serde(default)]
    pub approved: bool,
    #[serde(default, deserialize_with = "optional_time")]
    pub expires_at: Option<i64>,
    #[serde(default, deserialize_with = "optional_time")]
    pub revoked_at: Option<i64>,
}

impl Owner {
    /// Approved, and neither expired nor revoked at `at` (ns since the epoch).
    pub fn vouches_at(&self, at: i64) -> bool {
        self.approved
            && self.expires_at.is_none_or(|t| t > at)
            && self.revoked_at.is_none_or(|t| t > at)
    }
}

/// One row of `grants`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub subject_kind: String,
    pub subject_id: String,
    pub target_kind: String,
    pub target_pattern: String,
}

impl Grant {
    /// Whether `id` matches the target pattern, where `*` matches any run of characters.
    pub fn permits(&self, id: &str) -> bool {
        glob_matches(&self.target_pattern, id)
    }
}

pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn optional_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text.as_deref().map(str::trim) {
        None | Some("") | Some("null") => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{t:?} is not an RFC 3339 time"))),
    }
}

/// The parsed contents of one kind's files.
#[derive(Debug, Default, Clone)]
pub struct Declared {
    pub owners: Vec<Owner>,
    pub grants: Vec<Grant>,
}

type Stamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The files of one kind, parsed again only when one of them changed.
pub struct DeclaredFiles {
    kind: DeclaredKind,
    files: Vec<PathBuf>,
    cache: Mutex<Option<(Stamp, Arc<Declared>, RecordBatch)>>,
}

impl fmt::Debug for DeclaredFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeclaredFiles")
            .field("kind", &self.kind)
            .field("files", &self.files)
            .finish()
    }
}

impl DeclaredFiles {
    pub fn new(kind: DeclaredKind, files: Vec<PathBuf>) -> DeclaredFiles {
        DeclaredFiles {
            kind,
            files,
            cache: Mutex::new(None),
        }
    }

    /// The records, re-read if a file changed since the last call.
    pub fn load(&self) -> Result<Arc<Declared>> {
        Ok(self.load_with_batch()?.0)
    }

    fn load_with_batch(&self) -> Result<(Arc<Declared>, RecordBatch)> {
        let stamp: Stamp = self
            .files
            .iter()
            .map(|path| {
                let meta = std::fs::metadata(path).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                (path.clone(), modified, meta.map_or(0, |m| m.len()))
            })
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, declared, batch)) = cache.as_ref()
            && *cached == stamp
        {
            return Ok((declared.clone(), batch.clone()));
        }
        let mut declared = Declared::default();
        for path in &self.files {
            self.read_file(path, &mut declared)?;
        }
        let batch = self.batch(&declared)?;
        let declared = Arc::new(declared);
        *cache = Some((stamp, declared.clone(), batch.clone()));
        Ok((declared, batch))
    }

    fn read_file(&self, path: &Path, into: &mut Declared) -> Result<()> {
        let context = || format!("reading {} file {}", self.kind.table(), path.display());
        let text = std::fs::read_to_string(path).map_err(|e| QueryError::storage(context(), e))?;
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        match (self.kind, is_csv) {
            (DeclaredKind::Owners, true) => into
                .owners
                .extend(from_csv(&text).map_err(|e| QueryError::storage(context(), e))?),
            (DeclaredKind::Grants, true) => into
                .grants
                .extend(from_csv(&text).map_err(|e| QueryError::storage(context(), e))?),
            (DeclaredKind::Owners, false) => into
                .owners
                .extend(from_yaml(&text, "owners").map_err(|e| QueryError::storage(context(), e))?),
            (DeclaredKind::Grants, false) => into
                .grants
                .extend(from_yaml(&text, "grants").map_err(|e| QueryError::storage(context(), e))?),
        }
        Ok(())
    }

    fn batch(&self, declared: &Declared) -> Result<RecordBatch> {
        let strings = |values: Vec<&str>| Arc::new(StringArray::from(values)) as ArrayRef;
        let times = |values: Vec<Option<i64>>| {
            Arc::new(TimestampNanosecondArray::from(values).with_timezone("UTC")) as ArrayRef
        };
        let columns: Vec<ArrayRef> = match self.kind {
            DeclaredKind::Owners => {
                let o = &declared.owners;
                vec![
                    strings(o.iter().map(|r| r.kind.as_str()).collect()),
                    strings(o.iter().map(|r| r.id.as_str()).collect()),
                    strings(o.iter().map(|r| r.owner.as_str()).collect()),
                    Arc::new(BooleanArray::from(
                        o.iter().map(|r| r.approved).collect::<Vec<_>>(),
                    )),
                    times(o.iter().map(|r| r.expires_at).collect()),
                    times(o.iter().map(|r| r.revoked_at).collect()),
                ]
            }
            DeclaredKind::Grants => {
                let g = &declared.grants;
                vec![
                    strings(g.iter().map(|r| r.subject_kind.as_str()).collect()),
                    strings(g.iter().map(|r| r.subject_id.as_str()).collect()),
                    strings(g.iter().map(|r| r.target_kind.as_str()).collect()),
                    strings(g.iter().map(|r| r.target_pattern.as_str()).collect()),
                ]
            }
        };
        RecordBatch::try_new(self.kind.schema(), columns).map_err(|e| {
            QueryError::storage(format!("building the {} table", self.kind.table()), e)
        })
    }
}

fn from_csv<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    reader
        .deserialize()
        .enumerate()
        .map(|(i, row)| row.map_err(|e| format!("row {}: {e}", i + 2)))
        .collect()
}

fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, key: &str) -> Result<Vec<T>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Document<T> {
        List(Vec<T>),
        Keyed(std::collections::BTreeMap<String, Vec<T>>),
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_saphyr::from_str::<Document<T>>(text).map_err(|e| e.to_string())? {
        Document::List(rows) => Ok(rows),
        Document::Keyed(mut map) => map
            .remove(key)
            .ok_or_else(|| format!("expected a list, or a map with the list under `{key}:`")),
    }
}

/// The `owners` or `grants` table.
#[derive(Debug)]
pub struct DeclaredTable {
    files: Arc<DeclaredFiles>,
}

impl DeclaredTable {
    pub fn new(files: Arc<DeclaredFiles>) -> DeclaredTable {
        DeclaredTable { files }
    }
}

#[async_trait]
impl TableProvider for DeclaredTable {
    fn schema(&self) -> SchemaRef {
        self.files.kind.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let (_, batch) = self
            .files
            .load_with_batch()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let exec =
            MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_ids() {
        assert!(glob_matches("db:orders*", "db:orders.items"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("api *orders*", "api DELETE /orders/{id}"));
        assert!(!glob_matches("db:orders", "db:orders.items"));
        assert!(!glob_matches("db:*.secret", "db:x.secrets"));
        assert!(glob_matches("a*b*c", "abc"));
    }

    #[test]
    fn reads_yaml_and_csv_and_rereads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("owners.yaml");
        std::fs::write(
            &yaml,
            "owners:\n  - {kind: agent, id: planner, owner: alice, approved: true, expires_at: '2027-01-01T00:00:00Z'}\n",
        )
        .unwrap();
        let csv = dir.path().join("owners.csv");
        std::fs::write(
            &csv,
            "kind,id,owner,approved,expires_at,revoked_at\nworkload,batch,ops,false,,\n",
        )
        .unwrap();
        let files = DeclaredFiles::new(DeclaredKind::Owners, vec![yaml.clone(), csv]);
        let loaded = files.load().unwrap();
        assert_eq!(loaded.owners.len(), 2);
        assert!(loaded.owners[0].vouches_at(0));
        assert!(!loaded.owners[0].vouches_at(1_900_000_000_000_000_000));
        assert!(!loaded.owners[1].vouches_at(0));

        std::fs::write(
            &yaml,
            "- {kind: agent, id: a, owner: b}\n- {kind: agent, id: c, owner: d}\n",
        )
        .unwrap();
        assert_eq!(files.load().unwrap().owners.len(), 3);

        std::fs::write(&yaml, "- {kind: agent, id: a, owner: b, colour: red}\n").unwrap();
        let error = files.load().unwrap_err().to_string();
        assert!(error.contains("owners.yaml"), "{error}");
    }
}
