//! SMTP settings (from a URL or a builder) and one SMTP transaction on a blocking connection.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;

use super::delivery::SendError;
use super::EmailError;

/// How the connection to the SMTP server is protected.
///
/// The URL words are lettre's (`required`, `opportunistic`, `smtps://`) and this crate's own
/// (`none`, `starttls`, `implicit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// No TLS: plain text from the first byte to the last. URL: `?tls=none`.
    None,
    /// STARTTLS when the server offers it, plain text when it does not. A certificate that
    /// fails verification still fails the delivery: there is no silent downgrade after a
    /// failed handshake. Credentials are accepted with this mode only for a loopback host.
    /// URL: `?tls=opportunistic`; the default of `smtp://` to a loopback host.
    Opportunistic,
    /// Plain connection upgraded with STARTTLS before anything else is sent; a server that
    /// does not offer STARTTLS gets no mail. URL: `?tls=required` or `?tls=starttls`; the
    /// default of `smtp://` to any other host.
    StartTls,
    /// TLS from the first byte (SMTPS). URL: `smtps://` or `?tls=implicit`.
    Implicit,
}

impl TlsMode {
    /// The port used when none is given: 25 for [`TlsMode::None`], 587 for
    /// [`TlsMode::Opportunistic`] and [`TlsMode::StartTls`], 465 for [`TlsMode::Implicit`].
    /// A URL or builder that names no mode and no port uses 25 for a loopback host (a local
    /// relay) and 587 for any other host.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Opportunistic | TlsMode::StartTls => 587,
            TlsMode::Implicit => 465,
        }
    }

    fn parse(value: &str) -> Result<Self, EmailError> {
        match value.to_ascii_lowercase().as_str() {
            "none" => Ok(TlsMode::None),
            "opportunistic" => Ok(TlsMode::Opportunistic),
            "required" | "starttls" => Ok(TlsMode::StartTls),
            "implicit" => Ok(TlsMode::Implicit),
            _ => Err(EmailError::new(format!(
                "invalid SMTP URL: unknown TLS mode {:?} (expected none, opportunistic, required, starttls or implicit)",
                escape(value)
            ))),
        }
    }

    /// The URL word, for messages.
    fn word(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::StartTls => "required",
            TlsMode::Implicit => "implicit",
        }
    }
}

/// Where and how to send mail: server, TLS, credentials and timeouts.
///
/// Made from a URL with [`SmtpConfig::from_url`] or step by step:
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::sink::{SmtpConfig, TlsMode};
///
/// let config = SmtpConfig::new("mail.example.com")
///     .tls(TlsMode::Implicit)
///     .credentials("vigil", "secret")
///     .connect_timeout(Duration::from_secs(5));
/// let email = tower_vigil::sink::EmailSink::smtp_with(config)?;
/// # Ok::<(), tower_vigil::sink::EmailError>(())
/// ```
///
/// Without a TLS mode, a loopback host (`127.0.0.0/8`, `::1`, `localhost`: a local relay) gets
/// [`TlsMode::Opportunistic`] on port 25 and any other host [`TlsMode::StartTls`] on port 587.
///
/// With TLS ([`TlsMode::StartTls`], [`TlsMode::Opportunistic`] or [`TlsMode::Implicit`]) the server's
/// certificate must be valid for `host` and chain to a trusted root: by default the built-in
/// [webpki roots](https://github.com/rustls/webpki-roots) (Mozilla's list), never the
/// operating system's store. A server with a certificate from an internal CA is reached by
/// trusting that CA as well, with [`SmtpConfig::root_certificate_pem`]:
///
/// ```no_run
/// use tower_vigil::sink::{SmtpConfig, TlsMode};
///
/// let ca = std::fs::read("/etc/ssl/internal-ca.pem").expect("the CA certificate");
/// let config = SmtpConfig::new("mail.internal.example")
///     .tls(TlsMode::StartTls)
///     .root_certificate_pem(ca)?;
/// let email = tower_vigil::sink::EmailSink::smtp_with(config)?;
/// # Ok::<(), tower_vigil::sink::EmailError>(())
/// ```
///
/// A certificate the client rejects (unknown issuer, wrong name, expired) makes the delivery
/// fail at once, without retries, and the report goes to the fallback sink.
///
/// Its `Debug` output never shows the password.
#[derive(Clone)]
pub struct SmtpConfig {
    host: String,
    port: Option<u16>,
    /// `None`: chosen by the host: [`TlsMode::StartTls`], or
    /// [`TlsMode::Opportunistic`] for a loopback host.
    tls: Option<TlsMode>,
    credentials: Option<(String, String)>,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Trusted in addition to the built-in webpki roots.
    root_certificates: Vec<Certificate>,
}

