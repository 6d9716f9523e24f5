//! Local state: the SQLite database and the cycle lock of one state directory.
//!
//! Owns `<state_dir>/state.db` — the record of runs, the audit trail of every delivery attempt,
//! the per service × destination status that `status` prints and alerting reads, and the outbox
//! of mail queued by a cycle, and the token ledger (every Vault token the bastion holds or
//! minted, and which destination files may hold it: [`LedgerToken`], [`Holding`]) — and
//! `<state_dir>/cycle.lock`, which keeps two cycles from ever interleaving on one state directory.
//!
//! The API is blocking; async callers run it on `spawn_blocking`.
//!
//! Invariants:
//! - **No token bytes, ever.** Tokens are stored only as [`Fingerprint`]s (jti, exp, short hash).
//!   Error strings handed to [`StateStore::record_delivery`] and [`StateStore::mark_failed`] must
//!   come from product errors, which are secret-free by construction; this module cannot check
//!   that, so callers must never format a [`crate::secret::Secret`] with `expose()` into one.
//! - The database belongs to this product: a file with another SQLite `application_id`, or with
//!   a schema newer than this binary knows, is refused rather than modified.
//! - The directory is created 0700 and the database file is kept 0600: the audit trail names
//!   services, hosts and token fingerprints, which are nobody else's business.
//! - Times are stored as integer seconds since the Unix epoch (UTC).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::credmon::CredmonState;
use crate::notify::{Channel, OutgoingMail};
use crate::secret::Fingerprint;

mod idtoken;
mod ledger;

pub use idtoken::{IdTokenRecord, IdTokenState};
pub use ledger::{HoldState, Holding, Intent, LedgerToken, NewToken, Settled, TokenKind, TokenState};

/// SQLite `application_id` of a token-bastion state database: ASCII "TkBs".
pub const APPLICATION_ID: i32 = 0x546B_4273;

/// Name of the database file inside the state directory.
pub const DB_FILE: &str = "state.db";

/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "cycle.lock";

/// Name of the lock file held while the outbox is being sent.
pub const OUTBOX_LOCK_FILE: &str = "outbox.lock";

