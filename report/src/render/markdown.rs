//! The report as Markdown (GitHub-flavoured tables), for tickets and chat.

use std::fmt::Write;

use crate::sections::Report;
use crate::table::{Table, value_text};

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", text(&report.title));
    let _ = writeln!(
        out,
        "Generated {} by idtrail in {} ms.\n",
        report.generated_at, report.elapsed_ms
    );
    for section in &report.sections {
        let _ = writeln!(out, "## {}\n\n{}\n", section.title, text(&section.intro));
        match section.id {
            "summary" => {
                for figure in &report.summary {
                    let _ = writeln!(
                        out,
                        "- **{}**: {}",
                        text(&figure.label),
                        text(&value_text(&figure.value))
                    );
                }
                out.push('\n');
            }
            "chains" => {
                for chain in &section.chains {
                    let steps: Vec<String> = chain
                        .steps
                        .iter()
                        .map(|s| format!("{} {}", s.kind, code(&s.id)))
                        .collect();
                    let _ = writeln!(
                        out,
                        "- {} ({} time(s){}; trace {})",
                        steps.join(" → "),
                        chain.times,
                        if chain.traceable {
                            ""
                        } else {
                            ", **unattributable**"
                        },
                        code(&chain.example_trace_id)
                    );
                }
                if section.chains.is_empty() {
                    out.push_str("None.\n");
                }
                out.push('\n');
            }
            _ => table(&mut out, &section.table),
        }
        let _ = writeln!(out, "Answered in {} ms.\n", section.elapsed_ms);
        for sql in &section.sql {
            let fence = fence(sql);
            let _ = writeln!(
                out,
                "<details><summary>SQL</summary>\n\n{fence}sql\n{sql}\n{fence}\n</details>\n"
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
            .map(|v| text(&value_text(v)).replace('\n', " "))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    if table.truncated {
        out.push_str("\n_Only the first rows are shown (--max-rows); run the SQL for all._\n");
    }
    out.push('\n');
}

/// Text that Markdown shows as it is: no emphasis, links, HTML or table breaks from the data.
fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// An inline code span that holds any text: the fence is longer than any run of backticks in it.
fn code(raw: &str) -> String {
    let ticks = "`".repeat(longest_run(raw, '`') + 1);
    format!("{ticks} {raw} {ticks}")
}

/// A code fence longer than any run of backticks in `raw` (at least three).
fn fence(raw: &str) -> String {
    "`".repeat((longest_run(raw, '`') + 1).max(3))
}

fn longest_run(raw: &str, c: char) -> usize {
    raw.split(|x| x != c).map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_break_out_of_text_code_or_fences() {
        assert_eq!(text("a|b *c* <x>"), "a\\|b \\*c\\* \\<x\\>");
        assert_eq!(code("a`b"), "`` a`b ``");
        assert_eq!(fence("x ``` y"), "````");
        assert_eq!(fence("plain"), "```");
    }
}
