//! The sections of the sinks: `[sinks.log]`, `[sinks.file]` and `[sinks.email]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{positive, show};
use crate::error::ConfigError;

/// The `[sinks.log]` section: reports as `tracing` events ([`crate::sink::LogSink`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSinkConfig {
    /// Level of the events: `error`, `warn`, `info`, `debug` or `trace`. Default: `warn`.
    pub level: String,
    /// Whether each event carries the whole text report. Default: true.
    pub full_report: bool,
}

impl Default for LogSinkConfig {
    fn default() -> Self {
        Self {
            level: crate::sink::LogSink::DEFAULT_LEVEL
                .as_str()
                .to_ascii_lowercase(),
            full_report: true,
        }
    }
}

impl LogSinkConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tracing_level().map(|_| ())
    }

    /// The level as a [`tracing::Level`].
    ///
    /// # Errors
    ///
    /// A name other than `error`, `warn`, `info`, `debug` and `trace` (in any case).
    pub fn tracing_level(&self) -> Result<tracing::Level, ConfigError> {
        match self.level.to_ascii_lowercase().as_str() {
            "error" => Ok(tracing::Level::ERROR),
            "warn" => Ok(tracing::Level::WARN),
            "info" => Ok(tracing::Level::INFO),
            "debug" => Ok(tracing::Level::DEBUG),
            "trace" => Ok(tracing::Level::TRACE),
            _ => Err(ConfigError::invalid(
                "sinks.log.level",
                show(&self.level),
                "must be one of error, warn, info, debug, trace",
            )),
        }
    }
}

/// The `[sinks.file]` section: each report as a `.txt` and a `.json` file
/// ([`crate::sink::FileSink`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The directory reports go to, created if needed. No default: it must be given.
    pub dir: PathBuf,
}

impl FileSinkConfig {
    /// Checks every setting. Whether the directory can be written is checked when the sink is
    /// built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "sinks.file.dir",
                "\"\"",
                "must name the directory reports are written to",
            ));
        }
        Ok(())
    }
}

// The defaults of `EmailSink` and `SmtpConfig`, here too because this data exists without the
// `email` feature; a test checks they agree.
const DEFAULT_SUBJECT: &str = "[vigil] {summary} on {hostname} [{signature}]";
const DEFAULT_THROTTLE_PER_ROUTE: u32 = 10;
const DEFAULT_THROTTLE_TOTAL: u32 = 30;
const DEFAULT_THROTTLE_WINDOW: Duration = Duration::from_secs(300);
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(2);
const DEFAULT_QUEUE_CAPACITY: usize = 256;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The placeholders of the subject template.
const SUBJECT_PLACEHOLDERS: [&str; 13] = [
    "summary",
    "method",
    "uri",
    "route",
    "elapsed",
    "hostname",
    "kind",
    "request_id",
    "capture",
    "top_frame",
    "pid",
    "signature",
    "signature_text",
];

