//! Chains drawn as graphs: user → agents → credential → API hops → effect, laid out left to
//! right by `layout-rs` (a layered, Graphviz-style layout) and rendered as inline SVG.
//!
//! Chains of the same shape (the same nodes in the same order) are drawn once, with how many
//! times that shape occurred.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::TimestampNanosecondType;
use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::StyleAttr;
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use serde::Serialize;

use crate::table::text_column;

/// One step of a chain's path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Step {
    pub kind: String,
    pub id: String,
}

/// One chain shape and where it was seen.
#[derive(Debug, Clone, Serialize)]
pub struct ChainDrawing {
    pub steps: Vec<Step>,
    /// Chains of this shape in scope.
    pub times: usize,
    pub first_seen: String,
    pub last_seen: String,
    /// Every chain of this shape has a human or an approved owner at its head.
    pub traceable: bool,
    /// One trace to open for this shape.
    pub example_trace_id: String,
    /// The drawing (not in JSON output: the steps are the data).
    #[serde(skip)]
    pub svg: String,
}

/// Chain shapes, gathered batch by batch from the rows of `SELECT path, time, traceable,
/// trace_id` (any order): only the distinct shapes are held, so a scope of millions of chains
/// needs memory for its shapes, not its rows. The answer does not depend on the rows' order
/// (parallel scans deliver them in any): the `max_shapes` earliest shapes are drawn, each with
/// the earliest of its traces, as long as the scope holds at most [`TRACKED_SHAPES`] shapes.
pub struct ChainShapes {
    max_shapes: usize,
    shapes: Vec<Shape>,
    index: HashMap<Vec<Step>, usize>,
    /// Shapes seen beyond [`TRACKED_SHAPES`].
    more: bool,
}

/// Distinct shapes held while gathering, of which the earliest `max_shapes` are drawn. Past
/// it, which shapes are kept depends on the order rows arrive in.
pub const TRACKED_SHAPES: usize = 10_000;

struct Shape {
    steps: Vec<Step>,
    times: usize,
    first: i64,
    last: i64,
    traceable: bool,
    /// The trace of the earliest chain of this shape.
    example: String,
}

impl ChainShapes {
    pub fn new(max_shapes: usize) -> ChainShapes {
        ChainShapes {
            max_shapes,
            shapes: Vec::new(),
            index: HashMap::new(),
            more: false,
        }
    }

    pub fn add(&mut self, batch: &RecordBatch) {
        let (Some(path), Some(time), Some(traceable), Some(trace)) = (
            batch.column_by_name("path"),
            batch.column_by_name("time"),
            batch.column_by_name("traceable"),
            batch.column_by_name("trace_id"),
        ) else {
            return;
        };
        let Some(path) = path.as_list_opt::<i32>() else {
            return;
        };
        let Some(times) = time.as_primitive_opt::<TimestampNanosecondType>() else {
            return;
        };
        let traceable = traceable.as_boolean_opt();
        let trace = text_column(trace);
        for row in 0..batch.num_rows() {
            let steps = steps_of(path, row);
            if steps.is_empty() || times.is_null(row) {
                continue;
            }
            let at = times.value(row);
            let is_traceable = traceable.is_some_and(|t| !t.is_null(row) && t.value(row));
            let example = || {
                trace
                    .as_ref()
                    .filter(|t| !t.is_null(row))
                    .map(|t| t.value(row).to_string())
                    .unwrap_or_default()
            };
            match self.index.get(&steps) {
                Some(&i) => {
                    let shape = &mut self.shapes[i];
                    shape.times += 1;
                    if at < shape.first || (at == shape.first && example() < shape.example) {
                        shape.first = at;
                        shape.example = example();
                    }
                    shape.last = shape.last.max(at);
                    shape.traceable &= is_traceable;
                }
                None if self.shapes.len() < TRACKED_SHAPES.max(self.max_shapes) => {
                    self.index.insert(steps.clone(), self.shapes.len());
                    self.shapes.push(Shape {
                        steps,
                        times: 1,
                        first: at,
                        last: at,
                        traceable: is_traceable,
                        example: example(),
                    });
                }
                None => self.more = true,
            }
        }
    }