/// How long a statement waits for another connection (a `status` beside a running daemon)
/// before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations in order; migration `i` takes the schema from version `i` to `i + 1`, and
/// `PRAGMA user_version` holds the number applied. Append only: a released migration is never
/// edited, because databases in the field have already run it.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started     INTEGER NOT NULL,
        finished    INTEGER,
        kind        TEXT NOT NULL CHECK (kind IN ('run', 'dry-run', 'daemon')),
        services    TEXT NOT NULL,          -- JSON array of service names; [] = all
        outcome     TEXT,
        exit_code   INTEGER
    );
    CREATE TABLE deliveries (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id        INTEGER NOT NULL REFERENCES runs(id),
        service       TEXT NOT NULL,
        destination   TEXT NOT NULL,
        host          TEXT NOT NULL,
        ok            INTEGER NOT NULL,
        error         TEXT,
        dry_run       INTEGER NOT NULL,
        vault_expiry  INTEGER,
        access_jti    TEXT,
        access_exp    INTEGER,
        access_hash   TEXT,
        at            INTEGER NOT NULL
    );
    CREATE INDEX deliveries_by_destination ON deliveries (service, destination, at);
    CREATE INDEX deliveries_by_run ON deliveries (run_id);
    CREATE TABLE status (
        service               TEXT NOT NULL,
        destination           TEXT NOT NULL,
        host                  TEXT NOT NULL,
        last_attempt          INTEGER,
        last_success          INTEGER,
        vault_expiry          INTEGER,
        access_jti            TEXT,
        access_exp            INTEGER,
        access_hash           TEXT,
        consecutive_failures  INTEGER NOT NULL DEFAULT 0,
        failing_since         INTEGER,
        last_error            TEXT,
        PRIMARY KEY (service, destination)
    );
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        created     INTEGER NOT NULL,
        recipients  TEXT NOT NULL,          -- JSON array of addresses
        subject     TEXT NOT NULL,
        body        TEXT NOT NULL,
        sent_at     INTEGER,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT
    );
    CREATE INDEX outbox_pending ON outbox (sent_at, id);
    "#,
    // 2: which Vault token tree a destination depends on (so a superseded login token is revoked
    // only once nothing depends on it) and the paths written there (so `revoke` can remove them
    // even after the service left the inventory).
    r#"
    ALTER TABLE status ADD COLUMN vault_root TEXT;
    ALTER TABLE status ADD COLUMN paths TEXT;
    ALTER TABLE deliveries ADD COLUMN vault_root TEXT;
    "#,
    // 3: when on-call was last told about a condition, so a lasting one is repeated at a
    // bounded rate instead of every cycle.
    r#"
    CREATE TABLE alerts (
        key        TEXT PRIMARY KEY,
        last_sent  INTEGER NOT NULL
    );
    "#,
    // 4: the token ledger. Every Vault token the bastion holds or minted, and which destination
    // files may hold which of them; every revocation decision reads these two tables only.
    // Token bytes stay in <state-dir>/vault/<hash>.token. What older versions kept (their token
    // files and status.vault_root) is imported by the first cycle that finds it.
    r#"
    CREATE TABLE tokens (
        hash     TEXT PRIMARY KEY,      -- short hash of the token (its fingerprint)
        service  TEXT NOT NULL,
        kind     TEXT NOT NULL CHECK (kind IN ('login', 'child')),
        parent   TEXT,                  -- the login token a child was minted from
        expiry   INTEGER,               -- NULL: never expires
        state    TEXT NOT NULL CHECK (state IN ('live', 'revoke-pending', 'revoked', 'dead')),
        current  INTEGER NOT NULL DEFAULT 0,   -- the login token the service's next cycle reuses
        run_id   INTEGER,               -- the run that obtained it; NULL when imported
        created  INTEGER NOT NULL,
        updated  INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX tokens_current ON tokens (service) WHERE current = 1;
    CREATE INDEX tokens_by_parent ON tokens (parent);
    CREATE TABLE holdings (
        service      TEXT NOT NULL,
        destination  TEXT NOT NULL,
        template     TEXT NOT NULL,     -- the file's path as planned (may hold {uid})
        content      TEXT NOT NULL,     -- short hash of the bytes written; '' when not known
        host         TEXT NOT NULL,
        path         TEXT,              -- the resolved remote path, once known
        token        TEXT NOT NULL,     -- hash of the Vault token those bytes carry
        state        TEXT NOT NULL CHECK (state IN ('intended', 'holds', 'unknown', 'replaced')),
        run_id       INTEGER,           -- the run that recorded the state
        updated      INTEGER NOT NULL,
        PRIMARY KEY (service, destination, template, content)
    );
    CREATE INDEX holdings_by_token ON holdings (token);
    "#,
    // 5: the channel a queued message goes out on (one row per channel, each marked sent on its
    // own, so a message reaches each channel once). Rows queued before are mail.
    r#"
    ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'mail' CHECK (channel IN ('mail', 'webhook'));
    "#,
    // 6: the schedd's credmon as last seen at each credd destination, and when the bastion
    // itself last wrote the `.use` (a newer one is the credmon's work).
    r#"
    ALTER TABLE status ADD COLUMN credmon TEXT;
    ALTER TABLE status ADD COLUMN credmon_reason TEXT;
    ALTER TABLE status ADD COLUMN credmon_checked_at INTEGER;
    ALTER TABLE status ADD COLUMN credmon_refreshed_at INTEGER;
    ALTER TABLE status ADD COLUMN use_written_at INTEGER;
    "#,
    // 7: every HTCondor IDToken minted: its claims (jti, sub, iat, exp, kid), the request it
    // answered, and whether it is the service's current one, superseded, or denied by a drill.
    // Token bytes stay in <state-dir>/idtoken/<hash>.token.
    r#"
    CREATE TABLE idtokens (
        hash     TEXT PRIMARY KEY,      -- short hash of the token
        service  TEXT NOT NULL,
        jti      TEXT NOT NULL,
        sub      TEXT NOT NULL,
        iat      INTEGER NOT NULL,
        exp      INTEGER NOT NULL,
        kid      TEXT NOT NULL,
        request  TEXT NOT NULL,         -- what condor_token_create was asked for
        state    TEXT NOT NULL CHECK (state IN ('current', 'superseded', 'denied')),
        run_id   INTEGER,
        created  INTEGER NOT NULL,
        updated  INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX idtokens_current ON idtokens (service) WHERE state = 'current';
    -- Other files found beside an IDToken destination's file in its tokens.d when it was last
    -- written or read back: HTCondor uses the first usable one in sort order.
    CREATE TABLE idtoken_neighbours (
        service      TEXT NOT NULL,
        destination  TEXT NOT NULL,
        others       TEXT NOT NULL,     -- JSON array of file names
        checked      INTEGER NOT NULL,
        PRIMARY KEY (service, destination)
    );
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema as the version of the product at schema `version` created it, as SQL (no
/// header fields): what upgrade tests start from.
#[doc(hidden)]
pub fn schema_sql_up_to(version: usize) -> String {
    MIGRATIONS[..version.min(MIGRATIONS.len())].concat()
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create or protect state database {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path} is not a token-bastion state database (SQLite application_id {found:#010x}, \
         expected {APPLICATION_ID:#010x}); refusing to touch it"
    )]
    ForeignDatabase { path: PathBuf, found: i32 },
    #[error(
        "{path} has schema version {found}, newer than this binary's {SCHEMA_VERSION}; \
         run a token-bastion at least as new as the one that wrote it"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("migrating {path} to schema version {version} failed: {source}")]
    Migrate {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: {what}: {source}")]
    Query {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: {what}: unreadable stored value: {detail}")]
    Corrupt { path: PathBuf, what: &'static str, detail: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What started a run; stored as `run`, `dry-run` or `daemon`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// `token-bastion run`.
    Run,
    /// `token-bastion run --dry-run`.
    DryRun,
    /// A cycle fired by the daemon's scheduler.
    Daemon,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::DryRun => "dry-run",
            RunKind::Daemon => "daemon",
        }
    }
}

/// How a run ended; stored as its `as_str` form beside the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Every service × destination delivered (or, for a dry run, verified).
    Success,
    /// At least one service × destination not delivered.
    Failures,
    /// Configuration or local setup error: nothing was attempted.
    Error,
    /// Shutdown's grace period ended with writes still in flight.
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failures => "failures",
            RunOutcome::Error => "error",
            RunOutcome::Interrupted => "interrupted",
        }
    }
}

/// Row id of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RunId(pub i64);

/// Row id of an outbox mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MailId(pub i64);

/// What a successful delivery left at the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Expiry of the delivered Vault token (seconds since the epoch): the "time left" of a
    /// credd destination. `None` for destinations that receive no Vault token.
    pub vault_expiry: Option<i64>,
    /// Fingerprint of the delivered access token, if one was delivered.
    pub access: Option<Fingerprint>,
    /// Short hash of the login token whose tree the delivered Vault token belongs to (the
    /// token itself, or the parent of a child token): while a destination depends on a tree, its
    /// root is not revoked.
    pub vault_root: Option<String>,
    /// Paths written at the destination.
    pub paths: Vec<String>,
}

/// One attempt to deliver one service to one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub service: String,
    pub destination: String,
    pub host: String,
    /// `Err` carries the product error's message, which must already be secret-free.
    pub result: Result<Delivered, String>,
    /// A dry run goes into the audit trail but leaves the status row alone: nothing was written
    /// at the destination, so nothing about it changed.
    pub dry_run: bool,
}

