//! A real Prometheus Pushgateway (Debian's `prometheus-pushgateway`) on a loopback port chosen at
//! run time, keeping pushed metrics in memory only, killed on drop.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{ChildGuard, free_port, wait_until};

/// Debian installs it here; `PUSHGATEWAY_BIN` overrides.
const DEFAULT_BIN: &str = "/usr/bin/prometheus-pushgateway";

pub struct Pushgateway {
    pub port: u16,
    guard: ChildGuard,
}

impl Pushgateway {
    /// Starts a Pushgateway logging into `dir`; returns once it listens on its port.
    pub fn start(dir: &Path) -> Pushgateway {
        let bin = std::env::var("PUSHGATEWAY_BIN").unwrap_or_else(|_| DEFAULT_BIN.to_string());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: install Debian's prometheus-pushgateway (scripts/install-deps)"
        );
        let port = free_port(false);
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Nothing outlives the test: no persistence file (the default is under /var/lib).
            .arg("--persistence.file=")
            .current_dir(dir);
        let mut guard = ChildGuard::spawn("pushgateway", cmd, &dir.join("pushgateway.log"));
        guard.wait_for_log(&format!("address=127.0.0.1:{port}"), Duration::from_secs(15));
        let up = wait_until(Duration::from_secs(5), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "pushgateway does not accept on {port}:\n{}", guard.log_text());
        Pushgateway { port, guard }
    }

    /// Base URL to push to (`<url>/metrics/job/<job>`) and to read back from (`<url>/metrics`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }
}