    /// The shapes, earliest first, drawn; and whether more shapes exist than were kept.
    pub fn finish(mut self) -> (Vec<ChainDrawing>, bool) {
        self.shapes
            .sort_by(|a, b| (a.first, &a.example).cmp(&(b.first, &b.example)));
        if self.shapes.len() > self.max_shapes {
            self.shapes.truncate(self.max_shapes);
            self.more = true;
        }
        let drawings = self
            .shapes
            .into_iter()
            .map(|shape| ChainDrawing {
                svg: draw_or_nothing(&shape.steps),
                first_seen: nanos_text(shape.first),
                last_seen: nanos_text(shape.last),
                steps: shape.steps,
                times: shape.times,
                traceable: shape.traceable,
                example_trace_id: shape.example,
            })
            .collect();
        (drawings, self.more)
    }
}

fn nanos_text(nanos: i64) -> String {
    idtrail_query::sql::rfc3339(&chrono::DateTime::from_timestamp_nanos(nanos))
}

fn steps_of(path: &arrow::array::ListArray, row: usize) -> Vec<Step> {
    if path.is_null(row) {
        return Vec::new();
    }
    let value = path.value(row);
    let Some(items) = value.as_struct_opt() else {
        return Vec::new();
    };
    let (Some(kinds), Some(ids)) = (
        items.column_by_name("kind").and_then(|c| text_column(c)),
        items.column_by_name("id").and_then(|c| text_column(c)),
    ) else {
        return Vec::new();
    };
    (0..items.len())
        .filter(|&i| !kinds.is_null(i) && !ids.is_null(i))
        .map(|i| Step {
            kind: kinds.value(i).to_string(),
            id: ids.value(i).to_string(),
        })
        .collect()
}

/// The relation drawn between two consecutive steps (the names of the `edges` table).
pub fn relation(from: &str, to: &str) -> &'static str {
    match (from, to) {
        ("user", "agent") => "initiated",
        ("agent", "agent") => "delegated to",
        ("user" | "agent" | "workload", "credential") => "presented",
        ("credential", "credential") => "exchanged for",
        ("credential", "operation") => "invoked",
        ("operation", "operation") => "called",
        ("operation", "credential") => "presented",
        ("operation", "resource") => "affected",
        _ => "",
    }
}

/// Fill colour of a node kind (the report's legend uses the same).
pub fn colour(kind: &str) -> &'static str {
    match kind {
        "user" => "#dbeafe",
        "agent" => "#ede9fe",
        "workload" => "#e0f2fe",
        "credential" => "#fef3c7",
        "operation" => "#dcfce7",
        "resource" => "#fee2e2",
        _ => "#f3f4f6",
    }
}

/// A short label: credentials are 64-hex fingerprints, shortened for the drawing (the tables
/// hold them in full).
pub fn label(step: &Step) -> String {
    let id = if step.kind == "credential" && step.id.len() > 24 {
        // `k<key id>:<hmac>`: the key id and the first 8 hex digits tell credentials apart.
        let cut = step
            .id
            .find(':')
            .map_or(12, |colon| colon + 9)
            .min(step.id.len());
        match step.id.get(..cut) {
            Some(prefix) => format!("{prefix}…"),
            None => step.id.clone(),
        }
    } else if step.id.chars().count() > 40 {
        format!("{}…", step.id.chars().take(39).collect::<String>())
    } else {
        step.id.clone()
    };
    format!("{}\n{}", step.kind, id)
}

