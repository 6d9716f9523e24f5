//! Secret material and how it may be shown.
//!
//! Owns the [`Secret`] newtype that every token, password and passphrase travels in, and the
//! [`Fingerprint`] by which a token is identified in logs, state and mail. A `Secret` prints as
//! `[redacted]` in both `Debug` and `Display` and has no `Serialize`; the only way to its bytes is
//! [`Secret::expose`], which is meant to be easy to grep for. Every `Secret` registers its value
//! with [`crate::redact`] while it lives, so that the sinks scrub it from whatever text carries
//! it; copies share one registration.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A secret string: Vault token, JWT, secret_id, SMTP password, key passphrase.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<Registered>);

/// The value, registered with [`crate::redact`] from creation until the last copy drops.
#[derive(PartialEq, Eq)]
struct Registered(String);

impl Drop for Registered {
    fn drop(&mut self) {
        crate::redact::release(&self.0);
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::redact::register(&value);
        Secret(Arc::new(Registered(value)))
    }

    /// The secret's text. Every call site is a place where secret bytes leave the process or
    /// are handed to a library that sends them: keep them few.
    pub fn expose(&self) -> &str {
        &self.0.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.0.is_empty()
    }

    /// First 12 hex digits of the SHA-256 of the secret: enough to tell two tokens apart in a
    /// log, useless for recovering either.
    pub fn short_hash(&self) -> String {
        short_hash_bytes(self.0.0.as_bytes())
    }
}

/// [`Secret::short_hash`] of raw bytes (a file read back from a host), so that what was
/// delivered and what is found can be compared by hash alone.
pub fn short_hash_bytes(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How a token is named wherever it must be named: JWT id, expiry and a short hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// `jti` of a JWT; `None` for Vault tokens, which have none.
    pub jti: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<i64>,
    /// [`Secret::short_hash`] of the token.
    pub hash: String,
}

impl Fingerprint {
    pub fn of(secret: &Secret, jti: Option<String>, exp: Option<i64>) -> Self {
        Fingerprint { jti, exp, hash: secret.short_hash() }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(jti) = &self.jti {
            write!(f, "jti={jti} ")?;
        }
        if let Some(exp) = self.exp {
            match chrono::DateTime::from_timestamp(exp, 0) {
                Some(t) => write!(f, "exp={} ", t.format("%Y-%m-%dT%H:%M:%SZ"))?,
                None => write!(f, "exp={exp} ")?,
            }
        }
        write!(f, "sha256={}", self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hvs.CAESIverysecret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "hvs.CAESIverysecret");
    }

    #[test]
    fn fingerprint_names_without_revealing() {
        let s = Secret::new("eyJhbGciOi.payload.sig");
        let fp = Fingerprint::of(&s, Some("abc-123".into()), Some(1_700_000_000));
        let shown = fp.to_string();
        assert_eq!(shown, format!("jti=abc-123 exp=2023-11-14T22:13:20Z sha256={}", s.short_hash()));
        assert!(!shown.contains("payload"));
        assert_eq!(s.short_hash().len(), 12);
        assert_ne!(s.short_hash(), Secret::new("other").short_hash());
    }
}
