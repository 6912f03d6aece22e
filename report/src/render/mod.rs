//! Reports as documents: one self-contained HTML file (styles and drawings inline, no script,
//! nothing fetched), or Markdown. JSON is the [`crate::Report`] serialised as it is.

pub mod html;
pub mod markdown;

pub use html::html;
pub use markdown::markdown;

use crate::error::Result;
use crate::request::Format;
use crate::sections::Report;

/// `report` as a document in `format`: what `idtrail report` writes and `GET /v1/report`
/// answers.
pub fn document(report: &Report, format: Format) -> Result<String> {
    Ok(match format {
        Format::Html => html(report),
        Format::Markdown => markdown(report),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
    })
}
