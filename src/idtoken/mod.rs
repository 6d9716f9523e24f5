//! HTCondor IDTokens: minting on the host that holds the signing key (`condor_token_create`
//! over SSH, the token read from its size-capped stdout), checking what came back against what
//! was asked ([`claims`]), where a token lands on a client host (`~<account>/.condor/tokens.d/
//! <name>`, owned by the account, 0600, written by `deliver`'s safe file writes), and the
//! revocation expression the drill installs ([`revocation`]).
//!
//! Must never: hold or ask for the signing key; put a token, or the stdout that carried it, in
//! an error, a log line or the state database (tokens are named by jti, exp and short hash);
//! deliver a token whose claims differ from the request; touch state (the cycle records).

pub mod claims;
pub mod revocation;

use std::time::Duration;

use crate::deliver::{self, DeliverError, HostPlan, HostTarget, Owner, RemoteDir, RemoteFile};
use crate::inventory::IdTokenSpec;
use crate::secret::Secret;

pub use claims::{ClaimsError, IdTokenClaims};

/// The most `condor_token_create` may print: an IDToken is a few hundred bytes.
pub const MINT_OUTPUT_MAX: usize = 16 * 1024;

/// Mode of a token file: HTCondor skips a token file others can read.
pub const TOKEN_MODE: u32 = 0o600;
/// Mode of `~/.condor` and `tokens.d` when the bastion creates them.
pub const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("service {service}: minting on host {host}: {source}")]
    Mint {
        service: String,
        host: String,
        #[source]
        source: Box<DeliverError>,
    },
    #[error("service {service}: the token minted on host {host} is refused: {source}")]
    Refused {
        service: String,
        host: String,
        #[source]
        source: ClaimsError,
    },
}

/// One word for a POSIX shell, quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `condor_token_create` command line for `spec` (every value was checked to be a plain
/// word by the inventory; quoted all the same).
pub fn mint_command(spec: &IdTokenSpec) -> String {
    let mut cmd = format!(
        "condor_token_create -identity {} -key {} -lifetime {}",
        quote(&spec.identity),
        quote(&spec.key),
        spec.lifetime.as_secs()
    );
    for a in &spec.authz {
        cmd.push_str(&format!(" -authz {}", quote(a)));
    }
    cmd
}

/// Runs `condor_token_create` on the mint host and checks the token against `spec` at `now`
/// (unix seconds). Blocking.
pub fn mint(service: &str, target: &HostTarget, spec: &IdTokenSpec, now: i64) -> Result<(Secret, IdTokenClaims), IdTokenError> {
    let token = deliver::secret_output(target, "mint an IDToken", &mint_command(spec), MINT_OUTPUT_MAX)
        .map_err(|source| IdTokenError::Mint { service: service.into(), host: target.name.clone(), source: Box::new(source) })?;
    let claims = claims::check(&token, spec, now).map_err(|source| IdTokenError::Refused { service: service.into(), host: target.name.clone(), source })?;
    Ok((token, claims))
}

/// A destination path with `~<account>` replaced by the account's home on the host.
pub fn resolve_path(template: &str, account: &str, home: Option<&str>) -> Result<String, String> {
    match template.strip_prefix(&format!("~{account}/")) {
        None => Ok(template.to_string()),
        Some(rest) => match home {
            Some(h) => Ok(format!("{}/{rest}", h.trim_end_matches('/'))),
            None => Err(format!("the home directory of {account} is not known")),
        },
    }
}

/// One IDToken file on one host.
#[derive(Clone, Debug)]
pub struct TokenFile {
    /// Destination id, reported back in the outcome.
    pub id: String,
    /// Resolved absolute path.
    pub path: String,
    /// Where the remote-write rule starts: the account's home for a `~` path, else the host's
    /// file root.
    pub root: String,
    /// The root is the account's home (a `~` path): it belongs to the account too.
    pub root_is_home: bool,
}

