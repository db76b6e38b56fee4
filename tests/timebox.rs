//! End-to-end: the timebox through real axum servers on 127.0.0.1 and a real HTTP client.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::report::{ReportKind, ReportTrigger, StackStatus};
use tower_vigil::timebox::{
    spawn_blocking, timebox, Deadline, DeadlineKind, Isolation, Quota, TimeboxBuilder, TimeboxLayer,
};
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

const TICK: Duration = Duration::from_millis(20);
const HARD: Duration = Duration::from_millis(300);

fn builder() -> TimeboxBuilder {
    TimeboxLayer::builder(HARD)
        .grace(Duration::from_millis(100))
        .resolution(TICK)
}

fn layer() -> TimeboxLayer {
    builder().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_answers_503_on_time_and_runs_destructors() {
    let drops = DropCounter::default();
    let counter = drops.clone();
    let timebox = layer();
    let app = never_answering_route("/slow", counter).layer(timebox.clone());
    let addr = serve(app).await;
    let started = Instant::now();
    let (status, headers, body) = http_get_full(addr, "/slow", &[]).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "5");
    assert!(body.contains("took too long"), "{body}");
    assert!(elapsed >= HARD, "{elapsed:?}");
    // Two monitor ticks, plus a little for loopback HTTP.
    assert!(
        elapsed <= HARD + 2 * TICK + Duration::from_millis(15),
        "{elapsed:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || drops.balanced()).await);
    assert_eq!(drops.dropped.load(Ordering::SeqCst), 1);
    let stats = timebox.stats();
    assert_eq!(stats.hard_timeouts, 1);
    assert_eq!(stats.soft_cancellations, 1);
    assert_eq!(stats.soft_cancellations_honoured, 0);
    assert_eq!(stats.wedged, 0, "a pending request is not wedged");
}

/// The response future keeps the deadline's waker only once the handler waits, so a deadline
/// that fires while the first poll blocks the thread wakes nobody. The future must see it when
/// the handler yields: a 503 then, not a request left waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_fires_in_the_first_poll_is_answered_when_the_handler_yields() {
    let drops = DropCounter::default();
    let counter = drops.clone();
    // Long enough for the monitor to fire while the thread is held, even on a loaded machine.
    let blocked_for = HARD + 10 * TICK;
    let timebox = builder().isolation_mode(Isolation::Never).build().unwrap();
    let app = Router::new()
        .route(
            "/block-then-wait",
            get(move || {
                let guard = counter.guard();
                async move {
                    let _guard = guard;
                    // Holds this worker thread past the hard deadline, in the first poll.
                    std::thread::sleep(blocked_for);
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        )
        .layer(timebox.clone());
    let addr = serve(app).await;
    let started = Instant::now();
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        http_get_full(addr, "/block-then-wait", &[]),
    )
    .await
    .expect("the request is answered once the handler yields");
    let elapsed = started.elapsed();
    let (status, _, body) = answered.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(elapsed >= blocked_for, "{elapsed:?}");
    assert!(
        elapsed <= blocked_for + Duration::from_millis(150),
        "answered when the handler yielded, not a tick later: {elapsed:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || drops.balanced()).await);
    let stats = timebox.stats();
    assert_eq!(stats.hard_timeouts, 1);
    assert_eq!(
        stats.wedged, 1,
        "its thread was held when the deadline fired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_honours_the_soft_deadline_answers_itself() {
    // Its deadline is built on demand, and cancelled by the monitor at the soft deadline.
    let timebox = layer();
    let app = Router::new()
        .route(
            "/export",
            get(|| async move {
                let deadline = Deadline::of_request().expect("a timeboxed request");
                let work = tokio::time::sleep(Duration::from_secs(30));
                tokio::select! {
                    _ = work => (http::StatusCode::OK, "done".to_owned()),
                    _ = deadline.cancelled() => (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("rolled back, {:?} left", deadline.remaining()),
                    ),
                }
            }),
        )
        .layer(timebox.clone());
    let addr = serve(app).await;
    let started = Instant::now();
    let (status, body) = http_get(addr, "/export", &[]).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 500);
    assert_eq!(body, "rolled back, 0ns left");
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < HARD,
        "{elapsed:?}"
    );
    let stats = timebox.stats();
    assert_eq!(stats.soft_cancellations_honoured, 1);
    assert_eq!(stats.hard_timeouts, 0);
}

#[inline(never)]
fn vigil_wedged_work(duration: Duration) {
    std::thread::sleep(duration);
}

#[test]
fn a_handler_blocking_its_thread_still_gets_a_503_on_time() {
    let drops = DropCounter::default();
    let counter = drops.clone();
    let timebox = builder().isolation_mode(Isolation::Always).build().unwrap();
    let app = Router::new()
        .route(
            "/wedge",
            get(move || {
                let guard = counter.guard();
                async move {
                    let _guard = guard;
                    vigil_wedged_work(Duration::from_millis(1200));
                    tokio::task::yield_now().await;
                    "too late"
                }
            }),
        )
        .layer(timebox.clone());
    // Two workers: the handler blocks one, the other sends the 503.
    let (addr, server) = serve_on_own_runtime(app, 2);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (status, _) = client.block_on(http_get(addr, "/wedge", &[]));
    let elapsed = started.elapsed();
    assert_eq!(status, 503);
    assert!(
        elapsed <= HARD + 2 * TICK + Duration::from_millis(15),
        "{elapsed:?}"
    );
    let stats = timebox.stats();
    assert_eq!(stats.wedged, 1);
    assert_eq!(stats.in_flight, 1, "the wedged work is still running");
    // Once the thread returns to the runtime, the aborted task drops the handler's future.
    client.block_on(async {
        assert!(wait_until(Duration::from_secs(3), || drops.balanced()).await);
        assert!(wait_until(Duration::from_secs(1), || timebox.stats().in_flight == 0).await);
    });
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_timeboxes_and_the_request_deadline_the_earliest_wins() {
    // Outside any request.
    let inner_first = timebox(
        Duration::from_secs(5),
        timebox(
            Duration::from_millis(30),
            tokio::time::sleep(Duration::from_secs(5)),
        ),
    )
    .await;
    assert_eq!(
        inner_first.unwrap().unwrap_err().deadline(),
        DeadlineKind::Timebox
    );
    let started = Instant::now();
    let outer_first = timebox(
        Duration::from_millis(30),
        timebox(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_secs(5)),
        ),
    )
    .await;
    // The inner one is clamped to the outer deadline and says so.
    assert_eq!(
        outer_first.unwrap().unwrap_err().deadline(),
        DeadlineKind::Enclosing
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    // Inside a request whose soft deadline (200 ms) is earlier than the timebox's 5 s.
    let app = Router::new()
        .route(
            "/nested",
            get(|| async {
                let started = Instant::now();
                let result = timebox(
                    Duration::from_secs(5),
                    tokio::time::sleep(Duration::from_secs(5)),
                )
                .await;
                format!(
                    "{:?} after {}ms",
                    result.unwrap_err().deadline(),
                    started.elapsed().as_millis() / 100 * 100
                )
            }),
        )
        .layer(layer());
    let addr = serve(app).await;
    let (status, body) = http_get(addr, "/nested", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "Request after 200ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_shared_across_calls() {
    let quota = Quota::new(Duration::from_millis(200));
    let shared = quota.clone();
    let first = shared
        .timebox(tokio::time::sleep(Duration::from_millis(120)))
        .await;
    assert!(first.is_ok());
    assert!(quota.remaining() <= Duration::from_millis(80));
    let started = Instant::now();
    let second = quota
        .timebox(tokio::time::sleep(Duration::from_millis(120)))
        .await;
    assert_eq!(second.unwrap_err().deadline(), DeadlineKind::Quota);
    assert!(started.elapsed() < Duration::from_millis(110));
    assert_eq!(quota.remaining(), Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_code_sees_the_request_deadline() {
    let rounds = Arc::new(AtomicUsize::new(0));
    let seen = rounds.clone();
    let app = Router::new()
        .route(
            "/crunch",
            get(move || {
                let rounds = seen.clone();
                async move {
                    let result = spawn_blocking(move |deadline| {
                        while deadline.check().is_ok() {
                            std::thread::sleep(Duration::from_millis(5));
                            rounds.fetch_add(1, Ordering::SeqCst);
                        }
                        "stopped at the deadline"
                    })
                    .await;
                    match result {
                        Ok(message) => message.to_owned(),
                        Err(elapsed) => elapsed.to_string(),
                    }
                }
            }),
        )
        .layer(layer());
    let addr = serve(app).await;
    let started = Instant::now();
    let (status, body) = http_get(addr, "/crunch", &[]).await;
    assert_eq!(status, 200);
    assert!(
        body == "stopped at the deadline" || body == "deadline elapsed: the request's deadline",
        "{body}"
    );
    assert!(
        started.elapsed() < HARD,
        "answered by the handler, before the hard deadline"
    );
    // The loop may finish the round it was in; after that it must not go on.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = rounds.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        rounds.load(Ordering::SeqCst),
        after,
        "the blocking loop stopped"
    );
}

fn request_start(ago: Duration) -> String {
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - ago;
    format!("t={}", at.as_micros())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_queued_too_long_are_shed_and_bad_headers_ignored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let timebox = builder()
        .wait_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "served" }
            }),
        )
        .layer(timebox.clone());
    let addr = serve(app).await;
    let old = request_start(Duration::from_secs(5));
    let (status, headers, _) = http_get_full(addr, "/", &[("x-request-start", &old)])
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the service was not called"
    );
    let millis = format!(
        "{}",
        (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - Duration::from_secs(3))
            .as_millis()
    );
    assert_eq!(
        http_get(addr, "/", &[("x-request-start", &millis)]).await.0,
        503
    );

    let fresh = request_start(Duration::from_millis(100));
    let future = request_start(Duration::ZERO).replace("t=", "t=9");
    for header in [
        fresh.as_str(),
        "t=not-a-number",
        "t=-1700000000",
        "t=1",
        "t=99999999999999999999999999",
        future.as_str(),
        "",
    ] {
        let (status, body) = http_get(addr, "/", &[("x-request-start", header)]).await;
        assert_eq!((status, body.as_str()), (200, "served"), "{header:?}");
    }
    assert_eq!(timebox.stats().shed, 2);
}

