//! The raw YAML shape of `services.yaml`: private structs that serde fills (`deny_unknown_fields`,
//! locations kept with `serde_saphyr::Spanned`) and the JSON Schema derived from them. Nothing
//! here decides whether a value is acceptable; [`super::validate`] does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;


#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    #[schemars(with = "RawBroker")]
    pub(super) broker: Spanned<RawBroker>,
    #[schemars(with = "BTreeMap<String, RawIssuer>")]
    pub(super) issuers: BTreeMap<String, Spanned<RawIssuer>>,
    #[schemars(with = "BTreeMap<String, RawHost>")]
    pub(super) hosts: BTreeMap<String, Spanned<RawHost>>,
    #[schemars(with = "BTreeMap<String, RawService>")]
    pub(super) services: BTreeMap<String, Spanned<RawService>>,
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    #[serde(default)]
    #[schemars(with = "Option<RawNotify>")]
    pub(super) notify: Option<Spanned<RawNotify>>,
    #[serde(default)]
    pub(super) delivery: RawDelivery,
}

/// How a cycle spreads its deliveries over the hosts.
#[derive(Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Delivery")]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    /// Hosts written to at once (one SSH connection each).
    #[schemars(with = "Option<u32>")]
    pub(super) hosts_at_once: Option<Spanned<u32>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Broker")]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    #[schemars(with = "String")]
    pub(super) url: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) ca_file: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) ca_dir: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub(super) issuer: Spanned<String>,
    #[schemars(with = "String")]
    pub(super) vault_url: Spanned<String>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) timeout: Option<Spanned<DurationValue>>,
    /// Requests to the broker in flight at once.
    #[schemars(with = "Option<u32>")]
    pub(super) concurrency: Option<Spanned<u32>>,
    /// Requests started per second at most; no limit when absent.
    #[schemars(with = "Option<f64>")]
    pub(super) rate: Option<Spanned<f64>>,
    #[schemars(with = "AuthSchema")]
    pub(super) auth: Spanned<RawAuth>,
}

/// A login block (`broker.auth`, `services.<name>.auth`): every key any method takes, each with
/// its place, so that a key that does not belong to the method is reported on its own line.
/// Which keys a method takes and needs is the validator's business; the schema editors see is
/// [`AuthSchema`], one object per method.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) method: Spanned<String>,
    pub(super) mount: Option<Spanned<String>>,
    pub(super) role_id_file: Option<Spanned<String>>,
    pub(super) secret_id_file: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) principal: Option<Spanned<String>>,
    pub(super) keytab: Option<Spanned<String>>,
    pub(super) ccache: Option<Spanned<String>>,
    pub(super) spn_host: Option<Spanned<String>>,
    pub(super) cert_file: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) name: Option<Spanned<String>>,
}