impl SmtpConfig {
    /// Default time to connect, finish the TLS handshake (implicit TLS), and read the greeting
    /// and the answer to EHLO: 10 s.
    pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default time the server has to answer each later command (STARTTLS, AUTH, MAIL, RCPT,
    /// DATA, QUIT): 30 s.
    pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default protection of the connection to a host that is not a loopback address:
    /// [`TlsMode::StartTls`].
    pub(crate) const DEFAULT_TLS: TlsMode = TlsMode::StartTls;
    /// Default protection of the connection to a loopback host (`127.0.0.0/8`, `::1`,
    /// `localhost`), such as a local relay: [`TlsMode::Opportunistic`], on port 25.
    pub(crate) const DEFAULT_LOOPBACK_TLS: TlsMode = TlsMode::Opportunistic;

    /// A server at `host` (a name or an IP address), with [`TlsMode::StartTls`] (or
    /// [`TlsMode::Opportunistic`] for a loopback host), no credentials and the
    /// default timeouts.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            tls: None,
            credentials: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            root_certificates: Vec::new(),
        }
    }

    /// Reads `smtp://[user[:password]@]host[:port][?tls=…]` or `smtps://…` (implicit TLS),
    /// in lettre's words or this crate's:
    ///
    /// | URL | mode | default port |
    /// |---|---|---|
    /// | `smtp://127.0.0.1`, `smtp://[::1]`, `smtp://localhost` | [`TlsMode::Opportunistic`] | 25 |
    /// | `smtp://mail.example.com` | [`TlsMode::StartTls`] | 587 |
    /// | `?tls=required` or `?tls=starttls` | [`TlsMode::StartTls`] | 587 |
    /// | `?tls=opportunistic` | [`TlsMode::Opportunistic`] | 587 |
    /// | `?tls=none` | [`TlsMode::None`] | 25 |
    /// | `smtps://…` or `?tls=implicit` | [`TlsMode::Implicit`] | 465 |
    ///
    /// Unlike lettre, `smtp://` to a remote host without `tls=` requires STARTTLS rather than
    /// sending in plain text. More query parameters: `connect_timeout` and `command_timeout`,
    /// as durations such as `10s` or `500ms`. User and password are percent-decoded.
    ///
    /// # Errors
    ///
    /// A malformed URL, another scheme, a missing host, an unknown TLS mode or parameter, a
    /// bad duration, or credentials that could cross the network in clear text (`tls=none`
    /// or `tls=opportunistic` to a host other than a loopback address). Error messages never
    /// contain the password.
    pub fn from_url(url: &str) -> Result<Self, EmailError> {
        let parsed = url::Url::parse(url)
            .map_err(|error| EmailError::new(format!("invalid SMTP URL: {error}")))?;
        let mut tls = match parsed.scheme() {
            "smtp" => None,
            "smtps" => Some(TlsMode::Implicit),
            other => {
                return Err(EmailError::new(format!(
                    "invalid SMTP URL: scheme {:?} is neither smtp nor smtps",
                    escape(other)
                )))
            }
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(EmailError::new("invalid SMTP URL: no host")),
        };
        if !matches!(parsed.path(), "" | "/") || parsed.fragment().is_some() {
            return Err(EmailError::new(
                "invalid SMTP URL: a path or fragment has no meaning here",
            ));
        }
        let mut config = Self::new(host);
        config.port = parsed.port();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "tls" => {
                    let mode = TlsMode::parse(&value)?;
                    if parsed.scheme() == "smtps" && mode != TlsMode::Implicit {
                        return Err(EmailError::new(
                            "invalid SMTP URL: smtps:// means implicit TLS; use smtp:// for another mode",
                        ));
                    }
                    tls = Some(mode);
                }
                "connect_timeout" => config.connect_timeout = parse_duration(&key, &value)?,
                "command_timeout" => config.command_timeout = parse_duration(&key, &value)?,
                other => {
                    return Err(EmailError::new(format!(
                        "invalid SMTP URL: unknown parameter {:?} (known: tls, connect_timeout, command_timeout)",
                        escape(other)
                    )))
                }
            }
        }
        config.tls = tls;
        if !parsed.username().is_empty() {
            let user = decode(parsed.username())?;
            let password = decode(parsed.password().unwrap_or(""))?;
            config.credentials = Some((user, password));
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets the port. Default: [`TlsMode::default_port`] of the TLS mode, or 25 for a loopback
    /// host with no TLS mode set.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the TLS mode. Default: [`TlsMode::StartTls`], or
    /// [`TlsMode::Opportunistic`] for a loopback host.
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Logs in with AUTH PLAIN or LOGIN, whichever the server offers. Default: no AUTH.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Time to connect and to read the greeting and the EHLO answer (and, for implicit TLS,
    /// to finish the handshake). Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time the server has to answer each later command. Default:
    /// 30 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Also trusts the root certificates (CAs) in `pem`, such as an internal CA that signed the
    /// SMTP server's certificate: one or more `-----BEGIN CERTIFICATE-----` sections, other
    /// sections are ignored. May be called again to add more. Used for [`TlsMode::StartTls`]
    /// and [`TlsMode::Implicit`]; the server's name is still checked against its certificate.
    ///
    /// Default: only the built-in webpki roots (Mozilla's list) are trusted. The roots added
    /// here are trusted in addition to them.
    ///
    /// # Errors
    ///
    /// `pem` holds no certificate, a malformed PEM section, or a certificate that cannot serve
    /// as a trust anchor.
    pub fn root_certificate_pem(mut self, pem: impl AsRef<[u8]>) -> Result<Self, EmailError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;

        let certificates = CertificateDer::pem_slice_iter(pem.as_ref())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                EmailError::new(format!("SMTP root certificate: invalid PEM: {error}"))
            })?;
        if certificates.is_empty() {
            return Err(EmailError::new(
                "SMTP root certificate: no -----BEGIN CERTIFICATE----- section in the PEM",
            ));
        }
        // Checks now what the TLS setup would otherwise reject only when the sink is built.
        let mut store = rustls::RootCertStore::empty();
        for certificate in certificates {
            store.add(certificate.clone()).map_err(|error| {
                EmailError::new(format!(
                    "SMTP root certificate: unusable as a root: {error}"
                ))
            })?;
            let certificate = Certificate::from_der(certificate.to_vec())
                .map_err(|error| EmailError::new(format!("SMTP root certificate: {error}")))?;
            self.root_certificates.push(certificate);
        }
        Ok(self)
    }

    /// The TLS mode used: the one set, or the host's default.
    pub(crate) fn resolved_tls(&self) -> TlsMode {
        match self.tls {
            Some(mode) => mode,
            None if is_loopback(&self.host) => Self::DEFAULT_LOOPBACK_TLS,
            None => Self::DEFAULT_TLS,
        }
    }

    /// The port connected to: the one set, or the default of the TLS mode (25 for a local
    /// relay reached without a mode, as lettre's `smtp://` does).
    pub(crate) fn resolved_port(&self) -> u16 {
        match (self.port, self.tls) {
            (Some(port), _) => port,
            (None, None) if is_loopback(&self.host) => 25,
            (None, _) => self.resolved_tls().default_port(),
        }
    }

    /// Checks what a builder cannot check setter by setter.
    pub(crate) fn validate(&self) -> Result<(), EmailError> {
        if self.host.is_empty() || self.host.chars().any(|c| c.is_control() || c == ' ') {
            return Err(EmailError::new(
                "SMTP host is empty or has invalid characters",
            ));
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(EmailError::new("SMTP timeouts must be greater than zero"));
        }
        let tls = self.resolved_tls();
        let may_be_plain = matches!(tls, TlsMode::None | TlsMode::Opportunistic);
        if self.credentials.is_some() && may_be_plain && !is_loopback(&self.host) {
            return Err(EmailError::new(format!(
                "SMTP credentials for {} could be sent in clear text with tls={}; use tls=required or smtps://",
                escape(&self.host),
                tls.word()
            )));
        }
        Ok(())
    }

    /// Where the connection goes, for messages: never the credentials.
    pub(crate) fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.resolved_port())
        } else {
            format!("{}:{}", self.host, self.resolved_port())
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.resolved_port())
            .field("tls", &self.resolved_tls())
            .field(
                "user",
                &self.credentials.as_ref().map(|(user, _)| user.as_str()),
            )
            .field(
                "password",
                &self.credentials.as_ref().map(|_| crate::report::REDACTED),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("extra_root_certificates", &self.root_certificates.len())
            .finish()
    }
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, EmailError> {
    humantime::parse_duration(value).map_err(|_| {
        EmailError::new(format!(
            "invalid SMTP URL: {key}={:?} is not a duration such as 10s or 500ms",
            escape(value)
        ))
    })
}

