//! The token ledger's two tables: `tokens` (every Vault token the bastion holds or minted: its
//! service, kind, parent, expiry and state, and which login token is a service's current one)
//! and `holdings` (which destination file may hold which token, with the short hash of the
//! bytes written there).
//!
//! Storage only: the rules that move a holding from `intended` to `holds`, `unknown` or
//! `replaced`, and that decide what may be revoked, live in the cycle. No token bytes here,
//! only fingerprints.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{RunId, StateError, StateStore, execute_cached};

/// What a token is to the bastion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// Obtained by a login with the service's own credentials; delivered to credd destinations.
    Login,
    /// Minted from a login token for a Vault-token file; dies with its parent.
    Child,
}

/// Where a token stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenState {
    /// Held by the bastion and working as far as it knows.
    Live,
    /// No destination may hold it: revocation decided, not yet confirmed (retried each cycle).
    RevokePending,
    /// Revoked by the bastion (or died with its revoked parent).
    Revoked,
    /// Expired, refused by Vault, or its bytes are lost: nothing left to revoke.
    Dead,
}

/// What a destination file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldState {
    /// Recorded before the host's push; once that run is over without an outcome, it counts as
    /// `Unknown`.
    Intended,
    /// Landed, confirmed.
    Holds,
    /// May be there: the outcome is not known (a lost reply, a killed process, a failed write
    /// of the outcome) until a later connection reads the file back.
    Unknown,
    /// Confirmed no longer there.
    Replaced,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Login => "login",
            TokenKind::Child => "child",
        }
    }

    fn parse(s: &str) -> Option<TokenKind> {
        Some(match s {
            "login" => TokenKind::Login,
            "child" => TokenKind::Child,
            _ => return None,
        })
    }
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Live => "live",
            TokenState::RevokePending => "revoke-pending",
            TokenState::Revoked => "revoked",
            TokenState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<TokenState> {
        Some(match s {
            "live" => TokenState::Live,
            "revoke-pending" => TokenState::RevokePending,
            "revoked" => TokenState::Revoked,
            "dead" => TokenState::Dead,
            _ => return None,
        })
    }

    /// Still working in Vault as far as the ledger knows.
    pub fn is_alive(self) -> bool {
        matches!(self, TokenState::Live | TokenState::RevokePending)
    }
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Intended => "intended",
            HoldState::Holds => "holds",
            HoldState::Unknown => "unknown",
            HoldState::Replaced => "replaced",
        }
    }

    fn parse(s: &str) -> Option<HoldState> {
        Some(match s {
            "intended" => HoldState::Intended,
            "holds" => HoldState::Holds,
            "unknown" => HoldState::Unknown,
            "replaced" => HoldState::Replaced,
            _ => return None,
        })
    }

    /// The file may hold the token: anything but confirmed gone.
    pub fn may_hold(self) -> bool {
        !matches!(self, HoldState::Replaced)
    }
}

/// One row of `tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerToken {
    /// The token's short hash.
    pub hash: String,
    pub service: String,
    pub kind: TokenKind,
    pub parent: Option<String>,
    /// Unix seconds; `None` for a token that never expires.
    pub expiry: Option<i64>,
    pub state: TokenState,
    /// The login token the service's next cycle reuses.
    pub current: bool,
    pub run_id: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

/// One row of `holdings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holding {
    pub service: String,
    pub destination: String,
    pub host: String,
    /// The file's path as planned (may hold `{uid}`).
    pub template: String,
    /// The resolved remote path, once known.
    pub path: Option<String>,
    /// Short hash of the bytes written; empty when not known (imported from an older version).
    pub content: String,
    /// Short hash of the Vault token those bytes carry.
    pub token: String,
    pub state: HoldState,
    pub run_id: Option<i64>,
    pub updated: i64,
}

/// A token as recorded the moment the broker's reply arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    pub hash: String,
    pub service: String,
    pub kind: TokenKind,
    pub parent: Option<String>,
    pub expiry: Option<i64>,
}

/// What one destination file may hold once a host's push is done, recorded before the push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub service: String,
    pub destination: String,
    pub host: String,
    pub template: String,
    /// Short hash of the bytes about to be written.
    pub content: String,
    /// Short hash of the Vault token they carry.
    pub token: String,
}

