//! WLCG scopes (Common JWT profile v1.x): parsing, containment and the least-privilege check.
//!
//! Owns the meaning of a `scope` claim: which capability a scope grants, when one scope covers
//! another, and whether a granted set is both sufficient and no wider than a service may hold.
//! Pure: no IO, no clock, no logging. It never guesses: a scope in the `storage.`/`compute.`/
//! `host.` namespace that it does not fully understand is an error, never silently a harmless name,
//! because an unknown capability must not slip past the "too wide" check.

use std::fmt;
use std::str::FromStr;

/// Operations of the `storage.*` scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StorageOp {
    Read,
    Create,
    Modify,
    Stage,
    Poll,
}

impl StorageOp {
    pub const ALL: [StorageOp; 5] =
        [StorageOp::Read, StorageOp::Create, StorageOp::Modify, StorageOp::Stage, StorageOp::Poll];

    pub fn as_str(self) -> &'static str {
        match self {
            StorageOp::Read => "read",
            StorageOp::Create => "create",
            StorageOp::Modify => "modify",
            StorageOp::Stage => "stage",
            StorageOp::Poll => "poll",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        StorageOp::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Whether holding `self` on a path grants `other` on it. `modify` is a strict superset of
    /// `create`; `stage` includes `poll` but, since profile v1.2, not `read`.
    pub fn covers(self, other: StorageOp) -> bool {
        self == other
            || matches!((self, other), (StorageOp::Modify, StorageOp::Create) | (StorageOp::Stage, StorageOp::Poll))
    }
}

/// Operations of the `compute.*` scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComputeOp {
    Read,
    Modify,
    Create,
    Cancel,
}

impl ComputeOp {
    pub const ALL: [ComputeOp; 4] = [ComputeOp::Read, ComputeOp::Modify, ComputeOp::Create, ComputeOp::Cancel];

