//! Where and how a credd destination's files lie in the credential spool that the HTCondor Vault
//! credmon reads: `<spool>/<user>/` (0700, its `<user>.mark` removed), `<service>.top` (JSON with the Vault token, 0600 —
//! the credd rejects any group/other bit) and `<service>.use` (the bare access token and a
//! newline, 0400, written only where there is none: afterwards it is the credmon's).
//!
//! Pure: builds [`RemoteDir`]/[`RemoteFile`] values, touches nothing. Must never give the `.top`
//! document a `Serialize` or `Debug` path out: it is built straight into a [`Secret`].

use crate::secret::Secret;

use super::{Owner, RemoteDir, RemoteFile};

/// Mode of the per-user spool directory.
pub const SPOOL_DIR_MODE: u32 = 0o700;
/// Mode of `<service>.top`: the credd reads it only without group/other bits.
pub const TOP_MODE: u32 = 0o600;
/// Mode of `<service>.use`, as the credmon itself writes it.
pub const USE_MODE: u32 = 0o400;

/// What goes into `<service>.top`.
#[derive(Clone, Debug)]
pub struct TopFile {
    /// `None` for a handle's `.top`: the credmon takes the parent `<provider>.top`'s.
    pub vault_token: Option<Secret>,
    /// The creds or sts URL the credmon calls (`https://…:8200/v1/…`).
    pub vault_url: String,
    /// Comma-separated, exactly as requested and validated.
    pub scopes: Option<String>,
    pub audience: Option<String>,
}

impl TopFile {
    /// The JSON document the credmon reads, as a [`Secret`] (it contains the Vault token, if any).
    pub fn to_json(&self) -> Secret {
        let mut doc = serde_json::Map::new();
        if let Some(token) = &self.vault_token {
            doc.insert("vault_token".into(), token.expose().into());
        }
        doc.insert("vault_url".into(), self.vault_url.clone().into());
        if let Some(scopes) = &self.scopes {
            doc.insert("scopes".into(), scopes.clone().into());
        }
        if let Some(audience) = &self.audience {
            doc.insert("audience".into(), audience.clone().into());
        }
        let mut text = serde_json::Value::Object(doc).to_string();
        text.push('\n');
        Secret::new(text)
    }
}

/// The directory and the two files of one credd destination. File ids are `<user>/<service>.top`
/// and `<user>/<service>.use`; the caller may replace them with its own destination ids.
pub fn credd_layout(spool: &str, user: &str, service: &str, contents: &CreddContents, owner: &Owner) -> (RemoteDir, Vec<RemoteFile>) {
    let (dir, top_path, use_path) = credd_paths(spool, user, service);
    let spool = spool.trim_end_matches('/');
    let file = |suffix: &str, path: String, content: &Secret, mode: u32, only_if_absent: bool| RemoteFile {
        id: format!("{user}/{service}.{suffix}"),
        path,
        root: spool.to_string(),
        uid_of: None,
        content: content.clone(),
        mode,
        owner: Some(owner.clone()),
        only_if_absent,
        after: None,
        keep_if_same: false,
    };
    // The credmon owns a `.use` once there is one: a new `.top` is newer than it, so the
    // credmon rewrites it at its next scan; writing it here as well would hide a credmon that
    // no longer refreshes.
    let files = vec![
        file("top", top_path, &contents.top, TOP_MODE, false),
        file("use", use_path, &contents.use_file, USE_MODE, true),
    ];
    (RemoteDir { path: dir, mode: SPOOL_DIR_MODE, owner: Some(owner.clone()), clear_mark: true }, files)
}

/// What a credd destination's `.top` and `.use` hold: the same on every host a service's
/// tokens go to, so made once per service and shared (one copy, one redact registration).
#[derive(Clone, Debug)]
pub struct CreddContents {
    pub top: Secret,
    pub use_file: Secret,
}

impl CreddContents {
    pub fn new(top: &TopFile, access_token: &Secret) -> CreddContents {
        CreddContents { top: top.to_json(), use_file: Secret::new(format!("{}\n", access_token.expose())) }
    }
}

