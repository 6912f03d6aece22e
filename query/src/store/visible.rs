//! The object store every query reads the tables through, wrapped so that its listings show
//! only the files a reader should see: a compacted file supersedes its sources the moment it is
//! published, while they are still being deleted or after a crash left them behind
//! ([`idtrail_schemas::layout::retain_visible`], docs/adr/0011-compaction.md). Listing tables,
//! the lineage graph and `chain_of` all list through here, so none of them counts a row twice.
//! Reads, writes and deletes pass through unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use idtrail_schemas::layout;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

#[derive(Debug)]
pub struct VisibleFilesStore {
    inner: Arc<dyn ObjectStore>,
}

impl VisibleFilesStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> VisibleFilesStore {
        VisibleFilesStore { inner }
    }
}

impl fmt::Display for VisibleFilesStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VisibleFiles({})", self.inner)
    }
}

/// Drops superseded files, directory by directory (a compacted file only covers files of its
/// own partition directory).
fn visible(objects: Vec<ObjectMeta>) -> Vec<ObjectMeta> {
    let mut by_dir: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for meta in objects {
        let dir = meta
            .location
            .as_ref()
            .rsplit_once('/')
            .map_or(String::new(), |(dir, _)| dir.to_string());
        by_dir.entry(dir).or_default().push(meta);
    }
    by_dir
        .into_values()
        .flat_map(|mut files| {
            layout::retain_visible(&mut files, |m| m.location.filename().unwrap_or_default());
            files
        })
        .collect()
}

/// A listing, whole (supersession is decided per directory, over all of its files), filtered.
fn visible_stream(
    listing: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    stream::once(async move { listing.try_collect::<Vec<_>>().await })
        .map_ok(|objects| stream::iter(visible(objects).into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

#[async_trait]
impl ObjectStore for VisibleFilesStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        visible_stream(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        // Supersession needs the whole directory, including what sorts before the offset.
        let offset = offset.clone();
        visible_stream(self.inner.list(prefix))
            .try_filter(move |meta| futures::future::ready(meta.location > offset))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        layout::retain_visible(&mut listed.objects, |m| {
            m.location.filename().unwrap_or_default()
        });
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn listings_leave_out_what_a_compacted_file_supersedes() {
        let inner = Arc::new(InMemory::new());
        let dir = "spans/date=2026-11-22/hour=13";
        for name in [
            layout::file_name("w", 1),
            layout::file_name("w", 2),
            layout::compacted_file_name("w", 1, 2),
            layout::file_name("w", 3),
        ] {
            inner
                .put(
                    &Path::from(format!("{dir}/{name}")),
                    Bytes::from("x").into(),
                )
                .await
                .unwrap();
        }
        // The same numbers in another partition are other files.
        inner
            .put(
                &Path::from(format!(
                    "spans/date=2026-11-22/hour=14/{}",
                    layout::file_name("w", 1)
                )),
                Bytes::from("x").into(),
            )
            .await
            .unwrap();
        let store = VisibleFilesStore::new(inner);
        let mut listed: Vec<String> = store
            .list(Some(&Path::from("spans")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        let mut expected = vec![
            format!("{dir}/{}", layout::file_name("w", 3)),
            format!("{dir}/{}", layout::compacted_file_name("w", 1, 2)),
            format!(
                "spans/date=2026-11-22/hour=14/{}",
                layout::file_name("w", 1)
            ),
        ];
        expected.sort();
        assert_eq!(listed, expected);
        let one_dir = store
            .list_with_delimiter(Some(&Path::from(dir)))
            .await
            .unwrap();
        assert_eq!(one_dir.objects.len(), 2);
        let after = store
            .list_with_offset(
                Some(&Path::from("spans")),
                &Path::from(format!("{dir}/{}", layout::file_name("w", 1))),
            )
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        // Past the offset: hour 13's newest file and hour 14's; the compacted name sorts before
        // the offset (`-` < `.`), and its superseded sources stay hidden.
        assert_eq!(after.len(), 2);
    }
}