fn decode(raw: &str) -> Result<String, EmailError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        // Says which part is bad without echoing it: it may be the password.
        .map_err(|_| EmailError::new("invalid SMTP URL: user or password is not UTF-8"))
}

/// Keeps error messages on one line whatever the input holds.
fn escape(value: &str) -> String {
    value.chars().flat_map(char::escape_default).collect()
}

/// 127.0.0.0/8, ::1 (also IPv4-mapped) and `localhost`: traffic that never leaves the machine.
fn is_loopback(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// An SMTP client ready to send: the settings plus TLS parameters built once.
pub(crate) struct SmtpClient {
    config: SmtpConfig,
    mode: TlsMode,
    tls: Option<TlsParameters>,
    hello: ClientId,
}

impl SmtpClient {
    pub(crate) fn new(config: SmtpConfig) -> Result<Self, EmailError> {
        config.validate()?;
        let mode = config.resolved_tls();
        let tls = match mode {
            TlsMode::None => None,
            TlsMode::Opportunistic | TlsMode::StartTls | TlsMode::Implicit => {
                // The default store is lettre's built-in webpki roots (feature rustls-tls).
                let builder = config.root_certificates.iter().cloned().fold(
                    TlsParameters::builder(config.host.clone()),
                    |builder, certificate| builder.add_root_certificate(certificate),
                );
                Some(
                    builder
                        .build_rustls()
                        .map_err(|error| EmailError::new(format!("SMTP TLS setup: {error}")))?,
                )
            }
        };
        let hello = hello_name();
        Ok(Self {
            config,
            mode,
            tls,
            hello,
        })
    }

    pub(crate) fn endpoint(&self) -> String {
        self.config.endpoint()
    }

    /// One transaction on a fresh connection: connect, TLS, AUTH, MAIL, RCPT, DATA, QUIT.
    pub(crate) fn send(&self, message: &Message) -> Result<(), SendError> {
        let config = &self.config;
        let wrapper = match self.mode {
            TlsMode::Implicit => self.tls.as_ref(),
            _ => None,
        };
        // With rustls the handshake runs on the first read, which the connect timeout covers.
        let mut connection = SmtpConnection::connect(
            (config.host.as_str(), config.resolved_port()),
            Some(config.connect_timeout),
            &self.hello,
            wrapper,
            None,
        )
        .map_err(|e| self.error("connect", &e))?;
        let result = self.transaction(&mut connection, message);
        match result {
            Ok(()) => {
                let _ = connection.quit();
                Ok(())
            }
            Err(error) => {
                connection.abort();
                Err(error)
            }
        }
    }

    fn transaction(
        &self,
        connection: &mut SmtpConnection,
        message: &Message,
    ) -> Result<(), SendError> {
        let config = &self.config;
        connection
            .set_timeout(Some(config.command_timeout))
            .map_err(|e| SendError::transient(format!("SMTP {}: {e}", self.endpoint())))?;
        let offered = connection.can_starttls();
        match self.mode {
            TlsMode::StartTls | TlsMode::Opportunistic if offered => {
                let tls = self
                    .tls
                    .as_ref()
                    .expect("TLS parameters exist for STARTTLS");
                connection
                    .starttls(tls, &self.hello)
                    .map_err(|e| self.error("STARTTLS", &e))?;
            }
            TlsMode::StartTls => {
                return Err(self.refuse(
                    "STARTTLS",
                    "the server does not offer STARTTLS",
                    Cause::NoStartTls,
                ))
            }
            _ => {}
        }
        if let Some((user, password)) = &config.credentials {
            // Checked when configured too; this keeps a plain-text login off the network even
            // if that check is ever bypassed.
            if !connection.is_encrypted() && !is_loopback(&config.host) {
                return Err(self.refuse(
                    "AUTH",
                    "credentials would be sent in clear text",
                    Cause::NoStartTls,
                ));
            }
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            if connection
                .server_info()
                .get_auth_mechanism(&mechanisms)
                .is_none()
            {
                return Err(self.refuse(
                    "AUTH",
                    "the server offers neither AUTH PLAIN nor AUTH LOGIN",
                    Cause::AuthUnavailable,
                ));
            }
            let credentials = Credentials::new(user.clone(), password.clone());
            connection
                .auth(&mechanisms, &credentials)
                .map_err(|e| self.error("AUTH", &e))?;
        }
        connection
            .send(message.envelope(), &message.formatted())
            .map_err(|e| self.error("sending", &e))?;
        Ok(())
    }

    /// A refusal decided on this side: it would happen again, so it is not retried.
    fn refuse(&self, stage: &str, why: &str, cause: Cause) -> SendError {
        SendError::permanent(format!("SMTP {stage} at {}: {why}", self.endpoint()))
            .diagnosed(cause.diagnosis(&self.config, self.mode))
    }

    /// Classifies a lettre error: 5xx answers, client-side refusals (no STARTTLS, no common
    /// AUTH mechanism) and TLS failures would fail the same way again, so they are not retried.
    fn error(&self, stage: &str, error: &lettre::transport::smtp::Error) -> SendError {
        let message = format!("SMTP {stage} at {}: {error}", self.endpoint());
        let tls_failure = find_tls_error(error);
        let permanent =
            error.is_permanent() || error.is_client() || error.is_tls() || tls_failure.is_some();
        let cause = match tls_failure {
            Some(rustls::Error::InvalidCertificate(problem)) => {
                Some(Cause::CertificateUntrusted(format!("{problem:?}")))
            }
            Some(other) => Some(Cause::TlsHandshake(other.to_string())),
            None if has_io_error(error, std::io::ErrorKind::ConnectionRefused) => {
                Some(Cause::ConnectionRefused)
            }
            None if error.is_timeout()
                || has_io_error(error, std::io::ErrorKind::TimedOut)
                || has_io_error(error, std::io::ErrorKind::WouldBlock) =>
            {
                Some(Cause::Timeout)
            }
            None if stage == "AUTH" && error.is_permanent() => Some(Cause::AuthRejected),
            None => None,
        };
        let send_error = if permanent {
            SendError::permanent(message)
        } else {
            SendError::transient(message)
        };
        match cause {
            Some(cause) => send_error.diagnosed(cause.diagnosis(&self.config, self.mode)),
            None => send_error,
        }
    }
}

/// The common reasons a delivery fails, each with the change that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    NoStartTls,
    /// The certificate problem, as rustls names it.
    CertificateUntrusted(String),
    TlsHandshake(String),
    ConnectionRefused,
    Timeout,
    AuthUnavailable,
    AuthRejected,
}

