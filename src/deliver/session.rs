//! One authenticated SSH session to one host: TCP connect with a deadline, strict host-key
//! check against the configured known_hosts, public-key login, and the two channels the rest of
//! the module needs (SFTP for bytes, exec for the few things SFTP cannot do).
//!
//! Must never accept a host key that known_hosts does not hold for that host, never fall back to
//! password or keyboard-interactive login, and never put file content on a command line.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use ssh2::{ErrorCode, FileStat, MethodType, Session, Sftp};

use super::knownhosts::{KnownHosts, Verdict};
use super::pipe::{Broken, FX_OK, FX_OP_UNSUPPORTED, Pipe, RenameStatus, status_text};
use super::{DeliverError, HostTarget};

/// Remote command output (a host's account and group entries, its settings, error text) is
/// read up to this much: thousands of `getent` lines fit; a runaway command must not fill memory.
const MAX_EXEC_OUTPUT: u64 = 1024 * 1024;

pub(crate) struct Remote {
    pub host: String,
    session: Session,
    /// Always `Some` until drop, which closes it before saying goodbye to the server.
    sftp: Option<Sftp>,
    /// The second SFTP channel ([`Pipe`]): many requests at a time, and
    /// `posix-rename@openssh.com`. Started at first use; `Err` once it could not be started or
    /// broke.
    pipe: RefCell<Option<Result<Pipe, ()>>>,
    /// Set once a request went unanswered or the connection broke: nothing more is sent, and
    /// what is left to clean up waits for the next connection.
    dead: Cell<bool>,
}

/// How a rename over [`Remote::rename`] ended.
pub(crate) enum Renamed {
    Done,
    /// The server lacks `posix-rename@openssh.com`: the caller falls back to `mv -f`.
    Unsupported,
    Refused(String),
    /// Sent, no answer read: the session is now dead.
    Unknown(String),
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

        let text = std::fs::read_to_string(&target.known_hosts).map_err(|source| DeliverError::KnownHostsUnreadable {
            host: host.clone(),
            path: target.known_hosts.clone(),
            source,
        })?;
        let known = KnownHosts::parse(&text);

