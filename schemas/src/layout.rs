//! Where table files live: `<table>/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet`.
//!
//! Hive-style partition directories let DataFusion, DuckDB, Trino and Spark prune by date and
//! hour without reading footers. Files being written carry a leading `.` (hidden) so that every
//! reader, ours or not, skips them until the atomic rename publishes them.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike};

/// Length of a partition, in nanoseconds.
pub const HOUR_NANOS: i64 = 3_600_000_000_000;

/// The hour-granular partition a row belongs to, by its event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
}

impl Partition {
    /// Partition of a UTC timestamp in nanoseconds since the epoch.
    pub fn of_nanos(nanos: i64) -> Partition {
        let t = DateTime::from_timestamp_nanos(nanos);
        Partition {
            year: t.year(),
            month: t.month(),
            day: t.day(),
            hour: t.hour(),
        }
    }

    /// The partition named by hive directory names `date=YYYY-MM-DD` and `hour=HH`.
    pub fn parse(date_dir: &str, hour_dir: &str) -> Option<Partition> {
        let date = date_dir.strip_prefix("date=")?;
        let hour: u32 = hour_dir.strip_prefix("hour=")?.parse().ok()?;
        let mut parts = date.splitn(3, '-');
        let year = parts.next()?.parse().ok()?;
        let month = parts.next()?.parse().ok()?;
        let day = parts.next()?.parse().ok()?;
        let valid = chrono::NaiveDate::from_ymd_opt(year, month, day).is_some() && hour < 24;
        valid.then_some(Partition {
            year,
            month,
            day,
            hour,
        })
    }

    /// First instant of the partition, ns since the epoch.
    pub fn start_nanos(&self) -> i64 {
        chrono::NaiveDate::from_ymd_opt(self.year, self.month, self.day)
            .and_then(|d| d.and_hms_opt(self.hour, 0, 0))
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
            .unwrap_or(i64::MIN)
    }

    /// Directory of this partition relative to the data directory.
    pub fn dir(&self, table: &str) -> PathBuf {
        Path::new(table)
            .join(format!("date={}", self.date_value()))
            .join(format!("hour={}", self.hour_value()))
    }

    /// The `date` partition column's value: `YYYY-MM-DD`.
    pub fn date_value(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// The `hour` partition column's value: `HH`.
    pub fn hour_value(&self) -> String {
        format!("{:02}", self.hour)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "date={}/hour={}", self.date_value(), self.hour_value())
    }
}

/// Whether a file name is a published table file: `*.parquet`, not hidden (a leading `.` marks
/// a publication in progress). Every reader of the layout filters with this.
pub fn is_published_name(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".parquet")
}

/// Name of a published file: `<writer-id>-<seq>.parquet`, seq zero-padded so names sort.
pub fn file_name(writer_id: &str, seq: u64) -> String {
    format!("{writer_id}-{seq:012}.parquet")
}

/// Name of the hidden temp file a publication writes before its rename.
pub fn temp_file_name(writer_id: &str, seq: u64) -> String {
    format!(".{writer_id}-{seq:012}.parquet.tmp")
}

/// Name of a compacted file: `<writer-id>-<first>-<last>.parquet`. It holds every row of that
/// writer's files in the partition whose sequence numbers lie in `first..=last`, and from the
/// moment it is published it supersedes them (see [`retain_visible`]).
pub fn compacted_file_name(writer_id: &str, first: u64, last: u64) -> String {
    format!("{writer_id}-{first:012}-{last:012}.parquet")
}

/// Footer key of a compacted file: the names of the files it merged, comma-separated. A reader
/// that already holds their rows (the lineage graph) knows from it that the file adds nothing.
pub const COMPACTED_FROM_KEY: &str = "idtrail.compacted_from";

/// Name of the hidden temp file a compaction writes before its rename.
pub fn compacted_temp_file_name(writer_id: &str, first: u64, last: u64) -> String {
    format!(".{writer_id}-{first:012}-{last:012}.parquet.tmp")
}

/// What a published file's name says: whose it is and which of its writer's sequence numbers
/// it holds (one for a published file, a range for a compacted one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSeqs<'a> {
    pub writer_id: &'a str,
    pub first: u64,
    pub last: u64,
}

