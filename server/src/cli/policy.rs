//! `imprint policy …` (create, list, delete) and `imprint anomalies [--follow]`.
//!
//! Lists come from the SQL tables `policies` and `anomalies` over Flight SQL;
//! `--follow` then streams `imprint.alerts.v1.Alerts/WatchAnomalies`.

use std::time::Duration;

use clap::Subcommand;
use futures::TryStreamExt;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::{DeletePolicyRequest, PutPolicyRequest};
use imprint_proto::alerts_v1::alerts_client::AlertsClient;
use imprint_proto::alerts_v1::{Anomaly as WireAnomaly, WatchAnomaliesRequest};
use imprint_proto::client::{AuthedChannel, authed};
use tonic::transport::Channel;

use super::profile::{Rows, quote, resolve};
use super::{CliError, micros_text, run_sql_for_display, status_error};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a policy (admin): alert when an image matching SCOPE, done learning,
    /// does something outside its baseline in a watched category whose confidence
    /// is at least --min-confidence.
    ///
    /// Example: imprint policy create api-drift --scope 'registry.example/api:*'
    ///          --category processes --category network --severity high
    Create {
        /// Unique name: letters, digits, '.', '_', '-'.
        name: String,
        /// An image-name glob (`*` any text, `?` one character; `*` is every
        /// image) or a digest (sha256:…).
        #[arg(long)]
        scope: String,
        /// A category to watch (repeatable): network, processes, files, syscalls.
        /// Default: all four.
        #[arg(long = "category")]
        categories: Vec<String>,
        /// low, medium or high.
        #[arg(long, default_value = "high")]
        min_confidence: String,
        /// low, medium, high or critical (copied to each anomaly).
        #[arg(long, default_value = "medium")]
        severity: String,
        /// At most one anomaly per container and item this often, e.g. 5m, 1h.
        #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration)]
        throttle: Duration,
        /// Store it switched off.
        #[arg(long)]
        disabled: bool,
        /// Overwrite a policy of the same name.
        #[arg(long)]
        replace: bool,
    },
    /// List every policy.
    List,
    /// Delete a policy (its anomalies stay in the `anomalies` table).
    Delete { name: String },
}

