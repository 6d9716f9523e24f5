//! Kerberos keytab login end to end: the real `token-bastion` binary, a real MIT KDC, the
//! Negotiate **stand-in** for HTVault's Kerberos login (OpenBao has none) that hands out real
//! OpenBao tokens, and the real OpenBao for everything after the login.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::Leaks;
use crate::harness::kdc::{Kdc, NegotiateStandIn, SeenLogin, ccache_principal};
use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{Stack, ServiceDef, VAULT_ISSUER, shown};

/// A stack whose broker URL is the stand-in (as `https://localhost:<port>`), with the product
/// pointed at the test realm.
struct KerberosStack<'l> {
    stack: Stack<'l>,
    kdc: Kdc<'l>,
    standin: NegotiateStandIn,
}

impl<'l> KerberosStack<'l> {
    fn new(leaks: &'l Leaks) -> KerberosStack<'l> {
        let mut stack = Stack::new(leaks).with_hosts(1);
        let kdc = Kdc::start(&stack.root.join("kdc"), leaks);
        let standin = NegotiateStandIn::start(&stack.root.join("standin"), &kdc, &stack.bao, "localhost");
        stack.broker_url = standin.url();
        stack.env = kdc.product_env();
        KerberosStack { stack, kdc, standin }
    }

    fn keytab_path(&self, name: &str) -> PathBuf {
        self.stack.root.join("keytabs").join(format!("{name}.keytab"))
    }

    /// A service logging in as `<account>@REALM` with its own keytab; the stand-in hands it a
    /// real OpenBao token carrying the service's policy. Returns that token.
    fn add_kerberos_service(&mut self, name: &str, auth_extra: &str) -> String {
        let def = ServiceDef::new(name, &["storage.read:/"]);
        let account = def.account.clone();
        let creds = self.stack.add_service(def).clone();
        let principal = self.kdc.add_principal(&account);
        let keytab = self.keytab_path(name);
        self.kdc.export_keytab(&principal, &keytab);
        let token = self.stack.bao.create_token(&[&creds.policy], "2h");
        let mount = format!("kerberos-{VAULT_ISSUER}_{}", creds.role);
        self.standin.grant(&mount, &principal, &token, Duration::from_secs(7200), &[&creds.policy]);
        let def = self.stack.defs.get_mut(name).unwrap();
        def.extra = format!(
            "    auth:\n      method: kerberos\n      principal: \"{{account}}@{}\"\n      keytab: {}\n{auth_extra}",
            crate::harness::kdc::REALM,
            keytab.display()
        );
        self.stack.put_token(name, &JwtSpec { scope: Some("storage.read:/".into()), ..JwtSpec::default() });
        token
    }

    fn ccache(&self, service: &str) -> PathBuf {
        self.stack.state_dir.join("krb5cc").join(service)
    }

    /// The Vault tokens OpenBao saw reading access tokens (the first use of a fresh login).
    fn access_read_tokens(&self) -> Vec<String> {
        self.stack
            .bao
            .audit_entries()
            .into_iter()
            .filter(|e| e["type"] == "request" && e["request"]["path"].as_str().is_some_and(|p| p.starts_with("secret/oauth/")))
            .filter_map(|e| e["request"]["client_token"].as_str().map(str::to_string))
            .collect()
    }

    /// Whether the product used, on OpenBao, the token the latest login on `mount` handed out.
    fn used_latest_login(&self, mount: &str) -> bool {
        let latest = self.standin.issued(mount).pop();
        latest.is_some_and(|t| self.access_read_tokens().contains(&t))
    }

    fn finish(&self, leaks: &Leaks) {
        self.standin.register_seen_tokens(leaks);
        assert!(!self.kdc.process_ccache().exists(), "a login used the process-wide KRB5CCNAME");
        leaks.assert_clean();
    }
}

fn seen(mount: &str, principal: &str) -> SeenLogin {
    SeenLogin { mount: mount.into(), principal: principal.into(), granted: true }
}

#[test]
fn keytab_login_yields_a_token_that_works_on_openbao() {
    let leaks = Leaks::default();
    let mut k = KerberosStack::new(&leaks);
    k.add_kerberos_service("wmagent", "");
    k.stack.write_inventory();

    let out = k.stack.run("run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 1 services ok"), "{}", shown(&out));

    let principal = format!("acctwmagent@{}", crate::harness::kdc::REALM);
    assert_eq!(k.standin.logins_seen(), [seen("kerberos-cms_wmagent", &principal)], "{}", k.standin.log_text());
    assert!(k.used_latest_login("kerberos-cms_wmagent"), "the product used the token it logged in for on OpenBao");
    assert_eq!(ccache_principal(&k.ccache("wmagent")).as_deref(), Some(principal.as_str()));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&k.ccache("wmagent")), 0o600);
    assert_eq!(mode(k.ccache("wmagent").parent().unwrap()), 0o700);

    // The second cycle logs in again from the cached TGT (the KDC is not asked for a new one).
    let out = k.stack.run("run again", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(k.standin.logins_seen().len(), 2);
    k.finish(&leaks);
}

