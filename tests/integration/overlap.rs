//! Delivery overlaps the fetching: a host whose services are ready is delivered while another
//! service is still held at the broker (failpoint `cycle::hold_service`, which holds it until
//! shutdown), so the order is forced by the test, never by timing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::Leaks;
use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{ServiceDef, Stack, shown};

/// Every `.top` under a credd spool's account directories.
fn tops(spool: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(spool) else { return Vec::new() };
    dirs.flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten().map(|f| f.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "top"))
        .collect()
}

#[test]
fn a_host_whose_services_are_ready_is_delivered_while_another_service_is_still_fetched() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(2);
    for (name, host) in [("quick", "schedd1"), ("held", "schedd2")] {
        stack.add_service(ServiceDef::new(name, &["compute.create"]));
        stack.put_token(name, &JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() });
        stack.destinations.insert(name.into(), format!("    destinations:\n      - credd:\n          hosts: [{host}]\n"));
    }
    stack.write_inventory();
    stack.env.push(("FAILPOINTS".into(), "cycle::hold_service=return(held)".into()));

    let mut child = stack.spawn(&["run"]);
    let (spool1, spool2) = (stack.host("schedd1").spool.clone(), stack.host("schedd2").spool.clone());
    let mut delivered = Vec::new();
    for _ in 0..600 {
        delivered = tops(&spool1);
        if !delivered.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let held_meanwhile = tops(&spool2);
    // `held` would wait for a shutdown that a one-off `run` never gets.
    child.kill().unwrap();
    let out = stack.reap("overlapped run", child);
    for top in &delivered {
        let text = std::fs::read_to_string(top).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        leaks.secret(doc["vault_token"].as_str().unwrap());
    }

    assert_eq!(delivered.len(), 1, "schedd1 got nothing while `held` was still at the broker\n{}", shown(&out));
    assert!(held_meanwhile.is_empty(), "schedd2 had files before `held` had tokens: {held_meanwhile:?}");
    leaks.assert_clean();
}
