//! What `status` shows: per service × destination, from the state DB and the inventory; and
//! from the token ledger, the Vault tokens that only absent destinations keep alive.
//!
//! Pure: takes the recorded statuses, the ledger, the inventory and the time, returns rows;
//! `main` prints them. The inventory contributes the destinations that were never delivered,
//! each service's `expiry_warning` and which hosts and destinations are gone; the state DB
//! contributes everything that happened.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::credmon::CredmonState;
use crate::cycle::holders_of;
use crate::inventory::{Destination, DestinationKind, FileContent, Inventory};
use crate::secret::Fingerprint;
use crate::state::{DestinationStatus, HoldState, Holding, LedgerToken, TokenKind};

/// How a destination stands, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// What it holds has expired.
    Expired,
    /// Nothing was ever delivered there.
    Never,
    /// Less time left than the service's `expiry_warning`.
    Expiring,
    /// The last attempt failed, but what it holds is still good for longer than the warning.
    Failing,
    Ok,
    /// Recorded in state, but no longer in the inventory.
    Removed,
}

impl Health {
    /// Whether `status` should exit non-zero for this row.
    pub fn needs_attention(self) -> bool {
        matches!(self, Health::Expired | Health::Never | Health::Expiring)
    }

    /// The state as the table and `--json` both write it.
    fn label(self) -> &'static str {
        match self {
            Health::Expired => "expired",
            Health::Never => "never",
            Health::Expiring => "expiring",
            Health::Failing => "failing",
            Health::Ok => "ok",
            Health::Removed => "removed",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusRow {
    pub service: String,
    pub destination: String,
    pub host: String,
    pub health: Health,
    pub last_success: Option<DateTime<Utc>>,
    pub last_attempt: Option<DateTime<Utc>>,
    /// Expiry of the credential the destination depends on (the Vault token for credd and
    /// Vault-token files, the access token for access-token files).
    pub expires: Option<DateTime<Utc>>,
    pub time_left_secs: Option<i64>,
    pub expiry_warning_secs: Option<i64>,
    pub access: Option<Fingerprint>,
    pub consecutive_failures: u32,
    pub failing_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The paths last written there (`{uid}` resolved).
    pub paths: Vec<String>,
    /// The schedd's credmon as last seen (credd destinations).
    pub credmon: Option<CredmonState>,
    pub credmon_reason: Option<String>,
    pub credmon_checked_at: Option<DateTime<Utc>>,
    /// When the credmon was last seen rewriting the destination's `.use`.
    pub credmon_refreshed_at: Option<DateTime<Utc>>,
    /// An IDToken destination: other files found beside it in its `tokens.d` (HTCondor uses the
    /// first usable one in sort order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_token_files: Vec<String>,
}

impl StatusRow {
    /// The destination as the table shows it: a file destination by the path last written
    /// there rather than its template.
    fn shown_destination(&self) -> String {
        match (self.destination.split_once(':'), self.paths.as_slice()) {
            (Some((file_at_host, _)), [path]) if file_at_host.starts_with("file@") => format!("{file_at_host}:{path}"),
            _ => self.destination.clone(),
        }
    }
}

/// One row per destination in the inventory (recorded or not) and per recorded destination no
/// longer in it. Without an inventory (it is invalid), the recorded rows alone, judged without
/// expiry warnings.
pub fn rows(inv: Option<&Inventory>, statuses: &[DestinationStatus], now: DateTime<Utc>) -> Vec<StatusRow> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for st in statuses {
        seen.insert((st.service.clone(), st.destination.clone()));
        let spec = inv.and_then(|inv| inv.services.get(&st.service));
        let in_inventory = inv.is_none() || spec.is_some_and(|s| s.destinations.iter().any(|d| d.id == st.destination));
        let warning = spec.map(|s| s.expiry_warning.as_secs() as i64);
        let left = st.vault_time_left_secs(now);
        let health = match (in_inventory, left, warning) {
            (false, _, _) => Health::Removed,
            (true, None, _) => Health::Never,
            (true, Some(l), _) if l <= 0 => Health::Expired,
            (true, Some(l), Some(w)) if l < w => Health::Expiring,
            _ if st.consecutive_failures > 0 => Health::Failing,
            _ => Health::Ok,
        };
        out.push(StatusRow {
            service: st.service.clone(),
            destination: st.destination.clone(),
            host: st.host.clone(),
            health,
            last_success: st.last_success,
            last_attempt: st.last_attempt,
            expires: st.vault_expiry,
            time_left_secs: left,
            expiry_warning_secs: warning,
            access: st.access.clone(),
            consecutive_failures: st.consecutive_failures,
            failing_since: st.failing_since,
            last_error: st.last_error.clone(),
            paths: st.paths.clone(),
            credmon: st.credmon,
            credmon_reason: st.credmon_reason.clone(),
            credmon_checked_at: st.credmon_checked_at,
            credmon_refreshed_at: st.credmon_refreshed_at,
            other_token_files: Vec::new(),
        });
    }
    for spec in inv.iter().flat_map(|inv| inv.services.values()) {
        for d in &spec.destinations {
            if seen.contains(&(spec.name.clone(), d.id.clone())) {
                continue;
            }
            out.push(StatusRow {
                service: spec.name.clone(),
                destination: d.id.clone(),
                host: d.host.clone(),
                health: Health::Never,
                last_success: None,
                last_attempt: None,
                expires: None,
                time_left_secs: None,
                expiry_warning_secs: Some(spec.expiry_warning.as_secs() as i64),
                access: None,
                consecutive_failures: 0,
                failing_since: None,
                last_error: None,
                paths: Vec::new(),
                credmon: None,
                credmon_reason: None,
                credmon_checked_at: None,
                credmon_refreshed_at: None,
                other_token_files: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| (&a.service, &a.destination).cmp(&(&b.service, &b.destination)));
    out
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `-1h 3m` for something already past.
pub fn human_duration(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    let text = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {sec}s")
    };
    format!("{sign}{text}")
}

/// A destination that may still hold a token but is not being delivered to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AbsentHolder {
    pub destination: String,
    pub host: String,
    pub state: HoldState,
    /// Why it counts as absent: removed from the inventory, or failing since when and why.
    pub why: String,
}

/// A live Vault token, other than a service's current one, that only absent destinations
/// (unreachable or failing, or removed from the inventory) may still hold: it stays live until
/// they are delivered to again or `revoke --host` settles it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeptAliveRow {
    pub service: String,
    /// The token's short hash.
    pub token: String,
    pub kind: TokenKind,
    pub expires: Option<DateTime<Utc>>,
    pub held_at: Vec<AbsentHolder>,
}

/// Why `h`'s destination counts as absent, or `None` while it is being delivered to.
fn absence(inv: Option<&Inventory>, statuses: &[DestinationStatus], h: &Holding) -> Option<String> {
    if let Some(inv) = inv {
        if !inv.hosts.contains_key(&h.host) {
            return Some(format!("host {} removed from the inventory", h.host));
        }
        if !inv.services.get(&h.service).is_some_and(|s| s.destinations.iter().any(|d| d.id == h.destination)) {
            return Some("removed from the inventory".into());
        }
    }
    let st = statuses.iter().find(|s| s.service == h.service && s.destination == h.destination)?;
    (st.consecutive_failures > 0).then(|| {
        let since = st.failing_since.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "?".into());
        format!("failing since {since}: {}", st.last_error.as_deref().unwrap_or("unknown error"))
    })
}

/// Every live token (not a service's current one) whose every possible holder is absent.
pub fn kept_alive(inv: Option<&Inventory>, tokens: &[LedgerToken], holdings: &[Holding], statuses: &[DestinationStatus]) -> Vec<KeptAliveRow> {
    tokens
        .iter()
        .filter(|t| t.state.is_alive() && !t.current)
        .filter_map(|t| {
            let holders = holders_of(t, tokens, holdings);
            let held_at: Vec<AbsentHolder> = holders
                .iter()
                .map_while(|h| {
                    absence(inv, statuses, h).map(|why| AbsentHolder { destination: h.destination.clone(), host: h.host.clone(), state: h.state, why })
                })
                .collect();
            (!holders.is_empty() && held_at.len() == holders.len()).then(|| KeptAliveRow {
                service: t.service.clone(),
                token: t.hash.clone(),
                kind: t.kind,
                expires: t.expiry.and_then(|e| DateTime::from_timestamp(e, 0)),
                held_at,
            })
        })
        .collect()
}

fn kind_label(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Login => "login",
        TokenKind::Child => "child",
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())
}

