//! A flamegraph of one request, on demand: an authorized admin appends `?__profile__` to any
//! URL and gets a profile of exactly that request instead of the page.
//!
//! This is Bitbucket's geordi for tower. [`ProfilerLayer`] looks for the trigger, a query
//! parameter (`__profile__` by default) or a header (`x-vigil-profile`), and checks the request
//! with the configured [`Authorize`]r. Nothing is profiled until an authorizer is configured,
//! and a request that is not authorized is passed to the application untouched, so the
//! response gives no hint that a profiler exists.
//!
//! An authorized request is run, with the parameter removed from its URI, on a dedicated
//! profiling thread with its own current-thread tokio runtime, outside the worker pool. It is
//! marked exempt from deadlines (the timebox leaves it alone) and carries a [`Profiled`]
//! extension. A per-thread timer (`timer_create` with `SIGEV_THREAD_ID`) samples only that
//! thread, counting either its CPU time or wall-clock time ([`Mode`]). In wall-clock mode the
//! time the request spends parked is attributed to its open tracing spans, shown as
//! `[awaiting] handler > span` frames, so a request bound on IO shows where it waited; this
//! needs [`crate::spans::SpanLayer`] in the global subscriber.
//!
//! # What the trigger's value asks for
//!
//! | URL | answer |
//! |---|---|
//! | `?__profile__` | HTML page: the flamegraph SVG inline, the application's status, wall and CPU time, the number of samples, the top frames, and links to this same profile in the other formats |
//! | `?__profile__=svg`, `=folded`, `=json` | the raw format |
//! | `?__profile__=pprof` | gzip-compressed pprof `profile.proto` (`attachment; filename="profile.pb.gz"`), for `go tool pprof`, Pyroscope, Grafana and speedscope; sample types `samples/count` and `cpu/nanoseconds` or `wall/nanoseconds` by mode (feature `pprof`) |
//! | `?__profile__=speedscope` | speedscope's JSON file format: one "sampled" profile over shared frames, weighted in nanoseconds |
//! | `?__profile__=cpu`, `=wall`, `=svg,cpu` | the mode, alone or with a format |
//! | `?__profile__=background` | answers at once with a page that refreshes until the profile is ready; profiles are kept in [`ProfilerBuilder::output_dir`] and listed at [`ProfilerBuilder::index_path`] |
//!
//! The header takes the same values (an empty value or `1` asks for the defaults). An unknown
//! value gets `400 Bad Request`, for authorized requests only. While
//! [`ProfilerBuilder::max_concurrent`] profiles run, further ones get `429 Too Many Requests`.
//! After [`ProfilerBuilder::max_duration`], sampling stops and the partial profile is returned,
//! marked as partial (and with an `x-vigil-profile-partial: true` header).
//!
//! A profile viewed as a page is kept in the output directory like a background one (and
//! counts toward [`ProfilerBuilder::retain`]), so that the page's links serve that very profile
//! from `{index_path}/{id}.svg`, `.folded`, `.json`, `.speedscope.json` and `.pb.gz`; if it
//! cannot be written, the page says so and its links profile the request again instead.
//!
//! A profile without a single sample is not answered with an empty graph: every format but
//! `=json` gets `422 Unprocessable Content` saying that the request finished before the first
//! sample (at the configured rate), or `503 Service Unavailable` when the sampler's signal
//! never arrived over many periods (blocked, or taken by another handler).
//!
//! When the client of a profiled request goes away, or an outer layer (a timeout) drops the
//! response future, the profile is cancelled: sampling stops, the request is dropped at its
//! next await point on the profiling thread, and its place is free for the next profile.
//!
//! The flamegraph is rendered with inferno, behind the `flamegraph` feature (on by default);
//! without it the other formats remain. Pages are maud templates, which escape every value.
//!
//! # Example
//!
//! With axum's `Router::layer`, authorized by a closure over the request's parts:
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_vigil::profiler::ProfilerLayer;
//!
//! let token = std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| "change-me".into());
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(ProfilerLayer::new().authorize(move |parts: &http::request::Parts| {
//!         parts.headers.get("x-admin-token").is_some_and(|v| v == token.as_str())
//!     }));
//! ```
//!
//! With tower's `ServiceBuilder` and a shared secret; the profiled response is the profile:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_vigil::profiler::{Mode, ProfilerLayer, SharedSecret};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(
//!         ProfilerLayer::builder()
//!             .authorize(SharedSecret::new("a long random secret"))
//!             .mode(Mode::CpuTime)
//!             .build()
//!             .unwrap(),
//!     )
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("page")))
//!     }));
//!
//! let request = Request::get("/report?__profile__=json")
//!     .header("x-vigil-secret", "a long random secret")
//!     .body(String::new())
//!     .unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! let json = response.into_body().collect().await.unwrap().to_bytes();
//! let profile: serde_json::Value = serde_json::from_slice(&json).unwrap();
//! // This request is over long before the first sample; other formats would answer 422.
//! assert_eq!(profile["request"], "GET /report");
//!
//! // Without the secret, the application answers as usual.
//! let request = Request::get("/report?__profile__").body(String::new()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "page");
//! # }
//! ```
//!
//! # Requirements and limits
//!
//! - Sampling needs Linux with glibc; elsewhere a profile request gets `503`.
//! - Only the profiling thread is sampled. Work the request hands to other threads
//!   (`spawn_blocking`, other runtimes) shows as waiting, in wall-clock mode.
//! - Tasks the request spawns run on the profiling runtime and end with the request.
//! - A cancelled profile (partial, or abandoned by its client) ends its request at the next
//!   await point; a request busy on the CPU keeps its place until it reaches one.
//! - Inner layers must be `Clone + Send + 'static`, since a clone of the inner service runs on
//!   the profiling thread, and the request body must be `Send`.

mod authorize;
mod background;
mod body;
mod export;
mod fold;
mod future;
mod layer;
mod page;
#[cfg(feature = "flamegraph")]
mod render;
mod runner;
mod service;
mod trigger;

pub use self::authorize::{Authorize, DenyAll, RequireExtension, SharedSecret};
pub use self::body::ProfilerBody;
pub use self::future::ResponseFuture;
pub use self::layer::{Mode, Profiled, ProfilerBuilder, ProfilerLayer};
pub use self::service::Profiler;

#[cfg(test)]
mod tests;
