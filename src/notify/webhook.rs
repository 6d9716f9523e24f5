//! The webhook channel: a Mattermost / Slack incoming webhook, posted `{"text": ...}` over HTTPS.
//!
//! Owns reading the webhook's URL from its file into a [`Secret`] (registered with the
//! redaction point while held) and one bounded POST per message.
//!
//! Must never: show the URL (its path is the credential) in an error, a log line or `Debug`
//! (reqwest errors are stripped of it); read more of a reply than
//! [`crate::http::MAX_EXPLANATION_BYTES`]; wait without the configured timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::{self, CaSource};
use crate::secret::Secret;

use super::OutgoingMail;

/// Where and how messages are posted. `Debug` shows the URL as `[redacted]`.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub url: Secret,
    pub ca: CaSource,
    /// Bound on connecting and on the whole request.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL file {path}: {source}")]
    ReadUrl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook URL file {path}: does not hold an https URL")]
    NotHttps { path: PathBuf },
    #[error("webhook client: {0}")]
    Client(#[source] http::HttpError),
    #[error("webhook: {0}")]
    Request(#[source] reqwest::Error),
    #[error("webhook answered HTTP {status}: {reply}")]
    Status { status: u16, reply: String },
}

impl WebhookError {
    /// A payload the webhook refused (400, 413): other messages may still go through. Anything
    /// else (unreachable, 401/403/404 for a revoked hook, 429, 5xx) holds for every message.
    pub(super) fn is_about_this_message(&self) -> bool {
        matches!(self, WebhookError::Status { status: 400 | 413, .. })
    }
}

impl WebhookConfig {
    /// Reads the URL from `url_file` (trailing whitespace dropped). The file's mode is checked
    /// with the inventory's other secret files.
    pub fn from_file(url_file: &Path, ca: CaSource, timeout: Duration) -> Result<WebhookConfig, WebhookError> {
        let text = std::fs::read_to_string(url_file).map_err(|source| WebhookError::ReadUrl { path: url_file.into(), source })?;
        let url = Secret::new(text.trim_end().to_string());
        if !url.expose().starts_with("https://") || url.expose().parse::<reqwest::Url>().is_err() {
            return Err(WebhookError::NotHttps { path: url_file.into() });
        }
        Ok(WebhookConfig { url, ca, timeout })
    }

    pub(super) fn client(&self) -> Result<reqwest::Client, WebhookError> {
        http::client(&self.ca, self.timeout).map_err(WebhookError::Client)
    }

    /// Posts one message: its subject, an empty line, its body.
    pub(super) async fn post(&self, client: &reqwest::Client, message: &OutgoingMail) -> Result<(), WebhookError> {
        let text = format!("{}\n\n{}", message.subject, message.body.trim_end());
        let response = client
            .post(self.url.expose())
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| WebhookError::Request(e.without_url()))?;
        let status = response.status();
        // Read (bounded) even on success, so the connection is left clean.
        let reply = http::read_body(response, http::MAX_EXPLANATION_BYTES).await;
        if status.is_success() {
            return Ok(());
        }
        let reply = match reply {
            Ok(bytes) => crate::redact::excerpt(&String::from_utf8_lossy(&bytes), 200).into_owned(),
            Err(e) => e.to_string(),
        };
        Err(WebhookError::Status { status: status.as_u16(), reply })
    }
}
