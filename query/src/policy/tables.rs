//! The `policies` table: every stored policy, enabled or not.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::Policy;
use crate::schema::timestamp_type;

/// `policies(name, scope, categories, min_confidence, severity, enabled,
/// throttle_seconds, created)`.
pub static POLICIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("scope", DataType::Utf8, false),
        Field::new("categories", DataType::Utf8, false),
        Field::new("min_confidence", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("enabled", DataType::Boolean, false),
        Field::new("throttle_seconds", DataType::UInt64, false),
        Field::new("created", timestamp_type(), false),
    ]))
});

/// The rows of `policies` (in name order, as the catalog keeps them).
pub fn batch<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> RecordBatch {
    let policies: Vec<&Policy> = policies.into_iter().collect();
    let text = |f: &dyn Fn(&Policy) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(policies.iter().map(|p| f(p))))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|p| p.name.clone()),
        text(&|p| p.scope.clone()),
        text(&|p| {
            p.categories
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(",")
        }),
        text(&|p| p.min_confidence.name().to_string()),
        text(&|p| p.severity.name().to_string()),
        Arc::new(BooleanArray::from_iter(
            policies.iter().map(|p| Some(p.enabled)),
        )),
        Arc::new(UInt64Array::from_iter_values(
            policies.iter().map(|p| p.throttle_seconds),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(policies.iter().map(|p| p.created_micros))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(POLICIES_SCHEMA.clone(), columns).expect("columns match the schema")
}