/// The human table of tokens only absent destinations keep alive (empty when there are none).
pub fn render_kept_alive(rows: &[KeptAliveRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut table = vec![["SERVICE", "TOKEN", "KIND", "EXPIRES", "MAY BE HELD AT"].map(str::to_string).to_vec()];
    for r in rows {
        let held: Vec<String> = r.held_at.iter().map(|h| format!("{} ({}: {})", h.destination, h.host, h.why)).collect();
        table.push(vec![r.service.clone(), format!("sha256={}", r.token), kind_label(r.kind).into(), when(r.expires), held.join("; ")]);
    }
    let hosts: BTreeSet<&str> = rows.iter().flat_map(|r| r.held_at.iter().map(|h| h.host.as_str())).collect();
    format!(
        "\nVault tokens kept alive only by absent destinations (revoked once those are delivered to again, or now with: {}):\n{}",
        hosts.iter().map(|h| format!("token-bastion revoke --host {h}")).collect::<Vec<_>>().join(", "),
        render(&table)
    )
}

/// The human table of the whole ledger: every token, its state and where it may be held.
pub fn render_ledger(tokens: &[LedgerToken], holdings: &[Holding]) -> String {
    let mut table = vec![["SERVICE", "TOKEN", "KIND", "STATE", "EXPIRES", "PARENT", "MAY BE HELD AT"].map(str::to_string).to_vec()];
    for t in tokens {
        let held: Vec<String> =
            holdings.iter().filter(|h| h.token == t.hash && h.state.may_hold()).map(|h| format!("{} ({})", h.destination, h.state.as_str())).collect();
        let state = if t.current { format!("{} (current)", t.state.as_str()) } else { t.state.as_str().to_string() };
        table.push(vec![
            t.service.clone(),
            format!("sha256={}", t.hash),
            kind_label(t.kind).into(),
            state,
            when(t.expiry.and_then(|e| DateTime::from_timestamp(e, 0))),
            t.parent.clone().unwrap_or_else(|| "-".into()),
            if held.is_empty() { "-".into() } else { held.join(", ") },
        ]);
    }
    render(&table)
}

/// Columns padded to their widest cell; the last column is not padded.
fn render(table: &[Vec<String>]) -> String {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Whether one service can submit on one host: what `status --service S --host H` and the
/// daemon's `/ready` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub service: String,
    pub host: String,
    pub ready: bool,
    /// Why, naming the destination that is not ready (or what makes them all ready).
    pub reason: String,
    pub checked_at: DateTime<Utc>,
}

/// Why readiness cannot be answered: the question names nothing in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadinessError {
    #[error("no service `{0}` in the inventory")]
    UnknownService(String),
    #[error("service `{service}` has no destination on host `{host}`")]
    NoDestination { service: String, host: String },
}

