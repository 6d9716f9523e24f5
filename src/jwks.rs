//! Issuer key discovery and the key cache, and validation of a token with them.
//!
//! Owns fetching each *configured* issuer's public keys
//! (`<issuer>/.well-known/openid-configuration` → `jwks_uri` → JWKS), keeping them fresh (every
//! 6 h, and on an unknown `kid` at most once a minute per issuer) and riding out an issuer outage
//! on the last good keys for up to 2 days. The keys outlive a cycle: the daemon keeps one cache
//! for its life, and every cache can persist what it fetched to a file in the state directory
//! (0600), so that one-shot runs share the same freshness and the same 2 days of grace. It must
//! never fetch anything for an issuer that is not configured — a token names its own issuer,
//! and that name is untrusted until verified — and never put a token into an error or a log
//! line. Time comes from the caller, so freshness is decided by the same clock as validation.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::http::BodyError;
use crate::secret::Secret;
use crate::validate::{self, Expectation, KeySet, ValidatedToken, ValidationError};

/// Keys older than this are refetched (WLCG profile: refresh public keys every 6 h).
pub const REFRESH_AFTER_SECS: i64 = 6 * 3600;
/// When refreshes fail, keys this old are still used; older ones are not.
pub const KEEP_LAST_GOOD_SECS: i64 = 2 * 24 * 3600;
/// An unknown `kid` triggers at most one refetch per issuer in this interval, so a stream of
/// tokens with a bogus `kid` cannot turn the bastion into a load generator against the issuer.
pub const UNKNOWN_KID_INTERVAL_SECS: i64 = 60;
/// After a failed refresh while last good keys are still usable, wait this long before trying
/// again instead of hitting a failing issuer on every token.
pub const RETRY_AFTER_FAILURE_SECS: i64 = 60;
/// Discovery and JWKS documents are small; anything larger is refused unread.
pub const MAX_DOCUMENT_BYTES: usize = crate::http::MAX_REPLY_BYTES;
/// The file in the state directory that keeps issuer keys between runs.
pub const CACHE_FILE: &str = "jwks.json";

/// A configured issuer: its exact `iss` URL and the HTTPS client to reach it with (built by
/// [`crate::http::client`], trusting only the configured CA).
#[derive(Clone, Debug)]
pub struct IssuerSource {
    pub issuer: String,
    pub client: reqwest::Client,
}

/// Why an issuer's keys could not be had. Every variant names the issuer.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("issuer {issuer} is not configured; its keys are never fetched")]
    NotConfigured { issuer: String },
    #[error("issuer {issuer}: request to {url} failed: {source}")]
    Request { issuer: String, url: String, #[source] source: reqwest::Error },
    #[error("issuer {issuer}: {url} answered HTTP {status}")]
    Status { issuer: String, url: String, status: reqwest::StatusCode },
    #[error("issuer {issuer}: {url} sent more than the {} limit", crate::http::show_bytes(*.limit as u64))]
    TooLarge { issuer: String, url: String, limit: usize },
    #[error("issuer {issuer}: {url}: {reason}")]
    BadDocument { issuer: String, url: String, reason: String },
    #[error("issuer {issuer}: discovery document names issuer {found:?}")]
    IssuerMismatch { issuer: String, found: String },
    #[error("issuer {issuer}: {url} holds no keys")]
    NoKeys { issuer: String, url: String },
    #[error("issuer {issuer}: last good keys from {} are older than 2 days and refreshing failed: {source}", utc(.fetched_at))]
    Stale { issuer: String, fetched_at: i64, #[source] source: Box<JwksError> },
    #[error("issuer {issuer}: keys were already refetched for an unknown kid at {}", utc(.last_refresh))]
    RateLimited { issuer: String, last_refresh: i64 },
}

/// Why [`validate_token`] refused a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Keys(#[from] JwksError),
    #[error("token kid {kid:?} is not among the keys of {issuer}, and they could not be refetched: {source}")]
    KidRefresh { issuer: String, kid: String, #[source] source: JwksError },
}

fn utc(ts: &i64) -> String {
    match chrono::DateTime::from_timestamp(*ts, 0) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => ts.to_string(),
    }
}

#[derive(Debug, Default)]
struct KeyState {
    keys: Option<Arc<KeySet>>,
    /// The JWKS document `keys` came from, as persisted.
    document: Option<serde_json::Value>,
    /// When `keys` were fetched (seconds since the epoch).
    fetched_at: i64,
    last_failure: Option<i64>,
    last_kid_refresh: Option<i64>,
}

