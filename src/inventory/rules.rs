//! The rules single values of `services.yaml` must follow, as pure functions: name grammars,
//! bounds on durations, URL and path rules, where a token file may lie. No IO and no
//! diagnostics: each rule says why a value is refused, [`super::validate`] says where.

use std::borrow::Cow;
use std::time::Duration;

use crate::schedule::Schedule;

/// The most of an operator's value a message repeats.
pub(super) const MAX_SHOWN_VALUE: usize = 80;

/// An operator's value as a message shows it: one line, bounded.
pub(super) fn shown(value: &str) -> Cow<'_, str> {
    crate::redact::excerpt(value, MAX_SHOWN_VALUE)
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// A handle's name: letters, digits and hyphens, as HTCondor 25.13+ wants provider and handle
/// names (the credmon finds a handle's parent by stripping the last `_…`).
pub(super) fn is_handle_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Characters HTCondor allows in a credd service name.
pub(super) fn is_credd_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-+=_.".contains(c))
}

/// Why `s` cannot be a Unix account or group name (`useradd`'s rules): it becomes a directory
/// name in the credd spool and an argument to `chown`.
pub(super) fn account_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 32 {
        Some("an account name has 1 to 32 characters")
    } else if s == "." || s == ".." {
        Some("`.` and `..` name directories, not accounts")
    } else if s.starts_with('-') {
        Some("an account name cannot start with `-`")
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        Some("an all-digit name would be read as a numeric id")
    } else if !s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        Some("an account name holds only letters, digits, `.`, `_` and `-`")
    } else {
        None
    }
}

/// Why `s` cannot be a host name or IP address to connect to.
pub(super) fn address_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("an address is a host name or an IP address")
    } else if !s.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c)) {
        Some("an address is a host name or an IP address (letters, digits, `.`, `-`, `_`, `:`)")
    } else {
        None
    }
}

/// Why `s` cannot be one audience: audiences are compared exactly and requested as a
/// comma-separated list, so a comma would smuggle in a second one.
pub(super) fn audience_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("an audience cannot be empty")
    } else if s.contains(',') {
        Some("a comma separates audiences in the broker request: one audience cannot hold one")
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("an audience holds no whitespace or control characters")
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// The range a duration setting must lie in, and why.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    pub min: Duration,
    pub max: Duration,
    /// Why less than `min` cannot work.
    pub below: &'static str,
    /// Why more than `max` cannot work.
    pub above: &'static str,
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// `broker.timeout`, `hosts.*.timeout`, `notify.smtp.timeout`.
pub(super) const TIMEOUT: Bounds = Bounds {
    min: SECOND,
    max: Duration::from_secs(600),
    below: "every request would fail before an answer could come",
    above: "one unresponsive peer would hold a cycle that long",
};
/// `min_access_lifetime`: the WLCG profile's longest access token lives 6 h.
pub(super) const ACCESS_LIFETIME: Bounds = Bounds {
    min: MINUTE,
    max: Duration::from_secs(6 * 3600),
    below: "a token about to expire would be delivered",
    above: "longer than the 6 h an access token may live: no token could pass",
};
/// `min_vault_lifetime`, `renew_before`, `expiry_warning`, a file's `ttl`: HTVault caps Vault
/// token leases at 28 days.
pub(super) const VAULT_LIFETIME: Bounds = Bounds {
    min: MINUTE,
    max: Duration::from_secs(28 * 86400),
    below: "a token about to expire would pass as fresh",
    above: "longer than the 28-day lease cap of HTVault: no token could pass",
};
/// `notify.remind_every` (0: on every cycle).
pub(super) const REMIND_EVERY: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(30 * 86400),
    below: "",
    above: "a lasting failure would go unmentioned for more than a month",
};
/// The shortest time between two scheduled runs of a service, unless [`SCHEDULE_FLOOR_ENV`]
/// says otherwise.
pub const SCHEDULE_FLOOR: Duration = MINUTE;

/// An environment variable that lowers [`SCHEDULE_FLOOR`] (a duration such as `1s`, at least one
/// second): for test stacks whose daemon must run cycles seconds apart.
pub const SCHEDULE_FLOOR_ENV: &str = "TOKEN_BASTION_SCHEDULE_FLOOR";