    pub fn as_str(self) -> &'static str {
        match self {
            ComputeOp::Read => "read",
            ComputeOp::Modify => "modify",
            ComputeOp::Create => "create",
            ComputeOp::Cancel => "cancel",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        ComputeOp::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// Operations of the `host.*` scopes (profile v1.3: `host.auth`, the token conveys
/// authorization based on its `sub`, a client's host name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostOp {
    Auth,
}

impl HostOp {
    pub const ALL: [HostOp; 1] = [HostOp::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            HostOp::Auth => "auth",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        HostOp::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// One scope of a `scope` claim or of a service's declared needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `storage.<op>:<path>`; `path` is absolute, free of `.`/`..` segments, and a trailing `/`
    /// restricts it to the directory's contents.
    Storage { op: StorageOp, path: String },
    /// `compute.<op>`, which carries no path.
    Compute(ComputeOp),
    /// `host.auth`, which carries no path.
    Host(HostOp),
    /// Any scope outside the capability set (`openid`, `offline_access`, `wlcg`,
    /// `wlcg.groups`, …): grants no capability and only ever matches itself.
    Other(String),
}

/// Why a scope string is not a scope the profile allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("empty scope")]
    Empty,
    #[error("scope {scope:?}: contains whitespace or a control character")]
    BadCharacter { scope: String },
    #[error("scope {scope:?}: unknown storage operation (storage.read|create|modify|stage|poll)")]
    UnknownStorageOp { scope: String },
    #[error("scope {scope:?}: unknown compute operation (compute.read|modify|create|cancel)")]
    UnknownComputeOp { scope: String },
    #[error("scope {scope:?}: a storage scope needs a path, e.g. storage.read:/store")]
    MissingPath { scope: String },
    #[error("scope {scope:?}: the path must be absolute (start with /)")]
    RelativePath { scope: String },
    #[error("scope {scope:?}: the path must not contain . or .. segments")]
    DotSegment { scope: String },
    #[error("scope {scope:?}: compute scopes take no path")]
    ComputeWithPath { scope: String },
    #[error("scope {scope:?}: unknown host operation (host.auth)")]
    UnknownHostOp { scope: String },
    #[error("scope {scope:?}: host scopes take no path")]
    HostWithPath { scope: String },
    #[error("scope {scope:?}: a comma separates scopes in the broker request, so one scope cannot hold one (write it %2C in a path)")]
    Comma { scope: String },
    #[error("scope {scope:?}: scope names are case-sensitive; the profile writes {namespace}")]
    Case { scope: String, namespace: &'static str },
}

const STORAGE_PREFIX: &str = "storage.";
const COMPUTE_PREFIX: &str = "compute.";
const HOST_PREFIX: &str = "host.";

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        // A scope travels space-separated inside one claim; whitespace inside one would make
        // its text mean something else once joined back into a list.
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ScopeError::BadCharacter { scope: s.to_owned() });
        }
        if let Some(rest) = s.strip_prefix(STORAGE_PREFIX) {
            let (name, path) = match rest.split_once(':') {
                Some((name, path)) => (name, Some(path)),
                None => (rest, None),
            };
            let op = StorageOp::from_name(name).ok_or_else(|| ScopeError::UnknownStorageOp { scope: s.to_owned() })?;
            let path = match path {
                None | Some("") => return Err(ScopeError::MissingPath { scope: s.to_owned() }),
                Some(p) => p,
            };
            if !path.starts_with('/') {
                return Err(ScopeError::RelativePath { scope: s.to_owned() });
            }
            // Containment is decided on the text of the path; a `..` would let a path under an
            // allowed prefix name something outside it, and `.` has no business in a grant.
            if path.split('/').any(|seg| seg == ".." || seg == ".") {
                return Err(ScopeError::DotSegment { scope: s.to_owned() });
            }
            return Ok(Scope::Storage { op, path: path.to_owned() });
        }
        if let Some(rest) = s.strip_prefix(COMPUTE_PREFIX) {
            if let Some((name, _)) = rest.split_once(':') {
                return match ComputeOp::from_name(name) {
                    Some(_) => Err(ScopeError::ComputeWithPath { scope: s.to_owned() }),
                    None => Err(ScopeError::UnknownComputeOp { scope: s.to_owned() }),
                };
            }
            let op = ComputeOp::from_name(rest).ok_or_else(|| ScopeError::UnknownComputeOp { scope: s.to_owned() })?;
            return Ok(Scope::Compute(op));
        }
        if let Some(rest) = s.strip_prefix(HOST_PREFIX) {
            if let Some((name, _)) = rest.split_once(':') {
                return match HostOp::from_name(name) {
                    Some(_) => Err(ScopeError::HostWithPath { scope: s.to_owned() }),
                    None => Err(ScopeError::UnknownHostOp { scope: s.to_owned() }),
                };
            }
            let op = HostOp::from_name(rest).ok_or_else(|| ScopeError::UnknownHostOp { scope: s.to_owned() })?;
            return Ok(Scope::Host(op));
        }
        Ok(Scope::Other(s.to_owned()))
    }
}

impl Scope {
    /// A scope as a service declares it (`required`, `allowed`): parsed as a token's would be,
    /// and also refused when it could not travel intact in the broker's comma-separated
    /// `scopes=` list, or when it is a capability name in the wrong case (`Storage.read:/x`
    /// would be requested and matched as a harmless name granting nothing).
    pub fn parse_declared(s: &str) -> Result<Scope, ScopeError> {
        if s.contains(',') {
            return Err(ScopeError::Comma { scope: s.to_owned() });
        }
        for namespace in [STORAGE_PREFIX, COMPUTE_PREFIX, HOST_PREFIX] {
            let head = s.get(..namespace.len());
            if head.is_some_and(|h| h != namespace && h.eq_ignore_ascii_case(namespace)) {
                return Err(ScopeError::Case { scope: s.to_owned(), namespace });
            }
        }
        s.parse()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Storage { op, path } => write!(f, "{STORAGE_PREFIX}{}:{path}", op.as_str()),
            Scope::Compute(op) => write!(f, "{COMPUTE_PREFIX}{}", op.as_str()),
            Scope::Host(op) => write!(f, "{HOST_PREFIX}{}", op.as_str()),
            Scope::Other(name) => f.write_str(name),
        }
    }
}

