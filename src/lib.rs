//! token-bastion: the managed token bastion for HTCondor schedds.
//!
//! For every service in `services.yaml` it logs in to the Vault token broker (HTVault), reads a
//! short-lived WLCG access token, proves the token good (signature, issuer, audience, lifetime,
//! least-privilege scopes) and delivers the Vault and access tokens over SSH into each schedd's
//! credd credential spool and to token files, then mails whoever must know about failures.
//!
//! Data flows one way: [`inventory`] → [`broker`] → [`validate`] → [`deliver`] → [`notify`], put
//! in order by [`cycle`], which with the scheduler is the only code that touches [`state`].
//! Every secret the process holds is registered with [`redact`], which every sink (logs, the
//! state DB, mail, the run report) scrubs its text through.

/// A named point where a test build (cargo feature `failpoints`, configured through the
/// `FAILPOINTS` environment variable) injects a crash or a failure; nothing in other builds.
/// The second form returns `$on_return(arg)` from the enclosing function for a `return` action.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
    ($name:literal, $on_return:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $on_return);
    };
}
pub(crate) use failpoint;

pub mod broker;
pub mod cli;
pub mod credd_names;
pub mod credmon;
pub mod cycle;
pub mod daemon;
pub mod deliver;
pub mod http;
pub mod idtoken;
pub mod inventory;
pub mod jwks;
pub mod keep;
pub mod kerberos;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod redact;
pub mod schedule;
pub mod scopes;
pub mod secret;
pub mod state;
pub mod status;
pub mod validate;