/// The drawing, or nothing when the layout library gives up (it asserts on some shapes); the
/// report then shows the chain as text only.
fn draw_or_nothing(steps: &[Step]) -> String {
    std::panic::catch_unwind(|| draw(steps)).unwrap_or_default()
}

fn draw(steps: &[Step]) -> String {
    let orientation = Orientation::LeftToRight;
    let mut graph = VisualGraph::new(orientation);
    // One node per distinct step: a path that returns to a node (an operation called twice)
    // draws an edge back to it.
    let mut nodes: HashMap<&Step, layout::adt::dag::NodeHandle> = HashMap::new();
    let mut previous: Option<(&Step, layout::adt::dag::NodeHandle)> = None;
    for step in steps {
        let handle = match nodes.get(step) {
            Some(&h) => h,
            None => {
                let shape = ShapeKind::new_box(&label(step));
                let look = StyleAttr::new(
                    Color::fast("#374151"),
                    1,
                    Some(Color::fast(colour(&step.kind))),
                    6,
                    13,
                );
                let size = get_shape_size(orientation, &shape, look.font_size, false);
                let h = graph.add_node(Element::create(shape, look, orientation, size));
                nodes.insert(step, h);
                h
            }
        };
        if let Some((from, from_handle)) = previous
            && from_handle != handle
        {
            graph.add_edge(
                Arrow::simple(relation(&from.kind, &step.kind)),
                from_handle,
                handle,
            );
        }
        previous = Some((step, handle));
    }
    let mut svg = SVGWriter::new();
    graph.do_it(false, false, false, &mut svg);
    let drawing = svg.finalize();
    // Inline SVG in HTML needs no XML prolog.
    let drawing = match drawing.find("<svg") {
        Some(start) => drawing[start..].to_string(),
        None => drawing,
    };
    fit_height(&drawing)
}

