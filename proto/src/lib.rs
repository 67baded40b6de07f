//! Imprint's wire contract: messages and services generated from `proto/`.
//!
//! The generated code lives in `OUT_DIR`; this crate only re-exports it under the
//! protobuf package path (`imprint.ingest.v1` is [`ingest::v1`]).

pub mod ingest {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("imprint.ingest.v1");
    }
}

pub mod admin {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("imprint.admin.v1");
    }
}

pub mod alerts {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("imprint.alerts.v1");
    }
}

/// Status metadata of a Push refused with FAILED_PRECONDITION because its seq is below what
/// the server still tells apart: the highest seq applied for the agent (decimal).
pub const AGENT_LAST_SEQ_METADATA: &str = "imprint-agent-last-seq";

/// One gRPC method: its path (`/package.Service/Method`) and whether each side streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMethod {
    pub path: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

include!(concat!(env!("OUT_DIR"), "/grpc_methods.rs"));

pub use admin::v1 as admin_v1;
pub use alerts::v1 as alerts_v1;
pub use ingest::v1 as ingest_v1;

impl ingest::v1::ItemKind {
    /// Every valid kind, in wire order.
    pub const ALL: [ingest::v1::ItemKind; 10] = {
        use ingest::v1::ItemKind::*;
        [
            Process, FileRead, FileWrite, DirRead, DirWrite, TcpIn, UdpIn, TcpOut, UdpOut, Syscall,
        ]
    };

    /// The name used in SQL (`kind` column), e.g. `file_read`.
    pub fn sql_name(self) -> &'static str {
        use ingest::v1::ItemKind::*;
        match self {
            Unspecified => "unspecified",
            Process => "process",
            FileRead => "file_read",
            FileWrite => "file_write",
            DirRead => "dir_read",
            DirWrite => "dir_write",
            TcpIn => "tcp_in",
            UdpIn => "udp_in",
            TcpOut => "tcp_out",
            UdpOut => "udp_out",
            Syscall => "syscall",
        }
    }

    /// The kind for a SQL name, if it is one.
    pub fn from_sql_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.sql_name() == name)
    }

    /// Whether the key of this kind is a port number.
    pub fn is_port(self) -> bool {
        use ingest::v1::ItemKind::*;
        matches!(self, TcpIn | UdpIn | TcpOut | UdpOut)
    }
}

/// Client-side helpers shared by the CLI, the benchmarks and the tests.
/// The text form of durations in settings values and command lines (`SetSetting` takes
/// `"24h"`), shared by the server, the CLI and the agent.
/// Image digests as the contract writes them (`Fingerprint.image`): `sha256:` and 64 lowercase
/// hex characters. The server validates with it; the agent checks its static mappings with it.
pub mod digest {
    /// 64 lowercase hex characters (a sha256, and the form of container ids the runtimes use).
    pub fn is_lower_hex64(text: &str) -> bool {
        text.len() == 64 && text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// `sha256:` followed by 64 lowercase hex characters.
    pub fn check_digest(digest: &str) -> Result<(), String> {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return Err(format!(
                "{digest:?} is not an image digest: expected \"sha256:\" and 64 lowercase hex characters"
            ));
        };
        if !is_lower_hex64(hex) {
            return Err(format!(
                "{digest:?} is not an image digest: expected 64 lowercase hex characters after \"sha256:\""
            ));
        }
        Ok(())
    }
}

pub mod duration {
    use std::time::Duration;

    /// `250ms`, `30s`, `5m`, `24h`, `30d`.
    pub fn parse_duration(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration: expected e.g. 30s, 5m, 24h"))?;
        let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
        match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            "" => return Err(format!("{s:?} needs a unit: ms, s, m, h or d")),
            u => {
                return Err(format!(
                    "unknown duration unit {u:?} in {s:?}: use ms, s, m, h or d"
                ));
            }
        }
        .ok_or_else(|| format!("{s:?} is too long"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn units_and_mistakes() {
            assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
            assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
            assert!(
                parse_duration("30")
                    .expect_err("no unit")
                    .contains("needs a unit")
            );
            assert!(
                parse_duration("3w")
                    .expect_err("unit")
                    .contains("unknown duration unit")
            );
        }
    }
}

pub mod client {
    use tonic::metadata::MetadataValue;
    use tonic::service::Interceptor;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
    use tonic::{Request, Status};

    /// Adds `authorization: Bearer <token>` to every request (nothing when the
    /// token is empty).
    #[derive(Debug, Clone)]
    pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

    impl Bearer {
        pub fn new(token: &str) -> Result<Self, Status> {
            if token.is_empty() {
                return Ok(Self(None));
            }
            let v = format!("Bearer {token}").parse().map_err(|_| {
                Status::invalid_argument("the token has characters a header cannot carry")
            })?;
            Ok(Self(Some(v)))
        }
    }

    impl Interceptor for Bearer {
        fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
            if let Some(v) = &self.0 {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        }
    }

    /// A channel that sends a bearer token.
    pub type AuthedChannel = InterceptedService<Channel, Bearer>;

    /// Why a client could not reach the server.
    #[derive(Debug, thiserror::Error)]
    pub enum ConnectError {
        #[error("cannot read the CA certificate {path}: {source}")]
        CaCert {
            path: String,
            source: std::io::Error,
        },
        #[error("{server} is not a valid server address: {source}")]
        Address {
            server: String,
            source: tonic::transport::Error,
        },
        #[error("TLS set-up for {server}: {source}")]
        Tls {
            server: String,
            source: tonic::transport::Error,
        },
        #[error("cannot connect to {server}: {}", error_chain(source))]
        Connect {
            server: String,
            source: tonic::transport::Error,
        },
    }

    /// A transport error with its causes (tonic's Display shows only "transport error").
    fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut out = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let text = c.to_string();
            // Some layers repeat their cause's text; say each thing once.
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }

    /// Connects to `server` (`http://host:port` or `https://host:port`), the one
    /// way the CLI, the agent and the tests reach imprintd.
    ///
    /// `https://` verifies the server's certificate against `ca_cert` (a PEM file,
    /// e.g. a self-signed CA) or, without one, the system's trusted roots. Giving
    /// `ca_cert` with an `http://` address switches to TLS as well, so a forgotten
    /// scheme does not silently send tokens in clear text.
    pub async fn connect(
        server: &str,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Channel, ConnectError> {
        let mut address = server.to_string();
        if ca_cert.is_some() && address.starts_with("http://") {
            address = address.replacen("http://", "https://", 1);
        }
        let mut endpoint =
            Endpoint::from_shared(address.clone()).map_err(|source| ConnectError::Address {
                server: server.to_string(),
                source,
            })?;
        if address.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            match ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| ConnectError::CaCert {
                        path: path.display().to_string(),
                        source,
                    })?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|source| ConnectError::Tls {
                    server: server.to_string(),
                    source,
                })?;
        }
        endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Connect {
                server: server.to_string(),
                source,
            })
    }

    pub fn authed(channel: Channel, token: &str) -> Result<AuthedChannel, Status> {
        Ok(InterceptedService::new(channel, Bearer::new(token)?))
    }
}
