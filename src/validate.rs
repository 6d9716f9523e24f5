//! Validation of a WLCG access token against an issuer's keys and a service's expectations.
//!
//! Owns what "a good token" means under the WLCG Common JWT profile v1.x: signature by a key of
//! the expected issuer (RS256 or ES256 only), the required claims, the remaining lifetime, the
//! audience and least-privilege scopes. Pure: no IO and no clock of its own — the caller passes
//! the keys and the current time, and on a `kid` it has no key for it answers
//! [`ValidationError::UnknownKid`] so that the caller can refetch keys and ask again.
//! It must never put a token, or any part of one, into an error, a log line or a panic.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::scopes::{Scope, ScopeError, ScopeViolation, check_least_privilege, parse_scope_list};
use crate::secret::{Fingerprint, Secret};

/// The audience by which a token says it is meant for every relying party.
pub const ANY_AUDIENCE: &str = "https://wlcg.cern.ch/jwt/v1/any";

/// An issuer's public signing keys (its JWKS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    set: JwkSet,
    skipped: usize,
}

impl KeySet {
    pub fn new(set: JwkSet) -> Self {
        KeySet { set, skipped: 0 }
    }

    /// Parses a JWKS document. A key that is not a readable JWK is skipped rather than failing
    /// the whole set: one odd key beside an issuer's signing keys must not make every token
    /// unverifiable. (Keys of unknown types are kept; they simply verify nothing.)
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = serde_json::from_slice(bytes)?;
        let total = raw.keys.len();
        let keys: Vec<Jwk> = raw.keys.into_iter().filter_map(|k| serde_json::from_value(k).ok()).collect();
        let skipped = total - keys.len();
        Ok(KeySet { set: JwkSet { keys }, skipped })
    }

    /// The key with this `kid`, if the issuer publishes one.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.set.find(kid)
    }

    /// The `kid`s of all keys held, for messages about key rotation.
    pub fn kids(&self) -> Vec<&str> {
        self.set.keys.iter().filter_map(|k| k.common.key_id.as_deref()).collect()
    }

    pub fn len(&self) -> usize {
        self.set.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.keys.is_empty()
    }

    /// How many published keys could not be read and were left out.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    pub fn jwk_set(&self) -> &JwkSet {
        &self.set
    }
}

impl From<JwkSet> for KeySet {
    fn from(set: JwkSet) -> Self {
        KeySet::new(set)
    }
}

/// What a service expects of its access token.
#[derive(Clone, Debug)]
pub struct Expectation<'a> {
    /// The issuer's `iss` URL, compared exactly.
    pub issuer: &'a str,
    /// The audience the service asked for; `None` accepts any `aud`.
    pub audience: Option<&'a str>,
    /// The least remaining lifetime a token must have to be worth delivering.
    pub min_lifetime: Duration,
    /// Scopes the token must grant.
    pub required: &'a [Scope],
    /// Scopes the token may grant at most (capability scopes only are checked).
    pub allowed: &'a [Scope],
    /// Tolerated clock skew for `nbf` and `iat`.
    pub leeway: Duration,
}

/// Header and issuer of a token, read without verifying anything: only good for choosing which
/// issuer's keys to verify it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unverified {
    pub iss: String,
    pub kid: Option<String>,
    pub alg: String,
}

/// A token that passed every check, described by its claims (never by its text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedToken {
    pub fingerprint: Fingerprint,
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub scopes: Vec<Scope>,
    pub wlcg_ver: String,
}

