//! Reports requests that are still running past a threshold, with the stack of the thread
//! polling them or the spans they wait in, while they are still running.
//!
//! This is Django's dogslow for tower. [`WatchdogLayer`] registers every request in an
//! in-flight registry (a reused slot, a few atomics, no timer). One monitor OS thread, outside
//! the async runtime, wakes when the oldest request reaches the threshold and:
//!
//! - if a thread is polling the request (blocked in a system call or busy on the CPU), sends a
//!   signal to exactly that thread and records its native stack;
//! - if no thread is polling it (it is pending, waiting for IO or a timer), records the open
//!   tracing spans under the request, provided [`crate::spans::SpanLayer`] is installed.
//!
//! The report goes to the configured [`sinks`](crate::sink) on a reporter thread. It is made
//! again at 2× and 4× the threshold while the request runs, and once more when it finishes.
//!
//! # Interrupted system calls
//!
//! A capture interrupts the polling thread with a real-time signal. Calls the kernel restarts
//! (`read`, `write`, `accept` without a timeout) are unaffected; `poll`, `select`,
//! `epoll_wait`, `nanosleep` and socket calls with a timeout return `EINTR`. Rust's standard
//! library and tokio retry; raw `libc` calls, in your code or in a C library, may fail while
//! their request is captured. Turn captures off for such a route with `ignore_path`, or for
//! the whole watchdog with `capture_stacks(false)`.
//!
//! # Example
//!
//! With axum's `Router::layer`:
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_vigil::sink::{FileSink, LogSink};
//! use tower_vigil::watchdog::WatchdogLayer;
//!
//! # fn main() -> std::io::Result<()> {
//! # let dir = std::env::temp_dir().join("vigil-doc-watchdog");
//! let watchdog = WatchdogLayer::new(Duration::from_secs(5))
//!     .sink(FileSink::new(&dir)?)
//!     .sink(LogSink::default());
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(watchdog.clone());
//! // Later: counters of the same watchdog.
//! assert_eq!(watchdog.stats().reported, 0);
//! # Ok(()) }
//! ```
//!
//! With tower's `ServiceBuilder`:
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_vigil::watchdog::WatchdogLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(WatchdogLayer::new(Duration::from_secs(25)))
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from("ok"))))
//!     }));
//! let response = service.oneshot(Request::new(())).await.unwrap();
//! // The request stays in flight until its body is read to the end.
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "ok");
//! # }
//! ```

pub(crate) mod awaiting;
mod future;
mod layer;
pub(crate) mod part;
mod service;

pub use self::future::ResponseFuture;

/// Response body of [`Watchdog`]: the handler's own body, watched until it ends, so a slowly
/// streaming body is reported like any slow request. The same type as the timebox's body.
pub type WatchdogBody<B> = crate::timebox::TimeboxBody<B>;
pub use self::layer::{WatchdogBuilder, WatchdogLayer, WatchdogStats};
pub use self::service::Watchdog;
pub use crate::config::WatchdogConfig;
