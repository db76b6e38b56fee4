//! End-to-end: real axum servers and a real SMTP server on 127.0.0.1, mails parsed as MIME.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::smtp::{closed_port, Received, ServerConfig, SmtpServer, TestCa};
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mail_parser::{MessageParser, MimeHeaders};
use tower_vigil::report::{ReportKind, ReportTrigger};
use tower_vigil::sink::{EmailSink, FileSink, LogSink, SmtpConfig, TlsMode};
use tower_vigil::timebox::{Isolation, TimeboxLayer};
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

/// What the crate logged at ERROR under `tower_vigil::email`, as an operator would read it.
static EMAIL_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes into one of the static buffers.
struct Captured(&'static Mutex<Vec<u8>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The events of the log sink (target `tower_vigil::report`), as a log file would hold them.
static REPORT_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// `common::init_tracing` (which it shadows here) plus layers that write the email sink's
/// ERROR lines into [`EMAIL_LOG`] and the log sink's events into [`REPORT_LOG`]. The mail and
/// reporter threads are the crate's own, so only a global subscriber sees what they log.
fn init_tracing() {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    common::init_tracing_with(vec![
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| Captured(&EMAIL_LOG))
            .with_filter(EnvFilter::new("tower_vigil::email=error"))
            .boxed(),
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| Captured(&REPORT_LOG))
            .with_filter(EnvFilter::new("tower_vigil::report=trace"))
            .boxed(),
    ]);
}

/// The ERROR lines logged so far that contain `needle` (such as a test server's port).
fn error_lines_with(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&EMAIL_LOG.lock().unwrap())
        .lines()
        .filter(|line| line.contains("ERROR") && line.contains(needle))
        .map(str::to_owned)
        .collect()
}

const THRESHOLD: Duration = Duration::from_millis(100);
const PATIENCE: Duration = Duration::from_secs(15);

/// Holds a handler until the test opens it (or `PATIENCE` passes).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = changed
            .wait_timeout_while(guard, PATIENCE, |open| !*open)
            .unwrap();
    }
}

/// Opens the gate when the test ends, passing or failing, so no worker stays blocked.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[inline(never)]
fn vigil_blocked_until_released(gate: &Gate) {
    gate.wait();
}

/// An axum app on a runtime of its own, and a client runtime to call it from a plain test.
struct App {
    addr: SocketAddr,
    server: Option<tokio::runtime::Runtime>,
    client: tokio::runtime::Runtime,
}

impl App {
    fn start(app: Router, workers: usize) -> Self {
        let (addr, server) = serve_on_own_runtime(app, workers);
        let client = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self {
            addr,
            server: Some(server),
            client,
        }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.client.block_on(http_get(self.addr, path, headers))
    }

    fn spawn_get(&self, path: &'static str) -> tokio::task::JoinHandle<(u16, String)> {
        let addr = self.addr;
        self.client
            .spawn(async move { http_get(addr, path, &[]).await })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown_background();
        }
    }
}

fn slow_route(path: &str, ms: u64) -> Router {
    Router::new().route(
        path,
        get(move || async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            "slow"
        }),
    )
}

fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn parse(received: &Received) -> mail_parser::Message<'_> {
    MessageParser::default()
        .parse(&received.data)
        .expect("the mail parses as MIME")
}

fn addresses(list: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    list.map(|l| {
        l.iter()
            .filter_map(|a| a.address().map(str::to_owned))
            .collect()
    })
    .unwrap_or_default()
}

/// The JSON attachment of a report mail.
fn json_attachment(mail: &mail_parser::Message<'_>) -> (String, serde_json::Value) {
    let attachment = mail.attachments().next().expect("an attachment");
    let name = attachment.attachment_name().unwrap_or("").to_owned();
    let json = serde_json::from_slice(attachment.contents()).expect("the attachment is JSON");
    (name, json)
}

/// All text a reader of the mail could see: headers, decoded body and decoded attachments.
fn everything(received: &Received) -> String {
    let mail = parse(received);
    let mut all = String::from_utf8_lossy(&received.data).into_owned();
    all.push_str(mail.subject().unwrap_or(""));
    all.push_str(&mail.body_text(0).unwrap_or_default());
    for attachment in mail.attachments() {
        all.push_str(&String::from_utf8_lossy(attachment.contents()));
    }
    all
}

