//! Sending what the bastion has to tell: the only module that knows SMTP and the webhook.
//!
//! Owns the message templates ([`templates`]), the channels a message goes out on (mail through
//! lettre's blocking SMTP transport; a Mattermost / Slack incoming webhook, [`webhook`]), and
//! sending a batch of queued messages, reporting one [`SendOutcome`] per message. It never
//! reads or marks the outbox: the caller (the cycle, the daemon) hands it what is pending and
//! records the outcomes.
//!
//! Must never: put a token, the SMTP password or the webhook URL in a message, an error or a
//! log line (a message's inputs carry fingerprints and secret-free error texts only; the
//! password and the URL live in [`Secret`]s, exposed only to lettre's credentials and to the
//! request); import `state`.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls as LettreTls, TlsParameters};
use lettre::{SmtpTransport, Transport};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

mod templates;
pub mod webhook;

pub use templates::{
    ADMIN_TEMPLATE, AlertKind, ExpiryLine, FailureLine, Notice, OVERDUE_TEMPLATE, OWNER_TEMPLATE, RELOAD_REFUSED_TEMPLATE, RecoveryLine, RunSummary,
    SETUP_FAILURE_TEMPLATE, TEST_TEMPLATE, Templates, show_duration, template_names,
};
pub use webhook::WebhookConfig;

/// How the connection to the SMTP relay is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plain SMTP (a relay on localhost or a trusted network).
    None,
    /// Plain connect, then `STARTTLS`, which is required (typically port 587).
    StartTls,
    /// TLS from the first byte (SMTPS, typically port 465).
    Wrapper,
}

/// Where and how mail is sent. `Debug` shows the password as `[redacted]`.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// Envelope and header sender, e.g. `token-bastion <noreply@cern.ch>`.
    pub from: String,
    pub tls: Tls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Bound on connecting and on each SMTP command.
    pub timeout: Duration,
}

/// A rendered message; what the outbox stores. A webhook post carries subject and body and
/// no recipients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMail {
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// The way a message goes out. One outbox row per channel, each sent and marked on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    Mail,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Mail => "mail",
            Channel::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "mail" => Some(Channel::Mail),
            "webhook" => Some(Channel::Webhook),
            _ => None,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The channels configured, secrets read. A channel that is `None` leaves its messages queued.
#[derive(Debug, Default)]
pub struct Channels {
    pub smtp: Option<SmtpConfig>,
    pub webhook: Option<WebhookConfig>,
}

/// What became of one message handed to [`send_each`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    /// Attempted and failed (secret-free text); the attempt counts.
    Failed(String),
    /// Not attempted: its channel is not configured or was found down earlier in the batch.
    Deferred,
}

/// What a batch came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxReport {
    pub sent: usize,
    /// Attempted and failed; still queued with the attempt counted.
    pub failed: usize,
    /// Not attempted (channel not configured or down); still queued, attempt not counted.
    pub deferred: usize,
}

impl OutboxReport {
    pub fn count(&mut self, outcome: &SendOutcome) {
        match outcome {
            SendOutcome::Sent => self.sent += 1,
            SendOutcome::Failed(_) => self.failed += 1,
            SendOutcome::Deferred => self.deferred += 1,
        }
    }

    pub fn add(&mut self, other: OutboxReport) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.deferred += other.deferred;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("message template directory {path}: {source}")]
    TemplateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `at` is the template's file (or built-in name) and line.
    #[error("message template {at}: {detail}")]
    Template {
        at: String,
        detail: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("message template {template}: the first line must be \"Subject: <subject>\"")]
    TemplateShape { template: String },
    #[error("mail address {address:?}: {source}")]
    Address {
        address: String,
        #[source]
        source: lettre::address::AddressError,
    },
    #[error("mail has no recipient")]
    NoRecipient,
    #[error("cannot build mail: {0}")]
    Build(#[source] lettre::error::Error),
    #[error("SMTP settings: a username needs a password and a password needs a username")]
    Credentials,
    #[error("SMTP TLS setup for {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("sending mail via {host}:{port}: {source}")]
    Send {
        host: String,
        port: u16,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
}

impl NotifyError {
    /// A refusal that is about this message (a rejected recipient, a payload the webhook
    /// refuses), as opposed to a channel that cannot be reached or is failing, which would fail
    /// every message alike.
    fn is_about_this_message(&self) -> bool {
        match self {
            NotifyError::Send { source, .. } => source.is_permanent(),
            NotifyError::Address { .. } | NotifyError::NoRecipient | NotifyError::Build(_) => true,
            NotifyError::Webhook(e) => e.is_about_this_message(),
            _ => false,
        }
    }
}

/// A mail address as mail is sent to it (and `check` validates it).
pub fn mailbox(address: &str) -> Result<Mailbox, NotifyError> {
    address.parse().map_err(|source| NotifyError::Address { address: address.to_string(), source })
}

fn transport(cfg: &SmtpConfig) -> Result<SmtpTransport, NotifyError> {
    let tls_params = || TlsParameters::new(cfg.host.clone()).map_err(|source| NotifyError::Tls { host: cfg.host.clone(), source });
    let tls = match cfg.tls {
        Tls::None => LettreTls::None,
        Tls::StartTls => LettreTls::Required(tls_params()?),
        Tls::Wrapper => LettreTls::Wrapper(tls_params()?),
    };
    let mut builder = SmtpTransport::builder_dangerous(cfg.host.as_str()).port(cfg.port).tls(tls).timeout(Some(cfg.timeout));
    match (&cfg.username, &cfg.password) {
        (Some(user), Some(password)) => {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_string()));
        }
        (None, None) => {}
        _ => return Err(NotifyError::Credentials),
    }
    Ok(builder.build())
}

