//! Text a terminal shows as it is.
//!
//! Stored strings come from containers (file paths, process names) and agents: a path with an
//! escape sequence in it would otherwise rewrite the operator's terminal (move the cursor, hide
//! lines, set the title), and bidirectional-override characters make text read differently
//! from what it is. The CLI's human-readable output (tables, CSV, the profile, vulnerability
//! and policy views) shows each such character as an escape: `\x1b`, `\u{202e}`. JSON output is
//! escaped by JSON itself, and Arrow output carries the bytes unchanged.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;

/// Whether `c` changes how a terminal shows text: control characters, and the Unicode
/// direction marks and overrides.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every character that changes how a terminal shows text written as an escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => is_text(value),
        _ => false,
    }
}

/// `batches` with every text column passed through [`escape`] (as plain `Utf8`).
pub fn escape_batches(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, ArrowError> {
    batches.into_iter().map(escape_batch).collect()
}

fn escape_batch(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_text(f.data_type())) {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !is_text(field.data_type()) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let text = arrow::compute::cast(column, &DataType::Utf8)?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| ArrowError::CastError("text column is not Utf8 after cast".into()))?;
        let escaped: StringArray = text.iter().map(|v| v.map(escape)).collect();
        fields.push(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        ));
        columns.push(Arc::new(escaped));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_direction_overrides_are_shown_not_obeyed() {
        assert_eq!(escape("/etc/hosts"), "/etc/hosts");
        assert_eq!(escape("/tmp/\x1b]0;pwned\x07x"), "/tmp/\\x1b]0;pwned\\x07x");
        assert_eq!(escape("a\nb\tc"), "a\\x0ab\\x09c");
        assert_eq!(escape("file\u{202e}gpj.exe"), "file\\u{202e}gpj.exe");
        assert_eq!(escape("\u{85}"), "\\u{85}");
        assert!(matches!(escape("plain ünïcode"), Cow::Borrowed(_)));
    }

    #[test]
    fn batches_have_their_text_columns_escaped_and_the_rest_kept() {
        let batch = RecordBatch::try_from_iter([
            (
                "key",
                Arc::new(StringArray::from(vec![Some("/a\x1b[2J"), None, Some("/b")])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = escape_batches(vec![batch]).unwrap();
        let keys = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(keys.value(0), "/a\\x1b[2J");
        assert!(keys.is_null(1));
        assert_eq!(keys.value(2), "/b");
        assert_eq!(out[0].column(1).len(), 3);
    }
}
