//! Opening a store: a local directory or an S3 bucket (with an optional prefix),
//! and a DataFusion session over its tables.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::catalog::{Catalog, CatalogState};
use crate::error::{Error, Result};
use crate::inuse::state::InUseState;
use crate::inuse::tables::{self as inuse_tables, InUseSource, Snapshot};
use crate::profile::ImageProfile;
use crate::profile::rebuild;
use crate::profile::tables::{self as profile_tables, ProfileSource, select_profiles};
use crate::prune::PartitionFilter;
use crate::schema::StoredTable;
use crate::table::{
    BuiltTable, ImprintTable, STORE_URL, SettingsTable, TableView, ViewSource, prune_files,
};

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory (created if missing).
    Local(PathBuf),
    /// An S3 bucket; credentials and region come from the usual `AWS_*` variables.
    S3 {
        bucket: String,
        prefix: Option<String>,
        endpoint: Option<String>,
    },
}

impl StoreLocation {
    /// `s3://bucket[/prefix]` or a filesystem path (`file://` optional).
    pub fn parse(location: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let url = Url::parse(location).map_err(|e| invalid(&e.to_string()))?;
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("no bucket"))?;
            let prefix = rest[bucket.len()..].trim_matches('/');
            return Ok(StoreLocation::S3 {
                bucket: bucket.to_string(),
                prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
                endpoint: None,
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(invalid("only local paths, file:// and s3:// are supported"));
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        if path.is_empty() {
            return Err(invalid("empty path"));
        }
        Ok(StoreLocation::Local(PathBuf::from(path)))
    }

    /// Builds the object store for this location.
    pub fn object_store(&self) -> Result<Arc<dyn ObjectStore>> {
        match self {
            StoreLocation::Local(path) => {
                std::fs::create_dir_all(path).map_err(|e| Error::InvalidLocation {
                    location: path.display().to_string(),
                    reason: format!("cannot create directory: {e}"),
                })?;
                Ok(Arc::new(LocalFileSystem::new_with_prefix(path)?))
            }
            StoreLocation::S3 {
                bucket,
                prefix,
                endpoint,
            } => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(ep) = endpoint {
                    b = b
                        .with_endpoint(ep)
                        .with_allow_http(ep.starts_with("http://"));
                }
                let s3: Arc<dyn ObjectStore> = Arc::new(b.build()?);
                Ok(match prefix {
                    Some(p) => Arc::new(PrefixStore::new(s3, p.as_str())),
                    None => s3,
                })
            }
        }
    }
}

/// Builds a DataFusion session with Imprint's tables over `object_store`, each
/// reading the views `source` gives.
pub fn new_session(
    object_store: Arc<dyn ObjectStore>,
    source: Arc<dyn ViewSource>,
    config: SessionConfig,
    runtime: RuntimeEnvBuilder,
) -> Result<SessionContext> {
    // The only store a session knows is Imprint's own: DataFusion's default registry also
    // serves `file://` (the whole local disk, as the server's user), and its default table
    // factories let `CREATE EXTERNAL TABLE` read any path or URL with it.
    let stores = DefaultObjectStoreRegistry::new();
    let _local_disk = stores.deregister_store(&Url::parse("file://").expect("constant URL"));
    stores.register_store(&Url::parse(STORE_URL).expect("constant URL"), object_store);
    let runtime = runtime
        .with_object_store_registry(Arc::new(stores))
        .build_arc()?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_table_factories(HashMap::new())
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::bounded::bound_functions(&ctx);
    for t in StoredTable::ALL {
        ctx.register_table(t.name(), Arc::new(ImprintTable::new(t, source.clone())))?;
    }
    ctx.register_table("settings", Arc::new(SettingsTable::new(source.clone())))?;
    let policies = source.clone();
    ctx.register_table(
        "policies",
        Arc::new(BuiltTable::new(
            crate::policy::tables::POLICIES_SCHEMA.clone(),
            Box::new(move |_| Ok(crate::policy::tables::batch(&policies.policies()))),
        )),
    )?;
    Ok(ctx)
}

/// Session settings Imprint uses everywhere.
pub fn default_session_config() -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(true)
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        .set_bool("datafusion.execution.parquet.reorder_filters", true)
}

/// A store opened without a server (batch jobs, tools): sees every committed file,
/// and the image profiles over them (from the profile summaries).
#[derive(Debug)]
pub struct Store {
    object_store: Arc<dyn ObjectStore>,
    catalog: Arc<CatalogState>,
    profiles: Arc<CommittedProfiles>,
}

