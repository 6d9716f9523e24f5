//! Kerberos through GSSAPI (the system's MIT krb5): the SPNEGO token a `Negotiate` login to the
//! broker presents.
//!
//! Owns: getting a service's initiator credentials from *its* keytab into *its* credential cache
//! (MIT's `gss_acquire_cred_from` with a credential store of `client_keytab` and `ccache`), and
//! the first SPNEGO token for the service principal `host@<host>`. Services log in concurrently
//! inside one process, so each call names its keytab and cache explicitly; MIT fetches a TGT with
//! the keytab when the cache holds none (or an expired one) and keeps it there for the next login.
//!
//! It must never read or set process-wide Kerberos settings (`KRB5CCNAME`, `KRB5_CLIENT_KTNAME`,
//! the default cache): one service would then log in with another's tickets. It never puts key
//! material, ticket bytes or the SPNEGO token in an error, a log line or `Debug` output (the token
//! is a [`Secret`]: a captured one can be replayed for a few minutes). GSSAPI blocks on the KDC,
//! so [`negotiate`] runs it on a blocking thread. It knows nothing of Vault or HTTP.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;

use base64::Engine;
use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::credential::Cred;
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};
use libgssapi_sys as sys;

use crate::secret::Secret;

/// Whose credentials to use and where to keep them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// `user@REALM` or `service/host@REALM`.
    pub principal: String,
    /// Keytab holding the principal's keys.
    pub keytab: PathBuf,
    /// The service's own credential cache (a `FILE:` cache at this path).
    pub ccache: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum KerberosError {
    #[error("Kerberos principal `{principal}`: cannot read keytab {}: {source}", keytab.display())]
    Keytab { principal: String, keytab: PathBuf, #[source] source: std::io::Error },
    #[error("Kerberos credential cache {}: {reason}", path.display())]
    Ccache { path: PathBuf, reason: String },
    #[error("`{name}` is not a usable Kerberos name: {reason}")]
    BadName { name: String, reason: String },
    /// The keytab does not hold the principal, the KDC does not know it, or the keys are stale.
    #[error("Kerberos principal `{principal}` with keytab {}: no credentials (does the keytab hold the principal's current keys, and does the KDC know it?): {reason}", keytab.display())]
    Credentials { principal: String, keytab: PathBuf, reason: String },
    #[error("Kerberos principal `{principal}` (keytab {}): no service ticket for `{spn}`: {reason}", keytab.display())]
    ServiceTicket { principal: String, keytab: PathBuf, spn: String, reason: String },
    #[error("Kerberos principal `{principal}`: no answer from GSSAPI within {after:?} (is the KDC reachable?)")]
    Timeout { principal: String, after: std::time::Duration },
    #[error("the Kerberos worker thread failed: {0}")]
    Worker(String),
}

/// The `host@<host>` GSSAPI service name Vault's Kerberos login expects (`host/<host>@REALM`).
pub fn service_name(host: &str) -> String {
    format!("host@{host}")
}

/// The base64 SPNEGO token to send as `Authorization: Negotiate <token>` to `host`, with
/// `identity`'s credentials. Bounded by `timeout` (MIT's own KDC timeouts can be much longer);
/// a worker that overruns is left to finish on its blocking thread.
pub async fn negotiate(identity: &ClientIdentity, host: &str, timeout: std::time::Duration) -> Result<Secret, KerberosError> {
    let id = identity.clone();
    let spn = service_name(host);
    let work = tokio::task::spawn_blocking(move || negotiate_blocking(&id, &spn));
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Err(KerberosError::Timeout { principal: identity.principal.clone(), after: timeout }),
        Ok(Err(join)) => Err(KerberosError::Worker(join.to_string())),
        Ok(Ok(result)) => result,
    }
}

