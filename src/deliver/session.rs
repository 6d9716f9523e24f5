//! One authenticated SSH session to one host: TCP connect with a deadline, strict host-key
//! check against the configured known_hosts, public-key login, and the two channels the rest of
//! the module needs (SFTP for bytes, exec for the few things SFTP cannot do).
//!
//! Must never accept a host key that known_hosts does not hold for that host, never fall back to
//! password or keyboard-interactive login, and never put file content on a command line.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, KnownHostFileKind, MethodType, Session, Sftp};

use super::{DeliverError, HostTarget};

/// Remote command output is kept for error messages only; a runaway command must not fill memory.
const MAX_EXEC_OUTPUT: u64 = 64 * 1024;

pub(crate) struct Remote {
    pub host: String,
    session: Session,
    /// Always `Some` until drop, which closes it before saying goodbye to the server.
    sftp: Option<Sftp>,
}

/// What an exec channel returned. stderr is kept apart because sshd itself writes there
/// before the command runs (e.g. "Could not chdir to home directory" for an account without
/// one), which must not be mistaken for the command's output.
pub(crate) struct ExecOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// Both streams on one line, for an error message.
    pub fn detail(&self) -> String {
        super::batch::one_line(&format!("{} {}", self.stderr, self.stdout))
    }
}

impl Remote {
    /// Connects, verifies the host key and authenticates. Any failure here fails the whole host
    /// before a single byte is written.
    pub fn connect(target: &HostTarget) -> Result<Remote, DeliverError> {
        let host = target.name.clone();
        let tcp = tcp_connect(target)?;
        let ssh_err = |stage: &'static str| {
            let host = host.clone();
            move |source| DeliverError::Ssh { host, stage, source }
        };

        let mut session = Session::new().map_err(ssh_err("session setup"))?;
        // libssh2 blocks forever by default; the timeout bounds every later call too.
        let ms = target.timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
        session.set_timeout(ms);

        let mut known = session.known_hosts().map_err(ssh_err("known_hosts setup"))?;
        known.read_file(&target.known_hosts, KnownHostFileKind::OpenSSH).map_err(|source| {
            DeliverError::KnownHostsUnreadable {
                host: host.clone(),
                path: target.known_hosts.clone(),
                source,
            }
        })?;

        // Offer only the key types known_hosts holds for this host: otherwise the server may pick
        // a type we hold no key for, and a perfectly good host would look like a mismatch.
        let known_types = known_key_types(&known, &target.address, target.port);
        let supported = session.supported_algs(MethodType::HostKey).unwrap_or_default();
        let prefs: Vec<&str> = known_types
            .iter()
            .flat_map(|t| host_key_algorithms(t))
            .filter(|a| supported.contains(a))
            .collect();
        if !prefs.is_empty() {
            session.method_pref(MethodType::HostKey, &prefs.join(",")).map_err(ssh_err("host-key preference"))?;
        }

        session.set_tcp_stream(tcp);
        session.handshake().map_err(ssh_err("handshake"))?;

        let (key, _) = session.host_key().ok_or_else(|| DeliverError::HostKeyMissing {
            host: host.clone(),
            address: target.address.clone(),
            port: target.port,
        })?;
        let fingerprint = fingerprint(key);
        match known.check_port(&target.address, target.port, key) {
            CheckResult::Match => {}
            CheckResult::Mismatch => {
                return Err(DeliverError::HostKeyMismatch {
                    host,
                    address: target.address.clone(),
                    port: target.port,
                    fingerprint,
                    known_hosts: target.known_hosts.clone(),
                });
            }
            CheckResult::NotFound | CheckResult::Failure => {
                return Err(DeliverError::HostKeyUnknown {
                    host,
                    address: target.address.clone(),
                    port: target.port,
                    fingerprint,
                    known_hosts: target.known_hosts.clone(),
                });
            }
        }
        drop(known);