/// Where one service × destination stands; what `status` prints (`--json` serializes this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationStatus {
    pub service: String,
    pub destination: String,
    pub host: String,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// Expiry of the Vault token last delivered there.
    pub vault_expiry: Option<DateTime<Utc>>,
    /// Fingerprint of the access token last delivered there.
    pub access: Option<Fingerprint>,
    /// Short hash of the login token the destination's Vault token depends on.
    pub vault_root: Option<String>,
    /// Paths last written there.
    pub paths: Vec<String>,
    pub consecutive_failures: u32,
    /// Time of the first failure of the current streak; `None` while healthy.
    pub failing_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The credmon as last seen before a delivery (credd destinations only).
    pub credmon: Option<CredmonState>,
    pub credmon_reason: Option<String>,
    pub credmon_checked_at: Option<DateTime<Utc>>,
    /// When the credmon was last seen rewriting this destination's `.use`.
    pub credmon_refreshed_at: Option<DateTime<Utc>>,
    /// When the bastion itself last wrote the `.use` (the host's mtime of what it wrote).
    #[serde(skip)]
    pub use_written_at: Option<DateTime<Utc>>,
}

/// What a cycle saw of a credd destination's credmon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredmonRecord {
    pub service: String,
    pub destination: String,
    pub state: CredmonState,
    pub reason: String,
    pub checked_at: DateTime<Utc>,
    /// Replaces the recorded time only when later.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// The host's mtime of the `.use` this cycle wrote, if it wrote one.
    pub use_written_at: Option<DateTime<Utc>>,
}

impl DestinationStatus {
    /// Seconds until the delivered Vault token expires (negative once it has), if known.
    pub fn vault_time_left_secs(&self, now: DateTime<Utc>) -> Option<i64> {
        self.vault_expiry.map(|e| (e - now).num_seconds())
    }
}

/// A message waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMail {
    pub id: MailId,
    pub channel: Channel,
    pub created: DateTime<Utc>,
    pub mail: OutgoingMail,
    /// Send attempts so far (all failed, or it would not be pending).
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// The state database of one state directory.
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl StateError {
    /// SQLite said the database is busy or locked by another connection.
    fn is_busy(&self) -> bool {
        let source = match self {
            StateError::Open { source, .. } | StateError::Migrate { source, .. } | StateError::Query { source, .. } => source,
            _ => return false,
        };
        matches!(source.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }
}

/// Creates the state directory (and missing parents) with mode 0700. An existing directory is
/// left as the operator made it.
fn ensure_state_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::CreateDir { path: dir.to_path_buf(), source })
}

