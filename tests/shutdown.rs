//! Evidence before a graceful stop: every request still in flight is reported, and the sinks
//! are flushed, before the server drains and the process exits.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::sink::FileSink;
use tower_vigil::watchdog::WatchdogLayer;

#[inline(never)]
async fn vigil_still_working() -> &'static str {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    "finished"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_reported_before_the_server_drains() {
    let dir = temp_dir("shutdown-reports");
    let watchdog = WatchdogLayer::builder(Duration::from_secs(20))
        .sink(FileSink::new(&dir).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", get(vigil_still_working))
        .layer(watchdog.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (reported_tx, reported_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = watchdog.on_shutdown(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = reported_tx.send(());
            })
            .await
            .unwrap();
    });
    let clients: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { http_get(addr, "/work", &[]).await }))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || watchdog.stats().in_flight == 3).await);
    stop.send(()).unwrap();
    reported_rx.await.unwrap();
    // The shutdown future has returned: the reports are on disk while the requests still run.
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "txt").then(|| std::fs::read_to_string(path).ok())?
        })
        .collect();
    let shutdown_reports = files
        .iter()
        .filter(|text| text.contains("at shutdown (still in flight)"))
        .count();
    assert_eq!(shutdown_reports, 3, "{files:#?}");
    assert_eq!(
        watchdog.stats().in_flight,
        3,
        "the requests are still running"
    );
    for client in clients {
        assert_eq!(client.await.unwrap(), (200, "finished".to_owned()));
    }
    server.await.unwrap();
}