/// One issuer's keys as the cache file holds them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PersistedKeys {
    fetched_at: i64,
    jwks: serde_json::Value,
    #[serde(default)]
    last_kid_refresh: Option<i64>,
}

/// The cache file: each issuer's last good keys. Public keys only; kept 0600 all the same,
/// because whoever can write it decides which signatures the bastion accepts.
#[derive(Debug)]
struct Persistence {
    path: PathBuf,
    issuers: std::sync::Mutex<BTreeMap<String, PersistedKeys>>,
}

#[derive(Debug)]
struct IssuerEntry {
    client: reqwest::Client,
    /// Held across a fetch, so that concurrent callers for one issuer wait for a single fetch
    /// and then share its result.
    state: Mutex<KeyState>,
}

/// The keys of every configured issuer. Share it behind an `Arc`; all state is inside.
#[derive(Debug)]
pub struct JwksCache {
    issuers: HashMap<String, IssuerEntry>,
    persistence: Option<Arc<Persistence>>,
}

impl JwksCache {
    pub fn new(issuers: Vec<IssuerSource>) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|s| (s.issuer, IssuerEntry { client: s.client, state: Mutex::new(KeyState::default()) }))
            .collect();
        JwksCache { issuers, persistence: None }
    }

    /// Keeps the keys in `path` too: starts from what it holds for the configured issuers, and
    /// rewrites it (temp file, fsync, rename, mode 0600) whenever keys are fetched. A file that
    /// cannot be read, cannot be parsed, or is open to group or others is ignored (logged): the
    /// cache starts cold.
    pub fn persisted_at(mut self, path: &Path) -> Self {
        let loaded = load_persisted(path).unwrap_or_else(|reason| {
            tracing::warn!(path = %path.display(), reason, "issuer key cache not used; keys are fetched afresh");
            BTreeMap::new()
        });
        for (iss, saved) in &loaded {
            let Some(entry) = self.issuers.get_mut(iss) else { continue };
            match serde_json::to_vec(&saved.jwks).ok().and_then(|b| KeySet::from_json(&b).ok()).filter(|k| !k.is_empty()) {
                Some(keys) => {
                    let state = entry.state.get_mut();
                    state.keys = Some(Arc::new(keys));
                    state.document = Some(saved.jwks.clone());
                    state.fetched_at = saved.fetched_at;
                    state.last_kid_refresh = saved.last_kid_refresh;
                }
                None => tracing::warn!(path = %path.display(), issuer = %iss, "persisted keys unusable; fetched afresh"),
            }
        }
        self.persistence = Some(Arc::new(Persistence { path: path.to_path_buf(), issuers: std::sync::Mutex::new(loaded) }));
        self
    }

    /// Writes one issuer's state to the cache file, on a blocking thread. Failures are logged:
    /// the keys in memory still serve.
    async fn persist(&self, iss: &str, state: &KeyState) {
        let (Some(p), Some(jwks)) = (&self.persistence, &state.document) else { return };
        let saved = PersistedKeys { fetched_at: state.fetched_at, jwks: jwks.clone(), last_kid_refresh: state.last_kid_refresh };
        let (p, iss) = (p.clone(), iss.to_owned());
        let _ = tokio::task::spawn_blocking(move || p.save(iss, saved)).await;
    }

    pub fn is_configured(&self, iss: &str) -> bool {
        self.issuers.contains_key(iss)
    }

    fn entry(&self, iss: &str) -> Result<&IssuerEntry, JwksError> {
        self.issuers.get(iss).ok_or_else(|| JwksError::NotConfigured { issuer: iss.to_owned() })
    }

    /// The keys of issuer `iss`: cached ones while younger than 6 h, else freshly fetched; if the
    /// fetch fails, the last good keys while younger than 2 days.
    pub async fn keys(&self, iss: &str, now_unix: i64) -> Result<Arc<KeySet>, JwksError> {
        let entry = self.entry(iss)?;
        let mut state = entry.state.lock().await;
        if let Some(keys) = &state.keys {
            let age = now_unix - state.fetched_at;
            if age < REFRESH_AFTER_SECS {
                return Ok(keys.clone());
            }
            let failed_recently = state.last_failure.is_some_and(|t| (0..RETRY_AFTER_FAILURE_SECS).contains(&(now_unix - t)));
            if age <= KEEP_LAST_GOOD_SECS && failed_recently {
                return Ok(keys.clone());
            }
        }
        match fetch_keys(iss, &entry.client).await {
            Ok(fetched) => {
                let keys = state.store(fetched, now_unix);
                self.persist(iss, &state).await;
                Ok(keys)
            }
            Err(error) => {
                state.last_failure = Some(now_unix);
                match &state.keys {
                    Some(keys) if now_unix - state.fetched_at <= KEEP_LAST_GOOD_SECS => {
                        tracing::warn!(issuer = iss, %error, fetched_at = %utc(&state.fetched_at), "key refresh failed; using the last good keys");
                        Ok(keys.clone())
                    }
                    Some(_) => Err(JwksError::Stale { issuer: iss.to_owned(), fetched_at: state.fetched_at, source: Box::new(error) }),
                    None => Err(error),
                }
            }
        }
    }

    /// Refetches the keys of `iss` because a token named a `kid` they lack (the issuer may have
    /// rotated its keys). At most once per [`UNKNOWN_KID_INTERVAL_SECS`] per issuer; a failed
    /// attempt counts too, so a failing issuer is not retried on every token.
    pub async fn refresh_for_unknown_kid(&self, iss: &str, now_unix: i64) -> Result<Arc<KeySet>, JwksError> {
        let entry = self.entry(iss)?;
        let mut state = entry.state.lock().await;
        if let Some(last) = state.last_kid_refresh
            && (0..UNKNOWN_KID_INTERVAL_SECS).contains(&(now_unix - last))
        {
            return Err(JwksError::RateLimited { issuer: iss.to_owned(), last_refresh: last });
        }
        state.last_kid_refresh = Some(now_unix);
        let result = match fetch_keys(iss, &entry.client).await {
            Ok(fetched) => Ok(state.store(fetched, now_unix)),
            Err(error) => {
                state.last_failure = Some(now_unix);
                Err(error)
            }
        };
        // The attempt counts against the rate limit of the next run too.
        self.persist(iss, &state).await;
        result
    }
}

