//! Whether a schedd's Vault credmon is refreshing a destination, judged from what a probe saw
//! over SSH before the cycle wrote anything (`deliver::CredmonSeen`) and what was recorded
//! about the destination before.
//!
//! The Vault credmon touches `<spool>/CREDMON_COMPLETE` after every scan (every 60 s, or at
//! once on SIGHUP), keeps its pid in `<spool>/pid`, and rewrites a `.use` when the `.top` is
//! newer or when the `.use` is older than its refresh interval (`CREDMON_OAUTH_TOKEN_REFRESH`,
//! 20 min by default; each schedd's own value, read by `crate::credd_names`, goes into
//! [`Rules::refresh`]). SFTP shows mtimes only (not ctimes), so mtimes are what is compared; the
//! host's clock is compared with this one's, within [`Rules::slack`].
//!
//! Pure: no IO, the clock passed in. Never sees a token or a fingerprint of one: only times.

use std::time::Duration;

use crate::deliver::{CredmonSeen, FileSeen, Liveness};

/// How long the credmon may take, as the Vault credmon is configured by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Between two scans (the credmon sleeps 60 s, or less when woken by SIGHUP).
    pub scan: Duration,
    /// `CREDMON_OAUTH_TOKEN_REFRESH`: a `.use` older than this is rewritten.
    pub refresh: Duration,
    /// Added to every bound: a slow scan, the clocks of two hosts.
    pub slack: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { scan: Duration::from_secs(60), refresh: Duration::from_secs(20 * 60), slack: Duration::from_secs(120) }
    }
}

/// What a destination's credmon came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredmonState {
    /// Alive, and the `.use` is as fresh as the credmon keeps it.
    Refreshing,
    /// Not scanning: no `CREDMON_COMPLETE`, a stale one, or no running process behind `<spool>/pid`.
    Stuck,
    /// Scanning, but this destination's `.use` is not being rewritten.
    NotRefreshing,
    /// Not known: not looked at yet, nothing delivered there yet, or the probe failed.
    Unknown,
}

