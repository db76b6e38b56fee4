//! The email sink: each slow request as a mail, like dogslow's `DOGSLOW_EMAIL_TO`, built so
//! that a wedged application still gets its mail out, a flood of slow requests does not become
//! a flood of mail, and a broken SMTP server loses no reports.
//!
//! - `mod.rs`: [`EmailSink`], its builder, [`EmailStats`] and [`EmailError`];
//! - `smtp.rs`: [`SmtpConfig`] (URL or builder) and one SMTP transaction;
//! - `message.rs`: subject template, text body and JSON attachment;
//! - `throttle.rs`: per-signature and total limits, and the digest of what they held back;
//! - `delivery.rs`: the delivery thread, its bounded queue, retries and the fallback.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_vigil::sink::{EmailSink, FileSink};
//! use tower_vigil::watchdog::WatchdogLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join("vigil-doc-email-mod");
//! // In production: EmailSink::smtp("smtp://user:secret@mail.example.com:587?tls=starttls")?
//! let email = EmailSink::eml_dir(dir.join("mail"))?
//!     .from("vigil@example.com")?
//!     .to("oncall@example.com")?
//!     .fallback(FileSink::new(dir.join("unsent"))?);
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(WatchdogLayer::new(Duration::from_secs(5)).sink(email.clone()));
//! // The clone shares the counters of the sink inside the layer.
//! assert_eq!(email.stats().sent, 0);
//! # Ok(()) }
//! ```

mod delivery;
mod message;
mod smtp;
mod throttle;

pub use self::smtp::{SmtpConfig, TlsMode};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::file::FileTransport;

use self::delivery::{Counters, Delivery, Settings, Transport};
use self::message::SubjectTemplate;
use self::smtp::SmtpClient;
use self::throttle::ThrottleConfig;
use super::{IntoSink, LogSink, Sink, SinkError};
use crate::error::ConfigError;
use crate::report::SlowRequestReport;

/// Mails slow-request reports through SMTP, or writes them as `.eml` files.
///
/// ```
/// # fn main() -> Result<(), tower_vigil::sink::EmailError> {
/// use std::time::Duration;
/// use tower_vigil::sink::EmailSink;
/// use tower_vigil::watchdog::WatchdogLayer;
///
/// let email = EmailSink::smtp("smtp://user:secret@mail.example.com:587?tls=starttls")?
///     .from("vigil@example.com")?
///     .to("oncall@example.com")?
///     .to("Platform team <platform@example.com>")?;
/// let watchdog = WatchdogLayer::new(Duration::from_secs(5)).sink(email);
/// # Ok(()) }
/// ```
///
/// # What a mail holds
///
/// From, every To, a subject from a template (default: `[vigil] slow request: GET /api/jobs
/// (7.2 s) on web-3 [3f9a0c12d4e7]`, ending with the report's signature so that mail filters
/// and searches can group by it), the text report as body (its `Signature:` line tells what
/// the signature is made of) and the JSON report as an attachment named like
/// [`FileSink`](super::FileSink)'s files. Reports are redacted before any sink sees them; the
/// subject is cleaned of control characters, so nothing in a request can add a header.
///
/// # One mail per slow request
///
/// A request is mailed when it is first caught. Its later captures (the watchdog's
/// recaptures, the timebox's soft deadline) are not mailed unless they bring news: the request
/// was wedged at its hard deadline, or was still running at shutdown; those mails are threaded
/// under the first one. The completion record is mailed only with
/// [`follow_up`](EmailSink::follow_up), and [`mail_every_capture`](EmailSink::mail_every_capture)
/// mails every capture. The log and file sinks get every capture either way.
///
/// # Delivery
///
/// [`Sink::deliver`] only throttles and queues the report; a thread of the sink's own
/// (`vigil-email`) sends the mail with a blocking SMTP client. Neither the application's runtime
/// nor the reporter thread waits for the mail server: a wedged application still gets its mail
/// out, and a stalled server delays no other sink.
///
/// A failed attempt is retried [`retries`](EmailSink::retries) times, waiting
/// [`retry_backoff`](EmailSink::retry_backoff), then twice that, and so on. Answers that would
/// fail again (5xx, no STARTTLS, no common AUTH mechanism, TLS errors) are not retried. A
/// report whose budget is spent, or that finds the queue full, goes to the
/// [`fallback`](EmailSink::fallback) sinks, and the SMTP error is logged next to it (target
/// `tower_vigil::email`, level ERROR). [`WatchdogLayer::flush`](crate::watchdog::WatchdogLayer::flush)
/// sends what is queued and the pending digest, retrying without waiting for backoff; what is
/// still unsent at the deadline goes to the fallback sinks.
///
/// # Throttle and digest
///
/// By default at most 10 mails per signature and 30 in all go out per sliding window of
/// 5 minutes. The
/// signature is the route with ids collapsed plus where the request is stuck, so 200 requests
/// to `/users/1`, `/users/2`, … stuck in one function share one budget, and the same route
/// stuck somewhere else has its own. Reports held back are counted, by signature, in one
/// digest mail, such as `37 more slow requests of GET /users/{n} since 10:42:07 UTC, longest
/// 31.2 s` followed by the signature and what it is made of, sent one window after the first
/// report it holds at the latest. Held-back reports still reach every other sink.
///
/// # Counters
///
/// The sink is a cheap handle: keep a clone before handing it to the layer and read
/// [`EmailSink::stats`] from it. A builder method called after cloning makes a new sink with
/// counters of its own.
#[derive(Clone)]
pub struct EmailSink {
    transport: TransportConfig,
    from: Option<Mailbox>,
    to: Vec<Mailbox>,
    subject: SubjectTemplate,
    follow_up: bool,
    every_capture: bool,
    throttle: ThrottleConfig,
    retries: u32,
    backoff: Duration,
    queue_capacity: usize,
    fallback: Vec<Arc<dyn Sink>>,
    counters: Arc<Counters>,
}