/// The shape of a login block as the JSON Schema describes it; never deserialized.
#[derive(schemars::JsonSchema)]
#[schemars(rename = "Auth")]
#[serde(deny_unknown_fields, tag = "method", rename_all = "snake_case")]
#[allow(dead_code)]
pub(super) enum AuthSchema {
    Approle {
        #[serde(default)]
        mount: Option<String>,
        role_id_file: String,
        secret_id_file: String,
    },
    TokenFile {
        path: String,
    },
    Kerberos {
        /// Required: a realm cannot be guessed, and `"{account}@CERN.CH"` says it in one line.
        principal: String,
        keytab: String,
        ccache: Option<String>,
        mount: Option<String>,
        spn_host: Option<String>,
    },
    Cert {
        cert_file: String,
        key_file: String,
        mount: Option<String>,
        name: Option<String>,
    },
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Issuer")]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    #[schemars(with = "String")]
    pub(super) url: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) ca_file: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) ca_dir: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) audiences: Vec<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Host")]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    #[schemars(with = "String")]
    pub(super) address: Spanned<String>,
    #[schemars(with = "Option<u16>")]
    pub(super) port: Option<Spanned<u16>>,
    #[schemars(with = "String")]
    pub(super) user: Spanned<String>,
    #[schemars(with = "String")]
    pub(super) key_file: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) key_passphrase_file: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub(super) known_hosts: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) spool: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) spool_owner: Option<Spanned<String>>,
    pub(super) signal_credmon: Option<bool>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) timeout: Option<Spanned<DurationValue>>,
    /// Directories under which `file` destinations on this host may lie (default: see
    /// `DEFAULT_FILE_ROOTS`).
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) file_roots: Option<Vec<Spanned<String>>>,
    /// The Vault hosts this host's credd trusts (HTCondor's `TRUSTED_VAULT_HOSTS`): when given,
    /// every credd destination here needs `broker.vault_url` on one of them.
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) trusted_vault_hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Default, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Defaults")]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    #[schemars(with = "Option<DurationValue>")]
    pub(super) min_access_lifetime: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) min_vault_lifetime: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) renew_before: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) expiry_warning: Option<Spanned<DurationValue>>,
    /// Failures in a row at a destination before on-call is told (default 1).
    #[schemars(with = "Option<u32>")]
    pub(super) alert_after: Option<Spanned<u32>>,
    pub(super) request_scopes: Option<bool>,
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) owners: Option<Vec<Spanned<String>>>,
    #[schemars(with = "Option<String>")]
    pub(super) schedule: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Service")]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    #[schemars(with = "Option<String>")]
    pub(super) oauth_service: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub(super) account: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) credkey: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) role: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) issuer: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) required: Vec<Spanned<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) allowed: Option<Vec<Spanned<String>>>,
    pub(super) request_scopes: Option<bool>,
    #[schemars(with = "Option<String>")]
    pub(super) audience: Option<Spanned<String>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) min_access_lifetime: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) min_vault_lifetime: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) renew_before: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) expiry_warning: Option<Spanned<DurationValue>>,
    /// Failures in a row at a destination before on-call is told (default: `defaults`, else 1).
    #[schemars(with = "Option<u32>")]
    pub(super) alert_after: Option<Spanned<u32>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub(super) owners: Option<Vec<Spanned<String>>>,
    #[schemars(with = "Option<AuthSchema>")]
    pub(super) auth: Option<Spanned<RawAuth>>,
    #[schemars(with = "Option<String>")]
    pub(super) schedule: Option<Spanned<String>>,
    #[schemars(with = "Vec<RawDestination>")]
    pub(super) destinations: Spanned<Vec<Spanned<RawDestination>>>,
    /// The service's HTCondor IDToken, minted on `mint_host` and put in the client account's
    /// `tokens.d`.
    #[schemars(with = "Option<RawIdToken>")]
    pub(super) idtoken: Option<Spanned<RawIdToken>>,
}

/// A service's `idtoken:` block: what `condor_token_create` is asked for, where it runs, where
/// the token goes and which daemons accept it.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "IdToken")]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdToken {
    /// `-identity user@domain`.
    #[schemars(with = "String")]
    pub(super) identity: Spanned<String>,
    /// `-authz` levels, one per flag (`READ`, `WRITE`, …).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) authz: Vec<Spanned<String>>,
    #[schemars(with = "DurationValue")]
    pub(super) lifetime: Spanned<DurationValue>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) renew_before: Option<Spanned<DurationValue>>,
    /// The signing key's name (`-key`); a dedicated key rather than `POOL`.
    #[schemars(with = "String")]
    pub(super) key: Spanned<String>,
    /// The `iss` the token must carry: the accepting daemons' `TRUST_DOMAIN`.
    #[schemars(with = "String")]
    pub(super) issuer: Spanned<String>,
    /// A host of `hosts:` holding the signing key, where `condor_token_create` runs.
    #[schemars(with = "String")]
    pub(super) mint_host: Spanned<String>,
    /// The file name in `tokens.d` (default: the service name).
    #[schemars(with = "Option<String>")]
    pub(super) name: Option<Spanned<String>>,
    #[schemars(with = "Vec<RawIdTokenDestination>")]
    pub(super) destinations: Spanned<Vec<Spanned<RawIdTokenDestination>>>,
    /// Schedds and collectors that accept the token: where the `revoke --idtoken` drill writes
    /// its `SEC_TOKEN_REVOCATION_EXPR`.
    #[schemars(with = "Option<RawRevocation>")]
    pub(super) revocation: Option<Spanned<RawRevocation>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "IdTokenDestination")]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdTokenDestination {
    #[schemars(with = "Vec<String>")]
    pub(super) hosts: Vec<Spanned<String>>,
    /// Default `~<account>/.condor/tokens.d/<name>`.
    #[schemars(with = "Option<String>")]
    pub(super) path: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "IdTokenRevocation")]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocation {
    #[schemars(with = "Vec<String>")]
    pub(super) hosts: Vec<Spanned<String>>,
    /// The daemons' `config.d` directory (default `/etc/condor/config.d`).
    #[schemars(with = "Option<String>")]
    pub(super) config_dir: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Destination")]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
// Parsed once and dropped; boxing the larger variant would only add noise.
#[allow(clippy::large_enum_variant)]
pub(super) enum RawDestination {
    Credd {
        #[schemars(with = "Vec<String>")]
        hosts: Vec<Spanned<String>>,
        /// Handles: `<oauth_service>_<name>.top` beside the service's own, each with narrower
        /// scopes (or its own audience) and no Vault token of its own.
        #[serde(default)]
        #[schemars(with = "Vec<RawHandle>")]
        handles: Vec<Spanned<RawHandle>>,
    },
    File {
        #[schemars(with = "Vec<String>")]
        hosts: Vec<Spanned<String>>,
        #[schemars(with = "Option<String>")]
        path: Option<Spanned<String>>,
        #[schemars(with = "Option<String>")]
        content: Option<Spanned<String>>,
        #[schemars(with = "Option<String>")]
        owner: Option<Spanned<String>>,
        #[schemars(with = "Option<ModeValue>")]
        mode: Option<Spanned<ModeValue>>,
        #[schemars(with = "Option<DurationValue>")]
        ttl: Option<Spanned<DurationValue>>,
    },
}

/// One handle of a credd destination, as `condor_credential_storer` makes them.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Handle")]
#[serde(deny_unknown_fields)]
pub(super) struct RawHandle {
    /// Letters, digits and hyphens: the part after the last `_` of the credential's name.
    #[schemars(with = "String")]
    pub(super) name: Spanned<String>,
    /// Requested on the sts path; each inside one of the service's allowed scopes.
    #[schemars(with = "Vec<String>")]
    pub(super) scopes: Spanned<Vec<Spanned<String>>>,
    #[schemars(with = "Option<String>")]
    pub(super) audience: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Notify")]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    #[schemars(with = "Option<RawSmtp>")]
    pub(super) smtp: Option<Spanned<RawSmtp>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) admins: Vec<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) templates_dir: Option<Spanned<String>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) remind_every: Option<Spanned<DurationValue>>,
    #[schemars(with = "Option<RawWebhook>")]
    pub(super) webhook: Option<Spanned<RawWebhook>>,
}