/// Whether a grant on path `granted` reaches `other`. Hierarchical on `/` boundaries only, so
/// `/store/unmerged` reaches `/store/unmerged/x` but not `/store/unmergedx`; a grant ending in
/// `/` names a directory and so reaches what is inside it (and itself written with the `/`), never
/// the file of the same name without it.
fn path_covers(granted: &str, other: &str) -> bool {
    if granted.ends_with('/') {
        return other.starts_with(granted);
    }
    match other.strip_prefix(granted) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Scope {
    /// Whether holding `self` grants everything `other` grants. Scopes outside the capability
    /// set grant nothing, so they cover only an identical scope.
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Storage { op: g_op, path: g_path }, Scope::Storage { op: o_op, path: o_path }) => {
                g_op.covers(*o_op) && path_covers(g_path, o_path)
            }
            (Scope::Compute(g), Scope::Compute(o)) => g == o,
            (Scope::Host(g), Scope::Host(o)) => g == o,
            (Scope::Other(g), Scope::Other(o)) => g == o,
            _ => false,
        }
    }

    /// Whether this scope grants a storage or compute capability (and so counts for "too wide").
    pub fn is_capability(&self) -> bool {
        !matches!(self, Scope::Other(_))
    }
}

/// Parses a space-separated `scope` claim. An empty claim is an empty list; the first bad
/// scope fails the whole list, because a token whose grants cannot all be understood cannot be
/// shown to be least-privilege.
pub fn parse_scope_list(space_separated: &str) -> Result<Vec<Scope>, ScopeError> {
    space_separated.split_ascii_whitespace().map(Scope::from_str).collect()
}

/// Writes scopes back as a space-separated list.
pub fn format_scope_list(scopes: &[Scope]) -> String {
    scopes.iter().map(Scope::to_string).collect::<Vec<_>>().join(" ")
}

/// One way a granted scope set fails the least-privilege rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeViolation {
    #[error("required scope {required} is not granted")]
    Missing { required: Scope },
    #[error("granted scope {granted} is wider than allowed (allowed: {})", describe_allowed(.allowed))]
    TooWide { granted: Scope, allowed: Vec<Scope> },
}

fn describe_allowed(allowed: &[Scope]) -> String {
    if allowed.is_empty() { "no capability scope".to_owned() } else { format_scope_list(allowed) }
}

