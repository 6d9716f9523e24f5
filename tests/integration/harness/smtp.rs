//! A real SMTP server for tests: Debian's aiosmtpd with its `Mailbox` handler, which stores each
//! message it accepts in a Maildir (`<maildir>/{new,cur,tmp}`, one file per message, with
//! `X-MailFrom` and `X-RcptTo` headers holding the envelope). Messages are read back through
//! Python's `email` package, so transfer encodings (quoted-printable, base64) and encoded-word
//! subjects come back decoded exactly as a mail client would show them.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{ChildGuard, Leaks, free_port, wait_until};

/// Debian's interpreter: the `python3` on PATH may be another build without Debian's modules.
const PYTHON: &str = "/usr/bin/python3";

/// One message as received, envelope recipients included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Envelope recipients (RCPT TO), in the order given.
    pub to: Vec<String>,
    /// Envelope sender (MAIL FROM).
    pub from: String,
    /// The decoded `Subject` header.
    pub subject: String,
    /// The decoded text body.
    pub body: String,
}

/// A running aiosmtpd, killed on drop.
pub struct Smtp {
    pub port: u16,
    pub maildir: PathBuf,
    guard: ChildGuard,
}

const READ_MAILDIR: &str = r#"
import json, mailbox, sys
from email import policy
from email.parser import BytesParser
out = []
box = mailbox.Maildir(sys.argv[1], factory=None, create=False)
for key in sorted(box.keys()):
    with box.get_file(key) as f:
        msg = BytesParser(policy=policy.default).parse(f)
    part = msg.get_body(preferencelist=("plain",)) or msg
    out.append({
        "to": [a.strip() for a in str(msg.get("X-RcptTo", "")).split(",") if a.strip()],
        "from": str(msg.get("X-MailFrom", "")),
        "subject": str(msg.get("Subject", "")),
        "body": part.get_content(),
        "delivered": box.get_message(key).get_date(),
    })
out.sort(key=lambda m: m["delivered"])
json.dump(out, sys.stdout)
"#;

/// aiosmtpd's own SMTP class with an authenticator and Maildir storage: the `-m aiosmtpd` command
/// line has no option for AUTH.
const AUTH_SERVER: &str = r#"
import asyncio, os, sys
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
port, maildir = int(sys.argv[1]), sys.argv[2]
user = os.environ["SMTP_TEST_USER"].encode()
password = os.environ["SMTP_TEST_PASSWORD"].encode()
def authenticate(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
    return AuthResult(success=ok, handled=False)
handler = Mailbox(maildir)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, authenticator=authenticate, auth_required=True, auth_require_tls=False),
        "127.0.0.1", port)
    await server.serve_forever()
asyncio.run(main())
"#;

impl Smtp {
    /// Starts aiosmtpd on a free loopback port, with its Maildir and log under `dir`. Ready when
    /// the port answers with aiosmtpd's greeting (so a foreign listener that won the port race
    /// is noticed); panics with the log after 15 s otherwise.
    pub fn start(dir: &Path, leaks: &Leaks) -> Smtp {
        let maildir = dir.join("maildir");
        let port = free_port(false);
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir);
        Self::launch(dir, leaks, cmd, port, maildir)
    }

    /// Like [`Smtp::start`], but the server advertises AUTH (PLAIN, LOGIN) without TLS and
    /// refuses mail from a client that has not authenticated as `user` with `password`. The
    /// password reaches the server through its environment, not its command line.
    pub fn start_with_auth(dir: &Path, leaks: &Leaks, user: &str, password: &str) -> Smtp {
        let maildir = dir.join("maildir");
        let port = free_port(false);
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-c")
            .arg(AUTH_SERVER)
            .arg(port.to_string())
            .arg(&maildir)
            .env("SMTP_TEST_USER", user)
            .env("SMTP_TEST_PASSWORD", password);
        Self::launch(dir, leaks, cmd, port, maildir)
    }

    fn launch(dir: &Path, leaks: &Leaks, cmd: Command, port: u16, maildir: PathBuf) -> Smtp {
        let log = dir.join("smtp.log");
        let mut guard = ChildGuard::spawn("aiosmtpd", cmd, &log);
        let ready = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!("aiosmtpd exited ({status}) before ready:\n{}", guard.log_text());
            }
            greeting(port).is_some_and(|g| g.starts_with("220 ") && g.contains("Python SMTP"))
        });
        assert!(ready, "aiosmtpd not ready on port {port}:\n{}", guard.log_text());
        leaks.path(&maildir);
        leaks.path(&log);
        Smtp { port, maildir, guard }
    }

    /// Every message received so far, oldest first, decoded.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        if !self.maildir.join("new").exists() {
            return Vec::new();
        }
        let out = Command::new(PYTHON)
            .arg("-c")
            .arg(READ_MAILDIR)
            .arg(&self.maildir)
            .output()
            .expect("run python to read the maildir");
        assert!(
            out.status.success(),
            "reading {}: {}",
            self.maildir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("maildir JSON");
        parsed
            .into_iter()
            .map(|m| ReceivedMail {
                to: m["to"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
                from: m["from"].as_str().unwrap().to_string(),
                subject: m["subject"].as_str().unwrap().to_string(),
                body: m["body"].as_str().unwrap().to_string(),
            })
            .collect()
    }

    /// Waits until at least `n` messages have arrived (bounded) and returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let mut got = Vec::new();
        wait_until(timeout, || {
            got = self.messages();
            got.len() >= n
        });
        assert!(got.len() >= n, "expected {n} messages, got {}: {got:?}", got.len());
        got
    }

    /// Registers the decoded subjects and bodies with the leak check: an encoded body in the
    /// Maildir would hide a secret from a byte search of the files.
    pub fn record_in(&self, leaks: &Leaks) {
        for (i, m) in self.messages().iter().enumerate() {
            leaks.text(&format!("mail #{i} subject"), &m.subject);
            leaks.text(&format!("mail #{i} body"), &m.body);
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// The first line the server sends on connect, if it answers within a second.
fn greeting(port: u16) -> Option<String> {
    let stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line)
}
