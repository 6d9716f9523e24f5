//! OpenSSH's `posix-rename@openssh.com` SFTP extension: rename(2) on the server, which replaces
//! an existing target atomically (plain SFTP v3 rename refuses to). The ssh2 crate does not bind
//! it, but the libssh2 that `libssh2-sys` builds implements `libssh2_sftp_posix_rename_ex`.
//! ssh2 keeps its own SFTP pointer private, so this module starts a second SFTP channel on the
//! same session with `libssh2_sftp_init` and uses it only for this one request.
//!
//! The only `unsafe` code of the delivery. Soundness rests on: every libssh2 call is made while
//! holding the session's lock (`Session::raw()`), exactly as the ssh2 crate does; the SFTP
//! pointer is non-null, owned by [`PosixRename`], and shut down (under the lock) before the
//! `Session` handle it keeps alive can free the session; the path buffers outlive the call.
//!
//! Must never be used for anything but the rename, and never be called again on a session
//! whose previous request went unanswered (libssh2 would wait for the old reply).

use std::ptr::NonNull;

use libssh2_sys as raw;
use ssh2::Session;

unsafe extern "C" {
    // Declared in libssh2_sftp.h of the bundled libssh2 (1.11); not declared by libssh2-sys 0.3.
    fn libssh2_sftp_posix_rename_ex(
        sftp: *mut raw::LIBSSH2_SFTP,
        source_filename: *const std::ffi::c_char,
        source_filename_len: libc_size_t,
        dest_filename: *const std::ffi::c_char,
        dest_filename_len: libc_size_t,
    ) -> std::ffi::c_int;
}

#[allow(non_camel_case_types)]
type libc_size_t = usize;

/// How a rename ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RenameResult {
    Done,
    /// The server does not offer the extension (nothing was sent).
    Unsupported,
    /// The server answered with an SFTP failure status (e.g. the target is a directory): the
    /// rename did not happen.
    Refused { status: u64, message: String },
    /// No answer was read (timeout, connection lost): the rename may or may not have happened,
    /// and the session is not to be used again.
    Unknown { message: String },
}

/// A second SFTP channel on a session, kept for `posix-rename@openssh.com`.
pub(crate) struct PosixRename {
    session: Session,
    sftp: NonNull<raw::LIBSSH2_SFTP>,
}

// SAFETY: the pointer is only ever used while holding the session's mutex (see `call`), which
// is what makes the ssh2 crate's own `Sftp` `Send`.
unsafe impl Send for PosixRename {}

impl PosixRename {
    /// Starts the channel. Blocking, bounded by the session's timeout.
    pub fn start(session: &Session) -> Result<PosixRename, ssh2::Error> {
        let mut guard = session.raw();
        let raw_session: *mut raw::LIBSSH2_SESSION = &mut *guard;
        // SAFETY: `raw_session` is the live session, locked by `guard` for the whole call.
        let sftp = unsafe { raw::libssh2_sftp_init(raw_session) };
        match NonNull::new(sftp) {
            Some(sftp) => Ok(PosixRename { session: session.clone(), sftp }),
            None => Err(ssh2::Error::last_session_error_raw(raw_session).unwrap_or_else(ssh2::Error::unknown)),
        }
    }

    /// rename(2) of `from` to `to` on the server, replacing `to` if it exists (a symbolic link at
    /// `to` is itself replaced, never followed).
    pub fn rename(&self, from: &str, to: &str) -> RenameResult {
        let mut guard = self.session.raw();
        let raw_session: *mut raw::LIBSSH2_SESSION = &mut *guard;
        // SAFETY: the session is locked by `guard`; `self.sftp` was returned non-null by
        // `libssh2_sftp_init` on this session and is freed only in `Drop`; both buffers live
        // until the call returns and their lengths are passed explicitly (no NUL needed).
        let rc = unsafe {
            libssh2_sftp_posix_rename_ex(
                self.sftp.as_ptr(),
                from.as_ptr().cast(),
                from.len(),
                to.as_ptr().cast(),
                to.len(),
            )
        };
        if rc == 0 {
            return RenameResult::Done;
        }
        let message = ssh2::Error::last_session_error_raw(raw_session).map(|e| e.message().to_string()).unwrap_or_default();
        if rc == raw::LIBSSH2_ERROR_SFTP_PROTOCOL {
            // SAFETY: as above.
            let status = unsafe { raw::libssh2_sftp_last_error(self.sftp.as_ptr()) } as u64;
            if status == raw::LIBSSH2_FX_OP_UNSUPPORTED as u64 {
                return RenameResult::Unsupported;
            }
            return RenameResult::Refused { status, message };
        }
        RenameResult::Unknown { message }
    }
}

impl Drop for PosixRename {
    fn drop(&mut self) {
        let _guard = self.session.raw();
        // SAFETY: the session is locked and alive (we hold a handle to it); the pointer is not
        // used after this.
        unsafe {
            raw::libssh2_sftp_shutdown(self.sftp.as_ptr());
        }
    }
}