#[test]
fn a_wedged_application_still_mails_its_report_with_the_blocking_function() {
    init_tracing();
    let smtp = SmtpServer::with(ServerConfig {
        auth: Some(("vigil".into(), "s3cret-pass".into())),
        ..ServerConfig::default()
    });
    let email = EmailSink::smtp(&format!(
        "smtp://vigil:s3cret-pass@127.0.0.1:{}?tls=none",
        smtp.port()
    ))
    .unwrap()
    .from("Vigil <vigil@example.com>")
    .unwrap()
    .to("oncall@example.com")
    .unwrap()
    .to("Platform team <platform@example.com>")
    .unwrap();
    let gate = Gate::default();
    let _release = OpenOnDrop(gate.clone());
    let handler_gate = gate.clone();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/block",
            get(move || {
                let gate = handler_gate.clone();
                async move {
                    vigil_blocked_until_released(&gate);
                    "done"
                }
            }),
        )
        .layer(watchdog.clone());
    // One worker, blocked by the handler: the application's runtime makes no progress at all.
    let app = App::start(app, 1);
    let request = app.spawn_get("/block");

    let mails = smtp
        .wait_for_messages(1, PATIENCE)
        .expect("no mail from a wedged application");
    assert!(
        !request.is_finished(),
        "the mail must go out while the runtime is wedged"
    );
    let received = &mails[0];
    assert_eq!(received.mail_from, "vigil@example.com");
    assert_eq!(
        received.rcpt_to,
        ["oncall@example.com", "platform@example.com"]
    );
    assert_eq!(
        received.auth,
        Some(("vigil".to_owned(), "s3cret-pass".to_owned()))
    );

    let mail = parse(received);
    assert_eq!(addresses(mail.from()), ["vigil@example.com"]);
    assert_eq!(
        addresses(mail.to()),
        ["oncall@example.com", "platform@example.com"]
    );
    let (name, json) = json_attachment(&mail);
    let hostname = json["hostname"].as_str().unwrap().to_owned();
    let subject = mail.subject().unwrap();
    let signature = json["signature"].as_str().unwrap().to_owned();
    assert_eq!(signature.len(), 12, "{json}");
    assert!(
        subject.starts_with("[vigil] slow request: GET /block (")
            && subject.ends_with(&format!(") on {hostname} [{signature}]")),
        "{subject}"
    );
    let body = mail.body_text(0).unwrap();
    assert!(body.contains("GET /block HTTP/1.1"), "{body}");
    assert!(
        body.contains(&format!("Signature:  {signature} (GET /block @ ")),
        "{body}"
    );
    assert!(body.contains("vigil_blocked_until_released"), "{body}");
    assert_eq!(name, format!("slow-{}-1.json", json["request_id"]));
    assert_eq!(json["uri"], "/block");
    assert_eq!(json["kind"], "slow");
    assert_eq!(json["stack_status"]["status"], "captured");
    assert!(!everything(received).contains("s3cret-pass"));
    assert!(wait_until(PATIENCE, || email.stats().sent == 1));

    gate.open();
    assert_eq!(app.client.block_on(request).unwrap().0, 200);
    assert!(watchdog.flush(PATIENCE));
    // Follow-ups are off by default: the completion is not mailed.
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(watchdog.stats().completed, 1);
}

#[test]
fn secrets_never_reach_the_mail() {
    init_tracing();
    let smtp = SmtpServer::start();
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .report_headers([
            http::header::HOST,
            http::header::AUTHORIZATION,
            http::header::COOKIE,
        ])
        .redact_query_param("token")
        .sink(email)
        .build()
        .unwrap();
    let app = App::start(slow_route("/account", 400).layer(watchdog), 2);
    let (status, _) = app.get(
        "/account?token=hunter2-query&page=3",
        &[
            ("authorization", "Bearer hunter2-bearer"),
            ("cookie", "session=hunter2-cookie"),
        ],
    );
    assert_eq!(status, 200);
    let mails = smtp.wait_for_messages(1, PATIENCE).expect("a mail");
    let all = everything(&mails[0]);
    assert!(!all.contains("hunter2"), "secret leaked: {all}");
    let mail = parse(&mails[0]);
    assert!(
        mail.subject()
            .unwrap()
            .contains("GET /account?token=[redacted]&page=3"),
        "{:?}",
        mail.subject()
    );
    let body = mail.body_text(0).unwrap();
    assert!(body.contains("authorization: [redacted]"), "{body}");
    assert!(body.contains("cookie: [redacted]"), "{body}");
    let (_, json) = json_attachment(&mail);
    assert_eq!(json["uri"], "/account?token=[redacted]&page=3");
}

#[test]
fn with_the_smtp_server_down_the_fallback_file_holds_the_report() {
    init_tracing();
    let dir = temp_dir("email-fallback");
    let email = EmailSink::smtp(&format!(
        "smtp://vigil:hunter2@127.0.0.1:{}?tls=none&connect_timeout=1s",
        closed_port()
    ))
    .unwrap()
    .to("oncall@example.com")
    .unwrap()
    .retries(2)
    .retry_backoff(Duration::from_millis(50))
    .fallback(FileSink::new(&dir).unwrap());
    let _app = one_slow_request(&email);
    let path = wait_for_file_ending(&dir, "-1.json", PATIENCE).expect("no fallback file");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(json["uri"], "/slow");
    let stats = email.stats();
    assert_eq!(stats.sent, 0, "{stats:?}");
    assert_eq!(stats.retried, 2, "{stats:?}");
    assert_eq!(stats.failed_to_fallback, 1, "{stats:?}");
    assert_eq!(stats.pending, 0, "{stats:?}");
}

/// p99 of `n` sequential GETs over one keep-alive connection.
fn p99(app: &App, path: &str, n: usize) -> Duration {
    let uri: http::Uri = format!("http://{}{path}", app.addr).parse().unwrap();
    app.client.block_on(async {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let response = client.get(uri.clone()).await.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
            latencies.push(started.elapsed());
        }
        latencies.sort();
        latencies[(n * 99).div_ceil(100) - 1]
    })
}