/// Why a token is refused. Variants name claims, values, key ids and times; never the token.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("token is not a signed JWT: {reason}")]
    Malformed { reason: &'static str },
    #[error("token signed with algorithm {alg}; only RS256 and ES256 are accepted")]
    UnsupportedAlgorithm { alg: String },
    #[error("token header marks {names:?} critical, which is not understood")]
    UnsupportedCritical { names: Vec<String> },
    #[error("token header has no kid, so no issuer key can be chosen")]
    MissingKid,
    #[error("issuer publishes no key with kid {kid:?}")]
    UnknownKid { kid: String },
    #[error("issuer key {kid:?} cannot verify {alg}: {reason}")]
    KeyMismatch { kid: String, alg: String, reason: String },
    #[error("signature does not verify with issuer key {kid:?}")]
    BadSignature { kid: String },
    #[error("token issued by {found}, expected {expected}")]
    WrongIssuer { expected: String, found: String },
    #[error("token lacks the required claim {claim}")]
    MissingClaim { claim: &'static str },
    #[error("token claim {claim} is malformed: {reason}")]
    InvalidClaim { claim: &'static str, reason: &'static str },
    #[error("token has wlcg.ver {version:?}; only major version 1 is understood")]
    UnsupportedVersion { version: String },
    #[error("token expired at {} (now {})", utc(.exp), utc(.now))]
    Expired { exp: i64, now: i64 },
    #[error("token expires at {} with {remaining_secs} s left, less than the required {min_secs} s", utc(.exp))]
    TooShortLived { exp: i64, remaining_secs: i64, min_secs: i64 },
    #[error("token not valid before {} (now {})", utc(.nbf), utc(.now))]
    NotYetValid { nbf: i64, now: i64 },
    #[error("token issued in the future at {} (now {})", utc(.iat), utc(.now))]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("token audience {found:?} does not include {expected}")]
    WrongAudience { expected: String, found: Vec<String> },
    #[error("token audience {found:?} includes {ANY_AUDIENCE}, wider than the expected {expected}")]
    AnyAudience { expected: String, found: Vec<String> },
    #[error("token scope claim: {0}")]
    BadScope(#[source] ScopeError),
    #[error("token scopes fail least privilege: {}", describe_violations(.0))]
    ScopeViolations(Vec<ScopeViolation>),
}

fn utc(ts: &i64) -> String {
    match chrono::DateTime::from_timestamp(*ts, 0) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => ts.to_string(),
    }
}

fn describe_violations(v: &[ScopeViolation]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Base64url as JWS writes it; padding tolerated since it carries no meaning.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A decoded JOSE header or claim set.
type JsonObject = Map<String, Value>;

/// The two encoded parts before the signature, decoded to JSON objects.
fn split_json(token: &Secret) -> Result<(JsonObject, JsonObject), ValidationError> {
    let mut parts = token.expose().split('.');
    let (Some(header), Some(payload), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ValidationError::Malformed { reason: "not three dot-separated parts" });
    };
    let decode = |part: &str, what: &'static str| -> Result<Map<String, Value>, ValidationError> {
        let bytes = B64.decode(part).map_err(|_| ValidationError::Malformed { reason: what })?;
        serde_json::from_slice(&bytes).map_err(|_| ValidationError::Malformed { reason: what })
    };
    Ok((
        decode(header, "header is not base64url-encoded JSON object")?,
        decode(payload, "payload is not base64url-encoded JSON object")?,
    ))
}

fn string_claim(claims: &Map<String, Value>, claim: &'static str) -> Result<String, ValidationError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Err(ValidationError::MissingClaim { claim }),
        Some(Value::String(s)) if s.is_empty() => Err(ValidationError::InvalidClaim { claim, reason: "empty string" }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ValidationError::InvalidClaim { claim, reason: "not a string" }),
    }
}

/// A NumericDate: seconds since the epoch, fractions allowed by RFC 7519 and dropped here.
fn time_claim(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, ValidationError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                _ => Err(ValidationError::InvalidClaim { claim, reason: "time out of range" }),
            }
        }
        Some(_) => Err(ValidationError::InvalidClaim { claim, reason: "not a number" }),
    }
}

fn required_time(claims: &Map<String, Value>, claim: &'static str) -> Result<i64, ValidationError> {
    time_claim(claims, claim)?.ok_or(ValidationError::MissingClaim { claim })
}

fn audience_claim(claims: &Map<String, Value>) -> Result<Vec<String>, ValidationError> {
    const CLAIM: &str = "aud";
    let aud: Vec<String> = match claims.get(CLAIM) {
        None | Some(Value::Null) => return Err(ValidationError::MissingClaim { claim: CLAIM }),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or(ValidationError::InvalidClaim { claim: CLAIM, reason: "array holds a non-string" })?,
        Some(_) => return Err(ValidationError::InvalidClaim { claim: CLAIM, reason: "neither a string nor an array" }),
    };
    if aud.is_empty() || aud.iter().any(String::is_empty) {
        return Err(ValidationError::InvalidClaim { claim: CLAIM, reason: "empty audience" });
    }
    Ok(aud)
}

