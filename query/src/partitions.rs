//! Time filters prune hour partitions.
//!
//! Files live under `date=YYYY-MM-DD/hour=HH/`, by the hour of one time column per table (see
//! `idtrail_schemas::layout`). DataFusion prunes partition directories only on predicates over
//! the partition columns themselves, and nobody asking "what did this credential do since 10:00"
//! writes `date` and `hour`. This optimizer rule reads the bounds a query puts on the
//! partitioning column and adds the matching `date`/`hour` predicates to the scan, so the
//! directories outside the window are never listed in detail, opened or read.
//!
//! The added predicates are implied by the time predicate they come from, so answers never
//! change: a row in `hour=13` has its time column in that hour.

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator, lit};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use idtrail_schemas::layout::Partition;
use idtrail_schemas::{chains, edges, spans};

use crate::catalog::PARTITION_COLUMNS;

/// The column whose hour names a row's partition, per table.
const PARTITIONED_BY: [(&str, &str); 3] = [
    (spans::TABLE, "start_time"),
    (chains::TABLE, "time"),
    (edges::TABLE, "first_seen"),
];

/// Adds `date`/`hour` bounds to scans of the Parquet tables from bounds on their time column.
#[derive(Debug, Default)]
pub struct TimePartitionPruning;

impl OptimizerRule for TimePartitionPruning {
    fn name(&self) -> &str {
        "idtrail_time_partition_pruning"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::TableScan(mut scan) = plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(time_column) = PARTITIONED_BY
            .iter()
            .find(|(table, _)| scan.table_name.table() == *table)
            .map(|(_, column)| *column)
        else {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        };
        // Only over the listing tables themselves: the partition columns must be there.
        let source = scan.source.schema();
        let has = |name: &str| source.field_with_name(name).is_ok();
        if !(has(time_column) && PARTITION_COLUMNS.iter().all(|c| has(c))) {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        let column = |name: &str| Expr::Column(Column::new(Some(scan.table_name.clone()), name));
        let mut added = Vec::new();
        for filter in scan.filters.iter().flat_map(|f| split_conjunction(f)) {
            let Some((bound, nanos)) = time_bound(filter, time_column) else {
                continue;
            };
            let at = Partition::of_nanos(nanos);
            let (at_date, at_hour) = (lit(at.date_value()), lit(at.hour_value()));
            let [date, hour] = PARTITION_COLUMNS.map(column);
            let predicate = match bound {
                Bound::From => date
                    .clone()
                    .gt(at_date.clone())
                    .or(date.eq(at_date).and(hour.gt_eq(at_hour))),
                Bound::Until => date
                    .clone()
                    .lt(at_date.clone())
                    .or(date.eq(at_date).and(hour.lt_eq(at_hour))),
                Bound::At => date.eq(at_date).and(hour.eq(at_hour)),
            };
            if !scan.filters.contains(&predicate) && !added.contains(&predicate) {
                added.push(predicate);
            }
        }
        if added.is_empty() {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        scan.filters.extend(added);
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    }
}

/// Which side of an instant a predicate keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// `>=` or `>`: the instant's hour and later.
    From,
    /// `<` or `<=`: the instant's hour and earlier.
    Until,
    /// `=`: the instant's hour only.
    At,
}

/// `column op literal` (or `literal op column`) on the time column, as a bound in nanoseconds.
fn time_bound(filter: &Expr, time_column: &str) -> Option<(Bound, i64)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else {
        return None;
    };
    let (value, op) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(value, _)) if c.name == time_column => (value, *op),
        (Expr::Literal(value, _), Expr::Column(c)) if c.name == time_column => (value, op.swap()?),
        _ => return None,
    };
    let bound = match op {
        Operator::Gt | Operator::GtEq => Bound::From,
        Operator::Lt | Operator::LtEq => Bound::Until,
        Operator::Eq => Bound::At,
        _ => return None,
    };
    let nanos = match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => *v,
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000)?,
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000)?,
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000)?,
        _ => return None,
    };
    Some((bound, nanos))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow::array::RecordBatch;
    use parquet::arrow::ArrowWriter;

    use crate::engine::{QueryEngine, QueryOptions};

    /// Partitions holding a file that is not Parquet fail any query that opens them: a query
    /// answers only if its time bounds kept it out of them.
    #[tokio::test]
    async fn time_bounds_skip_the_partitions_outside_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partition = |date: &str, hour: &str| {
            let path = dir
                .path()
                .join("spans")
                .join(format!("date={date}"))
                .join(format!("hour={hour}"));
            std::fs::create_dir_all(&path).expect("partition dir");
            path.join("w-1.parquet")
        };
        let schema = idtrail_schemas::spans::schema();
        let good = std::fs::File::create(partition("2026-11-22", "10")).expect("file");
        let mut writer = ArrowWriter::try_new(good, schema.clone(), None).expect("writer");
        writer
            .write(&RecordBatch::new_empty(schema))
            .expect("write");
        writer.close().expect("close");
        for (date, hour) in [
            ("2026-11-21", "23"),
            ("2026-11-22", "09"),
            ("2026-11-22", "11"),
        ] {
            std::fs::write(partition(date, hour), b"not parquet").expect("garbage");
        }
        let engine = QueryEngine::new(QueryOptions {
            data_dir: dir.path().to_path_buf(),
            memory_limit_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            owners_files: Vec::new(),
            grants_files: Vec::new(),
            rules_dirs: Vec::new(),
        })
        .await
        .expect("engine");
        for sql in [
            "SELECT count(*) FROM spans WHERE start_time >= TIMESTAMP '2026-11-22T10:30:00Z' \
             AND start_time < TIMESTAMP '2026-11-22T10:45:00Z'",
            "SELECT count(*) FROM spans WHERE TIMESTAMP '2026-11-22T10:00:00Z' <= start_time \
             AND start_time <= TIMESTAMP '2026-11-22T10:59:59Z'",
            "SELECT count(*) FROM spans \
             WHERE start_time BETWEEN '2026-11-22T10:05:00Z' AND '2026-11-22T10:06:00Z'",
            "SELECT count(*) FROM spans WHERE start_time = TIMESTAMP '2026-11-22T10:05:00Z'",
        ] {
            let answer = engine.sql(sql, Vec::new()).await;
            assert!(answer.is_ok(), "{sql}: {:?}", answer.err());
        }
        // Without a bound on the time column every partition is read, the broken ones too.
        assert!(
            engine
                .sql("SELECT count(*) FROM spans", Vec::new())
                .await
                .is_err()
        );
        assert!(
            engine
                .sql(
                    "SELECT count(*) FROM spans WHERE start_time >= TIMESTAMP '2026-11-22T10:00:00Z'",
                    Vec::new()
                )
                .await
                .is_err(),
            "hour 11 is after the lower bound and must be read"
        );
    }
}
