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