impl KeyState {
    fn store(&mut self, (keys, document): (KeySet, serde_json::Value), now_unix: i64) -> Arc<KeySet> {
        let keys = Arc::new(keys);
        self.keys = Some(keys.clone());
        self.document = Some(document);
        self.fetched_at = now_unix;
        self.last_failure = None;
        keys
    }
}

/// The cache file's issuers; `Ok(empty)` when there is none yet.
fn load_persisted(path: &Path) -> Result<BTreeMap<String, PersistedKeys>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("mode {mode:04o} lets others read or change which keys are trusted"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a key cache: {e}"))
}

impl Persistence {
    fn save(&self, iss: String, saved: PersistedKeys) {
        let mut issuers = self.issuers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        issuers.insert(iss, saved);
        if let Err(e) = write_private(&self.path, &serde_json::to_vec_pretty(&*issuers).unwrap_or_default()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot persist issuer keys; the next run fetches them afresh");
        }
    }
}

/// Writes `bytes` to `path` atomically with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("jwks");
    let temp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Validates `token` with the keys of its issuer: refuses an issuer other than the expected one,
/// or one not configured, before anything is fetched; on an unknown `kid` refetches the keys once
/// (rate-limited) and validates again.
pub async fn validate_token(cache: &JwksCache, token: &Secret, expect: &Expectation<'_>, now_unix: i64) -> Result<ValidatedToken, TokenError> {
    let unverified = validate::peek(token)?;
    if unverified.iss != expect.issuer {
        return Err(ValidationError::WrongIssuer { expected: expect.issuer.to_owned(), found: unverified.iss }.into());
    }
    let iss = unverified.iss;
    let keys = cache.keys(&iss, now_unix).await?;
    match validate::validate(token, &keys, expect, now_unix) {
        Err(ValidationError::UnknownKid { kid }) => {
            let keys = cache
                .refresh_for_unknown_kid(&iss, now_unix)
                .await
                .map_err(|source| TokenError::KidRefresh { issuer: iss.clone(), kid, source })?;
            Ok(validate::validate(token, &keys, expect, now_unix)?)
        }
        other => Ok(other?),
    }
}

