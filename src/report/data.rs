//! The report as typed data: times are [`SystemTime`], durations [`Duration`], and what can
//! only be one of a few things is an enum. Renderers ([`super::text`], the JSON form through
//! [`Serialize`]) turn it into text.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::json;
use crate::stack::{Frame, FrameOrigin};

/// Why a report is being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReportKind {
    /// The request is still running past its threshold.
    Slow,
    /// A request that was reported slow has finished.
    Completed,
}

/// What made the monitor take a slow report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReportTrigger {
    /// The watchdog's threshold, or one of its multiples.
    Threshold,
    /// The timebox's soft deadline: the request was asked to stop.
    SoftDeadline,
    /// The timebox's hard deadline, with a thread still inside the request's poll (wedged).
    HardDeadline,
    /// The application is shutting down with the request still in flight.
    Shutdown,
}

/// How the request's stack was (or was not) obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StackStatus {
    /// Frames of the thread that was polling the request when the signal landed.
    Captured,
    /// No thread was polling the request: it is pending, waiting to be woken. See the spans.
    Pending,
    /// The poll ended between the monitor's look and the signal's arrival, so no stack is shown
    /// rather than someone else's.
    PollEnded,
    /// The thread did not answer the signal in time (it may have the signal blocked, or be in
    /// uninterruptible sleep).
    TimedOut {
        /// Milliseconds waited.
        waited_ms: u64,
    },
    /// The polling thread no longer exists.
    ThreadGone,
    /// Stack capture is switched off in the configuration.
    Disabled,
    /// Stack capture cannot work here; the reason says why.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A completion record: no stack is taken when a request finishes.
    NotApplicable,
}

/// The polling thread at capture time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ThreadInfo {
    /// Kernel thread id.
    pub tid: i32,
    /// Thread name, if it has one.
    pub name: Option<String>,
}

/// One open tracing span of the request, as kept by [`crate::spans::SpanLayer`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OpenSpan {
    /// Span name.
    pub name: String,
    /// Span target (usually the module path).
    pub target: String,
    /// Recorded fields, as `key=value` separated by spaces.
    pub fields: String,
    /// Seconds since the span was created.
    pub age_secs: f64,
    /// Whether a thread is inside the span right now.
    pub entered: bool,
    /// Position in the tree: 0 for spans opened directly by the request.
    pub depth: usize,
    /// Index of the parent in [`SpanTree::spans`], if it is part of the request.
    pub parent: Option<usize>,
}

/// Where a request awaits: its open spans.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SpanTree {
    /// False when no [`crate::spans::SpanLayer`] is installed.
    pub installed: bool,
    /// Open spans, parents before children.
    pub spans: Vec<OpenSpan>,
    /// Why spans may be missing: a global tracing filter keeps them from being created.
    pub filtered: Option<String>,
}

impl SpanTree {
    /// No span layer installed, so nothing is known.
    pub(crate) fn unknown() -> Self {
        Self {
            installed: false,
            spans: Vec::new(),
            filtered: None,
        }
    }
}

/// Where a pending request awaits, found by polling it once more with a probe waker: each leaf
/// future that keeps or wakes the waker shows the chain of async functions down to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Awaiting {
    /// What the probe found.
    pub status: AwaitStatus,
    /// Each leaf the request waits on (several under `select!` or `join!`).
    pub leaves: Vec<AwaitedLeaf>,
    /// Leaves seen beyond those listed.
    pub more_leaves: usize,
    /// When the probe poll never came: the threads busy in one long poll right now, whose
    /// work keeps this request from being polled.
    pub busy_threads: Vec<BusyThread>,
}

/// The outcome of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AwaitStatus {
    /// The probe poll ran and leaves showed themselves.
    Found,
    /// The probe poll ran, but no leaf kept or woke the waker, so the await point is unknown.
    Unknown {
        /// Why that can happen.
        reason: String,
    },
    /// The task was woken for the probe but nobody polled it within the wait: every worker is
    /// busy, or a blocking neighbour starves it. See the busy threads.
    NotPolled {
        /// Milliseconds waited for the probe poll.
        waited_ms: u64,
    },
    /// The request finished during the probe poll.
    Finished,
    /// No probe could be made; the reason says why.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// How a leaf showed itself during the probe poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeafSignal {
    /// It kept the waker to be woken later: the request waits on it.
    Waits,
    /// It woke the task at once: it yields, or wakes itself in every poll.
    WakesItself,
}

/// One leaf future a pending request waits on, with the chain of async functions above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AwaitedLeaf {
    /// How the leaf showed itself.
    pub signal: LeafSignal,
    /// The leaf, as the innermost library frame below the application's code, such as
    /// `<tokio::time::sleep::Sleep as core::future::future::Future>::poll`.
    pub leaf: Option<String>,
    /// Frames from the leaf (innermost) up to the request's future.
    pub chain: Vec<Frame>,
    /// The chain was deeper than the frame limit and is cut at its outer end.
    pub truncated: bool,
}

