//! The `imprint` command line: talks to a running `imprintd`.
//!
//! Every command sends a bearer token: `--token` (or `IMPRINT_TOKEN`), else the
//! admin token the server wrote at first start, `<data-dir>/admin-token`.

pub mod inuse;
pub mod output;
pub mod policy;
pub mod printable;
pub mod profile;
pub mod zip;

use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::{
    CreateTokenRequest, GetSettingsRequest, ListTokensRequest, RevokeTokenRequest,
    SetSettingRequest,
};
use imprint_proto::client::{AuthedChannel, authed};
use tonic::transport::Channel;

use output::OutputFormat;

/// The Imprint command line.
#[derive(Debug, Parser)]
#[command(name = "imprint", version)]
pub struct Cli {
    /// The server's gRPC address.
    #[arg(
        long,
        global = true,
        env = "IMPRINT_SERVER",
        default_value = "http://127.0.0.1:7340"
    )]
    pub server: String,

    /// Bearer token. Default: the admin token in <data-dir>/admin-token.
    #[arg(long, global = true, env = "IMPRINT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The server's data directory, where its first-start admin token is.
    #[arg(
        long,
        global = true,
        env = "IMPRINT_DATA_DIR",
        default_value = "./imprint-data"
    )]
    pub data_dir: PathBuf,

    /// PEM file of the CA that signed the server's TLS certificate (e.g. a
    /// self-signed one). Implies TLS; without it `https://` uses the system roots.
    #[arg(long, global = true, env = "IMPRINT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a SQL query and print the result.
    ///
    /// Example: imprint sql "SELECT kind, count(*) FROM fingerprints GROUP BY kind"
    Sql {
        /// The query (DataFusion SQL). Tables: fingerprints, windows, profiles,
        /// profile_status, settings, packages, package_files, vulnerabilities,
        /// runtime_vulnerabilities, policies, anomalies.
        query: String,
        /// Output format; `arrow` writes an Arrow IPC stream to stdout.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Create, list and revoke access tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show and change server settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// An image's profile: `imprint profile IMAGE` prints its status and, per
    /// category, its confidence and items; `imprint profile list` lists them all.
    ///
    /// IMAGE is a digest (sha256:…) or an image name (repo:tag).
    #[command(args_conflicts_with_subcommands = true)]
    Profile {
        /// Image digest or name.
        image: Option<String>,
        /// At most this many items per category (0: all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(subcommand)]
        command: Option<profile::ProfileCommand>,
    },
    /// Import SBOMs, scanner reports and OSV advisories (admin).
    #[command(subcommand)]
    Import(inuse::ImportCommand),
    /// An image's vulnerabilities with an In Use column: in use first, then by
    /// severity.
    ///
    /// Example: imprint vulns registry.example/api:1 --in-use
    Vulns {
        /// Image digest or name.
        image: String,
        /// Only the vulnerabilities of packages in use.
        #[arg(long)]
        in_use: bool,
    },
    /// Create, list and delete profile policies (create and delete: admin).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Anomalies policies found: the newest stored ones, then with --follow each
    /// new one as it is found.
    ///
    /// Example: imprint anomalies --since 1h --follow
    Anomalies {
        /// Only this image (digest or name).
        #[arg(long)]
        image: Option<String>,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only anomalies of windows that started this long ago or later (e.g. 1h).
        #[arg(long, value_parser = crate::config::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many stored anomalies, the newest (0: all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep running and print new anomalies as they are found.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    ///
    /// Example: imprint token create --scope read --name grafana --expires 30d
    Create {
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// Scopes (repeatable): admin, agent, read, export.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. 30d or 12h. Default: never expires.
        #[arg(long, value_parser = crate::config::parse_duration)]
        expires: Option<std::time::Duration>,
        /// Bind the token to an agent id (repeatable; agent scope only): Push and
        /// ReportInventory from any other agent id are refused.
        #[arg(long = "agent-id")]
        agent_ids: Vec<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// List every setting with its value and default.
    List,
    /// Change a setting (admin), e.g. `imprint settings set profiling.enabled false`.
    Set { key: String, value: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "{0} (is imprintd running? set --server or IMPRINT_SERVER; with TLS use https:// and --ca-cert)"
    )]
    Connect(#[from] imprint_proto::client::ConnectError),
    #[error("{0}")]
    Server(String),
    #[error("writing the output: {0}")]
    Output(#[from] arrow::error::ArrowError),
}

fn flight_error(e: arrow_flight::error::FlightError) -> CliError {
    // The client wraps the server's status; show the message the server gave.
    CliError::Server(e.to_string())
}

fn status_error(s: tonic::Status) -> CliError {
    CliError::Server(format!("{:?}: {}", s.code(), s.message()))
}

impl Cli {
    /// `--token`, else the local admin token file, else none.
    pub fn resolve_token(&self) -> String {
        if let Some(t) = &self.token {
            return t.trim().to_string();
        }
        std::fs::read_to_string(self.data_dir.join(crate::admin::ADMIN_TOKEN_FILE))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }
}

/// Runs `query` over Flight SQL and collects every batch.
pub async fn run_sql(
    channel: Channel,
    token: &str,
    query: &str,
) -> Result<Vec<RecordBatch>, CliError> {
    let mut client = FlightSqlServiceClient::new(channel);
    if !token.is_empty() {
        client.set_token(token.to_string());
    }
    let info = client
        .execute(query.to_string(), None)
        .await
        .map_err(flight_error)?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let stream = client.do_get(ticket).await.map_err(flight_error)?;
        let mut part: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| CliError::Server(e.to_string()))?;
        batches.append(&mut part);
    }
    Ok(batches)
}

/// [`run_sql`] for output a person reads: text columns escaped ([`printable`]).
pub async fn run_sql_for_display(
    channel: Channel,
    token: &str,
    query: &str,
) -> Result<Vec<RecordBatch>, CliError> {
    Ok(printable::escape_batches(
        run_sql(channel, token, query).await?,
    )?)
}

fn micros_text(us: i64) -> String {
    if us == 0 {
        return "never".into();
    }
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let token = cli.resolve_token();
    let channel = imprint_proto::client::connect(&cli.server, cli.ca_cert.as_deref()).await?;
    let admin = |channel: Channel| -> Result<AdminClient<AuthedChannel>, CliError> {
        Ok(AdminClient::new(
            authed(channel, &token).map_err(status_error)?,
        ))
    };
    match cli.command {
        Command::Sql { query, format } => {
            let mut batches = run_sql(channel, &token, &query).await?;
            // What a terminal shows gets its control characters escaped; JSON escapes them
            // itself and Arrow output keeps the bytes.
            if matches!(format, OutputFormat::Table | OutputFormat::Csv) {
                batches = printable::escape_batches(batches)?;
            }
            output::write(&batches, format, &mut std::io::stdout().lock())?;
        }
        Command::Token(TokenCommand::Create {
            name,
            scopes,
            expires,
            agent_ids,
        }) => {
            let r = admin(channel)?
                .create_token(CreateTokenRequest {
                    name,
                    scopes,
                    expires_in_seconds: expires.map_or(0, |d| d.as_secs()),
                    agent_ids,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            eprintln!(
                "created token {} ({}) with scopes [{}], expires {}{}",
                t.id,
                t.name,
                t.scopes.join(", "),
                micros_text(t.expires_unix_micros),
                if t.agent_ids.is_empty() {
                    String::new()
                } else {
                    format!(", only for agent ids [{}]", t.agent_ids.join(", "))
                }
            );
            eprintln!("the secret is shown only now:");
            println!("{}", r.secret);
        }
        Command::Token(TokenCommand::List) => {
            let r = admin(channel)?
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{:<14} {:<24} {:<22} {:<20} {:<20} state",
                "id", "name", "scopes", "created", "expires"
            );
            for t in r.tokens {
                let state = if t.revoked { "revoked" } else { "active" };
                println!(
                    "{:<14} {:<24} {:<22} {:<20} {:<20} {state}",
                    t.id,
                    t.name,
                    t.scopes.join(","),
                    micros_text(t.created_unix_micros),
                    micros_text(t.expires_unix_micros)
                );
            }
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let r = admin(channel)?
                .revoke_token(RevokeTokenRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            println!("revoked {} ({})", t.id, t.name);
        }
        Command::Settings(SettingsCommand::List) => {
            let r = admin(channel)?
                .get_settings(GetSettingsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{:<30} {:<8} {:<8} description", "key", "value", "default");
            for s in r.settings {
                println!(
                    "{:<30} {:<8} {:<8} {}",
                    s.key, s.value, s.default_value, s.description
                );
            }
        }
        Command::Profile {
            image,
            limit,
            command,
        } => match (image, command) {
            (_, Some(command)) => {
                let client = admin(channel.clone())?;
                profile::admin(channel, &token, client, command).await?;
            }
            (Some(image), None) => profile::show(channel, &token, &image, limit).await?,
            (None, None) => {
                return Err(CliError::Server(
                    "give an image (digest or name), or `list`: imprint profile --help".into(),
                ));
            }
        },
        Command::Import(command) => {
            let client = admin(channel.clone())?;
            inuse::import(channel, &token, client, command).await?;
        }
        Command::Vulns { image, in_use } => inuse::vulns(channel, &token, &image, in_use).await?,
        Command::Policy(command) => {
            let client = admin(channel.clone())?;
            policy::policy(channel, &token, client, command).await?;
        }
        Command::Anomalies {
            image,
            policy: policy_name,
            since,
            limit,
            follow,
        } => {
            let q = policy::AnomalyQuery {
                image,
                policy: policy_name,
                since,
                limit,
                follow,
            };
            policy::anomalies(channel, &token, q).await?;
        }
        Command::Settings(SettingsCommand::Set { key, value }) => {
            let r = admin(channel)?
                .set_setting(SetSettingRequest { key, value })
                .await
                .map_err(status_error)?
                .into_inner();
            let s = r.setting.unwrap_or_default();
            println!("{} = {}", s.key, s.value);
        }
    }
    Ok(())
}
