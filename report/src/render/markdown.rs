//! The report as Markdown (GitHub-flavoured tables), for tickets and chat.

use std::fmt::Write;

use crate::sections::Report;
use crate::table::{Table, value_text};

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", report.title);
    let _ = writeln!(
        out,
        "Generated {} by idtrail in {} ms.\n",
        report.generated_at, report.elapsed_ms
    );
    for section in &report.sections {
        let _ = writeln!(out, "## {}\n\n{}\n", section.title, section.intro);
        match section.id {
            "summary" => {
                for figure in &report.summary {
                    let _ = writeln!(out, "- **{}**: {}", figure.label, value_text(&figure.value));
                }
                out.push('\n');
            }
            "chains" => {
                for chain in &section.chains {
                    let steps: Vec<String> = chain
                        .steps
                        .iter()
                        .map(|s| format!("{} `{}`", s.kind, s.id))
                        .collect();
                    let _ = writeln!(
                        out,
                        "- {} ({} time(s){}; trace `{}`)",
                        steps.join(" → "),
                        chain.times,
                        if chain.traceable {
                            ""
                        } else {
                            ", **unattributable**"
                        },
                        chain.example_trace_id
                    );
                }
                if section.chains.is_empty() {
                    out.push_str("None.\n");
                }
                out.push('\n');
            }
            _ => table(&mut out, &section.table),
        }
        for sql in &section.sql {
            let _ = writeln!(
                out,
                "<details><summary>SQL</summary>\n\n```sql\n{sql}\n```\n</details>\n"
            );
        }
    }
    out
}

fn table(out: &mut String, table: &Table) {
    if table.rows.is_empty() {
        out.push_str("None.\n\n");
        return;
    }
    let _ = writeln!(out, "| {} |", table.columns.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(table.columns.len()));
    for row in &table.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|v| value_text(v).replace('|', "\\|").replace('\n', " "))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    if table.truncated {
        out.push_str("\n_Only the first rows are shown (--max-rows); run the SQL for all._\n");
    }
    out.push('\n');
}
