//! A request is in flight until its response body ends: a slowly streaming body is reported
//! like any slow request, through a real axum server and a real client.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::report::{ReportKind, RequestPhase};
use tower_vigil::watchdog::WatchdogLayer;

fn slow_stream(chunks: u32, every: Duration) -> Body {
    let stream = futures_util::stream::unfold(0u32, move |sent| async move {
        if sent == chunks {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((
            Ok::<_, Infallible>(bytes::Bytes::from(vec![b'x'; 1000])),
            sent + 1,
        ))
    });
    Body::from_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_streaming_body_is_reported_while_it_streams() {
    let collect = Collect::default();
    let watchdog = collecting_watchdog(Duration::from_millis(1200), &collect);
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { slow_stream(8, Duration::from_millis(500)) }),
        )
        .layer(watchdog.clone());
    let addr = serve(app).await;
    let started = Instant::now();
    let (status, body) = http_get(addr, "/stream", &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body.len(), 8000);
    let slow = collect
        .wait_for(Duration::from_secs(5), |r| r.kind == ReportKind::Slow)
        .expect("a report while the body streams");
    let RequestPhase::StreamingBody {
        bytes,
        frames,
        since_last_frame,
        response_after,
    } = slow.phase
    else {
        panic!("{:?}", slow.phase);
    };
    assert!(
        (1000..8000).contains(&bytes),
        "{bytes} bytes at the threshold"
    );
    assert_eq!(bytes, frames * 1000);
    assert!(since_last_frame < Duration::from_millis(600));
    assert!(response_after < Duration::from_millis(500));
    assert!(
        slow.to_text().contains("streaming body"),
        "{}",
        slow.to_text()
    );
    let done = collect
        .wait_for(Duration::from_secs(5), |r| r.kind == ReportKind::Completed)
        .expect("a completion record");
    // The completion record gives the time to the last byte.
    assert!(
        done.elapsed >= Duration::from_millis(3900),
        "{:?}",
        done.elapsed
    );
    assert!(done.elapsed <= took + Duration::from_millis(100));
    assert!(matches!(
        done.phase,
        RequestPhase::StreamingBody { bytes: 8000, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_whose_client_went_away_is_deregistered() {
    let watchdog = WatchdogLayer::builder(Duration::from_secs(10))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { slow_stream(100, Duration::from_millis(100)) }),
        )
        .layer(watchdog.clone());
    let addr = serve(app).await;
    let client = tokio::spawn(async move { http_get(addr, "/stream", &[]).await });
    assert!(wait_until(Duration::from_secs(5), || watchdog.stats().in_flight == 1).await);
    // The client gives up mid-stream: hyper drops the body, and with it the registration.
    client.abort();
    assert!(wait_until(Duration::from_secs(5), || watchdog.stats().in_flight == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_not_a_slow_request_unless_configured() {
    for exempt in [true, false] {
        let collect = Collect::default();
        let watchdog = WatchdogLayer::builder(Duration::from_millis(300))
            .recapture_at([])
            .resolution(Duration::from_millis(10))
            .long_lived_exempt(exempt)
            .sink(collect.clone())
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/events",
                get(|| async {
                    (
                        [(http::header::CONTENT_TYPE, "text/event-stream")],
                        slow_stream(4, Duration::from_millis(200)),
                    )
                }),
            )
            .layer(watchdog.clone());
        let addr = serve(app).await;
        let (status, body) = http_get(addr, "/events", &[]).await;
        assert_eq!((status, body.len()), (200, 4000));
        assert!(watchdog.flush(Duration::from_secs(5)));
        let reported = collect.all().iter().any(|r| r.kind == ReportKind::Slow);
        assert_eq!(reported, !exempt, "exempt: {exempt}");
    }
}
