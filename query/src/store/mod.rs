//! Where the tables are read from: the root of `<table>/date=…/hour=…/*.parquet`, as an
//! [`ObjectStore`] and its URL. Every read of the query layer (listing tables, the lineage
//! graph, `chain_of`) goes through DataFusion over this store, so a store other than the local
//! directory changes nothing else: `s3://bucket/prefix`, `gs://…` and `az://…` read the same
//! layout from a bucket, with the clouds' own credentials (docs/adr/0007-object-store-tables.md).

use std::path::Path;
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreScheme};
use url::Url;

use crate::error::{QueryError, Result};

mod visible;
pub use visible::VisibleFilesStore;

/// Whether `location` names an object store (`s3://…`) rather than a local directory.
pub fn is_url(location: &Path) -> bool {
    parse_location(location).is_some_and(|url| url.scheme() != "file")
}

/// `location` as a URL when it is one. A Windows drive letter (`C:\data`) also parses as a
/// one-letter scheme: that is a path.
fn parse_location(location: &Path) -> Option<Url> {
    Url::parse(&location.to_string_lossy())
        .ok()
        .filter(|url| url.scheme().len() > 1)
}

/// The root of the tables: `<root>/<table>/date=…/hour=…/*.parquet`.
#[derive(Debug, Clone)]
pub struct TableStore {
    /// The root as a URL (`file:///var/lib/idtrail/data`, `s3://bucket/prefix`).
    url: Url,
    store: Arc<dyn ObjectStore>,
    /// The root inside `store`.
    prefix: ObjectPath,
}

impl TableStore {
    /// `location` is a local directory (created when missing) or an object-store URL.
    pub fn open(location: &Path) -> Result<TableStore> {
        match parse_location(location) {
            Some(url) if url.scheme() == "file" => {
                let path = url.to_file_path().map_err(|()| {
                    QueryError::Plan(format!("{} is not a local path", location.display()))
                })?;
                Self::local(&path)
            }
            Some(url) => Self::remote(url),
            None => Self::local(location),
        }
    }

    fn local(dir: &Path) -> Result<TableStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| QueryError::storage(format!("creating {}", dir.display()), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| QueryError::storage(format!("resolving {}", dir.display()), e))?;
        let url = Url::from_directory_path(&dir)
            .map_err(|()| QueryError::Plan(format!("{} is not an absolute path", dir.display())))?;
        let prefix = ObjectPath::from_filesystem_path(&dir)
            .map_err(|e| QueryError::storage(format!("resolving {}", dir.display()), e))?;
        Ok(TableStore {
            url,
            store: Arc::new(VisibleFilesStore::new(Arc::new(LocalFileSystem::new()))),
            prefix,
        })
    }

    /// A bucket. Credentials, region and endpoint come from the cloud's own environment
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as the clouds' CLIs read them), never from idtrail's
    /// config, so no secret is written into a file idtrail owns.
    fn remote(url: Url) -> Result<TableStore> {
        let refused = |why: String| QueryError::Plan(format!("{url}: {why}"));
        let (scheme, path) =
            ObjectStoreScheme::parse(&url).map_err(|e| refused(format!("not a store URL: {e}")))?;
        let prefix =
            ObjectPath::parse(path).map_err(|e| refused(format!("not a store prefix: {e}")))?;
        let opening = |e| QueryError::storage(format!("opening {url}"), e);
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(opening)?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(opening)?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(opening)?,
            ),
            other => {
                return Err(refused(format!(
                    "{other:?} is not a table store; use s3://, gs://, az:// (or abfss://) or a \
                     local directory"
                )));
            }
        };
        Ok(TableStore {
            url,
            store: Arc::new(VisibleFilesStore::new(store)),
            prefix,
        })
    }

    /// Makes the store reachable to DataFusion's listing tables under its URL.
    pub fn register(&self, runtime: &RuntimeEnv) {
        runtime.register_object_store(&self.url, self.store.clone());
    }

    /// The root as given, for messages.
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where `table`'s files live inside the store.
    pub fn table_prefix(&self, table: &str) -> ObjectPath {
        self.prefix.clone().join(table)
    }

    /// The listing-table URL of `table` (with the trailing `/` that makes it a directory).
    pub fn table_url(&self, table: &str) -> Result<ListingTableUrl> {
        let root = self.url.as_str().trim_end_matches('/');
        ListingTableUrl::parse(format!("{root}/{table}/"))
            .map_err(|e| QueryError::storage(format!("table {table}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_file_urls_are_local_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let by_path = TableStore::open(dir.path()).expect("path");
        assert_eq!(by_path.url().scheme(), "file");
        let file_url = Url::from_directory_path(dir.path()).expect("url");
        let by_url = TableStore::open(Path::new(file_url.as_str())).expect("file url");
        assert_eq!(by_url.url(), by_path.url());
        assert!(
            by_path
                .table_url("spans")
                .expect("table")
                .as_str()
                .ends_with("/spans/")
        );
    }

    #[test]
    fn bucket_urls_open_with_their_prefix() {
        // Building a client does not connect, so this needs no bucket; the moto test in
        // tests/python/test_object_store.py reads real objects.
        let store = TableStore::open(Path::new("s3://bucket/idtrail/prod")).expect("s3");
        assert_eq!(store.table_prefix("spans").as_ref(), "idtrail/prod/spans");
        assert_eq!(
            store.table_url("spans").expect("table").as_str(),
            "s3://bucket/idtrail/prod/spans/"
        );
        let root = TableStore::open(Path::new("s3://bucket")).expect("bucket root");
        assert_eq!(root.table_prefix("edges").as_ref(), "edges");
    }

    #[test]
    fn urls_that_are_not_table_stores_are_refused_by_name() {
        for url in ["memory:///tables", "ftp://host/tables"] {
            let err = TableStore::open(Path::new(url)).expect_err(url);
            assert!(err.to_string().contains(url), "{err}");
        }
        assert!(is_url(Path::new("gs://bucket/x")));
        assert!(!is_url(Path::new("C:\\data")), "a drive letter is a path");
    }
}
