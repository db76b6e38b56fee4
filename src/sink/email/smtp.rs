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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// No TLS: plain text from the first byte to the last. URL: `?tls=none`.
    None,
    /// Plain connection upgraded with STARTTLS before anything else is sent; a server that
    /// does not offer STARTTLS gets no mail. URL: `?tls=starttls` (the default of `smtp://`).
    StartTls,
    /// TLS from the first byte (SMTPS). URL: `smtps://` or `?tls=implicit`.
    Implicit,
}

impl TlsMode {
    /// The port used when none is given: 25 for [`TlsMode::None`], 587 for
    /// [`TlsMode::StartTls`], 465 for [`TlsMode::Implicit`].
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::StartTls => 587,
            TlsMode::Implicit => 465,
        }
    }

    fn parse(value: &str) -> Result<Self, EmailError> {
        match value {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::StartTls),
            "implicit" => Ok(TlsMode::Implicit),
            other => Err(EmailError::new(format!(
                "invalid SMTP URL: unknown TLS mode {:?} (expected none, starttls or implicit)",
                escape(other)
            ))),
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
/// With TLS ([`TlsMode::StartTls`], the default, or [`TlsMode::Implicit`]) the server's
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
    tls: TlsMode,
    credentials: Option<(String, String)>,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Trusted in addition to the built-in webpki roots.
    root_certificates: Vec<Certificate>,
}

impl SmtpConfig {
    /// Default time to connect, finish the TLS handshake (implicit TLS), and read the greeting
    /// and the answer to EHLO: 10 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default time the server has to answer each later command (STARTTLS, AUTH, MAIL, RCPT,
    /// DATA, QUIT): 30 s.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default protection of the connection: [`TlsMode::StartTls`].
    pub const DEFAULT_TLS: TlsMode = TlsMode::StartTls;