impl CredmonState {
    pub fn as_str(self) -> &'static str {
        match self {
            CredmonState::Refreshing => "refreshing",
            CredmonState::Stuck => "stuck",
            CredmonState::NotRefreshing => "not_refreshing",
            CredmonState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<CredmonState> {
        [CredmonState::Refreshing, CredmonState::Stuck, CredmonState::NotRefreshing, CredmonState::Unknown]
            .into_iter()
            .find(|c| c.as_str() == s)
    }

    /// A state on-call must hear about.
    pub fn is_alarm(self) -> bool {
        matches!(self, CredmonState::Stuck | CredmonState::NotRefreshing)
    }
}

impl std::fmt::Display for CredmonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredmonCheck {
    pub state: CredmonState,
    /// Why, in words naming the file and how old it is.
    pub reason: String,
    /// When the credmon was seen to rewrite this `.use` (its mtime, unix seconds), if it was.
    pub refreshed_at: Option<i64>,
}

/// Judges one destination. `now` is unix seconds here; `bastion_wrote_use` is the host's mtime
/// of the `.use` the bastion itself last wrote (a newer one is the credmon's work).
pub fn assess(seen: &CredmonSeen, file: &FileSeen, now: i64, bastion_wrote_use: Option<i64>, rules: &Rules) -> CredmonCheck {
    let spool = seen.spool.trim_end_matches('/');
    let scan_bound = secs(rules.scan + rules.slack);
    let refreshed_at = match (&file.use_file, bastion_wrote_use) {
        (Ok(Some(m)), Some(w)) if *m > w => Some(*m),
        (Ok(Some(m)), None) => Some(*m),
        _ => None,
    };
    let check = |state, reason: String| CredmonCheck { state, reason, refreshed_at };
    // Nothing delivered there yet: nothing for the credmon to refresh.
    match &file.top {
        Err(e) => return check(CredmonState::Unknown, e.clone()),
        Ok(None) => return check(CredmonState::Unknown, "no .top there yet".into()),
        Ok(Some(_)) => {}
    }
    // Neither trace a credmon leaves: none has ever run on this spool.
    if matches!((&seen.complete, &seen.process), (Ok(None), Liveness::NoPidFile)) {
        return check(CredmonState::Unknown, format!("no credmon has run on {spool}: neither CREDMON_COMPLETE nor a pid file"));
    }
    match &seen.complete {
        Err(e) => return check(CredmonState::Unknown, e.clone()),
        Ok(None) => {
            return check(CredmonState::Stuck, format!("no {spool}/CREDMON_COMPLETE: the credmon has not finished a scan"));
        }
        Ok(Some(t)) if now - t > scan_bound => {
            return check(
                CredmonState::Stuck,
                format!("{spool}/CREDMON_COMPLETE was last touched {} ago: the credmon has stopped scanning", ago(now - t)),
            );
        }
        Ok(Some(_)) => {}
    }
    match &seen.process {
        Liveness::Running(_) => {}
        Liveness::Gone(pid) => return check(CredmonState::Stuck, format!("{spool}/pid names process {pid}, which is not running")),
        Liveness::NoPidFile => return check(CredmonState::Stuck, format!("no {spool}/pid: no credmon is running")),
        Liveness::Unknown(e) => return check(CredmonState::Unknown, e.clone()),
    }
    let (Ok(Some(top)), Ok(used)) = (&file.top, &file.use_file) else {
        let e = file.use_file.as_ref().err().cloned().unwrap_or_default();
        return check(CredmonState::Unknown, e);
    };
    let (top, used) = (*top, *used);
    match used {
        None if now - top > scan_bound => check(
            CredmonState::NotRefreshing,
            format!("the .use is missing though the .top is {} old: the credmon does not write it", ago(now - top)),
        ),
        None => check(CredmonState::Unknown, "the .use is not written yet".into()),
        Some(used) if used < top && now - top > scan_bound => check(
            CredmonState::NotRefreshing,
            format!("the .use is older than the .top delivered {} ago: the credmon has not used the new Vault token", ago(now - top)),
        ),
        Some(used) if now - used > secs(rules.refresh) + scan_bound => check(
            CredmonState::NotRefreshing,
            format!("the .use was last rewritten {} ago (refresh interval {})", ago(now - used), ago(secs(rules.refresh))),
        ),
        Some(used) => check(CredmonState::Refreshing, format!("the .use was rewritten {} ago", ago((now - used).max(0)))),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn ago(secs: i64) -> String {
    crate::status::human_duration(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn seen(complete: Option<i64>, process: Liveness, top: Option<i64>, used: Option<i64>) -> (CredmonSeen, FileSeen) {
        let file = FileSeen { id: "d".into(), top: Ok(top), use_file: Ok(used) };
        (CredmonSeen { spool: "/spool/".into(), complete: Ok(complete), process, files: vec![file.clone()] }, file)
    }

    fn check(complete: Option<i64>, process: Liveness, top: Option<i64>, used: Option<i64>, expected: CredmonState, says: &str) {
        let (s, f) = seen(complete, process, top, used);
        let got = assess(&s, &f, NOW, None, &Rules::default());
        assert_eq!(got.state, expected, "{got:?}");
        assert!(got.reason.contains(says), "{:?} does not say {says:?}", got.reason);
    }

    #[test]
    fn verdicts() {
        let run = || Liveness::Running(42);
        let fresh = Some(NOW - 30);
        check(fresh, run(), Some(NOW - 600), Some(NOW - 300), CredmonState::Refreshing, "rewritten 5m 0s ago");
        check(None, run(), fresh, fresh, CredmonState::Stuck, "no /spool/CREDMON_COMPLETE");
        check(None, Liveness::NoPidFile, fresh, fresh, CredmonState::Unknown, "no credmon has run on /spool");
        check(Some(NOW - 4000), Liveness::NoPidFile, fresh, fresh, CredmonState::Stuck, "last touched");
        check(None, Liveness::Gone(42), None, None, CredmonState::Unknown, "no .top");
        check(Some(NOW - 181), run(), fresh, fresh, CredmonState::Stuck, "last touched 3m 1s ago");
        check(Some(NOW - 180), run(), fresh, fresh, CredmonState::Refreshing, "");
        check(fresh, Liveness::Gone(42), fresh, fresh, CredmonState::Stuck, "process 42, which is not running");
        check(fresh, Liveness::NoPidFile, fresh, fresh, CredmonState::Stuck, "no /spool/pid");
        check(fresh, Liveness::Unknown("cannot read".into()), fresh, fresh, CredmonState::Unknown, "cannot read");
        // A new .top the credmon has had a scan and the slack to use.
        check(fresh, run(), Some(NOW - 181), Some(NOW - 200), CredmonState::NotRefreshing, "older than the .top delivered 3m 1s ago");
        check(fresh, run(), Some(NOW - 100), Some(NOW - 200), CredmonState::Refreshing, "");
        // Same second is not older: the credmon compares strictly.
        check(fresh, run(), Some(NOW - 500), Some(NOW - 500), CredmonState::Refreshing, "");
        // A .use not rewritten within the refresh interval, a scan and the slack.
        check(fresh, run(), Some(NOW - 5000), Some(NOW - 1381), CredmonState::NotRefreshing, "last rewritten 23m 1s ago");
        check(fresh, run(), Some(NOW - 5000), Some(NOW - 1380), CredmonState::Refreshing, "");
        check(fresh, run(), Some(NOW - 600), None, CredmonState::NotRefreshing, "the .use is missing");
        check(fresh, run(), Some(NOW - 10), None, CredmonState::Unknown, "not written yet");
        check(fresh, run(), None, None, CredmonState::Unknown, "no .top");
    }

    #[test]
    fn only_a_use_newer_than_the_bastions_own_write_is_the_credmons() {
        let (s, f) = seen(Some(NOW), Liveness::Running(7), Some(NOW - 100), Some(NOW - 100));
        assert_eq!(assess(&s, &f, NOW, Some(NOW - 100), &Rules::default()).refreshed_at, None);
        assert_eq!(assess(&s, &f, NOW, Some(NOW - 101), &Rules::default()).refreshed_at, Some(NOW - 100));
        assert_eq!(assess(&s, &f, NOW, None, &Rules::default()).refreshed_at, Some(NOW - 100));
    }

    #[test]
    fn states_round_trip() {
        for s in [CredmonState::Refreshing, CredmonState::Stuck, CredmonState::NotRefreshing, CredmonState::Unknown] {
            assert_eq!(CredmonState::parse(s.as_str()), Some(s));
        }
        assert!(CredmonState::Stuck.is_alarm() && CredmonState::NotRefreshing.is_alarm());
        assert!(!CredmonState::Refreshing.is_alarm() && !CredmonState::Unknown.is_alarm());
    }
}