pub async fn policy(
    channel: Channel,
    token: &str,
    mut client: AdminClient<AuthedChannel>,
    command: PolicyCommand,
) -> Result<(), CliError> {
    match command {
        PolicyCommand::Create {
            name,
            scope,
            categories,
            min_confidence,
            severity,
            throttle,
            disabled,
            replace,
        } => {
            if throttle.as_secs() == 0 {
                return Err(CliError::Server("--throttle: at least 1s".into()));
            }
            client
                .put_policy(PutPolicyRequest {
                    name: name.clone(),
                    scope,
                    categories,
                    min_confidence,
                    severity,
                    disabled,
                    throttle_seconds: throttle.as_secs(),
                    replace,
                })
                .await
                .map_err(status_error)?;
            println!(
                "policy {name} {}",
                if replace { "stored" } else { "created" }
            );
            Ok(())
        }
        PolicyCommand::List => {
            let rows = Rows(
                run_sql_for_display(
                    channel,
                    token,
                    "SELECT name, scope, categories, min_confidence, severity, enabled, \
                     throttle_seconds FROM policies ORDER BY name",
                )
                .await?,
            );
            println!(
                "{:<24} {:<32} {:<34} {:<8} {:<9} {:<8} throttle",
                "name", "scope", "categories", "min_conf", "severity", "enabled"
            );
            for r in rows.iter() {
                println!(
                    "{:<24} {:<32} {:<34} {:<8} {:<9} {:<8} {}s",
                    r.get("name"),
                    r.get("scope"),
                    r.get("categories"),
                    r.get("min_confidence"),
                    r.get("severity"),
                    r.get("enabled"),
                    r.get("throttle_seconds"),
                );
            }
            if rows.len() == 0 {
                eprintln!("no policies: create one with `imprint policy create`");
            }
            Ok(())
        }
        PolicyCommand::Delete { name } => {
            client
                .delete_policy(DeletePolicyRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("policy {name} deleted");
            Ok(())
        }
    }
}

/// What `imprint anomalies` shows.
#[derive(Debug, Clone, Default)]
pub struct AnomalyQuery {
    pub image: Option<String>,
    pub policy: Option<String>,
    pub since: Option<Duration>,
    pub limit: usize,
    pub follow: bool,
}

fn header() {
    println!(
        "{:<20} {:<9} {:<16} {:<28} {:<14} {:<10} {:<11} key",
        "time", "severity", "policy", "image_name", "container", "kind", "confidence"
    );
}

#[allow(clippy::too_many_arguments)]
fn line(
    time: &str,
    severity: &str,
    policy: &str,
    image_name: &str,
    container: &str,
    kind: &str,
    confidence: &str,
    key: &str,
) {
    let container = container.get(..12).unwrap_or(container);
    // The streamed anomalies are not escaped on the way in, like the queried ones are.
    let [image_name, container, key] = [image_name, container, key].map(super::printable::escape);
    println!(
        "{time:<20} {severity:<9} {policy:<16} {image_name:<28} {container:<14} {kind:<10} {confidence:<11} {key}"
    );
}

/// `imprint anomalies`: the newest stored anomalies (oldest first), then with
/// `--follow` every new one as it is found, until interrupted.
pub async fn anomalies(channel: Channel, token: &str, q: AnomalyQuery) -> Result<(), CliError> {
    let image = match &q.image {
        Some(i) => Some(resolve(&channel, token, i).await?),
        None => None,
    };
    // Subscribe before reading the table, so nothing falls between the two.
    let mut stream = if q.follow {
        let mut client = AlertsClient::new(authed(channel.clone(), token).map_err(status_error)?);
        Some(
            client
                .watch_anomalies(WatchAnomaliesRequest {
                    image: image.clone().unwrap_or_default(),
                    policy: q.policy.clone().unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner(),
        )
    } else {
        None
    };
    let mut filters = Vec::new();
    if let Some(i) = &image {
        filters.push(format!("image = {}", quote(i)));
    }
    if let Some(p) = &q.policy {
        filters.push(format!("policy = {}", quote(p)));
    }
    if let Some(since) = q.since {
        filters.push(format!(
            "time >= now() - INTERVAL '{} seconds'",
            since.as_secs()
        ));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    let limit = if q.limit == 0 {
        String::new()
    } else {
        format!("LIMIT {}", q.limit)
    };
    let sql = format!(
        "SELECT * FROM (SELECT time, severity, policy, image_name, container_id, kind, \
         confidence, key FROM anomalies {filter} ORDER BY time DESC, policy, kind, key {limit}) \
         ORDER BY time, policy, kind, key"
    );
    let rows = Rows(run_sql_for_display(channel, token, &sql).await?);
    header();
    for r in rows.iter() {
        line(
            &r.get("time")
                .replace('T', " ")
                .chars()
                .take(19)
                .collect::<String>(),
            &r.get("severity"),
            &r.get("policy"),
            &r.get("image_name"),
            &r.get("container_id"),
            &r.get("kind"),
            &r.get("confidence"),
            &r.get("key"),
        );
    }
    let Some(stream) = stream.as_mut() else {
        if rows.len() == 0 {
            eprintln!("no anomalies");
        }
        return Ok(());
    };
    eprintln!("following new anomalies (Ctrl-C stops)…");
    while let Some(a) = stream.try_next().await.map_err(status_error)? {
        print_wire(&a);
    }
    Ok(())
}

fn print_wire(a: &WireAnomaly) {
    if a.missed > 0 {
        eprintln!("({} anomalies missed: this client fell behind)", a.missed);
    }
    let time = micros_text(a.time_unix_micros);
    line(
        time.trim_end_matches('Z'),
        &a.severity,
        &a.policy,
        &a.image_name,
        &a.container_id,
        &a.kind,
        &a.confidence,
        &a.key,
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