/// The `[sinks.email]` section: each report as a mail, through SMTP or into a directory of
/// `.eml` files (`EmailSink`).
///
/// This is data and exists with or without the `email` cargo feature, so that one
/// configuration file serves every build; building the sink from it needs the feature. With
/// the feature, [`EmailSinkConfig::validate`] also parses the URL and the addresses as the sink
/// would; without it, it checks their shape only.
///
/// Exactly one of `url` and `eml_dir` is given. `Debug` never prints the password, nor a
/// password inside the URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailSinkConfig {
    /// The SMTP server: `smtp://[user[:password]@]host[:port][?tls=none|starttls|implicit]` or
    /// `smtps://…`. Timeouts are set with `connect_timeout` and `command_timeout` here, not in
    /// the URL. No default.
    pub url: Option<String>,
    /// Writes each mail as a `.eml` file into this directory instead of sending it.
    /// No default.
    pub eml_dir: Option<PathBuf>,
    /// The sender, `vigil@example.com` or `Vigil <vigil@example.com>`.
    /// Default: `None`, which is `vigil@<host name>`.
    pub from: Option<String>,
    /// The recipients, one address each; at least one. No default.
    pub to: Vec<String>,
    /// The subject template, with placeholders such as `{summary}`, `{route}`, `{hostname}`.
    /// Default: `[vigil] {summary} on {hostname} [{signature}]`.
    pub subject: String,
    /// Whether to mail again when a mailed request completes. Default: false.
    pub follow_up: bool,
    /// Whether every capture of a slow request is mailed, rather than the first one and those
    /// with news (wedged at the hard deadline, still running at shutdown). Default: false.
    pub every_capture: bool,
    /// At most this many mails per signature (the route with ids collapsed, and where the
    /// request is stuck) per `throttle_window`. Default: 10.
    pub throttle_per_route: u32,
    /// The throttle's sliding window. Default: 5 min.
    #[serde(with = "humantime_serde")]
    pub throttle_window: Duration,
    /// At most this many mails per window over all signatures. Default: 30.
    pub throttle_total: u32,
    /// Retries after a failed attempt. Default: 3.
    pub retries: u32,
    /// Wait before the first retry, doubled for each further one. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Bound of the queue of mails waiting to be sent. Default: 256.
    pub queue_capacity: usize,
    /// Time to connect and read the server's greeting and EHLO answer. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time the server has to answer each later command. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// A PEM file of CA certificates trusted besides the built-in webpki roots, for a server
    /// whose certificate an internal CA signed. Default: none. Read when the sink is built.
    pub root_certificate_pem_file: Option<PathBuf>,
    /// SMTP user, when the URL carries none. Default: none.
    pub username: Option<String>,
    /// SMTP password of `username`; better set through `VIGIL_SINKS_EMAIL_PASSWORD` than in a
    /// file. Default: none.
    pub password: Option<String>,
}

impl Default for EmailSinkConfig {
    fn default() -> Self {
        Self {
            url: None,
            eml_dir: None,
            from: None,
            to: Vec::new(),
            subject: DEFAULT_SUBJECT.to_owned(),
            follow_up: false,
            every_capture: false,
            throttle_per_route: DEFAULT_THROTTLE_PER_ROUTE,
            throttle_window: DEFAULT_THROTTLE_WINDOW,
            throttle_total: DEFAULT_THROTTLE_TOTAL,
            retries: DEFAULT_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            root_certificate_pem_file: None,
            username: None,
            password: None,
        }
    }
}