/// A body that sends one chunk every `every`, `left` times.
struct SlowBody {
    interval: tokio::time::Interval,
    left: usize,
}

impl http_body::Body for SlowBody {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.interval.poll_tick(cx));
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data("chunk\n".into()))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_outlives_the_deadline_is_cut_off() {
    let timebox = builder().body_deadline(true).build().unwrap();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async {
                axum::body::Body::new(SlowBody {
                    interval: tokio::time::interval(Duration::from_millis(100)),
                    left: 20,
                })
            }),
        )
        .route(
            "/short",
            get(|| async {
                axum::body::Body::new(SlowBody {
                    interval: tokio::time::interval(Duration::from_millis(10)),
                    left: 3,
                })
            }),
        )
        .layer(timebox.clone());
    let addr = serve(app).await;
    let error = http_get_full(addr, "/stream", &[])
        .await
        .expect_err("the body must be cut off");
    assert!(error.contains("body failed"), "{error}");
    assert_eq!(timebox.stats().body_timeouts, 1);
    // A body that ends in time is untouched.
    let (status, _, body) = http_get_full(addr, "/short", &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "chunk\nchunk\nchunk\n"));
    assert_eq!(timebox.stats().body_timeouts, 1);
}

#[test]
fn escalation_is_called_after_repeated_wedges() {
    let escalations = Arc::new(AtomicUsize::new(0));
    let seen = escalations.clone();
    let timebox = builder()
        .isolation_mode(Isolation::Always)
        .escalate_after(2, Duration::from_secs(10), move |count| {
            assert_eq!(count, 2);
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/wedge",
            get(|| async {
                vigil_wedged_work(Duration::from_millis(500));
                "late"
            }),
        )
        .layer(timebox.clone());
    let (addr, server) = serve_on_own_runtime(app, 3);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        let (a, b) = tokio::join!(http_get(addr, "/wedge", &[]), http_get(addr, "/wedge", &[]));
        assert_eq!((a.0, b.0), (503, 503));
    });
    assert_eq!(timebox.stats().wedged, 2);
    assert_eq!(escalations.load(Ordering::SeqCst), 1);
    assert_eq!(timebox.stats().escalations, 1);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_off_switch_lets_requests_run() {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "finished"
            }),
        )
        .layer(builder().enabled(false).build().unwrap());
    let addr = serve(app).await;
    assert_eq!(
        http_get(addr, "/slow", &[]).await,
        (200, "finished".to_owned())
    );
}

