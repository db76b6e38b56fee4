//! End-to-end throughput over loopback HTTP/1.1, with no outside tool: bare axum against
//! tower-http's `TimeoutLayer`, each vigil layer alone and `Vigil` stacks, in alternated rounds.
//!
//! `cargo bench --bench throughput [-- NAME]` (only variants whose name contains NAME). The
//! server runs one current-thread runtime on one core, the load generator (a hyper client
//! over keep-alive connections) one current-thread runtime on another; each round warms up,
//! then counts responses for a fixed time. Each variant is measured right next to a
//! measurement of bare axum (which goes first alternates by round), and its ratio to bare is
//! the median of those pairs' ratios: on a shared machine whose speed drifts over tens of
//! seconds, neighbours a second apart compare far better than whole rounds.
//!
//! Each round also reads the server thread's CPU time (`/proc/self/task/TID/schedstat`, on
//! Linux): how busy the server was, and its CPU time per response. A bare server the load
//! generator cannot saturate (busy well under 100 %) hides part of a layer's cost in its idle
//! time, and the req/s ratio then flatters the layer; the ratio of CPU time per response (bare
//! over the variant, median of the pairs) is the throughput ratio of a saturated server, and
//! holds whichever side of the loopback is the bottleneck. Settings, from the environment:
//!
//! | variable | default | |
//! |---|---|---|
//! | `VIGIL_BENCH_ROUNDS` | 5 | rounds; each variant once per round, in rotated order, each paired with bare axum |
//! | `VIGIL_BENCH_SECS` | 2 | measured seconds per variant and round |
//! | `VIGIL_BENCH_WARMUP_MS` | 500 | warm-up before each measurement |
//! | `VIGIL_BENCH_CONNECTIONS` | 64 | keep-alive connections of the load generator |
//!
//! With 13 variants besides bare axum the defaults take about 5 minutes and a half. The two
//! "floor" variants are no-op layers: what any middleware applied with `Router::layer` costs
//! before it does anything. The same server can be measured with wrk or oha:
//! `VIGIL_BENCH_SERVE=NAME` serves that variant on `VIGIL_BENCH_PORT` (default 3000) until
//! killed (see the README for the commands), and `benches/instructions_under_load.sh` counts
//! its instructions per response under wrk's load.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tower::Layer;
use tower_http::timeout::TimeoutLayer;
use tower_vigil::config::WatchdogConfig;
use tower_vigil::profiler::{ProfilerLayer, SharedSecret};
use tower_vigil::sink::LogSink;
use tower_vigil::timebox::{Isolation, TimeboxLayer};
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