/// Ready when every destination of `service` on `host` holds a credential with more than the
/// service's minimum left (`min_vault_lifetime`, or `min_access_lifetime` for an access-token
/// file) and, for a credd destination, a credmon last seen refreshing it.
pub fn readiness(inv: &Inventory, statuses: &[DestinationStatus], service: &str, host: &str, now: DateTime<Utc>) -> Result<Readiness, ReadinessError> {
    let spec = inv.services.get(service).ok_or_else(|| ReadinessError::UnknownService(service.to_string()))?;
    let dests: Vec<&Destination> = spec.destinations.iter().filter(|d| d.host == host).collect();
    if dests.is_empty() {
        return Err(ReadinessError::NoDestination { service: service.to_string(), host: host.to_string() });
    }
    let mut fine = Vec::new();
    let mut problem = None;
    for d in dests {
        let st = statuses.iter().find(|st| st.service == service && st.destination == d.id);
        let minimum = match &d.kind {
            DestinationKind::File { content: FileContent::AccessToken, .. } => spec.min_access_lifetime,
            _ => spec.min_vault_lifetime,
        };
        let minimum = minimum.as_secs() as i64;
        let verdict = match st.and_then(|st| st.vault_time_left_secs(now).map(|left| (st, left))) {
            None => Err(format!("{}: nothing delivered there yet", d.id)),
            Some((_, left)) if left <= minimum => {
                Err(format!("{}: the token there has {} left, not more than the minimum {}", d.id, human_duration(left), human_duration(minimum)))
            }
            Some((st, left)) if matches!(d.kind, DestinationKind::Credd) => match st.credmon {
                Some(CredmonState::Refreshing) => Ok(format!("{}: {} left, credmon refreshing", d.id, human_duration(left))),
                Some(state) => Err(format!("{}: credmon {state}: {}", d.id, st.credmon_reason.as_deref().unwrap_or("no reason recorded"))),
                None => Err(format!("{}: the credmon has not been looked at yet", d.id)),
            },
            Some((_, left)) => Ok(format!("{}: {} left", d.id, human_duration(left))),
        };
        match verdict {
            Ok(line) => fine.push(line),
            Err(why) => {
                problem.get_or_insert(why);
            }
        }
    }
    let (ready, reason) = match problem {
        Some(why) => (false, why),
        None => (true, fine.join("; ")),
    };
    Ok(Readiness { service: service.to_string(), host: host.to_string(), ready, reason, checked_at: now })
}

