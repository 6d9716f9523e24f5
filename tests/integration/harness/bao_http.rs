//! OpenBao's HTTP API as a transport for [`super::openbao::OpenBao`]'s requests, in place of
//! the `bao` CLI, whose process per request is too slow to set up thousands of services (the
//! benchmark). Same requests, same replies: `read` is a GET, `write` a POST with the JSON body,
//! `delete` a DELETE.
//!
//! Trusts only the server's own CA. Like the CLI path, it never puts a token or a request body in
//! an error: errors carry the verb, the path, the HTTP status and OpenBao's `errors` list.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use token_bastion::http::{CaSource, client};

pub struct BaoHttp {
    addr: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl BaoHttp {
    /// A client for the server at `addr` (`https://127.0.0.1:<port>`) whose certificate `ca`
    /// signed.
    pub fn new(addr: &str, ca: &Path) -> BaoHttp {
        let client = client(&CaSource::File(ca.to_path_buf()), Duration::from_secs(20)).expect("HTTPS client for OpenBao");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        BaoHttp { addr: addr.trim_end_matches('/').to_string(), client, runtime }
    }

    /// One request as `token`; may be called from many threads at once.
    pub fn call(&self, token: &str, verb: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let request = match verb {
            "read" => self.client.get(url),
            "write" => self.client.post(url).json(body.unwrap_or(&Value::Object(Default::default()))),
            "delete" => self.client.delete(url),
            other => return Err(format!("bao {other} {path}: verb not supported over HTTP")),
        };
        let request = request.header("X-Vault-Token", token);
        self.runtime.block_on(async {
            let reply = request.send().await.map_err(|e| format!("bao {verb} {path}: {e}"))?;
            let status = reply.status();
            let text = reply.text().await.map_err(|e| format!("bao {verb} {path}: {e}"))?;
            let json: Value = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).map_err(|e| format!("bao {verb} {path}: reply is not JSON: {e}"))? };
            if !status.is_success() {
                return Err(format!("bao {verb} {path}: HTTP {status}: {}", json["errors"]));
            }
            Ok(json)
        })
    }
}

#[cfg(test)]
mod self_tests {
    use super::super::Leaks;
    use super::super::openbao::{JwtSpec, OpenBao};

    /// The same set-up requests work over HTTP: a service's AppRole logs in with its policy, a
    /// minted JWT verifies, the access token reads back with the service's token, and an error
    /// is OpenBao's HTTP status (which only this path reports so).
    #[test]
    fn services_are_set_up_over_http_as_over_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let leaks = Leaks::default();
        let bao = OpenBao::start(dir.path(), &leaks);
        bao.use_http();
        let creds = bao.add_service("web", "cms", "acctweb", "web");
        let token = bao.login_service(&creds);
        let info = bao.lookup(&token).unwrap();
        assert!(info["policies"].as_array().unwrap().iter().any(|p| p == "svc-web"), "{info}");
        let jwt = bao.mint_jwt(&JwtSpec::default());
        assert!(bao.introspect(&jwt));
        bao.put_access_token("cms", "acctweb", "web", true, &jwt, None);
        let read = bao.api_as(&token, "read", "secret/oauth/sts/cms/acctweb:web", None).unwrap();
        assert!(read["data"]["access_token"] == jwt.as_str(), "the stored access token reads back");
        let refused = bao.api_as(&token, "read", "secret/oauth/sts/cms/other:web", None).unwrap_err();
        assert!(refused.contains("HTTP 403"), "{refused}");
        assert!(!refused.contains(&token), "no token in errors");
    }
}
