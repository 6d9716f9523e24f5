//! The `SEC_TOKEN_REVOCATION_EXPR` the revocation drill installs on the daemons that accept a
//! service's IDTokens: a `config.d` file the bastion owns, whose expression denies the recorded
//! `jti`s and every token for the identity issued before the drill. HTCondor evaluates the
//! expression against a token's claims and refuses the token when it is true.
//!
//! The file keeps what earlier drills denied (its own previous expression, read back) and what
//! the rest of the configuration already says: the value starts from
//! `$(SEC_TOKEN_REVOCATION_EXPR:false)`, the expression defined before this file is read.
//! Pure.

use std::collections::BTreeSet;

/// The name of the bastion's file in `config.d`: late in sort order, so that the expression it
/// extends is every other file's.
pub fn file_name(service: &str) -> String {
    format!("99-token-bastion-revoke-{service}.conf")
}

const KNOB: &str = "SEC_TOKEN_REVOCATION_EXPR";
/// Marks the line holding this file's own clauses, so a later drill finds them again.
const CLAUSES: &str = "# denied:";

/// What a drill denies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub jtis: Vec<String>,
    /// The token's identity (`sub`) and the drill's time: tokens for it issued before are denied.
    pub sub: String,
    pub before: i64,
}

/// A ClassAd string literal.
fn literal(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn clauses_of(d: &Denial) -> Vec<String> {
    let mut out: Vec<String> = d.jtis.iter().map(|j| format!("jti =?= {}", literal(j))).collect();
    out.push(format!("(sub =?= {} && iat < {})", literal(&d.sub), d.before));
    out
}

/// The clauses an earlier version of this file denied.
fn previous_clauses(existing: Option<&str>) -> Vec<String> {
    existing
        .into_iter()
        .flat_map(str::lines)
        .filter_map(|l| l.strip_prefix(CLAUSES))
        .filter_map(|json| serde_json::from_str::<Vec<String>>(json.trim()).ok())
        .flatten()
        .collect()
}

/// The file's new text: the clauses it held before and `denial`'s, merged with whatever the
/// configuration read before it defines.
pub fn config_file(existing: Option<&str>, denial: &Denial) -> String {
    let mut seen = BTreeSet::new();
    let clauses: Vec<String> = previous_clauses(existing).into_iter().chain(clauses_of(denial)).filter(|c| seen.insert(c.clone())).collect();
    format!(
        "# Written by token-bastion's revoke --idtoken drill; merged with any {KNOB} set before this file.\n\
         {CLAUSES} {}\n\
         {KNOB} = ($({KNOB}:false)) || {}\n",
        serde_json::to_string(&clauses).unwrap_or_else(|_| "[]".into()),
        clauses.join(" || ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(jtis: &[&str], before: i64) -> Denial {
        Denial { jtis: jtis.iter().map(|s| s.to_string()).collect(), sub: "wm@cms".into(), before }
    }

    #[test]
    fn a_first_drill_denies_the_jtis_and_older_tokens_of_the_identity() {
        let text = config_file(None, &denial(&["a1", "b2"], 1000));
        assert!(
            text.contains("SEC_TOKEN_REVOCATION_EXPR = ($(SEC_TOKEN_REVOCATION_EXPR:false)) || jti =?= \"a1\" || jti =?= \"b2\" || (sub =?= \"wm@cms\" && iat < 1000)\n"),
            "{text}"
        );
    }

    #[test]
    fn a_second_drill_keeps_what_the_first_denied() {
        let first = config_file(None, &denial(&["a1"], 1000));
        let second = config_file(Some(&first), &denial(&["a1", "c3"], 2000));
        assert!(second.contains("jti =?= \"a1\" || (sub =?= \"wm@cms\" && iat < 1000) || jti =?= \"c3\" || (sub =?= \"wm@cms\" && iat < 2000)"), "{second}");
        assert_eq!(second.lines().last().unwrap().matches("jti =?= \"a1\"").count(), 1, "denied once: {second}");
    }

    #[test]
    fn quotes_cannot_end_a_literal() {
        assert_eq!(literal("a\"b\\"), "\"a\\\"b\\\\\"");
    }
}