impl EmailSinkConfig {
    /// Checks every setting; the error names the first one at fault and never holds the
    /// password.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.url, &self.eml_dir) {
            (Some(url), None) => self.check_url(url)?,
            (None, Some(dir)) => {
                if dir.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(
                        "sinks.email.eml_dir",
                        "\"\"",
                        "must name a directory",
                    ));
                }
                for (field, given) in [
                    ("sinks.email.username", self.username.is_some()),
                    ("sinks.email.password", self.password.is_some()),
                    (
                        "sinks.email.root_certificate_pem_file",
                        self.root_certificate_pem_file.is_some(),
                    ),
                ] {
                    if given {
                        return Err(ConfigError::other(
                            field,
                            "has no use with sinks.email.eml_dir, only with sinks.email.url",
                        ));
                    }
                }
            }
            (None, None) => {
                return Err(ConfigError::other(
                    "sinks.email.url",
                    "give sinks.email.url or sinks.email.eml_dir",
                ))
            }
            (Some(url), Some(_)) => {
                return Err(ConfigError::invalid(
                    "sinks.email.url",
                    show(&redact_url(url)),
                    "give sinks.email.url or sinks.email.eml_dir, not both",
                ))
            }
        }
        if let Some(from) = &self.from {
            check_address("sinks.email.from", from)?;
        }
        if self.to.is_empty() {
            return Err(ConfigError::invalid(
                "sinks.email.to",
                "[]",
                "must list at least one address",
            ));
        }
        for to in &self.to {
            check_address("sinks.email.to", to)?;
        }
        check_subject(&self.subject)?;
        for (field, value) in [
            ("sinks.email.throttle_per_route", self.throttle_per_route),
            ("sinks.email.throttle_total", self.throttle_total),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(field, 0, "must be at least 1"));
            }
        }
        positive("sinks.email.throttle_window", self.throttle_window)?;
        if self.queue_capacity == 0 {
            return Err(ConfigError::invalid(
                "sinks.email.queue_capacity",
                0,
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    fn check_url(&self, url: &str) -> Result<(), ConfigError> {
        let bad = |problem: String| {
            ConfigError::invalid("sinks.email.url", show(&redact_url(url)), problem)
        };
        if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
            return Err(bad("must start with smtp:// or smtps://".into()));
        }
        let query = url.split_once('?').map_or("", |(_, query)| query);
        for pair in query.split('&') {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            if key == "connect_timeout" || key == "command_timeout" {
                return Err(bad(format!(
                    "set sinks.email.{key} instead of the URL parameter {key}"
                )));
            }
        }
        positive("sinks.email.connect_timeout", self.connect_timeout)?;
        positive("sinks.email.command_timeout", self.command_timeout)?;
        if self.password.is_some() && self.username.is_none() {
            return Err(ConfigError::other(
                "sinks.email.password",
                "needs sinks.email.username",
            ));
        }
        if self.username.is_some() && url_has_userinfo(url) {
            return Err(ConfigError::other(
                "sinks.email.username",
                "the URL already carries a user; give it in one place",
            ));
        }
        if let Some(file) = &self.root_certificate_pem_file {
            if file.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "sinks.email.root_certificate_pem_file",
                    "\"\"",
                    "must name a PEM file",
                ));
            }
        }
        #[cfg(feature = "email")]
        {
            let mut smtp = crate::sink::SmtpConfig::from_url(url)
                .map_err(|error| bad(error.to_string()))?
                .connect_timeout(self.connect_timeout)
                .command_timeout(self.command_timeout);
            if let Some(user) = &self.username {
                smtp = smtp.credentials(user, self.password.as_deref().unwrap_or(""));
            }
            smtp.validate().map_err(|error| bad(error.to_string()))?;
        }
        Ok(())
    }
}

impl fmt::Debug for EmailSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSinkConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("eml_dir", &self.eml_dir)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("follow_up", &self.follow_up)
            .field("every_capture", &self.every_capture)
            .field("throttle_per_route", &self.throttle_per_route)
            .field("throttle_window", &self.throttle_window)
            .field("throttle_total", &self.throttle_total)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("queue_capacity", &self.queue_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("root_certificate_pem_file", &self.root_certificate_pem_file)
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::report::REDACTED),
            )
            .finish()
    }
}

/// The user-info part of `scheme://user:password@host…`, if any.
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = url[start..authority_end].rfind('@')?;
    Some((start, start + at))
}

fn url_has_userinfo(url: &str) -> bool {
    userinfo(url).is_some()
}