fn fast_and_slow(watchdog: WatchdogLayer) -> Router {
    slow_route("/slow", 300)
        .route("/fast", get(|| async { "fast" }))
        .layer(watchdog)
}

#[test]
fn a_stalled_smtp_server_does_not_slow_fast_requests() {
    init_tracing();
    const REQUESTS: usize = 500;

    let healthy = SmtpServer::start();
    let email = EmailSink::smtp(&healthy.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email)
        .build()
        .unwrap();
    let app = App::start(fast_and_slow(watchdog), 2);
    assert_eq!(app.get("/slow", &[]).0, 200);
    healthy.wait_for_messages(1, PATIENCE).expect("a mail");
    let baseline = p99(&app, "/fast", REQUESTS);
    drop(app);

    let stalled = SmtpServer::with(ServerConfig {
        stall: true,
        ..ServerConfig::default()
    });
    let email = EmailSink::smtp(&format!("{}&connect_timeout=30s", stalled.url()))
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .retries(0);
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .sink(collect.clone())
        .build()
        .unwrap();
    let app = App::start(fast_and_slow(watchdog), 2);
    assert_eq!(app.get("/slow", &[]).0, 200);
    assert!(
        stalled.wait_for_connections(1, PATIENCE),
        "the mail thread never connected"
    );
    // More reports while the mail thread hangs on the stalled server.
    let more: Vec<_> = (0..3).map(|_| app.spawn_get("/slow")).collect();
    let with_stall = p99(&app, "/fast", REQUESTS);
    for request in more {
        assert_eq!(app.client.block_on(request).unwrap().0, 200);
    }
    eprintln!(
        "p99 of {REQUESTS} fast requests: {baseline:?} with a healthy SMTP server, \
         {with_stall:?} with a stalled one"
    );
    // The mail thread was stuck the whole time, yet the other sink got every report, each
    // well before the mail thread's 30 s timeout could have freed a blocked reporter thread.
    assert_eq!(email.stats().sent, 0);
    assert!(wait_until(Duration::from_secs(2), || {
        let slow = collect
            .all()
            .into_iter()
            .filter(|r| r.kind == ReportKind::Slow);
        slow.count() == 4
    }));
    assert!(
        with_stall < baseline * 5 + Duration::from_millis(50),
        "p99 {with_stall:?} with a stalled server, {baseline:?} without"
    );
}

#[test]
fn a_burst_is_throttled_and_the_rest_summed_up_in_a_digest() {
    init_tracing();
    const BURST: usize = 200;
    const PER_ROUTE: u32 = 3;
    const WINDOW: Duration = Duration::from_secs(2);
    let smtp = SmtpServer::start();
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .throttle(PER_ROUTE, WINDOW);
    let watchdog = WatchdogLayer::builder(Duration::from_millis(50))
        .recapture_at([])
        .queue_capacity(4 * BURST)
        .sink(email.clone())
        .build()
        .unwrap();
    let app = App::start(slow_route("/burst", 300).layer(watchdog.clone()), 2);
    let started = Instant::now();
    let requests: Vec<_> = (0..BURST).map(|_| app.spawn_get("/burst")).collect();
    for request in requests {
        assert_eq!(app.client.block_on(request).unwrap().0, 200);
    }
    let burst_done = started.elapsed();

    let mails = smtp
        .wait_for_messages(PER_ROUTE as usize + 1, PATIENCE)
        .expect("mails and a digest");
    let digest_at = mails.last().unwrap().at.duration_since(started);
    assert!(watchdog.flush(PATIENCE));
    let mails = smtp.messages();
    assert_eq!(
        mails.len(),
        PER_ROUTE as usize + 1,
        "N mails plus one digest"
    );
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| parse(m).subject().unwrap().to_owned())
        .collect();
    for subject in &subjects[..PER_ROUTE as usize] {
        assert!(
            subject.starts_with("[vigil] slow request: GET /burst ("),
            "{subject}"
        );
    }
    let held = BURST - PER_ROUTE as usize;
    let digest = parse(mails.last().unwrap());
    assert!(
        digest.subject().unwrap().starts_with(&format!(
            "[vigil] {held} more slow requests of GET /burst on "
        )),
        "{subjects:?}"
    );
    let body = digest.body_text(0).unwrap();
    assert!(
        body.contains(&format!("{held} more slow requests of GET /burst since ")),
        "{body}"
    );
    assert!(body.contains(", longest "), "{body}");
    // Due one window after the first report it holds, which came within the burst.
    assert!(
        digest_at < burst_done + WINDOW + Duration::from_millis(500),
        "digest after {digest_at:?}, burst over after {burst_done:?}"
    );
    let stats = email.stats();
    assert_eq!(stats.sent, u64::from(PER_ROUTE), "{stats:?}");
    assert_eq!(stats.suppressed, held as u64, "{stats:?}");
    assert_eq!(stats.digests_sent, 1, "{stats:?}");
}

