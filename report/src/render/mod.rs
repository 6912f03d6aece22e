//! Reports as documents: one self-contained HTML file (styles and drawings inline, no script,
//! nothing fetched), or Markdown. JSON is the [`crate::Report`] serialised as it is.

pub mod html;
pub mod markdown;

pub use html::html;
pub use markdown::markdown;
