//! Per-request cost of the watchdog against a bare service and tower-http's `TimeoutLayer`,
//! in the same run, and the monitor thread's CPU use with 10 000 requests in flight.
//!
//! `cargo bench --bench overhead`; the ratios are printed at the end.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_http::timeout::TimeoutLayer;
use tower_vigil::timebox::TimeboxLayer;
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

#[derive(Clone, Copy)]
struct Bare;

type Empty = http_body_util::Empty<bytes::Bytes>;

impl Service<Request<()>> for Bare {
    type Response = Response<Empty>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Empty>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Times `iters` requests through `service`, one after another, on a current-thread runtime.
fn run<S, B>(rt: &tokio::runtime::Runtime, mut service: S, iters: u64) -> Duration
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let request = Request::get("/api/jobs?page=2")
                .header("host", "example.com")
                .header("user-agent", "bench")
                .body(())
                .unwrap();
            let service = service.ready().await.unwrap();
            let response = service.call(request).await.unwrap();
            std::hint::black_box(response);
        }
        started.elapsed()
    })
}

fn per_request(c: &mut Criterion) {
    let rt = runtime();
    let watchdog = WatchdogLayer::new(Duration::from_secs(25));
    let mut group = c.benchmark_group("per_request");
    group.bench_function("bare", |b| b.iter_custom(|iters| run(&rt, Bare, iters)));
    group.bench_function("tower_http_timeout", |b| {
        let layer = TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(25),
        );
        b.iter_custom(|iters| run(&rt, layer.layer(Bare), iters))
    });
    group.bench_function("watchdog_armed", |b| {
        b.iter_custom(|iters| run(&rt, watchdog.layer(Bare), iters))
    });
    let inline = TimeboxLayer::builder(Duration::from_secs(25))
        .isolation(false)
        .build()
        .unwrap();
    group.bench_function("timebox_inline", |b| {
        b.iter_custom(|iters| run(&rt, inline.layer(Bare), iters))
    });
    let isolated = TimeboxLayer::new(Duration::from_secs(25));
    group.bench_function("timebox_isolated", |b| {
        b.iter_custom(|iters| run(&rt, isolated.layer(Bare), iters))
    });
    let vigil = Vigil::new()
        .watchdog(WatchdogLayer::new(Duration::from_secs(25)))
        .timebox(
            TimeboxLayer::builder(Duration::from_secs(27))
                .isolation(false)
                .build()
                .unwrap(),
        );
    group.bench_function("vigil_profiler_watchdog_and_timebox_inline", |b| {
        b.iter_custom(|iters| run(&rt, vigil.layer(Bare), iters))
    });
    group.finish();
}

/// CPU time of this process's thread named `name`: the first field of procfs' schedstat,
/// in nanoseconds.
fn thread_cpu(name: &str) -> Option<Duration> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let schedstat = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
        let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
        return Some(Duration::from_nanos(nanos));
    }
    None
}

/// 10 000 requests in flight at all times, each finishing before its threshold and replaced
/// at once, so the monitor keeps scanning a full registry; prints the monitor's CPU share.
fn monitor_with_10k_in_flight(c: &mut Criterion) {
    const IN_FLIGHT: usize = 10_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // 1 s threshold and the default resolution (50 ms): the monitor wakes twenty times a
    // second and scans 10 000 slots each time.
    let watchdog = WatchdogLayer::new(Duration::from_secs(1));
    let sleeper = tower::service_fn(|request: Request<Duration>| async move {
        tokio::time::sleep(*request.body()).await;
        Ok::<_, Infallible>(Response::new(()))
    });
    let service = watchdog.layer(sleeper);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for task in 0..IN_FLIGHT {
        let service = service.clone();
        let stop = stop.clone();
        rt.spawn(async move {
            let mut n = task as u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let millis = 100 + (n >> 33) % 800;
                let request = Request::new(Duration::from_millis(millis));
                let _ = service.clone().oneshot(request).await;
            }
        });
    }
    // Let the registry fill up.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = watchdog.stats();
    let window = Duration::from_secs(3);
    let before = thread_cpu("vigil-monitor");
    let wall = Instant::now();
    std::thread::sleep(window);
    let after = thread_cpu("vigil-monitor");
    let elapsed = wall.elapsed();
    if let (Some(before), Some(after)) = (before, after) {
        let share = (after - before).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
        println!(
            "monitor thread with {} requests in flight: {:.2}% of one core ({:?} CPU in {:?}); reports made: {}",
            stats.in_flight,
            share,
            after - before,
            elapsed,
            watchdog.stats().reported
        );
    }
    // Per-request cost of a request registered next to 10 000 others.
    c.bench_function("per_request/watchdog_with_10k_in_flight", |b| {
        let local = runtime();
        b.iter_custom(|iters| run(&local, watchdog.layer(Bare), iters))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(rt);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = per_request, monitor_with_10k_in_flight
}
criterion_main!(benches);
