//! Per-request cost of the watchdog against a bare service and tower-http's `TimeoutLayer`,
//! in the same run; the cost of one probe capture (the extra poll that finds where a pending
//! request awaits); bytes per second through a watched streaming body against a bare one, over
//! loopback; and the monitor thread's CPU use with 10 000 requests in flight.
//!
//! `cargo bench --bench overhead`; the ratios are printed at the end.
//!
//! On a shared machine whose speed drifts, times swing by 10–20 % between runs. Instructions
//! do not: `VIGIL_BENCH_COUNT=VARIANT` (one of `bare`, `timeout`, `watchdog`,
//! `timebox_inline`, `timebox_isolated`, `vigil`) runs `VIGIL_BENCH_REQUESTS` requests
//! (default 200 000) through that variant once and exits, for a counter such as
//! `perf stat -e instructions:u`; a run with 0 requests gives the fixed part to subtract.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
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
    targets = per_request, probe_capture, streaming_body, monitor_with_10k_in_flight
}

/// Runs a fixed number of requests through one variant, for an instruction counter.
fn count_mode(variant: &str) {
    let requests: u64 = std::env::var("VIGIL_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let rt = runtime();
    let threshold = Duration::from_secs(25);
    let inline = || {
        TimeboxLayer::builder(threshold)
            .isolation(false)
            .build()
            .unwrap()
    };
    let elapsed = match variant {
        "bare" => run(&rt, Bare, requests),
        "timeout" => run(
            &rt,
            TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, threshold).layer(Bare),
            requests,
        ),
        "watchdog" => run(&rt, WatchdogLayer::new(threshold).layer(Bare), requests),
        "timebox_inline" => run(&rt, inline().layer(Bare), requests),
        "timebox_isolated" => run(&rt, TimeboxLayer::new(threshold).layer(Bare), requests),
        "vigil" => run(
            &rt,
            Vigil::new()
                .watchdog(WatchdogLayer::new(threshold))
                .timebox(inline())
                .layer(Bare),
            requests,
        ),
        other => panic!("VIGIL_BENCH_COUNT: no variant {other:?}"),
    };
    eprintln!("{variant}: {requests} requests in {elapsed:?}");
}

fn main() {
    if let Ok(variant) = std::env::var("VIGIL_BENCH_COUNT") {
        count_mode(&variant);
        return;
    }
    let started = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios(started);
}

/// A sink that drops reports: the probe bench measures the request's side only.
struct Discard;

impl tower_vigil::sink::Sink for Discard {
    fn deliver(
        &self,
        _: &tower_vigil::report::SlowRequestReport,
    ) -> Result<(), tower_vigil::sink::SinkError> {
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// Times the second poll of a request that nothing but the watchdog's probe wakes: that
    /// poll is the probe poll. Then lets the request finish.
    struct TimeSecondPoll<F> {
        #[pin]
        inner: F,
        polls: u32,
        release: Arc<tokio::sync::Notify>,
        probe_ns: Arc<AtomicU64>,
    }
}

impl<F: Future> Future for TimeSecondPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        *this.polls += 1;
        let started = Instant::now();
        let output = this.inner.poll(cx);
        if *this.polls == 2 {
            this.probe_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            this.release.notify_one();
        }
        output
    }
}

/// One probe capture: the extra poll of a pending request, with a probe waker whose `clone`
/// takes the backtrace of the await chain (five async fns and a `Notified` leaf). Measured on
/// the worker that polls, as the application sees it; the symbolization happens later, on the
/// reporter thread. Requests run 64 at a time, so every probe is answered well within its bound.
fn probe_capture(c: &mut Criterion) {
    const AT_ONCE: u64 = 64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let watchdog = WatchdogLayer::builder(Duration::from_millis(1))
        .resolution(Duration::from_millis(1))
        .recapture_at([])
        .sink(Discard)
        .build()
        .unwrap();
    let service = watchdog.layer(tower::service_fn(
        |request: Request<Arc<tokio::sync::Notify>>| async move {
            bench_wait_1(request.into_body()).await;
            Ok::<_, Infallible>(Response::new(Empty::new()))
        },
    ));
    let missed = Arc::new(AtomicU64::new(0));
    c.bench_function("probe/one_capture", |b| {
        b.iter_custom(|iters| {
            let probe_ns = Arc::new(AtomicU64::new(0));
            rt.block_on(async {
                let mut left = iters;
                while left > 0 {
                    let batch = left.min(AT_ONCE);
                    left -= batch;
                    let mut tasks = Vec::new();
                    for _ in 0..batch {
                        let release = Arc::new(tokio::sync::Notify::new());
                        let request = service.clone().oneshot(Request::new(release.clone()));
                        tasks.push(tokio::spawn(TimeSecondPoll {
                            inner: request,
                            polls: 0,
                            release: release.clone(),
                            probe_ns: probe_ns.clone(),
                        }));
                        // Never stall the bench: a probe that did not come is counted.
                        let missed = missed.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            if Arc::strong_count(&release) > 1 {
                                missed.fetch_add(1, Ordering::Relaxed);
                                release.notify_one();
                            }
                        });
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                }
            });
            Duration::from_nanos(probe_ns.load(Ordering::Relaxed))
        })
    });
    let missed = missed.load(Ordering::Relaxed);
    if missed > 0 {
        println!("probe/one_capture: {missed} requests were never probed and were released");
    }
}