/// A destination file's rows once an outcome or a read-back is known: each (content, token)
/// gets the state given; rows not named are left as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub service: String,
    pub destination: String,
    pub host: String,
    pub template: String,
    /// The resolved path, when this outcome learnt it.
    pub path: Option<String>,
    pub rows: Vec<(String, String, HoldState)>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn corrupt(what: &'static str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{what} {value:?}").into())
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<LedgerToken> {
    let kind: String = r.get(2)?;
    let state: String = r.get(5)?;
    Ok(LedgerToken {
        hash: r.get(0)?,
        service: r.get(1)?,
        kind: TokenKind::parse(&kind).ok_or_else(|| corrupt("token kind", &kind))?,
        parent: r.get(3)?,
        expiry: r.get(4)?,
        state: TokenState::parse(&state).ok_or_else(|| corrupt("token state", &state))?,
        current: r.get::<_, i64>(6)? != 0,
        run_id: r.get(7)?,
        created: r.get(8)?,
        updated: r.get(9)?,
    })
}

const TOKEN_COLUMNS: &str = "hash, service, kind, parent, expiry, state, current, run_id, created, updated";
const HOLDING_COLUMNS: &str = "service, destination, host, template, path, content, token, state, run_id, updated";

fn holding_row(r: &Row<'_>) -> rusqlite::Result<Holding> {
    let state: String = r.get(7)?;
    Ok(Holding {
        service: r.get(0)?,
        destination: r.get(1)?,
        host: r.get(2)?,
        template: r.get(3)?,
        path: r.get(4)?,
        content: r.get(5)?,
        token: r.get(6)?,
        state: HoldState::parse(&state).ok_or_else(|| corrupt("holding state", &state))?,
        run_id: r.get(8)?,
        updated: r.get(9)?,
    })
}

impl StateStore {
    /// Records a token obtained from the broker (state `live`, not current). Recording the same
    /// token again changes nothing.
    pub fn record_token(&self, run: Option<RunId>, t: &NewToken) -> Result<(), StateError> {
        let at = now();
        execute_cached(
            &self.conn,
            "INSERT INTO tokens (hash, service, kind, parent, expiry, state, current, run_id, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, 'live', 0, ?6, ?7, ?7)
             ON CONFLICT (hash) DO NOTHING",
            params![t.hash, t.service, t.kind.as_str(), t.parent, t.expiry, run.map(|r| r.0), at],
        )
        .map_err(self.q("record token"))?;
        Ok(())
    }

    /// Makes `hash` the service's current login token; the one it replaces stays live (its
    /// holdings decide when it may be revoked). Only a live login token of the service can
    /// become current; anything else changes nothing.
    pub fn set_current(&self, service: &str, hash: &str) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction().map_err(self.q("set current token"))?;
        let eligible: bool = tx
            .prepare_cached("SELECT count(*) FROM tokens WHERE hash = ?1 AND service = ?2 AND kind = 'login' AND state = 'live'")
            .and_then(|mut stmt| stmt.query_row(params![hash, service], |r| r.get::<_, i64>(0)))
            .map_err(self.q("set current token"))?
            > 0;
        if !eligible {
            return Ok(());
        }
        execute_cached(&tx, "UPDATE tokens SET current = 0, updated = ?2 WHERE service = ?1 AND current = 1 AND hash <> ?3", params![service, now(), hash])
            .map_err(self.q("set current token"))?;
        execute_cached(&tx, "UPDATE tokens SET current = 1, updated = ?2 WHERE hash = ?1", params![hash, now()]).map_err(self.q("set current token"))?;
        tx.commit().map_err(self.q("set current token"))
    }

    /// The service's current login token, if it has one that is still live.
    pub fn current_login(&self, service: &str) -> Result<Option<LedgerToken>, StateError> {
        self.conn
            .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE service = ?1 AND current = 1 AND state = 'live'"))
            .and_then(|mut stmt| stmt.query_row(params![service], token_row).optional())
            .map_err(self.q("read current token"))
    }

    /// Moves a token to `state`; a token that is no longer live stops being current.
    pub fn set_token_state(&self, hash: &str, state: TokenState) -> Result<(), StateError> {
        execute_cached(
            &self.conn,
            "UPDATE tokens SET state = ?2, current = CASE WHEN ?2 = 'live' THEN current ELSE 0 END, updated = ?3 WHERE hash = ?1",
            params![hash, state.as_str(), now()],
        )
        .map_err(self.q("update token state"))?;
        Ok(())
    }

    /// Every token in the ledger, by service, then creation.
    pub fn tokens(&self) -> Result<Vec<LedgerToken>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY service, created, hash"))
            .map_err(self.q("read tokens"))?;
        let rows = stmt.query_map([], token_row).map_err(self.q("read tokens"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.q("read tokens"))
    }

    /// Every holding, by service, destination, file.
    pub fn holdings(&self) -> Result<Vec<Holding>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {HOLDING_COLUMNS} FROM holdings ORDER BY service, destination, template, updated, content"))
            .map_err(self.q("read holdings"))?;
        let rows = stmt.query_map([], holding_row).map_err(self.q("read holdings"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.q("read holdings"))
    }

    fn holdings_of_file(&self, service: &str, destination: &str, template: &str) -> Result<Vec<Holding>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {HOLDING_COLUMNS} FROM holdings WHERE service = ?1 AND destination = ?2 AND template = ?3 ORDER BY updated, content"
            ))
            .map_err(self.q("read holdings"))?;
        let rows = stmt.query_map(params![service, destination, template], holding_row).map_err(self.q("read holdings"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.q("read holdings"))
    }

    /// Records, in one transaction, what each destination file may hold once `run`'s push to
    /// its host is done, and returns each file's rows as they were before. A file that already
    /// holds the same bytes keeps `holds`; anything else becomes `intended` by `run`.
    pub fn record_intents(&self, run: RunId, intents: &[Intent]) -> Result<Vec<Vec<Holding>>, StateError> {
        let tx = self.conn.unchecked_transaction().map_err(self.q("record intent"))?;
        let mut before = Vec::with_capacity(intents.len());
        let at = now();
        for i in intents {
            before.push(self.holdings_of_file(&i.service, &i.destination, &i.template)?);
            execute_cached(
                &tx,
                "INSERT INTO holdings (service, destination, template, content, host, path, token, state, run_id, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, 'intended', ?7, ?8)
                 ON CONFLICT (service, destination, template, content) DO UPDATE SET
                     host = excluded.host, token = excluded.token, updated = excluded.updated,
                     state = CASE WHEN holdings.state = 'holds' THEN 'holds' ELSE 'intended' END,
                     run_id = CASE WHEN holdings.state = 'holds' THEN holdings.run_id ELSE excluded.run_id END",
                params![i.service, i.destination, i.template, i.content, i.host, i.token, run.0, at],
            )
            .map_err(self.q("record intent"))?;
        }
        tx.commit().map_err(self.q("record intent"))?;
        Ok(before)
    }

    /// Writes settled states, all in one transaction. A row's path is set when the outcome
    /// learnt it and the row had none.
    pub fn record_settled(&self, run: Option<RunId>, settled: &[Settled]) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction().map_err(self.q("record outcome"))?;
        let at = now();
        for s in settled {
            for (content, token, state) in &s.rows {
                execute_cached(
                    &tx,
                    "INSERT INTO holdings (service, destination, template, content, host, path, token, state, run_id, updated)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (service, destination, template, content) DO UPDATE SET
                         state = excluded.state, run_id = excluded.run_id, updated = excluded.updated,
                         path = COALESCE(holdings.path, excluded.path)",
                    params![s.service, s.destination, s.template, content, s.host, s.path, token, state.as_str(), run.map(|r| r.0), at],
                )
                .map_err(self.q("record outcome"))?;
            }
        }
        tx.commit().map_err(self.q("record outcome"))
    }

    /// Drops every holding of one destination (its files were removed).
    pub fn forget_holdings(&self, service: &str, destination: &str) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM holdings WHERE service = ?1 AND destination = ?2", params![service, destination])
            .map_err(self.q("forget holdings"))?;
        Ok(())
    }

    /// Forgets what no decision needs any more: `replaced` holdings of tokens that are revoked,
    /// dead or unknown to the ledger, and revoked or dead tokens, untouched for `keep_secs`,
    /// that nothing refers to.
    pub fn prune_ledger(&self, keep_secs: i64) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction().map_err(self.q("prune ledger"))?;
        tx.execute(
            "DELETE FROM holdings WHERE state = 'replaced'
             AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.hash = holdings.token AND t.state IN ('live', 'revoke-pending'))",
            [],
        )
        .map_err(self.q("prune ledger"))?;
        tx.execute(
            "DELETE FROM tokens WHERE state IN ('revoked', 'dead') AND updated < ?1
             AND NOT EXISTS (SELECT 1 FROM holdings h WHERE h.token = tokens.hash)
             AND NOT EXISTS (SELECT 1 FROM tokens c WHERE c.parent = tokens.hash)",
            params![now() - keep_secs],
        )
        .map_err(self.q("prune ledger"))?;
        tx.commit().map_err(self.q("prune ledger"))
    }

    /// Imports what an older version kept, in one transaction: tokens (`current` marks the
    /// service's current login token) and holdings (recorded as `holds`). Whatever the ledger
    /// already has is left as it is, so the import can be repeated after a crash.
    pub fn import_legacy(&self, tokens: &[(NewToken, bool)], holdings: &[Holding]) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction().map_err(self.q("import kept tokens"))?;
        let at = now();
        for (t, current) in tokens {
            let has_current: bool = tx
                .query_row("SELECT count(*) FROM tokens WHERE service = ?1 AND current = 1", params![t.service], |r| r.get::<_, i64>(0))
                .map_err(self.q("import kept tokens"))?
                > 0;
            tx.execute(
                "INSERT INTO tokens (hash, service, kind, parent, expiry, state, current, run_id, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'live', ?6, NULL, ?7, ?7)
                 ON CONFLICT (hash) DO NOTHING",
                params![t.hash, t.service, t.kind.as_str(), t.parent, t.expiry, *current && !has_current, at],
            )
            .map_err(self.q("import kept tokens"))?;
        }
        for h in holdings {
            tx.execute(
                "INSERT INTO holdings (service, destination, template, content, host, path, token, state, run_id, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9)
                 ON CONFLICT (service, destination, template, content) DO NOTHING",
                params![h.service, h.destination, h.template, h.content, h.host, h.path, h.token, h.state.as_str(), at],
            )
            .map_err(self.q("import kept tokens"))?;
        }
        tx.commit().map_err(self.q("import kept tokens"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(hash: &str, service: &str, kind: TokenKind, parent: Option<&str>) -> NewToken {
        NewToken { hash: hash.into(), service: service.into(), kind, parent: parent.map(str::to_string), expiry: Some(2_000_000_000) }
    }

    fn intent(content: &str, token: &str) -> Intent {
        Intent {
            service: "prod".into(),
            destination: "credd@s1".into(),
            host: "s1".into(),
            template: "/spool/a/prod.top".into(),
            content: content.into(),
            token: token.into(),
        }
    }

    fn states(s: &StateStore) -> Vec<(String, HoldState, Option<i64>)> {
        s.holdings().unwrap().into_iter().map(|h| (h.content, h.state, h.run_id)).collect()
    }

    #[test]
    fn tokens_are_recorded_once_and_one_login_is_current() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(super::super::RunKind::Run, &[]).unwrap();
        s.record_token(Some(run), &token("aaaaaaaaaaaa", "prod", TokenKind::Login, None)).unwrap();
        s.record_token(Some(run), &token("aaaaaaaaaaaa", "prod", TokenKind::Login, None)).unwrap();
        s.record_token(Some(run), &token("bbbbbbbbbbbb", "prod", TokenKind::Login, None)).unwrap();
        s.record_token(Some(run), &token("cccccccccccc", "prod", TokenKind::Child, Some("aaaaaaaaaaaa"))).unwrap();
        assert_eq!(s.current_login("prod").unwrap(), None);
        s.set_current("prod", "aaaaaaaaaaaa").unwrap();
        s.set_current("prod", "bbbbbbbbbbbb").unwrap();
        // A child never becomes current.
        s.set_current("prod", "cccccccccccc").unwrap();
        let cur = s.current_login("prod").unwrap().unwrap();
        assert_eq!((cur.hash.as_str(), cur.run_id), ("bbbbbbbbbbbb", Some(run.0)));
        let all = s.tokens().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().filter(|t| t.current).count(), 1);
        assert_eq!(all.iter().find(|t| t.hash == "cccccccccccc").unwrap().parent.as_deref(), Some("aaaaaaaaaaaa"));
        s.set_token_state("bbbbbbbbbbbb", TokenState::Dead).unwrap();
        assert_eq!(s.current_login("prod").unwrap(), None, "a dead token is no longer current");
    }

    #[test]
    fn intents_keep_what_is_held_and_return_what_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let r1 = s.begin_run(super::super::RunKind::Run, &[]).unwrap();
        let before = s.record_intents(r1, &[intent("c1", "t1")]).unwrap();
        assert_eq!(before, [vec![]]);
        assert_eq!(states(&s), [("c1".into(), HoldState::Intended, Some(r1.0))]);
        let settled = Settled {
            service: "prod".into(),
            destination: "credd@s1".into(),
            host: "s1".into(),
            template: "/spool/a/prod.top".into(),
            path: Some("/spool/a/prod.top".into()),
            rows: vec![("c1".into(), "t1".into(), HoldState::Holds)],
        };
        s.record_settled(Some(r1), &[settled]).unwrap();
        let r2 = s.begin_run(super::super::RunKind::Run, &[]).unwrap();
        // The same bytes again stay `holds`; new bytes are `intended`.
        let before = s.record_intents(r2, &[intent("c1", "t1"), intent("c2", "t2")]).unwrap();
        assert_eq!(before[0].len(), 1);
        assert_eq!(before[0][0].path.as_deref(), Some("/spool/a/prod.top"));
        assert_eq!(states(&s), [("c1".into(), HoldState::Holds, Some(r1.0)), ("c2".into(), HoldState::Intended, Some(r2.0))]);
        s.forget_holdings("prod", "credd@s1").unwrap();
        assert!(s.holdings().unwrap().is_empty());
    }

    #[test]
    fn pruning_keeps_whatever_a_decision_still_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let run = s.begin_run(super::super::RunKind::Run, &[]).unwrap();
        for h in ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "dddddddddddd"] {
            s.record_token(Some(run), &token(h, "prod", TokenKind::Login, None)).unwrap();
        }
        s.record_intents(run, &[intent("c1", "aaaaaaaaaaaa"), intent("c2", "bbbbbbbbbbbb")]).unwrap();
        let settle = |rows: Vec<(&str, &str, HoldState)>| Settled {
            service: "prod".into(),
            destination: "credd@s1".into(),
            host: "s1".into(),
            template: "/spool/a/prod.top".into(),
            path: None,
            rows: rows.into_iter().map(|(c, t, st)| (c.into(), t.into(), st)).collect(),
        };
        s.record_settled(Some(run), &[settle(vec![("c1", "aaaaaaaaaaaa", HoldState::Replaced), ("c2", "bbbbbbbbbbbb", HoldState::Holds)])]).unwrap();
        // A replaced holding of a live token stays until the token is revoked.
        s.prune_ledger(0).unwrap();
        assert_eq!(s.holdings().unwrap().len(), 2);
        s.set_token_state("aaaaaaaaaaaa", TokenState::Revoked).unwrap();
        s.set_token_state("dddddddddddd", TokenState::Dead).unwrap();
        s.prune_ledger(3600).unwrap();
        assert_eq!(s.holdings().unwrap().len(), 1);
        assert_eq!(s.tokens().unwrap().len(), 3, "recent enough to be kept");
        s.prune_ledger(-10).unwrap();
        let left: Vec<String> = s.tokens().unwrap().into_iter().map(|t| t.hash).collect();
        assert_eq!(left, ["bbbbbbbbbbbb"]);
    }

    #[test]
    fn the_import_is_repeatable_and_leaves_newer_facts_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateStore::open(tmp.path()).unwrap();
        let held = Holding {
            service: "prod".into(),
            destination: "credd@s1".into(),
            host: "s1".into(),
            template: "/spool/a/prod.top".into(),
            path: Some("/spool/a/prod.top".into()),
            content: String::new(),
            token: "aaaaaaaaaaaa".into(),
            state: HoldState::Holds,
            run_id: None,
            updated: 0,
        };
        let tokens = vec![(token("aaaaaaaaaaaa", "prod", TokenKind::Login, None), true), (token("bbbbbbbbbbbb", "prod", TokenKind::Login, None), false)];
        s.import_legacy(&tokens, std::slice::from_ref(&held)).unwrap();
        s.import_legacy(&tokens, std::slice::from_ref(&held)).unwrap();
        assert_eq!(s.tokens().unwrap().len(), 2);
        assert_eq!(s.current_login("prod").unwrap().unwrap().hash, "aaaaaaaaaaaa");
        assert_eq!(s.holdings().unwrap().len(), 1);
        // A current token the ledger already has is not displaced by an import.
        s.record_token(None, &token("eeeeeeeeeeee", "crab", TokenKind::Login, None)).unwrap();
        s.set_current("crab", "eeeeeeeeeeee").unwrap();
        s.import_legacy(&[(token("ffffffffffff", "crab", TokenKind::Login, None), true)], &[]).unwrap();
        assert_eq!(s.current_login("crab").unwrap().unwrap().hash, "eeeeeeeeeeee");
    }
}
