//! tower-vigil in the stacks axum apps build with tower-http: `TraceLayer`, `CorsLayer`,
//! `TimeoutLayer` and `CompressionLayer` inside and outside `Vigil`, each stack served by a
//! real axum server on 127.0.0.1 and checked with a real hyper client; and the profiler's
//! exemption from the timebox in either order.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use axum::{Extension, Router};
use common::serve;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::map_response_body::MapResponseBodyLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_vigil::profiler::{ProfilerLayer, SharedSecret};
use tower_vigil::timebox::{Deadline, TimeboxLayer};
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

const SECRET: &str = "stack-fit-secret-0123456789";
const ORIGIN: &str = "https://app.example.com";

/// Which timeout fires first: tower-http's (408) or the timebox's hard deadline (503).
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    tower_http: Duration,
    timebox: Duration,
}

const TOWER_HTTP_FIRST: Timeouts = Timeouts {
    tower_http: Duration::from_millis(200),
    timebox: Duration::from_secs(3),
};

const TIMEBOX_FIRST: Timeouts = Timeouts {
    tower_http: Duration::from_secs(3),
    timebox: Duration::from_millis(300),
};

/// Long enough for `CompressionLayer` (it skips bodies under 32 bytes) and easy to compare.
fn page() -> String {
    "tower-vigil fits every stack. ".repeat(100)
}

fn routes() -> Router {
    Router::new().route("/", get(|| async { page() })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "too late"
        }),
    )
}

/// Profiler, watchdog and timebox over one core; the timebox handle reads its counters.
fn vigil(timeouts: Timeouts) -> (Vigil, TimeboxLayer) {
    let timebox = TimeboxLayer::builder(timeouts.timebox)
        .resolution(Duration::from_millis(10))
        .build()
        .unwrap();
    let vigil = Vigil::new()
        .profiler(ProfilerLayer::new().authorize(SharedSecret::new(SECRET)))
        .watchdog(WatchdogLayer::new(Duration::from_secs(30)))
        .timebox(timebox.clone());
    (vigil, timebox)
}

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET])
}

fn tower_http_timeout(timeouts: Timeouts) -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeouts.tower_http)
}

/// `Vigil` innermost: every tower-http layer wraps vigil's response bodies.
fn vigil_inside(timeouts: Timeouts) -> (Router, TimeboxLayer) {
    let (vigil, timebox) = vigil(timeouts);
    let app = routes()
        .layer(vigil)
        .layer(CompressionLayer::new())
        .layer(tower_http_timeout(timeouts))
        .layer(cors())
        .layer(TraceLayer::new_for_http());
    (app, timebox)
}

/// `Vigil` outermost: vigil wraps every tower-http layer.
fn vigil_outside(timeouts: Timeouts) -> (Router, TimeboxLayer) {
    let (vigil, timebox) = vigil(timeouts);
    let app = routes()
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(cors())
                .layer(tower_http_timeout(timeouts))
                .layer(CompressionLayer::new()),
        )
        .layer(vigil);
    (app, timebox)
}

/// `Vigil` between them, in one `ServiceBuilder`: tracing and compression outside, CORS and
/// tower-http's timeout inside.
fn vigil_between(timeouts: Timeouts) -> (Router, TimeboxLayer) {
    let (vigil, timebox) = vigil(timeouts);
    let app = routes().layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(CompressionLayer::new())
            .layer(vigil)
            .layer(cors())
            .layer(tower_http_timeout(timeouts)),
    );
    (app, timebox)
}