impl FileSeqs<'_> {
    pub fn is_compacted(&self) -> bool {
        self.first != self.last
    }
}

/// Parses `<writer-id>-<seq>.parquet` and `<writer-id>-<first>-<last>.parquet`. A writer id
/// has no `-` (the config allows letters, digits and `_`), so the split is unambiguous.
pub fn parse_file_name(file_name: &str) -> Option<FileSeqs<'_>> {
    if !is_published_name(file_name) {
        return None;
    }
    let stem = file_name.strip_suffix(".parquet")?;
    let mut parts = stem.split('-');
    let writer_id = parts.next().filter(|w| !w.is_empty())?;
    let first: u64 = parts.next()?.parse().ok()?;
    let last: u64 = match parts.next() {
        Some(last) => last.parse().ok()?,
        None => first,
    };
    if parts.next().is_some() || last < first {
        return None;
    }
    Some(FileSeqs {
        writer_id,
        first,
        last,
    })
}

/// The highest sequence number a published file of `writer_id` holds, or `None` for any other
/// file. A new publication takes a number above it, so it is never superseded by a compacted
/// file made before it.
pub fn parse_file_seq(writer_id: &str, file_name: &str) -> Option<u64> {
    parse_file_name(file_name)
        .filter(|f| f.writer_id == writer_id)
        .map(|f| f.last)
}

/// Keeps the files of one partition directory a reader should see: drops every file whose
/// writer has another file there covering its sequence numbers (a compacted file supersedes
/// its sources the moment it is renamed into place, before they are deleted, and after a crash
/// in between). Names outside the layout are kept as they are. Every reader of the layout,
/// the query engine's listings included, filters with this, so no row is ever seen twice.
pub fn retain_visible<T>(files: &mut Vec<T>, name_of: impl Fn(&T) -> &str) {
    // Per writer, ranges sorted by first ascending, then last descending: a range is covered
    // exactly when an earlier one in that order reaches at least as far.
    let mut ranges: Vec<(&str, u64, std::cmp::Reverse<u64>, usize)> = files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            parse_file_name(name_of(f))
                .map(|s| (s.writer_id, s.first, std::cmp::Reverse(s.last), i))
        })
        .collect();
    if !ranges.iter().any(|r| r.1 != r.2.0) {
        return; // no compacted file: nothing is superseded
    }
    ranges.sort_unstable();
    let mut hidden = vec![false; files.len()];
    let mut reach: Option<(&str, u64)> = None;
    for &(writer, _, std::cmp::Reverse(last), index) in &ranges {
        match reach {
            Some((w, furthest)) if w == writer && last <= furthest => hidden[index] = true,
            Some((w, furthest)) if w == writer => reach = Some((w, furthest.max(last))),
            _ => reach = Some((writer, last)),
        }
    }
    let mut index = 0;
    files.retain(|_| {
        index += 1;
        !hidden[index - 1]
    });
}

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
/// partitions overlapping `range` when one is given. Hidden files (publications in progress),
/// files a compacted file supersedes and anything outside the `date=…/hour=…` layout are
/// ignored.
pub fn published_files(
    data_dir: &Path,
    table: &str,
    range: Option<TimeRange>,
) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (partition, dir) in partition_dirs(&data_dir.join(table))? {
        if !range.is_none_or(|r| r.overlaps(&partition)) {
            continue;
        }
        let mut published: Vec<(PathBuf, String)> = read_dir_sorted(&dir)?
            .into_iter()
            .map(|path| {
                let name = base_name(&path);
                (path, name)
            })
            .filter(|(path, name)| is_published_name(name) && path.is_file())
            .collect();
        retain_visible(&mut published, |(_, name)| name);
        files.extend(published.into_iter().map(|(path, _)| path));
    }
    Ok(files)
}

/// The `date=…/hour=…` directories under a table directory, in time order; anything else there
/// is ignored, and a missing table directory has none.
pub fn partition_dirs(table_dir: &Path) -> io::Result<Vec<(Partition, PathBuf)>> {
    let mut partitions = Vec::new();
    for date in read_dir_sorted(table_dir)? {
        for hour in read_dir_sorted(&date)? {
            if let Some(partition) = Partition::parse(&base_name(&date), &base_name(&hour)) {
                partitions.push((partition, hour));
            }
        }
    }
    partitions.sort();
    Ok(partitions)
}