/// Discovery then JWKS: the keys and the document they came from. The transport rules (HTTPS
/// only, trusted CA, timeouts, no redirects) are the client's; a `jwks_uri` the client may not
/// reach fails there.
async fn fetch_keys(issuer: &str, client: &reqwest::Client) -> Result<(KeySet, serde_json::Value), JwksError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: Option<String>,
        jwks_uri: Option<String>,
    }
    let discovery_url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let body = get(issuer, client, &discovery_url).await?;
    let bad = |url: &str, reason: String| JwksError::BadDocument { issuer: issuer.to_owned(), url: url.to_owned(), reason };
    let doc: Discovery = serde_json::from_slice(&body).map_err(|e| bad(&discovery_url, format!("not a discovery document: {e}")))?;
    // OpenID Connect Discovery 1.0 §4.3: the document must name exactly the issuer it was
    // fetched for; anything else means the configuration points at the wrong place.
    match doc.issuer {
        Some(found) if found == issuer => {}
        Some(found) => return Err(JwksError::IssuerMismatch { issuer: issuer.to_owned(), found }),
        None => return Err(bad(&discovery_url, "no issuer".into())),
    }
    let jwks_url = doc.jwks_uri.ok_or_else(|| bad(&discovery_url, "no jwks_uri".into()))?;
    url::Url::parse(&jwks_url).map_err(|e| bad(&discovery_url, format!("jwks_uri {jwks_url:?}: {e}")))?;

    let body = get(issuer, client, &jwks_url).await?;
    let keys = KeySet::from_json(&body).map_err(|e| bad(&jwks_url, format!("not a JWKS: {e}")))?;
    if keys.is_empty() {
        return Err(JwksError::NoKeys { issuer: issuer.to_owned(), url: jwks_url });
    }
    let document = serde_json::from_slice(&body).map_err(|e| bad(&jwks_url, format!("not JSON: {e}")))?;
    Ok((keys, document))
}