/// A credd destination's account directory `<spool>/<user>` and its `.top` and `.use` paths.
pub fn credd_paths(spool: &str, user: &str, service: &str) -> (String, String, String) {
    let dir = format!("{}/{user}", spool.trim_end_matches('/'));
    let (top, use_file) = (format!("{dir}/{service}.top"), format!("{dir}/{service}.use"));
    (dir, top, use_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Owner {
        Owner { user: "root".into(), group: "root".into() }
    }

    #[test]
    fn layout_paths_modes_and_contents() {
        let top = TopFile {
            vault_token: Some(Secret::new("hvs.VAULTTOKENabc")),
            vault_url: "https://vault.cern.ch:8200/v1/secret/oauth/sts/cms/default:wmagent".into(),
            scopes: Some("storage.read:/,compute.create".into()),
            audience: Some("https://wlcg.cern.ch/jwt/v1/any".into()),
        };
        let (dir, files) =
            credd_layout("/var/lib/condor/oauth_credentials/", "cmsprod", "cms_wmagent", &CreddContents::new(&top, &Secret::new("eyJ.a.b")), &root());
        assert_eq!(dir.path, "/var/lib/condor/oauth_credentials/cmsprod");
        assert_eq!(dir.mode, 0o700);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "/var/lib/condor/oauth_credentials/cmsprod/cms_wmagent.top");
        assert_eq!(files[0].mode, 0o600);
        assert_eq!(files[0].id, "cmsprod/cms_wmagent.top");
        assert_eq!(files[1].path, "/var/lib/condor/oauth_credentials/cmsprod/cms_wmagent.use");
        assert_eq!(files[1].mode, 0o400);
        assert_eq!(files[1].content.expose(), "eyJ.a.b\n");
        assert!(files[1].only_if_absent && !files[0].only_if_absent, "the .use is the credmon's once it exists");
        assert_eq!(files[0].owner.as_ref().unwrap().user, "root");
        assert!(files.iter().all(|f| f.root == "/var/lib/condor/oauth_credentials"), "the rule starts at the spool");
        assert!(dir.clear_mark);

        let json: serde_json::Value = serde_json::from_str(files[0].content.expose()).unwrap();
        assert_eq!(json["vault_token"], "hvs.VAULTTOKENabc");
        assert_eq!(json["vault_url"], top.vault_url.as_str());
        assert_eq!(json["scopes"], "storage.read:/,compute.create");
        assert_eq!(json["audience"], "https://wlcg.cern.ch/jwt/v1/any");
    }

    #[test]
    fn optional_fields_are_left_out_not_null() {
        let top = TopFile {
            vault_token: Some(Secret::new("hvs.X")),
            vault_url: "https://v:8200/v1/secret/oauth/creds/cms/default:r".into(),
            scopes: None,
            audience: None,
        };
        let json: serde_json::Value = serde_json::from_str(top.to_json().expose()).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["vault_token", "vault_url"]);
    }

    #[test]
    fn a_handle_top_holds_no_vault_token() {
        let top = TopFile {
            vault_token: None,
            vault_url: "https://v:8200/v1/secret/oauth/sts/cms/default:r".into(),
            scopes: Some("storage.read:/store".into()),
            audience: Some("https://aud.example".into()),
        };
        let json: serde_json::Value = serde_json::from_str(top.to_json().expose()).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["audience", "scopes", "vault_url"]);
    }

    #[test]
    fn nothing_secret_in_debug() {
        let top = TopFile {
            vault_token: Some(Secret::new("hvs.DEBUGSECRET")),
            vault_url: "https://v:8200/v1/x".into(),
            scopes: None,
            audience: None,
        };
        let (dir, files) = credd_layout("/s", "u", "svc", &CreddContents::new(&top, &Secret::new("eyJDEBUGACCESS")), &root());
        let shown = format!("{top:?} {dir:?} {files:?}");
        assert!(!shown.contains("DEBUGSECRET"));
        assert!(!shown.contains("DEBUGACCESS"));
    }
}
