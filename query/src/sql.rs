//! Values written into SQL text: the few places that build statements (findings, reports, the
//! CLI's filters) quote through here, so no value reaches SQL unescaped.

use chrono::{DateTime, SecondsFormat, Utc};

/// A SQL string literal: `o'brien` → `'o''brien'`.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `column IN ('a', 'b', …)` over `values` quoted as literals; `false` when there are none
/// (`IN ()` is not SQL).
pub fn in_list<S: AsRef<str>>(column: &str, values: &[S]) -> String {
    if values.is_empty() {
        return "false".to_string();
    }
    let quoted: Vec<String> = values.iter().map(|v| literal(v.as_ref())).collect();
    format!("{column} IN ({})", quoted.join(", "))
}

/// A UTC instant as RFC 3339 text (`2026-11-22T10:00:00Z`, fractions only when present).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A UTC instant as a SQL timestamp, comparable with the tables' time columns.
pub fn timestamp(t: &DateTime<Utc>) -> String {
    format!("CAST({} AS TIMESTAMP)", literal(&rfc3339(t)))
}

/// An RFC 3339 time with any offset, as UTC; the error names the expected form.
pub fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.to_utc())
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-11-22T10:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_stay_inside_literals_and_times_round_trip() {
        assert_eq!(literal("o'brien"), "'o''brien'");
        assert_eq!(in_list("c", &["a", "o'b"]), "c IN ('a', 'o''b')");
        assert_eq!(in_list::<&str>("c", &[]), "false");
        let t = parse_rfc3339("2026-11-22T11:00:00+01:00").unwrap();
        assert_eq!(rfc3339(&t), "2026-11-22T10:00:00Z");
        assert_eq!(timestamp(&t), "CAST('2026-11-22T10:00:00Z' AS TIMESTAMP)");
        assert!(parse_rfc3339("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
