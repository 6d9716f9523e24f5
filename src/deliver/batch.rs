//! Several remote commands in one exec channel, with a per-command exit status.
//!
//! The few things SFTP cannot do (resolve account names through the host's NSS, `chown -h` a
//! directory just created, `mv -f` where a server lacks `posix-rename@openssh.com`) are shell
//! commands; running them one channel each would cost a round trip and a process per item, so a
//! host's commands of one kind go into as few scripts as the SSH packet limit allows. Each
//! command is followed by a marker line carrying its index and exit status, and its output is
//! attributed to it.
//!
//! Must never see file content: the commands it runs take only paths and account names.

use super::session::Remote;

/// A marker no command output starts a line with by accident.
const MARKER: &str = "@tb-status ";

/// Largest script sent in one exec request: libssh2 refuses a channel request packet of about
/// 32 KiB, so stay well under it.
const MAX_SCRIPT: usize = 16 * 1024;

/// Why one command of a batch did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ItemError {
    /// Its batch could not be started: it did nothing.
    Failed(String),
    /// It ran and exited non-zero; its output (lines trimmed, blank ones left out; shown as one
    /// bounded line).
    Exited { status: i32, output: String },
    /// No status came back (the channel or the connection broke): it may or may not have run.
    Unknown(String),
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemError::Failed(d) => f.write_str(d),
            ItemError::Exited { status, output } => write!(f, "exit status {status}: {}", one_line(output)),
            ItemError::Unknown(d) => write!(f, "outcome unknown: {d}"),
        }
    }
}

/// Runs `commands` in as few exec channels as [`MAX_SCRIPT`] allows; per command its output
/// (`Ok` on exit status 0) or why not.
pub(crate) fn run(remote: &Remote, purpose: &str, commands: Vec<String>) -> Vec<Result<String, ItemError>> {
    let mut results = Vec::with_capacity(commands.len());
    let mut batch = Batch::new();
    let mut size = 0;
    for command in commands {
        // Each command also carries its marker line.
        let cost = command.len() + 96;
        if !batch.is_empty() && size + cost > MAX_SCRIPT {
            results.extend(run_one(remote, purpose, &batch));
            batch = Batch::new();
            size = 0;
        }
        size += cost;
        batch.push(command);
    }
    if !batch.is_empty() {
        results.extend(run_one(remote, purpose, &batch));
    }
    results
}

fn run_one(remote: &Remote, purpose: &str, batch: &Batch) -> Vec<Result<String, ItemError>> {
    match remote.exec(purpose, &batch.script()) {
        Err(e) => {
            // A broken connection may have cut the script short after it started.
            let err = if remote.alive() { ItemError::Failed(e.to_string()) } else { ItemError::Unknown(e.to_string()) };
            (0..batch.len()).map(|_| Err(err.clone())).collect()
        }
        Ok(out) => batch
            .parse(&out.stdout)
            .into_iter()
            .map(|r| match r.status {
                Some(0) => Ok(r.output),
                Some(status) => Err(ItemError::Exited { status, output: r.output }),
                None => Err(ItemError::Unknown(format!("the remote shell did not report a result: {}", one_line(&out.stderr)))),
            })
            .collect(),
    }
}

/// One script: command lines, each run whatever the others did.
pub(crate) struct Batch {
    lines: Vec<String>,
}

/// What one command of a batch did. `None` status: no marker came back (the channel broke
/// before or while it ran), so its effect is unknown.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ItemResult {
    pub status: Option<i32>,
    pub output: String,
}

impl Batch {
    pub fn new() -> Self {
        Batch { lines: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Adds one command (already quoted); returns its index.
    pub fn push(&mut self, command: String) -> usize {
        self.lines.push(command);
        self.lines.len() - 1
    }

    /// The POSIX sh script. Exits non-zero if any command failed.
    pub fn script(&self) -> String {
        let mut s = String::from("rc=0\n");
        for (i, cmd) in self.lines.iter().enumerate() {
            // The leading newline keeps the marker at the start of a line even when the command
            // printed a partial line.
            s.push_str(&format!(
                "{cmd} </dev/null 2>&1; s=$?; printf '\\n{MARKER}%d %d\\n' {i} \"$s\"; [ \"$s\" -eq 0 ] || rc=1\n"
            ));
        }
        s.push_str("exit $rc\n");
        s
    }

    /// Splits the script's output into one result per command.
    pub fn parse(&self, output: &str) -> Vec<ItemResult> {
        let mut results: Vec<ItemResult> =
            (0..self.lines.len()).map(|_| ItemResult { status: None, output: String::new() }).collect();
        let mut pending = String::new();
        for line in output.lines() {
            if let Some(rest) = line.strip_prefix(MARKER) {
                let mut parts = rest.split_whitespace();
                let index = parts.next().and_then(|p| p.parse::<usize>().ok());
                let status = parts.next().and_then(|p| p.parse::<i32>().ok());
                if let (Some(index), Some(status)) = (index, status)
                    && let Some(slot) = results.get_mut(index)
                {
                    slot.status = Some(status);
                    slot.output = pending.clone();
                }
                pending.clear();
            } else if !line.trim().is_empty() {
                if !pending.is_empty() {
                    pending.push('\n');
                }
                pending.push_str(line.trim());
            }
        }
        results
    }
}

/// Remote output squeezed into one bounded line for an error message.
pub(crate) fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 300 {
        let mut cut: String = joined.chars().take(300).collect();
        cut.push('…');
        cut
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(commands: &[&str], output: &str, expected: &[(Option<i32>, &str)]) {
        let mut batch = Batch::new();
        for c in commands {
            batch.push(c.to_string());
        }
        let got = batch.parse(output);
        let want: Vec<ItemResult> = expected
            .iter()
            .map(|(s, o)| ItemResult { status: *s, output: o.to_string() })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn output_is_attributed_to_the_command_before_its_marker() {
        check(
            &["a", "b", "c"],
            "\n@tb-status 0 0\nmv: cannot move 'x': Permission denied\n@tb-status 1 1\n\n@tb-status 2 0\n",
            &[(Some(0), ""), (Some(1), "mv: cannot move 'x': Permission denied"), (Some(0), "")],
        );
    }

    #[test]
    fn a_broken_channel_leaves_later_commands_unknown() {
        check(&["a", "b"], "\n@tb-status 0 0\npartial", &[(Some(0), ""), (None, "")]);
    }

    #[test]
    fn garbage_markers_are_ignored() {
        check(&["a"], "@tb-status x y\n@tb-status 7 0\n", &[(None, "")]);
    }

    #[test]
    fn the_script_runs_every_command_and_reports_each() {
        let mut batch = Batch::new();
        batch.push("false".into());
        batch.push("echo hi".into());
        let out = std::process::Command::new("sh").arg("-c").arg(batch.script()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "one failure makes the script fail");
        let got = batch.parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            got,
            vec![
                ItemResult { status: Some(1), output: String::new() },
                ItemResult { status: Some(0), output: "hi".into() }
            ]
        );
    }

    #[test]
    fn long_output_is_cut() {
        let long = "x ".repeat(1000);
        assert!(one_line(&long).chars().count() <= 301);
    }
}