/// The schedule floor in force: [`SCHEDULE_FLOOR`], or the value of [`SCHEDULE_FLOOR_ENV`] when
/// it is a duration of at least one second.
pub(super) fn schedule_floor_from_env() -> Duration {
    std::env::var(SCHEDULE_FLOOR_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .filter(|d| *d >= Duration::from_secs(1))
        .unwrap_or(SCHEDULE_FLOOR)
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Whether `d` lies within `b`, and if not a message saying which way and why.
pub(super) fn within(d: Duration, b: &Bounds) -> Result<(), String> {
    if d < b.min {
        Err(format!("{} is less than {}: {}", human(d), human(b.min), b.below))
    } else if d > b.max {
        Err(format!("{} is more than {}: {}", human(d), human(b.max), b.above))
    } else {
        Ok(())
    }
}

/// The shortest gap between consecutive runs of `schedule`. A schedule whose seconds field
/// holds more than one value fires more than once in every minute it fires at all, and the
/// first few fires after a minute boundary show it.
pub(super) fn shortest_gap(schedule: &Schedule) -> Option<Duration> {
    let mut t = chrono::DateTime::from_timestamp(1_767_225_600, 0)?; // 2026-01-01T00:00:00Z
    let mut shortest: Option<Duration> = None;
    for _ in 0..5 {
        let gap = schedule.interval_after(t)?;
        shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        t = schedule.next_after(t)?;
    }
    shortest
}

// ---------------------------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------------------------

/// What an https URL in the inventory may carry beyond scheme and host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UrlUse {
    /// `broker.url`: a base URL; a path prefix is kept, nothing else.
    Broker,
    /// `issuers.*.url`: an OpenID issuer, which has no query or fragment (OIDC Discovery §4.3,
    /// OAuth 2.0 AS metadata §2).
    Issuer,
}

/// `text` as an https URL fit for `use`: https, a host, no credentials, no fragment, no query.
pub(super) fn https_url(text: &str, use_: UrlUse) -> Result<url::Url, String> {
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        // The URL parser would silently drop tabs and newlines.
        return Err("a URL holds no whitespace or control characters".into());
    }
    let u = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    let what = match use_ {
        UrlUse::Broker => "the broker",
        UrlUse::Issuer => "an issuer",
    };
    if u.scheme() != "https" {
        Err(format!("{what} is reached over https only (https://host[:port]...)"))
    } else if u.host_str().is_none_or(str::is_empty) {
        Err("the URL names no host".into())
    } else if !u.username().is_empty() || u.password().is_some() {
        Err("a URL here must not carry a user or password (user:pass@); credentials go in files".into())
    } else if u.fragment().is_some() {
        Err("a URL here must not carry a #fragment".into())
    } else if u.query().is_some() {
        Err("a URL here must not carry a ?query".into())
    } else {
        Ok(u)
    }
}

/// `broker.vault_url` as the origin written into `.top` files: exactly `https://<host>:8200`
/// (one trailing `/` tolerated), `<host>` a DNS name, an IPv4 address or a bracketed IPv6
/// address. The credmon refuses any scheme but https and any port but 8200, written out, and the
/// bastion appends the `/v1/...` path itself, so nothing else can stand here.
pub(super) fn vault_origin(text: &str) -> Result<&str, &'static str> {
    let origin = text.strip_suffix('/').unwrap_or(text);
    let Some(authority) = origin.strip_prefix("https://") else {
        return Err("the credmon accepts only https:// vault_url values");
    };
    if authority.contains(['/', '?', '#', '\\']) {
        return Err("give the origin only (https://host:8200); the /v1/secret/oauth/... path is appended per service");
    }
    if authority.contains('@') {
        return Err("a vault_url must not carry a user or password (user:pass@)");
    }
    let Some(host) = authority.strip_suffix(":8200") else {
        return Err("the credmon accepts only port 8200, written out (https://host:8200)");
    };
    let dns = !host.is_empty()
        && host.split('.').all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let ipv6 = host.len() > 2
        && host.starts_with('[')
        && host.ends_with(']')
        && host[1..host.len() - 1].chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    if dns || ipv6 {
        Ok(origin)
    } else {
        Err("the host of a vault_url is a DNS name or an IP address (https://host:8200)")
    }
}