/// Every variant measured, with the layer it puts around the router. All layer construction
/// lives here, so a change of the builders' API touches this function only.
fn variants() -> Vec<(&'static str, Wrap)> {
    let threshold = WatchdogConfig::default().threshold;
    let watchdog = || WatchdogLayer::new(threshold);
    let timebox = || TimeboxLayer::supervisor_timeout(Duration::from_secs(30)).expect("30 s");
    let timebox_with = |isolation: Isolation| {
        TimeboxLayer::builder_for_supervisor(Duration::from_secs(30))
            .isolation_mode(isolation)
            .build()
            .expect("30 s")
    };
    let profiler = || ProfilerLayer::new().authorize(SharedSecret::new("bench-secret"));
    let everything = Vigil::new()
        .profiler(
            ProfilerLayer::builder()
                .authorize(SharedSecret::new("bench-secret"))
                .header_trigger(true)
                .build()
                .expect("valid"),
        )
        .watchdog(
            WatchdogLayer::builder(threshold)
                .sink(LogSink::new())
                .report_headers([header::HOST, header::USER_AGENT])
                .redact_query_param("token")
                .ignore_path("/health")
                .ignore_if(|parts| parts.headers.contains_key(header::UPGRADE))
                .build()
                .expect("valid"),
        )
        .timebox(
            TimeboxLayer::builder_for_supervisor(Duration::from_secs(30))
                .soft_deadline(Duration::from_secs(20))
                .wait_timeout(Duration::from_secs(10))
                .body_deadline(true)
                .deadline_extension(true)
                .isolation_mode(Isolation::Always)
                .escalate_after(10, Duration::from_secs(60), |_| {})
                .build()
                .expect("valid"),
        );
    vec![
        ("bare axum", wrap(tower::layer::util::Identity::new())),
        (
            "floor: a no-op layer around the future",
            wrap(floor::PassLayer::<floor::KeepBody>::new()),
        ),
        (
            "floor: a no-op layer around the future and the body",
            wrap(floor::PassLayer::<floor::WrapBody>::new()),
        ),
        (
            "tower-http TimeoutLayer",
            wrap(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(27),
            )),
        ),
        ("WatchdogLayer", wrap(watchdog())),
        (
            "TimeboxLayer (defaults: adaptive isolation)",
            wrap(timebox()),
        ),
        (
            "TimeboxLayer (isolation always)",
            wrap(timebox_with(Isolation::Always)),
        ),
        (
            "TimeboxLayer (isolation never)",
            wrap(timebox_with(Isolation::Never)),
        ),
        ("ProfilerLayer (authorized)", wrap(profiler())),
        (
            "Vigil (defaults)",
            wrap(
                Vigil::new()
                    .profiler(profiler())
                    .watchdog(watchdog())
                    .timebox(timebox()),
            ),
        ),
        ("Vigil (every option on)", wrap(everything)),
        (
            "Vigil (defaults and the Deadline extension)",
            wrap(
                Vigil::new()
                    .profiler(profiler())
                    .watchdog(watchdog())
                    .timebox(
                        TimeboxLayer::builder_for_supervisor(Duration::from_secs(30))
                            .deadline_extension(true)
                            .build()
                            .expect("30 s"),
                    ),
            ),
        ),
        (
            "Vigil (least: no profiler, no copied headers, isolation never)",
            wrap(
                Vigil::new()
                    .watchdog(
                        WatchdogLayer::builder(threshold)
                            .report_headers([])
                            .build()
                            .expect("valid"),
                    )
                    .timebox(timebox_with(Isolation::Never)),
            ),
        ),
        (
            "Vigil (lean: no copied headers)",
            wrap(
                Vigil::new()
                    .profiler(profiler())
                    .watchdog(
                        WatchdogLayer::builder(threshold)
                            .report_headers([])
                            .build()
                            .expect("valid"),
                    )
                    .timebox(timebox()),
            ),
        ),
    ]
}

/// The least any middleware applied with `Router::layer` costs: a layer that does nothing but
/// put its own future around the inner one and, optionally, its own type around the response
/// body. A body of another type than axum's is boxed again by axum, as every body-watching
/// layer's is (tower-http's `TimeoutLayer` too).
mod floor {
    use std::future::Future;
    use std::marker::PhantomData;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::Body;
    use http::{Request, Response};
    use http_body::{Body as HttpBody, Frame, SizeHint};
    use pin_project_lite::pin_project;

