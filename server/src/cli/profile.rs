//! `imprint profile …`: an image's profile as text, the list of profiles, and the
//! admin actions on one (reset, own learning period).
//!
//! Everything shown is read through Flight SQL from `profile_status` and
//! `profiles`, so the CLI shows exactly what any SQL client sees.

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use clap::Subcommand;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::{ResetProfileRequest, SetLearningPeriodRequest};
use imprint_proto::client::AuthedChannel;
use imprint_proto::digest::is_lower_hex64;
use imprint_query::profile::Category;
use tonic::transport::Channel;

use super::{CliError, micros_text, run_sql_for_display, status_error};

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// A table of every image profile: state, observed time and confidence.
    List,
    /// Start an image's profile again (admin): it learns anew from now; the raw
    /// fingerprints stay queryable.
    Reset {
        /// Image digest (sha256:…) or name (repo:tag).
        image: String,
    },
    /// Set an image's own learning period (admin), e.g. `7d`; `default` removes
    /// it, so `profiling.learning_period` applies again.
    LearningPeriod {
        /// Image digest (sha256:…) or name (repo:tag).
        image: String,
        /// A duration (30m, 12h, 7d) or `default`.
        period: String,
    },
}

/// Rows of a query as text cells by column name.
pub(crate) struct Rows(pub Vec<RecordBatch>);

impl Rows {
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.0
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |r| Row(b, r)))
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(RecordBatch::num_rows).sum()
    }
}

pub(crate) struct Row<'a>(&'a RecordBatch, usize);

impl Row<'_> {
    pub fn get(&self, column: &str) -> String {
        self.0
            .column_by_name(column)
            .and_then(|c| {
                if c.is_null(self.1) {
                    Some(String::new())
                } else {
                    array_value_to_string(c, self.1).ok()
                }
            })
            .unwrap_or_default()
    }
    fn num(&self, column: &str) -> f64 {
        self.get(column).parse().unwrap_or(0.0)
    }
}

pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `4m30s`, `2h`, `1d3h`: seconds as people read them.
pub fn human_seconds(seconds: f64) -> String {
    let s = seconds.round() as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let parts = [(d, "d"), (h, "h"), (m, "m"), (sec, "s")];
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .take(2)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if text.is_empty() { "0s".into() } else { text }
}

/// The digest `image` names: itself when it is a digest, else the one profile
/// with that image name. Several digests under one name is an error listing them.
pub(crate) async fn resolve(
    channel: &Channel,
    token: &str,
    image: &str,
) -> Result<String, CliError> {
    if image.strip_prefix("sha256:").is_some_and(is_lower_hex64) {
        return Ok(image.to_string());
    }
    let rows = Rows(
        run_sql_for_display(
            channel.clone(),
            token,
            &format!(
                "SELECT image, last_seen FROM profile_status WHERE image_name = {} \
                 ORDER BY last_seen DESC",
                quote(image)
            ),
        )
        .await?,
    );
    match rows.len() {
        0 => Err(CliError::Server(format!(
            "no profile has the image name {image:?} (give a digest, sha256:…, or see \
             `imprint profile list`)"
        ))),
        1 => Ok(rows.iter().next().expect("one row").get("image")),
        _ => {
            let digests: Vec<String> = rows
                .iter()
                .map(|r| format!("  {} (last seen {})", r.get("image"), r.get("last_seen")))
                .collect();
            Err(CliError::Server(format!(
                "the image name {image:?} has several digests; give one of them:\n{}",
                digests.join("\n")
            )))
        }
    }
}

