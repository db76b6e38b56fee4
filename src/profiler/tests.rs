//! The service against tower services, with the crate's counting allocator.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::*;
use crate::exempt::ExemptFromDeadlines;
use crate::stack::count_allocations;

fn admin_layer() -> ProfilerLayer {
    ProfilerLayer::new().authorize(SharedSecret::new("secret-0123456789"))
}

#[test]
fn a_request_without_the_trigger_costs_no_allocation() {
    let inner = service_fn(|_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(String::new())))
    });
    let mut service = admin_layer().layer(inner);
    let request = Request::get("/orders/42?page=2&sort=desc")
        .header("accept", "text/html")
        .body(())
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let (status, allocations) = count_allocations(|| {
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut future = std::pin::pin!(service.call(request));
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => response.status(),
            _ => unreachable!("the inner service is ready at once"),
        }
    });
    assert_eq!(status, 200);
    assert_eq!(allocations, 0, "the unprofiled path allocated");
}

#[test]
fn an_unauthorized_trigger_reaches_the_service_untouched() {
    let inner = service_fn(|request: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(
            request.uri().query().unwrap_or("").len().to_string(),
        )))
    });
    let mut service = admin_layer().layer(inner);
    let request = Request::get("/a?__profile__=svg")
        .header("x-vigil-secret", "secret-0123456788")
        .body(())
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut future = std::pin::pin!(service.call(request));
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        unreachable!()
    };
    let body = futures_body(response.into_body());
    assert_eq!(body, "__profile__=svg".len().to_string());
}

fn futures_body<B: http_body::Body<Data = bytes::Bytes> + Unpin>(body: B) -> String
where
    B::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = runtime.block_on(body.collect()).unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn a_profiled_request_is_exempt_from_deadlines_and_runs_on_the_profiling_thread() {
    // Sampler sessions are process-wide; the sampler's own tests take all of them at times.
    let _serial = crate::stack::sampler_test_serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(profiled_request_is_exempt());
}

async fn profiled_request_is_exempt() {
    #[derive(Debug, Default, Clone)]
    struct Seen {
        exempt: bool,
        profiled: Option<Profiled>,
        thread: Option<String>,
        uri: String,
    }
    let seen = Arc::new(Mutex::new(None::<Seen>));
    let record = seen.clone();
    let inner = service_fn(move |request: Request<String>| {
        let record = record.clone();
        async move {
            *record.lock().unwrap() = Some(Seen {
                exempt: request.extensions().get::<ExemptFromDeadlines>().is_some(),
                profiled: request.extensions().get::<Profiled>().copied(),
                thread: std::thread::current().name().map(str::to_owned),
                uri: request.uri().to_string(),
            });
            Ok::<_, Infallible>(Response::new(String::from("page")))
        }
    });
    let service = ProfilerLayer::builder()
        .authorize(SharedSecret::new("secret-0123456789"))
        .mode(Mode::CpuTime)
        .build()
        .unwrap()
        .layer(inner);
    let request = Request::get("/x?a=1&__profile__=json")
        .header("x-vigil-secret", "secret-0123456789")
        .body(String::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["status"], 200);
    assert_eq!(json["request"], "GET /x?a=1");
    let seen = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the service saw the request");
    assert!(seen.exempt, "ExemptFromDeadlines missing");
    assert_eq!(
        seen.profiled,
        Some(Profiled {
            mode: Mode::CpuTime
        })
    );
    assert_eq!(seen.thread.as_deref(), Some(runner::PROFILING_THREAD_NAME));
    assert_eq!(seen.uri, "/x?a=1", "the trigger must be removed");
}