#[test]
fn with_a_watchdog_in_the_stack_wedged_work_is_reported_with_its_stack() {
    init_tracing();
    let collect = Collect::default();
    let watchdog = WatchdogLayer::new(Duration::from_secs(10)).sink(collect.clone());
    let timebox = builder().isolation_mode(Isolation::Always).build().unwrap();
    let app = Router::new()
        .route(
            "/wedge",
            get(|| async {
                vigil_wedged_work(Duration::from_millis(900));
                "late"
            }),
        )
        .layer(
            Vigil::new()
                .watchdog(watchdog.clone())
                .timebox(timebox.clone()),
        );
    let (addr, server) = serve_on_own_runtime(app, 2);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, _) = client.block_on(http_get(addr, "/wedge", &[]));
    assert_eq!(status, 503);
    let hard = collect
        .wait_for(Duration::from_secs(10), |r| {
            r.trigger == ReportTrigger::HardDeadline
        })
        .expect("a report at the hard deadline");
    assert_eq!(hard.stack_status, StackStatus::Captured);
    assert!(stack_functions(&hard)
        .iter()
        .any(|f| f.contains("vigil_wedged_work")));
    let soft = collect
        .wait_for(Duration::from_secs(1), |r| {
            r.trigger == ReportTrigger::SoftDeadline
        })
        .expect("a report at the soft deadline");
    assert!(soft.elapsed < hard.elapsed);
    // The work finishes later; its completion record gives what the client got: the 503.
    let done = collect
        .wait_for(Duration::from_secs(5), |r| r.kind == ReportKind::Completed)
        .expect("completion record");
    assert_eq!(done.completion.unwrap().status, Some(503));
    assert_eq!(timebox.stats().wedged, 1);
    assert_eq!(watchdog.stats().reported, 2);
    drop(server);
}