#[inline(never)]
async fn bench_wait_1(release: Arc<tokio::sync::Notify>) {
    bench_wait_2(release).await
}

#[inline(never)]
async fn bench_wait_2(release: Arc<tokio::sync::Notify>) {
    bench_wait_3(release).await
}

#[inline(never)]
async fn bench_wait_3(release: Arc<tokio::sync::Notify>) {
    bench_wait_4(release).await
}

#[inline(never)]
async fn bench_wait_4(release: Arc<tokio::sync::Notify>) {
    bench_wait_5(release).await
}

#[inline(never)]
async fn bench_wait_5(release: Arc<tokio::sync::Notify>) {
    release.notified().await
}

/// 8 MiB in 16 KiB frames, from memory, so the wrapper's cost per frame is not hidden behind
/// producing the bytes.
const FRAME: usize = 16 * 1024;
const FRAMES: usize = 512;
static FRAME_BYTES: [u8; FRAME] = [b'x'; FRAME];

fn streaming_app() -> axum::Router {
    axum::Router::new().route(
        "/stream",
        axum::routing::get(|| async {
            let frames = futures_util::stream::iter(
                (0..FRAMES).map(|_| Ok::<_, Infallible>(bytes::Bytes::from_static(&FRAME_BYTES))),
            );
            axum::body::Body::from_stream(frames)
        }),
    )
}

/// Drains the response of `call` frame by frame; returns the bytes seen.
async fn drain_body<F, B, E>(call: F) -> usize
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::fmt::Debug,
    E: std::fmt::Debug,
{
    let body = std::pin::pin!(call.await.unwrap().into_body());
    let mut body = body;
    let mut received = 0;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        received += frame.unwrap().data_ref().map_or(0, |data| data.len());
    }
    received
}

