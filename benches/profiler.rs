//! What the profiler costs.
//!
//! - `trigger_check`: a request without the trigger, through `Profiler` and through nothing.
//! - `cpu_handler`: the time a CPU-bound handler takes by itself, unprofiled and profiled at
//!   the default rate in both modes, measured inside the handler so that thread start-up,
//!   symbolization and rendering (which happen off the request) do not count.
//! - `profile_end_to_end`: a whole profile of that handler, as the admin waits for it.
//!
//! After criterion, a summary prints the profiled/unprofiled ratios of median handler times.
//! Run with `cargo bench --bench profiler -- --measurement-time 3 --warm-up-time 1`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_vigil::profiler::{Mode, ProfilerBuilder, ProfilerLayer, SharedSecret};

const SECRET: &str = "bench-secret-0123456789";

/// Nanoseconds the last run of the handler took, measured inside it.
static HANDLER_NANOS: AtomicU64 = AtomicU64::new(0);

/// A fixed amount of arithmetic: 20 to 30 ms on the 2-core CI machine.
#[inline(never)]
fn busy_work() -> u64 {
    let mut x = 0u64;
    for i in 0..15_000_000u64 {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    x
}

fn timed_work() -> u64 {
    let started = Instant::now();
    let x = busy_work();
    HANDLER_NANOS.store(started.elapsed().as_nanos() as u64, Ordering::SeqCst);
    x
}

fn builder(mode: Mode) -> ProfilerBuilder {
    ProfilerLayer::builder()
        .authorize(SharedSecret::new(SECRET))
        .mode(mode)
}

fn layer(mode: Mode) -> ProfilerLayer {
    builder(mode).build().unwrap()
}

/// Profiles one run of the handler; returns the handler's own time and the sample count.
fn profiled_run(runtime: &tokio::runtime::Runtime, mode: Mode) -> (Duration, u64) {
    let service = layer(mode).layer(service_fn(|_: Request<String>| async {
        let x = timed_work();
        Ok::<_, Infallible>(Response::new(x.to_string()))
    }));
    let request = Request::get("/work?__profile__=json")
        .header("x-vigil-secret", SECRET)
        .body(String::new())
        .unwrap();
    let body = runtime.block_on(async {
        let response = service.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    });
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON profile");
    (
        Duration::from_nanos(HANDLER_NANOS.load(Ordering::SeqCst)),
        json["samples"].as_u64().unwrap_or(0),
    )
}

fn unprofiled_run() -> Duration {
    std::hint::black_box(timed_work());
    Duration::from_nanos(HANDLER_NANOS.load(Ordering::SeqCst))
}

fn trigger_check(c: &mut Criterion) {
    let inner = service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(String::new())))
    });
    let mut bare = inner;
    let mut profiled = layer(Mode::WallClock).layer(inner);
    let mut disabled = ProfilerLayer::new().layer(inner);
    let mut no_header = builder(Mode::WallClock)
        .header_trigger(false)
        .build()
        .unwrap()
        .layer(inner);
    let request = Request::get("/orders/42?page=2&sort=desc&filter=open")
        .header("accept", "text/html")
        .header("cookie", "session=abc")
        .body(())
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut group = c.benchmark_group("trigger_check");
    group.bench_function("bare service", |b| {
        b.iter_batched(
            || request.clone(),
            |request| {
                let _ = bare.poll_ready(&mut cx);
                let mut future = std::pin::pin!(bare.call(request));
                matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_)))
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("profiler, no trigger", |b| {
        b.iter_batched(
            || request.clone(),
            |request| {
                let _ = profiled.poll_ready(&mut cx);
                let mut future = std::pin::pin!(profiled.call(request));
                matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_)))
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("profiler without authorizer", |b| {
        b.iter_batched(
            || request.clone(),
            |request| {
                let _ = disabled.poll_ready(&mut cx);
                let mut future = std::pin::pin!(disabled.call(request));
                matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_)))
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("profiler, no trigger, no header trigger", |b| {
        b.iter_batched(
            || request.clone(),
            |request| {
                let _ = no_header.poll_ready(&mut cx);
                let mut future = std::pin::pin!(no_header.call(request));
                matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_)))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn cpu_handler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, samples) = profiled_run(&runtime, Mode::CpuTime);
    assert!(samples > 0, "the profiled run took no samples");
    let mut group = c.benchmark_group("cpu_handler");
    group.sample_size(10);
    group.bench_function("unprofiled", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| unprofiled_run()).sum())
    });
    for (name, mode) in [
        ("profiled, wall-clock, 997 Hz", Mode::WallClock),
        ("profiled, cpu-time, 997 Hz", Mode::CpuTime),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                (0..iterations)
                    .map(|_| profiled_run(&runtime, mode).0)
                    .sum()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("profile_end_to_end");
    group.sample_size(10);
    group.bench_function("json, cpu-time", |b| {
        b.iter(|| profiled_run(&runtime, Mode::CpuTime))
    });
    group.finish();
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Alternates unprofiled and profiled runs and prints the ratios of the median handler times.
fn summary() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const RUNS: usize = 15;
    let (mut bare, mut wall, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wall_samples, mut cpu_samples) = (0, 0);
    for _ in 0..RUNS {
        bare.push(unprofiled_run());
        let (time, samples) = profiled_run(&runtime, Mode::WallClock);
        wall.push(time);
        wall_samples += samples;
        let (time, samples) = profiled_run(&runtime, Mode::CpuTime);
        cpu.push(time);
        cpu_samples += samples;
    }
    let (bare, wall, cpu) = (median(bare), median(wall), median(cpu));
    println!("\nprofiler summary ({RUNS} alternating runs, median handler time):");
    println!("  unprofiled                  {bare:?}");
    println!(
        "  profiled, wall-clock 997 Hz {wall:?}  ratio {:.3}  ({} samples/run)",
        wall.as_secs_f64() / bare.as_secs_f64(),
        wall_samples / RUNS as u64
    );
    println!(
        "  profiled, cpu-time 997 Hz   {cpu:?}  ratio {:.3}  ({} samples/run)",
        cpu.as_secs_f64() / bare.as_secs_f64(),
        cpu_samples / RUNS as u64
    );
}

criterion_group!(benches, trigger_check, cpu_handler);

fn main() {
    benches();
    summary();
    Criterion::default().configure_from_args().final_summary();
}