/// What a request was doing when its report was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RequestPhase {
    /// The handler has not answered yet.
    Handler,
    /// The handler answered; the response body is streaming (or, in a completion record,
    /// streamed until its last byte).
    StreamingBody {
        /// How long after the start the handler answered.
        #[serde(rename = "response_after_secs", serialize_with = "json::secs")]
        response_after: Duration,
        /// Body bytes sent so far.
        bytes: u64,
        /// Body frames sent so far.
        frames: u64,
        /// Time since the last frame, when the report was made.
        #[serde(rename = "since_last_frame_secs", serialize_with = "json::secs")]
        since_last_frame: Duration,
    },
}

/// A thread working for a request outside its poll, with its native stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HelperThread {
    /// The thread.
    pub thread: ThreadInfo,
    /// How its stack was obtained.
    pub stack_status: StackStatus,
    /// Its native frames, innermost first.
    pub stack: Vec<Frame>,
}

/// A thread busy in one long poll while a request waits to be polled.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BusyThread {
    /// The thread.
    pub thread: ThreadInfo,
    /// The request it polls, if it is one of the registry's.
    pub request_id: u64,
    /// How long that request has been running, in seconds.
    pub request_elapsed_secs: f64,
    /// How its stack was obtained.
    pub stack_status: StackStatus,
    /// Its native frames, innermost first.
    pub stack: Vec<Frame>,
}

/// How a reported request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Completion {
    /// Response status, or `None` when the request future was dropped before responding
    /// (client gone, or cancelled by a timeout).
    pub status: Option<u16>,
}

/// A report about one slow request.
///
/// Made by the watchdog, or by [`SlowRequestReport::builder`] to test a sink. The JSON form
/// (through [`Serialize`]) gives times as RFC 3339 strings (UTC, milliseconds) and `elapsed`
/// as `elapsed_secs`, a number of seconds.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SlowRequestReport {
    /// Slow (still running) or completed.
    pub kind: ReportKind,
    /// The request's id within this process.
    pub request_id: u64,
    /// 1 for the first slow report of the request, 2 for the second, and so on.
    pub capture: u32,
    /// What made the monitor take this report.
    pub trigger: ReportTrigger,
    /// When this report was made.
    #[serde(serialize_with = "json::rfc3339")]
    pub intercepted_at: SystemTime,
    /// Request method.
    pub method: String,
    /// Request URI with secret query parameters redacted.
    pub uri: String,
    /// HTTP version.
    #[serde(serialize_with = "json::version")]
    pub version: http::Version,
    /// The Host header, or the URI's authority.
    pub host: Option<String>,
    /// The configured headers, secrets redacted.
    pub headers: Vec<(String, String)>,
    /// Process id.
    pub pid: u32,
    /// Host name of the machine.
    pub hostname: String,
    /// The thread polling the request at capture time; `None` when it was pending.
    pub thread: Option<ThreadInfo>,
    /// When the request started.
    #[serde(serialize_with = "json::rfc3339")]
    pub started_at: SystemTime,
    /// Time between the start and this report (for a completion record, the end).
    #[serde(rename = "elapsed_secs", serialize_with = "json::secs")]
    pub elapsed: Duration,
    /// How the stack was obtained.
    pub stack_status: StackStatus,
    /// Native frames, innermost first.
    pub stack: Vec<Frame>,
    /// Open spans of the request.
    pub spans: SpanTree,
    /// Set on completion records.
    pub completion: Option<Completion>,
    /// A short key for grouping reports of the same route: method and path.
    pub route_key: String,
    /// For a pending request: where it awaits, found by a probe poll.
    pub awaiting: Option<Awaiting>,
    /// Threads working for the request outside its poll when the report was made: its
    /// `spawn_blocking` jobs, threads with its spans entered.
    pub helper_threads: Vec<HelperThread>,
    /// What the request was doing: its handler running, or its response body streaming.
    pub phase: RequestPhase,
    /// A short, stable key that groups reports of the same wedge across requests, processes
    /// and hosts: a hash of [`SlowRequestReport::signature_text`].
    pub signature: String,
    /// What the signature is made of: the route (numeric and uuid-like path segments
    /// collapsed), then the innermost application frame, or for a pending request the awaited
    /// leaf and the application frame that awaits it.
    pub signature_text: String,
}

impl SlowRequestReport {
    /// The innermost frame of application code, if the stack has one.
    pub fn top_app_frame(&self) -> Option<&Frame> {
        self.stack.iter().find(|f| f.origin == FrameOrigin::App)
    }
}
