//! A stand-in for a Mattermost / Slack incoming webhook (no real chat server runs here): the
//! HTTPS peer of [`super::hostile`] with a certificate from a throw-away CA, answering a POST to
//! its secret path with 200 `ok` as Mattermost does, or, on the test's word, failing (503, as a
//! chat server that is down behind its proxy) or refusing (403, a revoked hook). It records
//! every request and the `text` of each it accepted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Leaks;
use super::hostile::{HostileServer, Reply, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Up,
    Failing,
    Refusing,
}

pub struct Webhook {
    server: HostileServer,
    mode: Arc<Mutex<Mode>>,
    accepted: Arc<Mutex<Vec<String>>>,
    /// The URL file the inventory names (0600).
    pub url_file: PathBuf,
    /// The whole URL: a secret, registered with the leak sweep.
    pub url: String,
}

impl Webhook {
    pub fn start(dir: &Path, leaks: &Leaks) -> Webhook {
        let token = format!("hooks-{:032x}", rand::random::<u128>());
        let mode = Arc::new(Mutex::new(Mode::Up));
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let (m, a, path) = (mode.clone(), accepted.clone(), format!("/hooks/{token}"));
        let server = HostileServer::start(
            &dir.join("webhook"),
            Arc::new(move |req: &Request| {
                let reply = |status: u16, body: &str| Reply::Body { status, content_type: "text/plain", body: body.into() };
                if req.method != "POST" || req.path != path {
                    return reply(404, "not found");
                }
                match *m.lock().unwrap() {
                    Mode::Failing => reply(503, "Service Unavailable"),
                    Mode::Refusing => reply(403, "invalid webhook"),
                    Mode::Up => match serde_json::from_str::<serde_json::Value>(&req.body).ok().and_then(|v| v["text"].as_str().map(str::to_string)) {
                        Some(text) => {
                            a.lock().unwrap().push(text);
                            reply(200, "ok")
                        }
                        None => reply(400, "no text"),
                    },
                }
            }),
        );
        let url = format!("{}/hooks/{token}", server.url());
        leaks.secret(&url);
        leaks.secret(&token);
        let url_file = dir.join("webhook.url");
        std::fs::write(&url_file, format!("{url}\n")).unwrap();
        std::fs::set_permissions(&url_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Webhook { server, mode, accepted, url_file, url }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The `text` of every post accepted, in order.
    pub fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    /// The CA the receiver's certificate chains to.
    pub fn ca(&self) -> &Path {
        &self.server.ca
    }

    /// Every request received, accepted or not.
    pub fn requests(&self) -> usize {
        self.server.requests().len()
    }

    /// The `notify.webhook` block of an inventory.
    pub fn inventory_yaml(&self) -> String {
        format!("  webhook:\n    url_file: {}\n    ca_file: {}\n    timeout: 10s\n", self.url_file.display(), self.server.ca.display())
    }

    /// Accepted texts into the leak sweep.
    pub fn record_in(&self, leaks: &Leaks) {
        for (i, t) in self.accepted().iter().enumerate() {
            leaks.text(&format!("webhook post {i}"), t);
        }
        for (i, r) in self.server.requests().iter().enumerate() {
            leaks.text(&format!("webhook request {i}"), &r.body);
        }
    }
}