#[tokio::test(flavor = "current_thread")]
async fn futures_that_are_not_send_are_timeboxed_inline() {
    use std::rc::Rc;
    use tower::{service_fn, Layer, ServiceExt};
    let alive = Rc::new(());
    let held = alive.clone();
    let service = service_fn(move |_: http::Request<()>| {
        let held = held.clone();
        async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }
    });
    let timebox = layer().inline();
    let service = timebox.layer(service);
    let started = Instant::now();
    let response = service.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() <= HARD + 2 * TICK + Duration::from_millis(10));
    assert_eq!(
        Rc::strong_count(&alive),
        1,
        "the handler future was dropped"
    );
    assert_eq!(timebox.stats().hard_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiled_request_is_not_killed_at_the_timebox_deadline() {
    use tower_vigil::profiler::{ProfilerLayer, SharedSecret};
    let timebox = layer();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(HARD + Duration::from_millis(200)).await;
                "done"
            }),
        )
        .layer(
            Vigil::new()
                .profiler(ProfilerLayer::new().authorize(SharedSecret::new("admin-token-123")))
                .timebox(timebox.clone()),
        );
    let addr = serve(app).await;
    // Not profiled: killed at the hard deadline.
    assert_eq!(http_get(addr, "/slow", &[]).await.0, 503);
    // Profiled: runs to the end on the profiling thread and returns its flamegraph.
    let started = Instant::now();
    let (status, body) = http_get(
        addr,
        "/slow?__profile__",
        &[("x-vigil-secret", "admin-token-123")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Without the `flamegraph` feature the page carries the folded stacks instead.
    assert!(
        body.contains("<svg") || !cfg!(feature = "flamegraph"),
        "{body}"
    );
    assert!(body.contains("Profile of <code>GET /slow</code>"), "{body}");
    assert!(started.elapsed() >= HARD + Duration::from_millis(200));
    assert_eq!(
        timebox.stats().hard_timeouts,
        1,
        "only the unprofiled request"
    );
}

/// By default a route is isolated once it has wedged: its first blocking request answers when
/// the handler returns (nothing can interrupt a blocked thread), every later one on time.
#[test]
fn adaptive_isolation_answers_on_time_from_a_routes_second_wedge() {
    let timebox = layer();
    adaptive_isolation_learns_the_route(&timebox, |app| app.layer(timebox.clone()));
}

/// With a watchdog, a request's route is hashed from the watchdog's copy of the request, and
/// only once it wedges: the route is learned the same way.
#[test]
fn adaptive_isolation_learns_the_route_from_a_watched_requests_copy() {
    let timebox = layer();
    let watchdog = WatchdogLayer::new(Duration::from_secs(10));
    adaptive_isolation_learns_the_route(&timebox, |app| {
        app.layer(
            Vigil::new()
                .watchdog(watchdog.clone())
                .timebox(timebox.clone()),
        )
    });
}

fn adaptive_isolation_learns_the_route(timebox: &TimeboxLayer, stack: impl Fn(Router) -> Router) {
    let app = Router::new()
        .route(
            "/wedge/{id}",
            get(|| async {
                vigil_wedged_work(Duration::from_millis(700));
                "late"
            }),
        )
        .route("/fast", get(|| async { "fast" }));
    let (addr, server) = serve_on_own_runtime(stack(app), 2);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (status, _) = client.block_on(http_get(addr, "/wedge/1?page=1", &[]));
    assert_eq!(status, 200, "the first wedge runs inline and finishes");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(timebox.stats().wedged, 1);
    // Same route (numeric segments collapsed, query aside): now in a task of its own, 503 on
    // time.
    let started = Instant::now();
    let (status, _) = client.block_on(http_get(addr, "/wedge/2", &[]));
    let elapsed = started.elapsed();
    assert_eq!(status, 503);
    assert!(
        elapsed <= HARD + 2 * TICK + Duration::from_millis(15),
        "{elapsed:?}"
    );
    assert_eq!(client.block_on(http_get(addr, "/fast", &[])).0, 200);
    drop(server);
}

/// What a handler sees of its deadline, as text: the extractor's kind of deadline, whether the
/// extension is there and agrees, and what `Deadline::of_request` gives in a spawned task.
#[cfg(feature = "axum")]
async fn describe_deadline(
    deadline: Deadline,
    extension: Option<axum::Extension<Deadline>>,
) -> String {
    let same = extension.as_ref().map(|axum::Extension(other)| {
        other.instant() == deadline.instant() && other.hard_instant() == deadline.hard_instant()
    });
    let current = Deadline::current().expect("a deadline in force while polled");
    let in_task = tokio::spawn(async { Deadline::of_request().is_some() })
        .await
        .unwrap();
    // A deadline taken along into the task still answers.
    let taken = deadline.clone();
    let taken_along = tokio::spawn(async move { taken.check().is_ok() })
        .await
        .unwrap();
    format!(
        "hard={} extension={same:?} current_is_request={} in_task={in_task} taken_along={taken_along} remaining_ms={}",
        deadline.hard_instant().is_some(),
        current.hard_instant() == deadline.hard_instant(),
        deadline.remaining().as_millis(),
    )
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_built_on_demand_and_the_extension_only_when_asked_for() {
    for (name, timebox) in [
        ("default", layer()),
        (
            "with the extension",
            builder().deadline_extension(true).build().unwrap(),
        ),
    ] {
        let app = Router::new()
            .route("/deadline", get(describe_deadline))
            .layer(timebox);
        let addr = serve(app).await;
        let (status, body) = http_get(addr, "/deadline", &[]).await;
        assert_eq!(status, 200, "{name}: {body}");
        let extension = if name == "default" {
            "None"
        } else {
            "Some(true)"
        };
        let expected = format!(
            "hard=true extension={extension} current_is_request=true in_task=false taken_along=true"
        );
        assert!(body.starts_with(&expected), "{name}: {body}");
        // The soft deadline is HARD minus the grace of 100 ms away, less the time taken so far.
        let remaining: u64 = body.rsplit('=').next().unwrap().parse().unwrap();
        assert!((100..=200).contains(&remaining), "{name}: {body}");
    }
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_takes_a_deadline_without_a_timebox_gets_a_500_that_says_why() {
    let app = Router::new()
        .route("/needs", get(|_deadline: Deadline| async { "unreachable" }))
        .route(
            "/optional",
            get(|deadline: Option<Deadline>| async move {
                format!("has_deadline={}", deadline.is_some())
            }),
        );
    let addr = serve(app).await;
    let (status, body) = http_get(addr, "/needs", &[]).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("not behind a TimeboxLayer or Vigil"),
        "{body}"
    );
    let (status, body) = http_get(addr, "/optional", &[]).await;
    assert_eq!((status, body.as_str()), (200, "has_deadline=false"));
}
