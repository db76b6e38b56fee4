//! End-to-end: real axum servers on 127.0.0.1, a real HTTP client, real files.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::report::{FrameOrigin, ReportKind, SlowRequestReport, StackStatus};
use tower_vigil::sink::{FileSink, Sink, SinkError};
use tower_vigil::watchdog::WatchdogLayer;

const THRESHOLD: Duration = Duration::from_millis(200);
const PATIENCE: Duration = Duration::from_secs(10);
/// The first report of a process waits for the debug info of the stack's code to load, which
/// takes up to a second in an unoptimized test binary.
const BLOCK_LONGER_THAN_A_COLD_SYMBOLIZER: Duration = Duration::from_millis(3000);

#[inline(never)]
fn vigil_blocking_work(duration: Duration) {
    std::thread::sleep(duration);
}

#[inline(never)]
fn vigil_busy_work(duration: Duration) -> u64 {
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < duration {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_handler_is_reported_with_its_stack_while_still_running() {
    init_tracing();
    let dir = temp_dir("blocking");
    let app = Router::new()
        .route(
            "/block",
            get(|| async {
                vigil_blocking_work(BLOCK_LONGER_THAN_A_COLD_SYMBOLIZER);
                "done"
            }),
        )
        .layer(WatchdogLayer::new(THRESHOLD).sink(FileSink::new(&dir).unwrap()));
    let addr = serve(app).await;
    let request = tokio::spawn(async move { http_get(addr, "/block", &[]).await });

    let report_dir = dir.clone();
    let path =
        tokio::task::spawn_blocking(move || wait_for_file_ending(&report_dir, "-1.json", PATIENCE))
            .await
            .unwrap()
            .expect("no report file");
    assert!(
        !request.is_finished(),
        "the report must arrive while the request is still running"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["stack_status"]["status"], "captured");
    let text = std::fs::read_to_string(path.with_extension("txt")).unwrap();
    assert!(text.starts_with("Slow request intercepted at "), "{text}");
    assert!(text.contains("GET /block HTTP/1.1"), "{text}");
    assert!(text.contains("vigil_blocking_work"), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    let frames = json["stack"].as_array().unwrap();
    let app_frame = frames
        .iter()
        .find(|f| f["origin"] == "app")
        .expect("an application frame");
    assert!(app_frame["function"]
        .as_str()
        .unwrap()
        .contains("vigil_blocking_work"));

    assert_eq!(request.await.unwrap(), (200, "done".to_owned()));
    let done =
        tokio::task::spawn_blocking(move || wait_for_file_ending(&dir, "-done.txt", PATIENCE))
            .await
            .unwrap()
            .expect("no completion record");
    let done = std::fs::read_to_string(done).unwrap();
    assert!(
        done.starts_with("Slow request completed after 3."),
        "{done}"
    );
    assert!(done.contains("with status 200"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_handler_is_reported_with_the_busy_function() {
    init_tracing();
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/busy",
            get(|| async { vigil_busy_work(Duration::from_millis(1000)).to_string() }),
        )
        .layer(WatchdogLayer::new(THRESHOLD).sink(collect.clone()));
    let addr = serve(app).await;
    let request = tokio::spawn(async move { http_get(addr, "/busy", &[]).await });
    let sink = collect.clone();
    let report = tokio::task::spawn_blocking(move || {
        sink.wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
    })
    .await
    .unwrap()
    .expect("no report");
    // Taken while the handler was still busy.
    assert!(
        report.elapsed < Duration::from_secs(1),
        "{}",
        report.to_text()
    );
    assert_eq!(report.stack_status, StackStatus::Captured);
    let top = report.top_app_frame().expect("an application frame");
    assert!(
        top.function.as_deref().unwrap().contains("vigil_busy_work"),
        "{}",
        report.to_text()
    );
    let thread = report.thread.as_ref().unwrap().name.clone().unwrap();
    assert!(thread.starts_with("tokio-r"), "{thread}");
    assert_eq!(request.await.unwrap().0, 200);
}

#[tracing::instrument]
async fn load_report(id: u32) -> String {
    query_database("select * from reports").await
}

#[tracing::instrument]
async fn query_database(sql: &str) -> String {
    tokio::time::sleep(Duration::from_millis(800)).await;
    format!("rows for {sql}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handler_is_reported_with_its_open_spans() {
    init_tracing();
    let collect = Collect::default();
    let app = Router::new()
        .route("/report", get(|| async { load_report(42).await }))
        .layer(WatchdogLayer::new(THRESHOLD).sink(collect.clone()));
    let addr = serve(app).await;
    let request = tokio::spawn(async move { http_get(addr, "/report", &[]).await });
    let sink = collect.clone();
    let report = tokio::task::spawn_blocking(move || {
        sink.wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
    })
    .await
    .unwrap()
    .expect("no report");
    assert!(!request.is_finished());
    assert_eq!(report.stack_status, StackStatus::Pending);
    assert!(report.spans.installed);
    let chains = report.spans.chains();
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert!(
        chains[0]
            .starts_with("load_report{id=42} > query_database{sql=\"select * from reports\"} "),
        "{chains:?}"
    );
    let text = report.to_text();
    assert!(text.contains("the request is pending"), "{text}");
    assert!(
        text.contains("load_report{id=42} > query_database"),
        "{text}"
    );
    assert_eq!(request.await.unwrap().0, 200);
}

#[test]
fn a_runtime_whose_workers_are_all_blocked_still_gets_its_report() {
    init_tracing();
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/block",
            get(|| async {
                vigil_blocking_work(BLOCK_LONGER_THAN_A_COLD_SYMBOLIZER);
                "done"
            }),
        )
        .layer(WatchdogLayer::new(THRESHOLD).sink(collect.clone()));
    // One worker: when it blocks, the server's runtime makes no progress at all.
    let (addr, server) = serve_on_own_runtime(app, 1);
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let request = client.spawn(async move { http_get(addr, "/block", &[]).await });
    let report = collect
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("no report from a wedged runtime");
    assert!(!request.is_finished());
    assert!(stack_functions(&report)
        .iter()
        .any(|f| f.contains("vigil_blocking_work")));
    assert_eq!(
        report.thread.unwrap().name.as_deref(),
        Some("server-worker")
    );
    assert_eq!(client.block_on(request).unwrap().0, 200);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_requests_and_ignored_routes_are_not_reported() {
    init_tracing();
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .sink(collect.clone())
        .ignore_path("/health")
        .ignore_path("/stream/*")
        .ignore_if(|parts| parts.headers.contains_key("x-long-poll"))
        .build()
        .unwrap();
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        "slow on purpose"
    };
    let app = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route("/health", get(slow))
        .route("/stream/{id}", get(slow))
        .route("/poll", get(slow))
        .layer(watchdog.clone());
    let addr = serve(app).await;
    for _ in 0..20 {
        assert_eq!(http_get(addr, "/fast", &[]).await.0, 200);
    }
    let (a, b, c) = tokio::join!(
        http_get(addr, "/health", &[]),
        http_get(addr, "/stream/7", &[]),
        http_get(addr, "/poll", &[("x-long-poll", "1")]),
    );
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));
    tokio::time::sleep(THRESHOLD).await;
    assert!(collect.all().is_empty(), "{:?}", collect.all());
    let stats = watchdog.stats();
    assert_eq!(stats.reported, 0);
    assert_eq!(stats.in_flight, 0);
    // The control: the same slow handler on a route that is not ignored is reported.
    assert_eq!(http_get(addr, "/poll", &[]).await.0, 200);
    assert!(collect
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .is_some());
}

/// Under a `Vigil` the request of an ignored route is still registered, for its deadlines: the
/// watchdog must neither report it (at the threshold or at a deadline) nor count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_routes_under_deadlines_get_their_503_and_no_report() {
    init_tracing();
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .sink(collect.clone())
        .ignore_path("/health")
        .build()
        .unwrap();
    let vigil = tower_vigil::Vigil::new()
        .watchdog(watchdog.clone())
        .timebox(tower_vigil::timebox::TimeboxLayer::new(
            Duration::from_millis(600),
        ));
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        "slow on purpose"
    };
    let app = Router::new()
        .route("/health", get(slow))
        .route("/work", get(slow))
        .layer(vigil);
    let addr = serve(app).await;
    let health = tokio::spawn(async move { http_get(addr, "/health", &[]).await });
    tokio::time::sleep(THRESHOLD * 2).await;
    assert_eq!(
        watchdog.stats().in_flight,
        0,
        "an ignored request is not the watchdog's"
    );
    assert_eq!(health.await.unwrap().0, 503);
    tokio::time::sleep(THRESHOLD).await;
    assert!(collect.all().is_empty(), "{:?}", collect.all());
    // The control: the same handler on a watched route is reported, at the threshold and at
    // its deadlines.
    assert_eq!(http_get(addr, "/work", &[]).await.0, 503);
    let report = collect
        .wait_for(PATIENCE, |r| r.kind == ReportKind::Slow)
        .expect("a report of the watched route");
    assert!(report.uri.ends_with("/work"), "{}", report.uri);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_report() {
    init_tracing();
    let dir = temp_dir("redaction");
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/account",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "ok"
            }),
        )
        .layer(
            WatchdogLayer::builder(THRESHOLD)
                // One capture: a recapture at 2× would race the end of the 400 ms handler.
                .recapture_at([])
                .sink(FileSink::new(&dir).unwrap())
                .sink(collect.clone())
                .report_headers([
                    http::header::HOST,
                    http::header::AUTHORIZATION,
                    http::header::COOKIE,
                    http::HeaderName::from_static("x-api-key"),
                ])
                .redact_header(http::HeaderName::from_static("x-api-key"))
                .redact_query_param("token")
                .build()
                .unwrap(),
        );
    let addr = serve(app).await;
    let (status, _) = http_get(
        addr,
        "/account?token=hunter2-query&page=3",
        &[
            ("authorization", "Bearer hunter2-bearer"),
            ("cookie", "session=hunter2-cookie"),
            ("x-api-key", "hunter2-key"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let sink = collect.clone();
    tokio::task::spawn_blocking(move || {
        sink.wait_for(PATIENCE, |r| r.kind == ReportKind::Completed)
    })
    .await
    .unwrap()
    .expect("completion record");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let contents = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!contents.contains("hunter2"), "secret leaked: {contents}");
        assert!(contents.contains("[redacted]"), "{contents}");
        assert!(contents.contains("page=3"), "{contents}");
        seen += 1;
    }
    assert_eq!(
        seen, 4,
        "a .txt and a .json for the slow report and the completion"
    );
    let report = collect.all().remove(0);
    assert_eq!(report.uri, "/account?token=[redacted]&page=3");
    assert!(report
        .headers
        .iter()
        .any(|(name, value)| name == "authorization" && value == "[redacted]"));
}

