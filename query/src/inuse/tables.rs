//! The In Use tables, built per query from a [`Snapshot`] of the images the query
//! asks for (an `image = …` filter builds one image only).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;

use super::state::InUseState;
use super::vulns::Vulnerability;
use crate::profile::ImageProfile;
use crate::prune::PartitionFilter;
use crate::schema::timestamp_type;
use crate::table::BuiltTable;

/// What the tables of one query read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub state: Arc<InUseState>,
    /// The images to show: digest, name, profile.
    pub images: Vec<(String, String, Option<ImageProfile>)>,
    /// `runtime_scanner.eve_enabled`: whether `in_use` is computed.
    pub compute_use: bool,
}

/// Where the tables get their data: the server's live state, or a store's.
pub trait InUseSource: Send + Sync + Debug {
    fn snapshot(&self, filter: &PartitionFilter) -> Snapshot;
}

/// The snapshot of `state` for `filter`, with the images' names and profiles from
/// `profiles` and the eve switch from `settings`.
pub fn snapshot(
    state: &Arc<InUseState>,
    profiles: &HashMap<String, ImageProfile>,
    settings: &BTreeMap<String, String>,
    filter: &PartitionFilter,
) -> Snapshot {
    let images = images_of(state, filter)
        .into_iter()
        .map(|image| {
            let profile = profiles.get(&image);
            let name = profile.map(|p| p.image_name.clone()).unwrap_or_default();
            (image, name, profile.cloned())
        })
        .collect();
    Snapshot {
        state: state.clone(),
        images,
        compute_use: crate::settings::bool_value(settings, crate::settings::EVE_ENABLED),
    }
}

/// The images of `state` that `filter` allows, sorted.
fn images_of(state: &InUseState, filter: &PartitionFilter) -> Vec<String> {
    match &filter.images {
        Some(images) => images
            .iter()
            .filter(|i| state.images.contains_key(*i))
            .cloned()
            .collect(),
        None => state.images.keys().cloned().collect(),
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

pub static PACKAGES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("image"),
        utf8("image_name"),
        utf8("package"),
        utf8("version"),
        utf8("type"),
        utf8("purl"),
        utf8("source"),
        Field::new("files", DataType::UInt64, false),
    ]))
});

pub static PACKAGE_FILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("image"),
        utf8("package"),
        utf8("version"),
        utf8("path"),
        utf8("source"),
    ]))
});

fn vuln_fields() -> Vec<Field> {
    vec![
        utf8("image"),
        utf8("image_name"),
        utf8("vuln_id"),
        utf8("package"),
        utf8("version"),
        utf8("severity"),
        utf8("fixed_version"),
        utf8("source"),
        utf8("aliases"),
        utf8("summary"),
    ]
}

pub static VULNERABILITIES_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(vuln_fields())));

pub static RUNTIME_VULNERABILITIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = vuln_fields();
    f.extend([
        Field::new("in_use", DataType::Boolean, true),
        Field::new("evidence_path", DataType::Utf8, true),
        Field::new("first_used", timestamp_type(), true),
        Field::new("last_used", timestamp_type(), true),
    ]);
    Arc::new(Schema::new(f))
});

/// Which In Use table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InUseTableKind {
    Packages,
    PackageFiles,
    Vulnerabilities,
    RuntimeVulnerabilities,
}

impl InUseTableKind {
    pub const ALL: [InUseTableKind; 4] = [
        InUseTableKind::Packages,
        InUseTableKind::PackageFiles,
        InUseTableKind::Vulnerabilities,
        InUseTableKind::RuntimeVulnerabilities,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InUseTableKind::Packages => "packages",
            InUseTableKind::PackageFiles => "package_files",
            InUseTableKind::Vulnerabilities => "vulnerabilities",
            InUseTableKind::RuntimeVulnerabilities => "runtime_vulnerabilities",
        }
    }

    fn schema(self) -> SchemaRef {
        match self {
            InUseTableKind::Packages => PACKAGES_SCHEMA.clone(),
            InUseTableKind::PackageFiles => PACKAGE_FILES_SCHEMA.clone(),
            InUseTableKind::Vulnerabilities => VULNERABILITIES_SCHEMA.clone(),
            InUseTableKind::RuntimeVulnerabilities => RUNTIME_VULNERABILITIES_SCHEMA.clone(),
        }
    }
}

