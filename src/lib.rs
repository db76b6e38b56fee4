//! # tower-vigil
//!
//! Tower middleware that shows *why* a request is slow while it is still slow.
//!
//! - [`watchdog`]: a request still running past a threshold produces a report with the native
//!   stack of the thread polling it, or, for a pending request, the tracing spans it waits in.
//!   The report is taken while the request runs, by a monitor thread outside the async runtime,
//!   and goes to the log, to files, or to any [`sink::Sink`].
//! - [`timebox`]: work past its deadline is cancelled cleanly before the supervisor's kill: a
//!   soft deadline the handler can honour, then a hard one that drops the handler's future and
//!   answers 503.
//! - [`profiler`]: an authorized admin appends `?__profile__` to any URL and gets a flamegraph of
//!   that one request, sampled on a profiling thread of its own.
//! - [`spans`]: the tracing layer that tells where pending requests await.
//! - [`report`]: the report type, as data (serde) and as text.
//! - [`sink`]: where reports go: the log, files, email (SMTP or `.eml` files), or your own.
//!
//! [`Vigil`] stacks the layers in the right order over one registry and one monitor thread.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `email` | yes | `sink::EmailSink`: SMTP or `.eml` files (lettre, rustls with ring) |
//! | `flamegraph` | yes | the profiler's SVG and HTML rendering (inferno) |
//!
//! # Quick start (axum)
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_vigil::sink::{FileSink, LogSink};
//! use tower_vigil::watchdog::WatchdogLayer;
//! use tracing_subscriber::prelude::*;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     tracing_subscriber::registry()
//!         .with(tower_vigil::spans::SpanLayer::new()) // where pending requests await
//!         .with(tracing_subscriber::fmt::layer())
//!         .init();
//!
//!     // Settings are checked here: a bad value is an error that names it.
//!     let watchdog = WatchdogLayer::builder(Duration::from_secs(5))
//!         .sink(FileSink::new("slow-requests")?)
//!         .sink(LogSink::default())
//!         .ignore_path("/health")
//!         .build()?;
//!
//!     let app = Router::new()
//!         .route("/", get(|| async { "hello" }))
//!         .layer(watchdog.clone());
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async {
//!             let _ = tokio::signal::ctrl_c().await;
//!         })
//!         .await?;
//!     // The server has stopped: hand the last reports to the sinks before exiting.
//!     watchdog.flush(Duration::from_secs(5));
//!     Ok(())
//! }
//! ```
//!
//! Without `with_graceful_shutdown`, `axum::serve(..).await` never returns and the flush
//! never runs. [`watchdog::WatchdogLayer::on_shutdown`] wraps the signal so that requests still
//! in flight are reported before the server drains. If a handler may block its thread, see
//! [`timebox`]'s notes on shutdown.
//!
//! # Layer order
//!
//! [`Vigil`] puts the profiler outside the watchdog and the timebox. Relative to tower-http's
//! layers (outermost first):
//!
//! | layer | place | why |
//! |---|---|---|
//! | `TraceLayer` | outside vigil | it logs vigil's own answers too (the timebox's 503, profile pages) with their latency |
//! | `CorsLayer` | outside vigil | preflights are answered before vigil, and vigil's 503 and profile pages get CORS headers a browser needs to read them |
//! | auth (`ValidateRequestHeaderLayer`, login middleware) | outside vigil | rejected requests cost nothing, and the profiler's `RequireExtension` sees what auth inserted |
//! | `CompressionLayer` | outside vigil | either place works; outside it also compresses profile pages |
//! | `TimeoutLayer` | none, or outside vigil and longer than the hard deadline | the timebox replaces it: 503 instead of 408, a soft deadline first, evidence before the kill, profiles exempt |
//!
//! The profiler is exempt from the timebox in either order: outside it, it marks the request
//! exempt; inside it (for example as a `route_layer`), it lifts the deadlines the timebox gave
//! the request.
//!
//! `Router::layer` accepts vigil's response bodies as they are. Wrapping a whole `Router`
//! for `axum::serve`, which needs `Response<Body>`, takes one more layer,
//! `MapResponseBodyLayer::new(Body::new)` from tower-http's `map-response-body` feature:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{body::Body, extract::Request, routing::get, Router, ServiceExt};
//! use tower::ServiceBuilder;
//! use tower_http::map_response_body::MapResponseBodyLayer;
//! use tower_vigil::{timebox::TimeboxLayer, watchdog::WatchdogLayer, Vigil};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vigil = Vigil::new()
//!     .watchdog(WatchdogLayer::new(Duration::from_secs(10)))
//!     .timebox(TimeboxLayer::supervisor_timeout(Duration::from_secs(30))?);
//! let router = Router::new().route("/", get(|| async { "hello" }));
//! let app = ServiceBuilder::new()
//!     .layer(MapResponseBodyLayer::new(Body::new)) // back to `Response<Body>`
//!     .layer(vigil)
//!     .service(router);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, ServiceExt::<Request>::into_make_service(app)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Quality of stacks
//!
//! Stacks are walked with the platform unwinder from `.eh_frame` tables, which Rust emits by
//! default, so they work in release builds without frame pointers. What the build adds:
//!
//! | build setting | what the report shows |
//! |---|---|
//! | `strip = true` | addresses only, no names |
//! | default release (`debug = false`) | function names; inlined functions are folded into their callers |
//! | `debug = "line-tables-only"` (or `1`) | names, file and line, and inlined functions as frames of their own |
//! | `-C force-frame-pointers=yes` | no change to vigil's stacks; helps external profilers such as `perf` |
//! | `panic = "abort"` | still works: Rust keeps unwind tables on Linux unless `-C force-unwind-tables=no` |
//!
//! `debug = "line-tables-only"` in `[profile.release]` is the recommended setting: it costs
//! binary size, not speed.
//!
//! # Platform
//!
//! Native stack capture needs Linux (x86_64 or aarch64) with glibc. Elsewhere reports say that
//! the stack is unavailable and carry the spans.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod config;
mod error;
mod exempt;
mod helpers;
#[cfg(feature = "metrics")]
pub mod metrics;
mod monitor;
pub mod profiler;
mod registry;
pub mod report;
pub mod sink;
pub mod spans;
mod stack;
pub mod timebox;
mod tracked;
mod vigil;
pub mod watchdog;

pub use crate::error::ConfigError;
pub use crate::helpers::spawn_blocking;
pub use crate::vigil::{Vigil, VigilFuture, VigilService};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
