//! Secrets are redacted without configuration: query parameters and configured headers named
//! like secrets never reach the file, log or mail sinks; an allowed parameter does.
#![cfg(all(feature = "email", feature = "toml"))]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::smtp::SmtpServer;
use common::*;
use http::HeaderName;
use tower_vigil::config::VigilConfig;
use tower_vigil::report::ReportKind;
use tower_vigil::sink::{EmailSink, FileSink, LogSink};
use tower_vigil::watchdog::WatchdogLayer;

const THRESHOLD: Duration = Duration::from_millis(100);
const PATIENCE: Duration = Duration::from_secs(15);

/// Every secret value holds this word, so one search finds any of them.
const SECRET: &str = "hunter2";

const QUERY: &str = "token=t0k-hunter2&api_key=k3y-hunter2&access_token=a-hunter2\
    &password=p-hunter2&session=s-hunter2&client_secret=c-hunter2&page_token=next-42&page=3";

/// Where the redacted request line must show up, value by value.
const REDACTED_QUERY: &str = "token=[redacted]&api_key=[redacted]&access_token=[redacted]\
    &password=[redacted]&session=[redacted]&client_secret=[redacted]&page_token=next-42&page=3";

/// A writer for the test's subscriber: everything logged, in one buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log sink's events, captured as text by a global fmt subscriber (the reporter thread
/// logs, so a thread-local default would miss them). Once per test binary.
fn log_buffer() -> LogBuffer {
    static BUFFER: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = LogBuffer::default();
            let writer = buffer.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_env_filter("tower_vigil::report=trace")
                .init();
            buffer
        })
        .clone()
}

fn slow_app(watchdog: WatchdogLayer) -> Router {
    Router::new()
        .route(
            "/export",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "ok"
            }),
        )
        .layer(watchdog)
}

/// Every file the sink wrote, as one text.
fn files_text(dir: &std::path::Path) -> (usize, String) {
    let mut all = String::new();
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        all.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        count += 1;
    }
    (count, all)
}

/// All a reader of the mail could see: raw headers, decoded body and decoded attachments.
fn mail_text(data: &[u8]) -> String {
    let mail = mail_parser::MessageParser::default()
        .parse(data)
        .expect("a well-formed mail");
    let mut all = String::from_utf8_lossy(data).into_owned();
    all.push_str(mail.subject().unwrap_or(""));
    all.push_str(&mail.body_text(0).unwrap_or_default());
    for attachment in mail.attachments() {
        all.push_str(&String::from_utf8_lossy(attachment.contents()));
    }
    all
}

#[test]
fn secrets_are_redacted_in_files_logs_and_mail_without_configuration() {
    let log = log_buffer();
    let dir = temp_dir("redaction-defaults");
    let smtp = SmtpServer::start();
    let email = EmailSink::smtp(&smtp.url())
        .unwrap()
        .to("oncall@example.com")
        .unwrap();
    // No redact_header or redact_query_param: only the built-in list, and one allowed name.
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .report_headers([
            http::header::HOST,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-auth-token"),
            HeaderName::from_static("x-session-id"),
            HeaderName::from_static("x-request-id"),
        ])
        .allow_query_param("page_token")
        .sink(FileSink::new(&dir).unwrap())
        .sink(LogSink::default())
        .sink(email.clone())
        .build()
        .unwrap();
    let (addr, server) = serve_on_own_runtime(slow_app(watchdog.clone()), 2);
    let client = tokio::runtime::Runtime::new().unwrap();
    let (status, _) = client.block_on(http_get(
        addr,
        &format!("/export?{QUERY}"),
        &[
            ("x-api-key", "hdr-key-hunter2"),
            ("x-auth-token", "hdr-auth-hunter2"),
            ("x-session-id", "hdr-session-hunter2"),
            ("x-request-id", "req-77"),
        ],
    ));
    assert_eq!(status, 200);
    assert!(
        wait_until_sync(PATIENCE, || watchdog.stats().completed == 1),
        "{:?}",
        watchdog.stats()
    );
    assert!(watchdog.flush(PATIENCE));

    let (files, text) = files_text(&dir);
    assert_eq!(files, 4, "a .txt and a .json, slow and completed: {text}");
    let logged = log.text();
    let mails = smtp.wait_for_messages(1, PATIENCE).expect("a mail");
    let mailed = mail_text(&mails[0].data);
    for (sink, text) in [("file", &text), ("log", &logged), ("mail", &mailed)] {
        assert!(
            !text.contains(SECRET),
            "a secret reached the {sink} sink: {text}"
        );
        assert!(text.contains(REDACTED_QUERY), "{sink}: {text}");
        assert!(text.contains("x-api-key: [redacted]"), "{sink}: {text}");
        assert!(text.contains("x-auth-token: [redacted]"), "{sink}: {text}");
        assert!(text.contains("x-session-id: [redacted]"), "{sink}: {text}");
        assert!(text.contains("x-request-id: req-77"), "{sink}: {text}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_config_file_adds_names_and_lets_names_through() {
    let config = VigilConfig::from_toml_str(
        r#"
        [watchdog]
        threshold = "100ms"
        recapture_at = []
        redact_query_params = ["ticket"]
        allow_query_params = ["page_token", "author"]
        "#,
    )
    .unwrap();
    let watchdog_config = config.watchdog.clone().expect("a [watchdog] section");
    assert_eq!(watchdog_config.allow_query_params, ["page_token", "author"]);
    let collect = Collect::default();
    let watchdog = WatchdogLayer::from_config(watchdog_config)
        .sink(collect.clone())
        .build()
        .unwrap();
    let (addr, server) = serve_on_own_runtime(slow_app(watchdog), 2);
    let client = tokio::runtime::Runtime::new().unwrap();
    let path = "/export?Ticket_Id=hunter2&page_token=p2&author=me&auth=hunter2&key=hunter2";
    assert_eq!(client.block_on(http_get(addr, path, &[])).0, 200);
    let report = collect
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("a report");
    assert_eq!(
        report.uri,
        "/export?Ticket_Id=[redacted]&page_token=p2&author=me&auth=[redacted]&key=[redacted]"
    );
    drop(server);
}

fn wait_until_sync(timeout: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
