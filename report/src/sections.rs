//! The report's sections: each is SQL over the query layer plus its answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use idtrail_query::QueryEngine;
use serde::Serialize;

use crate::error::{ReportError, Result};
use crate::graph::{ChainDrawing, ChainShapes};
use crate::scope::{Scope, ScopeInfo, in_list, literal, rfc3339, with_clause};
use crate::table::{Table, text_column};
use idtrail_query::findings::Per;

/// How much a report holds.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Rows kept per table (the timeline, the blast radius…); the section says when it cut.
    pub max_rows: usize,
    /// Distinct chain shapes drawn.
    pub max_chains: usize,
    /// `blast_radius` depth.
    pub max_depth: u32,
    /// Credentials whose blast radius is shown when the scope is not one identity.
    pub max_blast_credentials: usize,
    /// Include the findings section: every detection rule, filtered to the identities and
    /// traces in scope before it runs (ADR 12).
    pub findings: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            max_rows: 500,
            max_chains: 25,
            max_depth: 6,
            max_blast_credentials: 5,
            findings: true,
        }
    }
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub scope: ScopeInfo,
    pub generated_at: String,
    /// Key figures, in order.
    pub summary: Vec<Figure>,
    pub sections: Vec<Section>,
    /// Time taken to run every query, in milliseconds.
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub label: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    /// What the section shows and how to read it.
    pub intro: String,
    /// The queries behind it, runnable as they stand.
    pub sql: Vec<String>,
    pub table: Table,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chains: Vec<ChainDrawing>,
    /// Time its queries took, in milliseconds (the scope's own query counts towards the
    /// report's total only).
    pub elapsed_ms: u64,
}

impl Report {
    pub fn section(&self, id: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.id == id)
    }
}