#[test]
fn a_transient_error_is_retried_and_the_mail_then_goes_out() {
    init_tracing();
    let smtp = SmtpServer::with(ServerConfig {
        fail_mail: Some((451, 2)),
        ..ServerConfig::default()
    });
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .retry_backoff(Duration::from_millis(20));
    let _app = one_slow_request(&email);
    smtp.wait_for_messages(1, PATIENCE)
        .expect("the mail after two 451s");
    assert!(wait_until(PATIENCE, || email.stats().sent == 1));
    let stats = email.stats();
    assert_eq!(
        (stats.retried, stats.failed_to_fallback),
        (2, 0),
        "{stats:?}"
    );
    assert_eq!(smtp.mail_commands(), 3);
}

#[test]
fn a_permanent_error_goes_to_the_fallback_without_retries() {
    init_tracing();
    let smtp = SmtpServer::with(ServerConfig {
        fail_mail: Some((550, usize::MAX)),
        ..ServerConfig::default()
    });
    let fallback = Collect::default();
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .retry_backoff(Duration::from_millis(20))
        .fallback(fallback.clone());
    let _app = one_slow_request(&email);
    let report = fallback
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("the report in the fallback sink");
    assert_eq!(report.uri, "/slow");
    let stats = email.stats();
    assert_eq!(
        (stats.retried, stats.failed_to_fallback, stats.sent),
        (0, 1, 0),
        "{stats:?}"
    );
    assert_eq!(smtp.mail_commands(), 1);
}

#[test]
fn a_plain_local_relay_gets_the_mail_from_a_plain_smtp_url() {
    init_tracing();
    // No STARTTLS offered, and the URL says nothing about TLS: a local relay as lettre users
    // write it.
    let smtp = SmtpServer::start();
    let fallback = Collect::default();
    let email = EmailSink::smtp(&format!("smtp://127.0.0.1:{}", smtp.port()))
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .fallback(fallback.clone());
    let _app = one_slow_request(&email);
    let mails = smtp.wait_for_messages(1, PATIENCE).expect("a mail");
    assert!(!mails[0].tls);
    assert_eq!(mails[0].rcpt_to, ["oncall@example.com"]);
    assert!(wait_until(PATIENCE, || email.stats().sent == 1));
    assert_eq!(email.stats().failed_to_fallback, 0);
    assert!(fallback.all().is_empty());
}

#[test]
fn opportunistic_tls_upgrades_when_the_relay_offers_starttls() {
    init_tracing();
    let ca = TestCa::new();
    // `?tls=opportunistic` in lettre's words, and the loopback default that means the same.
    for query in ["?tls=opportunistic", ""] {
        let smtp = SmtpServer::with(ServerConfig {
            tls: Some(ca.starttls()),
            ..ServerConfig::default()
        });
        let config = SmtpConfig::from_url(&format!("smtp://localhost:{}{query}", smtp.port()))
            .unwrap()
            .root_certificate_pem(ca.ca_pem())
            .unwrap();
        let fallback = Collect::default();
        let (email, _app) = one_slow_report(config, &fallback);
        let mails = smtp.wait_for_messages(1, PATIENCE).expect("a mail");
        // The server refuses MAIL before STARTTLS, so the mail proves the upgrade too.
        assert!(mails[0].tls, "{query:?}: the mail came in clear text");
        assert_eq!(smtp.handshakes(), 1, "{query:?}");
        assert_is_the_slow_report(&mails[0]);
        assert!(wait_until(PATIENCE, || email.stats().sent == 1));
    }
}

#[test]
fn credentials_for_a_remote_host_without_tls_are_refused_when_configured() {
    for url in [
        "smtp://vigil:hunter2@mail.example.com?tls=none",
        "smtp://vigil:hunter2@mail.example.com:25?tls=opportunistic",
        "smtp://vigil:hunter2@192.0.2.10?tls=none",
    ] {
        let error = EmailSink::smtp(url).unwrap_err().to_string();
        assert!(error.contains("clear text"), "{url}: {error}");
        assert!(!error.contains("hunter2"), "{url}: {error}");
    }
    let config = SmtpConfig::new("mail.example.com")
        .credentials("vigil", "hunter2")
        .tls(TlsMode::None);
    assert!(EmailSink::smtp_with(config).is_err());
    // Loopback traffic never leaves the machine.
    assert!(EmailSink::smtp("smtp://vigil:hunter2@127.0.0.1:2525?tls=none").is_ok());
}

