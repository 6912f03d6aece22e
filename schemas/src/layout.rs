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

/// The sequence number of a published file of `writer_id`, or `None` for any other file.
pub fn parse_file_seq(writer_id: &str, file_name: &str) -> Option<u64> {
    file_name
        .strip_prefix(writer_id)?
        .strip_prefix('-')?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
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
            let names = (base_name(&date), base_name(&hour));
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
            let name = base_name(&path);
            if is_published_name(&name) && path.is_file() {
                files.push(path);
            }
        }
    }
    Ok(files)
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
}