    /// A server at `host` (a name or an IP address), with [`SmtpConfig::DEFAULT_TLS`], no
    /// credentials and the default timeouts.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            tls: Self::DEFAULT_TLS,
            credentials: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            root_certificates: Vec::new(),
        }
    }

    /// Reads `smtp://[user[:password]@]host[:port][?tls=none|starttls|implicit]` or
    /// `smtps://…` (implicit TLS). More query parameters: `connect_timeout` and
    /// `command_timeout`, as durations such as `10s` or `500ms`. User and password are
    /// percent-decoded.
    ///
    /// # Errors
    ///
    /// A malformed URL, another scheme, a missing host, an unknown TLS mode or parameter, a
    /// bad duration, or credentials that would cross the network in clear text
    /// (`tls=none` to a host other than a loopback address). Error messages never contain the
    /// password.
    pub fn from_url(url: &str) -> Result<Self, EmailError> {
        let parsed = url::Url::parse(url)
            .map_err(|error| EmailError::new(format!("invalid SMTP URL: {error}")))?;
        let mut tls = match parsed.scheme() {
            "smtp" => Self::DEFAULT_TLS,
            "smtps" => TlsMode::Implicit,
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
                    tls = mode;
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

    /// Sets the port. Default: [`TlsMode::default_port`] of the TLS mode.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the TLS mode. Default: [`SmtpConfig::DEFAULT_TLS`].
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Logs in with AUTH PLAIN or LOGIN, whichever the server offers. Default: no AUTH.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Time to connect and to read the greeting and the EHLO answer (and, for implicit TLS,
    /// to finish the handshake). Default: [`SmtpConfig::DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time the server has to answer each later command. Default:
    /// [`SmtpConfig::DEFAULT_COMMAND_TIMEOUT`].
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

    /// The port connected to: the one set, or the TLS mode's default.
    pub(crate) fn resolved_port(&self) -> u16 {
        self.port.unwrap_or(self.tls.default_port())
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
        if self.credentials.is_some() && self.tls == TlsMode::None && !is_loopback(&self.host) {
            return Err(EmailError::new(format!(
                "SMTP credentials for {} would be sent in clear text with tls=none; use starttls or implicit",
                self.host
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
            .field("tls", &self.tls)
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

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// An SMTP client ready to send: the settings plus TLS parameters built once.
pub(crate) struct SmtpClient {
    config: SmtpConfig,
    tls: Option<TlsParameters>,
    hello: ClientId,
}

impl SmtpClient {
    pub(crate) fn new(config: SmtpConfig) -> Result<Self, EmailError> {
        config.validate()?;
        let tls = match config.tls {
            TlsMode::None => None,
            TlsMode::StartTls | TlsMode::Implicit => {
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
        Ok(Self { config, tls, hello })
    }

    pub(crate) fn endpoint(&self) -> String {
        self.config.endpoint()
    }

    /// One transaction on a fresh connection: connect, TLS, AUTH, MAIL, RCPT, DATA, QUIT.
    pub(crate) fn send(&self, message: &Message) -> Result<(), SendError> {
        let config = &self.config;
        let wrapper = match config.tls {
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
        if config.tls == TlsMode::StartTls {
            let tls = self
                .tls
                .as_ref()
                .expect("TLS parameters exist for STARTTLS");
            connection
                .starttls(tls, &self.hello)
                .map_err(|e| self.error("STARTTLS", &e))?;
        }
        if let Some((user, password)) = &config.credentials {
            let credentials = Credentials::new(user.clone(), password.clone());
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .map_err(|e| self.error("AUTH", &e))?;
        }
        connection
            .send(message.envelope(), &message.formatted())
            .map_err(|e| self.error("sending", &e))?;
        Ok(())
    }

    /// Classifies a lettre error: 5xx answers, client-side refusals (no STARTTLS, no common
    /// AUTH mechanism) and TLS failures would fail the same way again, so they are not retried.
    fn error(&self, stage: &str, error: &lettre::transport::smtp::Error) -> SendError {
        let message = format!("SMTP {stage} at {}: {error}", self.endpoint());
        if error.is_permanent() || error.is_client() || error.is_tls() || is_tls_failure(error) {
            SendError::permanent(message)
        } else {
            SendError::transient(message)
        }
    }
}

/// Whether a TLS error lies behind a network error. With rustls the handshake runs on the first
/// read or write after connecting (implicit TLS) or after STARTTLS, so a rejected certificate
/// reaches lettre as an I/O error that carries the `rustls::Error`.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps, so look at that one directly.
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
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
            (c.host.as_str(), c.resolved_port(), c.tls),
            ("mail.example.com", 2587, TlsMode::StartTls)
        );
        assert_eq!(
            c.credentials,
            Some(("user".to_owned(), "secret".to_owned()))
        );

        let c = SmtpConfig::from_url("smtp://mail.example.com").unwrap();
        assert_eq!((c.resolved_port(), c.tls), (587, TlsMode::StartTls));
        assert!(c.credentials.is_none());

        let c = SmtpConfig::from_url("smtps://u%40x.org:p%3Fw%25@mail.example.com").unwrap();
        assert_eq!((c.resolved_port(), c.tls), (465, TlsMode::Implicit));
        assert_eq!(
            c.credentials,
            Some(("u@x.org".to_owned(), "p?w%".to_owned()))
        );

        let c = SmtpConfig::from_url(
            "smtp://127.0.0.1:2525?tls=none&connect_timeout=250ms&command_timeout=2s",
        )
        .unwrap();
        assert_eq!((c.resolved_port(), c.tls), (2525, TlsMode::None));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.command_timeout, Duration::from_secs(2));

        let c = SmtpConfig::from_url("smtp://[::1]:25?tls=none").unwrap();
        assert_eq!(c.endpoint(), "[::1]:25");
        let c = SmtpConfig::from_url("smtp://localhost?tls=none").unwrap();
        assert_eq!(c.resolved_port(), 25);
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
        assert!(is_tls_failure(&io));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!is_tls_failure(&io));
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
    }
}
