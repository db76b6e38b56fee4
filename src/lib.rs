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
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! tracing_subscriber::registry()
//!     .with(tower_vigil::spans::SpanLayer::new())
//!     .with(tracing_subscriber::fmt::layer())
//!     .init();
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(
//!         WatchdogLayer::new(Duration::from_secs(5))
//!             .sink(FileSink::new("slow-requests")?)
//!             .sink(LogSink::default()),
//!     );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
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