/// Sends one mail now.
pub fn send(cfg: &SmtpConfig, mail: &OutgoingMail) -> Result<(), NotifyError> {
    let transport = transport(cfg)?;
    send_with(&transport, cfg, mail)
}

fn send_with(transport: &SmtpTransport, cfg: &SmtpConfig, mail: &OutgoingMail) -> Result<(), NotifyError> {
    if mail.to.is_empty() {
        return Err(NotifyError::NoRecipient);
    }
    let mut builder = lettre::Message::builder()
        .from(mailbox(&cfg.from)?)
        .subject(mail.subject.as_str())
        .header(ContentType::TEXT_PLAIN)
        // Lets a mail client thread or deduplicate a mail the outbox retried.
        .message_id(None);
    for to in &mail.to {
        builder = builder.to(mailbox(to)?);
    }
    // lettre ends the body with CRLF itself; without this the mail would grow a blank line.
    let body = mail.body.strip_suffix('\n').unwrap_or(&mail.body);
    let message = builder.body(body.to_string()).map_err(NotifyError::Build)?;
    transport.send(&message).map(|_| ()).map_err(|source| NotifyError::Send { host: cfg.host.clone(), port: cfg.port, source })
}

/// Sends each message on its channel, in order, and says what became of each (same order).
/// Blocking; `runtime` drives the webhook's HTTPS requests.
///
/// A message a channel refuses for itself (a bad recipient) fails alone; once a channel cannot
/// be reached or fails transiently, the rest of its messages are deferred rather than each
/// waiting out the timeout against a dead peer. Other channels go on.
pub fn send_each(channels: &Channels, runtime: &tokio::runtime::Handle, messages: &[(Channel, &OutgoingMail)]) -> Vec<SendOutcome> {
    let mut down = std::collections::BTreeSet::new();
    let mut smtp: Option<Result<SmtpTransport, ()>> = None;
    let mut hook: Option<Result<reqwest::Client, ()>> = None;
    let mut outcomes = Vec::with_capacity(messages.len());
    for (channel, message) in messages {
        if down.contains(channel) {
            outcomes.push(SendOutcome::Deferred);
            continue;
        }
        let result = match channel {
            Channel::Mail => {
                let Some(cfg) = &channels.smtp else {
                    outcomes.push(SendOutcome::Deferred);
                    continue;
                };
                let transport = smtp.get_or_insert_with(|| {
                    transport(cfg).map_err(|e| tracing::warn!(error = %e, "cannot set up the SMTP transport; mail stays queued"))
                });
                match transport {
                    Ok(t) => send_with(t, cfg, message),
                    Err(()) => {
                        down.insert(*channel);
                        outcomes.push(SendOutcome::Deferred);
                        continue;
                    }
                }
            }
            Channel::Webhook => {
                let Some(cfg) = &channels.webhook else {
                    outcomes.push(SendOutcome::Deferred);
                    continue;
                };
                let client = hook.get_or_insert_with(|| {
                    cfg.client().map_err(|e| tracing::warn!(error = %e, "cannot set up the webhook client; messages stay queued"))
                });
                match client {
                    Ok(c) => runtime.block_on(cfg.post(c, message)).map_err(NotifyError::from),
                    Err(()) => {
                        down.insert(*channel);
                        outcomes.push(SendOutcome::Deferred);
                        continue;
                    }
                }
            }
        };
        outcomes.push(match result {
            Ok(()) => SendOutcome::Sent,
            Err(e) => {
                // The error names the relay and its reply, or the webhook's status and a bounded
                // excerpt of its reply; never the password or the URL.
                let text = crate::redact::scrub(&e.to_string()).into_owned();
                tracing::warn!(channel = %channel, subject = %message.subject, error = %text, "message not sent; kept in the outbox");
                if !e.is_about_this_message() {
                    down.insert(*channel);
                }
                SendOutcome::Failed(text)
            }
        });
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_password() {
        let cfg = SmtpConfig {
            host: "smtp.example.org".into(),
            port: 587,
            from: "bastion@example.org".into(),
            tls: Tls::StartTls,
            username: Some("bastion".into()),
            password: Some(Secret::new("smtp-pass-0123456789")),
            timeout: Duration::from_secs(30),
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("smtp-pass-0123456789"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn half_credentials_are_refused() {
        let cfg = SmtpConfig {
            host: "127.0.0.1".into(),
            port: 25,
            from: "bastion@example.org".into(),
            tls: Tls::None,
            username: Some("bastion".into()),
            password: None,
            timeout: Duration::from_secs(1),
        };
        let mail = OutgoingMail {
            to: vec!["a@example.org".into()],
            subject: "s".into(),
            body: "b".into(),
        };
        assert!(matches!(send(&cfg, &mail), Err(NotifyError::Credentials)));
    }
}
