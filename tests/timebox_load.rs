//! The timebox under load: 10 000 cancelled requests through a real server. In a file of its
//! own so that its CPU load does not disturb the timing assertions of `tests/timebox.rs`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tower_vigil::timebox::TimeboxLayer;

#[test]
fn ten_thousand_cancelled_requests_leak_nothing() {
    let drops = DropCounter::default();
    let counter = drops.clone();
    let timebox = TimeboxLayer::builder(Duration::from_millis(20))
        .grace(Duration::from_millis(10))
        .resolution(Duration::from_millis(2))
        .build()
        .unwrap();
    let app = never_answering_route("/", counter).layer(timebox.clone());
    let (addr, server) = serve_on_own_runtime(app, 2);
    let baseline = server.metrics().num_alive_tasks();
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = client_runtime.enter();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..50 {
        let cancelled = cancelled.clone();
        clients.push(tokio::spawn(async move {
            let client: hyper_util::client::legacy::Client<
                _,
                http_body_util::Empty<hyper::body::Bytes>,
            > = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
            for _ in 0..200 {
                let request = http::Request::get(format!("http://{addr}/"))
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let response = client.request(request).await.unwrap();
                if response.status() == 503 {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                }
                use http_body_util::BodyExt;
                response.into_body().collect().await.unwrap();
            }
        }));
    }
    client_runtime.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
        assert_eq!(cancelled.load(Ordering::SeqCst), 10_000);
        assert!(wait_until(Duration::from_secs(5), || drops.balanced()).await);
        assert_eq!(drops.made.load(Ordering::SeqCst), 10_000);
        // Client connections are closed now; their server tasks end.
        assert!(
            wait_until(Duration::from_secs(5), || server
                .metrics()
                .num_alive_tasks()
                <= baseline)
            .await,
            "alive tasks {} > baseline {baseline}",
            server.metrics().num_alive_tasks()
        );
    });
    let stats = timebox.stats();
    assert_eq!(stats.hard_timeouts, 10_000);
    assert_eq!(stats.in_flight, 0);
    drop(server);
}