#[derive(Clone, Debug)]
enum TransportConfig {
    Smtp(SmtpConfig),
    EmlDir(PathBuf),
}

/// Counters of one [`EmailSink`], from [`EmailSink::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmailStats {
    /// Report mails the server accepted (or `.eml` files written).
    pub sent: u64,
    /// Digest mails the server accepted.
    pub digests_sent: u64,
    /// Attempts made after a failed one.
    pub retried: u64,
    /// Reports (and digests) that were not mailed and went to the fallback sinks instead: retry
    /// budget spent, a permanent error, a full queue, or a flush deadline.
    pub failed_to_fallback: u64,
    /// Reports the throttle held back and counted in a digest.
    pub suppressed: u64,
    /// Later captures of a request that were not mailed because they add nothing to its
    /// first mail (see [`EmailSink::mail_every_capture`]). Other sinks still got them.
    pub repeats_not_mailed: u64,
    /// Reports that found the queue full (also counted in `failed_to_fallback`).
    pub queue_full: u64,
    /// Deliveries to a fallback sink that failed or panicked.
    pub fallback_failures: u64,
    /// Mails waiting to be sent, including those waiting for a retry.
    pub pending: u64,
}

/// An invalid email configuration: a bad address, URL, TLS mode or template.
///
/// Its message never contains the SMTP password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailError {
    message: String,
}

impl EmailError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for EmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EmailError {}

impl EmailSink {
    /// The default subject template. See [`EmailSink::subject`].
    pub(crate) const DEFAULT_SUBJECT: &'static str =
        "[vigil] {summary} on {hostname} [{signature}]";
    /// Default mails per signature and window: 10.
    pub(crate) const DEFAULT_THROTTLE_PER_ROUTE: u32 = 10;
    /// Default mails per window over all signatures: 30, so that slow requests stuck in many
    /// places at once are held back too.
    pub(crate) const DEFAULT_THROTTLE_TOTAL: u32 = 30;
    /// Default throttle window: 5 minutes.
    pub(crate) const DEFAULT_THROTTLE_WINDOW: Duration = Duration::from_secs(300);
    /// Default retries after a failed attempt: 3 (4 attempts in all).
    pub(crate) const DEFAULT_RETRIES: u32 = 3;
    /// Default wait before the first retry: 2 s, doubled for each further retry.
    pub(crate) const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(2);
    /// Default bound of the mail queue: 256 mails.
    pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 256;

    /// Sends through the SMTP server of a URL such as
    /// `smtp://user:secret@mail.example.com:587?tls=starttls`; see [`SmtpConfig::from_url`]
    /// for the URL's form.
    ///
    /// # Errors
    ///
    /// A malformed URL, an unknown TLS mode or parameter; never with the password in the
    /// message.
    pub fn smtp(url: &str) -> Result<Self, EmailError> {
        Self::smtp_with(SmtpConfig::from_url(url)?)
    }