#[test]
fn required_starttls_fails_on_a_plain_relay_and_the_error_log_says_how_to_fix_it() {
    init_tracing();
    // The test server offers no STARTTLS: the mail must not go out in clear text.
    let smtp = SmtpServer::start();
    let fallback = Collect::default();
    let email = EmailSink::smtp(&format!("smtp://127.0.0.1:{}?tls=required", smtp.port()))
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .fallback(fallback.clone());
    let _app = one_slow_request(&email);
    fallback
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("the report in the fallback sink");
    assert!(smtp.connections() >= 1);
    assert_eq!(smtp.mail_commands(), 0, "no MAIL FROM without TLS");
    let stats = email.stats();
    assert_eq!(
        (stats.retried, stats.failed_to_fallback),
        (0, 1),
        "{stats:?}"
    );
    let endpoint = format!("127.0.0.1:{}", smtp.port());
    let lines = error_lines_with(&format!("mail delivery failed: relay {endpoint}"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    eprintln!("{}", lines[0]);
    assert!(
        lines[0].contains("does not offer STARTTLS; for a local relay use `?tls=none`"),
        "{lines:?}"
    );
}

#[test]
fn only_the_first_failure_of_an_outage_is_diagnosed_at_error() {
    init_tracing();
    let port = closed_port();
    let fallback = Collect::default();
    let email = EmailSink::smtp(&format!("smtp://127.0.0.1:{port}?connect_timeout=1s"))
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .retries(2)
        .retry_backoff(Duration::from_millis(20))
        .fallback(fallback.clone());
    let _app = one_slow_request(&email);
    fallback
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("the report in the fallback sink");
    assert_eq!(email.stats().retried, 2);
    let lines = error_lines_with(&format!("connection to 127.0.0.1:{port} refused"));
    assert_eq!(lines.len(), 1, "three attempts, one diagnosis: {lines:?}");
    assert!(lines[0].contains("mail delivery failed"), "{lines:?}");
    assert!(lines[0].contains("check host and port"), "{lines:?}");
}

/// A sink to the test server by the name `localhost` (the name in its certificate), trusting the
/// test CA when given one.
fn tls_sink(smtp: &SmtpServer, mode: TlsMode, ca: Option<&TestCa>) -> SmtpConfig {
    let config = SmtpConfig::new("localhost")
        .port(smtp.port())
        .tls(mode)
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(5));
    match ca {
        Some(ca) => config.root_certificate_pem(ca.ca_pem()).unwrap(),
        None => config,
    }
}

/// One slow request through a watchdog mailing with `config`; returns the sink for its stats.
fn one_slow_report(config: SmtpConfig, fallback: &Collect) -> (EmailSink, App) {
    let email = EmailSink::smtp_with(config)
        .unwrap()
        .from("Vigil <vigil@example.com>")
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .retries(2)
        .retry_backoff(Duration::from_millis(20))
        .fallback(fallback.clone());
    let app = one_slow_request(&email);
    (email, app)
}

/// Serves `/slow` (300 ms) behind a watchdog that mails through `email`, and requests it once.
fn one_slow_request(email: &EmailSink) -> App {
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .build()
        .unwrap();
    let app = App::start(slow_route("/slow", 300).layer(watchdog), 2);
    assert_eq!(app.get("/slow", &[]).0, 200);
    app
}

fn assert_is_the_slow_report(received: &Received) {
    assert_eq!(received.mail_from, "vigil@example.com");
    assert_eq!(received.rcpt_to, ["oncall@example.com"]);
    let mail = parse(received);
    assert!(
        mail.subject().unwrap_or("").contains("GET /slow"),
        "{:?}",
        mail.subject()
    );
    let (_, json) = json_attachment(&mail);
    assert_eq!(json["uri"], "/slow");
}

/// A report mailed in `mode` to a test server whose certificate the trusted test CA signed.
fn delivers_over_tls(mode: TlsMode) {
    init_tracing();
    let ca = TestCa::new();
    let smtp = SmtpServer::with(ServerConfig {
        tls: Some(match mode {
            TlsMode::Implicit => ca.implicit(),
            _ => ca.starttls(),
        }),
        ..ServerConfig::default()
    });
    let fallback = Collect::default();
    let (email, _app) = one_slow_report(tls_sink(&smtp, mode, Some(&ca)), &fallback);
    let mails = smtp.wait_for_messages(1, PATIENCE).expect("a mail");
    assert!(mails[0].tls, "the mail came in clear text");
    assert_eq!(smtp.handshakes(), 1);
    assert_is_the_slow_report(&mails[0]);
    // The server records the mail before its 250 reaches the sink.
    assert!(wait_until(PATIENCE, || email.stats().sent == 1));
    let stats = email.stats();
    assert_eq!(
        (stats.sent, stats.retried, stats.failed_to_fallback),
        (1, 0, 0),
        "{stats:?}"
    );
    assert!(fallback.all().is_empty());
}

#[test]
fn starttls_with_a_trusted_internal_ca_delivers_over_tls() {
    delivers_over_tls(TlsMode::StartTls);
}

#[test]
fn implicit_tls_with_a_trusted_internal_ca_delivers() {
    delivers_over_tls(TlsMode::Implicit);
}

#[test]
fn credentials_are_sent_only_inside_tls() {
    init_tracing();
    let ca = TestCa::new();
    // The server offers AUTH only after STARTTLS, so a login proves the order.
    let smtp = SmtpServer::with(ServerConfig {
        tls: Some(ca.starttls()),
        auth: Some(("vigil".into(), "s3cret-pass".into())),
        ..ServerConfig::default()
    });
    let config = tls_sink(&smtp, TlsMode::StartTls, Some(&ca)).credentials("vigil", "s3cret-pass");
    let fallback = Collect::default();
    let (email, _app) = one_slow_report(config, &fallback);
    let mails = smtp.wait_for_messages(1, PATIENCE).expect("a mail");
    assert!(mails[0].tls);
    assert_eq!(
        mails[0].auth,
        Some(("vigil".to_owned(), "s3cret-pass".to_owned()))
    );
    assert_is_the_slow_report(&mails[0]);
    assert!(wait_until(PATIENCE, || email.stats().sent == 1));
}

#[test]
fn an_untrusted_certificate_is_a_permanent_failure() {
    init_tracing();
    let ca = TestCa::new();
    for mode in [TlsMode::StartTls, TlsMode::Implicit] {
        let smtp = SmtpServer::with(ServerConfig {
            tls: Some(if mode == TlsMode::StartTls {
                ca.starttls()
            } else {
                ca.implicit()
            }),
            ..ServerConfig::default()
        });
        let fallback = Collect::default();
        // Only the built-in webpki roots: the test CA is unknown.
        let (email, _app) = one_slow_report(tls_sink(&smtp, mode, None), &fallback);
        let report = fallback
            .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
            .expect("the report in the fallback sink");
        assert_eq!(report.uri, "/slow");
        let stats = email.stats();
        assert_eq!(
            (stats.sent, stats.retried, stats.failed_to_fallback),
            (0, 0, 1),
            "{mode:?}: {stats:?}"
        );
        assert_eq!(smtp.connections(), 1, "{mode:?}: retried");
        assert_eq!(smtp.handshakes(), 0, "{mode:?}");
        assert_eq!(smtp.mail_commands(), 0, "{mode:?}");
        assert!(smtp.messages().is_empty());
    }
}

#[test]
fn flush_sends_the_pending_digest_at_once_and_follow_ups_thread() {
    init_tracing();
    let dir = temp_dir("email-eml");
    let email = EmailSink::eml_dir(&dir)
        .unwrap()
        .from("vigil@example.com")
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .throttle(1, Duration::from_secs(600))
        .follow_up(true);
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .build()
        .unwrap();
    let app = App::start(slow_route("/slow", 300).layer(watchdog.clone()), 2);
    for _ in 0..3 {
        assert_eq!(app.get("/slow", &[]).0, 200);
    }
    assert!(wait_until(PATIENCE, || email.stats().suppressed == 2));
    let flushing = Instant::now();
    assert!(watchdog.flush(PATIENCE));
    assert!(flushing.elapsed() < Duration::from_secs(5));

    let mut mails: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| {
            let raw = std::fs::read(&p).unwrap();
            let mail = MessageParser::default().parse(&raw).unwrap();
            let subject = mail.subject().unwrap().to_owned();
            let in_reply_to = mail.in_reply_to().as_text().unwrap_or("").to_owned();
            (subject, in_reply_to)
        })
        .collect();
    mails.sort();
    assert_eq!(
        mails.len(),
        3,
        "a report, its follow-up, a digest: {mails:?}"
    );
    assert!(
        mails[0]
            .0
            .starts_with("[vigil] 2 more slow requests of GET /slow on "),
        "{mails:?}"
    );
    assert!(
        mails[1]
            .0
            .starts_with("[vigil] slow request completed: GET /slow after "),
        "{mails:?}"
    );
    assert!(mails[1].1.starts_with("vigil."), "threaded: {mails:?}");
    assert!(
        mails[2].0.starts_with("[vigil] slow request: GET /slow ("),
        "{mails:?}"
    );
    let stats = email.stats();
    assert_eq!(
        (stats.sent, stats.digests_sent, stats.suppressed),
        (2, 1, 2),
        "{stats:?}"
    );
}

