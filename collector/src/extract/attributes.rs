//! OTLP `AnyValue` attributes flattened to string-valued attributes.
//!
//! Nested key-value lists become dotted keys (`http.request.header` + `{authorization: ..}` gives
//! `http.request.header.authorization`), walked with an explicit stack so hostile nesting cannot
//! overflow ours. Arrays of scalars stay lists (roles, header values); anything deeper becomes
//! JSON text, cut at [`MAX_DEPTH`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// Deepest nesting of key-value lists and arrays that is kept; deeper values become `"…"`.
pub const MAX_DEPTH: usize = 16;

/// An attribute value after flattening.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An OTLP string, or bytes as base64: the kinds that can hold a secret by key.
    Text(String),
    /// A bool, int or double, rendered as text. Never treated as a secret by key alone.
    Scalar(String),
    /// An array of scalars, each rendered as text.
    List(Vec<String>),
    /// Anything deeper, as JSON text.
    Json(String),
}

impl Value {
    /// The value as one string, for a typed column: a list gives its first element.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Scalar(s) | Value::Json(s) => Some(s),
            Value::List(items) => items.first().map(String::as_str),
        }
    }

    /// The value as a list, for list columns (roles).
    pub fn to_list(&self) -> Vec<String> {
        match self {
            Value::List(items) => items.clone(),
            Value::Text(s) | Value::Scalar(s) | Value::Json(s) => vec![s.clone()],
        }
    }

    /// Cuts every string in the value to at most `max` bytes, at a character boundary; whether
    /// anything was cut.
    pub fn truncate(&mut self, max: usize) -> bool {
        match self {
            Value::Text(s) | Value::Scalar(s) | Value::Json(s) => truncate(s, max),
            Value::List(items) => items
                .iter_mut()
                .fold(false, |cut, item| truncate(item, max) | cut),
        }
    }

    /// The value as stored in the `attributes` map: lists as JSON arrays.
    pub fn into_map_value(self) -> String {
        match self {
            Value::Text(s) | Value::Scalar(s) | Value::Json(s) => s,
            Value::List(items) => serde_json::Value::from(items).to_string(),
        }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary; whether it was cut.
pub fn truncate(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// Cuts every value in `attrs` to at most `max` bytes; how many were cut.
pub fn truncate_values(attrs: &mut [(String, Value)], max: usize) -> usize {
    attrs
        .iter_mut()
        .map(|(_, value)| value.truncate(max))
        .filter(|cut| *cut)
        .count()
}

/// Flattens `attributes` into `out`, at most `max_attributes` of them (the rest are dropped and
/// counted in the return value).
pub fn flatten(
    attributes: Vec<KeyValue>,
    max_attributes: usize,
    out: &mut Vec<(String, Value)>,
) -> usize {
    let mut dropped = 0;
    // Each frame: the key prefix and the remaining key-values at that level.
    let mut stack: Vec<(String, std::vec::IntoIter<KeyValue>)> =
        vec![(String::new(), attributes.into_iter())];
    while let Some((prefix, iter)) = stack.last_mut() {
        let Some(kv) = iter.next() else {
            stack.pop();
            continue;
        };
        let key = if prefix.is_empty() {
            kv.key
        } else {
            format!("{prefix}{}", kv.key)
        };
        let value = kv.value.and_then(|v| v.value);
        match value {
            Some(any_value::Value::KvlistValue(list)) if stack.len() <= MAX_DEPTH => {
                stack.push((format!("{key}."), list.values.into_iter()));
            }
            other => {
                if out.len() >= max_attributes {
                    dropped += 1;
                    continue;
                }
                out.push((key, to_value(other)));
            }
        }
    }
    dropped
}

fn to_value(value: Option<any_value::Value>) -> Value {
    use any_value::Value as V;
    match value {
        None => Value::Scalar(String::new()),
        Some(V::StringValue(s)) => Value::Text(s),
        Some(V::BytesValue(b)) => Value::Text(STANDARD.encode(b)),
        Some(V::ArrayValue(array)) => {
            let scalars: Option<Vec<String>> = array
                .values
                .iter()
                .map(|v| scalar_text(v.value.as_ref()))
                .collect();
            match scalars {
                Some(items) => Value::List(items),
                None => Value::Json(to_json(&V::ArrayValue(array), 0).to_string()),
            }
        }
        Some(other) => match scalar_text(Some(&other)) {
            Some(s) => Value::Scalar(s),
            None => Value::Json(to_json(&other, 0).to_string()),
        },
    }
}

fn scalar_text(value: Option<&any_value::Value>) -> Option<String> {
    use any_value::Value as V;
    Some(match value {
        None => String::new(),
        Some(V::StringValue(s)) => s.clone(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
        Some(V::BytesValue(b)) => STANDARD.encode(b),
        // A string-table index only means something in profiles; keep the number.
        Some(V::StringValueStrindex(i)) => i.to_string(),
        Some(V::ArrayValue(_)) | Some(V::KvlistValue(_)) => return None,
    })
}

/// JSON for nested arrays and lists. Depth is bounded by [`MAX_DEPTH`], so the recursion is too.
fn to_json(value: &any_value::Value, depth: usize) -> serde_json::Value {
    use any_value::Value as V;
    use serde_json::Value as J;
    if depth >= MAX_DEPTH {
        return J::String("…".into());
    }
    let child = |v: &AnyValue| match &v.value {
        Some(inner) => to_json(inner, depth + 1),
        None => J::Null,
    };
    match value {
        V::ArrayValue(a) => J::Array(a.values.iter().map(child).collect()),
        V::KvlistValue(l) => J::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(J::Null, child)))
                .collect(),
        ),
        other => J::String(scalar_text(Some(other)).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn s(v: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        })
    }

    fn kv(k: &str, v: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v,
            ..Default::default()
        }
    }

    #[test]
    fn nested_lists_become_dotted_keys_and_arrays_stay_lists() {
        let attrs = vec![
            kv(
                "http.request.header",
                Some(AnyValue {
                    value: Some(any_value::Value::KvlistValue(KeyValueList {
                        values: vec![kv("authorization", s("Bearer x"))],
                    })),
                }),
            ),
            kv(
                "user.roles",
                Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![s("admin").unwrap(), s("dev").unwrap()],
                    })),
                }),
            ),
            kv(
                "n",
                Some(AnyValue {
                    value: Some(any_value::Value::IntValue(7)),
                }),
            ),
        ];
        let mut out = Vec::new();
        assert_eq!(flatten(attrs, 128, &mut out), 0);
        assert_eq!(
            out[0],
            (
                "http.request.header.authorization".into(),
                Value::Text("Bearer x".into())
            )
        );
        assert_eq!(out[1].1, Value::List(vec!["admin".into(), "dev".into()]));
        assert_eq!(out[2].1, Value::Scalar("7".into()));
        assert_eq!(out[1].1.clone().into_map_value(), r#"["admin","dev"]"#);
    }

    #[test]
    fn bytes_are_text_so_secret_keys_apply() {
        let attrs = vec![kv(
            "app.api_key",
            Some(AnyValue {
                value: Some(any_value::Value::BytesValue(b"raw key".to_vec())),
            }),
        )];
        let mut out = Vec::new();
        flatten(attrs, 8, &mut out);
        assert_eq!(out[0].1, Value::Text("cmF3IGtleQ==".into()));
    }

    #[test]
    fn deep_nesting_is_bounded_and_attribute_count_capped() {
        let mut value = s("leaf");
        for _ in 0..1000 {
            value = Some(AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![kv("a", value)],
                })),
            });
        }
        let mut out = Vec::new();
        flatten(vec![kv("deep", value)], 128, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].1, Value::Json(_)));

        let many: Vec<KeyValue> = (0..10).map(|i| kv(&format!("k{i}"), s("v"))).collect();
        let mut out = Vec::new();
        assert_eq!(flatten(many, 4, &mut out), 6);
        assert_eq!(out.len(), 4);
    }
}