    /// Sends through the SMTP server of a [`SmtpConfig`] made with its builder.
    ///
    /// # Errors
    ///
    /// An empty host, a zero timeout, credentials that would be sent in clear text, or TLS
    /// settings that cannot be set up (checked here, not at the first delivery).
    pub fn smtp_with(config: SmtpConfig) -> Result<Self, EmailError> {
        // Builds the client once, TLS parameters and root certificates included, and drops it.
        SmtpClient::new(config.clone())?;
        Ok(Self::with_transport(TransportConfig::Smtp(config)))
    }

    /// Writes each mail as a `<uuid>.eml` file into `dir` (created if needed) instead of
    /// sending it: for demos, tests, and machines that pick mail up from a directory.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created or written.
    pub fn eml_dir(dir: impl AsRef<Path>) -> Result<Self, EmailError> {
        let dir = dir.as_ref().to_path_buf();
        let fail = |what: &str, error: std::io::Error| {
            EmailError::new(format!("EmailSink: {what} {}: {error}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail("cannot create", e))?;
        let probe = dir.join(format!(".vigil-probe-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| fail("cannot write into", e))?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self::with_transport(TransportConfig::EmlDir(dir)))
    }

    /// An email sink as the `[sinks.email]` section describes it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn from_config(config: &crate::config::EmailSinkConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let fail = |field: &str| {
            let field = format!("sinks.email.{field}");
            move |error: EmailError| ConfigError::other(field.clone(), error.to_string())
        };
        let mut sink = match (&config.url, &config.eml_dir) {
            (Some(url), _) => {
                let mut smtp = SmtpConfig::from_url(url)
                    .map_err(fail("url"))?
                    .connect_timeout(config.connect_timeout)
                    .command_timeout(config.command_timeout);
                if let (Some(user), Some(password)) = (&config.username, &config.password) {
                    smtp = smtp.credentials(user, password);
                }
                if let Some(file) = &config.root_certificate_pem_file {
                    let pem = std::fs::read(file).map_err(|error| {
                        ConfigError::other(
                            "sinks.email.root_certificate_pem_file",
                            format!("cannot read {}: {error}", file.display()),
                        )
                    })?;
                    smtp = smtp
                        .root_certificate_pem(pem)
                        .map_err(fail("root_certificate_pem_file"))?;
                }
                Self::smtp_with(smtp).map_err(fail("url"))?
            }
            (None, Some(dir)) => Self::eml_dir(dir).map_err(fail("eml_dir"))?,
            (None, None) => {
                return Err(ConfigError::other("sinks.email.url", "give url or eml_dir"))
            }
        };
        if let Some(from) = &config.from {
            sink = sink.from(from).map_err(fail("from"))?;
        }
        for to in &config.to {
            sink = sink.to(to).map_err(fail("to"))?;
        }
        Ok(sink
            .subject(&config.subject)
            .map_err(fail("subject"))?
            .follow_up(config.follow_up)
            .mail_every_capture(config.every_capture)
            .throttle(config.throttle_per_route, config.throttle_window)
            .throttle_total(config.throttle_total)
            .retries(config.retries)
            .retry_backoff(config.retry_backoff)
            .queue_capacity(config.queue_capacity))
    }

    fn with_transport(transport: TransportConfig) -> Self {
        Self {
            transport,
            from: None,
            to: Vec::new(),
            subject: SubjectTemplate::parse(Self::DEFAULT_SUBJECT).expect("a valid template"),
            follow_up: false,
            every_capture: false,
            throttle: ThrottleConfig {
                per_route: Self::DEFAULT_THROTTLE_PER_ROUTE,
                total: Self::DEFAULT_THROTTLE_TOTAL,
                window: Self::DEFAULT_THROTTLE_WINDOW,
            },
            retries: Self::DEFAULT_RETRIES,
            backoff: Self::DEFAULT_RETRY_BACKOFF,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            fallback: Vec::new(),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Sets the sender, `vigil@example.com` or `Vigil <vigil@example.com>`. Default:
    /// `vigil@<host name>`.
    ///
    /// # Errors
    ///
    /// An invalid address.
    pub fn from(mut self, address: impl AsRef<str>) -> Result<Self, EmailError> {
        self.from = Some(message::parse_mailbox(address.as_ref())?);
        Ok(self)
    }

    /// Adds a recipient; call again for more. Default: none, and without one every report goes
    /// to the fallback sinks with an error.
    ///
    /// # Errors
    ///
    /// An invalid address. One address per call: a comma-separated list is an error.
    pub fn to(mut self, address: impl AsRef<str>) -> Result<Self, EmailError> {
        self.to.push(message::parse_mailbox(address.as_ref())?);
        Ok(self)
    }

    /// Sets the subject template. Placeholders: `{summary}` (`slow request: GET /api/jobs
    /// (7.2 s)`), `{method}`, `{uri}`, `{route}` (method and path), `{elapsed}`, `{hostname}`,
    /// `{kind}` (`slow` or `completed`), `{request_id}`, `{capture}`, `{top_frame}`, `{pid}`,
    /// `{signature}` (12 hex digits, the same for requests stuck in the same place) and
    /// `{signature_text}` (what it is made of, such as `GET /users/{n} @ app::load`);
    /// `{{` and `}}` for braces. Control characters in the result are escaped and it is cut
    /// at 200 characters. Default:
    /// `"[vigil] {summary} on {hostname} [{signature}]"`.
    ///
    /// # Errors
    ///
    /// An unknown placeholder or an unbalanced brace.
    pub fn subject(mut self, template: &str) -> Result<Self, EmailError> {
        self.subject = SubjectTemplate::parse(template)?;
        Ok(self)
    }

    /// Whether to mail again when a mailed request completes (threaded under the first mail).
    /// Default: false.
    pub fn follow_up(mut self, enabled: bool) -> Self {
        self.follow_up = enabled;
        self
    }

    /// Whether every capture of a slow request is mailed. Default: false, which mails a
    /// request once, when it is first caught, and again only with news: it was wedged at the
    /// timebox's hard deadline, or still running at shutdown. The later captures not mailed
    /// are counted in [`EmailStats::repeats_not_mailed`]; the log and file sinks get every
    /// capture either way.
    pub fn mail_every_capture(mut self, enabled: bool) -> Self {
        self.every_capture = enabled;
        self
    }

    /// At most `per_route` (at least 1) mails per signature (the route with ids collapsed and
    /// where the request is stuck) in any `window` (more than zero). Default: 10 per
    /// 5 minutes. The digest of what is held back goes out one
    /// window after the first report it holds at the latest.
    pub fn throttle(mut self, per_route: u32, window: Duration) -> Self {
        self.throttle.per_route = per_route;
        self.throttle.window = window;
        self
    }

    /// At most `total` (at least 1) mails per window over all signatures (digests not
    /// counted). Default: 30.
    pub fn throttle_total(mut self, total: u32) -> Self {
        self.throttle.total = total;
        self
    }

    /// Retries after a failed attempt before the report goes to the fallback sinks. Default:
    /// 3.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Wait before the first retry, doubled for each further one (at most 5 minutes). Default:
    /// 2 s.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Bound of the queue of mails waiting to be sent (at least 1); a report that finds it
    /// full goes to the fallback sinks. Default: 256.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Adds a sink that gets the reports that could not be mailed; call again for more.
    /// Default: a [`LogSink`] at level ERROR, used only while no fallback is added.
    pub fn fallback(mut self, sink: impl Sink) -> Self {
        self.fallback.push(Arc::new(sink));
        self
    }

    /// The counters of this sink and of its clones.
    pub fn stats(&self) -> EmailStats {
        self.counters.snapshot()
    }

    fn fallback_sinks(&self) -> Vec<Arc<dyn Sink>> {
        if self.fallback.is_empty() {
            vec![Arc::new(LogSink::new().level(tracing::Level::ERROR))]
        } else {
            self.fallback.clone()
        }
    }

    /// Checks the settings that cannot be checked when they are given.
    fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (
                "sinks.email.throttle.per_route",
                self.throttle.per_route == 0,
            ),
            ("sinks.email.throttle_total", self.throttle.total == 0),
            ("sinks.email.queue_capacity", self.queue_capacity == 0),
        ];
        for (field, zero) in checks {
            if zero {
                return Err(ConfigError::invalid(field, 0, "must be at least 1"));
            }
        }
        if self.throttle.window.is_zero() {
            return Err(ConfigError::invalid(
                "sinks.email.throttle.window",
                "0s",
                "must be greater than zero",
            ));
        }
        if self.to.is_empty() {
            return Err(ConfigError::other(
                "sinks.email.to",
                "no recipient: add one with EmailSink::to",
            ));
        }
        Ok(())
    }
}

/// An [`EmailSink`] whose mail thread runs.
struct RunningEmailSink {
    delivery: Delivery,
}

impl IntoSink for EmailSink {
    /// Checks the settings and starts the sink's mail thread.
    fn into_sink(self) -> Result<Arc<dyn Sink>, ConfigError> {
        self.validate()?;
        let transport = match &self.transport {
            TransportConfig::Smtp(config) => Transport::Smtp(
                SmtpClient::new(config.clone())
                    .map_err(|e| ConfigError::other("sinks.email.url", e.to_string()))?,
            ),
            TransportConfig::EmlDir(dir) => Transport::EmlDir(FileTransport::new(dir)),
        };
        let settings = Settings {
            transport,
            from: self.from.clone().unwrap_or_else(message::default_from),
            to: self.to.clone(),
            subject: self.subject.clone(),
            follow_up: self.follow_up,
            every_capture: self.every_capture,
            throttle: self.throttle,
            retries: self.retries,
            backoff: self.backoff,
            capacity: self.queue_capacity,
            fallback: self.fallback_sinks(),
        };
        #[cfg(feature = "metrics")]
        {
            let instance = crate::metrics::instance("email");
            let counters = Arc::downgrade(&self.counters);
            crate::metrics::register(move || {
                let Some(counters) = counters.upgrade() else {
                    return false;
                };
                let stats = counters.snapshot();
                crate::metrics::counter("vigil_mails_sent_total", &instance, stats.sent);
                crate::metrics::counter(
                    "vigil_mails_suppressed_total",
                    &instance,
                    stats.suppressed,
                );
                true
            });
        }
        let delivery = Delivery::start(settings, self.counters.clone()).map_err(|e| {
            ConfigError::other("sinks.email", format!("cannot start the mail thread: {e}"))
        })?;
        Ok(Arc::new(RunningEmailSink { delivery }))
    }
}

impl Sink for RunningEmailSink {
    fn name(&self) -> &str {
        "email"
    }

    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
        self.delivery.submit(report).map_err(SinkError::new)
    }

    fn flush(&self, deadline: Instant) -> bool {
        self.delivery.flush(deadline)
    }
}

impl fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to: Vec<String> = self.to.iter().map(ToString::to_string).collect();
        f.debug_struct("EmailSink")
            .field("transport", &self.transport)
            .field("from", &self.from.as_ref().map(ToString::to_string))
            .field("to", &to)
            .field("follow_up", &self.follow_up)
            .field("every_capture", &self.every_capture)
            .field("throttle", &self.throttle)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.backoff)
            .field("queue_capacity", &self.queue_capacity)
            .field(
                "fallback",
                &self.fallback.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_fails_when_the_sink_is_built() {
        let sink = EmailSink::smtp("smtp://mail.example.com").unwrap();
        assert!(sink.clone().from("not an address").is_err());
        assert!(sink
            .clone()
            .to("a@example.com\r\nBcc: b@example.com")
            .is_err());
        assert!(sink.clone().subject("{nope}").is_err());
        assert!(EmailSink::smtp("smtp://mail.example.com?tls=maybe").is_err());
        assert!(EmailSink::smtp_with(SmtpConfig::new("")).is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let sink = EmailSink::smtp("smtp://vigil:hunter2@mail.example.com")
            .unwrap()
            .to("oncall@example.com")
            .unwrap();
        let debug = format!("{sink:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("oncall@example.com"), "{debug}");
    }

    #[test]
    fn clones_share_counters() {
        let sink = EmailSink::smtp("smtp://mail.example.com").unwrap();
        let clone = sink.clone().retries(1);
        assert!(Arc::ptr_eq(&sink.counters, &clone.counters));
    }

    #[test]
    fn settings_are_checked_when_the_sink_starts() {
        let sink = EmailSink::smtp("smtp://mail.example.com")
            .unwrap()
            .to("oncall@example.com")
            .unwrap();
        let field = |s: EmailSink| s.into_sink().err().unwrap().field().to_owned();
        assert_eq!(
            field(sink.clone().throttle_total(0)),
            "sinks.email.throttle_total"
        );
        assert_eq!(
            field(sink.clone().queue_capacity(0)),
            "sinks.email.queue_capacity"
        );
        assert_eq!(
            field(sink.clone().throttle(1, Duration::ZERO)),
            "sinks.email.throttle.window"
        );
        let no_recipient = EmailSink::smtp("smtp://mail.example.com").unwrap();
        assert_eq!(field(no_recipient), "sinks.email.to");
    }
}