#[test]
fn flush_is_bounded_by_its_deadline_and_loses_nothing() {
    init_tracing();
    let smtp = SmtpServer::with(ServerConfig {
        stall: true,
        ..ServerConfig::default()
    });
    let fallback = Collect::default();
    let email = EmailSink::smtp(&format!("{}&connect_timeout=30s", smtp.url()))
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .fallback(fallback.clone());
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .build()
        .unwrap();
    let app = App::start(slow_route("/slow", 300).layer(watchdog.clone()), 2);
    assert_eq!(app.get("/slow", &[]).0, 200);
    assert!(smtp.wait_for_connections(1, PATIENCE));
    let flushing = Instant::now();
    assert!(
        !watchdog.flush(Duration::from_millis(500)),
        "the server is stalled"
    );
    assert!(
        flushing.elapsed() < Duration::from_secs(2),
        "{:?}",
        flushing.elapsed()
    );
    let report = fallback
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("the unsent report in the fallback sink");
    assert_eq!(report.uri, "/slow");
    assert_eq!(email.stats().failed_to_fallback, 1);
    assert_eq!(email.stats().pending, 0);
}

#[test]
fn bad_input_is_an_error_when_the_sink_is_built() {
    let sink = || EmailSink::smtp("smtp://user:hunter2@mail.example.com:587?tls=starttls");
    assert!(sink().is_ok());
    for bad in [
        "oncall",
        "oncall@",
        "oncall@example.com, evil@example.net",
        "oncall@example.com\r\nBcc: evil@example.net",
    ] {
        let error = sink().unwrap().to(bad).unwrap_err();
        assert!(
            error.to_string().contains("invalid email address"),
            "{error}"
        );
        assert!(sink().unwrap().from(bad).is_err(), "{bad:?}");
    }
    for (url, expected) in [
        (
            "smtp://user:hunter2@mail.example.com?tls=sometimes",
            "unknown TLS mode",
        ),
        ("smtp//mail.example.com", "invalid SMTP URL"),
        (
            "smtp://user:hunter2@mail.example.com:port",
            "invalid SMTP URL",
        ),
        ("ftp://mail.example.com", "scheme"),
    ] {
        let error = EmailSink::smtp(url).unwrap_err().to_string();
        assert!(error.contains(expected), "{url}: {error}");
        assert!(!error.contains("hunter2"), "{url}: {error}");
    }
    assert!(sink().unwrap().subject("[vigil] {nope}").is_err());
    let error = SmtpConfig::new("mail.example.com")
        .root_certificate_pem(b"not a pem")
        .unwrap_err();
    assert!(error.to_string().contains("root certificate"), "{error}");
    let dir = temp_dir("email-not-a-dir");
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let error = EmailSink::eml_dir(file.join("mail")).unwrap_err();
    assert!(error.to_string().contains("cannot create"), "{error}");
}

