//! The probe poll at its edges, through real axum servers: several leaves at once (`join!`,
//! `select!`), await chains deeper than the frame limit, and requests that finish or panic in
//! the very poll the probe makes.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::*;
use tower_http::catch_panic::CatchPanicLayer;
use tower_vigil::report::{AwaitStatus, ReportKind, SlowRequestReport};
use tower_vigil::watchdog::WatchdogLayer;

const THRESHOLD: Duration = Duration::from_millis(200);
const PATIENCE: Duration = Duration::from_secs(10);

/// Each leaf's name with the application functions of its chain.
fn leaves_with_chains(report: &SlowRequestReport) -> Vec<(String, Vec<String>)> {
    let awaiting = report.awaiting.as_ref().expect("an Awaiting section");
    awaiting
        .leaves
        .iter()
        .map(|leaf| {
            let chain = leaf
                .chain
                .iter()
                .filter_map(|frame| frame.function.clone())
                .collect();
            (leaf.leaf.clone().unwrap_or_default(), chain)
        })
        .collect()
}

#[inline(never)]
async fn vigil_sleep_a_while() {
    tokio::time::sleep(Duration::from_millis(900)).await;
}

#[inline(never)]
async fn vigil_wait_for_a_message(receiver: tokio::sync::oneshot::Receiver<()>) {
    let _ = receiver.await;
}

#[inline(never)]
async fn vigil_wait_for_a_notice(notify: Arc<tokio::sync::Notify>) {
    notify.notified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_leaf_of_a_join_and_of_a_select_is_listed_with_its_awaiter() {
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/join",
            get(|| async {
                let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    drop(sender);
                });
                tokio::join!(vigil_sleep_a_while(), vigil_wait_for_a_message(receiver));
                "joined"
            }),
        )
        .route(
            "/select",
            get(|| async {
                let notify = Arc::new(tokio::sync::Notify::new());
                tokio::select! {
                    () = vigil_sleep_a_while() => "slept",
                    () = vigil_wait_for_a_notice(notify.clone()) => "notified",
                }
            }),
        )
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    let (joined, selected) =
        tokio::join!(http_get(addr, "/join", &[]), http_get(addr, "/select", &[]));
    assert_eq!(joined.0, 200);
    assert_eq!(selected, (200, "slept".to_owned()));

    let joined = leaves_with_chains(&slow_report_of(&collect, "/join"));
    let has = |leaves: &[(String, Vec<String>)], leaf: &str, awaiter: &str| {
        leaves
            .iter()
            .any(|(name, chain)| name.contains(leaf) && chain.iter().any(|f| f.contains(awaiter)))
    };
    assert!(has(&joined, "Sleep", "vigil_sleep_a_while"), "{joined:#?}");
    assert!(
        has(&joined, "oneshot::Receiver", "vigil_wait_for_a_message"),
        "{joined:#?}"
    );

    let selected = leaves_with_chains(&slow_report_of(&collect, "/select"));
    assert!(
        has(&selected, "Sleep", "vigil_sleep_a_while"),
        "{selected:#?}"
    );
    assert!(
        has(&selected, "Notified", "vigil_wait_for_a_notice"),
        "{selected:#?}"
    );
    // The text lists each leaf under its own heading.
    let report = slow_report_of(&collect, "/select");
    let text = report.to_text();
    assert!(text.matches("Sleep").count() >= 1, "{text}");
    assert!(text.contains("Notified"), "{text}");
}

/// An await chain as deep as `depth`, ending in a sleep.
fn vigil_descend(depth: u32) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        if depth == 0 {
            tokio::time::sleep(Duration::from_millis(900)).await;
        } else {
            vigil_descend(depth - 1).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_deeper_than_the_frame_limit_is_cut_and_marked() {
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/deep",
            get(|| async {
                vigil_descend(200).await;
                "deep"
            }),
        )
        .layer(probe_watchdog(&collect));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/deep", &[]).await, (200, "deep".to_owned()));
    let report = slow_report_of(&collect, "/deep");
    let awaiting = report.awaiting.as_ref().expect("an Awaiting section");
    assert_eq!(awaiting.status, AwaitStatus::Found);
    let leaf = awaiting
        .leaves
        .iter()
        .find(|leaf| leaf.leaf.as_deref().is_some_and(|l| l.contains("Sleep")))
        .expect("the sleep at the bottom");
    assert!(leaf.truncated, "{leaf:#?}");
    // Innermost frames are kept: the recursion right above the leaf.
    assert!(
        leaf.chain
            .iter()
            .filter_map(|f| f.function.as_deref())
            .any(|f| f.contains("vigil_descend")),
        "{leaf:#?}"
    );
    assert!(report.to_text().contains("(chain truncated)"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["awaiting"]["leaves"][0]["truncated"], true,
        "{:#}",
        json["awaiting"]
    );
}

/// Pending until `ready_at`, without keeping a waker: only a probe poll polls it again.
struct ReadyWhenPolledAgain {
    ready_at: Instant,
    panic: bool,
}

impl Future for ReadyWhenPolledAgain {
    type Output = &'static str;

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<&'static str> {
        if Instant::now() < self.ready_at {
            return Poll::Pending;
        }
        if self.panic {
            panic!("vigil test panic in the second poll");
        }
        Poll::Ready("finished")
    }
}

/// Wakes itself once, then panics in its second, ordinary poll.
struct WakesItselfThenPanics {
    polls: u32,
}

