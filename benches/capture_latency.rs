//! Capture latency under load: from a request's threshold to its frames being captured, while
//! the server serves a full keep-alive load.
//!
//! `cargo bench --bench capture_latency`. An axum server with one runtime worker runs behind
//! `Vigil` (watchdog and timebox, defaults otherwise). A hyper client on another thread keeps
//! every one of its connections busy with a small JSON route, and a probe sends requests, one at
//! a time, to a route that blocks its thread. The blocking handler calls `block_in_place`, so the
//! runtime's one worker moves to another thread and the load goes on, and then sleeps in
//! `nanosleep`, which the capture signal interrupts right after the signal handler has written
//! the frames. The latency is measured from outside the crate:
//!
//! ```text
//! latency = (nanosleep interrupted) - (request reached the layer + threshold)
//! ```
//!
//! The arrival is stamped by an outer layer just before `Vigil` registers the request. The
//! monitor wakes when the earliest request falls due but at most once per tick (the watchdog's
//! resolution), so a request due within a tick of the last wake-up waits up to one tick. The
//! sink checks that each report carries the blocking frame.
//!
//! Environment: `CAPTURE_SAMPLES` (default 200 per scenario), `CAPTURE_CONNECTIONS` (default
//! 32).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Extension;
use axum::routing::get;
use axum::Router;
use http::{header, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tower::util::MapRequestLayer;
use tower_vigil::report::{ReportKind, SlowRequestReport, StackStatus};
use tower_vigil::sink::{Sink, SinkError};
use tower_vigil::timebox::TimeboxLayer;
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

/// When the request reached the layers, stamped just outside `Vigil`.
#[derive(Clone, Copy)]
struct Arrived(Instant);

/// What the blocking handler saw: arrival, and when the capture signal interrupted it.
#[derive(Default)]
struct Probes {
    samples: Vec<(Instant, Option<Instant>)>,
}

/// Counts the slow reports of the blocking route that carry its frame.
#[derive(Default)]
struct Seen {
    reports: AtomicU64,
    with_frame: AtomicU64,
    not_captured: AtomicU64,
    /// When the monitor fired, past the threshold: the report's `intercepted_at` minus its
    /// `started_at` minus the threshold, in ms (both stamps have millisecond precision).
    monitor_late_ms: Mutex<Vec<f64>>,
}

struct CountingSink(Arc<Seen>, Duration);

impl Sink for CountingSink {
    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
        if report.kind != ReportKind::Slow || !report.uri.starts_with("/slow") {
            return Ok(());
        }
        self.0.reports.fetch_add(1, Ordering::Relaxed);
        let (started, fired) = (report.started_at, report.intercepted_at);
        {
            let late = match fired.duration_since(started + self.1) {
                Ok(late) => late.as_secs_f64(),
                Err(early) => -early.duration().as_secs_f64(),
            };
            self.0.monitor_late_ms.lock().unwrap().push(late * 1000.0);
        }
        if report.stack_status != StackStatus::Captured {
            self.0.not_captured.fetch_add(1, Ordering::Relaxed);
        }
        if report.stack.iter().any(|f| {
            f.function
                .as_deref()
                .is_some_and(|name| name.contains("blocked_until_captured"))
        }) {
            self.0.with_frame.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Sleeps until a signal interrupts the sleep (the capture) or `limit` passes.
#[inline(never)]
fn blocked_until_captured(limit: Duration) -> Option<Instant> {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let request = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
        };
        // SAFETY: both pointers are valid for the call; the remainder is not needed.
        let rc = unsafe { libc::nanosleep(&request, std::ptr::null_mut()) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            return Some(Instant::now());
        }
    }
}

fn app(vigil: Vigil, probes: Arc<Mutex<Probes>>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"ok","items":[1,2,3]}"#,
                )
            }),
        )
        .route(
            "/slow",
            get(move |Extension(Arrived(arrived)): Extension<Arrived>| {
                let probes = probes.clone();
                async move {
                    let captured = tokio::task::block_in_place(|| {
                        blocked_until_captured(Duration::from_secs(2))
                    });
                    probes.lock().unwrap().samples.push((arrived, captured));
                    "done"
                }
            }),
        )
        .layer(vigil)
        .layer(MapRequestLayer::new(
            |mut request: Request<axum::body::Body>| {
                request.extensions_mut().insert(Arrived(Instant::now()));
                request
            },
        ))
}

