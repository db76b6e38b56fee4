//! Scale: 100 000 requests in flight, each one awaiting.
//!
//! `cargo bench --bench scale` measures, with requests registered through the real layers
//! (`Vigil` with a watchdog and a timebox, handlers that stay pending, response futures held):
//!
//! - **memory**: bytes allocated and not freed per in-flight request, with a counting global
//!   allocator, at 10k and 100k, broken down by allocation size; then what the timebox's
//!   isolation task and an open span (the span store) add;
//! - **per-request cost**: one fast request through the watchdog with 0, 10k and 100k others
//!   in flight (the three conditions interleaved, medians of many loops);
//! - **monitor CPU**: the `vigil-monitor` thread's CPU time over a window, with no traffic and
//!   with a churning load (1000 requests with a 1 s threshold, each finishing before it, so
//!   the monitor keeps waking to find the next one due), before the registry has grown, with
//!   100k in flight, and with 0 in flight once the registry has grown to 100k slots.
//!
//! Environment: `SCALE_N` (default 100000), `SCALE_WINDOW_SECS` (default 5),
//! `SCALE_ALTERNATIONS` (default 12), `SCALE_REPORT_HEADERS=none` to copy no headers into
//! reports (the registry then holds the URI alone of each request).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::{pending, ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_vigil::timebox::TimeboxLayer;
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

// ---------------------------------------------------------------------------------------------
// Counting allocator: live bytes, and live allocations per size.

const SIZE_CLASSES: usize = 8192;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// Live bytes in allocations of [`SIZE_CLASSES`] bytes or more, whose class is shared.
static LIVE_LARGE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BY_SIZE: [AtomicI64; SIZE_CLASSES + 1] =
    [const { AtomicI64::new(0) }; SIZE_CLASSES + 1];

fn class(size: usize) -> usize {
    size.min(SIZE_CLASSES)
}