/// Mails of one request caught at the threshold and twice more (2x and 3x), with `every`
/// passed to `mail_every_capture`; returns the mails, the sink's stats and the reports every
/// other sink got.
fn mails_of_a_request_caught_three_times(
    every: bool,
) -> (Vec<Received>, tower_vigil::sink::EmailStats, usize) {
    let smtp = SmtpServer::start();
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .mail_every_capture(every);
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([2, 3])
        .sink(email.clone())
        .sink(collect.clone())
        .build()
        .unwrap();
    let app = App::start(slow_route("/thrice", 700).layer(watchdog.clone()), 2);
    assert_eq!(app.get("/thrice", &[]).0, 200);
    assert!(wait_until(PATIENCE, || watchdog.stats().completed == 1));
    assert!(watchdog.flush(PATIENCE));
    let slow = collect
        .all()
        .iter()
        .filter(|r| r.kind == ReportKind::Slow)
        .count();
    (smtp.messages(), email.stats(), slow)
}

#[test]
fn a_request_caught_three_times_is_mailed_once() {
    init_tracing();
    let (mails, stats, slow) = mails_of_a_request_caught_three_times(false);
    // The other sinks keep every capture.
    assert_eq!(slow, 3);
    assert_eq!(mails.len(), 1, "one mail per slow request");
    let mail = parse(&mails[0]);
    let (_, json) = json_attachment(&mail);
    assert_eq!(json["capture"], 1);
    assert_eq!(
        (stats.sent, stats.repeats_not_mailed, stats.suppressed),
        (1, 2, 0),
        "{stats:?}"
    );
}

#[test]
fn with_mail_every_capture_each_capture_is_mailed_in_one_thread() {
    init_tracing();
    let (mails, stats, slow) = mails_of_a_request_caught_three_times(true);
    assert_eq!(slow, 3);
    assert_eq!(mails.len(), 3);
    let mut captures: Vec<(u64, bool)> = mails
        .iter()
        .map(|m| {
            let mail = parse(m);
            let (_, json) = json_attachment(&mail);
            let threaded = mail.in_reply_to().as_text().is_some();
            (json["capture"].as_u64().unwrap(), threaded)
        })
        .collect();
    captures.sort();
    assert_eq!(captures, [(1, false), (2, true), (3, true)]);
    assert_eq!((stats.sent, stats.repeats_not_mailed), (3, 0), "{stats:?}");
}

#[inline(never)]
fn vigil_wedged_in_mail_test(duration: Duration) {
    std::thread::sleep(duration);
}

#[test]
fn a_wedged_request_is_mailed_again_at_its_hard_deadline() {
    init_tracing();
    let smtp = SmtpServer::start();
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap();
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .sink(collect.clone())
        .build()
        .unwrap();
    // Threshold at 100 ms, soft deadline at 300 ms, hard deadline at 400 ms, all while the
    // handler blocks its worker thread.
    let timebox = TimeboxLayer::builder(Duration::from_millis(400))
        .grace(Duration::from_millis(100))
        .resolution(Duration::from_millis(20))
        .isolation_mode(Isolation::Always)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/wedge",
            get(|| async {
                vigil_wedged_in_mail_test(Duration::from_millis(1000));
                "late"
            }),
        )
        .layer(
            Vigil::new()
                .watchdog(watchdog.clone())
                .timebox(timebox.clone()),
        );
    let app = App::start(app, 2);
    assert_eq!(app.get("/wedge", &[]).0, 503);
    assert!(wait_until(PATIENCE, || watchdog.stats().completed == 1));
    assert!(watchdog.flush(PATIENCE));

    let triggers: Vec<ReportTrigger> = collect
        .all()
        .iter()
        .filter(|r| r.kind == ReportKind::Slow)
        .map(|r| r.trigger)
        .collect();
    assert_eq!(
        triggers,
        [
            ReportTrigger::Threshold,
            ReportTrigger::SoftDeadline,
            ReportTrigger::HardDeadline
        ]
    );
    let mut mailed: Vec<(String, u64)> = smtp
        .messages()
        .iter()
        .map(|m| {
            let (_, json) = json_attachment(&parse(m));
            (
                json["trigger"].as_str().unwrap().to_owned(),
                json["capture"].as_u64().unwrap(),
            )
        })
        .collect();
    mailed.sort_by_key(|(_, capture)| *capture);
    assert_eq!(
        mailed,
        [("threshold".to_owned(), 1), ("hard_deadline".to_owned(), 3)],
        "the soft deadline adds no news, the wedge does"
    );
    let stats = email.stats();
    assert_eq!((stats.sent, stats.repeats_not_mailed), (2, 1), "{stats:?}");
    assert_eq!(timebox.stats().wedged, 1);
}

