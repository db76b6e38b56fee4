//! A small but real SMTP server on 127.0.0.1 (RFC 5321): greeting, EHLO/HELO, AUTH PLAIN and
//! LOGIN, MAIL FROM, RCPT TO, DATA with dot-unstuffing, RSET, NOOP, QUIT, and TLS: implicit (from
//! the first byte) or STARTTLS (RFC 3207), with a certificate for `localhost` from a test CA made
//! at test time. Switches make it stall after accepting a connection, or answer MAIL FROM with an
//! error code.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a connection may sit idle (or stall) before the server hangs up, so no test thread
/// outlives its test by much.
const IDLE_LIMIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message after dot-unstuffing, without the terminating `.` line.
    pub data: Vec<u8>,
    /// The credentials the client logged in with.
    pub auth: Option<(String, String)>,
    /// Whether the message came over TLS (implicit, or after STARTTLS).
    pub tls: bool,
    pub at: Instant,
}

/// A CA made at test time and a certificate for `localhost` it signed, as a company's internal
/// CA would.
pub struct TestCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tower-vigil test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key.into())
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }

    /// The CA certificate, to be trusted by the client.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// TLS from the first byte.
    pub fn implicit(&self) -> ServerTls {
        ServerTls {
            starttls: false,
            config: self.server.clone(),
        }
    }

    /// STARTTLS offered in the EHLO answer; AUTH and MAIL only after the upgrade.
    pub fn starttls(&self) -> ServerTls {
        ServerTls {
            starttls: true,
            config: self.server.clone(),
        }
    }
}

/// How the server speaks TLS; made by [`TestCa`].
#[derive(Debug, Clone)]
pub struct ServerTls {
    starttls: bool,
    config: Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Advertise AUTH PLAIN LOGIN and require these credentials before MAIL.
    pub auth: Option<(String, String)>,
    /// Accept connections but never say anything.
    pub stall: bool,
    /// Answer the first `n` MAIL FROM commands with this code (such as 451 or 550).
    pub fail_mail: Option<(u16, usize)>,
    /// Implicit TLS or STARTTLS; plain text when `None`.
    pub tls: Option<ServerTls>,
}

struct Shared {
    config: ServerConfig,
    stop: AtomicBool,
    received: Mutex<Vec<Received>>,
    changed: Condvar,
    connections: AtomicUsize,
    mail_commands: AtomicUsize,
    handshakes: AtomicUsize,
}

/// The running server; dropping it stops it.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl SmtpServer {
    pub fn start() -> Self {
        Self::with(ServerConfig::default())
    }

    pub fn with(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            config,
            stop: AtomicBool::new(false),
            received: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            connections: AtomicUsize::new(0),
            mail_commands: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("test-smtp-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .unwrap();
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A plain-text URL for this server.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port())
    }

    pub fn messages(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed (implicit or after STARTTLS).
    pub fn handshakes(&self) -> usize {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    pub fn mail_commands(&self) -> usize {
        self.shared.mail_commands.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages have arrived; returns all of them, or `None` on
    /// timeout.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Option<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        let mut received = self.shared.received.lock().unwrap();
        while received.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            received = self
                .shared
                .changed
                .wait_timeout(received, deadline - now)
                .unwrap()
                .0;
        }
        Some(received.clone())
    }

    /// Waits until at least `n` connections have been accepted.
    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.connections() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The socket, in plain text or inside TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Runs the server side of a TLS handshake on `socket` to the end, so that neither the greeting
/// nor a reply meets an unfinished handshake.
fn handshake(socket: TcpStream, shared: &Shared, tls: &ServerTls) -> std::io::Result<Stream> {
    let mut socket = socket;
    let mut connection = rustls::ServerConnection::new(tls.config.clone())
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    let started = Instant::now();
    while connection.is_handshaking() {
        match connection.complete_io(&mut socket) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.stop.load(Ordering::SeqCst) || started.elapsed() > IDLE_LIMIT {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    shared.handshakes.fetch_add(1, Ordering::SeqCst);
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(
        connection, socket,
    ))))
}