/// Two routes share one runtime thread, with run times that straddle the threshold, so
/// captures land as polls begin and end. A stack must never be shown for the wrong request.
#[test]
fn stacks_are_never_attributed_to_the_wrong_request() {
    init_tracing();
    #[inline(never)]
    fn vigil_route_a(d: Duration) {
        std::thread::sleep(d);
    }
    #[inline(never)]
    fn vigil_route_b(d: Duration) {
        std::thread::sleep(d);
    }
    let collect = Collect::default();
    let threshold = Duration::from_millis(30);
    let watchdog = WatchdogLayer::builder(threshold)
        .resolution(Duration::from_millis(1))
        .recapture_at([])
        .sink(collect.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/a/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    vigil_route_a(Duration::from_millis(ms));
                    "a"
                },
            ),
        )
        .route(
            "/b/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    vigil_route_b(Duration::from_millis(ms));
                    "b"
                },
            ),
        )
        .layer(watchdog.clone());
    let (addr, server) = serve_on_own_runtime(app, 1);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        for round in 0..12u64 {
            // Each request alone runs near the threshold; queued behind its sibling, it is
            // registered but not polled while the other blocks the single worker.
            let ms_a = 20 + (round * 3) % 25;
            let ms_b = 45 - (round * 3) % 25;
            let (path_a, path_b) = (format!("/a/{ms_a}"), format!("/b/{ms_b}"));
            let (a, b) = tokio::join!(http_get(addr, &path_a, &[]), http_get(addr, &path_b, &[]));
            assert_eq!((a.0, b.0), (200, 200));
        }
    });
    assert!(watchdog.flush(PATIENCE));
    let reports: Vec<SlowRequestReport> = collect
        .all()
        .into_iter()
        .filter(|r| r.kind == ReportKind::Slow)
        .collect();
    assert!(!reports.is_empty());
    // A capture may land while the request's own future does other work (routing, building
    // the response), so a stack need not show the route's function; it must never show the
    // other route's.
    let mut captured = 0;
    let mut in_own_function = 0;
    for report in &reports {
        if report.stack_status != StackStatus::Captured {
            continue;
        }
        captured += 1;
        let names = stack_functions(report).join("\n");
        let (own, other) = if report.uri.starts_with("/a/") {
            ("vigil_route_a", "vigil_route_b")
        } else {
            ("vigil_route_b", "vigil_route_a")
        };
        assert!(!names.contains(other), "{}", report.to_text());
        if names.contains(own) {
            in_own_function += 1;
        }
    }
    assert!(
        in_own_function > 0,
        "no capture showed its own function: {reports:#?}"
    );
    assert!(captured > 0, "no capture landed at all: {reports:#?}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_is_captured_again_at_multiples_of_the_threshold() {
    init_tracing();
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/long",
            get(|| async {
                vigil_blocking_work(Duration::from_millis(1000));
                "done"
            }),
        )
        .layer(WatchdogLayer::new(THRESHOLD).sink(collect.clone()));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/long", &[]).await.0, 200);
    let sink = collect.clone();
    tokio::task::spawn_blocking(move || {
        sink.wait_for(PATIENCE, |r| r.kind == ReportKind::Completed)
    })
    .await
    .unwrap()
    .expect("completion");
    let reports = collect.all();
    let captures: Vec<(u32, f64)> = reports
        .iter()
        .filter(|r| r.kind == ReportKind::Slow)
        .map(|r| (r.capture, r.elapsed.as_secs_f64()))
        .collect();
    assert_eq!(captures.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3]);
    for ((_, elapsed), multiple) in captures.iter().zip([1.0, 2.0, 4.0]) {
        let due = THRESHOLD.as_secs_f64() * multiple;
        assert!(*elapsed >= due && *elapsed < due + 0.15, "{captures:?}");
    }
    let done = reports.last().unwrap();
    assert_eq!(done.kind, ReportKind::Completed);
    assert_eq!(done.completion.as_ref().unwrap().status, Some(200));
    assert!(done.elapsed >= Duration::from_secs(1));
}