fn count_large(size: usize, sign: i64) {
    if size >= SIZE_CLASSES {
        LIVE_LARGE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[class(layout.size())].fetch_add(1, Ordering::Relaxed);
        count_large(layout.size(), 1);
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[class(layout.size())].fetch_add(1, Ordering::Relaxed);
        count_large(layout.size(), 1);
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        count_large(layout.size(), -1);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        LIVE_BY_SIZE[class(new_size)].fetch_add(1, Ordering::Relaxed);
        count_large(layout.size(), -1);
        count_large(new_size, 1);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A snapshot of the live heap.
struct Heap {
    bytes: i64,
    large_bytes: i64,
    by_size: Vec<i64>,
}

impl Heap {
    fn now() -> Self {
        Self {
            bytes: LIVE_BYTES.load(Ordering::Relaxed),
            large_bytes: LIVE_LARGE_BYTES.load(Ordering::Relaxed),
            by_size: LIVE_BY_SIZE
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Bytes per request held since `self`, and the allocation sizes that hold them.
    fn per_request(&self, n: usize) -> (f64, Vec<(usize, f64, f64)>) {
        let after = Heap::now();
        let per = (after.bytes - self.bytes) as f64 / n as f64;
        let mut sizes: Vec<(usize, f64, f64)> = after
            .by_size
            .iter()
            .zip(&self.by_size)
            .enumerate()
            .filter_map(|(size, (a, b))| {
                let count = (a - b) as f64 / n as f64;
                let bytes = if size == SIZE_CLASSES {
                    (after.large_bytes - self.large_bytes) as f64 / n as f64
                } else {
                    count * size as f64
                };
                (count.abs() >= 0.01 || bytes.abs() >= 1.0).then_some((size, count, bytes))
            })
            .collect();
        sizes.sort_by(|a, b| b.2.total_cmp(&a.2));
        (per, sizes)
    }
}

fn print_breakdown(title: &str, per: f64, sizes: &[(usize, f64, f64)]) {
    println!("{title}: {per:.1} B per in-flight request");
    for &(size, count, bytes) in sizes.iter().take(12) {
        let size = if size == SIZE_CLASSES {
            format!(">={SIZE_CLASSES}")
        } else {
            size.to_string()
        };
        println!("    {count:>6.3} allocations of {size:>6} B per request = {bytes:>7.1} B");
    }
}

// ---------------------------------------------------------------------------------------------
// Services.

type Empty = http_body_util::Empty<bytes::Bytes>;

/// A handler that never answers: the request stays in flight while its future is held.
#[derive(Clone, Copy)]
struct Pending {
    /// Open a span in the handler, so the span store has something to keep.
    span: bool,
}

impl Service<Request<()>> for Pending {
    type Response = Response<Empty>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Empty>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        if self.span {
            let span = tracing::info_span!("handler", job = 12345);
            Box::pin(async move {
                let _span = span;
                pending().await
            })
        } else {
            Box::pin(pending())
        }
    }
}

/// The fast request: answers at once.
#[derive(Clone, Copy)]
struct Bare;

impl Service<Request<()>> for Bare {
    type Response = Response<Empty>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Empty>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// A typical API request: three of its headers are among those a report copies (host,
/// user-agent, x-request-id), two are not (accept, cookie).
fn api_request(n: usize) -> Request<()> {
    Request::get(format!(
        "/api/jobs/{}?page=2&sort=desc",
        10_000 + n % 90_000
    ))
    .header("host", "api.example.com")
    .header(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    )
    .header("accept", "application/json")
    .header("cookie", "session=8f14e45fceea167a5a36dedd4bea2543")
    .header("x-request-id", "1b4e28ba-2fa1-11d2-883f-0016cb5d7e1a")
    .body(())
    .expect("request")
}

/// Calls `service` for requests `range`, keeping each response future in `held` (whose
/// capacity was reserved beforehand, so holding them allocates nothing).
fn register<S>(service: &mut S, range: std::ops::Range<usize>, held: &mut Vec<S::Future>)
where
    S: Service<Request<()>>,
{
    for n in range {
        assert!(
            held.len() < held.capacity(),
            "held futures must not reallocate"
        );
        held.push(service.call(api_request(n)));
    }
}

/// Polls every held future once (spawned isolation tasks run on the runtime's next turn).
fn poll_once<F: Future + Unpin>(held: &mut [F]) {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    for future in held {
        assert!(Pin::new(future).poll(&mut cx).is_pending());
    }
}

/// Runs the runtime until no request of `watchdog` is in flight (bounded).
fn drain(rt: &tokio::runtime::Runtime, watchdog: &WatchdogLayer) {
    let until = Instant::now() + Duration::from_secs(30);
    while watchdog.stats().in_flight > 0 && Instant::now() < until {
        rt.block_on(tokio::time::sleep(Duration::from_millis(5)));
    }
}

// ---------------------------------------------------------------------------------------------
// Timing.

/// This thread's CPU time: unlike the wall clock, it does not count time the thread spent
/// preempted by the other processes of a shared machine.
fn own_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Median time of one fast request through `service` over `rounds` loops of 20k: wall clock,
/// and this thread's CPU time.
fn fast_request_ns<S>(rt: &tokio::runtime::Runtime, service: &mut S, rounds: usize) -> (f64, f64)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    const ITERS: u32 = 20_000;
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..rounds)
        .map(|_| {
            rt.block_on(async {
                let started = Instant::now();
                let cpu = own_cpu();
                for _ in 0..ITERS {
                    let request = Request::get("/api/jobs?page=2")
                        .header("host", "example.com")
                        .header("user-agent", "bench")
                        .body(())
                        .expect("request");
                    let ready = service.ready().await.expect("ready");
                    let response = ready.call(request).await.expect("response");
                    std::hint::black_box(response);
                }
                (
                    started.elapsed().as_nanos() as f64 / f64::from(ITERS),
                    (own_cpu() - cpu).as_nanos() as f64 / f64::from(ITERS),
                )
            })
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[wall.len() / 2], cpu[cpu.len() / 2])
}

// ---------------------------------------------------------------------------------------------
// Monitor CPU.

fn monitor_tid() -> Option<i32> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "vigil-monitor" {
            return entry.file_name().to_str()?.parse().ok();
        }
    }
    None
}

/// CPU time of thread `tid`: its thread CPU clock (ns), and utime+stime from procfs (ticks).
fn thread_cpu(tid: i32) -> (Duration, Duration) {
    // The kernel's clock id for another thread's CPU time (MAKE_THREAD_CPUCLOCK(tid, SCHED)).
    let clock: libc::clockid_t = (!tid << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec; an invalid clock id is an error.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    let clock_time = if rc == 0 {
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        Duration::ZERO
    };
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (clock_time, Duration::from_millis(ticks * 1000 / hz))
}

/// Voluntary context switches of thread `tid`: about one per monitor wake-up.
fn wakeups(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The monitor's share of one core over `window` (thread clock, procfs), and its wake-ups per
/// second.
fn monitor_share(window: Duration) -> (f64, f64, f64) {
    let tid = monitor_tid().expect("the vigil-monitor thread runs");
    let (clock0, stat0) = thread_cpu(tid);
    let woken0 = wakeups(tid);
    let wall = Instant::now();
    std::thread::sleep(window);
    let (clock1, stat1) = thread_cpu(tid);
    let woken1 = wakeups(tid);
    let elapsed = wall.elapsed().as_secs_f64();
    (
        (clock1 - clock0).as_secs_f64() / elapsed * 100.0,
        (stat1 - stat0).as_secs_f64() / elapsed * 100.0,
        (woken1 - woken0) as f64 / elapsed,
    )
}

/// Requests with a 1 s threshold (50 ms resolution) that each live 100 to 900 ms, `count` at
/// a time: none is ever reported, but the monitor wakes at every tick to find the next due one.
struct Churn {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Churn {
    fn start(count: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let watchdog = WatchdogLayer::new(Duration::from_secs(1));
        let sleeper = tower::service_fn(|request: Request<Duration>| async move {
            tokio::time::sleep(*request.body()).await;
            Ok::<_, Infallible>(Response::new(()))
        });
        let service = watchdog.layer(sleeper);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        for task in 0..count {
            let service = service.clone();
            let (stop, done) = (stop.clone(), done.clone());
            rt.spawn(async move {
                let mut n = task as u64 + 1;
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let millis = 100 + (n >> 33) % 800;
                    let _ = service
                        .clone()
                        .oneshot(Request::new(Duration::from_millis(millis)))
                        .await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Self {
            stop,
            done,
            rt: Some(rt),
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn print_monitor(label: &str, window: Duration) {
    let (clock, stat, woken) = monitor_share(window);
    println!(
        "monitor CPU, {label}: {clock:.3} % of one core (thread CPU clock; procfs utime+stime: {stat:.2} %) over {window:?}; {woken:.1} wake-ups/s, {:.0} us CPU per wake-up",
        clock / 100.0 / woken.max(1e-9) * 1e6
    );
}

// ---------------------------------------------------------------------------------------------

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once with no argument.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: run with `cargo bench --bench scale`");
        return;
    }
    let n = env_or("SCALE_N", 100_000) as usize;
    let tenth = n / 10;
    let window = Duration::from_secs(env_or("SCALE_WINDOW_SECS", 5));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    // Thresholds far beyond the run: the held requests are awaiting, never reported.
    let copy_headers = std::env::var("SCALE_REPORT_HEADERS").as_deref() != Ok("none");
    let watchdog = if copy_headers {
        WatchdogLayer::new(Duration::from_secs(600))
    } else {
        WatchdogLayer::builder(Duration::from_secs(600))
            .report_headers([])
            .build()
            .expect("watchdog")
    };
    let inline = Vigil::new().watchdog(watchdog.clone()).timebox(
        TimeboxLayer::builder(Duration::from_secs(660))
            .isolation(false)
            .build()
            .expect("timebox"),
    );
    let isolated = Vigil::new()
        .watchdog(watchdog.clone())
        .timebox(TimeboxLayer::new(Duration::from_secs(660)));
    let mut held_inline = inline.layer(Pending { span: false });
    let mut fast = WatchdogLayer::new(Duration::from_secs(25)).layer(Bare);

    println!(
        "scale: {n} requests in flight; response future {} B (held by the caller, not counted); \
         {}",
        std::mem::size_of_val(&held_inline.call(api_request(0))),
        if copy_headers {
            "reports copy the default headers"
        } else {
            "reports copy no headers (SCALE_REPORT_HEADERS=none)"
        }
    );

    // Warm up: thread-locals, the home shard, tracing's callsites, the first slot.
    fast_request_ns(&rt, &mut fast, 1);
    let mut held = Vec::with_capacity(n);

    // --- Monitor CPU before the registry grows.
    print_monitor("registry not grown yet, no other traffic", window);
    {
        let _churn = Churn::start(1000);
        std::thread::sleep(Duration::from_millis(1200));
        print_monitor(
            "registry not grown yet + 1000 churning (1 s threshold, each living 100..900 ms)",
            window,
        );
    }

    // --- Memory: a fresh registry grows by one slot per request.
    let before = Heap::now();
    register(&mut held_inline, 0..tenth, &mut held);
    let (per_10k, sizes_10k) = before.per_request(tenth);
    register(&mut held_inline, tenth..n, &mut held);
    let (per_100k, sizes_100k) = before.per_request(n);
    println!();
    print_breakdown(
        &format!("registry (slots and request copies), {tenth} in flight"),
        per_10k,
        &sizes_10k,
    );
    print_breakdown(
        &format!("registry (slots and request copies), {n} in flight"),
        per_100k,
        &sizes_100k,
    );
    println!(
        "watchdog in flight: {} (goal: <= 256 B per request)",
        watchdog.stats().in_flight
    );

    // --- Monitor CPU with the registry at its high-water mark.
    println!();
    print_monitor(&format!("{n} in flight, no other traffic"), window);
    {
        let churn = Churn::start(1000);
        std::thread::sleep(Duration::from_millis(1200));
        let done = churn.done.load(Ordering::Relaxed);
        print_monitor(&format!("{n} in flight + 1000 churning"), window);
        let done = churn.done.load(Ordering::Relaxed) - done;
        println!("    churning requests completed in the window: {done}");
    }
    held.clear();
    print_monitor(
        &format!("0 in flight, registry grown to {n} slots, no other traffic"),
        window,
    );
    {
        let _churn = Churn::start(1000);
        std::thread::sleep(Duration::from_millis(1200));
        print_monitor(
            &format!("0 in flight, registry grown to {n} slots, + 1000 churning"),
            window,
        );
    }

    // --- Per-request cost: the three conditions interleaved, so that a change in the machine's
    // load hits them alike; each sample is the median of 3 loops of 20k requests.
    println!();
    let counts = [0, tenth, n];
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut samples_cpu: [Vec<f64>; 3] = Default::default();
    let alternations = env_or("SCALE_ALTERNATIONS", 12) as usize;
    for round in 0..alternations {
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let count = counts[index];
            if held.len() > count {
                held.truncate(count);
            } else {
                let from = held.len();
                register(&mut held_inline, from..count, &mut held);
            }
            let (wall, cpu) = fast_request_ns(&rt, &mut fast, 3);
            samples[index].push(wall);
            samples_cpu[index].push(cpu);
        }
    }
    held.clear();
    drain(&rt, &watchdog);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (clock, samples) in [
        ("wall clock", &mut samples),
        ("thread CPU time", &mut samples_cpu),
    ] {
        let base = median(&mut samples[0].clone());
        for (index, count) in counts.into_iter().enumerate() {
            let v = &mut samples[index];
            let m = median(v);
            println!(
                "fast request through the watchdog ({clock}), {count:>6} others in flight: median {m:>5.0} ns ({:+.1} % vs 0); quartiles {:.0}..{:.0} ns over {} interleaved samples",
                (m / base - 1.0) * 100.0,
                v[v.len() / 4],
                v[v.len() * 3 / 4],
                v.len()
            );
        }
    }

    // --- Memory added by the timebox's isolation task (the slots are warm now).
    let mut held_isolated = isolated.layer(Pending { span: false });
    let mut held = Vec::with_capacity(n);
    let before = Heap::now();
    register(&mut held_isolated, 0..n, &mut held);
    // Let every isolation task run to its pending handler once.
    rt.block_on(tokio::task::yield_now());
    poll_once(&mut held);
    let (per, sizes) = before.per_request(n);
    println!();
    print_breakdown(
        "default Vigil (isolation on), warm slots: what the task adds",
        per,
        &sizes,
    );
    drop(held);
    // Aborted tasks give their registrations back when the runtime drops them.
    drain(&rt, &watchdog);

    // --- Memory of one open span per request, without and with the span store.
    let mut held_spans = inline.layer(Pending { span: true });
    let mut per_span = [0.0; 2];
    for (index, with_store) in [false, true].into_iter().enumerate() {
        use tracing_subscriber::prelude::*;
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if with_store {
            Box::new(tracing_subscriber::registry().with(tower_vigil::spans::SpanLayer::new()))
        } else {
            Box::new(tracing_subscriber::registry())
        };
        let mut held = Vec::with_capacity(n);
        tracing::subscriber::with_default(subscriber, || {
            register(&mut held_spans, 0..1, &mut held);
            held.clear();
            let before = Heap::now();
            register(&mut held_spans, 0..n, &mut held);
            let (per, sizes) = before.per_request(n);
            per_span[index] = per;
            print_breakdown(
                &format!(
                    "one open span per request, warm slots, {}",
                    if with_store {
                        "tracing registry + SpanLayer"
                    } else {
                        "tracing registry alone"
                    }
                ),
                per,
                &sizes,
            );
            held.clear();
        });
    }
    println!(
        "span store (SpanLayer) per request with one open span: {:.1} B",
        per_span[1] - per_span[0]
    );
    println!(
        "\nregistry capacity (slots ever created): watchdog stats in flight now {}",
        watchdog.stats().in_flight
    );
}