/// `imprint profile IMAGE`: a status line, then each category with its
/// confidence and items (at most `limit` per category; 0 for all).
pub async fn show(
    channel: Channel,
    token: &str,
    image: &str,
    limit: usize,
) -> Result<(), CliError> {
    let digest = resolve(&channel, token, image).await?;
    let status = Rows(
        run_sql_for_display(
            channel.clone(),
            token,
            &format!(
                "SELECT * FROM profile_status WHERE image = {}",
                quote(&digest)
            ),
        )
        .await?,
    );
    let Some(s) = status.iter().next() else {
        return Err(CliError::Server(format!(
            "no profile for {digest}: nothing has been seen from it"
        )));
    };
    let items = Rows(
        run_sql_for_display(
            channel,
            token,
            &format!(
                "SELECT kind, key, containers, nodes, windows, count, first_seen, in_baseline \
                 FROM profiles WHERE image = {} ORDER BY kind, key",
                quote(&digest)
            ),
        )
        .await?,
    );
    let state = match s.get("state").as_str() {
        "done_learning" => format!("done learning at {}", s.get("learned_at")),
        other => format!(
            "{other} ({} of {} observed)",
            human_seconds(s.num("observed_seconds")),
            human_seconds(s.num("learning_period_seconds"))
        ),
    };
    println!("{}  {digest}", s.get("image_name"));
    println!(
        "{state} · observed {} · {} containers on {} nodes · {} windows · {} items",
        human_seconds(s.num("observed_seconds")),
        s.get("containers"),
        s.get("nodes"),
        s.get("windows"),
        s.get("items"),
    );
    let completeness = match s.get("incomplete_reasons").as_str() {
        "" => "complete".to_string(),
        reasons => format!("partial: {}", reasons.replace(',', ", ")),
    };
    println!(
        "seen {} – {} · {completeness}",
        s.get("first_seen"),
        s.get("last_seen")
    );
    for category in Category::ALL {
        let name = category.name();
        let of_category: Vec<Row> = items
            .iter()
            .filter(|r| Category::of_kind(&r.get("kind")) == Some(category))
            .collect();
        println!();
        println!(
            "{name}: confidence {} ({}) · {} items",
            s.get(&format!("confidence_{name}")),
            s.get(&format!("confidence_{name}_score")),
            of_category.len()
        );
        let shown = if limit == 0 { of_category.len() } else { limit };
        for r in of_category.iter().take(shown) {
            let after = if r.get("in_baseline") == "false" {
                "  (new after learning)"
            } else {
                ""
            };
            println!(
                "  {:<10} {:<48} {:>3} containers {:>6} windows{after}",
                r.get("kind"),
                r.get("key"),
                r.get("containers"),
                r.get("windows"),
            );
        }
        if of_category.len() > shown {
            println!(
                "  … and {} more (--limit 0 shows all)",
                of_category.len() - shown
            );
        }
    }
    Ok(())
}

/// `imprint profile list`.
pub async fn list(channel: Channel, token: &str) -> Result<(), CliError> {
    let rows = Rows(
        run_sql_for_display(
            channel,
            token,
            "SELECT image, image_name, state, observed_seconds, containers, nodes, completeness, \
             confidence_network, confidence_processes, confidence_files, confidence_syscalls \
             FROM profile_status ORDER BY image_name, image",
        )
        .await?,
    );
    println!(
        "{:<32} {:<19} {:<13} {:>9} {:>5} {:>5} {:<8} {:<7} {:<9} {:<7} {:<8}",
        "image_name",
        "image",
        "state",
        "observed",
        "ctrs",
        "nodes",
        "network",
        "procs",
        "files",
        "syscall",
        "complete"
    );
    for r in rows.iter() {
        let digest = r.get("image");
        let short = digest.get(..19).unwrap_or(&digest);
        println!(
            "{:<32} {:<19} {:<13} {:>9} {:>5} {:>5} {:<8} {:<7} {:<9} {:<7} {:<8}",
            r.get("image_name"),
            short,
            r.get("state"),
            human_seconds(r.num("observed_seconds")),
            r.get("containers"),
            r.get("nodes"),
            r.get("confidence_network"),
            r.get("confidence_processes"),
            r.get("confidence_files"),
            r.get("confidence_syscalls"),
            r.get("completeness"),
        );
    }
    if rows.len() == 0 {
        eprintln!("no profiles yet: nothing has been ingested");
    }
    Ok(())
}

/// `imprint profile reset` and `imprint profile learning-period`.
pub async fn admin(
    channel: Channel,
    token: &str,
    mut client: AdminClient<AuthedChannel>,
    command: ProfileCommand,
) -> Result<(), CliError> {
    match command {
        ProfileCommand::List => list(channel, token).await,
        ProfileCommand::Reset { image } => {
            let digest = resolve(&channel, token, &image).await?;
            let r = client
                .reset_profile(ResetProfileRequest {
                    image: digest.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "profile of {digest} reset: learning again from {}",
                micros_text(r.reset_unix_micros)
            );
            Ok(())
        }
        ProfileCommand::LearningPeriod { image, period } => {
            let digest = resolve(&channel, token, &image).await?;
            let value = if period == "default" {
                String::new()
            } else {
                period.clone()
            };
            client
                .set_learning_period(SetLearningPeriodRequest {
                    image: digest.clone(),
                    learning_period: value,
                })
                .await
                .map_err(status_error)?;
            if period == "default" {
                println!("{digest}: learning period is profiling.learning_period again");
            } else {
                println!("{digest}: learning period {period}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_as_people_write_them() {
        assert_eq!(human_seconds(0.0), "0s");
        assert_eq!(human_seconds(270.0), "4m30s");
        assert_eq!(human_seconds(7200.0), "2h");
        assert_eq!(human_seconds(86_400.0 + 3.0 * 3600.0 + 59.0), "1d3h");
    }
}
