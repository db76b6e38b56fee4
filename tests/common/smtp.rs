//! A small but real SMTP server on 127.0.0.1 (RFC 5321): greeting, EHLO/HELO, AUTH PLAIN and
//! LOGIN, MAIL FROM, RCPT TO, DATA with dot-unstuffing, RSET, NOOP, QUIT. Switches make it stall
//! after accepting a connection, or answer MAIL FROM with an error code.

use std::io::{BufRead, BufReader, ErrorKind, Write};
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
    pub at: Instant,
}

#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Advertise AUTH PLAIN LOGIN and require these credentials before MAIL.
    pub auth: Option<(String, String)>,
    /// Accept connections but never say anything.
    pub stall: bool,
    /// Answer the first `n` MAIL FROM commands with this code (such as 451 or 550).
    pub fail_mail: Option<(u16, usize)>,
}

struct Shared {
    config: ServerConfig,
    stop: AtomicBool,
    received: Mutex<Vec<Received>>,
    changed: Condvar,
    connections: AtomicUsize,
    mail_commands: AtomicUsize,
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

struct Connection<'a> {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    shared: &'a Shared,
}

impl Connection<'_> {
    fn reply(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\r\n")
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
    let mut conn = Connection {
        reader: BufReader::new(stream.try_clone()?),
        writer: stream,
        shared,
    };
    conn.reply("220 test.localhost ESMTP vigil test server")?;
    let mut authed: Option<(String, String)> = None;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    while let Some(line) = conn.text_line() {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("");
        match verb {
            "EHLO" => {
                conn.reply("250-test.localhost greets you")?;
                if shared.config.auth.is_some() {
                    conn.reply("250-AUTH PLAIN LOGIN")?;
                }
                conn.reply("250-8BITMIME")?;
                conn.reply("250 SIZE 10485760")?;
            }
            "HELO" => conn.reply("250 test.localhost")?,
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
