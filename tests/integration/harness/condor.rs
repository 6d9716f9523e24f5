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
