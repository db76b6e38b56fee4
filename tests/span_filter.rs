//! A global `LevelFilter::WARN` in front of `SpanLayer`, as `RUST_LOG=warn` with a global
//! `EnvFilter` makes it: INFO spans are never created, and `hidden_by_filter` says so. A test
//! binary of its own, because the filter is the process's global subscriber.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{http_get, serve, Collect};
use tower_vigil::report::ReportKind;
use tower_vigil::spans::{hidden_by_filter, SpanLayer};
use tower_vigil::watchdog::WatchdogLayer;
use tracing::level_filters::LevelFilter;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_warn_filter_hides_info_spans_and_is_explained() {
    tracing_subscriber::registry()
        .with(LevelFilter::WARN)
        .with(SpanLayer::new())
        .init();
    assert_eq!(LevelFilter::current(), LevelFilter::WARN);

    let collect = Collect::default();
    let app = Router::new()
        .route(
            "/wait",
            get(|| async {
                let hidden = async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                .instrument(tracing::info_span!("hidden_by_the_filter"));
                hidden.instrument(tracing::warn_span!("seen_at_warn")).await;
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
    .expect("a slow report");

    // The SpanLayer works, for the spans that exist: only the WARN one does.
    assert!(report.spans.installed);
    let names: Vec<&str> = report.spans.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["seen_at_warn"]);

    let explanation = hidden_by_filter().expect("the WARN filter is detected");
    assert!(
        explanation.starts_with("spans at INFO, DEBUG and TRACE are never created"),
        "{explanation}"
    );
    assert!(explanation.contains("max level is WARN"), "{explanation}");
    assert!(
        explanation.contains("fmt::layer().with_filter("),
        "{explanation}"
    );
}