/// String columns filled row by row.
struct Columns(Vec<StringBuilder>);

impl Columns {
    fn new(n: usize) -> Self {
        Self((0..n).map(|_| StringBuilder::new()).collect())
    }
    fn row(&mut self, values: &[&str]) {
        for (b, v) in self.0.iter_mut().zip(values) {
            b.append_value(v);
        }
    }
    /// The columns `vuln_fields` names.
    fn vulnerability(&mut self, image: &str, name: &str, v: &Vulnerability, source: &str) {
        self.row(&[
            image,
            name,
            &v.vuln_id,
            &v.package,
            &v.version,
            &v.severity,
            &v.fixed_version,
            source,
            &v.aliases,
            &v.summary,
        ]);
    }

    fn finish(self) -> Vec<ArrayRef> {
        self.0
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect()
    }
}

fn build(kind: InUseTableKind, snap: &Snapshot) -> DfResult<RecordBatch> {
    let mut columns: Vec<ArrayRef>;
    match kind {
        InUseTableKind::Packages => {
            let mut s = Columns::new(7);
            let mut files = UInt64Builder::new();
            for (image, name, _) in &snap.images {
                let Some(img) = snap.state.images.get(image) else {
                    continue;
                };
                for (source, _, inv) in img.inventories() {
                    for p in &inv.packages {
                        s.row(&[image, name, &p.name, &p.version, &p.kind, &p.purl, source]);
                        files.append_value(p.files.len() as u64);
                    }
                }
            }
            columns = s.finish();
            columns.push(Arc::new(files.finish()));
        }
        InUseTableKind::PackageFiles => {
            let mut s = Columns::new(5);
            for (image, _, _) in &snap.images {
                let Some(img) = snap.state.images.get(image) else {
                    continue;
                };
                for (source, _, inv) in img.inventories() {
                    for p in &inv.packages {
                        for f in &p.files {
                            s.row(&[image, &p.name, &p.version, f, source]);
                        }
                    }
                }
            }
            columns = s.finish();
        }
        InUseTableKind::Vulnerabilities => {
            let mut s = Columns::new(10);
            for (image, name, _) in &snap.images {
                for (source, v) in snap.state.vulnerabilities(image) {
                    s.vulnerability(image, name, &v, &source);
                }
            }
            columns = s.finish();
        }
        InUseTableKind::RuntimeVulnerabilities => {
            let mut s = Columns::new(10);
            let mut in_use = BooleanBuilder::new();
            let mut evidence = StringBuilder::new();
            let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
            let (mut first, mut last) = (ts(), ts());
            for (image, name, profile) in &snap.images {
                for r in snap
                    .state
                    .runtime(image, profile.as_ref(), snap.compute_use)
                {
                    s.vulnerability(image, name, &r.vulnerability, &r.source);
                    in_use.append_option(r.in_use);
                    evidence.append_option(r.used.as_ref().map(|u| u.evidence_path.as_str()));
                    first.append_option(r.used.as_ref().map(|u| u.first_used));
                    last.append_option(r.used.as_ref().map(|u| u.last_used));
                }
            }
            columns = s.finish();
            columns.push(Arc::new(in_use.finish()));
            columns.push(Arc::new(evidence.finish()));
            columns.push(Arc::new(first.finish()));
            columns.push(Arc::new(last.finish()));
        }
    }
    Ok(RecordBatch::try_new(kind.schema(), columns)?)
}

/// Registers the four In Use tables over `source` in `ctx`.
pub fn register(ctx: &SessionContext, source: Arc<dyn InUseSource>) -> DfResult<()> {
    for kind in InUseTableKind::ALL {
        let source = source.clone();
        let table = BuiltTable::new(
            kind.schema(),
            Box::new(move |filter| build(kind, &source.snapshot(filter))),
        );
        ctx.register_table(kind.name(), Arc::new(table))?;
    }
    Ok(())
}
