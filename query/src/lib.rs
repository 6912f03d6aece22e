//! The query layer over idtrail's Parquet tables.
//!
//! For now it finds a table's published files, pruning hour partitions by time without opening
//! a file; the DataFusion catalog (issue 4) registers tables on the same layout.

use std::io;
use std::path::{Path, PathBuf};

use idtrail_schemas::layout::{HOUR_NANOS, Partition};

/// A half-open time range `[start, end)` in ns since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start: i64,
    pub end: i64,
}

impl TimeRange {
    fn overlaps(&self, partition: &Partition) -> bool {
        let start = partition.start_nanos();
        start < self.end && start.saturating_add(HOUR_NANOS) > self.start
    }
}

/// Published files of `table` under `data_dir`, in partition then name order, limited to the
/// partitions overlapping `range` when one is given. Hidden files (publications in progress)
/// and anything outside the `date=…/hour=…` layout are ignored.
pub fn published_files(
    data_dir: &Path,
    table: &str,
    range: Option<TimeRange>,
) -> io::Result<Vec<PathBuf>> {
    let mut partitions = Vec::new();
    for date in read_dir_sorted(&data_dir.join(table))? {
        for hour in read_dir_sorted(&date)? {
            let names = (file_name(&date), file_name(&hour));
            let Some(partition) = Partition::parse(&names.0, &names.1) else {
                continue;
            };
            if range.is_none_or(|r| r.overlaps(&partition)) {
                partitions.push((partition, hour));
            }
        }
    }
    partitions.sort();
    let mut files = Vec::new();
    for (_, dir) in partitions {
        for path in read_dir_sorted(&dir)? {
            let name = file_name(&path);
            if !name.starts_with('.') && name.ends_with(".parquet") && path.is_file() {
                files.push(path);
            }
        }
    }
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_dir_sorted(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn lists_published_files_and_prunes_by_hour() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "spans/date=2026-11-22/hour=13/w-1.parquet");
        touch(root, "spans/date=2026-11-22/hour=13/.w-2.parquet.tmp");
        touch(root, "spans/date=2026-11-22/hour=14/w-3.parquet");
        touch(root, "spans/date=2026-11-21/hour=23/w-0.parquet");
        touch(root, "spans/not-a-partition/w-9.parquet");

        let all = published_files(root, "spans", None).unwrap();
        let names: Vec<String> = all.iter().map(|p| file_name(p)).collect();
        assert_eq!(names, vec!["w-0.parquet", "w-1.parquet", "w-3.parquet"]);

        // 13:30 to 13:45 touches only hour 13.
        let t1330 = 1_795_354_200_000_000_000;
        let range = TimeRange {
            start: t1330,
            end: t1330 + 15 * 60 * 1_000_000_000,
        };
        let pruned = published_files(root, "spans", Some(range)).unwrap();
        assert_eq!(pruned.len(), 1);
        assert!(pruned[0].ends_with("hour=13/w-1.parquet"));
        assert!(published_files(root, "chains", None).unwrap().is_empty());
    }
}