/// `wlcg.ver` is `<major>.<minor>`: a newer minor version only adds, a new major may change
/// meaning, so only major 1 is accepted.
fn check_version(version: &str) -> Result<(), ValidationError> {
    let ok = match version.split_once('.') {
        Some((major, minor)) => major == "1" && !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    };
    if ok { Ok(()) } else { Err(ValidationError::UnsupportedVersion { version: version.to_owned() }) }
}

/// Reads the header and `iss` of a token without verifying anything, to choose the issuer whose
/// keys will verify it.
pub fn peek(token: &Secret) -> Result<Unverified, ValidationError> {
    let (header, claims) = split_json(token)?;
    read_unverified(&header, &claims)
}

fn read_unverified(header: &JsonObject, claims: &JsonObject) -> Result<Unverified, ValidationError> {
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(ValidationError::Malformed { reason: "header has no alg" }),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(ValidationError::Malformed { reason: "header kid is not a string" }),
    };
    let iss = string_claim(claims, "iss")?;
    Ok(Unverified { iss, kid, alg })
}

fn accepted_algorithm(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

/// A JWK usable for `alg`: right key type (and curve), and not published for another purpose or
/// algorithm — refusing a mismatch closes the door on algorithm confusion.
fn decoding_key(jwk: &Jwk, kid: &str, alg: Algorithm, alg_name: &str) -> Result<DecodingKey, ValidationError> {
    let mismatch = |reason: String| ValidationError::KeyMismatch { kid: kid.to_owned(), alg: alg_name.to_owned(), reason };
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err(mismatch("key is not published for signatures".into()));
    }
    if let Some(key_alg) = jwk.common.key_algorithm
        && key_alg != KeyAlgorithm::from(alg)
    {
        return Err(mismatch(format!("key is published for {key_alg}")));
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => {}
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) if p.curve == EllipticCurve::P256 => {}
        (AlgorithmParameters::EllipticCurve(p), _) => return Err(mismatch(format!("key is an EC key on {:?}", p.curve))),
        _ => return Err(mismatch("key type does not match the algorithm".into())),
    }
    DecodingKey::from_jwk(jwk).map_err(|e| mismatch(format!("unusable key: {e}")))
}

/// Verifies `token` with `keys` and checks it against `expect` at time `now_unix`.
///
/// Order matters for the caller: the algorithm and issuer are checked before the key lookup, so
/// [`ValidationError::UnknownKid`] means "a token of the expected issuer, signed with a key not
/// in this set" and is worth one key refetch.
pub fn validate(token: &Secret, keys: &KeySet, expect: &Expectation, now_unix: i64) -> Result<ValidatedToken, ValidationError> {
    let (header, unverified_claims) = split_json(token)?;
    let unverified = read_unverified(&header, &unverified_claims)?;
    let alg = accepted_algorithm(&unverified.alg)
        .ok_or_else(|| ValidationError::UnsupportedAlgorithm { alg: unverified.alg.clone() })?;
    // RFC 7515: a header parameter marked critical that is not understood makes the JWS invalid.
    if let Some(crit) = header.get("crit") {
        let names = match crit {
            Value::Array(items) => items.iter().map(|v| v.as_str().unwrap_or("?").to_owned()).collect(),
            _ => vec!["?".to_owned()],
        };
        return Err(ValidationError::UnsupportedCritical { names });
    }
    if unverified.iss != expect.issuer {
        return Err(ValidationError::WrongIssuer { expected: expect.issuer.to_owned(), found: unverified.iss });
    }
    let kid = unverified.kid.ok_or(ValidationError::MissingKid)?;
    let jwk = keys.find(&kid).ok_or_else(|| ValidationError::UnknownKid { kid: kid.clone() })?;
    let key = decoding_key(jwk, &kid, alg, &unverified.alg)?;

    // The library checks the signature and algorithm only; every claim is checked below against
    // the injected clock, because the library's own time checks read the wall clock.
    let mut validation = Validation::new(alg);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<Map<String, Value>>(token.expose(), &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind as K;
            return Err(match e.kind() {
                K::InvalidSignature => ValidationError::BadSignature { kid },
                K::InvalidAlgorithm | K::InvalidKeyFormat | K::InvalidRsaKey(_) | K::InvalidEcdsaKey => {
                    ValidationError::KeyMismatch { kid, alg: unverified.alg, reason: "key rejected by the verifier".into() }
                }
                // Anything else is a shape problem in the token; its details could quote it.
                _ => ValidationError::Malformed { reason: "token could not be decoded" },
            });
        }
    };
    check_claims(token, &claims, expect, now_unix)
}

