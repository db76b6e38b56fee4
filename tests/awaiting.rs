//! Where pending requests await, with no spans in the handlers: a probe poll names the chain of
//! async functions and the leaf future, through real axum servers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::report::{AwaitStatus, LeafSignal, SlowRequestReport, StackStatus};

fn chain_functions(report: &SlowRequestReport) -> Vec<String> {
    report
        .awaiting
        .iter()
        .flat_map(|a| a.leaves.iter())
        .flat_map(|leaf| leaf.chain.iter())
        .filter_map(|frame| frame.function.clone())
        .collect()
}

fn leaves(report: &SlowRequestReport) -> Vec<String> {
    report
        .awaiting
        .iter()
        .flat_map(|a| a.leaves.iter())
        .filter_map(|leaf| leaf.leaf.clone())
        .collect()
}

#[inline(never)]
async fn vigil_load_report() -> &'static str {
    vigil_query_database().await
}

#[inline(never)]
async fn vigil_query_database() -> &'static str {
    tokio::time::sleep(Duration::from_millis(800)).await;
    "report"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_async_fns_ending_in_a_sleep_are_named() {
    let collect = Collect::default();
    let app = Router::new()
        .route("/report", get(|| async { vigil_load_report().await }))
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    let (status, _) = http_get(addr, "/report", &[]).await;
    assert_eq!(status, 200);
    let report = slow_report_of(&collect, "/report");
    assert_eq!(report.stack_status, StackStatus::Pending);
    let awaiting = report.awaiting.as_ref().expect("an awaiting section");
    assert_eq!(awaiting.status, AwaitStatus::Found, "{awaiting:?}");
    let functions = chain_functions(&report);
    assert!(
        functions.iter().any(|f| f.contains("vigil_load_report")),
        "{functions:?}"
    );
    assert!(
        functions.iter().any(|f| f.contains("vigil_query_database")),
        "{functions:?}"
    );
    assert!(
        leaves(&report).iter().any(|leaf| leaf.contains("Sleep")),
        "{:?}",
        leaves(&report)
    );
    assert_eq!(awaiting.leaves[0].signal, LeafSignal::Waits);
    let text = report.to_text();
    assert!(text.contains("Awaiting"), "{text}");
    assert!(text.contains("vigil_query_database"), "{text}");
}

#[inline(never)]
async fn vigil_call_upstream(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = stream.read(&mut buffer).await.unwrap_or(0);
    format!("{read} bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_named_with_its_io_leaf() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    // Accepts and never answers; the connections stay open until the test ends.
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        if let Ok((stream, _)) = upstream.accept() {
            open.push(stream);
            std::thread::sleep(Duration::from_millis(1500));
        }
    });
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/upstream",
            get(move || async move { vigil_call_upstream(upstream_addr).await }),
        )
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    let request = tokio::spawn(async move { http_get(addr, "/upstream", &[]).await });
    let report = slow_report_of(&collect, "/upstream");
    let functions = chain_functions(&report);
    assert!(
        functions.iter().any(|f| f.contains("vigil_call_upstream")),
        "{functions:?}"
    );
    assert!(
        functions.iter().any(|f| f.contains("tokio::net")
            || f.contains("tokio::io")
            || f.contains("Readiness")),
        "{functions:?}"
    );
    held.join().unwrap();
    let _ = request.await;
}

#[inline(never)]
async fn vigil_wait_for_the_lock(lock: Arc<tokio::sync::Mutex<()>>) -> &'static str {
    let _guard = lock.lock().await;
    "locked"
}

