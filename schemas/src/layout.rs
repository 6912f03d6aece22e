//! Where table files live: `<table>/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet`.
//!
//! Hive-style partition directories let DataFusion, DuckDB, Trino and Spark prune by date and
//! hour without reading footers. Files being written carry a leading `.` (hidden) so that every
//! reader, ours or not, skips them until the atomic rename publishes them.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike};

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

    /// Directory of this partition relative to the data directory.
    pub fn dir(&self, table: &str) -> PathBuf {
        Path::new(table)
            .join(format!(
                "date={:04}-{:02}-{:02}",
                self.year, self.month, self.day
            ))
            .join(format!("hour={:02}", self.hour))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "date={:04}-{:02}-{:02}/hour={:02}",
            self.year, self.month, self.day, self.hour
        )
    }
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
    fn file_names_round_trip_and_hide_temp_files() {
        let name = file_name("w1", 42);
        assert_eq!(name, "w1-000000000042.parquet");
        assert_eq!(parse_file_seq("w1", &name), Some(42));
        assert_eq!(parse_file_seq("w2", &name), None);
        assert!(temp_file_name("w1", 42).starts_with('.'));
        assert_eq!(parse_file_seq("w1", &temp_file_name("w1", 42)), None);
    }
}
