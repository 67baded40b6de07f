//! The `profiles` and `profile_status` tables, built from the profile state of
//! the images a query asks for (an `image = …` filter reads one profile only).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;

use super::{Category, ImageProfile};
use crate::catalog::CatalogState;
use crate::prune::PartitionFilter;
use crate::schema::timestamp_type;
use crate::settings::{LEARNING_PERIOD, duration_value, parse_duration};
use crate::table::BuiltTable;

/// Where the profile tables get their state: the server's live profiles.
pub trait ProfileSource: Send + Sync + Debug {
    /// Copies of the profiles of the images `filter` allows, with each image's
    /// learning period in microseconds.
    fn profiles(&self, filter: &PartitionFilter) -> Vec<(String, i64, ImageProfile)>;
}

/// The learning period the settings give, in microseconds.
pub fn learning_period_micros(settings: &BTreeMap<String, String>) -> i64 {
    duration_value(settings, LEARNING_PERIOD).as_micros() as i64
}

/// The learning period of `image` (µs): its own, else the setting's.
pub fn image_learning_period_micros(state: &CatalogState, image: &str) -> i64 {
    state
        .learning_periods
        .get(image)
        .and_then(|p| parse_duration(p).ok())
        .map_or_else(
            || learning_period_micros(&state.settings),
            |d| d.as_micros() as i64,
        )
}

/// The profiles `filter` allows out of `profiles`, with their learning periods.
pub fn select_profiles(
    state: &CatalogState,
    profiles: &HashMap<String, ImageProfile>,
    filter: &PartitionFilter,
) -> Vec<(String, i64, ImageProfile)> {
    let entry = |(i, p): (&String, &ImageProfile)| {
        (i.clone(), image_learning_period_micros(state, i), p.clone())
    };
    match &filter.images {
        Some(images) => images
            .iter()
            .filter_map(|i| profiles.get_key_value(i))
            .map(entry)
            .collect(),
        None => profiles.iter().map(entry).collect(),
    }
}

/// Registers `profiles` and `profile_status` over `source` in `ctx`.
pub fn register(ctx: &SessionContext, source: Arc<dyn ProfileSource>) -> DfResult<()> {
    for (name, kind) in [
        ("profiles", ProfileTableKind::Profiles),
        ("profile_status", ProfileTableKind::Status),
    ] {
        let source = source.clone();
        let schema = match kind {
            ProfileTableKind::Profiles => PROFILES_SCHEMA.clone(),
            ProfileTableKind::Status => PROFILE_STATUS_SCHEMA.clone(),
        };
        let table = BuiltTable::new(
            schema,
            Box::new(move |filter| {
                let mut profiles = source.profiles(filter);
                profiles.sort_by(|a, b| a.0.cmp(&b.0));
                match kind {
                    ProfileTableKind::Profiles => profiles_batch(&profiles),
                    ProfileTableKind::Status => status_batch(&profiles),
                }
            }),
        );
        ctx.register_table(name, Arc::new(table))?;
    }
    Ok(())
}

/// `profiles(image, image_name, kind, key, first_seen, last_seen, containers,
/// nodes, windows, count, in_baseline)`.
pub static PROFILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::Utf8, false),
        Field::new("image_name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("first_seen", timestamp_type(), false),
        Field::new("last_seen", timestamp_type(), false),
        Field::new("containers", DataType::UInt64, false),
        Field::new("nodes", DataType::UInt64, false),
        Field::new("windows", DataType::UInt64, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("in_baseline", DataType::Boolean, false),
    ]))
});

/// `profile_status`: one row per image (see docs/tables.md).
pub static PROFILE_STATUS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("image", DataType::Utf8, false),
        Field::new("image_name", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("first_seen", timestamp_type(), true),
        Field::new("last_seen", timestamp_type(), true),
        Field::new("learned_at", timestamp_type(), true),
        Field::new("observed_seconds", DataType::Float64, false),
        Field::new("learning_period_seconds", DataType::Float64, false),
        Field::new("containers", DataType::UInt64, false),
        Field::new("nodes", DataType::UInt64, false),
        Field::new("windows", DataType::UInt64, false),
        Field::new("items", DataType::UInt64, false),
        Field::new("completeness", DataType::Utf8, false),
        Field::new("incomplete_reasons", DataType::Utf8, false),
    ];
    for c in Category::ALL {
        fields.push(Field::new(
            format!("confidence_{}", c.name()),
            DataType::Utf8,
            false,
        ));
        fields.push(Field::new(
            format!("confidence_{}_score", c.name()),
            DataType::Float64,
            false,
        ));
    }
    Arc::new(Schema::new(fields))
});