/// The human table.
pub fn render_table(rows: &[StatusRow], now: DateTime<Utc>) -> String {
    let header = ["SERVICE", "DESTINATION", "STATE", "CREDMON", "LAST SUCCESS", "TIME LEFT", "FAILS", "LAST ERROR"];
    let mut table: Vec<Vec<String>> = vec![header.map(str::to_string).to_vec()];
    for r in rows {
        let last = r.last_success.map(|t| format!("{} ({} ago)", t.format("%Y-%m-%d %H:%M"), human_duration((now - t).num_seconds())));
        let left = r.time_left_secs.map(human_duration);
        let mut error = if r.consecutive_failures > 0 { r.last_error.clone().unwrap_or_default() } else { String::new() };
        if let (Some(_), Some(why)) = (r.credmon.filter(|c| c.is_alarm()), &r.credmon_reason) {
            error = if error.is_empty() { format!("credmon: {why}") } else { format!("{error}; credmon: {why}") };
        }
        table.push(vec![
            r.service.clone(),
            r.shown_destination(),
            r.health.label().to_string(),
            r.credmon.map_or("-", CredmonState::as_str).to_string(),
            last.unwrap_or_else(|| "never".into()),
            left.unwrap_or_else(|| "-".into()),
            r.consecutive_failures.to_string(),
            error,
        ]);
    }
    let mut text = render(&table);
    // A handle taken out of the inventory is no longer written, and nothing removes its files:
    // the credmon keeps refreshing its `.use` while the parent `.top` is there.
    for r in rows.iter().filter(|r| r.health == Health::Removed && r.destination.starts_with("handle@") && !r.paths.is_empty()) {
        text.push_str(&format!(
            "note: {} {}: handle no longer in the inventory; still on {} unless removed by hand: {}\n",
            r.service,
            r.destination,
            r.host,
            r.paths.join(", ")
        ));
    }
    for r in rows.iter().filter(|r| !r.other_token_files.is_empty()) {
        text.push_str(&format!(
            "warning: {} {}: other token files in the same tokens.d: {} (HTCondor uses the first usable one in sort order)\n",
            r.service,
            r.shown_destination(),
            r.other_token_files.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const INV: &str = r#"broker:
  url: https://vault.example:8200
  issuer: cms
  vault_url: https://vault.example:8200
  auth: {method: token_file, path: /etc/tb/token}
issuers:
  iam: {url: "https://iam.example/"}
hosts:
  s1: {address: s1.example, user: root, key_file: /k, known_hosts: /kh, spool: /spool}
services:
  a:
    account: a
    required: [compute.create]
    expiry_warning: 2d
    destinations:
      - credd: {hosts: [s1]}
      - file: {hosts: [s1]}
"#;

    fn status(service: &str, dest: &str, left: Option<i64>, fails: u32, now: DateTime<Utc>) -> DestinationStatus {
        DestinationStatus {
            service: service.into(),
            destination: dest.into(),
            host: "s1".into(),
            last_attempt: Some(now),
            last_success: left.map(|_| now),
            vault_expiry: left.map(|l| now + chrono::Duration::seconds(l)),
            access: None,
            vault_root: None,
            paths: vec![],
            consecutive_failures: fails,
            failing_since: None,
            last_error: (fails > 0).then(|| "deliver: refused".into()),
            credmon: None,
            credmon_reason: None,
            credmon_checked_at: None,
            credmon_refreshed_at: None,
            use_written_at: None,
        }
    }

    fn check(statuses: &[DestinationStatus], expected: &[(&str, Health)]) {
        let inv = crate::inventory::parse(Path::new("inv.yaml"), INV).unwrap();
        let now = Utc::now();
        let got: Vec<(String, Health)> = rows(Some(&inv), statuses, now).into_iter().map(|r| (format!("{}/{}", r.service, r.destination), r.health)).collect();
        let want: Vec<(String, Health)> = expected.iter().map(|(k, h)| (k.to_string(), *h)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn health_follows_time_left_against_the_warning() {
        let now = Utc::now();
        let file = "file@s1:/tmp/vt_u{uid}-cms";
        check(&[], &[("a/credd@s1", Health::Never), (&format!("a/{file}"), Health::Never)]);
        check(
            &[status("a", "credd@s1", Some(3 * 86400), 0, now), status("a", file, Some(86400), 0, now)],
            &[("a/credd@s1", Health::Ok), (&format!("a/{file}"), Health::Expiring)],
        );
        check(
            &[status("a", "credd@s1", Some(3 * 86400), 2, now), status("a", file, Some(-5), 1, now), status("gone", "credd@s1", Some(10), 0, now)],
            &[("a/credd@s1", Health::Failing), (&format!("a/{file}"), Health::Expired), ("gone/credd@s1", Health::Removed)],
        );
    }

    #[test]
    fn without_an_inventory_the_recorded_rows_still_show() {
        let now = Utc::now();
        let got: Vec<Health> = rows(None, &[status("a", "credd@s1", Some(86400), 0, now), status("gone", "credd@s1", Some(-1), 0, now)], now)
            .into_iter()
            .map(|r| r.health)
            .collect();
        assert_eq!(got, [Health::Ok, Health::Expired]);
    }

    #[test]
    fn attention_is_needed_for_expired_never_and_expiring_only() {
        assert!(Health::Expired.needs_attention() && Health::Never.needs_attention() && Health::Expiring.needs_attention());
        assert!(!Health::Ok.needs_attention() && !Health::Failing.needs_attention() && !Health::Removed.needs_attention());
    }

    #[test]
    fn tokens_only_absent_destinations_hold_are_listed() {
        let inv = crate::inventory::parse(Path::new("inv.yaml"), INV).unwrap();
        let now = Utc::now();
        let token = |hash: &str, kind: TokenKind, parent: Option<&str>, current: bool| LedgerToken {
            hash: hash.into(),
            service: "a".into(),
            kind,
            parent: parent.map(str::to_string),
            expiry: Some(now.timestamp() + 3600),
            state: crate::state::TokenState::Live,
            current,
            run_id: None,
            created: 0,
            updated: 0,
        };
        let held = |dest: &str, host: &str, hash: &str| Holding {
            service: "a".into(),
            destination: dest.into(),
            host: host.into(),
            template: "/x".into(),
            path: None,
            content: "c".into(),
            token: hash.into(),
            state: HoldState::Holds,
            run_id: None,
            updated: 0,
        };
        let tokens = vec![
            token("current", TokenKind::Login, None, true),
            token("old", TokenKind::Login, None, false),
            token("parent", TokenKind::Login, None, false),
            token("child", TokenKind::Child, Some("parent"), false),
            token("mixed", TokenKind::Login, None, false),
        ];
        let holdings = vec![
            held("credd@s1", "s1", "current"),
            held("credd@gone", "gone", "old"),
            held("file@s1:/tmp/vt_u{uid}-cms", "s1", "child"),
            held("credd@gone", "gone", "mixed"),
            held("credd@s1", "s1", "mixed"),
        ];
        let file = "file@s1:/tmp/vt_u{uid}-cms";
        // s1's file destination is failing: the child (and through it the parent) is kept alive by it.
        let statuses = vec![status("a", "credd@s1", Some(86400), 0, now), status("a", file, Some(86400), 2, now)];
        let rows = kept_alive(Some(&inv), &tokens, &holdings, &statuses);
        let got: Vec<(&str, Vec<&str>)> = rows.iter().map(|r| (r.token.as_str(), r.held_at.iter().map(|h| h.why.as_str()).collect())).collect();
        assert_eq!(
            got,
            [
                ("old", vec!["host gone removed from the inventory"]),
                ("parent", vec!["failing since ?: deliver: refused"]),
                ("child", vec!["failing since ?: deliver: refused"]),
            ]
        );
        let shown = render_kept_alive(&rows);
        assert!(shown.contains("token-bastion revoke --host gone, token-bastion revoke --host s1") && shown.contains("sha256=old"), "{shown}");
        assert_eq!(render_kept_alive(&[]), "");
        let ledger = render_ledger(&tokens, &holdings);
        assert!(ledger.contains("live (current)") && ledger.contains("credd@gone (holds), credd@s1 (holds)"), "{ledger}");
    }

    #[test]
    fn the_table_and_json_name_states_alike_and_show_the_file_path_written() {
        let now = Utc::now();
        let inv = crate::inventory::parse(Path::new("inv.yaml"), INV).unwrap();
        let mut file = status("a", "file@s1:/tmp/vt_u{uid}-cms", Some(86400), 0, now);
        file.paths = vec!["/tmp/vt_u1000-cms".into()];
        let rows = rows(Some(&inv), &[status("a", "credd@s1", Some(-5), 0, now), file], now);
        let json = serde_json::to_value(&rows).unwrap();
        let table = render_table(&rows, now);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(json[i]["health"], r.health.label());
            assert!(table.lines().any(|l| l.split_whitespace().nth(2) == Some(r.health.label())), "{table}");
        }
        assert!(table.contains("file@s1:/tmp/vt_u1000-cms "), "{table}");
        assert_eq!(json[1]["paths"][0], "/tmp/vt_u1000-cms");
    }

    #[test]
    fn a_handle_taken_out_of_the_inventory_says_what_it_left_on_the_host() {
        let now = Utc::now();
        let inv = crate::inventory::parse(Path::new("inv.yaml"), INV).unwrap();
        let mut gone = status("a", "handle@s1:reader", Some(86400), 0, now);
        gone.paths = vec!["/spool/a/cms_reader.top".into(), "/spool/a/cms_reader.use".into()];
        let rows = rows(Some(&inv), &[status("a", "credd@s1", Some(86400), 0, now), gone], now);
        assert_eq!(rows.iter().find(|r| r.destination == "handle@s1:reader").map(|r| r.health), Some(Health::Removed));
        let table = render_table(&rows, now);
        assert!(
            table.contains("note: a handle@s1:reader: handle no longer in the inventory; still on s1 unless removed by hand: /spool/a/cms_reader.top, /spool/a/cms_reader.use"),
            "{table}"
        );
        assert_eq!(table.matches("note:").count(), 1, "{table}");
    }

    #[test]
    fn ready_only_with_more_than_the_minimum_left_and_a_credmon_seen_refreshing() {
        let inv = crate::inventory::parse(Path::new("inv.yaml"), INV).unwrap();
        let now = Utc::now();
        let day = 86_400;
        let credd = |left: i64, credmon: Option<CredmonState>| DestinationStatus {
            credmon,
            credmon_reason: credmon.map(|c| format!("because {c}")),
            ..status("a", "credd@s1", Some(left), 0, now)
        };
        let file = |left: i64| status("a", "file@s1:/tmp/vt_u{uid}-cms", Some(left), 0, now);
        let check = |statuses: &[DestinationStatus], ready: bool, says: &str| {
            let r = readiness(&inv, statuses, "a", "s1", now).unwrap();
            assert_eq!(r.ready, ready, "{r:?}");
            assert!(r.reason.contains(says), "{:?} does not say {says:?}", r.reason);
            assert_eq!(r.checked_at, now);
        };
        let good = Some(CredmonState::Refreshing);
        check(&[credd(3 * day, good), file(3 * day)], true, "credd@s1: 3d 0h left, credmon refreshing");
        check(&[file(3 * day)], false, "credd@s1: nothing delivered there yet");
        check(&[credd(3 * day, good)], false, "nothing delivered there yet");
        check(&[credd(3 * day, Some(CredmonState::Stuck)), file(3 * day)], false, "credd@s1: credmon stuck: because stuck");
        check(&[credd(3 * day, Some(CredmonState::NotRefreshing)), file(3 * day)], false, "credmon not_refreshing");
        check(&[credd(3 * day, None), file(3 * day)], false, "not been looked at");
        // min_vault_lifetime's default is an hour.
        check(&[credd(3600, good), file(3 * day)], false, "has 1h 0m left, not more than the minimum 1h 0m");
        check(&[credd(3601, good), file(3 * day)], true, "");
        check(&[credd(3 * day, good), file(-5)], false, "file@s1");
        assert_eq!(readiness(&inv, &[], "zz", "s1", now), Err(ReadinessError::UnknownService("zz".into())));
        assert!(matches!(readiness(&inv, &[], "a", "s9", now), Err(ReadinessError::NoDestination { .. })));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(3 * 86400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(human_duration(2 * 3600 + 5 * 60), "2h 5m");
        assert_eq!(human_duration(250), "4m 10s");
        assert_eq!(human_duration(-3780), "-1h 3m");
    }
}
