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
//! running code, which would corrupt state. With isolation (the default) the handler runs in
//! a task of its own, so the 503 goes out on time even when the handler blocks its thread; that
//! work is counted as *wedged*, and reported with its native stack when a watchdog is in the
//! same [`crate::Vigil`] stack.
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
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Extension, Router};
//! use tower_vigil::timebox::{timebox, Deadline, TimeboxLayer};
//!
//! async fn report(Extension(deadline): Extension<Deadline>) -> String {
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

pub use self::body::{BodyDeadlineElapsed, TimeboxBody};
pub(crate) use self::deadline::{request_deadline_in_force, ActiveDeadline, DeadlineScope};
pub use self::deadline::{
    spawn_blocking, timebox, Deadline, DeadlineKind, Elapsed, Quota, Timeboxed,
};
pub use self::future::ResponseFuture;
pub use self::layer::{InlineTimeboxLayer, TimeboxBuilder, TimeboxLayer, TimeboxStats};
pub use self::service::{InlineTimebox, Timebox};
pub use self::shed::REQUEST_START_HEADER;
pub use crate::config::TimeboxConfig;
