//! A local stack for trying token-bastion by hand (`./scripts/demo`): OpenBao laid out like
//! HTVault with its identity provider standing in for IAM, three OpenSSH sshd "schedds" and an
//! SMTP sink, all on 127.0.0.1 in a temporary directory. It writes a `services.yaml` for them,
//! runs one delivery cycle and `status`, shows what landed on a schedd, and then a second cycle
//! with one schedd down to show the failure report and the mail. Started by the same harness
//! the integration tests use.
//!
//! `--keep` leaves the stack running until Enter is pressed, to explore it.

#[path = "../tests/integration/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use harness::openbao::{JwtSpec, WLCG_ANY_AUDIENCE};
use harness::stack::{ServiceDef, Stack};
use harness::Leaks;

fn show(title: &str, out: &Output) {
    println!("\n$ {title}    # exit status {}", out.status.code().map_or("killed".into(), |c| c.to_string()));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    // The log (stderr) in full is long; its warnings and errors are what an operator reads first.
    let err = String::from_utf8_lossy(&out.stderr);
    let loud: Vec<&str> = err.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    let quiet = err.lines().count() - loud.len();
    if !loud.is_empty() || quiet > 0 {
        println!("--- log: {} warning/error line(s) shown, {quiet} info line(s) not shown ---", loud.len());
        for l in loud {
            println!("{l}");
        }
    }
}

fn list(dir: &Path, depth: usize) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).map(|rd| rd.flatten().collect()).unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let meta = e.metadata().unwrap();
        println!(
            "{:indent$}{:04o} uid={} {}{}",
            "",
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            e.file_name().to_string_lossy(),
            if meta.is_dir() { "/" } else { "" },
            indent = depth * 2 + 2
        );
        if meta.is_dir() {
            list(&e.path(), depth + 1);
        }
    }
}

fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    let leaks = Leaks::default();
    println!("Starting OpenBao (HTVault layout), three sshd schedds and an SMTP sink on 127.0.0.1 …");
    let mut stack = Stack::new(&leaks).with_hosts(3).with_smtp();

    let mut production = ServiceDef::new("production", &["storage.read:/", "storage.create:/store/unmerged", "compute.create", "compute.read", "compute.cancel"]);
    production.allowed = Some(vec!["storage.read:/".into(), "storage.modify:/store/unmerged".into(), "compute.create".into(), "compute.read".into(), "compute.cancel".into()]);
    production.audience = Some(WLCG_ANY_AUDIENCE.into());
    stack.add_service(production);
    stack.add_service(ServiceDef::new("crab", &["storage.read:/store", "storage.create:/store/user", "compute.create"]));
    stack.put_token("production", &JwtSpec { scope: Some("storage.read:/ storage.create:/store/unmerged compute.create compute.read compute.cancel".into()), ..JwtSpec::default() });
    stack.put_token("crab", &JwtSpec { scope: Some("storage.read:/store storage.create:/store/user compute.create".into()), ..JwtSpec::default() });
    stack.write_inventory();

    println!("\nInventory: {}\nState dir: {}\n", stack.config.display(), stack.state_dir.display());
    print!("{}", stack.inventory_text());

    show("token-bastion check", &stack.run("check", &["check"]));
    show("token-bastion run", &stack.run("run", &["run"]));
    show("token-bastion status", &stack.run("status", &["status"]));
    println!("\nWhat landed on schedd1 ({}):", stack.host("schedd1").spool.display());
    list(&stack.host("schedd1").spool, 0);

    println!("\nStopping schedd3 and running again: the other schedds still get fresh tokens, and mail goes out.");
    stack.host_mut("schedd3").stop();
    show("token-bastion run", &stack.run("run", &["run"]));
    show("token-bastion status", &stack.run("status", &["status"]));
    let smtp = stack.smtp.as_ref().expect("smtp sink");
    let mails = smtp.wait_for_messages(3, std::time::Duration::from_secs(10));
    println!("\nMail received by the SMTP sink ({}):", mails.len());
    for m in &mails {
        println!("  To: {}\n  Subject: {}\n{}", m.to.join(", "), m.subject, m.body.lines().map(|l| format!("    {l}\n")).collect::<String>());
    }

    // The same check the tests make: no token or secret the stack minted appears in any log,
    // mail or the state database.
    smtp.record_in(&leaks);
    for host in ["schedd1", "schedd2"] {
        for (account, svc) in [("acctproduction", "cms_production"), ("acctcrab", "cms_crab")] {
            let top = stack.host(host).spool.join(account).join(format!("{svc}.top"));
            if let Ok(text) = std::fs::read_to_string(&top)
                && let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
                    leaks.secret(doc["vault_token"].as_str().unwrap_or_default());
                }
        }
    }
    leaks.assert_clean();
    println!("\nNo minted secret appears in the logs, the state database or the mail.");

    if keep {
        println!("\nThe stack keeps running; try e.g.\n  target/debug/token-bastion --config {} --state-dir {} status\nPress Enter to stop it.", stack.config.display(), stack.state_dir.display());
        let _ = std::io::stdin().lock().lines().next();
    }
}
