//! Without `SpanLayer` in the subscriber, a pending request's report says how to enable it.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::report::{ReportKind, StackStatus};
use tower_vigil::watchdog::WatchdogLayer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_tell_how_to_see_where_a_request_awaits() {
    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/wait",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "ok"
            }),
        )
        .layer(WatchdogLayer::new(Duration::from_millis(100)).sink(collect.clone()));
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/wait", &[]).await.0, 200);
    let sink = collect.clone();
    let report = tokio::task::spawn_blocking(move || {
        sink.wait_for(Duration::from_secs(10), |r| r.kind == ReportKind::Slow)
    })
    .await
    .unwrap()
    .expect("report");
    assert_eq!(report.stack_status, StackStatus::Pending);
    assert!(!report.spans.installed);
    assert!(report
        .to_text()
        .contains("Install tower_vigil::spans::SpanLayer in your tracing subscriber"));
}