/// The profiles and In Use data over the committed files, as a [`ProfileSource`]
/// and an [`InUseSource`].
#[derive(Debug)]
struct CommittedProfiles {
    catalog: Arc<CatalogState>,
    profiles: HashMap<String, ImageProfile>,
    inuse: Arc<InUseState>,
}

impl ProfileSource for CommittedProfiles {
    fn profiles(&self, filter: &PartitionFilter) -> Vec<(String, i64, ImageProfile)> {
        select_profiles(&self.catalog, &self.profiles, filter)
    }
}

impl InUseSource for CommittedProfiles {
    fn snapshot(&self, filter: &PartitionFilter) -> Snapshot {
        inuse_tables::snapshot(&self.inuse, &self.profiles, &self.catalog.settings, filter)
    }
}

/// The files of a catalog state alone (no write buffer), as a [`ViewSource`].
#[derive(Debug)]
pub(crate) struct CommittedFiles(pub(crate) Arc<CatalogState>);

impl ViewSource for CommittedFiles {
    fn view(
        &self,
        table: StoredTable,
        filter: &PartitionFilter,
    ) -> datafusion::error::Result<TableView> {
        Ok(TableView {
            batches: vec![],
            files: prune_files(self.0.files_of(table), filter),
        })
    }

    fn settings(&self) -> std::collections::BTreeMap<String, String> {
        self.0.settings.clone()
    }

    fn policies(&self) -> Vec<crate::policy::Policy> {
        self.0.policies.values().cloned().collect()
    }
}

impl Store {
    /// Opens `location` (a path, `file://…` or `s3://bucket[/prefix]`).
    pub async fn open(location: &str) -> Result<Self> {
        Self::open_object_store(StoreLocation::parse(location)?.object_store()?).await
    }

    pub async fn open_object_store(object_store: Arc<dyn ObjectStore>) -> Result<Self> {
        let (catalog, profiles) = Self::load(&object_store).await?;
        Ok(Self {
            object_store,
            catalog,
            profiles,
        })
    }

    async fn load(
        object_store: &Arc<dyn ObjectStore>,
    ) -> Result<(Arc<CatalogState>, Arc<CommittedProfiles>)> {
        let catalog = Arc::new(Catalog::load(object_store.clone()).await?.state().clone());
        let (profiles, _) = rebuild::from_store(object_store.clone(), &catalog).await?;
        let inuse = Arc::new(InUseState::load(object_store.clone(), &catalog).await?);
        let profiles = Arc::new(CommittedProfiles {
            catalog: catalog.clone(),
            profiles,
            inuse,
        });
        Ok((catalog, profiles))
    }

    /// Re-reads the catalog, to see files committed since opening.
    pub async fn refresh(&mut self) -> Result<()> {
        (self.catalog, self.profiles) = Self::load(&self.object_store).await?;
        Ok(())
    }

    pub fn catalog(&self) -> &CatalogState {
        &self.catalog
    }

    /// A session over the committed data as of the last open or refresh.
    pub fn session(&self) -> Result<SessionContext> {
        let ctx = new_session(
            self.object_store.clone(),
            Arc::new(CommittedFiles(self.catalog.clone())),
            default_session_config(),
            RuntimeEnvBuilder::new(),
        )?;
        profile_tables::register(&ctx, self.profiles.clone())?;
        inuse_tables::register(&ctx, self.profiles.clone())?;
        Ok(ctx)
    }

    /// Runs one SQL query and collects its result.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.session()?.sql(query).await?.collect().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            StoreLocation::parse("s3://bkt/some/prefix/").unwrap(),
            StoreLocation::S3 {
                bucket: "bkt".into(),
                prefix: Some("some/prefix".into()),
                endpoint: None
            }
        );
        assert_eq!(
            StoreLocation::parse("s3://bkt").unwrap(),
            StoreLocation::S3 {
                bucket: "bkt".into(),
                prefix: None,
                endpoint: None
            }
        );
        assert_eq!(
            StoreLocation::parse("./x").unwrap(),
            StoreLocation::Local("./x".into())
        );
        assert_eq!(
            StoreLocation::parse("file:///x").unwrap(),
            StoreLocation::Local("/x".into())
        );
        assert!(
            StoreLocation::parse("gs://x")
                .unwrap_err()
                .to_string()
                .contains("gs://x")
        );
    }
}
