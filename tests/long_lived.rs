//! Long-lived responses through a real axum server on 127.0.0.1: a websocket (real
//! tokio-tungstenite client) and a server-sent event stream (read over hyper) outlive the
//! timebox's hard deadline without being cut off or reported slow, unless the exemption is off.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event, Sse};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use common::{serve, wait_until, Collect};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_vigil::report::ReportKind;
use tower_vigil::timebox::TimeboxLayer;
use tower_vigil::watchdog::WatchdogLayer;
use tower_vigil::Vigil;

const THRESHOLD: Duration = Duration::from_millis(150);
const HARD: Duration = Duration::from_millis(300);
const TICK: Duration = Duration::from_millis(100);
/// Events in one stream: it lasts three times the hard deadline.
const EVENTS: usize = 9;

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Text(_)) && socket.send(message).await.is_err() {
            break;
        }
    }
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn events() -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let ticks = futures_util::stream::unfold(0, |n| async move {
        if n == EVENTS {
            return None;
        }
        tokio::time::sleep(TICK).await;
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    });
    Sse::new(ticks)
}

/// A watchdog with a short threshold and a timebox that cuts bodies at its hard deadline,
/// in one `Vigil`; the collector receives every report.
fn app(long_lived_exempt: bool) -> (Router, TimeboxLayer, Collect) {
    let collect = Collect::default();
    let timebox = TimeboxLayer::builder(HARD)
        .resolution(Duration::from_millis(10))
        .body_deadline(true)
        .long_lived_exempt(long_lived_exempt)
        .build()
        .unwrap();
    let watchdog = WatchdogLayer::builder(THRESHOLD)
        .sink(collect.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/events", get(events))
        .layer(Vigil::new().watchdog(watchdog).timebox(timebox.clone()));
    (app, timebox, collect)
}

/// Reads an event stream to its end; returns the events received and how the stream ended.
async fn read_events(addr: SocketAddr) -> (Vec<String>, Result<(), String>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::get(format!("http://{addr}/events"))
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.expect("request failed");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut text = String::new();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => panic!("no event for 5 s"),
            Ok(None) => break Ok(()),
            Ok(Some(Err(error))) => break Err(format!("{error:?}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    };
    let events = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (events, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_hard_deadline_and_keeps_echoing() {
    let (app, timebox, collect) = app(true);
    let addr = serve(app).await;
    let (mut socket, response) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("a handshake within 5 s")
    .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    let started = Instant::now();
    let mut round = 0;
    while round < 3 || started.elapsed() < 2 * HARD {
        let text = format!("ping {round}");
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an echo within 5 s")
            .expect("the socket is open")
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
        round += 1;
        tokio::time::sleep(TICK).await;
    }
    assert!(started.elapsed() > HARD + THRESHOLD);
    let stats = timebox.stats();
    assert_eq!(
        (stats.hard_timeouts, stats.body_timeouts, stats.in_flight),
        (0, 0, 0)
    );
    assert!(collect.all().is_empty(), "{:?}", collect.all());
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_the_body_deadline_and_is_not_slow() {
    let (app, timebox, collect) = app(true);
    let addr = serve(app).await;
    let started = Instant::now();
    let reading = tokio::spawn(read_events(addr));
    // While it streams, past the threshold: released, so neither in flight nor slow.
    tokio::time::sleep(HARD + TICK).await;
    assert_eq!(timebox.stats().in_flight, 0);
    let (events, ended) = reading.await.unwrap();
    assert_eq!(ended, Ok(()));
    assert_eq!(events.len(), EVENTS, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("tick 8"));
    assert!(started.elapsed() >= 3 * HARD);
    let stats = timebox.stats();
    assert_eq!((stats.hard_timeouts, stats.body_timeouts), (0, 0));
    assert!(collect.all().is_empty(), "{:?}", collect.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_exemption_an_event_stream_is_cut_at_the_hard_deadline() {
    let (app, timebox, collect) = app(false);
    let addr = serve(app).await;
    let started = Instant::now();
    let (events, ended) = read_events(addr).await;
    let elapsed = started.elapsed();
    assert!(ended.is_err(), "the stream must be cut off: {events:?}");
    assert!(
        elapsed >= HARD && elapsed < HARD + 2 * TICK,
        "cut at the hard deadline: {elapsed:?}"
    );
    assert!(events.len() < 4, "{events:?}");
    assert_eq!(timebox.stats().body_timeouts, 1);
    // Still in flight past the threshold, it was reported slow like any other request.
    let sink = collect.clone();
    let slow = tokio::task::spawn_blocking(move || {
        sink.wait_for(Duration::from_secs(5), |r| r.kind == ReportKind::Slow)
    })
    .await
    .unwrap();
    assert!(slow.is_some());
    assert!(wait_until(Duration::from_secs(2), || timebox.stats().in_flight == 0).await);
}