/// `Vigil` around the whole `Router`, given to `axum::serve`, which needs `Response<Body>`:
/// the one-line fix the docs give.
async fn serve_vigil_around_router(timeouts: Timeouts) -> (SocketAddr, TimeboxLayer) {
    let (vigil, timebox) = vigil(timeouts);
    let router = routes().layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(cors())
            .layer(tower_http_timeout(timeouts))
            .layer(CompressionLayer::new()),
    );
    let app = ServiceBuilder::new()
        .layer(MapResponseBodyLayer::new(Body::new))
        .layer(vigil)
        .service(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::ServiceExt::<Request>::into_make_service(app);
        axum::serve(listener, app).await.unwrap();
    });
    (addr, timebox)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(request.body(Empty::new()).unwrap()),
    )
    .await
    .expect("an answer within 10 s")
    .expect("request failed");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn gunzip(body: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .expect("a gzip body");
    text
}

/// A normal request, a compressed one, a CORS preflight and the timeout that `timeouts`
/// makes fire first, through the stack served at `addr`.
async fn check_stack(name: &str, addr: SocketAddr, timeouts: Timeouts, timebox: &TimeboxLayer) {
    let plain = send(addr, Method::GET, "/", &[]).await;
    assert_eq!(plain.status, StatusCode::OK, "{name}");
    assert!(!plain.headers.contains_key("content-encoding"), "{name}");
    assert_eq!(plain.body, page().as_bytes(), "{name}");

    let gzipped = send(addr, Method::GET, "/", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzipped.status, StatusCode::OK, "{name}");
    assert_eq!(gzipped.headers["content-encoding"], "gzip", "{name}");
    assert!(gzipped.body.len() < page().len() / 4, "{name}: compressed");
    assert_eq!(gunzip(&gzipped.body), page(), "{name}");

    let preflight = send(
        addr,
        Method::OPTIONS,
        "/",
        &[("origin", ORIGIN), ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(preflight.status, StatusCode::OK, "{name}");
    assert_eq!(
        preflight.headers["access-control-allow-origin"], "*",
        "{name}"
    );
    assert!(
        preflight.headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET"),
        "{name}"
    );

    let timeouts_before = timebox.stats().hard_timeouts;
    let started = Instant::now();
    let slow = send(addr, Method::GET, "/slow", &[]).await;
    let elapsed = started.elapsed();
    let (expected, after, by_timebox) = if timeouts.tower_http < timeouts.timebox {
        (StatusCode::REQUEST_TIMEOUT, timeouts.tower_http, 0)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, timeouts.timebox, 1)
    };
    assert_eq!(slow.status, expected, "{name}: {timeouts:?}");
    assert!(
        elapsed >= after && elapsed < after + Duration::from_secs(1),
        "{name}: {elapsed:?}"
    );
    assert_eq!(
        timebox.stats().hard_timeouts - timeouts_before,
        by_timebox,
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_fits_inside_outside_and_between_tower_http_layers() {
    type Stack = fn(Timeouts) -> (Router, TimeboxLayer);
    let stacks: [(&str, Stack); 3] = [
        ("vigil inside", vigil_inside),
        ("vigil outside", vigil_outside),
        ("vigil between", vigil_between),
    ];
    for (name, stack) in stacks {
        for timeouts in [TOWER_HTTP_FIRST, TIMEBOX_FIRST] {
            let (app, timebox) = stack(timeouts);
            let addr = serve(app).await;
            check_stack(name, addr, timeouts, &timebox).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_around_a_whole_router_serves_with_axum_serve() {
    for timeouts in [TOWER_HTTP_FIRST, TIMEBOX_FIRST] {
        let (addr, timebox) = serve_vigil_around_router(timeouts).await;
        check_stack("vigil around the router", addr, timeouts, &timebox).await;
    }
}

/// Layer order for the profiler: outside or inside the timebox, a profiled request is exempt.
const HARD: Duration = Duration::from_millis(300);
const SLOW: Duration = Duration::from_millis(600);

/// What the slow handler saw of its deadline: whether it had one, and whether it was
/// cancelled when the handler finished.
#[derive(Clone, Default)]
struct Seen {
    had_deadline: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
}

fn slow_route(seen: Seen) -> Router {
    Router::new().route(
        "/slow",
        get(move |extension: Option<Extension<Deadline>>| async move {
            // What the `Deadline` extractor does, in every feature combination.
            let deadline = extension
                .map(|Extension(deadline)| deadline)
                .or_else(Deadline::of_request);
            tokio::time::sleep(SLOW).await;
            seen.had_deadline
                .store(deadline.is_some(), Ordering::SeqCst);
            seen.cancelled
                .store(deadline.is_some_and(|d| d.is_cancelled()), Ordering::SeqCst);
            "done"
        }),
    )
}

fn hard_timebox(hard: Duration, deadline_extension: bool) -> TimeboxLayer {
    TimeboxLayer::builder(hard)
        .resolution(Duration::from_millis(10))
        .deadline_extension(deadline_extension)
        .build()
        .unwrap()
}

fn profiler() -> ProfilerLayer {
    ProfilerLayer::new().authorize(SharedSecret::new(SECRET))
}

/// An unprofiled request gets the 503 at the hard deadline; a profiled one runs to its end
/// and gets its flamegraph.
async fn check_profile_is_exempt(name: &str, addr: SocketAddr, timebox: &TimeboxLayer) {
    let unprofiled = send(addr, Method::GET, "/slow", &[]).await;
    assert_eq!(unprofiled.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
    assert_eq!(timebox.stats().hard_timeouts, 1, "{name}");

    let started = Instant::now();
    let profiled = send(
        addr,
        Method::GET,
        "/slow?__profile__",
        &[("x-vigil-secret", SECRET)],
    )
    .await;
    let body = String::from_utf8_lossy(&profiled.body);
    assert_eq!(profiled.status, StatusCode::OK, "{name}: {body}");
    // The flamegraph needs the `flamegraph` feature; the page is there either way.
    assert!(
        body.contains("<svg") || !cfg!(feature = "flamegraph"),
        "{name}: {body}"
    );
    assert!(started.elapsed() >= SLOW, "{name}");
    assert_eq!(
        timebox.stats().hard_timeouts,
        1,
        "{name}: only the unprofiled"
    );
    assert!(
        common::wait_until(Duration::from_secs(2), || timebox.stats().in_flight == 0).await,
        "{name}: the profiled request is released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiled_request_is_exempt_with_the_profiler_outside_the_timebox() {
    let seen = Seen::default();
    let timebox = hard_timebox(HARD, true);
    let app = slow_route(seen.clone())
        .layer(timebox.clone())
        .layer(profiler());
    let addr = serve(app).await;
    check_profile_is_exempt("profiler outside", addr, &timebox).await;
    // The timebox let the profiled request through untouched; the handler's deadline never
    // passes.
    assert!(seen.had_deadline.load(Ordering::SeqCst));
    assert!(!seen.cancelled.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiled_request_is_exempt_with_the_profiler_inside_the_timebox() {
    let seen = Seen::default();
    let timebox = hard_timebox(HARD, true);
    let app = slow_route(seen.clone())
        .route_layer(profiler())
        .layer(timebox.clone());
    let addr = serve(app).await;
    check_profile_is_exempt("profiler inside", addr, &timebox).await;
    // The profiler lifted the request's deadlines: past the soft deadline, it is not cancelled.
    assert!(seen.had_deadline.load(Ordering::SeqCst));
    assert!(!seen.cancelled.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiled_request_is_exempt_inside_a_timebox_without_its_deadline_extension() {
    let seen = Seen::default();
    let timebox = hard_timebox(HARD, false);
    let app = slow_route(seen.clone())
        .route_layer(profiler())
        .layer(timebox.clone());
    let addr = serve(app).await;
    check_profile_is_exempt("profiler inside, no extension", addr, &timebox).await;
    // The profiler lifted the deadlines of the request being called; the handler's extractor
    // built its deadline on demand and saw them lifted.
    assert!(seen.had_deadline.load(Ordering::SeqCst));
    assert!(!seen.cancelled.load(Ordering::SeqCst));
}
