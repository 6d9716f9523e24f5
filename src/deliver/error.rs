//! What can go wrong while delivering to one host. Every variant names the host (the inventory
//! alias) and, where one is involved, the remote path; none carries file content, and the remote
//! command output kept in `detail` comes from commands that are never given content.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("host {host}: cannot resolve address {address}:{port}")]
    Resolve {
        host: String,
        address: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("host {host}: cannot connect to {address}:{port} within {timeout:?}")]
    Connect {
        host: String,
        address: String,
        port: u16,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },

    #[error("host {host}: SSH {stage} failed")]
    Ssh {
        host: String,
        stage: &'static str,
        #[source]
        source: ssh2::Error,
    },

    #[error("host {host}: cannot read known_hosts file {path}")]
    KnownHostsUnreadable {
        host: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "host {host}: host key of {address}:{port} ({fingerprint}) is marked @revoked in \
         {known_hosts}; nothing was written"
    )]
    HostKeyRevoked { host: String, address: String, port: u16, fingerprint: String, known_hosts: PathBuf },

    #[error(
        "host {host}: {known_hosts} names {address}:{port} only in @cert-authority lines; host \
         certificates cannot be verified here, so add the host's plain key; nothing was written"
    )]
    HostKeyCertificateOnly { host: String, address: String, port: u16, known_hosts: PathBuf },

    #[error(
        "host {host}: host key of {address}:{port} ({fingerprint}) is not in {known_hosts}; \
         nothing was written"
    )]
    HostKeyUnknown { host: String, address: String, port: u16, fingerprint: String, known_hosts: PathBuf },

    #[error(
        "host {host}: host key of {address}:{port} ({fingerprint}) does not match the key in \
         {known_hosts} (host reinstalled, or someone in the middle); nothing was written"
    )]
    HostKeyMismatch { host: String, address: String, port: u16, fingerprint: String, known_hosts: PathBuf },

    #[error("host {host}: server at {address}:{port} presented no host key")]
    HostKeyMissing { host: String, address: String, port: u16 },

    #[error("host {host}: public-key authentication as {user} with key {key_file} failed")]
    Auth {
        host: String,
        user: String,
        key_file: PathBuf,
        #[source]
        source: Option<ssh2::Error>,
    },

    #[error("host {host}: remote path {path} is not acceptable: {reason}")]
    InvalidPath { host: String, path: String, reason: &'static str },

    #[error("host {host}: cannot resolve uid of account {account} for {path}: {detail}")]
    Uid { host: String, account: String, path: String, detail: String },

    #[error("host {host}: directory {path}: {detail}")]
    Directory { host: String, path: String, detail: String },

    #[error("host {host}: {path} not written: directory {dir} {reason} (remote-write rule)")]
    UnsafeDirectory { host: String, path: String, dir: String, reason: String },

    #[error("host {host}: temp file for {path} changed under us ({detail}); not renamed, the old file stays")]
    TempChanged { host: String, path: String, detail: String },

    #[error("host {host}: {path}: outcome unknown, the file may hold the new content: {detail}")]
    OutcomeUnknown { host: String, path: String, detail: String },

    #[error("host {host}: {path} not replaced: the connection was lost before its turn; the old file stays")]
    SessionLost { host: String, path: String },

    #[error("host {host}: cannot read back {path}: {detail}")]
    ReadBack { host: String, path: String, detail: String },

    #[error("host {host}: SFTP {op} {path} failed")]
    Sftp {
        host: String,
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("host {host}: cannot set owner {owner} on {path}: {detail}")]
    Owner { host: String, path: String, owner: String, detail: String },

    #[error("host {host}: cannot replace {path}: {detail}")]
    Rename { host: String, path: String, detail: String },

    #[error("host {host}: {path} not replaced: shutting down, the write was abandoned and the old file kept")]
    Abandoned { host: String, path: String },

    #[error("host {host}: cannot remove {path}: {detail}")]
    Remove { host: String, path: String, detail: String },

    #[error("host {host}: {path} not removed: directory {dir} {reason} (remote-write rule)")]
    UnsafeRemove { host: String, path: String, dir: String, reason: String },

    #[error("host {host}: remote command ({purpose}) failed: {detail}")]
    Exec { host: String, purpose: String, detail: String },

    #[error("host {host}: credmon pid file {path}: {detail}")]
    PidFile { host: String, path: String, detail: String },

    #[error("host {host}: cannot signal credmon pid {pid} named in {path}: {detail}")]
    Signal { host: String, path: String, pid: u32, detail: String },

    #[error("host {host}: service {service}: {ignored}; {path} not written")]
    NameIgnored { host: String, service: String, path: String, ignored: Box<crate::credd_names::Ignored> },

    #[error("service {service}: {path} not written: the schedd's credmon settings cannot be judged")]
    ScheddSettings {
        service: String,
        path: String,
        #[source]
        source: Box<crate::credd_names::NamesError>,
    },

    #[error("host {host}: {path} not attempted: the connection to the host failed")]
    NotAttempted { host: String, path: String },

    #[error("host {host}: {path} not written: {parent}, which it depends on, was not delivered")]
    ParentNotDelivered { host: String, path: String, parent: String },
}

impl DeliverError {
    /// Whether the file may now hold the new content although its delivery is not confirmed:
    /// the rename was sent and no answer read, or the check after it failed.
    pub fn may_have_landed(&self) -> bool {
        matches!(self, DeliverError::OutcomeUnknown { .. })
    }
}