/// The host of a `vault_origin` (`https://<host>:8200`), brackets of an IPv6 address removed.
pub(super) fn vault_host(origin: &str) -> &str {
    let authority = origin.strip_prefix("https://").unwrap_or(origin);
    unbracket(authority.strip_suffix(":8200").unwrap_or(authority))
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Why `entry` cannot stand in `trusted_vault_hosts`: HTCondor's `TRUSTED_VAULT_HOSTS` takes
/// bare host names (a DNS name or an IP address), one per entry.
pub(super) fn trusted_host_problem(entry: &str) -> Option<&'static str> {
    let bare = unbracket(entry);
    if entry.contains("://") || entry.contains('/') {
        Some("give the host name only, without scheme or path (vault.example.org)")
    } else if entry.contains([',', ' ', '\t']) {
        Some("one host per entry: write a YAML list")
    } else if bare.contains(':') {
        let ipv6 = bare.matches(':').count() >= 2 && bare.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        (!ipv6).then_some("give the host name only, without a port (vault.example.org)")
    } else if !bare.is_empty() && bare.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')) {
        None
    } else {
        Some("not a host name (a DNS name or an IP address)")
    }
}

/// Whether the trusted host `entry` names `host` (host names compare without regard to case).
pub(super) fn trusted_host_matches(entry: &str, host: &str) -> bool {
    unbracket(entry).eq_ignore_ascii_case(host)
}

/// Why the Vault credmon would refuse `url` as a `.top` file's `vault_url`: it must be https,
/// port 8200, and a path starting `/v1` (`VaultCredmon.request_url`).
pub(super) fn credmon_refuses(url: &str) -> Option<&'static str> {
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(_) => return Some("not a URL"),
    };
    if parsed.scheme() != "https" {
        Some("not https")
    } else if parsed.port() != Some(8200) {
        Some("not port 8200")
    } else if !parsed.path().starts_with("/v1") {
        Some("the path does not start with /v1")
    } else if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        Some("it carries credentials or a fragment")
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// Why `p` cannot be an absolute, normalized path: no control characters, no empty, `.` or `..`
/// components (so that "lies under" can be decided on the text).
pub(super) fn path_problem(p: &str) -> Option<&'static str> {
    if p.chars().any(char::is_control) {
        Some("a path holds no control characters (newline, tab, escape)")
    } else if !p.starts_with('/') {
        Some("must be an absolute path")
    } else if p.len() > 1 && p[1..].trim_end_matches('/').split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        Some("a path holds no empty, `.` or `..` components")
    } else {
        None
    }
}

/// Whether `path` is `dir` or lies below it, on a component boundary (`/data` holds `/data/x`,
/// not `/database`).
pub(crate) fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    dir.is_empty() || path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Directories a token file never goes into, whatever the host's `file_roots` say: the system's
/// own files and programs, and the HTCondor state a credd reads.
pub(super) const SYSTEM_DIRS: &[&str] = &["/etc", "/bin", "/sbin", "/usr", "/boot", "/proc", "/sys", "/dev", "/var/lib/condor"];

/// The system directory `path` lies in, if any (`/lib`, `/lib64` and every other top-level
/// `lib*` count).
pub(super) fn system_dir_of(path: &str) -> Option<String> {
    if let Some(d) = SYSTEM_DIRS.iter().find(|d| is_under(path, d)) {
        return Some(d.to_string());
    }
    let top = path.trim_start_matches('/').split('/').next().unwrap_or("");
    top.starts_with("lib").then(|| format!("/{top}"))
}