struct Connection<'a> {
    reader: BufReader<Stream>,
    shared: &'a Shared,
}

impl Connection<'_> {
    fn reply(&mut self, line: &str) -> std::io::Result<()> {
        let writer = self.reader.get_mut();
        writer.write_all(format!("{line}\r\n").as_bytes())?;
        writer.flush()
    }

    fn is_tls(&self) -> bool {
        matches!(self.reader.get_ref(), Stream::Tls(_))
    }

    /// STARTTLS: the same socket, now inside TLS. Anything the client sent after STARTTLS and
    /// before the handshake would be an injection (RFC 3207 section 5), so it is refused.
    fn upgrade(&mut self, tls: &ServerTls) -> std::io::Result<()> {
        if !self.reader.buffer().is_empty() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "plain text after STARTTLS",
            ));
        }
        let placeholder = BufReader::new(Stream::Plain(self.socket()?));
        let Stream::Plain(socket) = std::mem::replace(&mut self.reader, placeholder).into_inner()
        else {
            return Err(std::io::Error::other("STARTTLS inside TLS"));
        };
        self.reader = BufReader::new(handshake(socket, self.shared, tls)?);
        Ok(())
    }

    fn socket(&self) -> std::io::Result<TcpStream> {
        match self.reader.get_ref() {
            Stream::Plain(s) => s.try_clone(),
            Stream::Tls(s) => s.sock.try_clone(),
        }
    }

    /// One line without its CRLF; `None` at end of stream, on stop, or when idle too long.
    fn line(&mut self) -> Option<Vec<u8>> {
        let started = Instant::now();
        let mut buf = Vec::new();
        loop {
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) if buf.ends_with(b"\n") => {
                    buf.pop();
                    if buf.ends_with(b"\r") {
                        buf.pop();
                    }
                    return Some(buf);
                }
                Ok(_) => return None,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.shared.stop.load(Ordering::SeqCst) || started.elapsed() > IDLE_LIMIT {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    }

    fn text_line(&mut self) -> Option<String> {
        self.line()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    if shared.config.stall {
        let started = Instant::now();
        while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < IDLE_LIMIT {
            std::thread::sleep(POLL);
        }
        return Ok(());
    }
    let tls = shared.config.tls.as_ref();
    let stream = match tls {
        Some(tls) if !tls.starttls => handshake(stream, shared, tls)?,
        _ => Stream::Plain(stream),
    };
    let mut conn = Connection {
        reader: BufReader::new(stream),
        shared,
    };
    conn.reply("220 test.localhost ESMTP vigil test server")?;
    // With STARTTLS offered, AUTH and mail wait for the upgrade (as real submission servers do).
    let starttls_pending = |conn: &Connection<'_>| tls.is_some() && !conn.is_tls();
    let mut greeted = false;
    let mut authed: Option<(String, String)> = None;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    while let Some(line) = conn.text_line() {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("");
        match verb {
            "EHLO" => {
                greeted = true;
                conn.reply("250-test.localhost greets you")?;
                if starttls_pending(&conn) {
                    conn.reply("250-STARTTLS")?;
                } else if shared.config.auth.is_some() {
                    conn.reply("250-AUTH PLAIN LOGIN")?;
                }
                conn.reply("250-8BITMIME")?;
                conn.reply("250 SIZE 10485760")?;
            }
            "HELO" => {
                greeted = true;
                conn.reply("250 test.localhost")?;
            }
            "STARTTLS" if starttls_pending(&conn) => {
                conn.reply("220 2.0.0 Ready to start TLS")?;
                conn.upgrade(tls.expect("TLS is configured"))?;
                // RFC 3207 4.2: forget everything said in plain text; a fresh EHLO comes first.
                greeted = false;
                authed = None;
                mail_from = None;
                rcpt_to.clear();
            }
            "AUTH" | "MAIL" if starttls_pending(&conn) => {
                conn.reply("530 5.7.0 Must issue a STARTTLS command first")?;
            }
            "AUTH" | "MAIL" if !greeted => conn.reply("503 5.5.1 EHLO first")?,
            "AUTH" => {
                let credentials = authenticate(&mut conn, &line)?;
                match (&shared.config.auth, credentials) {
                    (Some(expected), Some(given)) if *expected == given => {
                        authed = Some(given);
                        conn.reply("235 2.7.0 Authentication successful")?;
                    }
                    _ => conn.reply("535 5.7.8 Authentication credentials invalid")?,
                }
            }
            "MAIL" => {
                let n = shared.mail_commands.fetch_add(1, Ordering::SeqCst);
                if shared.config.auth.is_some() && authed.is_none() {
                    conn.reply("530 5.7.0 Authentication required")?;
                } else if let Some((code, _)) = shared.config.fail_mail.filter(|f| n < f.1) {
                    conn.reply(&format!("{code} try the test server again some time"))?;
                } else {
                    mail_from = Some(path_of(&line));
                    rcpt_to.clear();
                    conn.reply("250 2.1.0 Ok")?;
                }
            }
            "RCPT" if mail_from.is_some() => {
                rcpt_to.push(path_of(&line));
                conn.reply("250 2.1.5 Ok")?;
            }
            "DATA" if !rcpt_to.is_empty() => {
                conn.reply("354 End data with <CR><LF>.<CR><LF>")?;
                let mut data = Vec::new();
                loop {
                    let Some(line) = conn.line() else {
                        return Ok(());
                    };
                    if line == b"." {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 4.5.2).
                    let line = line.strip_prefix(b".").unwrap_or(&line);
                    data.extend_from_slice(line);
                    data.extend_from_slice(b"\r\n");
                }
                let received = Received {
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                    auth: authed.clone(),
                    tls: conn.is_tls(),
                    at: Instant::now(),
                };
                shared.received.lock().unwrap().push(received);
                shared.changed.notify_all();
                conn.reply("250 2.0.0 Ok: queued")?;
            }
            "RCPT" | "DATA" => conn.reply("503 5.5.1 Bad sequence of commands")?,
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                conn.reply("250 2.0.0 Ok")?;
            }
            "NOOP" => conn.reply("250 2.0.0 Ok")?,
            "QUIT" => {
                conn.reply("221 2.0.0 Bye")?;
                return Ok(());
            }
            _ => conn.reply("502 5.5.2 Command not recognized")?,
        }
    }
    Ok(())
}

