//! The `idtokens` table: every HTCondor IDToken the bastion minted, by fingerprint, with the
//! claims it was checked against (jti, sub, iat, exp, kid), the request it answered, and where
//! it stands (the service's current token, superseded by a newer one, or denied by a drill).
//!
//! Storage only: when a token is minted, rotated or denied is `crate::idtoken`'s business. No
//! token bytes here.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{RunId, StateError, StateStore};

/// Where an IDToken stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdTokenState {
    /// The one the service's destinations should hold.
    Current,
    /// A newer one replaced it; it stays valid at the daemons until it expires.
    Superseded,
    /// A `revoke --idtoken` drill told the daemons to refuse it.
    Denied,
}

impl IdTokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            IdTokenState::Current => "current",
            IdTokenState::Superseded => "superseded",
            IdTokenState::Denied => "denied",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "current" => IdTokenState::Current,
            "superseded" => IdTokenState::Superseded,
            "denied" => IdTokenState::Denied,
            _ => return None,
        })
    }
}

/// One row of `idtokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdTokenRecord {
    /// Short hash of the token.
    pub hash: String,
    pub service: String,
    pub jti: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub kid: String,
    /// What was asked of `condor_token_create` (`IdTokenSpec::request`).
    pub request: String,
    pub state: IdTokenState,
    pub run_id: Option<i64>,
    pub created: i64,
}

const COLUMNS: &str = "hash, service, jti, sub, iat, exp, kid, request, state, run_id, created";

fn row(r: &Row<'_>) -> rusqlite::Result<IdTokenRecord> {
    let state: String = r.get(8)?;
    Ok(IdTokenRecord {
        hash: r.get(0)?,
        service: r.get(1)?,
        jti: r.get(2)?,
        sub: r.get(3)?,
        iat: r.get(4)?,
        exp: r.get(5)?,
        kid: r.get(6)?,
        request: r.get(7)?,
        state: IdTokenState::parse(&state)
            .ok_or_else(|| rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, format!("unknown IDToken state {state}").into()))?,
        run_id: r.get(9)?,
        created: r.get(10)?,
    })
}

impl StateStore {
    /// Records a freshly minted IDToken as the service's current one; the one it replaces
    /// becomes superseded. Recording the same token again changes nothing.
    pub fn record_idtoken(&self, run: Option<RunId>, t: &IdTokenRecord) -> Result<(), StateError> {
        let at = chrono::Utc::now().timestamp();
        let tx = self.conn.unchecked_transaction().map_err(self.q("record IDToken"))?;
        let known: i64 = tx.query_row("SELECT count(*) FROM idtokens WHERE hash = ?1", params![t.hash], |r| r.get(0)).map_err(self.q("record IDToken"))?;
        if known > 0 {
            return Ok(());
        }
        tx.execute("UPDATE idtokens SET state = 'superseded', updated = ?2 WHERE service = ?1 AND state = 'current'", params![t.service, at])
            .map_err(self.q("record IDToken"))?;
        tx.execute(
            &format!("INSERT INTO idtokens ({COLUMNS}, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'current', ?9, ?10, ?10)"),
            params![t.hash, t.service, t.jti, t.sub, t.iat, t.exp, t.kid, t.request, run.map(|r| r.0), at],
        )
        .map_err(self.q("record IDToken"))?;
        tx.commit().map_err(self.q("record IDToken"))
    }

    /// The service's current IDToken, if any.
    pub fn current_idtoken(&self, service: &str) -> Result<Option<IdTokenRecord>, StateError> {
        self.conn
            .query_row(&format!("SELECT {COLUMNS} FROM idtokens WHERE service = ?1 AND state = 'current'"), params![service], row)
            .optional()
            .map_err(self.q("read current IDToken"))
    }

    /// Every IDToken minted for `service` (all services when `None`), oldest first.
    pub fn idtokens(&self, service: Option<&str>) -> Result<Vec<IdTokenRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM idtokens WHERE ?1 IS NULL OR service = ?1 ORDER BY created, rowid"))
            .map_err(self.q("read IDTokens"))?;
        let rows = stmt.query_map(params![service], row).map_err(self.q("read IDTokens"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.q("read IDTokens"))
    }

    /// Marks every IDToken of `service` denied (a drill told the daemons to refuse them).
    pub fn deny_idtokens(&self, service: &str) -> Result<(), StateError> {
        self.conn
            .execute("UPDATE idtokens SET state = 'denied', updated = ?2 WHERE service = ?1", params![service, chrono::Utc::now().timestamp()])
            .map_err(self.q("deny IDTokens"))?;
        Ok(())
    }

    /// Records the other files beside an IDToken destination's file (none: the row goes).
    pub fn set_idtoken_neighbours(&self, service: &str, destination: &str, others: &[String]) -> Result<(), StateError> {
        if others.is_empty() {
            self.conn
                .execute("DELETE FROM idtoken_neighbours WHERE service = ?1 AND destination = ?2", params![service, destination])
                .map_err(self.q("record IDToken neighbours"))?;
            return Ok(());
        }
        let json = serde_json::to_string(others).unwrap_or_else(|_| "[]".into());
        self.conn
            .execute(
                "INSERT INTO idtoken_neighbours (service, destination, others, checked) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (service, destination) DO UPDATE SET others = excluded.others, checked = excluded.checked",
                params![service, destination, json, chrono::Utc::now().timestamp()],
            )
            .map_err(self.q("record IDToken neighbours"))?;
        Ok(())
    }

    /// (service, destination, other files) for every IDToken destination that has neighbours.
    pub fn idtoken_neighbours(&self) -> Result<Vec<(String, String, Vec<String>)>, StateError> {
        let mut stmt = self.conn.prepare_cached("SELECT service, destination, others FROM idtoken_neighbours ORDER BY service, destination").map_err(self.q("read IDToken neighbours"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(self.q("read IDToken neighbours"))?;
        rows.map(|r| r.map(|(s, d, o)| (s, d, serde_json::from_str(&o).unwrap_or_default())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.q("read IDToken neighbours"))
    }
}