/// Bytes per second through a streaming response over loopback: a bare axum router against
/// the same router under the watchdog, whose body wrapper counts every frame.
fn streaming_body(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let watchdog = WatchdogLayer::new(Duration::from_secs(25));
    let serve = |app: axum::Router| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        })
    };
    let bare = serve(streaming_app());
    let watched = serve(streaming_app().layer(watchdog.clone()));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty>();
    let fetch = |addr: std::net::SocketAddr, iters: u64| {
        rt.block_on(async {
            let uri: http::Uri = format!("http://{addr}/stream").parse().unwrap();
            let started = Instant::now();
            for _ in 0..iters {
                let response = client.get(uri.clone()).await.unwrap();
                let mut body = response.into_body();
                let mut received = 0;
                while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                    received += frame.unwrap().data_ref().map_or(0, |data| data.len());
                }
                assert_eq!(received, FRAME * FRAMES);
            }
            started.elapsed()
        })
    };
    let mut group = c.benchmark_group("streaming_body");
    group.throughput(Throughput::Bytes((FRAME * FRAMES) as u64));
    // In process, with no socket, the wrapper's cost per frame stands alone.
    let local = runtime();
    let frames = tower::service_fn(|_: Request<()>| async {
        let frames = futures_util::stream::iter(
            (0..FRAMES).map(|_| Ok::<_, Infallible>(bytes::Bytes::from_static(&FRAME_BYTES))),
        );
        Ok::<_, Infallible>(Response::new(axum::body::Body::from_stream(frames)))
    });
    let drain = |service: &mut dyn FnMut() -> std::pin::Pin<Box<dyn Future<Output = usize>>>,
                 iters: u64| {
        local.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                assert_eq!(service().await, FRAME * FRAMES);
            }
            started.elapsed()
        })
    };
    group.bench_function("in_process_bare", |b| {
        let mut call = || -> Pin<Box<dyn Future<Output = usize>>> {
            Box::pin(drain_body(frames.oneshot(Request::new(()))))
        };
        b.iter_custom(|iters| drain(&mut call, iters))
    });
    group.bench_function("in_process_watched", |b| {
        let service = watchdog.layer(frames);
        let mut call = || -> Pin<Box<dyn Future<Output = usize>>> {
            Box::pin(drain_body(service.clone().oneshot(Request::new(()))))
        };
        b.iter_custom(|iters| drain(&mut call, iters))
    });
    group.bench_function("bare", |b| b.iter_custom(|iters| fetch(bare, iters)));
    group.bench_function("watched", |b| b.iter_custom(|iters| fetch(watched, iters)));
    group.finish();
    // The machine's speed drifts between criterion's two runs; rounds taken in turns, and the
    // median of their ratios, keep the drift out of the comparison.
    let mut ratios: Vec<f64> = (0..9)
        .map(|round| {
            let requests = 24;
            let (bare_time, watched_time) = if round % 2 == 0 {
                let bare_time = fetch(bare, requests);
                (bare_time, fetch(watched, requests))
            } else {
                let watched_time = fetch(watched, requests);
                (fetch(bare, requests), watched_time)
            };
            bare_time.as_secs_f64() / watched_time.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    *STREAMING_RATIO.lock().unwrap() = Some(ratios[ratios.len() / 2]);
    assert_eq!(
        watchdog.stats().in_flight,
        0,
        "every streamed body ended its request"
    );
}

/// Median throughput ratio, watched over bare, of the alternated streaming rounds.
static STREAMING_RATIO: std::sync::Mutex<Option<f64>> = std::sync::Mutex::new(None);

/// The mean time of a benchmark of this run, from criterion's estimates.
fn mean_ns(dir: &std::path::Path, id: &str, since: std::time::SystemTime) -> Option<f64> {
    let path = dir.join(id).join("new").join("estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    let estimates: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    fresh.then(|| estimates["mean"]["point_estimate"].as_f64())?
}

fn print_ratios(since: std::time::SystemTime) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("criterion");
    let mean = |id: &str| mean_ns(&dir, id, since);
    println!("\nRatios of this run (mean times):");
    if let (Some(bare), Some(timeout)) = (
        mean("per_request/bare"),
        mean("per_request/tower_http_timeout"),
    ) {
        for id in [
            "watchdog_armed",
            "timebox_inline",
            "timebox_isolated",
            "vigil_profiler_watchdog_and_timebox_inline",
        ] {
            if let Some(time) = mean(&format!("per_request/{id}")) {
                println!(
                    "  {id:<45} {time:>8.0} ns  {:.2}x bare  {:.2}x TimeoutLayer",
                    time / bare,
                    time / timeout
                );
            }
        }
        if let Some(time) = mean("per_request/watchdog_with_10k_in_flight") {
            println!(
                "  {:<45} {time:>8.0} ns  {:.2}x bare",
                "watchdog_with_10k_in_flight",
                time / bare
            );
        }
    }
    if let Some(probe) = mean("probe/one_capture") {
        println!("  {:<45} {:>8.1} µs", "one probe capture", probe / 1000.0);
    }
    if let (Some(bare), Some(watched)) =
        (mean("streaming_body/bare"), mean("streaming_body/watched"))
    {
        let mib_s = |ns: f64| (FRAME * FRAMES) as f64 / (ns / 1e9) / (1024.0 * 1024.0);
        println!(
            "  streaming body: bare {:.0} MiB/s, watched {:.0} MiB/s: {:.3}x bare",
            mib_s(bare),
            mib_s(watched),
            bare / watched
        );
    }
    if let (Some(bare), Some(watched)) = (
        mean("streaming_body/in_process_bare"),
        mean("streaming_body/in_process_watched"),
    ) {
        println!(
            "  streaming body in process: {:.1} ns per frame more when watched; {:.3}x bare",
            (watched - bare) / FRAMES as f64,
            bare / watched
        );
    }
    if let Some(ratio) = *STREAMING_RATIO.lock().unwrap() {
        println!("  streaming body, median of 9 alternated rounds: {ratio:.3}x bare");
    }
}