fn profiles_batch(profiles: &[(String, i64, ImageProfile)]) -> DfResult<RecordBatch> {
    let mut image = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut first = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut last = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut containers, mut nodes, mut windows, mut count) = (
        UInt64Builder::new(),
        UInt64Builder::new(),
        UInt64Builder::new(),
        UInt64Builder::new(),
    );
    let mut baseline = BooleanBuilder::new();
    for (digest, period, p) in profiles {
        let learned_at = p.learned_at(*period);
        for (k, v, s) in p.iter_items() {
            image.append_value(digest);
            name.append_value(&p.image_name);
            kind.append_value(k);
            key.append_value(v);
            first.append_value(s.first_seen);
            last.append_value(s.last_seen);
            containers.append_value(s.containers.len() as u64);
            nodes.append_value(p.item_nodes(s) as u64);
            windows.append_value(s.windows);
            count.append_value(s.count);
            baseline.append_value(ImageProfile::in_baseline(s.first_seen, learned_at));
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(image.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(key.finish()),
        Arc::new(first.finish()),
        Arc::new(last.finish()),
        Arc::new(containers.finish()),
        Arc::new(nodes.finish()),
        Arc::new(windows.finish()),
        Arc::new(count.finish()),
        Arc::new(baseline.finish()),
    ];
    Ok(RecordBatch::try_new(PROFILES_SCHEMA.clone(), columns)?)
}

fn status_batch(profiles: &[(String, i64, ImageProfile)]) -> DfResult<RecordBatch> {
    let mut image = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut state = StringBuilder::new();
    let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut first, mut last, mut learned) = (ts(), ts(), ts());
    let (mut observed, mut period) = (Float64Builder::new(), Float64Builder::new());
    let (mut containers, mut nodes, mut windows, mut items) = (
        UInt64Builder::new(),
        UInt64Builder::new(),
        UInt64Builder::new(),
        UInt64Builder::new(),
    );
    let (mut completeness, mut reasons) = (StringBuilder::new(), StringBuilder::new());
    let mut levels: Vec<(StringBuilder, Float64Builder)> = Category::ALL
        .iter()
        .map(|_| (StringBuilder::new(), Float64Builder::new()))
        .collect();
    for (digest, p_period, p) in profiles {
        let s = p.status(*p_period);
        image.append_value(digest);
        name.append_value(&s.image_name);
        state.append_value(s.state());
        first.append_option(s.first_seen);
        last.append_option(s.last_seen);
        learned.append_option(s.learned_at);
        observed.append_value(s.observed_seconds);
        period.append_value(*p_period as f64 / 1e6);
        containers.append_value(s.containers);
        nodes.append_value(s.nodes);
        windows.append_value(p.windows);
        items.append_value(p.iter_items().count() as u64);
        let r = s.completeness.reasons();
        completeness.append_value(if r.is_empty() { "complete" } else { "partial" });
        reasons.append_value(r.join(","));
        for ((level, score), (_, c)) in levels.iter_mut().zip(s.confidence.iter()) {
            level.append_value(c.level.name());
            score.append_value(c.score);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(image.finish()),
        Arc::new(name.finish()),
        Arc::new(state.finish()),
        Arc::new(first.finish()),
        Arc::new(last.finish()),
        Arc::new(learned.finish()),
        Arc::new(observed.finish()),
        Arc::new(period.finish()),
        Arc::new(containers.finish()),
        Arc::new(nodes.finish()),
        Arc::new(windows.finish()),
        Arc::new(items.finish()),
        Arc::new(completeness.finish()),
        Arc::new(reasons.finish()),
    ];
    for (mut level, mut score) in levels {
        columns.push(Arc::new(level.finish()));
        columns.push(Arc::new(score.finish()));
    }
    Ok(RecordBatch::try_new(
        PROFILE_STATUS_SCHEMA.clone(),
        columns,
    )?)
}

/// Which of the two profile tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileTableKind {
    Profiles,
    Status,
}