/// `MAIL FROM:<a@b> SIZE=1` -> `a@b`.
fn path_of(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(0);
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    line[start..end].to_owned()
}

/// Runs AUTH PLAIN or LOGIN; returns the credentials given, if they could be read.
fn authenticate(
    conn: &mut Connection<'_>,
    line: &str,
) -> std::io::Result<Option<(String, String)>> {
    let mut words = line.split_whitespace().skip(1);
    let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
    let initial = words.next().map(str::to_owned);
    match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(response) => response,
                None => {
                    conn.reply("334 ")?;
                    conn.text_line().unwrap_or_default()
                }
            };
            let decoded = base64_decode(&response).unwrap_or_default();
            let mut parts = decoded.split(|&b| b == 0).skip(1);
            let user = parts
                .next()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let pass = parts
                .next()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            Ok(user.zip(pass))
        }
        "LOGIN" => {
            let user = match initial {
                Some(user) => user,
                None => {
                    conn.reply("334 VXNlcm5hbWU6")?;
                    conn.text_line().unwrap_or_default()
                }
            };
            conn.reply("334 UGFzc3dvcmQ6")?;
            let pass = conn.text_line().unwrap_or_default();
            let decode =
                |s: &str| base64_decode(s).map(|b| String::from_utf8_lossy(&b).into_owned());
            Ok(decode(&user).zip(decode(&pass)))
        }
        _ => Ok(None),
    }
}

fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in input.trim().bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