/// `conn.execute` through the connection's statement cache: the statements a cycle runs once
/// per destination are parsed once per process, not once per row.
fn execute_cached(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn from_ts(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
}

impl StateStore {
    /// Opens (creating and migrating as needed) `<state_dir>/state.db`.
    pub fn open(state_dir: &Path) -> Result<StateStore, StateError> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let file_err = |source| StateError::File { path: path.clone(), source };
        // Create the file ourselves so that it never exists with a wider mode than 0600, then
        // tighten one that an older tool or a restore left wider.
        OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(file_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(file_err)?;

        // Another process setting up the same new database at this moment (the daemon starting
        // while `status` runs) can make SQLite answer "busy" without waiting, around the switch
        // to WAL: the set-up is idempotent, so it is simply done again, within the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::set_up(path.clone()) {
                Err(e) if e.is_busy() && std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                done => return done,
            }
        }
    }

    /// Opens the database file, checks it is ours, and migrates it.
    fn set_up(path: PathBuf) -> Result<StateStore, StateError> {
        let open_err = |source| StateError::Open { path: path.clone(), source };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;

        // The first read of the header is where a file that is not SQLite at all fails. The id
        // and the tables are read in one transaction: another process may be creating the
        // database at this very moment, and must be seen before or after, not half-way.
        let header = conn.transaction().map_err(open_err)?;
        let app_id: i32 =
            header.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(open_err)?;
        let objects: i64 =
            header.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).map_err(open_err)?;
        header.commit().map_err(open_err)?;
        if app_id != APPLICATION_ID {
            // A zero id on an empty file is a database we are about to create; a zero id on a
            // file with tables is someone else's SQLite that happens to sit at our path.
            if app_id != 0 || objects > 0 {
                return Err(StateError::ForeignDatabase { path, found: app_id });
            }
        }
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew { path, found: version });
        }

        // WAL lets `status` read while a cycle writes; NORMAL is durable enough under WAL (a
        // power cut may lose the last commit, never corrupt the file).
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), journal_mode = %mode, "state database is not in WAL mode");
        }
        // Room for every statement a cycle repeats (see `execute_cached`).
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;

        // Each migration takes the write lock first (IMMEDIATE) and reads the version again
        // under it: another process opening the same file at the same moment (`status` while
        // the daemon starts) finds the migration done instead of running it a second time.
        while version < SCHEMA_VERSION && Self::migrate_one(&mut conn, &path)? {}
        Ok(StateStore { conn, path })
    }

    /// Applies the next migration, if any is left, under the write lock; `false` once the
    /// schema is current.
    fn migrate_one(conn: &mut Connection, path: &Path) -> Result<bool, StateError> {
        let begin_err = |source| StateError::Open { path: path.to_path_buf(), source };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(begin_err)?;
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(begin_err)?;
        if current > SCHEMA_VERSION {
            return Err(StateError::TooNew { path: path.to_path_buf(), found: current });
        }
        let Some(sql) = MIGRATIONS.get(current as usize) else { return Ok(false) };
        let target = current + 1;
        let migrate_err = |source| StateError::Migrate { path: path.to_path_buf(), version: target, source };
        tx.execute_batch(sql).map_err(migrate_err)?;
        // Both header fields are written inside the transaction, so a crash leaves either the
        // old version or the new one, never a half-migrated schema with a new number.
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(migrate_err)?;
        tx.pragma_update(None, "user_version", target).map_err(migrate_err)?;
        tx.commit().map_err(migrate_err)?;
        tracing::info!(path = %path.display(), version = target, "state database migrated");
        Ok(true)
    }

    /// Opens `<state_dir>/state.db` for reading only, beside a cycle that may be writing (the
    /// daemon's metrics read it at every scrape): nothing is created, tightened or migrated,
    /// and a database that is not ours or is newer than this binary is refused.
    pub fn open_read_only(state_dir: &Path) -> Result<StateStore, StateError> {
        let path = state_dir.join(DB_FILE);
        let open_err = |source| StateError::Open { path: path.clone(), source };
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0)).map_err(open_err)?;
        if app_id != APPLICATION_ID {
            return Err(StateError::ForeignDatabase { path, found: app_id });
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew { path, found: version });
        }
        Ok(StateStore { conn, path })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn q(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Query { path: self.path.clone(), what, source }
    }

    /// Records the start of a run; `services` is what was asked for (empty = all).
    pub fn begin_run(&self, kind: RunKind, services: &[String]) -> Result<RunId, StateError> {
        self.begin_run_at(kind, services, Utc::now())
    }

    pub fn begin_run_at(
        &self,
        kind: RunKind,
        services: &[String],
        at: DateTime<Utc>,
    ) -> Result<RunId, StateError> {
        let services = serde_json::to_string(services).expect("a list of strings serializes");
        self.conn
            .execute(
                "INSERT INTO runs (started, kind, services) VALUES (?1, ?2, ?3)",
                params![ts(at), kind.as_str(), services],
            )
            .map_err(self.q("begin run"))?;
        Ok(RunId(self.conn.last_insert_rowid()))
    }

    pub fn finish_run(
        &self,
        run: RunId,
        outcome: RunOutcome,
        exit_code: i32,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE runs SET finished = ?1, outcome = ?2, exit_code = ?3 WHERE id = ?4",
                params![ts(Utc::now()), outcome.as_str(), exit_code, run.0],
            )
            .map_err(self.q("finish run"))?;
        Ok(())
    }

    /// Appends one attempt to the audit trail and, unless it was a dry run, folds it into the
    /// destination's status.
    pub fn record_delivery(&self, run: RunId, rec: &DeliveryRecord) -> Result<(), StateError> {
        self.record_delivery_at(run, rec, Utc::now())
    }

    /// [`Self::record_delivery`] with the attempt's time given.
    pub fn record_delivery_at(
        &self,
        run: RunId,
        rec: &DeliveryRecord,
        at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let (ok, error, vault_expiry, access, vault_root, paths) = match &rec.result {
            Ok(d) => (true, None, d.vault_expiry, d.access.as_ref(), d.vault_root.as_deref(), Some(d.paths.as_slice())),
            Err(e) => (false, Some(e.as_str()), None, None, None, None),
        };
        let paths = paths.map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into()));
        let error = error.map(crate::redact::scrub);
        let at = ts(at);
        // Audit row and status change commit together or not at all.
        let tx = self.conn.unchecked_transaction().map_err(self.q("record delivery"))?;
        execute_cached(
            &tx,
            "INSERT INTO deliveries (run_id, service, destination, host, ok, error, dry_run,
                                     vault_expiry, access_jti, access_exp, access_hash, at, vault_root)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                run.0,
                rec.service,
                rec.destination,
                rec.host,
                ok,
                error,
                rec.dry_run,
                vault_expiry,
                access.and_then(|f| f.jti.as_deref()),
                access.and_then(|f| f.exp),
                access.map(|f| f.hash.as_str()),
                at,
                vault_root
            ],
        )
        .map_err(self.q("record delivery"))?;
        if !rec.dry_run {
            if ok {
                execute_cached(
                    &tx,
                    "INSERT INTO status (service, destination, host, last_attempt, last_success,
                                         vault_expiry, access_jti, access_exp, access_hash,
                                         consecutive_failures, failing_since, last_error,
                                         vault_root, paths)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, 0, NULL, NULL, ?9, ?10)
                     ON CONFLICT (service, destination) DO UPDATE SET
                         host = excluded.host, last_attempt = excluded.last_attempt,
                         last_success = excluded.last_success, vault_expiry = excluded.vault_expiry,
                         access_jti = excluded.access_jti, access_exp = excluded.access_exp,
                         access_hash = excluded.access_hash, consecutive_failures = 0,
                         failing_since = NULL, last_error = NULL,
                         vault_root = excluded.vault_root, paths = excluded.paths",
                    params![
                        rec.service,
                        rec.destination,
                        rec.host,
                        at,
                        vault_expiry,
                        access.and_then(|f| f.jti.as_deref()),
                        access.and_then(|f| f.exp),
                        access.map(|f| f.hash.as_str()),
                        vault_root,
                        paths,
                    ],
                )
                .map_err(self.q("update status"))?;
            } else {
                // A failure keeps last_success and the fingerprints: they describe what is still
                // sitting at the destination, which is what on-call needs to judge urgency.
                execute_cached(
                    &tx,
                    "INSERT INTO status (service, destination, host, last_attempt,
                                         consecutive_failures, failing_since, last_error)
                     VALUES (?1, ?2, ?3, ?4, 1, ?4, ?5)
                     ON CONFLICT (service, destination) DO UPDATE SET
                         host = excluded.host, last_attempt = excluded.last_attempt,
                         consecutive_failures = status.consecutive_failures + 1,
                         failing_since = COALESCE(status.failing_since, excluded.failing_since),
                         last_error = excluded.last_error",
                    params![rec.service, rec.destination, rec.host, at, error],
                )
                .map_err(self.q("update status"))?;
            }
        }
        tx.commit().map_err(self.q("record delivery"))?;
        Ok(())
    }

    /// Records what the credmon of a destination that has a status row was seen doing.
    pub fn record_credmon(&self, rec: &CredmonRecord) -> Result<(), StateError> {
        execute_cached(
            &self.conn,
                "UPDATE status SET credmon = ?3, credmon_reason = ?4, credmon_checked_at = ?5,
                     credmon_refreshed_at = CASE WHEN ?6 IS NOT NULL AND (credmon_refreshed_at IS NULL OR ?6 > credmon_refreshed_at)
                                                 THEN ?6 ELSE credmon_refreshed_at END,
                     use_written_at = COALESCE(?7, use_written_at)
                 WHERE service = ?1 AND destination = ?2",
                params![
                    rec.service,
                    rec.destination,
                    rec.state.as_str(),
                    crate::redact::scrub(&rec.reason),
                    ts(rec.checked_at),
                    rec.refreshed_at.map(ts),
                    rec.use_written_at.map(ts),
                ],
            )
            .map_err(self.q("record credmon"))?;
        Ok(())
    }

    /// Every service × destination ever delivered to (and not forgotten), ordered by service
    /// then destination.
    pub fn statuses(&self) -> Result<Vec<DestinationStatus>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT service, destination, host, last_attempt, last_success, vault_expiry,
                        access_jti, access_exp, access_hash, consecutive_failures,
                        failing_since, last_error, vault_root, paths, credmon, credmon_reason,
                        credmon_checked_at, credmon_refreshed_at, use_written_at
                 FROM status ORDER BY service, destination",
            )
            .map_err(self.q("read status"))?;
        let rows = stmt
            .query_map([], |r| {
                let hash: Option<String> = r.get(8)?;
                let consecutive: i64 = r.get(9)?;
                Ok(DestinationStatus {
                    service: r.get(0)?,
                    destination: r.get(1)?,
                    host: r.get(2)?,
                    last_attempt: from_ts(r.get(3)?),
                    last_success: from_ts(r.get(4)?),
                    vault_expiry: from_ts(r.get(5)?),
                    access: hash
                        .map(|hash| -> rusqlite::Result<Fingerprint> {
                            Ok(Fingerprint { jti: r.get(6)?, exp: r.get(7)?, hash })
                        })
                        .transpose()?,
                    consecutive_failures: u32::try_from(consecutive).unwrap_or(u32::MAX),
                    failing_since: from_ts(r.get(10)?),
                    last_error: r.get(11)?,
                    vault_root: r.get(12)?,
                    paths: r
                        .get::<_, Option<String>>(13)?
                        .and_then(|p| serde_json::from_str(&p).ok())
                        .unwrap_or_default(),
                    credmon: r.get::<_, Option<String>>(14)?.as_deref().and_then(CredmonState::parse),
                    credmon_reason: r.get(15)?,
                    credmon_checked_at: from_ts(r.get(16)?),
                    credmon_refreshed_at: from_ts(r.get(17)?),
                    use_written_at: from_ts(r.get(18)?),
                })
            })
            .map_err(self.q("read status"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.q("read status"))
    }

    /// When mail about the condition `key` was last queued.
    pub fn last_alerted(&self, key: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let at: Option<i64> = self
            .conn
            .query_row("SELECT last_sent FROM alerts WHERE key = ?1", params![key], |r| r.get(0))
            .optional()
            .map_err(self.q("read alerts"))?;
        Ok(at.and_then(|t| from_ts(Some(t))))
    }

    /// Records that mail about the condition `key` was queued at `at`.
    pub fn mark_alerted(&self, key: &str, at: DateTime<Utc>) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO alerts (key, last_sent) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET last_sent = excluded.last_sent",
                params![key, ts(at)],
            )
            .map_err(self.q("record alert"))?;
        Ok(())
    }

    /// Drops the status row of a destination removed from the inventory, so that it no longer
    /// shows in `status` or alerts. The audit trail keeps its history. Returns whether a row
    /// existed.
    pub fn forget_destination(&self, service: &str, destination: &str) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM status WHERE service = ?1 AND destination = ?2",
                params![service, destination],
            )
            .map_err(self.q("forget destination"))?;
        Ok(n > 0)
    }

    /// Queues a mail.
    pub fn enqueue_mail(&self, mail: &OutgoingMail) -> Result<MailId, StateError> {
        self.enqueue(Channel::Mail, mail)
    }

    /// Queues a message for one channel.
    pub fn enqueue(&self, channel: Channel, mail: &OutgoingMail) -> Result<MailId, StateError> {
        let recipients = serde_json::to_string(&mail.to).expect("a list of strings serializes");
        self.conn
            .execute(
                "INSERT INTO outbox (created, recipients, subject, body, channel) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![ts(Utc::now()), recipients, crate::redact::scrub(&mail.subject), crate::redact::scrub(&mail.body), channel.as_str()],
            )
            .map_err(self.q("enqueue mail"))?;
        Ok(MailId(self.conn.last_insert_rowid()))
    }

    /// Queues what one run or event has to say and records, in the same transaction, which
    /// conditions on-call was told about at `at` (`told`) and which are over (`over`): a
    /// message is queued exactly when its conditions are recorded, so a recovery is told once.
    pub fn enqueue_told(&self, messages: &[(Channel, OutgoingMail)], told: &[String], over: &[String], at: DateTime<Utc>) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction().map_err(self.q("enqueue mail"))?;
        for (channel, m) in messages {
            self.enqueue(*channel, m)?;
        }
        for key in told {
            self.mark_alerted(key, at)?;
        }
        for key in over {
            self.conn.execute("DELETE FROM alerts WHERE key = ?1", params![key]).map_err(self.q("forget alert"))?;
        }
        tx.commit().map_err(self.q("enqueue mail"))
    }

    /// Conditions on-call was told about whose key starts with `prefix`, with when.
    pub fn alerted_with_prefix(&self, prefix: &str) -> Result<Vec<(String, DateTime<Utc>)>, StateError> {
        let mut stmt = self.conn.prepare_cached("SELECT key, last_sent FROM alerts WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key").map_err(self.q("read alerts"))?;
        let rows = stmt
            .query_map(params![prefix], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.q("read alerts"))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, at) = row.map_err(self.q("read alerts"))?;
            out.push((key, from_ts(Some(at)).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Exclusive right to send this state directory's outbox, held until dropped; waits for a
    /// sender already at it (bounded by its channels' timeouts). Without it two senders — a
    /// daemon notice and a cycle's end, or two processes — both read a mail as pending and both
    /// send it. An advisory `flock`: the kernel drops it with a crashed holder.
    pub fn lock_outbox(&self) -> Result<OutboxLock, StateError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let path = dir.join(OUTBOX_LOCK_FILE);
        let lock_err = |source| StateError::Lock { path: path.clone(), source };
        let file = open_lock_file(&path).map_err(lock_err)?;
        file.lock().map_err(lock_err)?;
        Ok(OutboxLock { _file: file })
    }

    /// Messages not yet sent, oldest first.
    pub fn pending_mail(&self) -> Result<Vec<QueuedMail>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, created, recipients, subject, body, attempts, last_error, channel
                 FROM outbox WHERE sent_at IS NULL ORDER BY id",
            )
            .map_err(self.q("read outbox"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?),
                    (r.get::<_, String>(3)?, r.get::<_, String>(4)?),
                    (r.get::<_, i64>(5)?, r.get::<_, Option<String>>(6)?, r.get::<_, String>(7)?),
                ))
            })
            .map_err(self.q("read outbox"))?;
        let mut out = Vec::new();
        for row in rows {
            let ((id, created, recipients), (subject, body), (attempts, last_error, channel)) =
                row.map_err(self.q("read outbox"))?;
            let corrupt = |what, detail: String| StateError::Corrupt { path: self.path.clone(), what, detail: format!("mail {id}: {detail}") };
            let to: Vec<String> = serde_json::from_str(&recipients).map_err(|e| corrupt("outbox recipients", e.to_string()))?;
            let channel = Channel::parse(&channel).ok_or_else(|| corrupt("outbox channel", channel.clone()))?;
            out.push(QueuedMail {
                id: MailId(id),
                channel,
                created: from_ts(Some(created)).unwrap_or_default(),
                mail: OutgoingMail { to, subject, body },
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                last_error,
            });
        }
        Ok(out)
    }

    pub fn mark_sent(&self, id: MailId) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE outbox SET sent_at = ?1, attempts = attempts + 1 WHERE id = ?2",
                params![ts(Utc::now()), id.0],
            )
            .map_err(self.q("mark mail sent"))?;
        Ok(())
    }

    /// Counts a failed attempt; the mail stays pending.
    pub fn mark_failed(&self, id: MailId, error: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?1 WHERE id = ?2",
                params![crate::redact::scrub(error), id.0],
            )
            .map_err(self.q("mark mail failed"))?;
        Ok(())
    }
}