    /// What the no-op layer does to the response body.
    pub trait BodyMap: Send + Sync + 'static {
        type Body;
        fn map(body: Body) -> Self::Body;
    }

    /// Leaves axum's body as it is: axum finds its own type and does not box it again.
    pub struct KeepBody;

    impl BodyMap for KeepBody {
        type Body = Body;
        fn map(body: Body) -> Body {
            body
        }
    }

    /// Puts the body in a type of the layer's own, as a layer that watches the body must.
    pub struct WrapBody;

    impl BodyMap for WrapBody {
        type Body = PassBody;
        fn map(body: Body) -> PassBody {
            PassBody { body }
        }
    }

    pub struct PassLayer<M>(PhantomData<fn() -> M>);

    impl<M> PassLayer<M> {
        pub fn new() -> Self {
            Self(PhantomData)
        }
    }

    impl<M> Clone for PassLayer<M> {
        fn clone(&self) -> Self {
            Self::new()
        }
    }

    impl<S, M> tower::Layer<S> for PassLayer<M> {
        type Service = Pass<S, M>;

        fn layer(&self, inner: S) -> Pass<S, M> {
            Pass(inner, PhantomData)
        }
    }

    pub struct Pass<S, M>(S, PhantomData<fn() -> M>);

    impl<S: Clone, M> Clone for Pass<S, M> {
        fn clone(&self) -> Self {
            Self(self.0.clone(), PhantomData)
        }
    }

    impl<S, M: BodyMap> tower::Service<Request<Body>> for Pass<S, M>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>>,
    {
        type Response = Response<M::Body>;
        type Error = S::Error;
        type Future = PassFuture<S::Future, M>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            PassFuture {
                inner: self.0.call(request),
                map: PhantomData,
            }
        }
    }

    pin_project! {
        pub struct PassFuture<F, M> {
            #[pin]
            inner: F,
            map: PhantomData<fn() -> M>,
        }
    }

    impl<F, E, M: BodyMap> Future for PassFuture<F, M>
    where
        F: Future<Output = Result<Response<Body>, E>>,
    {
        type Output = Result<Response<M::Body>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.project()
                .inner
                .poll(cx)
                .map(|output| output.map(|response| response.map(M::map)))
        }
    }

    pin_project! {
        pub struct PassBody {
            #[pin]
            body: Body,
        }
    }

    impl HttpBody for PassBody {
        type Data = bytes::Bytes;
        type Error = axum::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.project().body.poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.body.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.body.size_hint()
        }
    }
}

/// Puts a layer around a router; built once per variant and applied for each round.
type Wrap = Arc<dyn Fn(Router) -> Router + Send + Sync>;

fn wrap<L>(layer: L) -> Wrap
where
    L: Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<Request<Body>>>::Response: axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    Arc::new(move |router: Router| router.layer(layer.clone()))
}

/// A small JSON answer, serialized per request as a handler would.
#[derive(serde::Serialize)]
struct Job {
    id: u64,
    name: &'static str,
    state: &'static str,
    progress: f32,
}

async fn job() -> Response<Body> {
    let job = Job {
        id: 42,
        name: "nightly-export",
        state: "running",
        progress: 0.5,
    };
    let body = serde_json::to_vec(&job).expect("serializable");
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

fn app(wrap: &Wrap) -> Router {
    wrap(Router::new().route("/api/job", get(job)))
}

struct Settings {
    rounds: usize,
    measure: Duration,
    warmup: Duration,
    connections: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env_or("VIGIL_BENCH_ROUNDS", 5usize).max(1),
            measure: Duration::from_secs_f64(env_or("VIGIL_BENCH_SECS", 2.0f64)),
            warmup: Duration::from_millis(env_or("VIGIL_BENCH_WARMUP_MS", 500u64)),
            connections: env_or("VIGIL_BENCH_CONNECTIONS", 64usize).max(1),
        }
    }
}

/// Pins the calling thread to the `index`-th core, when there is one. With fewer than two cores
/// the threads share, and the figures say less.
fn pin_to_core(index: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.get(index).copied())
        .is_some_and(core_affinity::set_for_current)
}

