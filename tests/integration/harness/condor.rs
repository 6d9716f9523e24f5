//! Named stand-ins for HTCondor's tools on an sshd test host (no HTCondor daemon or tool can be
//! installed here): `condor_token_create` signs HS256 IDTokens with HTCondor's layout using a
//! key only the stand-in holds, and can be told to misbehave; `condor_reconfig` records that it
//! ran. Both live in the host's `bin/`, first on the PATH of its SSH sessions.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::sshd::Sshd;

pub const TRUST_DOMAIN: &str = "cms.test.example";

/// The stand-ins installed on one host.
pub struct CondorTools {
    /// Where their state lives: `keys/`, `trust_domain`, `misbehave`, `calls`, `reconfigs`.
    pub state: PathBuf,
}

impl CondorTools {
    /// Installs both stand-ins on `host` with one signing key named `key`.
    pub fn install(host: &Sshd, key: &str) -> CondorTools {
        let bin = host.dir.join("bin");
        let state = host.dir.join("condor");
        std::fs::create_dir_all(state.join("keys")).unwrap();
        let token_create = bin.join("condor_token_create");
        std::fs::write(&token_create, include_str!("condor_token_create_standin.py")).unwrap();
        let reconfig = bin.join("condor_reconfig");
        std::fs::write(&reconfig, include_str!("condor_reconfig_standin.sh")).unwrap();
        for p in [&token_create, &reconfig] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(state.join("keys").join(key), format!("{:032x}", rand::random::<u128>())).unwrap();
        std::fs::write(state.join("trust_domain"), TRUST_DOMAIN).unwrap();
        CondorTools { state }
    }

    /// `wrong-sub`, `no-exp`, `fail`, or `""` to behave.
    pub fn misbehave(&self, how: &str) {
        std::fs::write(self.state.join("misbehave"), how).unwrap();
    }

    /// How many times `condor_token_create` ran.
    pub fn mints(&self) -> usize {
        std::fs::read_to_string(self.state.join("calls")).map(|s| s.lines().count()).unwrap_or(0)
    }

    /// Every token `condor_token_create` printed, oldest first.
    pub fn minted(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("minted")).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
    }

    /// How many times `condor_reconfig` ran.
    pub fn reconfigs(&self) -> usize {
        std::fs::read_to_string(self.state.join("reconfigs")).map(|s| s.lines().count()).unwrap_or(0)
    }
}

/// The claims of an IDToken (no signature check), for assertions.
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The `condor_config_val` stand-in on one host, answering from `<host>/condor/config`.
pub struct CondorConfig {
    state: PathBuf,
}

impl CondorConfig {
    /// Installs the stand-in on `host` with `config` (lines `KNOB = value`).
    pub fn install(host: &Sshd, config: &str) -> CondorConfig {
        let state = host.dir.join("condor");
        std::fs::create_dir_all(&state).unwrap();
        let tool = host.dir.join("bin").join("condor_config_val");
        std::fs::write(&tool, include_str!("condor_config_val_standin.sh")).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let this = CondorConfig { state };
        this.set(config);
        this
    }

    /// Replaces the host's configuration.
    pub fn set(&self, config: &str) {
        std::fs::write(self.state.join("config"), config).unwrap();
    }

    /// How many times `condor_config_val` ran.
    pub fn calls(&self) -> usize {
        std::fs::read_to_string(self.state.join("config_val_calls")).map(|s| s.lines().count()).unwrap_or(0)
    }
}