impl Future for WakesItselfThenPanics {
    type Output = &'static str;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<&'static str> {
        self.polls += 1;
        if self.polls == 1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        panic!("vigil test panic in the second poll");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_finishes_in_the_probe_poll_finishes_normally() {
    let collect = Collect::default();
    let watchdog = probe_watchdog(&collect);
    let app = Router::new()
        .route(
            "/finishes",
            get(|| ReadyWhenPolledAgain {
                ready_at: Instant::now() + THRESHOLD / 2,
                panic: false,
            }),
        )
        .layer(watchdog.clone());
    let addr = serve(app).await;
    // Nothing wakes the handler but the probe: without it this request would hang.
    let answer = tokio::time::timeout(PATIENCE, http_get(addr, "/finishes", &[]))
        .await
        .expect("the probe poll must have polled the request to its end");
    assert_eq!(answer, (200, "finished".to_owned()));
    let report = slow_report_of(&collect, "/finishes");
    let awaiting = report.awaiting.as_ref().expect("an Awaiting section");
    assert_eq!(awaiting.status, AwaitStatus::Finished, "{awaiting:#?}");
    assert!(report
        .to_text()
        .contains("the request finished during the probe"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(watchdog.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_probe_poll_propagates_as_from_any_poll() {
    let collect = Collect::default();
    let watchdog = probe_watchdog(&collect);
    let app = Router::new()
        .route(
            "/panics-when-probed",
            get(|| ReadyWhenPolledAgain {
                ready_at: Instant::now() + THRESHOLD / 2,
                panic: true,
            }),
        )
        .route(
            "/panics-when-polled",
            get(|| WakesItselfThenPanics { polls: 0 }),
        )
        .route(
            "/sleeps",
            get(|| async {
                vigil_sleep_a_while().await;
                "slept"
            }),
        )
        .layer(watchdog.clone())
        .layer(CatchPanicLayer::new());
    let addr = serve(app).await;
    let control = http_get(addr, "/panics-when-polled", &[]).await;
    assert_eq!(control.0, 500);
    let probed = tokio::time::timeout(PATIENCE, http_get(addr, "/panics-when-probed", &[]))
        .await
        .expect("the probe poll must have polled the request");
    assert_eq!(
        probed, control,
        "the same answer as a panic in an ordinary poll"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        watchdog.stats().in_flight,
        0,
        "the unwound request is deregistered"
    );
    // The probe's state did not outlive the unwinding: later probes on these workers work. A
    // busy machine may leave a probe unanswered within its bound (reported as not polled), so a
    // few requests are allowed.
    let mut seen_ids = Vec::new();
    for _ in 0..5 {
        assert_eq!(http_get(addr, "/sleeps", &[]).await.0, 200);
        let Some(report) = collect.wait_for(PATIENCE, |r| {
            r.uri.ends_with("/sleeps")
                && r.kind == ReportKind::Slow
                && !seen_ids.contains(&r.request_id)
        }) else {
            continue;
        };
        seen_ids.push(report.request_id);
        let leaves = leaves_with_chains(&report);
        if leaves.iter().any(|(leaf, _)| leaf.contains("Sleep")) {
            return;
        }
        eprintln!("no Sleep leaf yet: {:?}", report.awaiting);
    }
    panic!(
        "no probe after the panic found the Sleep leaf: {:#?}",
        collect.all()
    );
}

/// Holds the reporter thread on its first report, so later reports wait in its queue.
struct HoldFirst {
    collect: Collect,
    held: std::sync::atomic::AtomicBool,
}

impl tower_vigil::sink::Sink for HoldFirst {
    fn deliver(&self, report: &SlowRequestReport) -> Result<(), tower_vigil::sink::SinkError> {
        if !self.held.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1500));
        }
        self.collect.deliver(report)
    }
}

#[inline(never)]
async fn vigil_quick_wait() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// Requests that follow each other in one registry slot while the reporter is busy: each
/// report still gets what its own probe found, not a later request's, and not nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_probe_keeps_its_own_answer_while_the_reporter_is_busy() {
    let collect = Collect::default();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .recapture_at([])
        .resolution(Duration::from_millis(10))
        .sink(HoldFirst {
            collect: collect.clone(),
            held: Default::default(),
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/hold",
            get(|| async {
                vigil_sleep_a_while().await;
                "held"
            }),
        )
        .route(
            "/quick",
            get(|| async {
                vigil_quick_wait().await;
                "quick"
            }),
        )
        .layer(watchdog);
    let addr = serve(app).await;
    let hold = tokio::spawn(async move { http_get(addr, "/hold", &[]).await });
    tokio::time::sleep(THRESHOLD + Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(http_get(addr, "/quick", &[]).await.0, 200);
    }
    assert_eq!(hold.await.unwrap().0, 200);
    let quick_reports = || -> Vec<SlowRequestReport> {
        collect
            .all()
            .into_iter()
            .filter(|r| r.uri.ends_with("/quick") && r.kind == ReportKind::Slow)
            .collect()
    };
    let waited = Instant::now();
    while quick_reports().len() < 3 && waited.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quick = quick_reports();
    assert_eq!(quick.len(), 3, "{quick:#?}");
    let mut ids: Vec<u64> = quick.iter().map(|r| r.request_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for report in &quick {
        let leaves = leaves_with_chains(report);
        assert!(
            leaves.iter().any(|(leaf, chain)| leaf.contains("Sleep")
                && chain.iter().any(|f| f.contains("vigil_quick_wait"))),
            "{:#?}",
            report.awaiting
        );
    }
}
