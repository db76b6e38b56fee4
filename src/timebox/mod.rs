//! Cancels request work cleanly before the process supervisor's kill (interruptingcow for
//! tower).
//!
//! A supervisor (gunicorn, uWSGI's harakiri, Kubernetes, Heroku's router at 30 s) kills a
//! worker that takes too long: locks are left held, transactions open, and the evidence of what
//! was slow is destroyed. [`TimeboxLayer`] ends the work first, in two phases:
//!
//! 1. **Soft deadline.** The request's [`Deadline`] (a request extension) is cancelled.
//!    Handlers and [`timebox`] calls see it and can return early with their own cleanup, such
//!    as rolling back a transaction and answering with their own error page.
//! 2. **Hard deadline.** The handler's future is dropped, so its destructors run and its locks
//!    and connections are released, and the client gets `503 Service Unavailable` with
//!    `Retry-After`. Never 408: the client was not slow.
//!
//! Cancellation happens by dropping the future at an await point, never by interrupting
//! running code, which would corrupt state. A handler that blocks its thread cannot be
//! dropped until it yields; such work is counted as *wedged*, and reported with its native
//! stack when a watchdog is in the same [`crate::Vigil`] stack. For the 503 to go out on time
//! anyway, the handler must run in a task of its own ([`Isolation`]). That task costs about a
//! microsecond and a half per request, so by default ([`Isolation::Adaptive`]) only routes that
//! have wedged before get one: the first wedge of a route answers when its handler returns,
//! every later one on time. [`Isolation::Always`] makes every 503 on time at that cost.
//!
//! Deadlines are fired by the one monitor thread that also runs the watchdog; there is no timer
//! per request.
//!
//! # Supervisor arithmetic
//!
//! [`TimeboxLayer::supervisor_timeout`] derives everything from the kill timeout: for 30 s,
//! the hard deadline is 30 − 3 = 27 s (safety margin), the soft deadline 27 − 2 = 25 s
//! (grace). A watchdog in the same [`crate::Vigil`] stack captures at the soft deadline and, if
//! the request is wedged, at the hard one, so the report is written 3 s or more before the
//! kill.
//!
//! # Shutdown and wedged work
//!
//! A handler that blocks its worker thread (a blocking call, a busy loop) cannot be stopped
//! from outside: the timebox answers its client and aborts its task, but the thread stays
//! inside that one poll until it returns. Tokio's runtime waits for it when it shuts down:
//! dropping the runtime (as `#[tokio::main]` does when `main` returns) blocks until every
//! worker has left its poll and every `spawn_blocking` closure has returned, so the process
//! does not exit, and the supervisor's kill ends it instead.
//!
//! [`TimeboxBuilder::escalate_after`] can *notice* this and start an orderly exit: its hook
//! runs on the monitor thread, which a wedged runtime cannot hold back, so it can trigger
//! axum's `with_graceful_shutdown` (no new connections, in-flight requests finish, reports
//! are flushed) and the supervisor starts a fresh worker. It *cannot* unblock or kill the
//! wedged thread, and so it cannot make the runtime's shutdown return. To exit anyway once
//! the server has stopped and the reports are flushed, end the process without waiting for
//! the runtime: `std::process::exit`, or, with a runtime you build yourself,
//! `Runtime::shutdown_timeout`, which leaks threads that do not stop in time.
//!
//! # Long-lived responses
//!
//! A websocket upgrade (`101 Switching Protocols`) or a server-sent event stream
//! (`Content-Type: text/event-stream`) is meant to stay open: once its headers are out, the
//! timebox lets it go, with no body deadline, and it no longer counts as in flight (nor, in a
//! [`crate::Vigil`] stack, as slow). [`TimeboxBuilder::long_lived_exempt`] turns this off.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_vigil::timebox::{timebox, Deadline, TimeboxLayer};
//!
//! async fn report(deadline: Deadline) -> String {
//!     match timebox(Duration::from_secs(2), load_rows()).await {
//!         Ok(rows) => format!("{rows} rows, {:?} to spare", deadline.remaining()),
//!         Err(elapsed) => format!("partial report: {elapsed}"),
//!     }
//! }
//!
//! async fn load_rows() -> usize {
//!     42
//! }
//!
//! let app: Router = Router::new()
//!     .route("/report", get(report))
//!     .layer(TimeboxLayer::supervisor_timeout(Duration::from_secs(30)).unwrap());
//! ```
//!
//! With tower's `ServiceBuilder`:
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_vigil::timebox::TimeboxLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(
//!         TimeboxLayer::builder(Duration::from_millis(50))
//!             .resolution(Duration::from_millis(5))
//!             .build()
//!             .unwrap(),
//!     )
//!     .service(service_fn(|_: Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(10)).await;
//!         Ok::<_, Infallible>(Response::new(String::from("too late")))
//!     }));
//! let response = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert!(response.headers().contains_key("retry-after"));
//! # }
//! ```

mod body;
mod deadline;
mod future;
mod layer;
pub(crate) mod part;
mod service;
pub(crate) mod shed;

pub(crate) use self::body::BodyDeadline;
pub use self::body::{BodyDeadlineElapsed, TimeboxBody};
#[cfg(feature = "axum")]
pub use self::deadline::NoRequestDeadline;
pub use self::deadline::{
    spawn_blocking, timebox, Deadline, DeadlineKind, Elapsed, Quota, Timeboxed,
};
pub(crate) use self::deadline::{ActiveDeadline, DeadlineScope};
pub use self::future::ResponseFuture;
pub use self::layer::{InlineTimeboxLayer, TimeboxBuilder, TimeboxLayer, TimeboxStats};
pub use self::service::{InlineTimebox, Timebox};
pub use self::shed::REQUEST_START_HEADER;
pub use crate::config::{Isolation, TimeboxConfig};