/// GET `url`, requiring a success status and a body of at most [`MAX_DOCUMENT_BYTES`].
async fn get(issuer: &str, client: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let request_error = |source| JwksError::Request { issuer: issuer.to_owned(), url: url.to_owned(), source };
    let response = client.get(url).header("Accept", "application/json").send().await.map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(JwksError::Status { issuer: issuer.to_owned(), url: url.to_owned(), status });
    }
    crate::http::read_body(response, MAX_DOCUMENT_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge { limit, .. } => JwksError::TooLarge { issuer: issuer.to_owned(), url: url.to_owned(), limit },
        BodyError::Read(source) => request_error(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scopes::{Scope, parse_scope_list};
    use crate::validate::testkit::{ec, jwks, rsa, rsa_other, sign, sign_as};
    use serde_json::json;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    const T0: i64 = 1_800_000_000;

    type Routes = Arc<StdMutex<HashMap<String, (u16, String)>>>;

    /// A plain-HTTP server on a loopback port answering fixed responses per path and recording
    /// every path asked for. Stops on drop.
    struct FakeIssuer {
        addr: SocketAddr,
        routes: Routes,
        hits: Arc<StdMutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FakeIssuer {
        fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let addr = listener.local_addr().expect("local addr");
            let routes: Routes = Arc::default();
            let hits: Arc<StdMutex<Vec<String>>> = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            let (r, h, s) = (routes.clone(), hits.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        answer(conn, &r, &h);
                    }
                }
            });
            let server = FakeIssuer { addr, routes, hits, stop, thread: Some(thread) };
            server.serve_discovery();
            server
        }

        fn issuer(&self) -> String {
            format!("http://{}/realm/", self.addr)
        }

        fn set(&self, path: &str, status: u16, body: String) {
            self.routes.lock().unwrap().insert(path.to_owned(), (status, body));
        }

        fn serve_discovery(&self) {
            let doc = json!({"issuer": self.issuer(), "jwks_uri": format!("http://{}/realm/jwk", self.addr)});
            self.set("/realm/.well-known/openid-configuration", 200, doc.to_string());
        }

        fn serve_keys(&self, keys: &[&crate::validate::testkit::TestKey]) {
            self.set("/realm/jwk", 200, serde_json::to_string(&jwks(keys)).unwrap());
        }

        fn hits(&self, path: &str) -> usize {
            self.hits.lock().unwrap().iter().filter(|p| *p == path).count()
        }

        fn total_hits(&self) -> usize {
            self.hits.lock().unwrap().len()
        }

        fn jwks_hits(&self) -> usize {
            self.hits("/realm/jwk")
        }
    }

    impl Drop for FakeIssuer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept so the thread sees the flag.
            let _ = TcpStream::connect(self.addr);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn answer(mut conn: TcpStream, routes: &Routes, hits: &StdMutex<Vec<String>>) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request);
        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
        hits.lock().unwrap().push(path.clone());
        let (status, body) = routes.lock().unwrap().get(&path).cloned().unwrap_or((404, "not found".into()));
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(reply.as_bytes());
    }

    /// The production client refuses plain HTTP; the test server speaks nothing else.
    fn plain_client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client")
    }

    fn cache_for(server: &FakeIssuer) -> JwksCache {
        JwksCache::new(vec![IssuerSource { issuer: server.issuer(), client: plain_client() }])
    }

    fn claims(iss: &str) -> serde_json::Value {
        json!({
            "wlcg.ver": "1.0", "iss": iss, "sub": "s", "aud": "https://cmsweb.cern.ch",
            "exp": T0 + 3600, "iat": T0 - 10, "jti": "j-1", "scope": "storage.read:/store",
        })
    }

    fn scope_list(text: &str) -> Vec<Scope> {
        parse_scope_list(text).unwrap()
    }

    fn expect<'a>(issuer: &'a str, scopes: &'a [Scope]) -> Expectation<'a> {
        Expectation {
            issuer,
            audience: Some("https://cmsweb.cern.ch"),
            min_lifetime: Duration::from_secs(900),
            required: scopes,
            allowed: scopes,
            leeway: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn cached_keys_are_reused_until_six_hours_old() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa()]);
        let cache = cache_for(&server);
        let iss = server.issuer();

        let first = cache.keys(&iss, T0).await.expect("keys");
        assert_eq!(first.kids(), vec!["rsa-1"]);
        assert_eq!((server.hits("/realm/.well-known/openid-configuration"), server.jwks_hits()), (1, 1));

        cache.keys(&iss, T0 + 60).await.expect("cached");
        cache.keys(&iss, T0 + REFRESH_AFTER_SECS - 1).await.expect("cached");
        assert_eq!(server.total_hits(), 2, "a cache hit fetches nothing");

        server.serve_keys(&[rsa(), ec()]);
        let refreshed = cache.keys(&iss, T0 + REFRESH_AFTER_SECS).await.expect("refreshed");
        assert_eq!(refreshed.kids(), vec!["rsa-1", "ec-1"]);
        assert_eq!(server.jwks_hits(), 2);
    }

    #[tokio::test]
    async fn unconfigured_issuers_cause_no_request() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa()]);
        let cache = cache_for(&server);
        let stranger = format!("http://{}/other/", server.addr);

        let err = cache.keys(&stranger, T0).await.expect_err("not configured");
        assert!(matches!(&err, JwksError::NotConfigured { issuer } if *issuer == stranger), "{err}");
        let err = cache.refresh_for_unknown_kid(&stranger, T0).await.expect_err("not configured");
        assert!(matches!(err, JwksError::NotConfigured { .. }), "{err}");

        // A token from the stranger, checked against the stranger: refused as unconfigured.
        let scopes = scope_list("storage.read:/store");
        let token = sign(rsa(), &claims(&stranger));
        let err = validate_token(&cache, &token, &expect(&stranger, &scopes), T0).await.expect_err("unconfigured");
        assert!(matches!(err, TokenError::Keys(JwksError::NotConfigured { .. })), "{err}");
        // A token from the stranger, checked against the configured issuer: refused as the
        // wrong issuer.
        let err = validate_token(&cache, &token, &expect(&server.issuer(), &scopes), T0).await.expect_err("wrong iss");
        assert!(matches!(err, TokenError::Invalid(ValidationError::WrongIssuer { .. })), "{err}");

        assert_eq!(server.total_hits(), 0);
    }

    #[tokio::test]
    async fn tokens_validate_through_the_cache() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa(), ec()]);
        let cache = cache_for(&server);
        let iss = server.issuer();
        let scopes = scope_list("storage.read:/store");

        for key in [rsa(), ec()] {
            let v = validate_token(&cache, &sign(key, &claims(&iss)), &expect(&iss, &scopes), T0).await.expect("valid");
            assert_eq!(v.iss, iss);
        }
        assert_eq!(server.jwks_hits(), 1);

        let bad = sign_as(rsa_other(), "rsa-1", &claims(&iss));
        let err = validate_token(&cache, &bad, &expect(&iss, &scopes), T0).await.expect_err("bad signature");
        assert!(matches!(err, TokenError::Invalid(ValidationError::BadSignature { .. })), "{err}");
        assert_eq!(server.jwks_hits(), 1, "a bad signature is not a reason to refetch");
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_once_and_is_rate_limited() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa()]);
        let cache = cache_for(&server);
        let iss = server.issuer();
        let scopes = scope_list("storage.read:/store");
        cache.keys(&iss, T0).await.expect("keys");
        assert_eq!(server.jwks_hits(), 1);

        // The issuer rotates in a new key; a token signed with it is accepted after one refetch.
        server.serve_keys(&[rsa(), rsa_other()]);
        let rotated = sign(rsa_other(), &claims(&iss));
        validate_token(&cache, &rotated, &expect(&iss, &scopes), T0 + 10).await.expect("valid after refetch");
        assert_eq!(server.jwks_hits(), 2);

        // A kid nobody publishes, within a minute of that refetch: no further request.
        let bogus = sign_as(rsa(), "no-such-kid", &claims(&iss));
        let err = validate_token(&cache, &bogus, &expect(&iss, &scopes), T0 + 10 + UNKNOWN_KID_INTERVAL_SECS - 1)
            .await
            .expect_err("rate-limited");
        assert!(matches!(&err, TokenError::KidRefresh { kid, source: JwksError::RateLimited { .. }, .. } if kid == "no-such-kid"), "{err}");
        assert_eq!(server.jwks_hits(), 2);

        // After the interval: exactly one refetch, then the kid is reported unknown.
        let err = validate_token(&cache, &bogus, &expect(&iss, &scopes), T0 + 10 + UNKNOWN_KID_INTERVAL_SECS)
            .await
            .expect_err("unknown kid");
        assert!(matches!(&err, TokenError::Invalid(ValidationError::UnknownKid { kid }) if kid == "no-such-kid"), "{err}");
        assert_eq!(server.jwks_hits(), 3);
    }

    #[tokio::test]
    async fn last_good_keys_outlive_a_failing_issuer_for_two_days() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa()]);
        let cache = cache_for(&server);
        let iss = server.issuer();
        cache.keys(&iss, T0).await.expect("keys");

        server.set("/realm/jwk", 503, "{}".into());
        let due = T0 + REFRESH_AFTER_SECS;
        assert_eq!(cache.keys(&iss, due).await.expect("last good keys").kids(), vec!["rsa-1"]);
        assert_eq!(server.jwks_hits(), 2);
        // A failure is not retried on every call...
        cache.keys(&iss, due + RETRY_AFTER_FAILURE_SECS - 1).await.expect("last good keys");
        assert_eq!(server.jwks_hits(), 2);
        // ...but again after a while.
        cache.keys(&iss, due + RETRY_AFTER_FAILURE_SECS).await.expect("last good keys");
        assert_eq!(server.jwks_hits(), 3);

        let err = cache.keys(&iss, T0 + KEEP_LAST_GOOD_SECS + 1).await.expect_err("too old");
        match &err {
            JwksError::Stale { issuer, fetched_at: T0, source } => {
                assert_eq!(*issuer, iss);
                assert!(matches!(**source, JwksError::Status { status, .. } if status.as_u16() == 503), "{source}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains(&iss) && err.to_string().contains("503"), "{err}");

        // The issuer recovers: fresh keys again.
        server.serve_keys(&[ec()]);
        assert_eq!(cache.keys(&iss, T0 + KEEP_LAST_GOOD_SECS + 2).await.expect("recovered").kids(), vec!["ec-1"]);
    }

    #[tokio::test]
    async fn persisted_keys_serve_a_new_cache_through_an_outage_for_two_days() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa()]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CACHE_FILE);
        let iss = server.issuer();
        cache_for(&server).persisted_at(&file).keys(&iss, T0).await.expect("keys");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let fetched = server.total_hits();

        // The next run, with the issuer down: the persisted keys serve without a request...
        server.set("/realm/.well-known/openid-configuration", 503, "{}".into());
        let cache = cache_for(&server).persisted_at(&file);
        let token = sign(rsa(), &claims(&iss));
        let scopes = scope_list("storage.read:/store");
        validate_token(&cache, &token, &expect(&iss, &scopes), T0 + 60).await.expect("valid on persisted keys");
        assert_eq!(server.total_hits(), fetched, "keys younger than 6 h are not refetched");
        // ...past 6 h a refresh is tried, fails, and the last good keys still serve...
        let cache = cache_for(&server).persisted_at(&file);
        assert_eq!(cache.keys(&iss, T0 + REFRESH_AFTER_SECS).await.expect("last good keys").kids(), vec!["rsa-1"]);
        assert!(server.total_hits() > fetched);
        // ...and past 2 days they are refused.
        let cache = cache_for(&server).persisted_at(&file);
        assert!(matches!(cache.keys(&iss, T0 + KEEP_LAST_GOOD_SECS + 1).await, Err(JwksError::Stale { fetched_at: T0, .. })));
    }

    #[tokio::test]
    async fn the_unknown_kid_limit_and_a_tampered_file_across_runs() {
        let server = FakeIssuer::start();
        server.serve_keys(&[rsa()]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CACHE_FILE);
        let iss = server.issuer();
        cache_for(&server).persisted_at(&file).refresh_for_unknown_kid(&iss, T0).await.expect("keys");
        let cache = cache_for(&server).persisted_at(&file);
        assert!(matches!(cache.refresh_for_unknown_kid(&iss, T0 + 10).await, Err(JwksError::RateLimited { last_refresh: T0, .. })));

        // A cache file others may write is not trusted: the keys are fetched afresh.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let before = server.jwks_hits();
        cache_for(&server).persisted_at(&file).keys(&iss, T0 + 20).await.expect("keys");
        assert_eq!(server.jwks_hits(), before + 1);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "rewritten private");
        // So is a file that is not a key cache.
        std::fs::write(&file, b"not json").unwrap();
        cache_for(&server).persisted_at(&file).keys(&iss, T0 + 30).await.expect("keys");
        assert_eq!(server.jwks_hits(), before + 2);
    }

    #[tokio::test]
    async fn fetch_errors_name_the_issuer_and_the_status() {
        async fn check(setup: impl FnOnce(&FakeIssuer), expected: fn(&JwksError) -> bool) {
            let server = FakeIssuer::start();
            setup(&server);
            let cache = cache_for(&server);
            let err = cache.keys(&server.issuer(), T0).await.expect_err("fetch fails");
            assert!(expected(&err), "unexpected error: {err}");
            assert!(err.to_string().contains(&server.issuer()), "{err}");
        }
        check(|s| s.set("/realm/.well-known/openid-configuration", 404, "".into()), |e| {
            matches!(e, JwksError::Status { status, url, .. } if status.as_u16() == 404 && url.ends_with("/realm/.well-known/openid-configuration"))
        })
        .await;
        check(|_| {}, |e| matches!(e, JwksError::Status { status, url, .. } if status.as_u16() == 404 && url.ends_with("/realm/jwk"))).await;
        check(|s| s.set("/realm/jwk", 500, "".into()), |e| e.to_string().contains("500")).await;
        check(|s| s.set("/realm/.well-known/openid-configuration", 200, "<html>".into()), |e| matches!(e, JwksError::BadDocument { .. })).await;
        check(
            |s| s.set("/realm/.well-known/openid-configuration", 200, json!({"issuer": "https://elsewhere/", "jwks_uri": "https://elsewhere/jwk"}).to_string()),
            |e| matches!(e, JwksError::IssuerMismatch { found, .. } if found == "https://elsewhere/"),
        )
        .await;
        check(
            |s| s.set("/realm/.well-known/openid-configuration", 200, json!({"issuer": s.issuer()}).to_string()),
            |e| matches!(e, JwksError::BadDocument { reason, .. } if reason.contains("jwks_uri")),
        )
        .await;
        check(|s| s.set("/realm/jwk", 200, r#"{"keys":[]}"#.into()), |e| matches!(e, JwksError::NoKeys { .. })).await;
        check(|s| s.set("/realm/jwk", 200, "x".repeat(MAX_DOCUMENT_BYTES + 1)), |e| matches!(e, JwksError::TooLarge { .. })).await;
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_a_request_error() {
        let server = FakeIssuer::start();
        let issuer = server.issuer();
        drop(server);
        let cache = JwksCache::new(vec![IssuerSource { issuer: issuer.clone(), client: plain_client() }]);
        let err = cache.keys(&issuer, T0).await.expect_err("nobody listens");
        assert!(matches!(&err, JwksError::Request { issuer: i, .. } if *i == issuer), "{err}");
    }
}