        // Offer only the key types known_hosts holds for this host: otherwise the server may pick
        // a type we hold no key for, and a perfectly good host would look like a mismatch.
        let known_types = known.key_types(&target.address, target.port);
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
        let (address, port, known_hosts) = (target.address.clone(), target.port, target.known_hosts.clone());
        match known.check(&target.address, target.port, key) {
            Verdict::Match => {}
            Verdict::Revoked => return Err(DeliverError::HostKeyRevoked { host, address, port, fingerprint, known_hosts }),
            Verdict::Mismatch => return Err(DeliverError::HostKeyMismatch { host, address, port, fingerprint, known_hosts }),
            Verdict::CertAuthorityOnly => {
                return Err(DeliverError::HostKeyCertificateOnly { host, address, port, known_hosts });
            }
            Verdict::NotFound => return Err(DeliverError::HostKeyUnknown { host, address, port, fingerprint, known_hosts }),
        }

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
        Ok(Remote { host, session, sftp: Some(sftp), pipe: RefCell::new(None), dead: Cell::new(false) })
    }

    /// The SFTP channel, or an error once the session is dead (no request is sent over it).
    pub fn sftp(&self) -> Result<&Sftp, ssh2::Error> {
        if self.dead.get() {
            return Err(ssh2::Error::new(ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_SOCKET_DISCONNECT), "the connection was lost earlier in this session"));
        }
        Ok(self.sftp.as_ref().expect("open until drop"))
    }

    pub fn alive(&self) -> bool {
        !self.dead.get()
    }

    /// Looks at a failed request: an error that is not an SFTP status from the server (timeout,
    /// broken connection) means the session cannot be trusted with another request.
    pub fn note(&self, e: &ssh2::Error) {
        if is_fatal(e) {
            self.dead.set(true);
        }
    }

    /// Like [`note`](Self::note) for an error that came through `std::io` (writes), where
    /// the code is lost: the session's own last error tells.
    pub fn note_io(&self) {
        if let Some(e) = ssh2::Error::last_session_error(&self.session)
            && is_fatal(&e)
        {
            self.dead.set(true);
        }
    }

    pub fn lstat(&self, path: &str) -> Result<FileStat, ssh2::Error> {
        let r = self.sftp()?.lstat(rpath(path));
        if let Err(e) = &r {
            self.note(e);
        }
        r
    }

    /// [`lstat`](Self::lstat), with "no such file" as `None`.
    pub fn lstat_opt(&self, path: &str) -> Result<Option<FileStat>, ssh2::Error> {
        match self.lstat(path) {
            Ok(st) => Ok(Some(st)),
            Err(e) if super::credmon::is_no_such_file(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts the [`Pipe`] if it was not tried yet; `None` if it cannot be had.
    fn pipe<'a>(&self, slot: &'a mut Option<Result<Pipe, ()>>) -> Option<&'a mut Pipe> {
        if self.dead.get() {
            return None;
        }
        if slot.is_none() {
            *slot = Some(Pipe::start(&self.session).map_err(|Broken(e)| {
                self.note_io();
                if !self.dead.get() {
                    tracing::warn!(host = %self.host, error = %e, "cannot start a second SFTP channel; one request at a time");
                }
            }));
        }
        slot.as_mut().and_then(|p| p.as_mut().ok())
    }

    /// Runs `f` on the [`Pipe`]. `None` when there is none (the server refused a second
    /// channel) or it broke during `f` (then it is not used again): the caller does the same
    /// with one request at a time.
    pub fn pipelined<R>(&self, f: impl FnOnce(&mut Pipe) -> Result<R, Broken>) -> Option<R> {
        let mut slot = self.pipe.borrow_mut();
        let pipe = self.pipe(&mut slot)?;
        match f(pipe) {
            Ok(r) => Some(r),
            Err(Broken(e)) => {
                self.note_io();
                tracing::warn!(host = %self.host, error = %e, "the second SFTP channel broke; one request at a time");
                *slot = Some(Err(()));
                None
            }
        }
    }

    /// [`pipelined`](Self::pipelined) for `n` requests of a kind: worth the second channel for
    /// more than one, or for one once the channel runs. `None` otherwise, as when there is none.
    pub fn pipelined_for<R>(&self, n: usize, f: impl FnOnce(&mut Pipe) -> Result<R, Broken>) -> Option<R> {
        if n > 1 || self.has_pipe() { self.pipelined(f) } else { None }
    }

    /// Whether the [`Pipe`] is running: then even one request goes through it.
    pub fn has_pipe(&self) -> bool {
        matches!(*self.pipe.borrow(), Some(Ok(_)))
    }

    /// Starts the channel renames go through, so that it is ready before the first temp file
    /// is written. A failure here is found again (and reported) by [`rename`](Self::rename).
    pub fn prepare_rename(&self) {
        self.pipe(&mut self.pipe.borrow_mut());
    }

    /// Atomically replaces `to` by `from` with `posix-rename@openssh.com`.
    pub fn rename(&self, from: &str, to: &str) -> Renamed {
        if self.dead.get() {
            return Renamed::Refused("the connection was lost earlier in this session".into());
        }
        let mut slot = self.pipe.borrow_mut();
        let Some(pipe) = self.pipe(&mut slot) else { return Renamed::Unsupported };
        match pipe.posix_rename(from, to) {
            Ok(RenameStatus::Status(FX_OK)) => Renamed::Done,
            Ok(RenameStatus::Unsupported | RenameStatus::Status(FX_OP_UNSUPPORTED)) => Renamed::Unsupported,
            Ok(RenameStatus::Status(code)) => Renamed::Refused(status_text(code)),
            Err(Broken(message)) => {
                self.dead.set(true);
                *slot = Some(Err(()));
                Renamed::Unknown(message)
            }
        }
    }

    /// Every rename at once on the [`Pipe`] ([`Pipe::rename_each`]). `None` when nothing was
    /// sent: no second channel, or a server without `posix-rename@openssh.com`. When the channel
    /// broke, the renames without an answer may have happened, and the session is dead.
    pub fn rename_each(&self, renames: &[(&str, &str, bool)]) -> Option<Vec<Option<u32>>> {
        self.each_with_effect("renames", |pipe| pipe.can_posix_rename().then(|| pipe.rename_each(renames)))
    }

    /// Every mkdir at once on the [`Pipe`] ([`Pipe::mkdir_each`]). `None` when nothing was sent:
    /// no second channel, or a single directory and the channel not running yet. When the
    /// channel broke, the mkdirs without an answer may have happened, and the session is dead.
    pub fn mkdir_each(&self, dirs: &[(&str, u32)]) -> Option<Vec<Option<u32>>> {
        if dirs.len() <= 1 && !self.has_pipe() {
            return None;
        }
        self.each_with_effect("directories to create", |pipe| Some(pipe.mkdir_each(dirs)))
    }

    /// Runs requests that change the server on the [`Pipe`] (`None` from `f`: nothing sent). A
    /// request without an answer may have been carried out, so a broken channel gives up the
    /// session: nothing after it could be told apart from what it did.
    fn each_with_effect(&self, what: &str, f: impl FnOnce(&mut Pipe) -> Option<(Vec<Option<u32>>, Option<Broken>)>) -> Option<Vec<Option<u32>>> {
        let mut slot = self.pipe.borrow_mut();
        let pipe = self.pipe(&mut slot)?;
        let (statuses, broken) = f(pipe)?;
        if let Some(Broken(e)) = broken {
            tracing::warn!(host = %self.host, error = %e, "{what} sent and not all answered; the connection is given up");
            self.dead.set(true);
            *slot = Some(Err(()));
        }
        Some(statuses)
    }

    /// Renames `from` to `to` only if nothing is at `to`: the plain SFTP v3 rename, which
    /// OpenSSH's sftp-server carries out with `link(2)` and so never replaces a file.
    pub fn rename_no_replace(&self, from: &str, to: &str) -> Result<(), ssh2::Error> {
        let r = self.sftp()?.rename(rpath(from), rpath(to), None);
        if let Err(e) = &r {
            self.note(e);
        }
        r
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
        if self.dead.get() {
            return Err(fail("the connection was lost earlier in this session".into()));
        }
        let fail = |e: ssh2::Error| {
            self.note(&e);
            fail(e.to_string())
        };
        let mut channel = match self.session.channel_session() {
            Ok(channel) => channel,
            // The server allows fewer channels at once than this session keeps open (sshd's
            // `MaxSessions`): the second SFTP channel gives its place up for good.
            Err(e) if !is_fatal(&e) && self.has_pipe() => {
                tracing::warn!(host = %self.host, error = %e, "the server refused another channel; closing the second SFTP channel");
                self.pipe.borrow_mut().replace(Err(()));
                // sshd frees the place once that channel's sftp-server has exited, a moment
                // after the close.
                let mut waited = 0;
                loop {
                    match self.session.channel_session() {
                        Ok(channel) => break channel,
                        Err(e) if !is_fatal(&e) && waited < 10 => {
                            waited += 1;
                            std::thread::sleep(std::time::Duration::from_millis(20 * waited));
                        }
                        Err(e) => return Err(fail(e)),
                    }
                }
            }
            Err(e) => return Err(fail(e)),
        };
        channel.exec(&format!("sh -c {}", sh_quote(script))).map_err(fail)?;
        // The commands run here print a few lines at most, far below the channel window, so
        // reading stdout to the end before stderr cannot stall the remote side.
        let mut stdout = Vec::new();
        let io_fail = |e: std::io::Error| {
            self.note_io();
            DeliverError::Exec { host: self.host.clone(), purpose: purpose.to_string(), detail: e.to_string() }
        };
        (&mut channel).take(MAX_EXEC_OUTPUT).read_to_end(&mut stdout).map_err(io_fail)?;
        let mut stderr = Vec::new();
        channel.stderr().take(MAX_EXEC_OUTPUT).read_to_end(&mut stderr).map_err(io_fail)?;
        channel.wait_close().map_err(fail)?;
        let status = channel.exit_status().map_err(fail)?;
        Ok(ExecOutput {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.pipe.get_mut().take();
        self.sftp = None;
        if !self.dead.get() {
            let _ = self.session.disconnect(None, "token-bastion done", None);
        }
    }
}

/// Errors after which the session is not to be used again: no answer within the timeout, or the
/// connection or channel broke. An SFTP status (the server answered) is not one.
fn is_fatal(e: &ssh2::Error) -> bool {
    use libssh2_sys as raw;
    /// `LIBSSH2_ERROR_SOCKET_NONE`, which libssh2-sys does not name.
    const SOCKET_NONE: i32 = -1;
    matches!(
        e.code(),
        ErrorCode::Session(
            raw::LIBSSH2_ERROR_TIMEOUT
                | raw::LIBSSH2_ERROR_SOCKET_SEND
                | raw::LIBSSH2_ERROR_SOCKET_RECV
                | raw::LIBSSH2_ERROR_SOCKET_DISCONNECT
                | raw::LIBSSH2_ERROR_SOCKET_TIMEOUT
                | raw::LIBSSH2_ERROR_CHANNEL_CLOSED
                | raw::LIBSSH2_ERROR_CHANNEL_EOF_SENT
                | raw::LIBSSH2_ERROR_BAD_SOCKET
                | SOCKET_NONE
        )
    )
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
            Ok(tcp) => {
                // Each SFTP request is a small packet answered before the next is sent: without
                // NODELAY, Nagle's algorithm and delayed ACKs add tens of ms to every round trip.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
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
