//! Where published table files go. The writer sees only [`TableSink`], so an object-store sink
//! can stand beside the local one without touching the write path.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use idtrail_schemas::layout::{self, Partition};

use crate::error::{Error, Result};
use crate::wal::sync_dir;

/// A published file, as listed.
#[derive(Debug, Clone)]
pub struct FileEntry {
    pub name: String,
    pub modified: SystemTime,
}

pub trait TableSink: Send + Sync {
    /// Publishes `bytes` atomically as a file of `table` in `partition`, named after this
    /// writer and a sequence number at least `seq`. Returns the file's path relative to the
    /// store's root. Readers see either no file or the whole file.
    fn publish(&self, table: &str, partition: &Partition, seq: u64, bytes: &[u8])
    -> Result<String>;

    /// Files this writer published in `partition` that readers see, oldest first (the last
    /// holds the newest rows).
    fn list(&self, table: &str, partition: &Partition) -> Result<Vec<FileEntry>>;

    /// A published file's bytes.
    fn read(&self, table: &str, partition: &Partition, name: &str) -> Result<Bytes>;

    fn writer_id(&self) -> &str;
}

/// Tables in a local data directory.
pub struct LocalDirSink {
    root: PathBuf,
    writer_id: String,
}

impl LocalDirSink {
    pub fn new(root: &Path, writer_id: &str) -> LocalDirSink {
        LocalDirSink {
            root: root.to_path_buf(),
            writer_id: writer_id.to_string(),
        }
    }

    /// Deletes the hidden temp files this writer left when it died mid-publication (written,
    /// never renamed). Their rows are still in the WAL and publish again, so they are garbage.
    /// Call before publishing, with the data directory locked. Returns how many it removed.
    pub fn remove_abandoned_temp_files(&self, tables: &[&str]) -> Result<usize> {
        let prefix = format!(".{}-", self.writer_id);
        let mut removed = 0;
        let mut dirs: Vec<PathBuf> = tables.iter().map(|t| self.root.join(t)).collect();
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if name.starts_with(&prefix) && name.ends_with(".tmp") {
                    fs::remove_file(&path)
                        .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                    tracing::info!(file = %path.display(), "removed a temp file of an interrupted publication");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Creates `dir` and makes every directory entry it needed durable.
    fn ensure_dir(&self, dir: &Path) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cursor = dir;
        while !cursor.exists() {
            missing.push(cursor.to_path_buf());
            match cursor.parent() {
                Some(parent) => cursor = parent,
                None => break,
            }
        }
        fs::create_dir_all(dir)?;
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }
}

impl TableSink for LocalDirSink {
    fn publish(
        &self,
        table: &str,
        partition: &Partition,
        seq: u64,
        bytes: &[u8],
    ) -> Result<String> {
        let rel_dir = partition.dir(table);
        let dir = self.root.join(&rel_dir);
        let ctx = |what: &str| format!("{what} in {}", dir.display());
        self.ensure_dir(&dir)
            .map_err(|e| Error::io(ctx("creating partition"), e))?;
        // Above every file of ours in the partition: names then sort in publication order even
        // if the clock stepped back, and a published file is never replaced.
        let newest = self
            .list(table, partition)?
            .last()
            .and_then(|f| layout::parse_file_seq(&self.writer_id, &f.name));
        let seq = newest.map_or(seq, |n| seq.max(n + 1));
        let name = layout::file_name(&self.writer_id, seq);
        let temp = dir.join(layout::temp_file_name(&self.writer_id, seq));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            // The crash tests stop here to kill the process between write and rename.
            fail::fail_point!("publish-before-rename");
            fs::rename(&temp, dir.join(&name))
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&temp);
            return Err(Error::io(ctx("publishing a parquet file"), e));
        }
        // The file is visible now: reporting failure would get it published twice. Persist the
        // rename before the caller checkpoints the WAL, however long that takes.
        let mut delay = Duration::from_millis(50);
        while let Err(error) = sync_dir(&dir) {
            tracing::error!(%error, dir = %dir.display(), "fsync of a partition directory failed; retrying");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        Ok(rel_dir.join(name).to_string_lossy().into_owned())
    }

    fn list(&self, table: &str, partition: &Partition) -> Result<Vec<FileEntry>> {
        let dir = self.root.join(partition.dir(table));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if layout::parse_file_seq(&self.writer_id, &name).is_none() {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            files.push(FileEntry { name, modified });
        }
        // In the order of the newest sequence number each holds (a compacted file sorts by name
        // before the files published after it), without the files a compacted one supersedes.
        layout::retain_visible(&mut files, |f| &f.name);
        files.sort_by_key(|f| layout::parse_file_seq(&self.writer_id, &f.name));
        Ok(files)
    }

    fn read(&self, table: &str, partition: &Partition, name: &str) -> Result<Bytes> {
        let path = self.root.join(partition.dir(table)).join(name);
        fs::read(&path)
            .map(Bytes::from)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))
    }

    fn writer_id(&self) -> &str {
        &self.writer_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_temp_files_of_this_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let partition = dir.path().join("spans/date=2026-01-01/hour=03");
        fs::create_dir_all(&partition).unwrap();
        let ours = partition.join(layout::temp_file_name("w1", 7));
        let theirs = partition.join(layout::temp_file_name("w2", 7));
        let published = partition.join(layout::file_name("w1", 6));
        for file in [&ours, &theirs, &published] {
            fs::write(file, b"x").unwrap();
        }
        let sink = LocalDirSink::new(dir.path(), "w1");
        assert_eq!(
            sink.remove_abandoned_temp_files(&["spans", "chains"])
                .unwrap(),
            1
        );
        assert!(!ours.exists() && theirs.exists() && published.exists());
    }

    #[test]
    fn publish_is_atomic_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path(), "w1");
        let p = Partition::of_nanos(0);
        let a = sink.publish("spans", &p, 7, b"first").unwrap();
        // A clock that stepped back proposes a lower number: names still sort by publication.
        let b = sink.publish("spans", &p, 3, b"second").unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read(dir.path().join(&a)).unwrap(), b"first");
        let names: Vec<String> = sink
            .list("spans", &p)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            names,
            vec!["w1-000000000007.parquet", "w1-000000000008.parquet"]
        );
        let hidden = fs::read_dir(dir.path().join(p.dir("spans")))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(hidden, 0, "no temp file left behind");
    }
}

/// File sequence numbers: microseconds since the epoch, strictly increasing, so names sort by
/// publication across restarts without a scan of earlier files. One per writer of files.
#[derive(Debug, Default)]
pub struct FileSequence {
    last: u64,
}

impl FileSequence {
    pub fn next_seq(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last = now.max(self.last + 1);
        self.last
    }
}