/// Runs every section's queries for `scope`.
pub async fn build(engine: &QueryEngine, scope: &Scope, options: &ReportOptions) -> Result<Report> {
    let started = Instant::now();
    let queries = ScopedQueries::new(engine, scope).await?;
    let engine = &queries.engine;
    // Each section's time runs from the end of the one before.
    let mut mark = Instant::now();
    let limit = options.max_rows + 1;
    let mut sections = Vec::new();

    let summary_sql = queries.sql(
        &[],
        "SELECT count(*) AS side_effects,\n       \
                sum(CASE WHEN effect_is_write THEN 1 ELSE 0 END) AS writes,\n       \
                sum(CASE WHEN NOT traceable THEN 1 ELSE 0 END) AS unattributed,\n       \
                count(DISTINCT user_id) AS users,\n       \
                cardinality(array_distinct(flatten(array_agg(agents)))) AS agents,\n       \
                count(DISTINCT credential_fp) AS credentials,\n       \
                count(DISTINCT trace_id) AS traces,\n       \
                date_trunc('second', min(time)) AS first_action,\n       \
                date_trunc('second', max(time)) AS last_action\n\
         FROM scoped",
    );
    let summary = run(engine, "summary", &summary_sql.executed, 1).await?;
    let figures = summary
        .columns
        .iter()
        .enumerate()
        .map(|(i, label)| Figure {
            label: label.replace('_', " "),
            value: summary
                .rows
                .first()
                .and_then(|r| r.get(i))
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        })
        .collect();
    let summary_ms = since(&mut mark);

    // Streamed, not sorted: only the distinct shapes are kept, whatever the number of chains.
    let chains_sql = queries.sql(&[], "SELECT path, time, traceable, trace_id FROM scoped");
    let mut shapes = ChainShapes::new(options.max_chains);
    let failed = |source| ReportError::Query {
        section: "chains",
        source,
    };
    let prepared = engine.prepare(&chains_sql.executed).await.map_err(failed)?;
    let mut stream = engine.execute(prepared, Vec::new()).await.map_err(failed)?;
    while let Some(batch) = stream.next().await {
        shapes.add(&batch.map_err(failed)?);
    }
    let (drawings, more) = shapes.finish();
    let mut chains_table = Table {
        columns: vec![
            "chain".into(),
            "times".into(),
            "first_seen".into(),
            "last_seen".into(),
            "traceable".into(),
            "example_trace_id".into(),
        ],
        rows: Vec::new(),
        truncated: more,
    };
    for drawing in &drawings {
        chains_table.rows.push(vec![
            drawing
                .steps
                .iter()
                .map(|s| format!("{}:{}", s.kind, s.id))
                .collect::<Vec<_>>()
                .join(" → ")
                .into(),
            drawing.times.into(),
            drawing.first_seen.clone().into(),
            drawing.last_seen.clone().into(),
            drawing.traceable.into(),
            drawing.example_trace_id.clone().into(),
        ]);
    }
    push_timed(
        &mut sections,
        &mut mark,
        Section {
            id: "chains",
            title: "Chains",
            intro:
                "Each distinct chain (user → agents → credential → API hops → effect) in scope, \
                drawn once with how often it occurred."
                    .into(),
            sql: vec![chains_sql.printed],
            table: chains_table,
            chains: drawings,
            elapsed_ms: 0,
        },
    );

    let timeline_sql = queries.sql(
        &[],
        &format!(
        "SELECT time, effect_operation AS operation, effect_target AS target,\n       \
                effect_service AS service, user_id, array_to_string(agents, ' > ') AS agents,\n       \
                credential_fp, traceable, approved_owner, trace_id, effect_span_id\n\
         FROM scoped ORDER BY time, trace_id, effect_span_id LIMIT {limit}"
        ),
    );
    push_timed(
        &mut sections,
        &mut mark,
        Section {
            id: "timeline",
            title: "Timeline of actions",
            intro: "Every side effect in scope (newest revision of its chain), oldest first: what \
                was done, by whom, through which agents and with which credential."
                .into(),
            table: run(engine, "timeline", &timeline_sql.executed, options.max_rows).await?,
            sql: vec![timeline_sql.printed],
            chains: Vec::new(),
            elapsed_ms: 0,
        },
    );

    push_timed(
        &mut sections,
        &mut mark,
        blast_radius(&queries, scope, options).await?,
    );

    let candidates = format!(
        "candidates AS (\n  \
           SELECT credential_fp, {} AS reason FROM involved\n  \
           UNION ALL\n  \
           SELECT credential_fp, {} AS reason FROM derived)",
        literal(USED_IN_SCOPE),
        literal(EXCHANGED_FROM_SCOPE)
    );
    let revoke_ctes: [&str; 6] = [
        "involved AS (\n  \
               SELECT DISTINCT step['id'] AS credential_fp\n  \
               FROM (SELECT unnest(path) AS step FROM scoped)\n  \
               WHERE step['kind'] = 'credential')",
        "hop1 AS (\n  \
               SELECT DISTINCT e.src_id AS credential_fp\n  \
               FROM edges e JOIN involved i ON e.dst_id = i.credential_fp\n  \
               WHERE e.relation = 'derived_from')",
        "hop2 AS (\n  \
               SELECT DISTINCT e.src_id AS credential_fp\n  \
               FROM edges e JOIN hop1 h ON e.dst_id = h.credential_fp\n  \
               WHERE e.relation = 'derived_from')",
        "hop3 AS (\n  \
               SELECT DISTINCT e.src_id AS credential_fp\n  \
               FROM edges e JOIN hop2 h ON e.dst_id = h.credential_fp\n  \
               WHERE e.relation = 'derived_from')",
        "derived AS (\n  \
               SELECT credential_fp FROM hop1 UNION SELECT credential_fp FROM hop2\n  \
               UNION SELECT credential_fp FROM hop3\n  \
               EXCEPT SELECT credential_fp FROM involved)",
        &candidates,
    ];
    let revoke_body = |narrowed: &str| {
        format!(
            "SELECT k.credential_fp, k.reason, min(s.credential_kind) AS kind,\n       \
                min(s.token_iss) AS issuer, min(s.token_sub) AS subject,\n       \
                max(s.token_expires_at) AS expires_at,\n       \
                min(s.start_time) AS first_seen, max(s.start_time) AS last_seen,\n       \
                array_to_string(array_sort(array_agg(DISTINCT s.service_name)), ', ') AS seen_in,\n       \
                count(*) AS spans\n\
         FROM candidates k JOIN spans s ON s.credential_fp = k.credential_fp{narrowed}\n\
         GROUP BY k.credential_fp, k.reason\n\
         ORDER BY last_seen DESC, k.credential_fp LIMIT {limit}"
        )
    };
    let revoke_sql = queries.sql(&revoke_ctes, &revoke_body(""));
    let revoke_table = revoke(engine, &queries, revoke_ctes[0], &revoke_body, options).await?;
    push_timed(
        &mut sections,
        &mut mark,
        Section {
            id: "revoke",
            title: "Credentials to revoke",
            intro: "Every credential on a chain in scope, and every token exchanged from one of \
                them (up to three exchanges away): rotate or revoke these. `seen_in` lists the \
                services that carried each."
                .into(),
            table: revoke_table,
            sql: vec![revoke_sql.printed],
            chains: Vec::new(),
            elapsed_ms: 0,
        },
    );

    let unattributed_sql = queries.sql(
        &[],
        &format!(
        "SELECT time, effect_operation AS operation, effect_target AS target,\n       \
                effect_service AS service, array_to_string(agents, ' > ') AS agents,\n       \
                credential_fp, array_to_string(missing, ', ') AS missing, trace_id, effect_span_id\n\
         FROM scoped WHERE NOT traceable\n\
         ORDER BY time, trace_id, effect_span_id LIMIT {limit}"
        ),
    );
    push_timed(
        &mut sections,
        &mut mark,
        Section {
            id: "unattributed",
            title: "Actions nobody can be attributed to",
            intro: "Side effects with neither a human at the head of their chain nor an approved \
                owner vouching for an agent, credential or service on it. `missing` names the \
                links the traces did not show."
                .into(),
            table: run(
                engine,
                "unattributed",
                &unattributed_sql.executed,
                options.max_rows,
            )
            .await?,
            sql: vec![unattributed_sql.printed],
            chains: Vec::new(),
            elapsed_ms: 0,
        },
    );

    if options.findings {
        let (printed, table) = findings(&queries, limit, options.max_rows).await?;
        push_timed(
            &mut sections,
            &mut mark,
            Section {
                id: "findings",
                title: "Findings",
                intro:
                    "Detection rules (`idtrail findings --list`) that fired on an identity or a \
                chain in scope, most severe first, with their OWASP Non-Human Identities Top 10 \
                item."
                        .into(),
                table,
                sql: vec![printed],
                chains: Vec::new(),
                elapsed_ms: 0,
            },
        );
    }

    sections.insert(
        0,
        Section {
            id: "summary",
            title: "Summary",
            intro: format!("Side effects in scope: {}.", scope.describe()),
            sql: vec![summary_sql.printed],
            table: summary,
            chains: Vec::new(),
            elapsed_ms: summary_ms,
        },
    );
    Ok(Report {
        title: format!("idtrail incident report: {}", scope.describe()),
        scope: scope.info(),
        generated_at: rfc3339(&Utc::now()),
        summary: figures,
        sections,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// The findings of the incident: those of `subject` rules on an identity or workload of a chain
/// in scope, and those of `chain` rules on a chain in scope (`per` in the rule's header,
/// ADR 12, ADR 14). Printed as one query over the `findings` view. Executed rule by rule, each
/// over the rule's own query rather than the view (planning the view of every rule cost about
/// 100 ms a time), a few at once:
/// - a `subject` rule over the store, with the scope's subjects as literal lists: DataFusion
///   pushes a filter on a rule's subject (its grouping key) down to the scans, where bloom
///   filters skip nearly every row group, so a report pays for its own identities, not for
///   evaluating every rule over the whole store (15 s at 10M spans; see BENCHMARKS.md);
/// - a `chain` rule over the report's copy of the chains in scope, kept to those chains.
async fn findings(
    queries: &ScopedQueries<'_>,
    limit: usize,
    max_rows: usize,
) -> Result<(String, Table)> {
    const SUBJECTS: &str = "subjects AS (\n  \
           SELECT DISTINCT step['kind'] AS kind, step['id'] AS id\n  \
           FROM (SELECT unnest(path) AS step FROM scoped)\n  \
           UNION\n  \
           SELECT 'workload' AS kind, effect_service AS id FROM scoped\n  \
           WHERE effect_service IS NOT NULL)";
    const COLUMNS: [&str; 9] = [
        "severity",
        "rule_id",
        "owasp_nhi",
        "title",
        "subject_kind",
        "subject_id",
        "detail",
        "time",
        "trace_id",
    ];
    /// A finding of a `chain` rule names its chain by `trace_id` and `span_id` (the effect's).
    const ON_A_CHAIN_IN_SCOPE: &str = "EXISTS (SELECT 1 FROM scoped c\n  \
           WHERE c.trace_id = findings.trace_id AND c.effect_span_id = findings.span_id)";
    let select = format!("SELECT {}", COLUMNS.join(", "));
    // Every column that tells findings apart, so the order does not depend on the scans'.
    let order = format!(
        "ORDER BY severity_rank, rule_id, subject_kind, subject_id, time, trace_id, detail\nLIMIT {limit}"
    );
    let printed = queries
        .sql(
            &[
                SUBJECTS,
                "matched AS (\n  \
                   SELECT f.* FROM findings f\n  \
                   JOIN detection_rules r ON r.id = f.rule_id\n  \
                   LEFT JOIN subjects s\n    \
                     ON r.per = 'subject' AND s.kind = f.subject_kind AND s.id = f.subject_id\n  \
                   LEFT JOIN scoped c ON r.per = 'chain'\n    \
                     AND c.trace_id = f.trace_id AND c.effect_span_id = f.span_id\n  \
                   WHERE s.id IS NOT NULL OR c.trace_id IS NOT NULL)",
            ],
            &format!("{select}\nFROM matched\n{order}"),
        )
        .printed;

    let subjects = run(
        &queries.engine,
        "findings",
        &queries
            .sql(
                &[SUBJECTS],
                "SELECT kind, id FROM subjects ORDER BY kind, id",
            )
            .executed,
        usize::MAX,
    )
    .await?;
    let mut ids_by_kind: Vec<(String, Vec<String>)> = Vec::new();
    for row in 0..subjects.rows.len() {
        let (kind, id) = (subjects.text(row, "kind"), subjects.text(row, "id"));
        match ids_by_kind.last_mut() {
            Some((last, ids)) if *last == kind => ids.push(id),
            _ => ids_by_kind.push((kind, vec![id])),
        }
    }
    let by_subject = ids_by_kind
        .iter()
        .map(|(kind, ids)| {
            format!(
                "(subject_kind = {} AND {})",
                literal(kind),
                in_list("subject_id", ids)
            )
        })
        .collect::<Vec<_>>()
        .join("\n    OR ");

    let mut rules: Vec<_> = queries.engine.rules().iter().collect();
    rules.sort_by(|a, b| (a.severity.rank(), &a.id).cmp(&(b.severity.rank(), &b.id)));
    // Owned engines (clones share everything): a stream of futures borrowing one trips the
    // compiler's higher-ranked lifetime check behind axum's handler bound.
    let runs: Vec<(QueryEngine, String)> = rules
        .into_iter()
        .filter_map(|rule| {
            let from = format!("{select}\nFROM ({}) AS findings", rule.findings_sql());
            match rule.per {
                Per::Subject if !by_subject.is_empty() => Some((
                    queries.store.clone(),
                    format!("{from}\nWHERE {by_subject}\n{order}"),
                )),
                Per::Chain => {
                    let body = format!("{from}\nWHERE {ON_A_CHAIN_IN_SCOPE}\n{order}");
                    Some((queries.engine.clone(), queries.sql(&[], &body).executed))
                }
                Per::Subject => None,
            }
        })
        .collect();
    // Rules wait on reads and planning as much as on the CPU: a few at a time overlap those.
    let parts: Vec<Table> = futures::stream::iter(runs)
        .map(
            |(engine, executed)| async move { run(&engine, "findings", &executed, max_rows).await },
        )
        .buffered(RULES_AT_ONCE)
        .try_collect()
        .await?;
    let mut table = Table {
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        ..Table::default()
    };
    for part in parts {
        table.truncated |= part.truncated;
        table.rows.extend(part.rows);
    }
    if table.rows.len() > max_rows {
        table.rows.truncate(max_rows);
        table.truncated = true;
    }
    Ok((printed, table))
}

/// Detection rules a report runs at once.
const RULES_AT_ONCE: usize = 4;

/// What the printed query's `candidates` say of a credential.
const USED_IN_SCOPE: &str = "used in scope";
const EXCHANGED_FROM_SCOPE: &str = "exchanged from a credential in scope";

/// The credentials to revoke, as the printed query answers them, in steps that each name what
/// they look up in a literal list, which reaches the Parquet scans and their bloom filters:
/// the credentials on the chains in scope; the tokens exchanged from them, one hop at a time
/// (`derived_from` edges by `dst_id`); then the spans of those credentials. Joined in one query,
/// each hop read every edge (0.5 s at 2.8M edge rows) and the spans side every span.
async fn revoke(
    engine: &QueryEngine,
    queries: &ScopedQueries<'_>,
    involved_cte: &str,
    body: &(dyn Fn(&str) -> String + Sync),
    options: &ReportOptions,
) -> Result<Table> {
    let failed = |source| ReportError::Query {
        section: "revoke",
        source,
    };
    let involved_sql = queries.sql(
        &[involved_cte],
        "SELECT credential_fp FROM involved ORDER BY credential_fp",
    );
    let involved = run(engine, "revoke", &involved_sql.executed, usize::MAX)
        .await?
        .texts("credential_fp");
    let mut seen: BTreeSet<String> = involved.iter().cloned().collect();
    let mut derived = Vec::new();
    let mut frontier = involved.clone();
    // Three hops, as the printed query's hop1..hop3.
    for _ in 0..3 {
        if frontier.is_empty() {
            break;
        }
        let hop = format!(
            "SELECT DISTINCT src_id FROM edges\n\
             WHERE relation = 'derived_from' AND {}",
            in_list("dst_id", &frontier)
        );
        frontier = run(engine, "revoke", &hop, usize::MAX)
            .await?
            .texts("src_id")
            .into_iter()
            .filter(|fp| seen.insert(fp.clone()))
            .collect();
        derived.extend(frontier.iter().cloned());
    }
    let reasons = std::iter::repeat_n(USED_IN_SCOPE, involved.len())
        .chain(std::iter::repeat_n(EXCHANGED_FROM_SCOPE, derived.len()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("credential_fp", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    let candidates = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                involved.iter().chain(&derived),
            )),
            Arc::new(StringArray::from_iter_values(reasons)),
        ],
    )
    .map_err(|e| failed(idtrail_query::QueryError::storage("listing candidates", e)))?;
    let fps: Vec<&String> = seen.iter().collect();
    let narrowed = format!("\nWHERE {}", in_list("s.credential_fp", &fps));
    let engine = engine
        .with_batches("candidates", schema, vec![candidates])
        .map_err(failed)?;
    run(&engine, "revoke", &body(&narrowed), options.max_rows).await
}

/// Observed versus potential reach of the subject, or of the busiest credentials in scope.
async fn blast_radius(
    queries: &ScopedQueries<'_>,
    scope: &Scope,
    options: &ReportOptions,
) -> Result<Section> {
    let engine = &queries.engine;
    let starts: Vec<(String, String)> = match scope.identity() {
        Some((kind, id)) => vec![(kind.to_string(), id.to_string())],
        None => {
            let sql = queries.sql(
                &[],
                &format!(
                    "SELECT credential_fp FROM scoped WHERE credential_fp IS NOT NULL\n\
                     GROUP BY credential_fp ORDER BY count(*) DESC, credential_fp LIMIT {}",
                    options.max_blast_credentials
                ),
            );
            let table = run(
                engine,
                "blast_radius",
                &sql.executed,
                options.max_blast_credentials,
            )
            .await?;
            (0..table.rows.len())
                .map(|r| ("credential".to_string(), table.text(r, "credential_fp")))
                .collect()
        }
    };
    let mut table = Table::default();
    let mut sql = Vec::new();
    for (kind, id) in &starts {
        let query = format!(
            "SELECT {kind_lit} AS start_kind, {id_lit} AS start_id, reach, kind, id, depth,\n       \
                    granted, relation, array_to_string(path, ' → ') AS path, last_seen\n\
             FROM blast_radius({kind_lit}, {id_lit}, {depth})\n\
             WHERE reach <> 'start'\n\
             ORDER BY reach, depth, kind, id LIMIT {limit}",
            kind_lit = literal(kind),
            id_lit = literal(id),
            depth = options.max_depth,
            limit = options.max_rows + 1,
        );
        let part = run(engine, "blast_radius", &query, options.max_rows).await?;
        if table.columns.is_empty() {
            table.columns = part.columns.clone();
        }
        table.truncated |= part.truncated;
        table.rows.extend(part.rows);
        sql.push(query);
    }
    let observed = count_reach(&table, "observed");
    let potential = count_reach(&table, "potential");
    let subject = match scope.identity() {
        Some(_) => "The subject".to_string(),
        None => format!("The {} credential(s) used most in scope", starts.len()),
    };
    Ok(Section {
        id: "blast_radius",
        title: "Blast radius: observed versus potential",
        intro: format!(
            "{subject}: nodes reached within {} hops. Observed ({observed}) were reached \
             through recorded edges; potential ({potential}) are reachable only through grants: \
             privilege held but never used, the first to remove.",
            options.max_depth
        ),
        sql,
        table,
        chains: Vec::new(),
        elapsed_ms: 0,
    })
}

/// Adds `section` with the time since `mark` as its own; `mark` moves to now.
fn push_timed(sections: &mut Vec<Section>, mark: &mut Instant, mut section: Section) {
    section.elapsed_ms = since(mark);
    sections.push(section);
}

/// Milliseconds since `mark`, which moves to now.
fn since(mark: &mut Instant) -> u64 {
    let elapsed = mark.elapsed().as_millis() as u64;
    *mark = Instant::now();
    elapsed
}

/// A section's query twice over: as printed, with the scope's CTEs so that it runs as it
/// stands; and as executed, over `scoped` materialised once for the whole report.
struct SectionSql {
    printed: String,
    executed: String,
}

/// Runs the scope's query once and hands every section an engine where `scoped` is its answer.
///
/// With a subject, the report first copies every revision of the chains in scope out of the
/// store (ADR 14): a lookup that the page index and bloom filters narrow, because chains files
/// are sorted by credential. `chains_latest`, `chains_attributed` and the scope's printed CTEs
/// then run over that copy, as do the rules that judge one chain. Over the files they read
/// `chains` once per mention (up to eight times for `chains_attributed`), each time under a
/// filter that could not prune.
struct ScopedQueries<'a> {
    scope: &'a Scope,
    /// The whole store: what the rules that judge an identity over all it did read.
    store: QueryEngine,
    /// `scoped`, in front of the copy of the chains in scope (or of the store, without one).
    engine: QueryEngine,
    /// False when only the time window bounds the scope: materialising every chain of a window
    /// could outgrow memory, so each section then runs its printed query over the store.
    materialised: bool,
}

impl<'a> ScopedQueries<'a> {
    async fn new(store: &QueryEngine, scope: &'a Scope) -> Result<ScopedQueries<'a>> {
        let failed = |source| ReportError::Query {
            section: "scope",
            source,
        };
        let Some(chains_sql) = scope.chains_sql() else {
            return Ok(ScopedQueries {
                scope,
                store: store.clone(),
                engine: store.clone(),
                materialised: false,
            });
        };
        let (schema, mut rows) = store.sql(&chains_sql, Vec::new()).await.map_err(failed)?;
        let traces = distinct_texts(&rows, "trace_id");
        if let Some(later) = scope.later_revisions_sql(&traces)
            && !traces.is_empty()
        {
            rows.extend(store.sql(&later, Vec::new()).await.map_err(failed)?.1);
        }
        let copy = store
            .with_table_rows("chains", schema, rows)
            .await
            .map_err(failed)?;
        let sql = format!("{}SELECT * FROM scoped", scope.with_clause(&[]));
        let (schema, scoped) = copy.sql(&sql, Vec::new()).await.map_err(failed)?;
        let engine = copy
            .with_batches("scoped", schema, scoped)
            .map_err(failed)?;
        Ok(ScopedQueries {
            scope,
            store: store.clone(),
            engine,
            materialised: true,
        })
    }

    /// The query made of the section's own CTEs (`extra`, after `scoped`) and `body`.
    fn sql(&self, extra: &[&str], body: &str) -> SectionSql {
        let printed = format!("{}{body}", self.scope.with_clause(extra));
        let executed = if self.materialised {
            format!("{}{body}", with_clause(extra.iter().copied()))
        } else {
            printed.clone()
        };
        SectionSql { printed, executed }
    }
}

/// The distinct non-null values of text column `name`, sorted.
fn distinct_texts(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut values = BTreeSet::new();
    for batch in batches {
        if let Some(strings) = batch.column_by_name(name).and_then(|c| text_column(c)) {
            values.extend(strings.iter().flatten().map(str::to_string));
        }
    }
    values.into_iter().collect()
}

fn count_reach(table: &Table, reach: &str) -> usize {
    (0..table.rows.len())
        .filter(|&r| table.text(r, "reach") == reach)
        .count()
}

async fn run(
    engine: &QueryEngine,
    section: &'static str,
    sql: &str,
    max_rows: usize,
) -> Result<Table> {
    let (schema, batches) = engine
        .sql(sql, Vec::new())
        .await
        .map_err(|source| ReportError::Query { section, source })?;
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    Ok(Table::from_batches(columns, &batches, max_rows))
}