#[test]
fn services_log_in_with_their_own_principal_and_credential_cache() {
    let leaks = Leaks::default();
    let mut k = KerberosStack::new(&leaks);
    k.add_kerberos_service("crab", "");
    k.add_kerberos_service("tier0", "      ccache: /ROOT/tier0.ccache\n".replace("/ROOT", &k.stack.root.display().to_string()).as_str());
    k.stack.write_inventory();

    let out = k.stack.run("run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 of 2 services ok"), "{}", shown(&out));

    let realm = crate::harness::kdc::REALM;
    let mut logins = k.standin.logins_seen();
    logins.sort_by(|a, b| a.mount.cmp(&b.mount));
    assert_eq!(logins, [seen("kerberos-cms_crab", &format!("acctcrab@{realm}")), seen("kerberos-cms_tier0", &format!("accttier0@{realm}"))]);
    assert_eq!(ccache_principal(&k.ccache("crab")), Some(format!("acctcrab@{realm}")));
    assert_eq!(ccache_principal(&k.stack.root.join("tier0.ccache")), Some(format!("accttier0@{realm}")));
    assert!(!k.ccache("tier0").exists(), "a configured ccache replaces the default one");
    assert!(k.used_latest_login("kerberos-cms_crab") && k.used_latest_login("kerberos-cms_tier0"));
    k.finish(&leaks);
}

#[test]
fn a_wrong_keytab_or_unknown_principal_fails_naming_them() {
    let leaks = Leaks::default();
    let mut k = KerberosStack::new(&leaks);
    let realm = crate::harness::kdc::REALM;
    k.add_kerberos_service("good", "");
    // Keys rotated at the KDC after the keytab was written: the keytab is stale.
    k.add_kerberos_service("stale", "");
    k.kdc.rotate_keys(&format!("acctstale@{realm}"));
    // A principal the KDC has never heard of, with a keytab that holds someone else's keys.
    k.add_kerberos_service("ghost", "");
    let ghost_keytab = k.keytab_path("ghost");
    k.stack.defs.get_mut("ghost").unwrap().extra = format!(
        "    auth:\n      method: kerberos\n      principal: nobody@{realm}\n      keytab: {}\n",
        ghost_keytab.display()
    );
    k.stack.write_inventory();

    let out = k.stack.run("run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("good: tokens valid"), "one service's bad keytab does not stop the others\n{}", shown(&out));
    let line = |service: &str| stdout.lines().find(|l| l.starts_with(&format!("{service}: "))).unwrap_or_default().to_string();

    let stale = line("stale");
    assert!(stale.starts_with("stale: FAILED at login: POST /v1/auth/kerberos-cms_stale/login: Kerberos principal `acctstale@TB.TEST`"), "{stale}");
    assert!(stale.contains(&k.keytab_path("stale").display().to_string()), "{stale}");

    let ghost = line("ghost");
    assert!(ghost.starts_with("ghost: FAILED at login: POST /v1/auth/kerberos-cms_ghost/login: Kerberos principal `nobody@TB.TEST`"), "{ghost}");
    assert!(ghost.contains(&ghost_keytab.display().to_string()), "{ghost}");

    // Neither reached the broker: the SPNEGO token never came into being.
    let principals: Vec<String> = k.standin.logins_seen().into_iter().map(|l| l.principal).collect();
    assert_eq!(principals, [format!("acctgood@{realm}")]);
    k.finish(&leaks);
}

#[test]
fn spn_host_names_vault_when_the_broker_url_does_not() {
    let leaks = Leaks::default();
    let mut k = KerberosStack::new(&leaks);
    // Reached by IP address, Vault's service principal is still host/localhost.
    k.stack.broker_url = k.standin.url_by_ip();
    k.add_kerberos_service("named", "      spn_host: localhost\n");
    k.add_kerberos_service("unnamed", "");
    k.stack.write_inventory();

    let out = k.stack.run("run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("named: tokens valid"), "{}", shown(&out));
    let unnamed = stdout.lines().find(|l| l.starts_with("unnamed: ")).unwrap_or_default();
    assert!(unnamed.contains("no service ticket for `host@127.0.0.1`"), "{unnamed}");
    k.finish(&leaks);
}

#[test]
fn a_changed_principal_replaces_the_services_cached_tickets() {
    let leaks = Leaks::default();
    let mut k = KerberosStack::new(&leaks);
    let realm = crate::harness::kdc::REALM;
    k.add_kerberos_service("t0", "");
    k.stack.write_inventory();
    let out = k.stack.run("run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(ccache_principal(&k.ccache("t0")), Some(format!("acctt0@{realm}")));

    // The operator moves the service to a principal of its own, with a new keytab.
    let principal = k.kdc.add_principal("cmst0");
    let keytab = k.keytab_path("cmst0");
    k.kdc.export_keytab(&principal, &keytab);
    let policy = k.stack.creds["t0"].policy.clone();
    let token = k.stack.bao.create_token(&[&policy], "2h");
    k.standin.grant("kerberos-cms_t0", &principal, &token, Duration::from_secs(7200), &[&policy]);
    k.stack.defs.get_mut("t0").unwrap().extra = format!("    auth:\n      method: kerberos\n      principal: {principal}\n      keytab: {}\n", keytab.display());
    k.stack.write_inventory();

    let out = k.stack.run("run after the change", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(ccache_principal(&k.ccache("t0")), Some(principal.clone()));
    assert_eq!(k.standin.logins_seen().last().map(|l| l.principal.clone()), Some(principal));
    assert!(k.used_latest_login("kerberos-cms_t0"));
    k.finish(&leaks);
}
