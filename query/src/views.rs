//! Views for the questions security teams report on. Each is plain SQL over the tables, so
//! `SHOW CREATE`-style reading of this file is the documentation of what a figure means.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;

use crate::declared::glob_matches;
use crate::error::{QueryError, Result};

/// `(name, SQL)` in dependency order.
pub const VIEWS: &[(&str, &str)] = &[
    // The newest revision of each side effect's chain. A late span that changed a chain wrote a
    // higher revision; a chain written twice (a restart re-stitched its trace) is one row here.
    // An anti-join against the few later revisions (revision > 1), not a window over all chains:
    // the window sorted every chain row, paths and hops included, in memory (gigabytes at 10M
    // spans), while this streams the chains and holds only the later revisions' keys.
    (
        "chains_latest",
        "SELECT * FROM chains c
         WHERE NOT EXISTS (
           SELECT 1 FROM chains later
           WHERE later.revision > 1
             AND later.trace_id = c.trace_id
             AND later.effect_span_id = c.effect_span_id
             AND later.revision > c.revision)",
    ),
    // chains_latest, with the approved owner (if any) vouching for an agent, the credential or
    // the effect's service at the time of the effect; `traceable` is a human at the head of the
    // chain or such an owner.
    (
        "chains_attributed",
        "WITH candidates AS (
           SELECT trace_id, effect_span_id, time, 'credential' AS kind, credential_fp AS id
             FROM chains_latest WHERE credential_fp IS NOT NULL
           UNION ALL
           SELECT trace_id, effect_span_id, time, 'workload' AS kind, effect_service AS id
             FROM chains_latest WHERE effect_service IS NOT NULL
           UNION ALL
           SELECT trace_id, effect_span_id, time, 'agent' AS kind, unnest(agents) AS id
             FROM chains_latest),
         vouched AS (
           SELECT k.trace_id, k.effect_span_id, min(o.owner) AS owner
           FROM candidates k JOIN owners o ON o.kind = k.kind AND o.id = k.id
           WHERE o.approved
             AND (o.expires_at IS NULL OR o.expires_at > k.time)
             AND (o.revoked_at IS NULL OR o.revoked_at > k.time)
           GROUP BY k.trace_id, k.effect_span_id)
         SELECT c.*, v.owner AS approved_owner,
                c.attributed OR v.owner IS NOT NULL AS traceable
         FROM chains_latest c
         LEFT JOIN vouched v
           ON c.trace_id = v.trace_id AND c.effect_span_id = v.effect_span_id",
    ),
    // Per day and per outermost agent (NULL: no agent in the chain), the share of side effects
    // and of writes that are traceable to a human or an approved owner.
    (
        "lineage_coverage",
        "SELECT CAST(date_trunc('day', time) AS DATE) AS day,
                agents[1] AS agent,
                count(*) AS actions,
                sum(CASE WHEN traceable THEN 1 ELSE 0 END) AS traceable_actions,
                sum(CASE WHEN effect_is_write THEN 1 ELSE 0 END) AS writes,
                sum(CASE WHEN effect_is_write AND traceable THEN 1 ELSE 0 END) AS traceable_writes,
                sum(CASE WHEN traceable THEN 1.0 ELSE 0.0 END) / count(*) AS action_coverage,
                CASE WHEN sum(CASE WHEN effect_is_write THEN 1 ELSE 0 END) = 0 THEN NULL
                     ELSE sum(CASE WHEN effect_is_write AND traceable THEN 1.0 ELSE 0.0 END)
                          / sum(CASE WHEN effect_is_write THEN 1 ELSE 0 END) END AS write_coverage
         FROM chains_attributed
         GROUP BY CAST(date_trunc('day', time) AS DATE), agents[1]",
    ),
    // Per credential: the token's lifetime (exp − iat) and how long it was actually seen in use.
    (
        "privilege_duration",
        "SELECT credential_fp,
                min(credential_kind) AS credential_kind,
                min(token_iss) AS issuer,
                min(token_sub) AS subject,
                min(token_issued_at) AS issued_at,
                max(token_expires_at) AS expires_at,
                (CAST(max(token_expires_at) AS BIGINT) - CAST(min(token_issued_at) AS BIGINT))
                  / 1e9 AS lifetime_seconds,
                min(start_time) AS first_used,
                max(end_time) AS last_used,
                (CAST(max(end_time) AS BIGINT) - CAST(min(start_time) AS BIGINT)) / 1e9
                  AS observed_seconds,
                count(*) AS spans
         FROM spans
         WHERE credential_fp IS NOT NULL
         GROUP BY credential_fp",
    ),
    // Per credential: when it was first and last seen, who presented it, what it invoked, and
    // the scopes its tokens carried against those a grant ties to an operation it invoked.
    (
        "credential_usage",
        "WITH seen AS (
           SELECT credential_fp,
                  min(credential_kind) AS credential_kind,
                  min(start_time) AS first_seen,
                  max(start_time) AS last_seen,
                  count(*) AS spans,
                  count(DISTINCT trace_id) AS traces,
                  sum(CASE WHEN user_id IS NOT NULL THEN 1 ELSE 0 END) AS spans_with_user,
                  array_sort(array_distinct(flatten(array_agg(token_scopes)))) AS scopes_granted
           FROM spans WHERE credential_fp IS NOT NULL GROUP BY credential_fp),
         presenters AS (
           SELECT dst_id AS credential_fp,
                  array_sort(array_agg(DISTINCT src_kind || ':' || src_id)) AS presented_by
           FROM edges WHERE relation = 'presented' GROUP BY dst_id),
         operations AS (
           SELECT src_id AS credential_fp, array_sort(array_agg(DISTINCT dst_id)) AS operations
           FROM edges WHERE relation = 'invoked' GROUP BY src_id),
         scope_use AS (
           SELECT e.src_id AS credential_fp, array_agg(DISTINCT g.subject_id) AS scopes
           FROM edges e JOIN grants g
             ON g.subject_kind = 'scope' AND g.target_kind = 'operation'
            AND glob_match(g.target_pattern, e.dst_id)
           WHERE e.relation = 'invoked' GROUP BY e.src_id)
         SELECT s.*,
                p.presented_by,
                coalesce(cardinality(p.presented_by), 0) AS presenter_count,
                o.operations,
                array_sort(array_intersect(s.scopes_granted, u.scopes)) AS scopes_used
         FROM seen s
         LEFT JOIN presenters p ON p.credential_fp = s.credential_fp
         LEFT JOIN operations o ON o.credential_fp = s.credential_fp
         LEFT JOIN scope_use u ON u.credential_fp = s.credential_fp",
    ),
];

/// Registers `glob_match` and every view.
pub async fn register(ctx: &SessionContext) -> Result<()> {
    ctx.register_udf(glob_match_udf());
    for (name, sql) in VIEWS {
        let frame = ctx
            .sql(&format!("CREATE VIEW {name} AS {sql}"))
            .await
            .map_err(|e| QueryError::storage(format!("defining view {name}"), e))?;
        frame
            .collect()
            .await
            .map_err(|e| QueryError::storage(format!("defining view {name}"), e))?;
    }
    Ok(())
}

/// `glob_match(pattern, text)`: the grants' pattern syntax (`*` matches any run of characters)
/// in SQL, so views and the blast radius agree on what a grant covers.
fn glob_match_udf() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "glob_match",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let patterns = as_string_array(&arrays[0])?;
            let texts = as_string_array(&arrays[1])?;
            let matched: BooleanArray = patterns
                .iter()
                .zip(texts.iter())
                .map(|(p, t)| Some(glob_matches(p?, t?)))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(matched) as ArrayRef))
        }),
    )
}