/// The URL with the password in its user-info replaced, for messages and `Debug`.
pub(super) fn redact_url(url: &str) -> String {
    match userinfo(url) {
        Some((start, at)) => match url[start..at].find(':') {
            Some(colon) => format!(
                "{}{}{}",
                &url[..start + colon + 1],
                crate::report::REDACTED,
                &url[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// One mailbox, `a@example.com` or `Name <a@example.com>`, parsed as the sink parses it.
fn check_address(field: &str, address: &str) -> Result<(), ConfigError> {
    let invalid = || ConfigError::invalid(field, show(address), "must be one email address");
    let trimmed = address.trim();
    let one_at = trimmed.matches('@').count() == 1;
    if trimmed.is_empty() || trimmed.chars().any(char::is_control) || !one_at {
        return Err(invalid());
    }
    #[cfg(feature = "email")]
    {
        let mailbox: lettre::message::Mailbox = trimmed.parse().map_err(|_| invalid())?;
        // lettre accepts trailing text it ignores; the sink does not.
        let email = mailbox.email.to_string();
        let whole = trimmed == email || trimmed.ends_with(&format!("<{email}>"));
        if !whole {
            return Err(invalid());
        }
    }
    Ok(())
}

/// Placeholders known and braces balanced, as the sink's template parser requires.
fn check_subject(template: &str) -> Result<(), ConfigError> {
    let invalid =
        |problem: String| ConfigError::invalid("sinks.email.subject", show(template), problem);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let (brace, after) = (&rest[i..i + 1], &rest[i + 1..]);
        if after.starts_with(brace) {
            rest = &after[1..];
        } else if brace == "}" {
            return Err(invalid("a lone } (write }} for a brace)".into()));
        } else {
            let Some(end) = after.find('}') else {
                return Err(invalid("an unclosed {".into()));
            };
            let name = &after[..end];
            if !SUBJECT_PLACEHOLDERS.contains(&name) {
                return Err(invalid(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    SUBJECT_PLACEHOLDERS.join(", ")
                )));
            }
            rest = &after[end + 1..];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("smtp://vigil:hunter2@mail.example.com:587?tls=starttls"),
            "smtp://vigil:[redacted]@mail.example.com:587?tls=starttls"
        );
        assert_eq!(
            redact_url("smtp://mail.example.com"),
            "smtp://mail.example.com"
        );
        assert_eq!(redact_url("smtp://u@h"), "smtp://u@h");
        let config = EmailSinkConfig {
            url: Some("smtp://vigil:hunter2@mail.example.com".into()),
            password: Some("swordfish".into()),
            ..EmailSinkConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
    }

    #[test]
    fn subject_templates() {
        assert!(check_subject(DEFAULT_SUBJECT).is_ok());
        assert!(check_subject("{{literal}} {route} }}").is_ok());
        let error = check_subject("[vigil] {sumary}").unwrap_err();
        assert!(error.to_string().contains("{sumary}"), "{error}");
        assert!(check_subject("{route").is_err());
        assert!(check_subject("a } b").is_err());
    }

    #[cfg(feature = "email")]
    #[test]
    fn defaults_and_placeholders_agree_with_the_sink() {
        use crate::sink::{EmailSink, SmtpConfig};
        assert_eq!(DEFAULT_SUBJECT, EmailSink::DEFAULT_SUBJECT);
        assert_eq!(
            DEFAULT_THROTTLE_PER_ROUTE,
            EmailSink::DEFAULT_THROTTLE_PER_ROUTE
        );
        assert_eq!(DEFAULT_THROTTLE_TOTAL, EmailSink::DEFAULT_THROTTLE_TOTAL);
        assert_eq!(DEFAULT_THROTTLE_WINDOW, EmailSink::DEFAULT_THROTTLE_WINDOW);
        assert_eq!(DEFAULT_RETRIES, EmailSink::DEFAULT_RETRIES);
        assert_eq!(DEFAULT_RETRY_BACKOFF, EmailSink::DEFAULT_RETRY_BACKOFF);
        assert_eq!(DEFAULT_QUEUE_CAPACITY, EmailSink::DEFAULT_QUEUE_CAPACITY);
        assert_eq!(DEFAULT_CONNECT_TIMEOUT, SmtpConfig::DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(DEFAULT_COMMAND_TIMEOUT, SmtpConfig::DEFAULT_COMMAND_TIMEOUT);
        let sink = EmailSink::smtp("smtp://127.0.0.1:2525?tls=none").expect("a valid URL");
        for name in SUBJECT_PLACEHOLDERS {
            let template = format!("{{{name}}}");
            assert!(sink.clone().subject(&template).is_ok(), "{template}");
            assert!(check_subject(&template).is_ok(), "{template}");
        }
    }
}
