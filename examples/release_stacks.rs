//! What a watchdog report looks like in a release build, and what debug info costs.
//!
//! Serves one slow request through the watchdog, prints the report's stack, then times a short
//! loop of fast requests through the same layer. Build it three ways and compare:
//!
//! ```text
//! CARGO_PROFILE_RELEASE_DEBUG=0 cargo run --release --example release_stacks --target-dir target/rs-debug0
//! CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo run --release --example release_stacks --target-dir target/rs-lines
//! CARGO_PROFILE_RELEASE_DEBUG=line-tables-only RUSTFLAGS="-C force-frame-pointers=yes" \
//!     cargo run --release --example release_stacks --target-dir target/rs-fp
//! ```
//!
//! `RUST_LOG`-style filtering is fixed: the crate's DEBUG events ("symbolizer warmed up",
//! "report symbolized", with their elapsed times) go to stderr.

use std::convert::Infallible;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_vigil::report::{FrameOrigin, SlowRequestReport};
use tower_vigil::sink::{Sink, SinkError};
use tower_vigil::watchdog::WatchdogLayer;
use tracing_subscriber::prelude::*;

/// Hands each slow report to `main`.
struct Channel(mpsc::SyncSender<(Instant, SlowRequestReport)>);

impl Sink for Channel {
    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
        let _ = self.0.try_send((Instant::now(), report.clone()));
        Ok(())
    }
}

/// The slow handler: an async fn that release builds inline into axum's machinery.
async fn slow_report() -> &'static str {
    render_report_synchronously();
    "rendered\n"
}

#[inline(never)]
fn render_report_synchronously() {
    std::thread::sleep(Duration::from_millis(600));
}

async fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response.lines().next().unwrap_or_default().to_owned()
}

/// The last two components of a source path.
fn short(path: &str) -> String {
    let parts: Vec<&str> = path.rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Median time of one fast request through `layer`, over `rounds` loops of `iters` requests.
fn fast_request_ns(layer: &WatchdogLayer, rounds: usize, iters: u32) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let inner = tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let mut service = layer.layer(inner);
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let request = Request::get("/api/jobs?page=2")
                        .header("host", "example.com")
                        .header("user-agent", "bench")
                        .body(())
                        .expect("request");
                    let ready = service.ready().await.expect("ready");
                    let response = ready.call(request).await.expect("response");
                    std::hint::black_box(response);
                }
                started.elapsed().as_nanos() as f64 / f64::from(iters)
            })
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let process_started = Instant::now();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::Targets::new().with_target(
                    "tower_vigil",
                    tracing_subscriber::filter::LevelFilter::DEBUG,
                )),
        )
        .init();
    let (sender, reports) = mpsc::sync_channel(8);
    let watchdog = WatchdogLayer::builder(Duration::from_millis(200))
        .sink(Channel(sender))
        .build()?;
    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route("/report", get(slow_report))
        .layer(watchdog.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let status = fetch(addr, "/report").await;
    let (delivered, report) = reports.recv_timeout(Duration::from_secs(10))?;
    println!(
        "GET /report -> {status}; report delivered {:.0} ms after the process started",
        (delivered - process_started).as_secs_f64() * 1000.0
    );
    let app_frames = report
        .stack
        .iter()
        .filter(|f| f.origin == FrameOrigin::App)
        .count();
    let with_lines = report.stack.iter().filter(|f| f.line.is_some()).count();
    let inlined = report.stack.iter().filter(|f| f.inlined).count();
    println!(
        "frames: {} ({} application, {} with file:line, {} inlined); marker render_report_synchronously: {}",
        report.stack.len(),
        app_frames,
        with_lines,
        inlined,
        if report
            .stack
            .iter()
            .any(|f| f.function.as_deref().is_some_and(|n| n.contains("render_report_synchronously")))
        {
            "found"
        } else {
            "MISSING"
        }
    );
    let text = report.to_text();
    let stack = text
        .lines()
        .skip_while(|line| !line.starts_with("Stack"))
        .take(24);
    for line in stack {
        println!("{line}");
    }
    println!("first frames, unfolded:");
    for frame in report.stack.iter().take(14) {
        println!(
            "  {}{} {}",
            if frame.inlined { "(inlined) " } else { "" },
            frame.function.as_deref().unwrap_or(&frame.ip),
            match (&frame.file, frame.line) {
                (Some(file), Some(line)) => format!("at {}:{line}", short(file)),
                (Some(file), None) => format!("at {}", short(file)),
                _ => String::from("(no file:line)"),
            }
        );
    }

    let per_request = tokio::task::spawn_blocking(move || fast_request_ns(&watchdog, 9, 50_000))
        .await
        .expect("timing loop");
    println!("fast request through the watchdog: {per_request:.0} ns (median of 9 x 50k)");
    Ok(())
}
