//! `cargo run --example demo`: every job of tower-vigil on embedded defaults.
//!
//! Starts an axum server on 127.0.0.1, sends it slow requests, prints where the reports went
//! and exits. `cargo run --example demo -- --serve` keeps serving so you can try it with curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::extract::Path as UrlPath;
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use tower_vigil::profiler::{ProfilerLayer, SharedSecret};
use tower_vigil::sink::{EmailSink, FileSink, LogSink};
use tower_vigil::timebox::{Deadline, TimeboxLayer};
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;
use tracing_subscriber::prelude::*;

const THRESHOLD: Duration = Duration::from_millis(400);
/// The demo's "supervisor" kills at 2.2 s: hard deadline 2 s, soft deadline 1.5 s.
const HARD_DEADLINE: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_millis(500);
/// The demo's admin secret for the profiler (send it as `x-vigil-secret`).
const ADMIN_TOKEN: &str = "demo-admin-token";

/// A handler that blocks its worker thread, as a synchronous database driver would.
async fn blocking_report() -> &'static str {
    render_report_synchronously();
    "rendered\n"
}

#[inline(never)]
fn render_report_synchronously() {
    std::thread::sleep(Duration::from_millis(1000));
}

/// A handler that keeps its worker busy on the CPU.
async fn busy_checksum() -> String {
    format!("{:x}\n", compute_checksums(Duration::from_millis(1000)))
}

#[inline(never)]
fn compute_checksums(duration: Duration) -> u64 {
    let started = Instant::now();
    let mut sum = 0u64;
    while started.elapsed() < duration {
        for i in 0..50_000u64 {
            sum = std::hint::black_box(sum.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9));
        }
    }
    sum
}

/// A handler that awaits inside spans, as an async database client would.
async fn awaiting_report(UrlPath(id): UrlPath<u32>) -> String {
    load_report(id).await
}

#[tracing::instrument]
async fn load_report(id: u32) -> String {
    let rows = query("select * from reports where id = $1").await;
    format!("report {id}: {rows} rows\n")
}

#[tracing::instrument(name = "db.query")]
async fn query(sql: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(1000)).await;
    42
}

/// A handler stuck past every deadline: the timebox answers 503 and the watchdog reports it.
async fn wedged() -> &'static str {
    stuck_in_legacy_code();
    "too late\n"
}

#[inline(never)]
fn stuck_in_legacy_code() {
    std::thread::sleep(Duration::from_millis(3000));
}

/// A handler that honours the soft deadline and answers with what it has.
async fn export(deadline: Deadline) -> (StatusCode, String) {
    let mut rows = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => rows += 100,
            _ = deadline.cancelled() => {
                return (StatusCode::PARTIAL_CONTENT, format!("partial export: {rows} rows\n"));
            }
        }
    }
}

fn app(vigil: Vigil) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { "tower-vigil demo: try /block, /busy, /await/42, /wedge, /export\n" }),
        )
        .route("/block", get(blocking_report))
        .route("/busy", get(busy_checksum))
        .route("/await/{id}", get(awaiting_report))
        .route("/wedge", get(wedged))
        .route("/export", get(export))
        .layer(vigil)
}

/// A GET with headers through hyper's client; returns status and body.
async fn fetch_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    let client: Client<_, Empty<hyper::body::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).expect("request"))
        .await
        .expect("send");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn fetch(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response.lines().next().unwrap_or_default().to_owned()
}

fn reports_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    files
}