/// layout-rs sizes a left-to-right drawing's height by its nodes' widths, leaving a tall blank
/// band under a one-row chain; the drawing is cut to the lowest box, label or line it holds.
fn fit_height(svg: &str) -> String {
    let number = |tag: &str, name: &str| -> Option<f64> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = start + tag[start..].find('"')?;
        tag[start..end].trim().parse().ok()
    };
    let mut bottom: f64 = 0.0;
    for tag in svg.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        if tag.starts_with("rect") {
            bottom =
                bottom.max(number(tag, "y").unwrap_or(0.0) + number(tag, "height").unwrap_or(0.0));
        } else if tag.starts_with("text") {
            bottom = bottom.max(number(tag, "y").unwrap_or(0.0));
        } else if tag.starts_with("path")
            && let Some(start) = tag.find(" d=\"")
        {
            // Path data: y is every second number (absolute commands only in this writer).
            let data = &tag[start + 4..];
            let data = &data[..data.find('"').unwrap_or(data.len())];
            let numbers = data
                .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
                .filter_map(|n| n.parse::<f64>().ok());
            for y in numbers.skip(1).step_by(2) {
                bottom = bottom.max(y);
            }
        }
    }
    let Some(open_end) = svg.find('>') else {
        return svg.to_string();
    };
    let open = &svg[..open_end];
    let (Some(width), Some(height)) = (number(open, "width"), number(open, "height")) else {
        return svg.to_string();
    };
    let fitted = (bottom + 20.0).ceil();
    if bottom <= 0.0 || fitted >= height {
        return svg.to_string();
    }
    let open_fitted = open
        .replace(
            &format!("height=\"{height}\""),
            &format!("height=\"{fitted}\""),
        )
        .replace(
            &format!("viewBox=\"0 0 {width} {height}\""),
            &format!("viewBox=\"0 0 {width} {fitted}\""),
        );
    format!("{open_fitted}{}", &svg[open_end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: &str, id: &str) -> Step {
        Step {
            kind: kind.into(),
            id: id.into(),
        }
    }

    #[test]
    fn a_chain_draws_every_step_as_a_labelled_node() {
        let steps = vec![
            step("user", "alice@example.com"),
            step("agent", "agt_planner"),
            step("credential", &format!("k1a2b3c4d:{}", "ab".repeat(32))),
            step("operation", "orders DELETE /orders/{id}"),
            step("resource", "db:shop.orders"),
        ];
        let svg = draw(&steps);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("alice@example.com"));
        assert!(svg.contains("agt_planner"));
        assert!(svg.contains("k1a2b3c4d:abababab…"), "{svg}");
        assert!(!svg.contains(&"ab".repeat(32)), "fingerprint drawn in full");
        assert!(svg.contains("db:shop.orders"));
        assert!(svg.contains("invoked") && svg.contains("affected"));
        assert!(svg.contains("fef3c7"), "credential colour");
        // One row of boxes: the drawing is cut to it, not as tall as the widest box.
        let height: f64 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|h| h.split('"').next())
            .and_then(|h| h.parse().ok())
            .unwrap();
        assert!(height < 150.0, "{height}");
    }

    /// Rows of `SELECT path, time, traceable, trace_id`: (agent, time, trace) each, a chain
    /// `agent → credential`.
    fn chains(rows: &[(&str, i64, &str)]) -> RecordBatch {
        use arrow::array::{
            BooleanArray, ListArray, StringArray, StructArray, TimestampNanosecondArray,
        };
        use arrow::buffer::OffsetBuffer;
        use arrow::datatypes::{DataType, Field, Fields, Schema};
        use std::sync::Arc;
        let fields = Fields::from(vec![
            Field::new("kind", DataType::Utf8, true),
            Field::new("id", DataType::Utf8, true),
        ]);
        let kinds: Vec<&str> = rows.iter().flat_map(|_| ["agent", "credential"]).collect();
        let ids: Vec<&str> = rows.iter().flat_map(|r| [r.0, "k1:fp"]).collect();
        let items = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(ids)),
            ],
            None,
        );
        let item = Arc::new(Field::new("item", DataType::Struct(fields), true));
        let path = ListArray::new(
            item.clone(),
            OffsetBuffer::from_lengths(rows.iter().map(|_| 2)),
            Arc::new(items),
            None,
        );
        let schema = Schema::new(vec![
            Field::new("path", DataType::List(item), true),
            Field::new(
                "time",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
                true,
            ),
            Field::new("traceable", DataType::Boolean, true),
            Field::new("trace_id", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(path),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(BooleanArray::from(vec![true; rows.len()])),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_shapes_drawn_do_not_depend_on_the_order_rows_arrive_in() {
        // Four shapes, two drawn: the two earliest, each with its earliest trace (the smaller
        // trace id when two start at once), however the scans deliver the rows.
        let rows = [
            ("agt_d", 40, "t9"),
            ("agt_a", 10, "t5"),
            ("agt_c", 30, "t1"),
            ("agt_a", 10, "t2"),
            ("agt_b", 20, "t3"),
            ("agt_a", 50, "t0"),
        ];
        let gather = |batches: &[&[(&str, i64, &str)]]| {
            let mut shapes = ChainShapes::new(2);
            for batch in batches {
                shapes.add(&chains(batch));
            }
            let (drawings, more) = shapes.finish();
            let kept: Vec<(String, usize, String)> = drawings
                .into_iter()
                .map(|d| (d.steps[0].id.clone(), d.times, d.example_trace_id))
                .collect();
            (kept, more)
        };
        let reversed: Vec<_> = rows.iter().rev().copied().collect();
        let expected = (
            vec![
                ("agt_a".to_string(), 3, "t2".to_string()),
                ("agt_b".to_string(), 1, "t3".to_string()),
            ],
            true,
        );
        assert_eq!(gather(&[&rows]), expected);
        assert_eq!(gather(&[&reversed]), expected);
        assert_eq!(gather(&[&rows[3..], &rows[..3]]), expected);
    }
}
