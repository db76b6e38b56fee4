//! A request that is runnable but never polled, because other requests hold every worker. In
//! a binary of its own: the verdict depends on which threads are busy, so no other test may run
//! beside it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::report::{AwaitStatus, ReportKind};

#[inline(never)]
fn vigil_hogging_a_worker(duration: Duration) {
    std::thread::sleep(duration);
}

/// Both workers are blocked by other requests: the third, woken for its probe, is never polled.
/// Its report says so and shows the two blocking stacks. The app is called as a service on a
/// runtime of its own, so the test decides exactly which requests hold the two workers.
#[test]
fn a_request_nobody_polls_shows_the_threads_that_keep_the_workers_busy() {
    use tower::ServiceExt;
    let collect = Collect::default();
    let hogging = Arc::new(AtomicUsize::new(0));
    let hogs_started = hogging.clone();
    let watchdog = collecting_watchdog(Duration::from_millis(1500), &collect);
    let app = Router::new()
        .route(
            "/hog",
            get(move || {
                let hogging = hogging.clone();
                async move {
                    hogging.fetch_add(1, Ordering::SeqCst);
                    vigil_hogging_a_worker(Duration::from_millis(2500));
                    "hogged"
                }
            }),
        )
        .route(
            "/starved",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2000)).await;
                "starved"
            }),
        )
        .layer(watchdog);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let get_ = |path: &str| {
        let app = app.clone();
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        async move { app.oneshot(request).await.unwrap().status() }
    };
    let starved = runtime.spawn(get_("/starved"));
    std::thread::sleep(Duration::from_millis(100));
    // Spawned from outside the runtime, each hog waits in the shared queue until a free worker
    // takes it, so the two end up blocking both workers.
    let hogs = [runtime.spawn(get_("/hog")), runtime.spawn(get_("/hog"))];
    // Both workers must be held before the starved request's threshold (1.5 s after it began).
    let deadline = std::time::Instant::now() + Duration::from_millis(1200);
    while hogs_started.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        hogs_started.load(Ordering::SeqCst),
        2,
        "both workers held in time"
    );
    let statuses: Vec<_> = runtime.block_on(async {
        let mut statuses = vec![starved.await.unwrap()];
        for hog in hogs {
            statuses.push(hog.await.unwrap());
        }
        statuses
    });
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
    let report = collect
        .wait_for(Duration::from_secs(10), |r| {
            r.uri.ends_with("/starved") && r.kind == ReportKind::Slow
        })
        .expect("a slow report of /starved");
    let awaiting = report.awaiting.as_ref().expect("an awaiting section");
    assert!(
        matches!(awaiting.status, AwaitStatus::NotPolled { .. }),
        "{:?}",
        awaiting.status
    );
    let blocking = awaiting
        .busy_threads
        .iter()
        .filter(|busy| {
            busy.stack.iter().any(|f| {
                f.function
                    .as_deref()
                    .is_some_and(|n| n.contains("vigil_hogging_a_worker"))
            })
        })
        .count();
    let seen: Vec<_> = awaiting
        .busy_threads
        .iter()
        .map(|b| (b.request_id, b.stack_status.clone(), b.stack.len()))
        .collect();
    assert_eq!(blocking, 2, "{seen:?}");
    assert!(
        report.to_text().contains("not polled"),
        "{}",
        report.to_text()
    );
}
