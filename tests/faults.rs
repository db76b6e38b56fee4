//! Regressions of faults found by probing: ids shared between watchdogs, panics answered 503,
//! completion records with another request's status, memory held by reused slots.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_vigil::report::{ReportKind, StackStatus};
use tower_vigil::timebox::TimeboxLayer;
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

#[inline(never)]
fn vigil_service_one(duration: Duration) {
    std::thread::sleep(duration);
}

#[inline(never)]
fn vigil_service_two(duration: Duration) {
    std::thread::sleep(duration);
}

/// Two watchdogs built separately (two routers of one process) get requests on one thread, in
/// turn. Each report must name its own service's function: with ids numbered per watchdog, the
/// first requests of both had the same id and a capture could land in the other's request.
#[test]
fn two_watchdogs_never_share_ids_or_swap_stacks() {
    let (one, two) = (Collect::default(), Collect::default());
    let build = |collect: &Collect| {
        WatchdogLayer::builder(Duration::from_millis(60))
            .recapture_at([])
            .resolution(Duration::from_millis(5))
            .sink(collect.clone())
            .build()
            .unwrap()
    };
    let (watchdog_one, watchdog_two) = (build(&one), build(&two));
    let service_one = watchdog_one.layer(service_fn(|_: Request<()>| async {
        vigil_service_one(Duration::from_millis(150));
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let service_two = watchdog_two.layer(service_fn(|_: Request<()>| async {
        vigil_service_two(Duration::from_millis(150));
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const ROUNDS: usize = 6;
    runtime.block_on(async {
        for _ in 0..ROUNDS {
            service_one.clone().oneshot(Request::new(())).await.unwrap();
            service_two.clone().oneshot(Request::new(())).await.unwrap();
        }
    });
    assert!(watchdog_one.flush(Duration::from_secs(10)));
    assert!(watchdog_two.flush(Duration::from_secs(10)));
    let slow = |collect: &Collect| {
        collect
            .all()
            .into_iter()
            .filter(|r| r.kind == ReportKind::Slow)
            .collect::<Vec<_>>()
    };
    let (reports_one, reports_two) = (slow(&one), slow(&two));
    assert_eq!(reports_one.len(), ROUNDS);
    assert_eq!(reports_two.len(), ROUNDS);
    for report in &reports_one {
        assert!(
            !reports_two
                .iter()
                .any(|r| r.request_id == report.request_id),
            "request id {} used by both watchdogs",
            report.request_id
        );
    }
    for (reports, own, other) in [
        (&reports_one, "vigil_service_one", "vigil_service_two"),
        (&reports_two, "vigil_service_two", "vigil_service_one"),
    ] {
        for report in reports {
            let functions = stack_functions(report);
            assert!(
                !functions.iter().any(|f| f.contains(other)),
                "a report of {own} holds the stack of {other}: {functions:?}"
            );
            if report.stack_status == StackStatus::Captured {
                assert!(functions.iter().any(|f| f.contains(own)), "{functions:?}");
            }
        }
    }
}

fn panics_on_even(request: Request<usize>) -> BoxFuture {
    let n = *request.body();
    Box::pin(async move {
        tokio::task::yield_now().await;
        if n % 2 == 0 {
            std::panic::panic_any("vigil test panic");
        }
        Ok(Response::new(String::from("ok")))
    })
}

/// A panic in an isolated handler reaches the client as it would without the timebox, never as
/// a 503 counted as a timeout, even while other requests reuse the panicking request's slot.
#[test]
fn a_panicking_handler_is_never_answered_503() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let timebox = runtime.block_on(async { TimeboxLayer::new(Duration::from_secs(20)) });
    let service = timebox.layer(service_fn(panics_on_even));
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (ok, panicked, timeouts) = runtime.block_on(async {
        let tasks: Vec<_> = (0..4000)
            .map(|n| {
                let service = service.clone();
                tokio::spawn(async move { service.oneshot(Request::new(n)).await })
            })
            .collect();
        let (mut ok, mut panicked, mut timeouts) = (0, 0, 0);
        for task in tasks {
            match task.await {
                Ok(Ok(response)) if response.status() == StatusCode::OK => ok += 1,
                Ok(Ok(_)) => timeouts += 1,
                Ok(Err(never)) => match never {},
                Err(error) if error.is_panic() => panicked += 1,
                Err(error) => panic!("{error}"),
            }
        }
        (ok, panicked, timeouts)
    });
    std::panic::set_hook(previous_hook);
    assert_eq!(timeouts, 0, "panics answered with the timeout response");
    assert_eq!((ok, panicked), (2000, 2000));
    assert_eq!(timebox.stats().hard_timeouts, 0);
}

/// A request dropped without a response (the client went away) must not inherit the status of
/// the slot's previous request, and a request answered by the timebox is recorded with the
/// status the client got.
#[test]
fn completion_records_carry_the_status_the_client_got() {
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(Duration::from_millis(50))
        .recapture_at([])
        .capture_stacks(false)
        .resolution(Duration::from_millis(5))
        .sink(collect.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = watchdog.clone().layer(service_fn(move |_: Request<()>| {
        let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Same thread, so the second request reuses the first one's slot.
        let first = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        // Its body ends here, and with it the request.
        drop(first);
        let gone = tokio::time::timeout(
            Duration::from_millis(300),
            service.clone().oneshot(Request::new(())),
        )
        .await;
        assert!(gone.is_err(), "the client gave up");
    });
    let completed = collect
        .wait_for(Duration::from_secs(10), |r| r.kind == ReportKind::Completed)
        .expect("a completion record");
    let completion = completed.completion.expect("completion details");
    assert_eq!(completion.status, None, "the client got no response");

    // Answered by the timebox's hard deadline: the record says 503.
    let collect = Collect::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (watchdog, timebox) = runtime.block_on(async {
        let watchdog = WatchdogLayer::builder(Duration::from_millis(50))
            .recapture_at([])
            .capture_stacks(false)
            .resolution(Duration::from_millis(5))
            .sink(collect.clone())
            .build()
            .unwrap();
        let timebox = TimeboxLayer::builder(Duration::from_millis(200))
            .resolution(Duration::from_millis(5))
            .build()
            .unwrap();
        (watchdog, timebox)
    });
    let service = Vigil::new()
        .watchdog(watchdog.clone())
        .timebox(timebox)
        .layer(service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let response = runtime.block_on(service.oneshot(Request::new(()))).unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let completed = collect
        .wait_for(Duration::from_secs(10), |r| r.kind == ReportKind::Completed)
        .expect("a completion record");
    assert_eq!(completed.completion.unwrap().status, Some(503));
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Copied request values are capped, so a thousand concurrent requests with a 300 KB header
/// do not leave 300 MB behind in the registry's reused slots.
#[test]
fn huge_headers_are_capped_and_their_memory_given_back() {
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(Duration::from_millis(40))
        .recapture_at([])
        .capture_stacks(false)
        .resolution(Duration::from_millis(5))
        .sink(collect.clone())
        .build()
        .unwrap();
    let huge =
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(vec![b'a'; 300 * 1024])).unwrap();
    let long_path = format!("/{}", "p".repeat(20_000));
    let service = watchdog.clone().layer(service_fn(|_: Request<()>| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = resident_bytes();
    runtime.block_on(async {
        let mut pending = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let request = Request::get("/upload")
                .header("user-agent", huge.clone())
                .body(())
                .unwrap();
            let mut service = service.clone();
            pending.spawn(service.call(request));
        }
        while let Some(done) = pending.join_next().await {
            done.unwrap().unwrap();
        }
    });
    let after = resident_bytes();
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "resident memory grew by {} MB",
        (after - before) >> 20
    );
    // One long URI, cut the same way.
    assert!(watchdog.flush(Duration::from_secs(10)));
    runtime.block_on(async {
        let request = Request::get(long_path.as_str()).body(()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    });
    let report = collect
        .wait_for(Duration::from_secs(10), |r| r.uri == "/upload")
        .expect("a slow report");
    let agent = &report
        .headers
        .iter()
        .find(|(name, _)| name == "user-agent")
        .unwrap()
        .1;
    assert!(agent.len() < 1100, "{} bytes", agent.len());
    assert!(agent.contains("truncated, 307200 bytes"), "{agent}");
    let long = collect
        .wait_for(Duration::from_secs(10), |r| r.uri.starts_with("/ppp"))
        .expect("a report of the long URI");
    assert!(long.uri.len() < 4200, "{} bytes", long.uri.len());
    assert!(
        long.uri.ends_with("…[truncated, 20001 bytes]"),
        "{}",
        &long.uri[4000..]
    );
}

/// Blocks every real-time signal on the calling thread for `duration`, as code inside a C
/// library or in uninterruptible IO may: a capture of this thread is never answered.
#[inline(never)]
fn vigil_signals_blocked(duration: Duration) {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; pthread_sigmask only changes
    // the calling thread's mask, and the old mask is put back before returning.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        std::thread::sleep(duration);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// Captures that nobody answers must not hold up deadlines: with 16 threads that have the
/// capture signal blocked, a 1 s hard deadline still answers within two ticks of itself.
/// Before the monitor stopped waiting on captures, it answered at 3 s.
#[test]
fn unanswered_captures_do_not_delay_deadlines() {
    const TICK: Duration = Duration::from_millis(20);
    const HARD: Duration = Duration::from_secs(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(20)
        .enable_all()
        .build()
        .unwrap();
    let (watchdog, timebox) = runtime.block_on(async {
        let watchdog = WatchdogLayer::builder(Duration::from_millis(100))
            .recapture_at([])
            .resolution(TICK)
            .build()
            .unwrap();
        let timebox = TimeboxLayer::builder(HARD)
            .grace(Duration::from_millis(200))
            .resolution(TICK)
            .build()
            .unwrap();
        (watchdog, timebox)
    });
    let vigil = Vigil::new().watchdog(watchdog.clone()).timebox(timebox);
    let blocked = vigil.layer(service_fn(|_: Request<()>| async {
        vigil_signals_blocked(Duration::from_millis(2500));
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let waiting = vigil.layer(service_fn(|_: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let elapsed = runtime.block_on(async {
        let mut wedged = Vec::new();
        for _ in 0..16 {
            wedged.push(tokio::spawn(blocked.clone().oneshot(Request::new(()))));
        }
        let started = std::time::Instant::now();
        let response = waiting.oneshot(Request::new(())).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        for task in wedged {
            let _ = task.await;
        }
        elapsed
    });
    assert!(
        elapsed <= HARD + 2 * TICK + Duration::from_millis(60),
        "the 1 s deadline answered after {elapsed:?}"
    );
    assert!(watchdog.flush(Duration::from_secs(10)));
    assert!(
        watchdog.stats().capture_timeouts >= 16,
        "{:?}",
        watchdog.stats()
    );
}