/// The plan that writes `token` (and a newline) to `files` on one host, owned by `account`
/// (its primary group), mode 0600. The directories between the root and each file (the
/// `.condor` and `tokens.d` of a home) are the account's: created 0700 when missing, accepted
/// when owned by it or root and writable by nobody else; the root itself too when it is a home.
pub fn host_plan(target: HostTarget, account: &str, files: &[TokenFile], token: &Secret) -> HostPlan {
    let owner = Owner { user: account.to_string(), group: String::new() };
    let mut dirs: Vec<RemoteDir> = Vec::new();
    let content = Secret::new(format!("{}\n", token.expose()));
    for f in files {
        let mut dir = f.path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        // The file's own directory and the one above it (`tokens.d`, `.condor`) belong to the
        // account, and so does the root when it is the account's home.
        for _ in 0..2 {
            if dir.len() <= f.root.len() {
                break;
            }
            if !dirs.iter().any(|d| d.path == dir) {
                dirs.push(RemoteDir { path: dir.clone(), mode: DIR_MODE, owner: Some(owner.clone()), clear_mark: false });
            }
            dir = dir.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        }
        if f.root_is_home && !dirs.iter().any(|d| d.path == f.root) {
            dirs.push(RemoteDir { path: f.root.clone(), mode: DIR_MODE, owner: Some(owner.clone()), clear_mark: false });
        }
    }
    HostPlan {
        target,
        dirs,
        files: files
            .iter()
            .map(|f| RemoteFile {
                id: f.id.clone(),
                path: f.path.clone(),
                root: f.root.clone(),
                uid_of: None,
                content: content.clone(),
                mode: TOKEN_MODE,
                owner: Some(owner.clone()),
                only_if_absent: false,
                after: None,
                keep_if_same: false,
            })
            .collect(),
        signal_credmon: Vec::new(),
        expect_present: Vec::new(),
        read_back: Vec::new(),
        probe_credmon: Vec::new(),
        credd_names: Vec::new(),
    }
}

/// When a token with `exp` must be replaced: less than `renew_before` left at `now`.
pub fn due(exp: i64, renew_before: Duration, now: i64) -> bool {
    exp - now < i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request every test of this module starts from.
    pub(crate) fn spec() -> IdTokenSpec {
        IdTokenSpec {
            identity: "cmst1@cms".into(),
            authz: vec!["READ".into(), "WRITE".into()],
            lifetime: Duration::from_secs(30 * 86400),
            renew_before: Duration::from_secs(7 * 86400),
            key: "WMAGENT".into(),
            issuer: "cms.example".into(),
            mint_host: "cm".into(),
            name: "wmagent".into(),
            revocation_hosts: Vec::new(),
            config_dir: "/etc/condor/config.d".into(),
        }
    }

    #[test]
    fn the_command_asks_for_each_level_with_its_own_flag() {
        assert_eq!(mint_command(&spec()), "condor_token_create -identity 'cmst1@cms' -key 'WMAGENT' -lifetime 2592000 -authz 'READ' -authz 'WRITE'");
    }

    #[test]
    fn a_home_path_is_resolved_on_the_host() {
        assert_eq!(resolve_path("~cmst1/.condor/tokens.d/wm", "cmst1", Some("/home/cmst1/")).unwrap(), "/home/cmst1/.condor/tokens.d/wm");
        assert_eq!(resolve_path("/data/x/wm", "cmst1", None).unwrap(), "/data/x/wm");
        assert!(resolve_path("~cmst1/.condor/tokens.d/wm", "cmst1", None).is_err());
    }

    #[test]
    fn the_account_owns_tokens_d_and_condor_but_not_what_is_above_the_root() {
        let target = HostTarget {
            name: "h".into(),
            address: "127.0.0.1".into(),
            port: 22,
            user: "root".into(),
            key_file: "/k".into(),
            key_passphrase: None,
            known_hosts: "/kh".into(),
            timeout: Duration::from_secs(1),
        };
        let file = TokenFile { id: "idtoken@h:~a/.condor/tokens.d/t".into(), path: "/home/a/.condor/tokens.d/t".into(), root: "/home/a".into(), root_is_home: true };
        let plan = host_plan(target, "a", &[file], &Secret::new("tok"));
        let dirs: Vec<&str> = plan.dirs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(dirs, ["/home/a/.condor/tokens.d", "/home/a/.condor", "/home/a"]);
        assert!(plan.dirs.iter().all(|d| d.mode == 0o700 && d.owner.as_ref().is_some_and(|o| o.user == "a")));
        assert_eq!(plan.files[0].mode, 0o600);
        assert_eq!(plan.files[0].content.expose(), "tok\n");
    }

    #[test]
    fn rotation_is_due_inside_renew_before() {
        assert!(!due(1000 + 8 * 86400, Duration::from_secs(7 * 86400), 1000));
        assert!(due(1000 + 6 * 86400, Duration::from_secs(7 * 86400), 1000));
    }
}