fn base_name(path: &Path) -> String {
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

    #[test]
    fn partition_of_known_instant() {
        // 2026-11-22T13:45:00Z
        let p = Partition::of_nanos(1_795_355_100_000_000_000);
        assert_eq!(p.to_string(), "date=2026-11-22/hour=13");
        assert_eq!(
            p.dir("spans"),
            PathBuf::from("spans/date=2026-11-22/hour=13")
        );
    }

    #[test]
    fn partition_directories_parse_back() {
        let p = Partition::of_nanos(1_795_355_100_000_000_000);
        assert_eq!(Partition::parse("date=2026-11-22", "hour=13"), Some(p));
        assert_eq!(p.start_nanos(), 1_795_352_400_000_000_000);
        assert_eq!(Partition::parse("date=2026-02-30", "hour=13"), None);
        assert_eq!(Partition::parse("date=2026-11-22", "hour=24"), None);
        assert_eq!(Partition::parse("2026-11-22", "hour=1"), None);
    }

    #[test]
    fn file_names_round_trip_and_hide_temp_files() {
        let name = file_name("w1", 42);
        assert_eq!(name, "w1-000000000042.parquet");
        assert_eq!(parse_file_seq("w1", &name), Some(42));
        assert_eq!(parse_file_seq("w2", &name), None);
        assert!(temp_file_name("w1", 42).starts_with('.'));
        assert_eq!(parse_file_seq("w1", &temp_file_name("w1", 42)), None);
    }

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
        let names: Vec<String> = all.iter().map(|p| base_name(p)).collect();
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

    #[test]
    fn file_names_parse_to_their_writer_and_sequence_numbers() {
        let plain = file_name("w_1", 7);
        let compacted = compacted_file_name("w_1", 7, 42);
        assert_eq!(
            parse_file_name(&plain),
            Some(FileSeqs {
                writer_id: "w_1",
                first: 7,
                last: 7
            })
        );
        assert!(parse_file_name(&compacted).is_some_and(|f| f.is_compacted() && f.last == 42));
        assert_eq!(parse_file_seq("w_1", &compacted), Some(42));
        assert_eq!(parse_file_seq("w", &compacted), None);
        for bad in [
            "w-.parquet",
            "-1.parquet",
            "w-9-3.parquet",
            "w-1-2-3.parquet",
            ".w-1.parquet",
            "w-1.parquet.tmp",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_compacted_file_hides_exactly_the_files_it_covers() {
        let mut names = vec![
            "a-000000000001.parquet",
            "a-000000000002.parquet",
            "a-000000000003.parquet",
            "a-000000000004.parquet",
            "a-000000000001-000000000003.parquet",
            "b-000000000002.parquet", // another writer's numbers are its own
            "notes.parquet",          // outside the layout: kept
        ];
        retain_visible(&mut names, |n| n);
        assert_eq!(
            names,
            vec![
                "a-000000000004.parquet",
                "a-000000000001-000000000003.parquet",
                "b-000000000002.parquet",
                "notes.parquet",
            ]
        );
        // A later compaction over an earlier one and a newer file supersedes both.
        let mut names = vec![
            "a-000000000001-000000000003.parquet",
            "a-000000000004.parquet",
            "a-000000000001-000000000004.parquet",
            "a-000000000005.parquet",
        ];
        retain_visible(&mut names, |n| n);
        assert_eq!(
            names,
            vec![
                "a-000000000001-000000000004.parquet",
                "a-000000000005.parquet"
            ]
        );
    }

    #[test]
    fn published_files_skip_what_a_compacted_file_supersedes() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("spans/date=2026-11-22/hour=13");
        std::fs::create_dir_all(&hour).unwrap();
        for name in [
            file_name("w", 1),
            file_name("w", 2),
            compacted_file_name("w", 1, 2),
            file_name("w", 3),
        ] {
            std::fs::write(hour.join(name), b"x").unwrap();
        }
        let names: Vec<String> = published_files(dir.path(), "spans", None)
            .unwrap()
            .iter()
            .map(|p| base_name(p))
            .collect();
        assert_eq!(
            names,
            vec![compacted_file_name("w", 1, 2), file_name("w", 3)]
        );
    }
}