/// A lock file in the state directory, opened for an advisory `flock`: created 0600, never
/// truncated (the cycle lock's holder details must survive until the lock is ours).
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// Held while the outbox is sent: see [`StateStore::lock_outbox`].
#[derive(Debug)]
pub struct OutboxLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cycle (pid {}, since {}) holds {path}", show_or_unknown(.pid), show_or_unknown(.since))]
    Busy { path: PathBuf, pid: Option<u32>, since: Option<String> },
    #[error("cannot create state directory for {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn show_or_unknown<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

/// Exclusive right to run a cycle on one state directory, held until dropped.
///
/// An advisory `flock` on `<state_dir>/cycle.lock`: the kernel releases it when the holder's
/// file is closed, so a crashed cycle never leaves a stale lock behind. The file's content (the
/// holder's pid and start time) only serves the message a waiting cycle prints.
#[derive(Debug)]
pub struct CycleLock {
    file: File,
    path: PathBuf,
}

/// How often a waiting `acquire` retries.
const LOCK_POLL: Duration = Duration::from_millis(100);

impl CycleLock {
    /// Takes the lock. With `wait: None` a held lock is refused at once; with `Some(d)` it is
    /// retried until `d` has passed.
    pub fn acquire(state_dir: &Path, wait: Option<Duration>) -> Result<CycleLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| LockError::Dir { path: path.clone(), source })?;
        let io_err = |source| LockError::Io { path: path.clone(), source };
        let mut file = open_lock_file(&path).map_err(io_err)?;
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let now = Instant::now();
                    match deadline {
                        Some(d) if now < d => std::thread::sleep(LOCK_POLL.min(d - now)),
                        _ => {
                            let (pid, since) = read_holder(&mut file);
                            return Err(LockError::Busy { path, pid, since });
                        }
                    }
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        let holder = format!(
            "pid={}\nsince={}\n",
            std::process::id(),
            Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(holder.as_bytes())?;
            file.flush()
        })()
        .map_err(io_err)?;
        Ok(CycleLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CycleLock {
    fn drop(&mut self) {
        // Clear the holder line before unlocking so that nobody later reads a stale pid.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> (Option<u32>, Option<String>) {
    let mut text = String::new();
    if file.seek(SeekFrom::Start(0)).is_err() || file.take(4096).read_to_string(&mut text).is_err()
    {
        return (None, None);
    }
    let mut pid = None;
    let mut since = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pid=") {
            pid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("since=") {
            since = Some(v.trim().to_string()).filter(|s| !s.is_empty());
        }
    }
    (pid, since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn ok_rec(service: &str, dest: &str, vault_expiry: i64, dry_run: bool) -> DeliveryRecord {
        DeliveryRecord {
            service: service.into(),
            destination: dest.into(),
            host: format!("{dest}.example.org"),
            result: Ok(Delivered {
                vault_expiry: Some(vault_expiry),
                access: Some(Fingerprint {
                    jti: Some("jti-1".into()),
                    exp: Some(99),
                    hash: "0123456789ab".into(),
                }),
                vault_root: Some("a1b2c3d4e5f6".into()),
                paths: vec![format!("/spool/{service}/x.top")],
            }),
            dry_run,
        }
    }

    fn err_rec(service: &str, dest: &str, err: &str, dry_run: bool) -> DeliveryRecord {
        DeliveryRecord {
            service: service.into(),
            destination: dest.into(),
            host: format!("{dest}.example.org"),
            result: Err(err.into()),
            dry_run,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Processes that open a new state directory at the same moment (the daemon starting,
    /// `status` run beside it) all get a current schema: no migration runs twice.
    #[test]
    fn opens_racing_on_a_new_database_all_succeed() {
        for _ in 0..30 {
            let dir = tempfile::tempdir().unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(6));
            let opens: Vec<_> = (0..6)
                .map(|_| {
                    let (dir, start) = (dir.path().to_path_buf(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        StateStore::open(&dir).map(|s| s.conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).unwrap())
                    })
                })
                .collect();
            for o in opens {
                assert_eq!(o.join().unwrap().map_err(|e| e.to_string()), Ok(SCHEMA_VERSION));
            }
        }
    }

    #[test]
    fn open_creates_migrates_and_protects() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        let app: i32 = store.conn.pragma_query_value(None, "application_id", |r| r.get(0)).unwrap();
        let ver: i64 = store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        let jm: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!((app, ver, jm.as_str()), (APPLICATION_ID, SCHEMA_VERSION, "wal"));
        // SQLite gives the WAL and shared-memory files the database file's mode.
        store.begin_run(RunKind::Run, &[]).unwrap();
        for side in ["state.db-wal", "state.db-shm"] {
            assert_eq!(mode(&dir.join(side)), 0o600, "{side}");
        }
        for table in ["runs", "deliveries", "status", "outbox"] {
            let n: i64 = store
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "table {table}");
        }
    }

    #[test]
    fn reopen_is_idempotent_and_keeps_data() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        let run = store.begin_run(RunKind::Run, &["crab".into()]).unwrap();
        store.record_delivery(run, &ok_rec("crab", "schedd1", 1000, false)).unwrap();
        drop(store);
        // A wider mode left by a restore is tightened again.
        std::fs::set_permissions(tmp.path().join(DB_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        assert_eq!(mode(&tmp.path().join(DB_FILE)), 0o600);
        assert_eq!(store.statuses().unwrap().len(), 1);
        let store2 = StateStore::open(tmp.path()).unwrap();
        assert_eq!(store2.statuses().unwrap().len(), 1);
    }

    #[test]
    fn foreign_application_id_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        conn.execute_batch("PRAGMA application_id = 42; CREATE TABLE t (x);").unwrap();
        drop(conn);
        let err = StateStore::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::ForeignDatabase { found: 42, .. }), "{err:?}");
        assert!(err.to_string().contains("not a token-bastion state database"), "{err}");

        // Someone else's SQLite without any application id is not ours either.
        let tmp = tempfile::tempdir().unwrap();
        let conn = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        conn.execute_batch("CREATE TABLE t (x);").unwrap();
        drop(conn);
        assert!(matches!(
            StateStore::open(tmp.path()),
            Err(StateError::ForeignDatabase { found: 0, .. })
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        drop(StateStore::open(tmp.path()).unwrap());
        let conn = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(conn);
        let err = StateStore::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::TooNew { .. }), "{err:?}");
    }

    #[test]
    fn non_sqlite_file_is_an_open_error_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(DB_FILE), vec![b'x'; 4096]).unwrap();
        let err = StateStore::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StateError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("state.db"), "{err}");
    }

    #[test]
    fn alerts_remember_when_on_call_was_told() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        assert_eq!(s.last_alerted("failure a b 1").unwrap(), None);
        s.mark_alerted("failure a b 1", t(10)).unwrap();
        s.mark_alerted("failure a b 1", t(20)).unwrap();
        assert_eq!(s.last_alerted("failure a b 1").unwrap(), Some(t(20)));
        assert_eq!(s.last_alerted("failure a b 2").unwrap(), None);
    }

    #[test]
    fn failure_counters_streak_and_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(RunKind::Daemon, &[]).unwrap();
        s.record_delivery_at(run, &ok_rec("crab", "schedd1", 5000, false), t(0)).unwrap();
        s.record_delivery_at(run, &err_rec("crab", "schedd1", "connection refused", false), t(10))
            .unwrap();
        s.record_delivery_at(run, &err_rec("crab", "schedd1", "host key mismatch", false), t(20))
            .unwrap();
        let st = &s.statuses().unwrap()[0];
        assert_eq!(st.consecutive_failures, 2);
        assert_eq!(st.failing_since, Some(t(10)), "streak starts at the first failure");
        assert_eq!(st.last_attempt, Some(t(20)));
        assert_eq!(st.last_success, Some(t(0)), "a failure keeps the last success");
        assert_eq!(st.last_error.as_deref(), Some("host key mismatch"));
        assert_eq!(st.vault_expiry.map(|e| e.timestamp()), Some(5000), "what is still there");
        // The token tree and paths of what is still there survive failures too: they decide
        // when a superseded login token may be revoked and what `revoke` removes.
        assert_eq!(st.vault_root.as_deref(), Some("a1b2c3d4e5f6"));
        assert_eq!(st.paths, ["/spool/crab/x.top"]);
        assert_eq!(st.vault_time_left_secs(DateTime::from_timestamp(4000, 0).unwrap()), Some(1000));

        s.record_delivery_at(run, &ok_rec("crab", "schedd1", 9000, false), t(30)).unwrap();
        let st = &s.statuses().unwrap()[0];
        assert_eq!(
            (st.consecutive_failures, st.failing_since, st.last_error.as_deref()),
            (0, None, None)
        );
        assert_eq!(st.last_success, Some(t(30)));
        assert_eq!(st.access.as_ref().unwrap().hash, "0123456789ab");

        // A destination whose very first attempt fails gets a row too.
        s.record_delivery_at(run, &err_rec("wma", "schedd2", "refused token", false), t(40))
            .unwrap();
        let all = s.statuses().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].consecutive_failures, all[1].failing_since, all[1].last_success),
            (1, Some(t(40)), None)
        );
        s.finish_run(run, RunOutcome::Failures, 1).unwrap();
        let (outcome, code): (String, i32) = s
            .conn
            .query_row("SELECT outcome, exit_code FROM runs WHERE id = ?1", [run.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((outcome.as_str(), code), ("failures", 1));
    }

    #[test]
    fn dry_runs_are_audited_but_leave_status_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(RunKind::DryRun, &[]).unwrap();
        s.record_delivery_at(run, &err_rec("crab", "schedd1", "boom", true), t(0)).unwrap();
        assert!(s.statuses().unwrap().is_empty());
        s.record_delivery_at(run, &ok_rec("crab", "schedd1", 100, false), t(1)).unwrap();
        let before = s.statuses().unwrap();
        s.record_delivery_at(run, &err_rec("crab", "schedd1", "boom", true), t(2)).unwrap();
        s.record_delivery_at(run, &ok_rec("crab", "schedd1", 999, true), t(3)).unwrap();
        assert_eq!(s.statuses().unwrap(), before);
        let audited: i64 = s
            .conn
            .query_row("SELECT count(*) FROM deliveries WHERE dry_run = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(audited, 3);
    }

    #[test]
    fn forget_destination_drops_status_only() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(RunKind::Run, &[]).unwrap();
        s.record_delivery(run, &ok_rec("crab", "schedd1", 100, false)).unwrap();
        assert!(s.forget_destination("crab", "schedd1").unwrap());
        assert!(!s.forget_destination("crab", "schedd1").unwrap());
        assert!(s.statuses().unwrap().is_empty());
        let audited: i64 =
            s.conn.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0)).unwrap();
        assert_eq!(audited, 1);
    }

    #[test]
    fn status_serializes_for_json_output() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(RunKind::Run, &[]).unwrap();
        s.record_delivery_at(run, &ok_rec("crab", "schedd1", 1_800_000_100, false), t(0)).unwrap();
        let json = serde_json::to_value(s.statuses().unwrap()).unwrap();
        assert_eq!(json[0]["service"], "crab");
        assert_eq!(json[0]["consecutive_failures"], 0);
        assert_eq!(json[0]["access"]["jti"], "jti-1");
        assert!(json[0]["vault_expiry"].as_str().unwrap().starts_with("2027-01-15T08:"));
    }

    #[test]
    fn outbox_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let a = OutgoingMail {
            to: vec!["a@example.org".into(), "b@example.org".into()],
            subject: "s1".into(),
            body: "b1\n".into(),
        };
        let b = OutgoingMail {
            to: vec!["c@example.org".into()],
            subject: "s2".into(),
            body: "b2\n".into(),
        };
        let ia = s.enqueue_mail(&a).unwrap();
        let ib = s.enqueue_mail(&b).unwrap();
        let pending = s.pending_mail().unwrap();
        assert_eq!(
            pending.iter().map(|q| (q.id, q.mail.clone())).collect::<Vec<_>>(),
            vec![(ia, a), (ib, b.clone())]
        );
        s.mark_sent(ia).unwrap();
        s.mark_failed(ib, "connection refused").unwrap();
        s.mark_failed(ib, "timed out").unwrap();
        let pending = s.pending_mail().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].id, pending[0].attempts, pending[0].last_error.as_deref()),
            (ib, 2, Some("timed out"))
        );
        assert_eq!(pending[0].mail, b);
    }

    #[test]
    fn a_message_is_queued_per_channel_with_what_it_tells_in_one_transaction() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let m = OutgoingMail { to: vec![], subject: "s".into(), body: "b\n".into() };
        s.mark_alerted("failure a d 100", t(1)).unwrap();
        s.mark_alerted("failure a d2 100", t(1)).unwrap();
        s.enqueue_told(&[(Channel::Webhook, m.clone()), (Channel::Mail, m.clone())], &["expiring a d".into()], &["failure a d 100".into()], t(2)).unwrap();
        let pending = s.pending_mail().unwrap();
        assert_eq!(pending.iter().map(|q| q.channel).collect::<Vec<_>>(), [Channel::Webhook, Channel::Mail]);
        assert_eq!(s.last_alerted("expiring a d").unwrap(), Some(t(2)));
        assert_eq!(s.alerted_with_prefix("failure a d ").unwrap(), [], "over, and d2 is not d");
        assert_eq!(s.alerted_with_prefix("failure a d2 ").unwrap(), [("failure a d2 100".to_string(), t(1))]);
        // A transaction that fails part way records nothing, and queues nothing.
        s.conn.execute_batch("CREATE TRIGGER no_alerts BEFORE INSERT ON alerts BEGIN SELECT RAISE(ABORT, 'refused'); END;").unwrap();
        assert!(s.enqueue_told(&[(Channel::Mail, m)], &["orphan x d".into()], &[], t(3)).is_err());
        assert_eq!(s.pending_mail().unwrap().len(), 2);
    }

    #[test]
    fn held_secrets_are_scrubbed_from_every_text_stored() {
        let secret = crate::secret::Secret::new("hvs.STATE-scrub-fixture-0001");
        let echoed = format!("broker said: bad token {}", secret.expose());
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(RunKind::Run, &[]).unwrap();
        s.record_delivery(run, &err_rec("svc", "credd@h", &echoed, false)).unwrap();
        let id = s.enqueue_mail(&OutgoingMail { to: vec!["a@example.org".into()], subject: echoed.clone(), body: echoed.clone() }).unwrap();
        s.mark_failed(id, &echoed).unwrap();
        let shown = "broker said: bad token [redacted]";
        assert_eq!(s.statuses().unwrap()[0].last_error.as_deref(), Some(shown));
        let pending = s.pending_mail().unwrap();
        assert_eq!((pending[0].mail.subject.as_str(), pending[0].mail.body.as_str()), (shown, shown));
        assert_eq!(pending[0].last_error.as_deref(), Some(shown));
        drop(s);
        for f in std::fs::read_dir(tmp.path()).unwrap().flatten() {
            let bytes = std::fs::read(f.path()).unwrap();
            assert!(!bytes.windows(secret.expose().len()).any(|w| w == secret.expose().as_bytes()), "{}", f.path().display());
        }
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let held = CycleLock::acquire(tmp.path(), None).unwrap();
        assert_eq!(mode(held.path()), 0o600);
        // A second open of the file is a second open file description: flock conflicts even
        // inside one process, exactly as between a daemon and a `run`.
        let err = CycleLock::acquire(tmp.path(), None).unwrap_err();
        let msg = err.to_string();
        let LockError::Busy { pid, since, .. } = &err else { panic!("{err:?}") };
        assert_eq!(*pid, Some(std::process::id()));
        assert!(since.is_some());
        assert!(
            msg.starts_with(&format!("another cycle (pid {}, since 20", std::process::id())),
            "{msg}"
        );
        assert!(msg.ends_with("cycle.lock"), "{msg}");

        let started = Instant::now();
        assert!(matches!(
            CycleLock::acquire(tmp.path(), Some(Duration::from_millis(300))),
            Err(LockError::Busy { .. })
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));

        drop(held);
        let again = CycleLock::acquire(tmp.path(), None).unwrap();
        drop(again);
    }

    #[test]
    fn waiting_acquire_gets_the_lock_when_released() {
        let tmp = tempfile::tempdir().unwrap();
        let held = CycleLock::acquire(tmp.path(), None).unwrap();
        let dir = tmp.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            CycleLock::acquire(&dir, Some(Duration::from_secs(10))).map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
        waiter.join().unwrap().unwrap();
    }
}