/// Least privilege: every `required` scope is covered by some granted scope (a required scope
/// outside the capability set must be granted literally), and every granted capability scope is
/// covered by some `allowed` scope. Granted scopes outside the capability set are never too wide.
/// A service that declares no separate allowance passes its required scopes as `allowed`.
/// Returns every violation, not only the first, so one alert can name them all.
pub fn check_least_privilege(granted: &[Scope], required: &[Scope], allowed: &[Scope]) -> Result<(), Vec<ScopeViolation>> {
    let mut violations = Vec::new();
    for r in required {
        if !granted.iter().any(|g| g.covers(r)) {
            violations.push(ScopeViolation::Missing { required: r.clone() });
        }
    }
    let allowed_caps: Vec<Scope> = allowed.iter().filter(|a| a.is_capability()).cloned().collect();
    for g in granted.iter().filter(|g| g.is_capability()) {
        if !allowed_caps.iter().any(|a| a.covers(g)) {
            violations.push(ScopeViolation::TooWide { granted: g.clone(), allowed: allowed_caps.clone() });
        }
    }
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(text: &str) -> Scope {
        text.parse().unwrap_or_else(|e| panic!("fixture scope {text:?} must parse: {e}"))
    }

    fn list(text: &str) -> Vec<Scope> {
        parse_scope_list(text).unwrap_or_else(|e| panic!("fixture list {text:?} must parse: {e}"))
    }

    #[test]
    fn parsing() {
        fn check(input: &str, expected: Result<Scope, ScopeError>) {
            assert_eq!(input.parse::<Scope>(), expected, "parsing {input:?}");
        }
        use ScopeError as E;
        let storage = |op, path: &str| Ok(Scope::Storage { op, path: path.into() });
        let err = |f: fn(String) -> ScopeError, t: &str| Err(f(t.into()));
        check("storage.read:/", storage(StorageOp::Read, "/"));
        check("storage.create:/store/unmerged", storage(StorageOp::Create, "/store/unmerged"));
        check("storage.modify:/store/user/alice/", storage(StorageOp::Modify, "/store/user/alice/"));
        check("storage.stage:/tape", storage(StorageOp::Stage, "/tape"));
        check("storage.poll:/tape", storage(StorageOp::Poll, "/tape"));
        check("storage.read:/a..b/c", storage(StorageOp::Read, "/a..b/c"));
        check("compute.read", Ok(Scope::Compute(ComputeOp::Read)));
        check("compute.modify", Ok(Scope::Compute(ComputeOp::Modify)));
        check("compute.create", Ok(Scope::Compute(ComputeOp::Create)));
        check("compute.cancel", Ok(Scope::Compute(ComputeOp::Cancel)));
        check("openid", Ok(Scope::Other("openid".into())));
        check("offline_access", Ok(Scope::Other("offline_access".into())));
        check("wlcg", Ok(Scope::Other("wlcg".into())));
        check("wlcg.groups", Ok(Scope::Other("wlcg.groups".into())));
        check("wlcg.groups:/cms", Ok(Scope::Other("wlcg.groups:/cms".into())));
        check("storage", Ok(Scope::Other("storage".into())));
        check("", Err(E::Empty));
        check("storage.read", err(|scope| E::MissingPath { scope }, "storage.read"));
        check("storage.read:", err(|scope| E::MissingPath { scope }, "storage.read:"));
        check("storage.read:store", err(|scope| E::RelativePath { scope }, "storage.read:store"));
        check("storage.read:/store/../etc", err(|scope| E::DotSegment { scope }, "storage.read:/store/../etc"));
        check("storage.read:/store/..", err(|scope| E::DotSegment { scope }, "storage.read:/store/.."));
        check("storage.read:/store/./x", err(|scope| E::DotSegment { scope }, "storage.read:/store/./x"));
        check("storage.write:/store", err(|scope| E::UnknownStorageOp { scope }, "storage.write:/store"));
        check("storage.:/store", err(|scope| E::UnknownStorageOp { scope }, "storage.:/store"));
        check("compute.read:/x", err(|scope| E::ComputeWithPath { scope }, "compute.read:/x"));
        check("compute.submit", err(|scope| E::UnknownComputeOp { scope }, "compute.submit"));
        check("compute.submit:/x", err(|scope| E::UnknownComputeOp { scope }, "compute.submit:/x"));
        check("host.auth", Ok(Scope::Host(HostOp::Auth)));
        check("host.login", err(|scope| E::UnknownHostOp { scope }, "host.login"));
        check("host.auth:/x", err(|scope| E::HostWithPath { scope }, "host.auth:/x"));
        check("storage.frobnicate:/x", err(|scope| E::UnknownStorageOp { scope }, "storage.frobnicate:/x"));
        check("storage.read:/a b", err(|scope| E::BadCharacter { scope }, "storage.read:/a b"));
        check("openid\n", err(|scope| E::BadCharacter { scope }, "openid\n"));
    }

    #[test]
    fn declared_scopes_travel_intact_in_the_broker_request() {
        fn check(input: &str, expected: Result<Scope, ScopeError>) {
            assert_eq!(Scope::parse_declared(input), expected, "declaring {input:?}");
        }
        check("storage.read:/store", Ok(s("storage.read:/store")));
        check("host.auth", Ok(Scope::Host(HostOp::Auth)));
        check("openid", Ok(Scope::Other("openid".into())));
        check("storage.read:/a,storage.modify:/", Err(ScopeError::Comma { scope: "storage.read:/a,storage.modify:/".into() }));
        check("compute.read,compute.cancel", Err(ScopeError::Comma { scope: "compute.read,compute.cancel".into() }));
        check("Storage.read:/x", Err(ScopeError::Case { scope: "Storage.read:/x".into(), namespace: "storage." }));
        check("COMPUTE.read", Err(ScopeError::Case { scope: "COMPUTE.read".into(), namespace: "compute." }));
        check("Host.auth", Err(ScopeError::Case { scope: "Host.auth".into(), namespace: "host." }));
        check("storage.frobnicate", Err(ScopeError::UnknownStorageOp { scope: "storage.frobnicate".into() }));
        check("storage.read:/a%2Cb", Ok(s("storage.read:/a%2Cb")));
    }

    #[test]
    fn scope_lists() {
        fn check(input: &str, expected: Result<Vec<Scope>, ScopeError>) {
            assert_eq!(parse_scope_list(input), expected, "parsing list {input:?}");
        }
        check("", Ok(vec![]));
        check("   ", Ok(vec![]));
        check(
            "openid  storage.read:/ compute.create",
            Ok(vec![Scope::Other("openid".into()), s("storage.read:/"), Scope::Compute(ComputeOp::Create)]),
        );
        check("openid storage.read", Err(ScopeError::MissingPath { scope: "storage.read".into() }));
    }

    #[test]
    fn coverage() {
        fn check(granted: &str, other: &str, expected: bool) {
            assert_eq!(s(granted).covers(&s(other)), expected, "{granted} covers {other}");
        }
        // Hierarchy on path boundaries (profile examples).
        check("storage.create:/store/unmerged", "storage.create:/store/unmerged", true);
        check("storage.create:/store/unmerged", "storage.create:/store/unmerged/x", true);
        check("storage.create:/store/unmerged", "storage.create:/store/unmerged/x/y", true);
        check("storage.create:/store/unmerged", "storage.create:/store/unmergedx", false);
        check("storage.create:/store/unmerged", "storage.create:/store", false);
        check("storage.create:/store/unmerged/x", "storage.create:/store/unmerged", false);
        // A trailing slash means the directory only.
        check("storage.read:/a/", "storage.read:/a/x", true);
        check("storage.read:/a/", "storage.read:/a/", true);
        check("storage.read:/a/", "storage.read:/a", false);
        check("storage.read:/a", "storage.read:/a/", true);
        check("storage.read:/a/", "storage.read:/ab", false);
        // The root covers every path.
        check("storage.read:/", "storage.read:/", true);
        check("storage.read:/", "storage.read:/anything/at/all", true);
        check("storage.read:/store", "storage.read:/", false);
        // modify ⊃ create; stage ⊃ poll; stage ⊅ read (v1.2); nothing else crosses.
        check("storage.modify:/store", "storage.create:/store/x", true);
        check("storage.create:/store", "storage.modify:/store", false);
        check("storage.stage:/tape", "storage.poll:/tape/f", true);
        check("storage.poll:/tape", "storage.stage:/tape", false);
        check("storage.stage:/tape", "storage.read:/tape", false);
        check("storage.read:/store", "storage.stage:/store", false);
        check("storage.modify:/store", "storage.read:/store", false);
        check("storage.read:/store", "storage.create:/store", false);
        // Compute: only itself.
        check("compute.modify", "compute.modify", true);
        check("compute.modify", "compute.create", false);
        check("compute.create", "compute.cancel", false);
        // Scopes outside the capability set cover only themselves and nothing covers them.
        check("openid", "openid", true);
        check("wlcg", "wlcg.groups", false);
        check("storage.read:/", "openid", false);
        check("openid", "storage.read:/", false);
        check("compute.read", "storage.read:/", false);
        check("storage.read:/", "compute.read", false);
    }

    #[test]
    fn capability() {
        fn check(scope: &str, expected: bool) {
            assert_eq!(s(scope).is_capability(), expected, "{scope}");
        }
        check("storage.read:/", true);
        check("compute.cancel", true);
        check("host.auth", true);
        check("openid", false);
        check("offline_access", false);
        check("wlcg", false);
        check("wlcg.groups", false);
        check("eduperson_entitlement", false);
    }

    #[test]
    fn least_privilege() {
        fn check(granted: &str, required: &str, allowed: &str, expected: Result<(), Vec<ScopeViolation>>) {
            assert_eq!(
                check_least_privilege(&list(granted), &list(required), &list(allowed)),
                expected,
                "granted {granted:?} required {required:?} allowed {allowed:?}"
            );
        }
        let missing = |r: &str| ScopeViolation::Missing { required: s(r) };
        let too_wide = |g: &str, a: &str| ScopeViolation::TooWide { granted: s(g), allowed: list(a) };

        check("storage.read:/store compute.create", "storage.read:/store compute.create", "storage.read:/store compute.create", Ok(()));
        // A narrower grant than allowed is fine, as long as it covers what is required.
        check("storage.read:/store/mc", "storage.read:/store/mc/x", "storage.read:/store", Ok(()));
        // Non-capability grants are never too wide; a required one must be granted literally.
        check("openid offline_access storage.read:/store", "openid storage.read:/store", "storage.read:/store", Ok(()));
        check("storage.read:/store", "openid", "storage.read:/store", Err(vec![missing("openid")]));
        check("wlcg.groups:/cms", "wlcg.groups", "", Err(vec![missing("wlcg.groups")]));
        // A wider grant covers the requirement but is refused as too wide.
        check("storage.read:/", "storage.read:/store", "storage.read:/store", Err(vec![too_wide("storage.read:/", "storage.read:/store")]));
        check("storage.modify:/store", "storage.create:/store", "storage.create:/store", Err(vec![too_wide("storage.modify:/store", "storage.create:/store")]));
        check("storage.create:/store/unmergedx", "", "storage.create:/store/unmerged", Err(vec![too_wide("storage.create:/store/unmergedx", "storage.create:/store/unmerged")]));
        check("compute.cancel", "", "", Err(vec![too_wide("compute.cancel", "")]));
        // Allowed scopes outside the capability set allow nothing and are not reported.
        check("compute.cancel", "", "openid", Err(vec![too_wide("compute.cancel", "")]));
        // Every violation is reported, missing ones first.
        check(
            "storage.stage:/tape compute.modify openid",
            "storage.read:/tape compute.create",
            "storage.stage:/tape compute.create",
            Err(vec![missing("storage.read:/tape"), missing("compute.create"), too_wide("compute.modify", "storage.stage:/tape compute.create")]),
        );
        check("", "", "", Ok(()));
    }

    #[test]
    fn violations_name_both_scopes() {
        fn check(v: ScopeViolation, expected: &str) {
            assert_eq!(v.to_string(), expected);
        }
        check(ScopeViolation::Missing { required: s("storage.read:/store") }, "required scope storage.read:/store is not granted");
        check(
            ScopeViolation::TooWide { granted: s("storage.read:/"), allowed: list("storage.read:/store compute.read") },
            "granted scope storage.read:/ is wider than allowed (allowed: storage.read:/store compute.read)",
        );
        check(ScopeViolation::TooWide { granted: s("compute.read"), allowed: vec![] }, "granted scope compute.read is wider than allowed (allowed: no capability scope)");
    }

    fn arb_storage_op() -> impl Strategy<Value = StorageOp> {
        prop::sample::select(StorageOp::ALL.to_vec())
    }

    /// Paths over a tiny alphabet so that generated scopes often nest, share prefixes without a
    /// boundary (`/a` vs `/ab`) and differ only by a trailing slash.
    fn arb_path() -> impl Strategy<Value = String> {
        (prop::collection::vec("[ab]{1,2}", 0..4), any::<bool>()).prop_map(|(segs, dir)| {
            let mut p = format!("/{}", segs.join("/"));
            if dir && !p.ends_with('/') {
                p.push('/');
            }
            p
        })
    }

    fn arb_scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            4 => (arb_storage_op(), arb_path()).prop_map(|(op, path)| Scope::Storage { op, path }),
            1 => prop::sample::select(ComputeOp::ALL.to_vec()).prop_map(Scope::Compute),
            1 => prop::sample::select(HostOp::ALL.to_vec()).prop_map(Scope::Host),
            1 => "[a-z][a-z_.:/]{0,12}"
                .prop_filter("outside the capability namespaces", |t| ![STORAGE_PREFIX, COMPUTE_PREFIX, HOST_PREFIX].iter().any(|p| t.starts_with(p)))
                .prop_map(Scope::Other),
        ]
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(scope in arb_scope()) {
            prop_assert_eq!(scope.to_string().parse::<Scope>(), Ok(scope.clone()));
        }

        #[test]
        fn lists_round_trip(scopes in prop::collection::vec(arb_scope(), 0..6)) {
            prop_assert_eq!(parse_scope_list(&format_scope_list(&scopes)), Ok(scopes.clone()));
        }

        #[test]
        fn covers_is_reflexive(scope in arb_scope()) {
            prop_assert!(scope.covers(&scope));
        }

        #[test]
        fn covers_is_transitive(a in arb_scope(), b in arb_scope(), c in arb_scope()) {
            if a.covers(&b) && b.covers(&c) {
                prop_assert!(a.covers(&c), "{} covers {} covers {}", a, b, c);
            }
        }

        #[test]
        fn covers_is_antisymmetric(a in arb_scope(), b in arb_scope()) {
            if a.covers(&b) && b.covers(&a) {
                prop_assert_eq!(a, b);
            }
        }

        #[test]
        fn prefix_without_boundary_never_covers(op in arb_storage_op(), base in arb_path(), tail in "[a-z0-9_]{1,4}") {
            let base = base.trim_end_matches('/').to_owned();
            prop_assume!(!base.is_empty());
            let granted = Scope::Storage { op, path: base.clone() };
            let other = Scope::Storage { op, path: format!("{base}{tail}") };
            prop_assert!(!granted.covers(&other), "{} must not cover {}", granted, other);
        }

        #[test]
        fn anything_inside_a_grant_is_covered(op in arb_storage_op(), base in arb_path(), sub in "[a-z0-9_]{1,4}(/[a-z0-9_]{1,4}){0,2}") {
            let inside = format!("{}/{sub}", base.trim_end_matches('/'));
            let granted = Scope::Storage { op, path: base.clone() };
            let other = Scope::Storage { op, path: inside };
            prop_assert!(granted.covers(&other), "{} must cover {}", granted, other);
        }

        #[test]
        fn a_granted_set_passes_exactly_its_own_check(granted in prop::collection::vec(arb_scope(), 0..5)) {
            prop_assert_eq!(check_least_privilege(&granted, &granted, &granted), Ok(()));
        }

        #[test]
        fn an_empty_allowance_refuses_every_capability(granted in prop::collection::vec(arb_scope(), 0..5)) {
            let result = check_least_privilege(&granted, &[], &[]);
            let caps = granted.iter().filter(|g| g.is_capability()).count();
            match result {
                Ok(()) => prop_assert_eq!(caps, 0),
                Err(v) => prop_assert_eq!(v.len(), caps),
            }
        }
    }
}