/// A Mattermost / Slack incoming webhook that receives what the admins are mailed.
#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Webhook")]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    /// A file (mode 0600) holding the webhook's https URL: the URL is its credential.
    #[schemars(with = "String")]
    pub(super) url_file: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) ca_file: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) ca_dir: Option<Spanned<String>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) timeout: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Smtp")]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    #[schemars(with = "String")]
    pub(super) host: Spanned<String>,
    #[schemars(with = "Option<u16>")]
    pub(super) port: Option<Spanned<u16>>,
    #[schemars(with = "Option<String>")]
    pub(super) tls: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub(super) from: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub(super) username: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub(super) password_file: Option<Spanned<String>>,
    #[schemars(with = "Option<DurationValue>")]
    pub(super) timeout: Option<Spanned<DurationValue>>,
}

/// A YAML scalar an operator may write as text or as a whole number (durations, file modes).
#[derive(Clone, Debug, schemars::JsonSchema)]
#[schemars(untagged)]
pub(super) enum Scalar {
    Text(String),
    Number(u64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value such as 15m, 7d, 3600 or \"0600\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Number(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                u64::try_from(v).map(Scalar::Number).map_err(|_| E::custom("a negative number is not allowed here"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as `90s`, `15m`, `7d`, `1h 30m` (humantime), or as whole seconds.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
#[schemars(rename = "Duration")]
pub(super) struct DurationValue(pub(super) Scalar);

impl DurationValue {
    pub(super) fn to_duration(&self) -> Result<Duration, String> {
        match &self.0 {
            Scalar::Number(s) => Ok(Duration::from_secs(*s)),
            Scalar::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| format!("`{t}` is not a duration ({e}); write e.g. 15m, 12h, 7d")),
        }
    }
}

/// A file mode written as an octal string (`"0600"`, `"0o600"`) or an unquoted number whose
/// digits are read as octal (`0600`, `600`): nobody writes modes in decimal.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
#[schemars(rename = "FileMode")]
pub(super) struct ModeValue(pub(super) Scalar);

impl ModeValue {
    pub(super) fn to_mode(&self) -> Result<u32, String> {
        let digits = match &self.0 {
            Scalar::Number(n) => n.to_string(),
            Scalar::Text(t) => t.trim().trim_start_matches("0o").to_string(),
        };
        match u32::from_str_radix(&digits, 8) {
            Ok(m) if m <= 0o7777 => Ok(m),
            _ => Err(format!("`{digits}` is not an octal file mode; write it quoted, e.g. \"0600\"")),
        }
    }
}

/// The JSON Schema of the raw structs (see [`super::json_schema`]).
pub(super) fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawInventory);
    schema.insert("title".into(), "token-bastion services.yaml".into());
    schema.insert(
        "description".into(),
        "Which service accounts get which tokens, and where they go. Reference: README.md; validate with `token-bastion check`.".into(),
    );
    schema.to_value()
}
