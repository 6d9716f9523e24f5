//! An IDToken's claims, read without its signature (the bastion does not hold the signing key:
//! the daemons check it), and compared with what was asked: `kid` the signing key, `iss` the
//! trust domain, `sub` the identity, `scope` the `-authz` levels, and an `exp` that matches the
//! lifetime. Pure: the clock is passed in.
//!
//! Must never show the token, or any part of it but the claims named here, in an error.

use base64::Engine;
use serde::Deserialize;

use crate::inventory::IdTokenSpec;
use crate::secret::{Fingerprint, Secret};

/// How far `exp` may be from `now + lifetime`: the minting host's clock may differ a little.
pub const EXP_SLACK_SECS: i64 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimsError {
    #[error("it is not a JWT (three base64url parts)")]
    NotJwt,
    #[error("its {part} is not base64url-encoded JSON")]
    Undecodable { part: &'static str },
    #[error("header alg is {found:?}, HTCondor signs IDTokens with HS256")]
    Alg { found: Option<String> },
    #[error("claim {claim} is {found:?}, {expected:?} was asked for")]
    Differs { claim: &'static str, found: Option<String>, expected: Option<String> },
    #[error("it has no exp: a token that never expires is not delivered")]
    NoExp,
    #[error("claim {claim} is missing")]
    Missing { claim: &'static str },
    #[error("exp {exp} does not match the lifetime asked for ({lifetime} s from {now}, ±{EXP_SLACK_SECS} s)")]
    Lifetime { exp: i64, now: i64, lifetime: u64 },
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    iss: Option<String>,
    sub: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
    jti: Option<String>,
    scope: Option<String>,
}

/// What the bastion records of a checked IDToken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTokenClaims {
    pub jti: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub kid: String,
    pub iss: String,
    pub fingerprint: Fingerprint,
}

fn decode<T: for<'de> Deserialize<'de>>(part: &str, name: &'static str) -> Result<T, ClaimsError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| ClaimsError::Undecodable { part: name })?;
    serde_json::from_slice(&bytes).map_err(|_| ClaimsError::Undecodable { part: name })
}

fn same(claim: &'static str, found: &Option<String>, expected: &str) -> Result<(), ClaimsError> {
    if found.as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(ClaimsError::Differs { claim, found: found.clone(), expected: Some(expected.to_string()) })
    }
}

/// The token's claims if they are what `spec` asked for at `now`.
pub fn check(token: &Secret, spec: &IdTokenSpec, now: i64) -> Result<IdTokenClaims, ClaimsError> {
    let parts: Vec<&str> = token.expose().split('.').collect();
    let [header, payload, signature] = parts.as_slice() else { return Err(ClaimsError::NotJwt) };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(ClaimsError::NotJwt);
    }
    let h: Header = decode(header, "header")?;
    let p: Payload = decode(payload, "payload")?;
    if h.alg.as_deref() != Some("HS256") {
        return Err(ClaimsError::Alg { found: h.alg });
    }
    same("kid", &h.kid, &spec.key)?;
    same("iss", &p.iss, &spec.issuer)?;
    same("sub", &p.sub, &spec.identity)?;
    // HTCondor writes one `condor:/<level>` per -authz; the order carries no meaning.
    let mut found: Vec<&str> = p.scope.as_deref().map(|s| s.split_whitespace().collect()).unwrap_or_default();
    let wanted = spec.scope();
    let mut expected: Vec<&str> = wanted.as_deref().map(|s| s.split_whitespace().collect()).unwrap_or_default();
    found.sort_unstable();
    expected.sort_unstable();
    if found != expected || p.scope.is_some() != wanted.is_some() {
        return Err(ClaimsError::Differs { claim: "scope", found: p.scope, expected: wanted });
    }
    let exp = p.exp.ok_or(ClaimsError::NoExp)?;
    let lifetime = spec.lifetime.as_secs();
    if (exp - now - i64::try_from(lifetime).unwrap_or(i64::MAX)).abs() > EXP_SLACK_SECS {
        return Err(ClaimsError::Lifetime { exp, now, lifetime });
    }
    let jti = p.jti.filter(|j| !j.is_empty()).ok_or(ClaimsError::Missing { claim: "jti" })?;
    let iat = p.iat.ok_or(ClaimsError::Missing { claim: "iat" })?;
    Ok(IdTokenClaims {
        fingerprint: Fingerprint::of(token, Some(jti.clone()), Some(exp)),
        jti,
        sub: p.sub.unwrap_or_default(),
        iat,
        exp,
        kid: h.kid.unwrap_or_default(),
        iss: p.iss.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn spec() -> IdTokenSpec {
        IdTokenSpec { lifetime: Duration::from_secs(86400), ..crate::idtoken::tests::spec() }
    }

    fn b64(v: serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: serde_json::Value, payload: serde_json::Value) -> Secret {
        Secret::new(format!("{}.{}.c2ln", b64(header), b64(payload)))
    }

    fn good_payload() -> serde_json::Value {
        serde_json::json!({"iss": "cms.example", "sub": "cmst1@cms", "iat": NOW, "exp": NOW + 86400, "jti": "abc", "scope": "condor:/READ condor:/WRITE"})
    }

    fn check_with(edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value), expected: Result<(), ClaimsError>) {
        let mut h = serde_json::json!({"alg": "HS256", "kid": "WMAGENT"});
        let mut p = good_payload();
        edit(&mut h, &mut p);
        assert_eq!(check(&token(h, p), &spec(), NOW).map(|_| ()), expected);
    }

    #[test]
    fn what_was_asked_passes() {
        check_with(|_, _| {}, Ok(()));
        let c = check(&token(serde_json::json!({"alg": "HS256", "kid": "WMAGENT"}), good_payload()), &spec(), NOW).unwrap();
        assert_eq!((c.jti.as_str(), c.sub.as_str(), c.iat, c.exp), ("abc", "cmst1@cms", NOW, NOW + 86400));
    }

    #[test]
    fn scope_order_does_not_matter() {
        check_with(|_, p| p["scope"] = "condor:/WRITE condor:/READ".into(), Ok(()));
    }

    #[test]
    fn each_differing_claim_is_refused() {
        let differs = |claim, found: &str, expected: &str| Err(ClaimsError::Differs { claim, found: Some(found.into()), expected: Some(expected.into()) });
        check_with(|_, p| p["sub"] = "other@cms".into(), differs("sub", "other@cms", "cmst1@cms"));
        check_with(|_, p| p["iss"] = "elsewhere".into(), differs("iss", "elsewhere", "cms.example"));
        check_with(|h, _| h["kid"] = "POOL".into(), differs("kid", "POOL", "WMAGENT"));
        check_with(|_, p| p["scope"] = "condor:/READ".into(), differs("scope", "condor:/READ", "condor:/READ condor:/WRITE"));
        check_with(|_, p| p["scope"] = "condor:/READ condor:/WRITE condor:/ADMINISTRATOR".into(), differs("scope", "condor:/READ condor:/WRITE condor:/ADMINISTRATOR", "condor:/READ condor:/WRITE"));
        check_with(|h, _| h["alg"] = "none".into(), Err(ClaimsError::Alg { found: Some("none".into()) }));
    }

    #[test]
    fn a_token_without_exp_or_with_another_lifetime_is_refused() {
        check_with(|_, p| p.as_object_mut().unwrap().remove("exp").map(|_| ()).unwrap_or(()), Err(ClaimsError::NoExp));
        check_with(|_, p| p["exp"] = (NOW + 365 * 86400).into(), Err(ClaimsError::Lifetime { exp: NOW + 365 * 86400, now: NOW, lifetime: 86400 }));
    }

    #[test]
    fn a_missing_scope_is_refused_when_levels_were_asked() {
        check_with(|_, p| p.as_object_mut().unwrap().remove("scope").map(|_| ()).unwrap_or(()), Err(ClaimsError::Differs { claim: "scope", found: None, expected: Some("condor:/READ condor:/WRITE".into()) }));
    }

    #[test]
    fn errors_never_show_the_token() {
        let t = token(serde_json::json!({"alg": "HS256", "kid": "POOL"}), good_payload());
        let e = check(&t, &spec(), NOW).unwrap_err().to_string();
        assert!(!e.contains(t.expose()) && !e.contains(t.expose().split('.').nth(2).unwrap()));
        assert_eq!(check(&Secret::new("garbage"), &spec(), NOW), Err(ClaimsError::NotJwt));
    }
}