impl Cause {
    /// One line, `reason; fix`, for the ERROR log of the first failed delivery.
    pub(crate) fn diagnosis(&self, config: &SmtpConfig, mode: TlsMode) -> String {
        let at = config.endpoint();
        match self {
            Cause::NoStartTls => format!(
                "relay {at} does not offer STARTTLS; for a local relay use `?tls=none`, for a \
                 server speaking implicit TLS use `smtps://` (usually port 465)"
            ),
            Cause::CertificateUntrusted(problem) => format!(
                "the certificate of {at} is not trusted ({problem}); trust its CA with \
                 `SmtpConfig::root_certificate_pem` and connect by the name in the certificate, \
                 or for a local relay use `?tls=none`"
            ),
            Cause::TlsHandshake(problem) => format!(
                "TLS handshake with {at} failed ({problem}); check that the mode suits the port: \
                 `smtps://` for implicit TLS (usually 465), `smtp://…?tls=required` for STARTTLS \
                 (usually 587)"
            ),
            Cause::ConnectionRefused => format!(
                "connection to {at} refused: nothing listens there; check host and port (a \
                 local relay usually listens on 25, submission on 587, SMTPS on 465)"
            ),
            Cause::Timeout => format!(
                "{at} did not answer in time (mode {}); check the firewall and the port (implicit \
                 TLS to a STARTTLS port hangs too), or raise `connect_timeout`",
                mode.word()
            ),
            Cause::AuthUnavailable => format!(
                "{at} offers no AUTH PLAIN or LOGIN{}; remove the credentials if the relay \
                 needs none, or use `?tls=required`: many servers offer AUTH only after STARTTLS",
                if mode == TlsMode::None {
                    " over plain text"
                } else {
                    ""
                }
            ),
            Cause::AuthRejected => format!(
                "{at} rejected the credentials; check user and password (percent-encode `@`, `:` \
                 and `/` in a URL)"
            ),
        }
    }
}