#[inline(never)]
async fn vigil_load_user() -> &'static str {
    tokio::time::sleep(Duration::from_millis(800)).await;
    "user"
}

#[test]
fn requests_stuck_in_one_function_on_many_ids_make_one_mail_and_a_digest_by_signature() {
    init_tracing();
    const REQUESTS: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(2);
    let smtp = SmtpServer::start();
    // One mail per signature and window; the total cap would let every route key through.
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap()
        .throttle(1, WINDOW);
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(email.clone())
        .sink(collect.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(vigil_load_user))
        .layer(watchdog.clone());
    let app = App::start(app, 2);
    let addr = app.addr;
    let requests: Vec<_> = (1..=REQUESTS)
        .map(|n| {
            app.client
                .spawn(async move { http_get(addr, &format!("/users/{n}"), &[]).await })
        })
        .collect();
    for request in requests {
        assert_eq!(app.client.block_on(request).unwrap().0, 200);
    }
    assert!(wait_until(PATIENCE, || {
        watchdog.stats().completed == u64::from(REQUESTS)
    }));
    let reports = collect.all();
    let first = reports
        .iter()
        .find(|r| r.kind == ReportKind::Slow)
        .expect("slow reports");
    let (signature, text) = (first.signature.clone(), first.signature_text.clone());
    assert!(
        (text.starts_with("GET /users/{id} @ awaits")
            || text.starts_with("GET /users/{n} @ awaits"))
            && text.contains("vigil_load_user"),
        "{text}"
    );
    assert!(
        reports
            .iter()
            .filter(|r| r.kind == ReportKind::Slow)
            .all(|r| r.signature == signature),
        "one wedge, one signature"
    );

    // The digest is due one window after the first report it holds.
    let mails = smtp
        .wait_for_messages(2, PATIENCE)
        .expect("a mail and a digest");
    assert!(watchdog.flush(PATIENCE));
    assert_eq!(smtp.messages().len(), 2, "{mails:?}");
    let report_mail = parse(&mails[0]);
    let subject = report_mail.subject().unwrap();
    assert!(
        subject.starts_with("[vigil] slow request: GET /users/")
            && subject.ends_with(&format!(" [{signature}]")),
        "{subject}"
    );
    let digest = parse(&mails[1]);
    let held = REQUESTS - 1;
    let digest_subject = digest.subject().unwrap();
    assert!(
        digest_subject.starts_with(&format!(
            "[vigil] {held} more slow requests of GET /users/{} on ",
            if cfg!(feature = "axum") {
                "{id}"
            } else {
                "{n}"
            }
        )) && digest_subject.ends_with(&format!(" [{signature}]")),
        "{digest_subject}"
    );
    let body = digest.body_text(0).unwrap();
    assert!(
        body.contains(&format!(
            "{held} more slow requests of GET /users/{} since ",
            if cfg!(feature = "axum") {
                "{id}"
            } else {
                "{n}"
            }
        )),
        "{body}"
    );
    let listed = format!("  signature {signature}: {text}");
    assert!(body.lines().any(|line| line == listed), "{body}");
    let stats = email.stats();
    assert_eq!(
        (stats.sent, stats.suppressed, stats.digests_sent),
        (1, u64::from(held), 1),
        "{stats:?}"
    );
}

#[test]
fn the_log_sink_event_carries_the_signature() {
    init_tracing();
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .sink(LogSink::new().full_report(false))
        .sink(collect.clone())
        .build()
        .unwrap();
    let app = App::start(slow_route("/logged/{id}", 300).layer(watchdog.clone()), 2);
    assert_eq!(app.get("/logged/4711", &[]).0, 200);
    assert!(wait_until(PATIENCE, || watchdog.stats().completed == 1));
    assert!(watchdog.flush(PATIENCE));
    let report = collect
        .all()
        .into_iter()
        .find(|r| r.kind == ReportKind::Slow)
        .expect("a slow report");
    assert_eq!(report.signature.len(), 12);
    let log = String::from_utf8_lossy(&REPORT_LOG.lock().unwrap()).into_owned();
    let slow: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uri=/logged/4711") && l.contains(" kind=Slow "))
        .collect();
    assert_eq!(slow.len(), 1, "{log}");
    assert!(
        slow[0].contains(&format!(
            " signature={} signature_text={} ",
            report.signature, report.signature_text
        )),
        "{}",
        slow[0]
    );
    assert!(
        report
            .signature_text
            .starts_with(if cfg!(feature = "axum") {
                "GET /logged/{id} @ awaits"
            } else {
                "GET /logged/{n} @ awaits"
            }),
        "{}",
        report.signature_text
    );
}