#[inline(never)]
async fn vigil_hold_the_lock(lock: Arc<tokio::sync::Mutex<()>>) -> &'static str {
    let _guard = lock.lock().await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    "held"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_and_its_holder_are_both_named() {
    let collect = Collect::default();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let (held, waited) = (lock.clone(), lock.clone());
    let app = Router::new()
        .route("/hold", get(move || vigil_hold_the_lock(held.clone())))
        .route(
            "/wait",
            get(move || vigil_wait_for_the_lock(waited.clone())),
        )
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    let holder = tokio::spawn(async move { http_get(addr, "/hold", &[]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = tokio::spawn(async move { http_get(addr, "/wait", &[]).await });
    let waiting = slow_report_of(&collect, "/wait");
    let functions = chain_functions(&waiting);
    assert!(
        functions
            .iter()
            .any(|f| f.contains("vigil_wait_for_the_lock")),
        "{functions:?}"
    );
    assert!(
        leaves(&waiting).iter().any(|leaf| leaf.contains("Acquire")
            || leaf.contains("Mutex")
            || leaf.contains("semaphore")),
        "{:?}",
        leaves(&waiting)
    );
    let holding = slow_report_of(&collect, "/hold");
    let functions = chain_functions(&holding);
    assert!(
        functions.iter().any(|f| f.contains("vigil_hold_the_lock")),
        "{functions:?}"
    );
    assert!(leaves(&holding).iter().any(|leaf| leaf.contains("Sleep")));
    assert_eq!(holder.await.unwrap().0, 200);
    assert_eq!(waiter.await.unwrap().0, 200);
}

#[inline(never)]
fn vigil_blocking_job() -> u64 {
    std::thread::sleep(Duration::from_millis(700));
    7
}

#[inline(never)]
async fn vigil_offload() -> String {
    let n = tokio::task::spawn_blocking(vigil_blocking_job)
        .await
        .unwrap();
    n.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_without_a_span_names_the_join_handle_and_its_awaiter() {
    let collect = Collect::default();
    let app = Router::new()
        .route("/offload", get(vigil_offload))
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/offload", &[]).await.0, 200);
    let report = slow_report_of(&collect, "/offload");
    let functions = chain_functions(&report);
    assert!(
        functions.iter().any(|f| f.contains("vigil_offload")),
        "{functions:?}"
    );
    assert!(
        leaves(&report)
            .iter()
            .any(|leaf| leaf.contains("JoinHandle")),
        "{:?}",
        leaves(&report)
    );
}

/// A future that counts its polls and keeps its waker: the probe adds exactly one poll per
/// capture and nothing else.
struct CountedWait {
    polls: Arc<AtomicUsize>,
    until: std::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl std::future::Future for CountedWait {
    type Output = &'static str;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Self::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let until = tokio::time::Instant::from_std(self.until);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        timer.as_mut().poll(cx).map(|()| "counted")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_adds_one_poll_per_capture_and_nothing_else() {
    let collect = Collect::default();
    let polls = Arc::new(AtomicUsize::new(0));
    let counted = polls.clone();
    let app = Router::new()
        .route(
            "/counted",
            get(move || CountedWait {
                polls: counted.clone(),
                until: std::time::Instant::now() + Duration::from_millis(600),
                timer: None,
            }),
        )
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    assert_eq!(
        http_get(addr, "/counted", &[]).await,
        (200, "counted".to_owned())
    );
    slow_report_of(&collect, "/counted");
    // First poll, the probe poll, and the poll when the timer fires.
    assert_eq!(polls.load(Ordering::SeqCst), 3);
}

#[inline(never)]
async fn vigil_other_wait() -> &'static str {
    tokio::time::sleep(Duration::from_millis(800)).await;
    "other"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_wedge_on_the_same_route_shares_a_signature() {
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(
                |axum::extract::Path(id): axum::extract::Path<u32>| async move {
                    if id % 2 == 0 {
                        vigil_load_report().await
                    } else {
                        vigil_other_wait().await
                    }
                },
            ),
        )
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    let requests: Vec<_> = ["/items/2", "/items/4", "/items/3"]
        .into_iter()
        .map(|path| tokio::spawn(async move { http_get(addr, path, &[]).await }))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().0, 200);
    }
    let two = slow_report_of(&collect, "/items/2");
    let four = slow_report_of(&collect, "/items/4");
    let three = slow_report_of(&collect, "/items/3");
    assert_eq!(two.signature, four.signature, "{}", two.signature_text);
    assert_ne!(two.signature, three.signature, "{}", three.signature_text);
    assert!(
        // The route axum matched, or without the `axum` feature the path with ids collapsed.
        two.signature_text.starts_with(if cfg!(feature = "axum") {
            "GET /items/{id} @ awaits"
        } else {
            "GET /items/{n} @ awaits"
        }),
        "{}",
        two.signature_text
    );
    assert!(
        two.signature_text.contains("vigil_query_database"),
        "{}",
        two.signature_text
    );
    assert!(
        three.signature_text.contains("vigil_other_wait"),
        "{}",
        three.signature_text
    );
    assert_eq!(two.signature.len(), 12);
}

#[inline(never)]
fn vigil_marked_blocking_job() -> u64 {
    std::thread::sleep(Duration::from_millis(700));
    11
}

#[inline(never)]
async fn vigil_offload_marked() -> String {
    let n = tower_vigil::spawn_blocking(vigil_marked_blocking_job)
        .await
        .unwrap();
    n.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawn_blocking_helper_adds_the_blocking_threads_stack() {
    let collect = Collect::default();
    let app = Router::new()
        .route("/marked", get(vigil_offload_marked))
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/marked", &[]).await.0, 200);
    let report = slow_report_of(&collect, "/marked");
    assert_eq!(
        report.helper_threads.len(),
        1,
        "{:?}",
        report.helper_threads
    );
    let helper = &report.helper_threads[0];
    assert_eq!(helper.stack_status, StackStatus::Captured);
    assert!(
        helper.stack.iter().any(|f| f
            .function
            .as_deref()
            .is_some_and(|n| n.contains("vigil_marked_blocking_job"))),
        "{:?}",
        helper.stack
    );
    assert!(leaves(&report)
        .iter()
        .any(|leaf| leaf.contains("JoinHandle")));
    assert!(report
        .to_text()
        .contains("Working for this request on thread"));
}

#[inline(never)]
fn vigil_job_in_the_requests_span() -> u64 {
    std::thread::sleep(Duration::from_millis(700));
    5
}

#[inline(never)]
async fn vigil_offload_in_span() -> String {
    let span = tracing::info_span!("offload");
    let _entered = span.clone().entered();
    drop(_entered);
    let n = tokio::task::spawn_blocking(move || span.in_scope(vigil_job_in_the_requests_span))
        .await
        .unwrap();
    n.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_that_enters_the_requests_span_joins_the_report() {
    init_tracing();
    let collect = Collect::default();
    let app = Router::new()
        .route("/in-span", get(vigil_offload_in_span))
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/in-span", &[]).await.0, 200);
    let report = slow_report_of(&collect, "/in-span");
    let helper = report.helper_threads.iter().find(|helper| {
        helper.stack.iter().any(|f| {
            f.function
                .as_deref()
                .is_some_and(|n| n.contains("vigil_job_in_the_requests_span"))
        })
    });
    assert!(helper.is_some(), "{:?}", report.helper_threads);
}