/// The rustls error behind a lettre error, if any. With rustls the handshake runs on the first
/// read or write after connecting (implicit TLS) or after STARTTLS, so a rejected certificate
/// reaches lettre as an I/O error that carries the `rustls::Error`.
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps, so look at that one directly.
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = error.source();
    }
    None
}

fn has_io_error(error: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// The EHLO name: this host's name when it is a plausible domain, else 127.0.0.1.
fn hello_name() -> ClientId {
    let name = crate::report::hostname();
    if super::message::is_domain_like(name) {
        ClientId::Domain(name.to_owned())
    } else {
        ClientId::Ipv4(std::net::Ipv4Addr::LOCALHOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read() {
        let c =
            SmtpConfig::from_url("smtp://user:secret@mail.example.com:2587?tls=starttls").unwrap();
        assert_eq!(
            (c.host.as_str(), c.resolved_port(), c.resolved_tls()),
            ("mail.example.com", 2587, TlsMode::StartTls)
        );
        assert_eq!(
            c.credentials,
            Some(("user".to_owned(), "secret".to_owned()))
        );

        let c = SmtpConfig::from_url("smtp://mail.example.com").unwrap();
        assert_eq!(
            (c.resolved_port(), c.resolved_tls()),
            (587, TlsMode::StartTls)
        );
        assert!(c.credentials.is_none());

        let c = SmtpConfig::from_url("smtps://u%40x.org:p%3Fw%25@mail.example.com").unwrap();
        assert_eq!(
            (c.resolved_port(), c.resolved_tls()),
            (465, TlsMode::Implicit)
        );
        assert_eq!(
            c.credentials,
            Some(("u@x.org".to_owned(), "p?w%".to_owned()))
        );

        let c = SmtpConfig::from_url(
            "smtp://127.0.0.1:2525?tls=none&connect_timeout=250ms&command_timeout=2s",
        )
        .unwrap();
        assert_eq!((c.resolved_port(), c.resolved_tls()), (2525, TlsMode::None));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.command_timeout, Duration::from_secs(2));

        let c = SmtpConfig::from_url("smtp://[::1]:25?tls=none").unwrap();
        assert_eq!(c.endpoint(), "[::1]:25");
        let c = SmtpConfig::from_url("smtp://localhost?tls=none").unwrap();
        assert_eq!(c.resolved_port(), 25);
    }

    #[test]
    fn lettre_words_and_loopback_defaults() {
        let mode = |url: &str| {
            let c = SmtpConfig::from_url(url).unwrap();
            (c.resolved_tls(), c.resolved_port())
        };
        // lettre's words.
        assert_eq!(
            mode("smtp://mail.example.com?tls=required"),
            (TlsMode::StartTls, 587)
        );
        assert_eq!(
            mode("smtp://mail.example.com?tls=opportunistic"),
            (TlsMode::Opportunistic, 587)
        );
        assert_eq!(mode("smtps://mail.example.com"), (TlsMode::Implicit, 465));
        assert_eq!(
            mode("smtp://mail.example.com?tls=Required"),
            (TlsMode::StartTls, 587)
        );
        // A remote host keeps STARTTLS required; a loopback one gets a local relay's defaults.
        assert_eq!(mode("smtp://mail.example.com"), (TlsMode::StartTls, 587));
        for local in [
            "smtp://127.0.0.1",
            "smtp://127.8.9.10",
            "smtp://[::1]",
            "smtp://localhost",
            "smtp://LocalHost.",
            "smtp://[::ffff:127.0.0.1]",
        ] {
            assert_eq!(mode(local), (TlsMode::Opportunistic, 25), "{local}");
        }
        assert_eq!(
            mode("smtp://127.0.0.1:2525"),
            (TlsMode::Opportunistic, 2525)
        );
        assert_eq!(
            mode("smtp://127.0.0.1?tls=required"),
            (TlsMode::StartTls, 587)
        );
        // The builder follows the same rules.
        let c = SmtpConfig::new("127.0.0.1");
        assert_eq!(
            (c.resolved_tls(), c.resolved_port()),
            (TlsMode::Opportunistic, 25)
        );
        let c = SmtpConfig::new("mail.example.com");
        assert_eq!(
            (c.resolved_tls(), c.resolved_port()),
            (TlsMode::StartTls, 587)
        );
        for host in ["127.0.0.1.example.com", "localhost.example.com", "10.0.0.1"] {
            assert_eq!(
                SmtpConfig::new(host).resolved_tls(),
                TlsMode::StartTls,
                "{host}"
            );
        }
    }

    #[test]
    fn credentials_never_go_to_a_remote_host_in_clear_text() {
        for url in [
            "smtp://u:hunter2@mail.example.com?tls=none",
            "smtp://u:hunter2@mail.example.com?tls=opportunistic",
            "smtp://u:hunter2@10.0.0.1?tls=opportunistic",
        ] {
            let error = SmtpConfig::from_url(url).unwrap_err().to_string();
            assert!(error.contains("clear text"), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
        let builder = SmtpConfig::new("mail.example.com")
            .credentials("u", "hunter2")
            .tls(TlsMode::Opportunistic);
        assert!(SmtpClient::new(builder).is_err());
        for url in [
            "smtp://u:p@127.0.0.1:2525",
            "smtp://u:p@localhost?tls=none",
            "smtp://u:p@mail.example.com",
            "smtps://u:p@mail.example.com",
        ] {
            assert!(SmtpConfig::from_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn common_failures_are_diagnosed_with_their_fix() {
        let config = SmtpConfig::from_url("smtp://127.0.0.1:2525").unwrap();
        let mode = config.resolved_tls();
        let no_starttls = Cause::NoStartTls.diagnosis(&config, mode);
        assert!(
            no_starttls.starts_with("relay 127.0.0.1:2525 does not offer STARTTLS")
                && no_starttls.contains("for a local relay use `?tls=none`"),
            "{no_starttls}"
        );
        let untrusted =
            Cause::CertificateUntrusted("UnknownIssuer".into()).diagnosis(&config, mode);
        assert!(
            untrusted.contains("UnknownIssuer") && untrusted.contains("root_certificate_pem"),
            "{untrusted}"
        );
        assert!(Cause::ConnectionRefused
            .diagnosis(&config, mode)
            .contains("refused"));
        assert!(Cause::AuthRejected
            .diagnosis(&config, mode)
            .contains("check user and password"));
    }

    #[test]
    fn bad_urls_are_errors_that_never_show_the_password() {
        for (url, expected) in [
            ("not a url", "invalid SMTP URL"),
            ("http://hunter2@mail.example.com", "scheme"),
            (
                "smtp://u:hunter2@mail.example.com?tls=sometimes",
                "unknown TLS mode",
            ),
            (
                "smtp://u:hunter2@mail.example.com?tsl=none",
                "unknown parameter",
            ),
            (
                "smtp://u:hunter2@mail.example.com?connect_timeout=soon",
                "not a duration",
            ),
            ("smtp://u:hunter2@mail.example.com/path", "path"),
            (
                "smtps://u:hunter2@mail.example.com?tls=starttls",
                "implicit",
            ),
            ("smtp://u:hunter2@mail.example.com?tls=none", "clear text"),
            (
                "smtp://u:hunter2@mail.example.com:99999",
                "invalid SMTP URL",
            ),
            (
                "smtp://u:hunter2@mail.example.com?command_timeout=0s",
                "greater than zero",
            ),
            ("smtp://:hunter2@", "invalid SMTP URL"),
        ] {
            let error = SmtpConfig::from_url(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = SmtpConfig::from_url("smtps://vigil:hunter2@mail.example.com").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("vigil") && debug.contains("[redacted]"),
            "{debug}"
        );
    }

    #[test]
    fn root_certificates_are_checked_when_added() {
        let config = SmtpConfig::new("mail.example.com");
        for (pem, expected) in [
            (&b"not a pem"[..], "no -----BEGIN CERTIFICATE-----"),
            (b"", "no -----BEGIN CERTIFICATE-----"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "no -----BEGIN CERTIFICATE-----",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "invalid PEM",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "unusable as a root",
            ),
        ] {
            let error = config
                .clone()
                .root_certificate_pem(pem)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }

        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let config = config
            .root_certificate_pem(ca.cert.pem())
            .unwrap()
            .root_certificate_pem(format!("{}{}", ca.cert.pem(), other.cert.pem()))
            .unwrap();
        assert_eq!(config.root_certificates.len(), 3);
        assert!(format!("{config:?}").contains("extra_root_certificates: 3"));
        assert!(SmtpClient::new(config).is_ok());
    }

    #[test]
    fn tls_errors_inside_io_errors_are_recognised() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(find_tls_error(&io).is_some());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(find_tls_error(&io).is_none());
    }

    #[test]
    fn an_unknown_issuer_is_permanent_and_says_so() {
        // A server speaking implicit TLS with a self-signed certificate nobody trusts.
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()).into(),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut tls = rustls::ServerConnection::new(std::sync::Arc::new(server)).unwrap();
            while tls.is_handshaking() {
                if tls.complete_io(&mut socket).is_err() {
                    break;
                }
            }
        });
        let config = SmtpConfig::new("localhost")
            .port(port)
            .tls(TlsMode::Implicit)
            .connect_timeout(Duration::from_secs(5));
        let client = SmtpClient::new(config).unwrap();
        let message = Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .body(String::from("x"))
            .unwrap();
        let error = client.send(&message).unwrap_err();
        serve.join().unwrap();
        assert!(error.permanent, "{}", error.message);
        assert!(error.message.contains("UnknownIssuer"), "{}", error.message);
        let diagnosis = error.diagnosis.unwrap_or_default();
        assert!(
            diagnosis.contains("is not trusted (UnknownIssuer)"),
            "{diagnosis}"
        );
    }

    #[test]
    fn a_refused_connection_is_transient_and_names_no_secret() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = SmtpConfig::from_url(&format!(
            "smtp://vigil:hunter2@127.0.0.1:{port}?tls=none&connect_timeout=1s"
        ))
        .unwrap();
        let client = SmtpClient::new(config).unwrap();
        let message = Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .body(String::from("x"))
            .unwrap();
        let error = client.send(&message).unwrap_err();
        assert!(!error.permanent, "{}", error.message);
        assert!(
            error.message.contains(&format!("127.0.0.1:{port}")),
            "{}",
            error.message
        );
        assert!(!error.message.contains("hunter2"), "{}", error.message);
        let diagnosis = error.diagnosis.unwrap_or_default();
        assert!(
            diagnosis.contains(&format!("connection to 127.0.0.1:{port} refused")),
            "{diagnosis}"
        );
    }
}