/// A server on its own OS thread with one current-thread runtime, stopped by dropping it.
struct Server {
    addr: SocketAddr,
    /// The server thread's id, to read its CPU time from `/proc` (`None` off Linux).
    thread_id: Option<u32>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(router: Router, port: u16) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                pin_to_core(0);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    use axum::serve::ListenerExt;
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                        .await
                        .expect("a port on 127.0.0.1");
                    ready_tx
                        .send((listener.local_addr().unwrap(), own_thread_id()))
                        .unwrap();
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                        .expect("the server runs");
                });
            })
            .expect("a server thread");
        let (addr, thread_id) = ready_rx.recv().expect("the server's address");
        Self {
            addr,
            thread_id,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The calling thread's id, from `/proc/thread-self` (`PID/task/TID`).
fn own_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Nanoseconds the thread has run on a CPU, user and kernel (the first field of `schedstat`).
fn cpu_time_ns(thread_id: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{thread_id}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// One measurement: the rate, and what the server thread spent on it.
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    /// The server thread's CPU time over the wall time: near 1 when the server is the
    /// bottleneck, lower when the load generator is.
    busy: Option<f64>,
    /// The server thread's CPU time per response. Unlike the rate, this does not depend on
    /// which side of the loopback is the bottleneck.
    cpu_ns_per_request: Option<f64>,
}

/// Requests per second over `connections` keep-alive connections, counted for `measure`
/// after `warmup`; runs on its own OS thread with one current-thread runtime.
fn load(addr: SocketAddr, server_thread: Option<u32>, settings: &Settings) -> Measured {
    let (connections, warmup, measure) = (settings.connections, settings.warmup, settings.measure);
    std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            pin_to_core(1);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(generate(addr, server_thread, connections, warmup, measure))
        })
        .expect("a client thread")
        .join()
        .expect("the load generator")
}

async fn generate(
    addr: SocketAddr,
    server_thread: Option<u32>,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Measured {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("a connection");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("an HTTP/1.1 handshake");
        tokio::spawn(connection);
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get("/api/job")
                    .header(header::HOST, "127.0.0.1")
                    .header(header::USER_AGENT, "vigil-bench")
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                sender.ready().await.expect("the connection stays open");
                let response = sender.send_request(request).await.expect("a response");
                assert_eq!(response.status(), StatusCode::OK, "the route must answer");
                let body = response.into_body().collect().await.expect("the body");
                std::hint::black_box(body);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let cpu = || server_thread.and_then(cpu_time_ns);
    let (started, before, cpu_before) = (Instant::now(), done.load(Ordering::Relaxed), cpu());
    tokio::time::sleep(measure).await;
    let (elapsed, after, cpu_after) = (started.elapsed(), done.load(Ordering::Relaxed), cpu());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a client task");
    }
    let responses = (after - before) as f64;
    let spent = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before) as f64);
    Measured {
        rate: responses / elapsed.as_secs_f64(),
        busy: spent.map(|spent| spent / elapsed.as_nanos() as f64),
        cpu_ns_per_request: spent.map(|spent| spent / responses.max(1.0)),
    }
}