fn check_claims(token: &Secret, claims: &Map<String, Value>, expect: &Expectation, now: i64) -> Result<ValidatedToken, ValidationError> {
    let wlcg_ver = string_claim(claims, "wlcg.ver")?;
    let iss = string_claim(claims, "iss")?;
    let sub = string_claim(claims, "sub")?;
    let aud = audience_claim(claims)?;
    let exp = required_time(claims, "exp")?;
    let iat = required_time(claims, "iat")?;
    let jti = string_claim(claims, "jti")?;
    let nbf = time_claim(claims, "nbf")?;
    check_version(&wlcg_ver)?;

    if iss != expect.issuer {
        return Err(ValidationError::WrongIssuer { expected: expect.issuer.to_owned(), found: iss });
    }

    let leeway = secs(expect.leeway);
    // No leeway on expiry: what matters is how long the token will still work where it is
    // delivered, not whether it was valid a moment ago.
    if exp <= now {
        return Err(ValidationError::Expired { exp, now });
    }
    let min_secs = secs(expect.min_lifetime);
    if exp - now < min_secs {
        return Err(ValidationError::TooShortLived { exp, remaining_secs: exp - now, min_secs });
    }
    if let Some(nbf) = nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(ValidationError::NotYetValid { nbf, now });
    }
    if iat > now.saturating_add(leeway) {
        return Err(ValidationError::IssuedInFuture { iat, now });
    }

    if let Some(expected) = expect.audience {
        // A token for any relying party can be replayed anywhere: wider than a service that asked
        // for a specific audience should hold.
        if expected != ANY_AUDIENCE && aud.iter().any(|a| a == ANY_AUDIENCE) {
            return Err(ValidationError::AnyAudience { expected: expected.to_owned(), found: aud });
        }
        if !aud.iter().any(|a| a == expected) {
            return Err(ValidationError::WrongAudience { expected: expected.to_owned(), found: aud });
        }
    }

    let scopes = match claims.get("scope") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => parse_scope_list(s).map_err(ValidationError::BadScope)?,
        Some(_) => return Err(ValidationError::InvalidClaim { claim: "scope", reason: "not a string" }),
    };
    check_least_privilege(&scopes, expect.required, expect.allowed).map_err(ValidationError::ScopeViolations)?;

    Ok(ValidatedToken {
        fingerprint: Fingerprint::of(token, Some(jti.clone()), Some(exp)),
        iss,
        sub,
        aud,
        exp,
        iat,
        jti,
        scopes,
        wlcg_ver,
    })
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Signing keys and token minting for tests of this module and of key discovery: real RSA and
/// EC keys made by the `openssl` CLI once per test process.
#[cfg(test)]
pub(crate) mod testkit {
    use std::process::Command;
    use std::sync::OnceLock;

    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::Value;

    use crate::secret::Secret;

    pub struct TestKey {
        pub kid: String,
        pub alg: Algorithm,
        pub encoding: EncodingKey,
        pub jwk: Jwk,
    }

    fn genpkey(args: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("key.pem");
        let status = Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .arg("-out")
            .arg(&out)
            .status()
            .expect("openssl CLI runs");
        assert!(status.success(), "openssl genpkey {args:?} failed");
        std::fs::read(&out).expect("read generated key")
    }