/// The blocking part of [`negotiate`]. GSSAPI error texts are read on this thread: MIT keeps the
/// detailed message of the last failure per thread.
fn negotiate_blocking(id: &ClientIdentity, spn: &str) -> Result<Secret, KerberosError> {
    // MIT reports a missing or unreadable keytab as a bare "no credentials"; say what it is.
    std::fs::File::open(&id.keytab)
        .map_err(|source| KerberosError::Keytab { principal: id.principal.clone(), keytab: id.keytab.clone(), source })?;
    prepare_ccache_dir(&id.ccache)?;
    let cred = acquire_from(id)?;
    let target = Name::new(spn.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
        .map_err(|e| KerberosError::BadName { name: spn.to_string(), reason: e.to_string() })?;
    // No mutual authentication: Vault's login answers in JSON and sends no token back.
    let mut ctx = ClientCtx::new(Some(cred), target, CtxFlags::empty(), Some(GSS_MECH_SPNEGO));
    let token = ctx.step(None, None).map_err(|e| KerberosError::ServiceTicket {
        principal: id.principal.clone(),
        keytab: id.keytab.clone(),
        spn: spn.to_string(),
        reason: e.to_string(),
    })?;
    match token {
        Some(buf) if !buf.is_empty() => Ok(Secret::new(base64::engine::general_purpose::STANDARD.encode(&*buf))),
        _ => Err(KerberosError::ServiceTicket {
            principal: id.principal.clone(),
            keytab: id.keytab.clone(),
            spn: spn.to_string(),
            reason: "GSSAPI produced no token".into(),
        }),
    }
}

/// The cache's directory is created private (0700): it will hold the service's TGT.
fn prepare_ccache_dir(ccache: &Path) -> Result<(), KerberosError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |reason: String| KerberosError::Ccache { path: ccache.to_path_buf(), reason };
    if !ccache.is_absolute() {
        return Err(err("must be an absolute path".into()));
    }
    let Some(dir) = ccache.parent() else { return Err(err("has no parent directory".into())) };
    if !dir.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn c_string(what: &str, value: &str) -> Result<CString, KerberosError> {
    CString::new(value).map_err(|_| KerberosError::BadName { name: value.replace('\0', "\\0"), reason: format!("{what} holds a NUL byte") })
}

/// An imported GSSAPI name, released on drop. (`libgssapi::name::Name` does not hand out its raw
/// handle, which `gss_acquire_cred_from` needs.)
struct RawName(sys::gss_name_t);

impl Drop for RawName {
    fn drop(&mut self) {
        let mut minor = 0;
        // SAFETY: the handle came from gss_import_name and is released exactly once.
        unsafe { sys::gss_release_name(&mut minor, &mut self.0) };
    }
}

/// MIT's minor status "Principal in credential cache does not match desired name" (the first code
/// of its `k5g` error table; the header defining it is not installed by `libkrb5-dev`).
const KG_CCACHE_NOMATCH: sys::OM_uint32 = 0x025e_a100;

/// The service's credentials. A cache left by an earlier principal (the inventory changed it)
/// makes MIT refuse the new one; the cache is the service's own, so it is emptied and the
/// credentials fetched anew with the keytab.
fn acquire_from(id: &ClientIdentity) -> Result<Cred, KerberosError> {
    let fail = |(major, minor)| KerberosError::Credentials { principal: id.principal.clone(), keytab: id.keytab.clone(), reason: gss_status(major, minor) };
    match acquire_once(id)? {
        Ok(cred) => Ok(cred),
        Err((_, KG_CCACHE_NOMATCH)) => {
            tracing::debug!(ccache = %id.ccache.display(), principal = %id.principal, "credential cache held another principal; starting it afresh");
            std::fs::remove_file(&id.ccache)
                .map_err(|e| KerberosError::Ccache { path: id.ccache.clone(), reason: format!("holds another principal and cannot be removed: {e}") })?;
            acquire_once(id)?.map_err(fail)
        }
        Err(status) => Err(fail(status)),
    }
}

/// One `gss_acquire_cred_from(principal, {client_keytab, ccache})` for initiating only; a GSSAPI
/// failure comes back as its (major, minor) status, read on this thread.
fn acquire_once(id: &ClientIdentity) -> Result<Result<Cred, (sys::OM_uint32, sys::OM_uint32)>, KerberosError> {
    let principal = c_string("the principal", &id.principal)?;
    let keytab = c_string("the keytab path", &format!("FILE:{}", id.keytab.display()))?;
    let ccache = c_string("the ccache path", &format!("FILE:{}", id.ccache.display()))?;

    let mut name_buf = sys::gss_buffer_desc { length: id.principal.len(), value: principal.as_ptr() as *mut _ };
    let mut minor: sys::OM_uint32 = 0;
    let mut name = RawName(ptr::null_mut());
    // SAFETY: the buffer points into `principal`, alive for the call; GSS_C_NT_USER_NAME is a
    // static OID exported by the library and only read; `name.0` is an out pointer.
    let major = unsafe { sys::gss_import_name(&mut minor, &mut name_buf, sys::GSS_C_NT_USER_NAME, &mut name.0) };
    if major != sys::GSS_S_COMPLETE {
        return Err(KerberosError::BadName { name: id.principal.clone(), reason: gss_status(major, minor) });
    }

    let client_keytab = c"client_keytab";
    let ccache_key = c"ccache";
    let mut elements = [
        sys::gss_key_value_element_desc { key: client_keytab.as_ptr(), value: keytab.as_ptr() },
        sys::gss_key_value_element_desc { key: ccache_key.as_ptr(), value: ccache.as_ptr() },
    ];
    let store = sys::gss_key_value_set_desc { count: elements.len() as sys::OM_uint32, elements: elements.as_mut_ptr() };
    let mut cred: sys::gss_cred_id_t = ptr::null_mut();
    // SAFETY: every pointer refers to a local that outlives the call; the desired mechs, actual
    // mechs and time-received out parameters may be null; `cred` is an out pointer whose
    // ownership passes to `Cred` below.
    let major = unsafe {
        sys::gss_acquire_cred_from(
            &mut minor,
            name.0,
            sys::_GSS_C_INDEFINITE,
            ptr::null_mut(),
            sys::GSS_C_INITIATE as sys::gss_cred_usage_t,
            &store,
            &mut cred,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if major != sys::GSS_S_COMPLETE {
        return Ok(Err((major, minor)));
    }
    // SAFETY: a fresh handle from a successful call, owned by nothing else.
    Ok(Ok(unsafe { Cred::from_c(cred) }))
}

/// MIT's own words for a failed call (major and minor status), as libgssapi renders them.
fn gss_status(major: sys::OM_uint32, minor: sys::OM_uint32) -> String {
    let e = libgssapi::error::Error { major: libgssapi::error::MajorFlags::from_bits_retain(major), minor };
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path, keytab: &str) -> ClientIdentity {
        ClientIdentity { principal: "svc@EXAMPLE.TEST".into(), keytab: dir.join(keytab), ccache: dir.join("cc").join("svc") }
    }

    #[test]
    fn service_name_is_host_based() {
        assert_eq!(service_name("htvault.cern.ch"), "host@htvault.cern.ch");
    }

    #[test]
    fn a_missing_keytab_is_named_with_the_principal() {
        let dir = tempfile::tempdir().unwrap();
        let e = negotiate_blocking(&identity(dir.path(), "nope.keytab"), "host@vault.example").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("svc@EXAMPLE.TEST") && shown.contains("nope.keytab"), "{shown}");
        assert!(matches!(e, KerberosError::Keytab { .. }));
    }

    #[test]
    fn a_relative_ccache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"").unwrap();
        let mut id = identity(dir.path(), "k");
        id.ccache = PathBuf::from("krb5cc/svc");
        let e = negotiate_blocking(&id, "host@vault.example").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn a_keytab_without_the_principal_fails_naming_both() {
        // An empty file is not a keytab MIT can use: the failure is GSSAPI's, reported with the
        // principal and the keytab path, and the cache directory is created private.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.keytab"), b"").unwrap();
        let id = identity(dir.path(), "empty.keytab");
        let e = negotiate_blocking(&id, "host@vault.example").unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("Kerberos principal `svc@EXAMPLE.TEST`"), "{shown}");
        assert!(shown.contains("empty.keytab"), "{shown}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("cc")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