/// The median as `show` writes it, or a dash when nothing was measured (no `/proc`).
fn median_shown(mut values: Vec<f64>, show: impl Fn(f64) -> String) -> String {
    if values.is_empty() {
        "–".to_owned()
    } else {
        show(median(&mut values))
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn main() {
    let variants = variants();
    if let Ok(name) = std::env::var("VIGIL_BENCH_SERVE") {
        let (name, wrap) = variants
            .iter()
            .find(|(variant, _)| variant.to_lowercase().contains(&name.to_lowercase()))
            .unwrap_or_else(|| panic!("no variant named like {name:?}"));
        let server = Server::start(app(wrap), env_or("VIGIL_BENCH_PORT", 3000u16));
        let thread = server
            .thread_id
            .map_or_else(String::new, |tid| format!(" (server thread {tid})"));
        println!(
            "serving {name} on http://{}/api/job until killed{thread}",
            server.addr
        );
        loop {
            std::thread::park();
        }
    }
    if let Ok(addr) = std::env::var("VIGIL_BENCH_LOAD") {
        // The bundled load generator against a server of another process.
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("VIGIL_BENCH_LOAD={addr:?} is not an address"));
        let measured = load(addr, None, &Settings::from_env());
        println!("{:.0} req/s from {addr}", measured.rate);
        return;
    }
    // `cargo bench` passes `--bench`; any other word picks variants by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .map(|arg| arg.to_lowercase())
        .collect();
    let picked: Vec<usize> = (0..variants.len())
        .filter(|&i| {
            i == 0
                || filters.is_empty()
                || filters
                    .iter()
                    .any(|f| variants[i].0.to_lowercase().contains(f))
        })
        .collect();
    let settings = Settings::from_env();
    let cores = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
    println!(
        "throughput: {} rounds x {} variants, {:?} measured after {:?} warm-up, {} connections, \
         GET /api/job (JSON); server and client pinned to cores 0 and 1 of {cores}",
        settings.rounds,
        picked.len(),
        settings.measure,
        settings.warmup,
        settings.connections,
    );
    let measure = |i: usize, round: usize| {
        let (name, wrap) = &variants[i];
        let server = Server::start(app(wrap), 0);
        let measured = load(server.addr, server.thread_id, &settings);
        drop(server);
        let cpu = measured.cpu_ns_per_request.zip(measured.busy).map_or_else(
            String::new,
            |(ns, busy)| {
                format!(
                    ", server {ns:.0} ns CPU/request, {:.0} % busy",
                    busy * 100.0
                )
            },
        );
        eprintln!(
            "round {}: {name:<30} {:>9.0} req/s{cpu}",
            round + 1,
            measured.rate
        );
        measured
    };
    let others: Vec<usize> = picked.iter().copied().filter(|&i| i != 0).collect();
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); variants.len()];
    // Each variant's rate over the bare rate measured next to it, and bare's CPU per request
    // over the variant's: the throughput ratio a saturated server would show.
    let mut paired: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut paired_cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    paired[0].push(1.0);
    paired_cpu[0].push(1.0);
    for round in 0..settings.rounds {
        if others.is_empty() {
            runs[0].push(measure(0, round));
            continue;
        }
        // Rotated each round, so no variant always follows the same one.
        for k in 0..others.len() {
            let i = others[(k + round) % others.len()];
            let (bare, run) = if (round + k) % 2 == 0 {
                let bare = measure(0, round);
                (bare, measure(i, round))
            } else {
                let run = measure(i, round);
                (measure(0, round), run)
            };
            paired[i].push(run.rate / bare.rate);
            if let Some((bare_ns, ns)) = bare.cpu_ns_per_request.zip(run.cpu_ns_per_request) {
                paired_cpu[i].push(bare_ns / ns);
            }
            runs[0].push(bare);
            runs[i].push(run);
        }
    }
    let mut bare: Vec<f64> = runs[0].iter().map(|run| run.rate).collect();
    let bare_median = median(&mut bare);
    println!();
    println!(
        "| server | req/s (median) | min .. max | vs bare (median of paired ratios) | \
         server busy | server CPU per request | vs bare by CPU per request |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &i in &picked {
        let mut values: Vec<f64> = runs[i].iter().map(|run| run.rate).collect();
        let value = median(&mut values);
        let busy = runs[i].iter().filter_map(|run| run.busy).collect();
        let cpu = runs[i]
            .iter()
            .filter_map(|run| run.cpu_ns_per_request)
            .collect();
        println!(
            "| {} | {:.1}k | {:.1}k .. {:.1}k | {} | {} | {} | {} |",
            variants[i].0,
            value / 1000.0,
            values[0] / 1000.0,
            values[values.len() - 1] / 1000.0,
            median_shown(std::mem::take(&mut paired[i]), |m| format!("{m:.3}")),
            median_shown(busy, |m| format!("{:.0} %", m * 100.0)),
            median_shown(cpu, |m| format!("{m:.0} ns")),
            median_shown(std::mem::take(&mut paired_cpu[i]), |m| format!("{m:.3}")),
        );
    }
    println!("\nbare axum median: {bare_median:.0} req/s");
}