/// Where token files may go on a host that names no `file_roots`: the temporary directories
/// htgettoken itself writes to (`/tmp`, `$XDG_RUNTIME_DIR` under `/run/user`), users' homes and
/// the conventional data area; never a system directory.
pub const DEFAULT_FILE_ROOTS: &[&str] = &["/tmp", "/var/tmp", "/run/user", "/home", "/data"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        fn check(name: &str, ok: bool) {
            assert_eq!(account_problem(name).is_none(), ok, "{name:?}: {:?}", account_problem(name));
        }
        for good in ["cmst1", "cms1315", "svc.user", "a_b-c", "condor"] {
            check(good, true);
        }
        for bad in ["", ".", "..", "-x", "1000", "a b", "a/b", "a:b", "x\n", &"a".repeat(33)] {
            check(bad, false);
        }
    }

    #[test]
    fn bounds() {
        assert!(within(Duration::from_secs(30), &TIMEOUT).is_ok());
        let e = within(Duration::ZERO, &TIMEOUT).unwrap_err();
        assert!(e.starts_with("0s is less than 1s: "), "{e}");
        let e = within(Duration::from_secs(7 * 3600), &ACCESS_LIFETIME).unwrap_err();
        assert!(e.starts_with("7h is more than 6h: ") && e.contains("6 h"), "{e}");
        assert!(within(Duration::from_secs(28 * 86400), &VAULT_LIFETIME).is_ok());
        assert!(within(Duration::from_secs(28 * 86400 + 1), &VAULT_LIFETIME).is_err());
    }

    #[test]
    fn schedule_gaps() {
        fn check(expr: &str, secs: u64) {
            let s = Schedule::parse(expr).unwrap();
            assert_eq!(shortest_gap(&s), Some(Duration::from_secs(secs)), "{expr}");
        }
        check("@hourly", 3600);
        check("* * * * *", 60);
        check("* * * * * *", 1);
        check("0,30 * * * * *", 30);
        check("0,1 0 0 1 1 *", 1);
        check("0 9,17 * * *", 8 * 3600);
    }

    #[test]
    fn urls() {
        let ok = |t: &str, u| https_url(t, u).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(ok("https://vault.example:8200", UrlUse::Broker), Ok(()));
        assert_eq!(ok("https://vault.example:8200/prefix", UrlUse::Broker), Ok(()));
        assert_eq!(ok("https://iam.example/", UrlUse::Issuer), Ok(()));
        for (bad, needle) in [
            ("http://vault.example", "https only"),
            ("https://user:pw@vault.example", "user or password"),
            ("https://user@vault.example", "user or password"),
            ("https://vault.example/#x", "fragment"),
            ("https://vault.example/?a=b", "query"),
            ("https://vault.example/\n", "control"),
            ("https://", "not a URL"),
        ] {
            let e = ok(bad, UrlUse::Broker).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn vault_origins() {
        fn check(text: &str, expected: Result<&str, &str>) {
            match (vault_origin(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        check("https://vault.example:8200", Ok("https://vault.example:8200"));
        check("https://vault.example:8200/", Ok("https://vault.example:8200"));
        check("https://10.0.0.1:8200", Ok("https://10.0.0.1:8200"));
        check("https://[::1]:8200", Ok("https://[::1]:8200"));
        check("http://vault.example:8200", Err("only https"));
        check("HTTPS://vault.example:8200", Err("only https"));
        check("https://vault.example", Err("port 8200"));
        check("https://vault.example:08200", Err("port 8200"));
        check("https://vault.example:8201", Err("port 8200"));
        check("https://vault.example:8200//", Err("origin only"));
        check("https://vault.example:8200/v1", Err("origin only"));
        check("https://vault.example:8200#x", Err("origin only"));
        check("https://vault.example:8200?x", Err("origin only"));
        check("https://vault.example:8200\\", Err("origin only"));
        check("https://u:p@vault.example:8200", Err("user or password"));
        check("https://:8200", Err("DNS name"));
        check("https://vault..example:8200", Err("DNS name"));
        check("https://vault example:8200", Err("DNS name"));
    }

    #[test]
    fn paths_and_roots() {
        for good in ["/tmp/x", "/data/tier0/bt_u{uid}", "/"] {
            assert_eq!(path_problem(good), None, "{good}");
        }
        for bad in ["tmp/x", "/tmp/../etc/passwd", "/tmp/./x", "/tmp//x", "/tmp/x\n", "/tmp/\u{1b}x"] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
        assert!(is_under("/data/x", "/data") && is_under("/data", "/data") && is_under("/data/x", "/data/"));
        assert!(!is_under("/database", "/data") && !is_under("/dat", "/data"));
        assert!(is_under("/anything", "/"));
        assert_eq!(system_dir_of("/etc/passwd").as_deref(), Some("/etc"));
        assert_eq!(system_dir_of("/lib64/x").as_deref(), Some("/lib64"));
        assert_eq!(system_dir_of("/var/lib/condor/tokens.d/t").as_deref(), Some("/var/lib/condor"));
        assert_eq!(system_dir_of("/library/x").as_deref(), Some("/library"));
        assert_eq!(system_dir_of("/etcetera/x"), None);
        assert_eq!(system_dir_of("/tmp/x"), None);
    }

    #[test]
    fn the_credmon_rule() {
        assert_eq!(credmon_refuses("https://v.example:8200/v1/secret/oauth/creds/cms/a:b"), None);
        assert!(credmon_refuses("https://v.example/v1/x").is_some());
        assert!(credmon_refuses("https://v.example:8200/x").is_some());
        assert!(credmon_refuses("http://v.example:8200/v1/x").is_some());
        assert!(credmon_refuses("https://v.example:8200#/v1/x").is_some());
    }
}
