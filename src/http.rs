//! The HTTPS client every outbound HTTP request is made with (broker and issuer key discovery),
//! and the bounded reading of every HTTP reply the bastion reads.
//!
//! Owns trust: when a CA file or a CA directory is configured, only those certificates are
//! trusted, never the platform store. Every request has a timeout. A client may also present a
//! TLS client certificate (Vault's `cert` login); its private key is read here and handed to the
//! TLS stack, never shown in an error.
//!
//! Owns the size of what comes back: [`read_body`] reads a reply incrementally and stops at a
//! limit, so a peer that sends a gigabyte costs at most the limit in memory. Every reply body
//! (broker, issuer discovery and keys, Pushgateway) goes through it; it must never buffer a body
//! whole before looking at its size.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the certificates that anchor trust come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// The platform's trust store (only when nothing is configured).
    System,
    /// One PEM file, possibly holding several certificates.
    File(PathBuf),
    /// Every `*.pem` / `*.crt` / `*.0`-style PEM file in a directory
    /// (`/etc/grid-security/certificates` on grid hosts).
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("CA {path}: {source}")]
    ReadCa { path: PathBuf, #[source] source: std::io::Error },
    #[error("CA {path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    /// reqwest says only "builder error" for a certificate it cannot parse.
    #[error("CA {path}: holds a PEM block that is not a parsable X.509 certificate")]
    BadCertificate { path: PathBuf, #[source] source: reqwest::Error },
    #[error("cannot build the HTTPS client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("client certificate: cannot read {path}: {source}")]
    ReadIdentity { path: PathBuf, #[source] source: std::io::Error },
    /// reqwest's text for a bad PEM names what it could not parse, never the key's bytes.
    #[error("client certificate {} with key {}: not a usable certificate and private key pair (PEM, the key belonging to the certificate): {source}", cert.display(), key.display())]
    BadIdentity { cert: PathBuf, key: PathBuf, #[source] source: reqwest::Error },
}

/// The most the bastion reads of any broker reply, issuer discovery document or JWKS. Vault's
/// replies and a JWKS are a few kilobytes; a megabyte leaves room for a large key set.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The most the bastion reads of a reply that only explains an outcome (a Pushgateway refusing
/// a push, a webhook): the explanation is shown cut to a line anyway.
pub const MAX_EXPLANATION_BYTES: usize = 64 * 1024;

/// Why a reply body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is (or says it is) larger than the limit; what was read is dropped.
    #[error("the reply is larger than the {} limit{}; not read", show_bytes(*.limit as u64), declared.map(|n| format!(" (it declares {})", show_bytes(n))).unwrap_or_default())]
    TooLarge { limit: usize, declared: Option<u64> },
    #[error("cannot read the reply: {0}")]
    Read(#[source] reqwest::Error),
}

/// `1 MiB`, `64 KiB`, `1073741824 bytes`: a limit as an operator reads it.
pub fn show_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Reads `response`'s body, at most `limit` bytes: a declared `Content-Length` above the limit
/// is refused before anything is read; otherwise the body is read chunk by chunk and reading
/// stops as soon as the limit would be passed (the connection is then dropped, not drained).
pub async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(declared) = response.content_length().filter(|n| *n > limit as u64) {
        return Err(BodyError::TooLarge { limit, declared: Some(declared) });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read(e.without_url()))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit, declared: None });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A TLS client certificate (PEM, leaf first, optionally followed by its chain) and its private
/// key (PEM, PKCS#8, PKCS#1 or SEC1), as two files.
#[derive(Clone, Copy, Debug)]
pub struct ClientCertificate<'a> {
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
}

impl ClientCertificate<'_> {
    fn identity(&self) -> Result<reqwest::Identity, HttpError> {
        let read = |path: &Path| std::fs::read(path).map_err(|source| HttpError::ReadIdentity { path: path.into(), source });
        // reqwest wants one PEM buffer with the key and the certificates; the key goes first so
        // that the buffer is dropped as soon as rustls holds its own copy.
        let mut pem = read(self.key_file)?;
        pem.push(b'\n');
        pem.extend(read(self.cert_file)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|source| HttpError::BadIdentity { cert: self.cert_file.into(), key: self.key_file.into(), source });
        pem.fill(0);
        identity
    }
}

/// PEM certificates from one file.
fn certificates_in(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let pem = std::fs::read(path).map_err(|source| HttpError::ReadCa { path: path.into(), source })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Ok(Vec::new());
    }
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|source| HttpError::BadCertificate { path: path.into(), source })
}

/// Loads the configured anchors. A directory contributes every regular file holding a PEM
/// certificate (IGTF directories also hold `.signing_policy` and `.namespaces` files, skipped).
pub fn load_anchors(ca: &CaSource) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let (root, certs) = match ca {
        CaSource::System => return Ok(Vec::new()),
        CaSource::File(path) => (path, certificates_in(path)?),
        CaSource::Dir(dir) => {
            let rd = std::fs::read_dir(dir).map_err(|source| HttpError::ReadCa { path: dir.clone(), source })?;
            let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            names.sort();
            let mut certs = Vec::new();
            for p in names {
                certs.extend(certificates_in(&p)?);
            }
            (dir, certs)
        }
    };
    if certs.is_empty() {
        return Err(HttpError::NoCertificate { path: root.clone() });
    }
    Ok(certs)
}

/// An HTTPS client trusting exactly `ca` (or the system store for [`CaSource::System`]), with
/// `timeout` on connect and on every whole request.
pub fn client(ca: &CaSource, timeout: Duration) -> Result<reqwest::Client, HttpError> {
    client_presenting(ca, timeout, None)
}

/// As [`client`], presenting `certificate` to servers that ask for one.
pub fn client_presenting(ca: &CaSource, timeout: Duration, certificate: Option<ClientCertificate<'_>>) -> Result<reqwest::Client, HttpError> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("token-bastion/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if *ca != CaSource::System {
        builder = builder.tls_certs_only(load_anchors(ca)?);
    }
    if let Some(certificate) = certificate {
        builder = builder.identity(certificate.identity()?);
        // The TLS library pairs key and certificate only now: a key that is not the
        // certificate's fails here.
        return builder.build().map_err(|source| HttpError::BadIdentity {
            cert: certificate.cert_file.into(),
            key: certificate.key_file.into(),
            source,
        });
    }
    builder.build().map_err(HttpError::Build)
}