/// One keep-alive HTTP/1.1 connection sending `path` back to back until `stop`.
async fn keep_alive_loop(
    addr: SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    while !stop.load(Ordering::Relaxed) {
        let request = Request::get(path)
            .header(header::HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let Ok(response) = sender.send_request(request).await else {
            return;
        };
        let _ = response.into_body().collect().await;
        done.fetch_add(1, Ordering::Relaxed);
    }
}

struct Outcome {
    latencies_ms: Vec<f64>,
    monitor_late_ms: Vec<f64>,
    missed: usize,
    load_rps: f64,
}

fn scenario(threshold: Duration, connections: usize, samples: usize) -> Outcome {
    let seen = Arc::new(Seen::default());
    let watchdog = WatchdogLayer::builder(threshold)
        .sink(CountingSink(seen.clone(), threshold))
        .recapture_at([])
        .build()
        .expect("watchdog");
    let vigil = Vigil::new()
        .watchdog(watchdog.clone())
        .timebox(TimeboxLayer::new(Duration::from_secs(30)));
    let probes = Arc::new(Mutex::new(Probes::default()));

    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app(vigil, probes.clone());
    server.spawn(async move { axum::serve(listener, router).await });

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::Builder::new()
            .name("load".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("client runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..connections)
                        .map(|_| {
                            tokio::spawn(keep_alive_loop(addr, "/", stop.clone(), done.clone()))
                        })
                        .collect();
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            })
            .expect("load thread")
    };

    // Let the load reach its pace, then probe one blocking request at a time.
    std::thread::sleep(Duration::from_millis(if connections > 0 {
        1000
    } else {
        100
    }));
    let load_started = (Instant::now(), done.load(Ordering::Relaxed));
    let probe = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("probe runtime");
    let bound = Instant::now() + Duration::from_secs(90);
    probe.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut n: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..samples {
            if Instant::now() > bound {
                break;
            }
            // A random gap, so arrivals fall anywhere within a tick.
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            tokio::time::sleep(Duration::from_micros(2_000 + n % 20_000)).await;
            let request = Request::get("/slow")
                .header(header::HOST, "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("slow response");
            let _ = response.into_body().collect().await;
        }
    });
    let load_rps = (done.load(Ordering::Relaxed) - load_started.1) as f64
        / load_started.0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    watchdog.flush(Duration::from_secs(10));
    server.shutdown_timeout(Duration::from_secs(1));

    let probes = probes.lock().unwrap();
    let mut latencies_ms = Vec::new();
    let mut missed = 0;
    for &(arrived, captured) in &probes.samples {
        match captured {
            Some(at) => {
                let due = arrived + threshold;
                let late = at.saturating_duration_since(due).as_secs_f64();
                let early = due.saturating_duration_since(at).as_secs_f64();
                latencies_ms.push((late - early) * 1000.0);
            }
            None => missed += 1,
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    println!(
        "    reports of /slow: {} ({} with the blocking frame, {} without a captured stack)",
        seen.reports.load(Ordering::Relaxed),
        seen.with_frame.load(Ordering::Relaxed),
        seen.not_captured.load(Ordering::Relaxed)
    );
    let mut monitor_late_ms = std::mem::take(&mut *seen.monitor_late_ms.lock().unwrap());
    monitor_late_ms.sort_by(f64::total_cmp);
    Outcome {
        latencies_ms,
        monitor_late_ms,
        missed,
        load_rps,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("capture_latency: run with `cargo bench --bench capture_latency`");
        return;
    }
    let samples = env_or("CAPTURE_SAMPLES", 200);
    let connections = env_or("CAPTURE_CONNECTIONS", 32);
    println!(
        "capture latency: {samples} blocking requests per scenario; load: {connections} keep-alive connections from one client thread; server: one runtime worker"
    );
    for (threshold, load) in [
        (Duration::from_millis(100), false),
        (Duration::from_millis(100), true),
        (Duration::from_millis(20), true),
    ] {
        let tick = WatchdogLayer::builder(threshold)
            .config()
            .resolution_or_default();
        let connections = if load { connections } else { 0 };
        println!(
            "\nthreshold {threshold:?}, tick (resolution) {tick:?}, {}",
            if load { "under full load" } else { "no load" }
        );
        let outcome = scenario(
            threshold,
            connections,
            if load { samples } else { samples / 4 },
        );
        let tick_ms = tick.as_secs_f64() * 1000.0;
        let l = &outcome.latencies_ms;
        println!(
            "    load served meanwhile: {:.0} requests/s; probes captured: {}, not interrupted within 2 s: {}",
            outcome.load_rps,
            l.len(),
            outcome.missed
        );
        println!(
            "    threshold -> frames captured: p50 {:.2} ms ({:.2} ticks), p90 {:.2} ms ({:.2} ticks), p99 {:.2} ms ({:.2} ticks), max {:.2} ms ({:.2} ticks); goal p99 <= 2 ticks: {}",
            percentile(l, 50.0),
            percentile(l, 50.0) / tick_ms,
            percentile(l, 90.0),
            percentile(l, 90.0) / tick_ms,
            percentile(l, 99.0),
            percentile(l, 99.0) / tick_ms,
            percentile(l, 100.0),
            percentile(l, 100.0) / tick_ms,
            if percentile(l, 99.0) <= 2.0 * tick_ms && outcome.missed == 0 {
                "met"
            } else {
                "NOT met"
            }
        );
        let m = &outcome.monitor_late_ms;
        println!(
            "    of which the monitor firing (report stamps, +-1 ms): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(m, 50.0),
            percentile(m, 90.0),
            percentile(m, 99.0),
            percentile(m, 100.0)
        );
    }
}
