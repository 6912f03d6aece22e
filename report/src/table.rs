//! Query answers as the report holds them: column names and rows of JSON values (numbers and
//! booleans as such, everything else as the text `idtrail query` would print).

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// More rows matched than the report keeps (`--max-rows`).
    pub truncated: bool,
}

impl Table {
    /// Up to `max_rows` rows of `batches` (the query asks for one more, to tell truncation).
    pub fn from_batches(columns: Vec<String>, batches: &[RecordBatch], max_rows: usize) -> Table {
        let mut rows = Vec::new();
        let options = FormatOptions::default().with_null("");
        'batches: for batch in batches {
            let formatters: Vec<Option<ArrayFormatter>> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
                .collect();
            for row in 0..batch.num_rows() {
                if rows.len() == max_rows {
                    break 'batches;
                }
                rows.push(
                    batch
                        .columns()
                        .iter()
                        .zip(&formatters)
                        .map(|(column, formatter)| cell(column.as_ref(), formatter.as_ref(), row))
                        .collect(),
                );
            }
        }
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        Table {
            columns,
            rows,
            truncated: total > max_rows,
        }
    }

    /// The column's index by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Every cell of `column` as text, in row order.
    pub fn texts(&self, column: &str) -> Vec<String> {
        (0..self.rows.len()).map(|r| self.text(r, column)).collect()
    }

    /// The cell as text (`""` for null).
    pub fn text(&self, row: usize, column: &str) -> String {
        self.column(column)
            .and_then(|c| self.rows.get(row)?.get(c))
            .map(value_text)
            .unwrap_or_default()
    }
}

pub fn value_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cell(column: &dyn Array, formatter: Option<&ArrayFormatter>, row: usize) -> Value {
    if column.is_null(row) {
        return Value::Null;
    }
    let text = formatter
        .map(|f| f.value(row).to_string())
        .unwrap_or_default();
    match column.data_type() {
        DataType::Boolean => Value::Bool(text == "true"),
        t if t.is_integer() => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or(Value::String(text)),
        t if t.is_floating() => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(text)),
        _ => Value::String(text),
    }
}

/// A text column as Utf8 whatever its string type.
pub(crate) fn text_column(array: &dyn Array) -> Option<StringArray> {
    let cast = arrow::compute::cast(array, &DataType::Utf8).ok()?;
    cast.as_string_opt::<i32>().cloned()
}