/// Prints a one-line hint when this binary has no line tables (a release build with the default
/// `debug = 0`): its own address then resolves to a name but no file:line, and so would reports.
fn hint_if_no_line_tables() {
    let mut has_lines = false;
    // `resolve` looks one byte back (it expects return addresses): ask about the second byte.
    let here = (hint_if_no_line_tables as *const () as usize + 1) as *mut std::ffi::c_void;
    backtrace::resolve(here, |symbol| has_lines |= symbol.lineno().is_some());
    if !has_lines {
        println!("hint: no debug info, so reports will show no file:line (release builds inline async fns away); add `[profile.release] debug = \"line-tables-only\"` to Cargo.toml");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    tracing_subscriber::registry()
        .with(tower_vigil::spans::SpanLayer::new())
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    hint_if_no_line_tables();

    let out = PathBuf::from("vigil-demo-output");
    let reports_dir = out.join("slow-requests");
    let mail_dir = out.join("mail");
    let _ = std::fs::remove_dir_all(&reports_dir);
    let _ = std::fs::remove_dir_all(&mail_dir);
    // No mail server needed: each message is written as an .eml file.
    let email = EmailSink::eml_dir(&mail_dir)?
        .from("vigil@example.com")?
        .to("oncall@example.com")?;
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .sink(FileSink::new(&reports_dir)?)
        .sink(LogSink::default().full_report(false))
        .sink(email.clone())
        .redact_query_param("token")
        .build()?;
    let timebox = TimeboxLayer::builder(HARD_DEADLINE).grace(GRACE).build()?;
    // Closed by default: only requests carrying this secret may profile.
    let profiler = ProfilerLayer::new().authorize(SharedSecret::new(ADMIN_TOKEN));
    let vigil = Vigil::new()
        .profiler(profiler)
        .watchdog(watchdog.clone())
        .timebox(timebox.clone());

    let listener = tokio::net::TcpListener::bind(if serve {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    })
    .await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The one line for a graceful stop: when the signal comes, every request still in flight
    // is reported (trigger `shutdown`) and the sinks are flushed, before the server drains.
    let shutdown = vigil.on_shutdown(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app(vigil))
            .with_graceful_shutdown(shutdown)
            .await
    });
    println!("tower-vigil demo serving on http://{addr}");
    println!(
        "watchdog threshold {THRESHOLD:?}; reports go to {}, mail to {}",
        reports_dir.display(),
        mail_dir.display()
    );
    println!(
        "timebox: soft deadline {:?}, hard deadline {HARD_DEADLINE:?}",
        HARD_DEADLINE - GRACE
    );

    if serve {
        println!("try: curl -i http://{addr}/block  (also /busy, /await/42, /wedge, /export)");
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(());
        server.await??;
        return Ok(());
    }

    println!("\n== watchdog and timebox: five slow requests at once");
    let started = Instant::now();
    let timed = |path: &'static str| async move {
        let status = fetch(addr, path).await;
        (path, status, started.elapsed())
    };
    let responses = tokio::join!(
        timed("/block"),
        timed("/busy"),
        timed("/await/42?token=hunter2"),
        timed("/wedge"),
        timed("/export"),
    );
    for (path, status, elapsed) in [
        responses.0,
        responses.1,
        responses.2,
        responses.3,
        responses.4,
    ] {
        println!(
            "  {path:<26} {status:<32} after {:.2} s",
            elapsed.as_secs_f64()
        );
    }
    // By default a route runs in a task of its own once it has wedged: the first /wedge could
    // only answer when its thread came back; the second gets its 503 at the hard deadline.
    let again = Instant::now();
    let status = fetch(addr, "/wedge").await;
    println!(
        "  {:<26} {status:<32} after {:.2} s (the route wedged before: isolated now)",
        "/wedge, again",
        again.elapsed().as_secs_f64()
    );
    // The wedged handler's thread is still asleep after its 503; wait for its work to end so
    // its completion record is written too.
    let waiting = Instant::now();
    while timebox.stats().in_flight > 0 && waiting.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watchdog.flush(Duration::from_secs(10));

    let files = reports_in(&reports_dir);
    println!(
        "\n{} report files in {}:",
        files.len() * 2,
        reports_dir.display()
    );
    for file in &files {
        println!("  {} (+ .json)", file.display());
    }
    for (route, marker) in [
        ("/block", "render_report_synchronously"),
        ("/busy", "compute_checksums"),
        ("/await/42", "db.query"),
        ("/wedge", "stuck_in_legacy_code"),
    ] {
        let first = files.iter().find_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            (text.starts_with("Slow request intercepted") && text.contains(&format!("GET {route}")))
                .then_some(text)
        });
        match first {
            Some(text) => {
                let found = if text.contains(marker) {
                    "found"
                } else {
                    "MISSING"
                };
                println!("\n--- first report of {route} ({marker}: {found}) ---");
                for line in text.lines().take(40) {
                    println!("{line}");
                }
            }
            None => println!("\n--- no report of {route} ---"),
        }
    }
    if let Some(hard) = files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.contains("at the hard deadline").then_some(text)
    }) {
        println!("\n--- the wedged request, at its hard deadline ---");
        for line in hard.lines().take(20) {
            println!("{line}");
        }
    }
    println!("\n== profiler: one request as a flamegraph, for the admin only");
    let (status, page) = fetch_with(
        addr,
        "/busy?__profile__",
        &[("x-vigil-secret", ADMIN_TOKEN)],
    )
    .await;
    let profile_path = out.join("profile-busy.html");
    std::fs::write(&profile_path, &page)?;
    println!(
        "  admin:  GET /busy?__profile__ -> {status}, {} KiB page with an inline SVG ({}), written to {}",
        page.len() / 1024,
        if page.contains("compute_checksums") {
            "compute_checksums is in it"
        } else {
            "compute_checksums MISSING"
        },
        profile_path.display()
    );
    let (status, body) = fetch_with(
        addr,
        "/?__profile__",
        &[("x-vigil-secret", "wrong-token-0000")],
    )
    .await;
    println!(
        "  anyone else: GET /?__profile__ -> {status} {:?} (the page itself)",
        body.trim()
    );

    println!("\n== graceful shutdown: requests in flight are reported before the server drains");
    let in_flight = tokio::spawn(fetch_with(addr, "/await/7", &[]));
    // Well before its threshold: only the shutdown can report it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(());
    let (status, _) = in_flight.await?;
    server.await??;
    let shutdown_reports = std::fs::read_dir(&reports_dir)?
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "json"))
        .filter(|entry| {
            std::fs::read_to_string(entry.path())
                .is_ok_and(|json| json.contains("\"trigger\": \"shutdown\""))
        })
        .count();
    println!(
        "  stop signalled with GET /await/7 in flight: {shutdown_reports} report with trigger `shutdown` written, sinks flushed; then the server drained and the request got {status}"
    );

    let stats = watchdog.stats();
    println!(
        "\nwatchdog stats: reported {}, completed {}, dropped {}, sink failures {}",
        stats.reported, stats.completed, stats.dropped, stats.sink_failures
    );
    let mails: Vec<PathBuf> = std::fs::read_dir(&mail_dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    println!(
        "\n{} mails written as .eml files in {}",
        mails.len(),
        mail_dir.display()
    );
    if let Some(subject) = mails.iter().find_map(|mail| {
        let text = std::fs::read_to_string(mail).ok()?;
        text.lines()
            .find(|line| line.starts_with("Subject:"))
            .map(str::to_owned)
    }) {
        println!("  for example: {subject}");
    }
    let email_stats = email.stats();
    println!(
        "email stats: sent {}, suppressed {}, failed to fallback {}",
        email_stats.sent, email_stats.suppressed, email_stats.failed_to_fallback
    );
    let stats = timebox.stats();
    println!(
        "timebox stats: soft cancellations {} (honoured {}), hard timeouts {}, wedged {}",
        stats.soft_cancellations,
        stats.soft_cancellations_honoured,
        stats.hard_timeouts,
        stats.wedged
    );
    Ok(())
}