        let passphrase = target.key_passphrase.as_ref().map(|p| p.expose());
        session
            .userauth_pubkey_file(&target.user, None, &target.key_file, passphrase)
            .map_err(|source| DeliverError::Auth {
                host: host.clone(),
                user: target.user.clone(),
                key_file: target.key_file.clone(),
                source: Some(source),
            })?;
        if !session.authenticated() {
            return Err(DeliverError::Auth {
                host,
                user: target.user.clone(),
                key_file: target.key_file.clone(),
                source: None,
            });
        }
        // Every plan needs SFTP; a host whose SFTP subsystem does not start fails as a whole.
        let sftp = session.sftp().map_err(ssh_err("SFTP subsystem start"))?;
        tracing::debug!(host = %target.name, %fingerprint, "connected, host key verified");
        Ok(Remote { host, session, sftp: Some(sftp) })
    }

    pub fn sftp(&self) -> &Sftp {
        self.sftp.as_ref().expect("open until drop")
    }

    /// Runs `script` under `sh -c` (whatever the login shell is) on a fresh exec channel. A
    /// non-zero exit status is returned, not turned into an error:
    /// callers decide what it means.
    pub fn exec(&self, purpose: &str, script: &str) -> Result<ExecOutput, DeliverError> {
        let fail = |detail: String| DeliverError::Exec {
            host: self.host.clone(),
            purpose: purpose.to_string(),
            detail,
        };
        let mut channel = self.session.channel_session().map_err(|e| fail(e.to_string()))?;
        channel.exec(&format!("sh -c {}", sh_quote(script))).map_err(|e| fail(e.to_string()))?;
        // The commands run here print a few lines at most, far below the channel window, so
        // reading stdout to the end before stderr cannot stall the remote side.
        let mut stdout = Vec::new();
        (&mut channel).take(MAX_EXEC_OUTPUT).read_to_end(&mut stdout).map_err(|e| fail(e.to_string()))?;
        let mut stderr = Vec::new();
        channel.stderr().take(MAX_EXEC_OUTPUT).read_to_end(&mut stderr).map_err(|e| fail(e.to_string()))?;
        channel.wait_close().map_err(|e| fail(e.to_string()))?;
        let status = channel.exit_status().map_err(|e| fail(e.to_string()))?;
        Ok(ExecOutput {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.sftp = None;
        let _ = self.session.disconnect(None, "token-bastion done", None);
    }
}

fn tcp_connect(target: &HostTarget) -> Result<TcpStream, DeliverError> {
    let addrs: Vec<_> = (target.address.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|source| DeliverError::Resolve {
            host: target.name.clone(),
            address: target.address.clone(),
            port: target.port,
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "address resolved to nothing");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, target.timeout) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(DeliverError::Connect {
        host: target.name.clone(),
        address: target.address.clone(),
        port: target.port,
        timeout: target.timeout,
        source: last,
    })
}

/// Key types (`ssh-ed25519`, `ecdsa-sha2-nistp256`, ...) of the known_hosts entries that belong
/// to `address:port`. Entries are matched through libssh2 itself, so hashed host names work too.
fn known_key_types(known: &ssh2::KnownHosts, address: &str, port: u16) -> Vec<String> {
    let mut types = Vec::new();
    for entry in known.hosts().unwrap_or_default() {
        let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(entry.key()) else { continue };
        if !matches!(known.check_port(address, port, &blob), CheckResult::Match) {
            continue;
        }
        if let Some(t) = key_type_of_blob(&blob)
            && !types.contains(&t)
        {
            types.push(t);
        }
    }
    types
}

/// The algorithm name at the head of an SSH public-key blob (a u32 length, then the name).
pub(crate) fn key_type_of_blob(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4 + len)?;
    std::str::from_utf8(name).ok().map(str::to_string)
}

/// Host-key algorithms that prove possession of a key of the given type. An RSA key may be
/// presented with SHA-2 signatures, which is what current servers prefer.
pub(crate) fn host_key_algorithms(key_type: &str) -> Vec<&'static str> {
    match key_type {
        "ssh-ed25519" => vec!["ssh-ed25519"],
        "ecdsa-sha2-nistp256" => vec!["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => vec!["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => vec!["ecdsa-sha2-nistp521"],
        "ssh-rsa" => vec!["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        _ => vec![],
    }
}

/// `SHA256:<base64>` as `ssh-keygen -l` prints it, so an operator can compare by eye.
pub(crate) fn fingerprint(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// Quotes `s` as one POSIX shell word.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `Path` view of a remote path, for the SFTP calls.
pub(crate) fn rpath(p: &str) -> &Path {
    Path::new(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_metacharacters() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("$(rm -rf /);`x`"), "'$(rm -rf /);`x`'");
    }

    #[test]
    fn key_type_is_read_from_the_blob() {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        assert_eq!(key_type_of_blob(&blob).as_deref(), Some("ssh-ed25519"));
        assert_eq!(key_type_of_blob(&[0, 0, 0, 50, b'x']), None);
        assert_eq!(key_type_of_blob(&[]), None);
    }

    #[test]
    fn rsa_keys_offer_sha2_signatures_first() {
        assert_eq!(host_key_algorithms("ssh-rsa")[0], "rsa-sha2-512");
        assert!(host_key_algorithms("ssh-ed25519-cert-v01@openssh.com").is_empty());
    }
}
