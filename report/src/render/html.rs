//! The report as one HTML file that opens anywhere, offline: no script, no external resource.

use std::fmt::Write;

use crate::graph::colour;
use crate::sections::{Report, Section};
use crate::table::{Table, value_text};

const STYLE: &str = "
:root { --ink: #111827; --muted: #6b7280; --line: #e5e7eb; --accent: #1d4ed8; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1200px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta, .intro, .note { color: var(--muted); }
nav a { margin-right: 12px; color: var(--accent); text-decoration: none; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.figure { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 120px; }
.figure .value { display: block; font-size: 20px; font-weight: 600; }
.figure .label { color: var(--muted); }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f9fafb; }
td.empty { color: var(--muted); font-style: italic; }
tr.sev-critical td:first-child, tr.sev-high td:first-child { font-weight: 600; color: #b91c1c; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: var(--accent); }
pre { background: #f9fafb; border: 1px solid var(--line); padding: 8px; overflow-x: auto; font-size: 12px; }
figure.chain { border: 1px solid var(--line); border-radius: 8px; margin: 12px 0; padding: 8px; overflow-x: auto; }
figure.chain figcaption { color: var(--muted); margin-bottom: 4px; }
figure.chain.untraceable { border-color: #fca5a5; }
figure.chain svg { max-width: none; height: auto; display: block; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border: 1px solid #9ca3af; border-radius: 4px; }
";

/// The report as a self-contained HTML document.
pub fn html(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{title}</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n<header>\n<h1>{title}</h1>\n\
         <p class=\"meta\">Generated {generated} by idtrail in {elapsed} ms. Scope: {kind}{id}{from}{to}.</p>\n",
        title = escape(&report.title),
        generated = escape(&report.generated_at),
        elapsed = report.elapsed_ms,
        kind = escape(report.scope.kind),
        id = report
            .scope
            .id
            .as_deref()
            .map(|id| format!(" <code>{}</code>", escape(id)))
            .unwrap_or_default(),
        from = report
            .scope
            .from
            .as_deref()
            .map(|t| format!(", from {}", escape(t)))
            .unwrap_or_default(),
        to = report
            .scope
            .to
            .as_deref()
            .map(|t| format!(", until {}", escape(t)))
            .unwrap_or_default(),
    );
    out.push_str("<nav>");
    for section in &report.sections {
        let _ = write!(
            out,
            "<a href=\"#{}\">{}</a>",
            section.id,
            escape(section.title)
        );
    }
    out.push_str("</nav>\n</header>\n<main>\n");
    for section in &report.sections {
        let _ = write!(
            out,
            "<section id=\"{}\">\n<h2>{}</h2>\n<p class=\"intro\">{}</p>\n",
            section.id,
            escape(section.title),
            escape(&section.intro)
        );
        match section.id {
            "summary" => figures(&mut out, report),
            "chains" => chains(&mut out, section),
            _ => table(&mut out, &section.table, section.id == "findings"),
        }
        sql(&mut out, section);
        out.push_str("</section>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

fn figures(out: &mut String, report: &Report) {
    out.push_str("<div class=\"figures\">");
    for figure in &report.summary {
        let value = value_text(&figure.value);
        let _ = write!(
            out,
            "<div class=\"figure\"><span class=\"value\">{}</span><span class=\"label\">{}</span></div>",
            escape(if value.is_empty() { "–" } else { &value }),
            escape(&figure.label)
        );
    }
    out.push_str("</div>\n");
}

fn chains(out: &mut String, section: &Section) {
    if section.chains.is_empty() {
        out.push_str("<p class=\"note\">No chains in scope.</p>\n");
        return;
    }
    out.push_str("<p class=\"legend\">");
    for kind in idtrail_schemas::edges::NODE_KINDS {
        let _ = write!(
            out,
            "<span style=\"background:{}\">{kind}</span>",
            colour(kind)
        );
    }
    out.push_str("</p>\n");
    for chain in &section.chains {
        let _ = write!(
            out,
            "<figure class=\"chain{}\"><figcaption>{} time(s), {} – {}{}; example trace <code>{}</code></figcaption>\n{}\n</figure>\n",
            if chain.traceable { "" } else { " untraceable" },
            chain.times,
            escape(&chain.first_seen),
            escape(&chain.last_seen),
            if chain.traceable {
                ""
            } else {
                ", not attributable to a human or approved owner"
            },
            escape(&chain.example_trace_id),
            chain.svg
        );
    }
    if section.table.truncated {
        out.push_str(
            "<p class=\"note\">More chain shapes exist than are drawn here (--max-chains).</p>\n",
        );
    }
}

fn table(out: &mut String, table: &Table, by_severity: bool) {
    out.push_str("<table>\n<thead><tr>");
    for column in &table.columns {
        let _ = write!(out, "<th>{}</th>", escape(column));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    if table.rows.is_empty() {
        let _ = writeln!(
            out,
            "<tr><td class=\"empty\" colspan=\"{}\">None.</td></tr>",
            table.columns.len().max(1)
        );
    }
    let severity = table.column("severity");
    for row in &table.rows {
        match severity.filter(|_| by_severity).and_then(|i| row.get(i)) {
            Some(s) => {
                let _ = write!(out, "<tr class=\"sev-{}\">", escape(&value_text(s)));
            }
            None => out.push_str("<tr>"),
        }
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&value_text(cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    if table.truncated {
        out.push_str("<p class=\"note\">Only the first rows are shown (--max-rows); run the SQL below for all.</p>\n");
    }
}

fn sql(out: &mut String, section: &Section) {
    let _ = writeln!(
        out,
        "<p class=\"meta\">Answered in {} ms.</p>",
        section.elapsed_ms
    );
    for query in &section.sql {
        let _ = writeln!(
            out,
            "<details><summary>SQL</summary><pre><code>{}</code></pre></details>",
            escape(query)
        );
    }
}

/// Text as HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