struct FailingSink(Arc<AtomicUsize>);

impl Sink for FailingSink {
    fn deliver(&self, _: &SlowRequestReport) -> Result<(), SinkError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(SinkError::new("mail server on fire"))
    }
}

struct PanickingSink;

impl Sink for PanickingSink {
    fn deliver(&self, _: &SlowRequestReport) -> Result<(), SinkError> {
        panic!("sink bug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sinks_never_affect_requests_and_are_counted() {
    init_tracing();
    let calls = Arc::new(AtomicUsize::new(0));
    let collect = Collect::default();
    let watchdog = WatchdogLayer::new(THRESHOLD)
        .sink(FailingSink(calls.clone()))
        .sink(PanickingSink)
        .sink(collect.clone());
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "fine"
            }),
        )
        .layer(watchdog.clone());
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/slow", &[]).await, (200, "fine".to_owned()));
    assert!(watchdog.flush(PATIENCE));
    let stats = watchdog.stats();
    assert_eq!(stats.reported, 1);
    assert_eq!(stats.completed, 1);
    assert_eq!(stats.sink_failures, 4, "{stats:?}");
    assert_eq!(stats.delivered, 2, "the healthy sink still got both");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(collect.all().len(), 2);
}

struct SlowSink;

impl Sink for SlowSink {
    fn deliver(&self, _: &SlowRequestReport) -> Result<(), SinkError> {
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_report_queue_drops_and_counts() {
    init_tracing();
    let watchdog = WatchdogLayer::builder(Duration::from_millis(50))
        .recapture_at([])
        .queue_capacity(1)
        .sink(SlowSink)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                "ok"
            }),
        )
        .layer(watchdog.clone());
    let addr = serve(app).await;
    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { http_get(addr, "/slow", &[]).await }))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().0, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = watchdog.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    // Every slow report and completion record is either queued or counted as dropped.
    assert_eq!(
        stats.reported + stats.completed + stats.dropped,
        20,
        "{stats:?}"
    );
}

#[test]
fn bad_configuration_fails_when_built() {
    assert!(WatchdogLayer::builder(Duration::ZERO).build().is_err());
    let dir = temp_dir("not-a-dir");
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let error = FileSink::new(file.join("reports")).unwrap_err();
    assert!(error.to_string().contains("cannot create"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_capture_can_be_switched_off() {
    init_tracing();
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/block",
            get(|| async {
                vigil_blocking_work(Duration::from_millis(400));
                "done"
            }),
        )
        .layer(
            WatchdogLayer::builder(THRESHOLD)
                .capture_stacks(false)
                .sink(collect.clone())
                .build()
                .unwrap(),
        );
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/block", &[]).await.0, 200);
    let report = collect
        .all()
        .into_iter()
        .find(|r| r.kind == ReportKind::Slow)
        .expect("report");
    assert_eq!(report.stack_status, StackStatus::Disabled);
    assert!(report.stack.is_empty());
    assert!(!report.stack.iter().any(|f| f.origin == FrameOrigin::App));
}