    fn make(kid: &str, alg: Algorithm) -> TestKey {
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&genpkey(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&genpkey(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])),
            other => panic!("no test key for {other:?}"),
        }
        .expect("generated key loads");
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK from key");
        jwk.common.key_id = Some(kid.to_owned());
        TestKey { kid: kid.to_owned(), alg, encoding, jwk }
    }

    /// Two RSA keys and one EC key, shared by all tests (key generation is slow).
    pub fn keys() -> &'static [TestKey; 3] {
        static KEYS: OnceLock<[TestKey; 3]> = OnceLock::new();
        KEYS.get_or_init(|| [make("rsa-1", Algorithm::RS256), make("rsa-2", Algorithm::RS256), make("ec-1", Algorithm::ES256)])
    }

    pub fn rsa() -> &'static TestKey {
        &keys()[0]
    }
    pub fn rsa_other() -> &'static TestKey {
        &keys()[1]
    }
    pub fn ec() -> &'static TestKey {
        &keys()[2]
    }

    pub fn jwks(keys: &[&TestKey]) -> JwkSet {
        JwkSet { keys: keys.iter().map(|k| k.jwk.clone()).collect() }
    }

    /// Signs `claims` with `key`, naming `kid` in the header.
    pub fn sign_as(key: &TestKey, kid: &str, claims: &Value) -> Secret {
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.to_owned());
        Secret::new(jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign test token"))
    }

    pub fn sign(key: &TestKey, claims: &Value) -> Secret {
        sign_as(key, &key.kid, claims)
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{TestKey, ec, jwks, rsa, rsa_other, sign, sign_as};
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://cms-auth.web.cern.ch/";
    const AUD: &str = "https://cmsweb.cern.ch";
    const NOW: i64 = 1_800_000_000;

    fn scopes(text: &str) -> Vec<Scope> {
        parse_scope_list(text).expect("fixture scopes parse")
    }

    fn claims() -> Value {
        json!({
            "wlcg.ver": "1.0",
            "iss": ISS,
            "sub": "a1b2c3d4-0000-4000-8000-000000000001",
            "aud": AUD,
            "exp": NOW + 3600,
            "iat": NOW - 60,
            "nbf": NOW - 60,
            "jti": "6f1e0c2a-5b3d-4e8f-9a7b-1c2d3e4f5a6b",
            "scope": "openid storage.read:/store storage.create:/store/unmerged compute.create",
        })
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().expect("claims object").remove(key);
        base
    }

    /// One case: token signed by `key` with `claims`, validated against the RSA and EC keys,
    /// expecting audience `aud`; `expected` is `Ok(())` or a predicate on the error's text-free
    /// shape.
    fn check(key: &TestKey, claims: Value, aud: Option<&str>, expected: Result<(), fn(&ValidationError) -> bool>) {
        let token = sign(key, &claims);
        check_token(&token, aud, expected, &claims);
    }

    fn check_token(token: &Secret, aud: Option<&str>, expected: Result<(), fn(&ValidationError) -> bool>, claims: &Value) {
        let required = scopes("storage.read:/store/mc storage.create:/store/unmerged compute.create");
        let allowed = scopes("storage.read:/store storage.create:/store/unmerged compute.create");
        let expect = Expectation {
            issuer: ISS,
            audience: aud,
            min_lifetime: Duration::from_secs(15 * 60),
            required: &required,
            allowed: &allowed,
            leeway: Duration::from_secs(60),
        };
        let keyset = KeySet::new(jwks(&[rsa(), ec()]));
        let result = validate(token, &keyset, &expect, NOW);
        match (&result, expected) {
            (Ok(v), Ok(())) => {
                assert_eq!(v.jti, claims["jti"].as_str().unwrap());
                assert_eq!(v.exp, claims["exp"].as_i64().unwrap());
                assert_eq!(v.fingerprint, Fingerprint::of(token, Some(v.jti.clone()), Some(v.exp)));
            }
            (Err(e), Err(pred)) => {
                assert!(pred(e), "unexpected error: {e}");
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains(token.expose()), "error shows the token");
                for part in token.expose().split('.') {
                    assert!(!shown.contains(part), "error shows part of the token: {shown}");
                }
            }
            (r, _) => panic!("unexpected result {r:?} for claims {claims}"),
        }
    }

    #[test]
    fn good_tokens() {
        check(rsa(), claims(), Some(AUD), Ok(()));
        check(ec(), claims(), Some(AUD), Ok(()));
        check(rsa(), with(claims(), "aud", json!(["other", AUD])), Some(AUD), Ok(()));
        check(rsa(), without(claims(), "nbf"), Some(AUD), Ok(()));
        check(rsa(), with(claims(), "wlcg.ver", json!("1.2")), Some(AUD), Ok(()));
        check(rsa(), with(claims(), "exp", json!(NOW + 15 * 60)), Some(AUD), Ok(()));
        check(rsa(), with(claims(), "nbf", json!(NOW + 60)), Some(AUD), Ok(()));
        check(rsa(), with(claims(), "aud", json!(ANY_AUDIENCE)), None, Ok(()));
        check(rsa(), with(claims(), "aud", json!(ANY_AUDIENCE)), Some(ANY_AUDIENCE), Ok(()));
    }

    #[test]
    fn the_validated_token_carries_the_claims() {
        let token = sign(ec(), &claims());
        let required = scopes("compute.create");
        let allowed = scopes("storage.read:/store storage.create:/store/unmerged compute.create");
        let expect = Expectation { issuer: ISS, audience: Some(AUD), min_lifetime: Duration::from_secs(900), required: &required, allowed: &allowed, leeway: Duration::ZERO };
        let v = validate(&token, &KeySet::new(jwks(&[ec()])), &expect, NOW).expect("valid");
        assert_eq!(v.iss, ISS);
        assert_eq!(v.sub, "a1b2c3d4-0000-4000-8000-000000000001");
        assert_eq!(v.aud, vec![AUD.to_owned()]);
        assert_eq!(v.iat, NOW - 60);
        assert_eq!(v.wlcg_ver, "1.0");
        assert_eq!(v.scopes, scopes("openid storage.read:/store storage.create:/store/unmerged compute.create"));
        assert!(!format!("{v:?}").contains(token.expose()));
    }

    #[test]
    fn signature_and_keys() {
        use ValidationError as E;
        // Signed by a key the issuer does not publish, under a kid it does publish.
        check_token(&sign_as(rsa_other(), &rsa().kid, &claims()), Some(AUD), Err(|e| matches!(e, E::BadSignature { kid } if kid == "rsa-1")), &claims());
        check(rsa_other(), claims(), Some(AUD), Err(|e| matches!(e, E::UnknownKid { kid } if kid == "rsa-2")));
        // An EC signature under the RSA key's kid: refused on the key, not tried.
        check_token(&sign_as(ec(), &rsa().kid, &claims()), Some(AUD), Err(|e| matches!(e, E::KeyMismatch { kid, .. } if kid == "rsa-1")), &claims());
        // A payload altered after signing.
        let good = sign(rsa(), &claims()).expose().to_owned();
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(serde_json::to_vec(&with(claims(), "sub", json!("someone-else"))).unwrap());
        check_token(&Secret::new(parts.join(".")), Some(AUD), Err(|e| matches!(e, E::BadSignature { .. })), &claims());
    }

    #[test]
    fn refused_algorithms() {
        fn forged(alg: &str, with_signature: &str) -> Secret {
            let header = B64.encode(serde_json::to_vec(&json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"})).unwrap());
            let payload = B64.encode(serde_json::to_vec(&claims()).unwrap());
            Secret::new(format!("{header}.{payload}.{with_signature}"))
        }
        let is = |name: &'static str| move |e: &ValidationError| matches!(e, ValidationError::UnsupportedAlgorithm { alg } if alg == name);
        for (alg, sig) in [("none", ""), ("HS256", "c2ln"), ("RS384", "c2ln"), ("PS256", "c2ln"), ("EdDSA", "c2ln")] {
            let token = forged(alg, sig);
            let err = validate(&token, &KeySet::new(jwks(&[rsa()])), &expectation_for_any(), NOW).expect_err(alg);
            assert!(is(alg)(&err), "{alg}: {err}");
        }
    }

    fn expectation_for_any() -> Expectation<'static> {
        Expectation { issuer: ISS, audience: None, min_lifetime: Duration::ZERO, required: &[], allowed: &[], leeway: Duration::ZERO }
    }

    #[test]
    fn critical_headers_are_refused() {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        header.crit = Some(vec!["exp".into()]);
        let token = Secret::new(jsonwebtoken::encode(&header, &claims(), &rsa().encoding).unwrap());
        let err = validate(&token, &KeySet::new(jwks(&[rsa()])), &expectation_for_any(), NOW).expect_err("crit");
        assert!(matches!(err, ValidationError::UnsupportedCritical { ref names } if names == &["exp"]), "{err}");
    }

    #[test]
    fn missing_kid() {
        let token = Secret::new(jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::RS256), &claims(), &rsa().encoding).unwrap());
        let err = validate(&token, &KeySet::new(jwks(&[rsa()])), &expectation_for_any(), NOW).expect_err("no kid");
        assert!(matches!(err, ValidationError::MissingKid), "{err}");
    }

    #[test]
    fn issuer() {
        use ValidationError as E;
        check(rsa(), with(claims(), "iss", json!("https://cms-auth.web.cern.ch")), Some(AUD), Err(|e| matches!(e, E::WrongIssuer { found, .. } if found == "https://cms-auth.web.cern.ch")));
        check(rsa(), with(claims(), "iss", json!("https://evil.example/")), Some(AUD), Err(|e| matches!(e, E::WrongIssuer { expected, .. } if expected == ISS)));
    }

    #[test]
    fn lifetimes() {
        use ValidationError as E;
        check(rsa(), with(claims(), "exp", json!(NOW - 1)), Some(AUD), Err(|e| matches!(e, E::Expired { exp, now: NOW } if *exp == NOW - 1)));
        check(rsa(), with(claims(), "exp", json!(NOW)), Some(AUD), Err(|e| matches!(e, E::Expired { .. })));
        check(rsa(), with(claims(), "exp", json!(NOW + 15 * 60 - 1)), Some(AUD), Err(|e| matches!(e, E::TooShortLived { remaining_secs: 899, min_secs: 900, .. })));
        check(rsa(), with(claims(), "nbf", json!(NOW + 61)), Some(AUD), Err(|e| matches!(e, E::NotYetValid { nbf, .. } if *nbf == NOW + 61)));
        check(rsa(), with(claims(), "iat", json!(NOW + 61)), Some(AUD), Err(|e| matches!(e, E::IssuedInFuture { .. })));
        check(rsa(), with(claims(), "exp", json!("soon")), Some(AUD), Err(|e| matches!(e, E::InvalidClaim { claim: "exp", .. })));
    }

    #[test]
    fn required_claims() {
        for claim in ["wlcg.ver", "iss", "sub", "aud", "exp", "iat", "jti"] {
            let token = sign(rsa(), &without(claims(), claim));
            let err = validate(&token, &KeySet::new(jwks(&[rsa()])), &expectation_for_any(), NOW).expect_err(claim);
            assert!(matches!(err, ValidationError::MissingClaim { claim: c } if c == claim), "{claim}: {err}");
            assert!(err.to_string().contains(claim));
        }
    }

    #[test]
    fn versions() {
        use ValidationError as E;
        for bad in ["2.0", "0.9", "1", "1.", "1.x", "v1.0", "10.0", "garbage", ""] {
            let token = sign(rsa(), &with(claims(), "wlcg.ver", json!(bad)));
            let err = validate(&token, &KeySet::new(jwks(&[rsa()])), &expectation_for_any(), NOW).expect_err(bad);
            assert!(matches!(&err, E::UnsupportedVersion { version } if version == bad) || (bad.is_empty() && matches!(err, E::InvalidClaim { claim: "wlcg.ver", .. })), "{bad:?}: {err}");
        }
        check(rsa(), with(claims(), "wlcg.ver", json!(1.0)), Some(AUD), Err(|e| matches!(e, E::InvalidClaim { claim: "wlcg.ver", .. })));
    }

    #[test]
    fn audiences() {
        use ValidationError as E;
        check(rsa(), with(claims(), "aud", json!("https://other.example")), Some(AUD), Err(|e| matches!(e, E::WrongAudience { expected, found } if expected == AUD && found == &["https://other.example"])));
        check(rsa(), with(claims(), "aud", json!([])), Some(AUD), Err(|e| matches!(e, E::InvalidClaim { claim: "aud", .. })));
        check(rsa(), with(claims(), "aud", json!([AUD, 7])), Some(AUD), Err(|e| matches!(e, E::InvalidClaim { claim: "aud", .. })));
        // The any-audience is wider than a specific audience, even beside it.
        check(rsa(), with(claims(), "aud", json!(ANY_AUDIENCE)), Some(AUD), Err(|e| matches!(e, E::AnyAudience { expected, .. } if expected == AUD)));
        check(rsa(), with(claims(), "aud", json!([AUD, ANY_AUDIENCE])), Some(AUD), Err(|e| matches!(e, E::AnyAudience { .. })));
        // Asking for the any-audience needs exactly that.
        check(rsa(), claims(), Some(ANY_AUDIENCE), Err(|e| matches!(e, E::WrongAudience { expected, .. } if expected == ANY_AUDIENCE)));
    }

    #[test]
    fn scope_claims() {
        use ValidationError as E;
        check(rsa(), with(claims(), "scope", json!("openid storage.read:/store compute.create")), Some(AUD), Err(|e| {
            matches!(e, E::ScopeViolations(v) if v == &[ScopeViolation::Missing { required: "storage.create:/store/unmerged".parse().unwrap() }])
        }));
        check(rsa(), with(claims(), "scope", json!("storage.read:/ storage.create:/store/unmerged compute.create")), Some(AUD), Err(|e| {
            matches!(e, E::ScopeViolations(v) if v.len() == 1 && matches!(&v[0], ScopeViolation::TooWide { granted, .. } if granted.to_string() == "storage.read:/"))
        }));
        check(rsa(), with(claims(), "scope", json!("storage.read:/store storage.create:/store/unmerged compute.create compute.cancel")), Some(AUD), Err(|e| {
            matches!(e, E::ScopeViolations(v) if matches!(v.as_slice(), [ScopeViolation::TooWide { granted: Scope::Compute(crate::scopes::ComputeOp::Cancel), .. }]))
        }));
        check(rsa(), without(claims(), "scope"), Some(AUD), Err(|e| matches!(e, E::ScopeViolations(v) if v.len() == 3)));
        check(rsa(), with(claims(), "scope", json!("storage.read")), Some(AUD), Err(|e| matches!(e, E::BadScope(ScopeError::MissingPath { .. }))));
        check(rsa(), with(claims(), "scope", json!(["openid"])), Some(AUD), Err(|e| matches!(e, E::InvalidClaim { claim: "scope", .. })));
    }

    #[test]
    fn peek_reads_without_verifying() {
        let token = sign_as(rsa_other(), "kid-x", &claims());
        assert_eq!(peek(&token).unwrap(), Unverified { iss: ISS.into(), kid: Some("kid-x".into()), alg: "RS256".into() });
        let none = Secret::new(format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(serde_json::to_vec(&claims()).unwrap())
        ));
        assert_eq!(peek(&none).unwrap(), Unverified { iss: ISS.into(), kid: None, alg: "none".into() });
        for garbage in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.bm90IGpzb24.c2ln"] {
            let err = peek(&Secret::new(garbage)).expect_err(garbage);
            assert!(matches!(err, ValidationError::Malformed { .. }), "{garbage:?}: {err}");
        }
        let no_iss = sign(rsa(), &without(claims(), "iss"));
        assert!(matches!(peek(&no_iss), Err(ValidationError::MissingClaim { claim: "iss" })));
    }

    #[test]
    fn key_sets_from_json() {
        let mut doc = serde_json::to_value(jwks(&[rsa(), ec()])).unwrap();
        doc["keys"].as_array_mut().unwrap().push(json!({"kty": "RSA", "kid": 7}));
        doc["keys"].as_array_mut().unwrap().push(json!({"kty": "OKP", "crv": "X448", "kid": "w"}));
        let set = KeySet::from_json(&serde_json::to_vec(&doc).unwrap()).expect("parses");
        // A key of a type this library does not know is held (and can verify nothing); one that
        // is not even a JWK is left out.
        assert_eq!(set.kids(), vec!["rsa-1", "ec-1", "w"]);
        assert_eq!(set.skipped(), 1);
        assert!(set.find("ec-1").is_some());
        assert!(KeySet::from_json(b"{\"nokeys\":[]}").is_err());
        assert!(KeySet::from_json(b"not json").is_err());
    }

    #[test]
    fn keys_published_for_other_uses_are_refused() {
        let mut jwk = rsa().jwk.clone();
        jwk.common.public_key_use = Some(PublicKeyUse::Encryption);
        let keys = KeySet::new(JwkSet { keys: vec![jwk] });
        let err = validate(&sign(rsa(), &claims()), &keys, &expectation_for_any(), NOW).expect_err("enc key");
        assert!(matches!(err, ValidationError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn errors_show_times_as_utc() {
        let e = ValidationError::Expired { exp: 1_700_000_000, now: 1_700_000_060 };
        assert_eq!(e.to_string(), "token expired at 2023-11-14T22:13:20Z (now 2023-11-14T22:14:20Z)");
    }
}
