//! Slow-request reports: what the sinks receive, as data ([`serde::Serialize`]) and as text.
//!
//! A [`SlowRequestReport`] is made when a request passes its threshold (and again at the
//! configured multiples of it), and once more when a reported request finishes. Secrets are
//! redacted when the request is registered, so they never reach a report.

use std::fmt::Write as _;
use std::time::SystemTime;

use http::header::{self, HeaderName};
use serde::Serialize;

pub use crate::stack::Frame;
pub use crate::stack::FrameOrigin;

/// The text that replaces every redacted value.
pub const REDACTED: &str = "[redacted]";

/// Headers whose values are always redacted, whatever the configuration says.
pub const ALWAYS_REDACTED_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Longest header value copied into a report; the rest is cut with a visible mark, so one huge
/// header cannot hold megabytes in a reused registry slot.
pub(crate) const HEADER_VALUE_LIMIT: usize = 1024;
/// Longest URI (and route key) copied into a report.
pub(crate) const URI_LIMIT: usize = 4096;

/// Cuts `text` at `limit` bytes (on a character boundary) with a mark giving the full length,
/// and gives back a buffer that grew far past the limit.
fn cap(text: &mut String, limit: usize) {
    if text.len() > limit {
        let total = text.len();
        let mut at = limit;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        let _ = write!(text, "…[truncated, {total} bytes]");
    }
    if text.capacity() > 2 * limit {
        text.shrink_to(limit + 64);
    }
}

/// What a request looked like when it came in, copied into reused buffers at registration.
#[derive(Debug, Default)]
pub(crate) struct RequestMeta {
    pub(crate) method: http::Method,
    pub(crate) version: http::Version,
    pub(crate) uri: String,
    pub(crate) route_key: String,
    pub(crate) headers: Vec<(HeaderName, String)>,
    pub(crate) header_count: usize,
}

/// Which request parts a report carries and which secrets it hides.
#[derive(Debug, Clone)]
pub(crate) struct RequestCapture {
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) redacted_headers: Vec<HeaderName>,
    pub(crate) redacted_query_params: Vec<String>,
}

impl RequestCapture {
    /// Copies the request line and the selected headers, redacting secrets on the way in.
    pub(crate) fn fill<B>(&self, request: &http::Request<B>, meta: &mut RequestMeta) {
        meta.method.clone_from(request.method());
        meta.version = request.version();
        meta.uri.clear();
        meta.route_key.clear();
        let uri = request.uri();
        if let Some(scheme) = uri.scheme_str() {
            meta.uri.push_str(scheme);
            meta.uri.push_str("://");
        }
        if let Some(authority) = uri.authority() {
            meta.uri.push_str(authority.as_str());
        }
        meta.uri.push_str(uri.path());
        meta.route_key.push_str(uri.path());
        if let Some(query) = uri.query() {
            meta.uri.push('?');
            self.push_redacted_query(query, &mut meta.uri);
        }
        cap(&mut meta.uri, URI_LIMIT);
        cap(&mut meta.route_key, URI_LIMIT);
        meta.header_count = 0;
        // One pass over the request's few headers beats a hash lookup per configured name.
        for (name, value) in request.headers() {
            if !self.headers.contains(name) {
                continue;
            }
            if meta.header_count == meta.headers.len() {
                meta.headers.push((name.clone(), String::new()));
            }
            let entry = &mut meta.headers[meta.header_count];
            if entry.0 != name {
                entry.0.clone_from(name);
            }
            entry.1.clear();
            if self.is_redacted_header(name) {
                entry.1.push_str(REDACTED);
            } else {
                push_header_value(value, &mut entry.1);
            }
            if entry.1.capacity() > 2 * HEADER_VALUE_LIMIT {
                entry.1.shrink_to(HEADER_VALUE_LIMIT + 64);
            }
            meta.header_count += 1;
        }
    }

    fn is_redacted_header(&self, name: &HeaderName) -> bool {
        ALWAYS_REDACTED_HEADERS.contains(name) || self.redacted_headers.contains(name)
    }

    fn push_redacted_query(&self, query: &str, out: &mut String) {
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            let (key, has_value) = match pair.split_once('=') {
                Some((key, _)) => (key, true),
                None => (pair, false),
            };
            if has_value && self.is_redacted_param(key) {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            } else {
                out.push_str(pair);
            }
        }
    }

    /// Compares names the way a server would decode them: case-sensitive, but percent-encoding
    /// and `+` ignored, so `api%5Fkey` does not slip past a rule for `api_key`.
    fn is_redacted_param(&self, raw_key: &str) -> bool {
        self.redacted_query_params
            .iter()
            .any(|name| percent_decoded_eq(raw_key, name))
    }
}

fn percent_decoded_eq(raw: &str, plain: &str) -> bool {
    let raw = raw.as_bytes();
    let mut expected = plain.bytes();
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' if i + 2 < raw.len() => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(decoded) => {
                        i += 2;
                        decoded
                    }
                    None => b'%',
                }
            }
            b'+' => b' ',
            other => other,
        };
        if expected.next() != Some(byte) {
            return false;
        }
        i += 1;
    }
    expected.next().is_none()
}

/// Header values are usually ASCII; anything else is shown lossily, and control characters are
/// escaped so a value cannot forge lines in a text report. At most [`HEADER_VALUE_LIMIT`] bytes
/// of the value are read, so a huge header costs nothing more than a short one.
fn push_header_value(value: &http::HeaderValue, out: &mut String) {
    let bytes = value.as_bytes();
    let shown = &bytes[..bytes.len().min(HEADER_VALUE_LIMIT)];
    let start = out.len();
    if shown.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        // The common case: printable ASCII, copied as it is.
        out.push_str(std::str::from_utf8(shown).unwrap_or_default());
    } else {
        push_escaped(shown, out, start);
    }
    if bytes.len() > shown.len() {
        let _ = write!(out, "…[truncated, {} bytes]", bytes.len());
    }
}

fn push_escaped(shown: &[u8], out: &mut String, start: usize) {
    'chunks: for chunk in shown.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() - start >= HEADER_VALUE_LIMIT {
                break 'chunks;
            }
            if c.is_control() {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            } else {
                out.push(c);
            }
        }
        if !chunk.invalid().is_empty() {
            out.push('\u{fffd}');
        }
    }
}

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
    /// Not applicable: this is a completion record.
    NotCaptured,
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
}

impl SpanTree {
    /// Root-to-leaf paths, such as `handler > load_report{id=42} > db.query{sql="…"} 4.8 s`.
    pub fn chains(&self) -> Vec<String> {
        let mut chains = Vec::new();
        for (index, span) in self.spans.iter().enumerate() {
            let is_leaf = !self.spans.iter().any(|s| s.parent == Some(index));
            if !is_leaf {
                continue;
            }
            let mut path = vec![index];
            let mut cursor = span.parent;
            while let Some(parent) = cursor {
                path.push(parent);
                cursor = self.spans[parent].parent;
            }
            let mut line = String::new();
            for (n, &i) in path.iter().rev().enumerate() {
                if n > 0 {
                    line.push_str(" > ");
                }
                let s = &self.spans[i];
                line.push_str(&s.name);
                if !s.fields.is_empty() {
                    let _ = write!(line, "{{{}}}", s.fields);
                }
            }
            let _ = write!(line, " {}", format_secs(span.age_secs));
            if span.entered {
                line.push_str(" (entered)");
            }
            chains.push(line);
        }
        chains
    }
}

/// The route of a request for grouping: its method and path, with numeric, uuid-like and long
/// hexadecimal segments collapsed, so `/users/1` and `/users/2` are one route.
pub(crate) fn collapsed_route(route_key: &str) -> String {
    let (method, path) = route_key.split_once(' ').unwrap_or(("", route_key));
    let path = path.split('?').next().unwrap_or(path);
    let mut out = String::with_capacity(route_key.len());
    out.push_str(method);
    out.push(' ');
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            out.push('/');
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let is_uuid = segment.len() == 36
            && segment.split('-').map(str::len).eq([8usize, 4, 4, 4, 12])
            && hex(&segment.replace('-', ""));
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str("{n}");
        } else if is_uuid {
            out.push_str("{uuid}");
        } else if segment.len() >= 16 && hex(segment) {
            out.push_str("{hex}");
        } else {
            out.push_str(segment);
        }
    }
    out
}

/// The signature of a report: its text, and a 12-digit hash of it (FNV-1a, stable everywhere).
pub(crate) fn signature(
    route_key: &str,
    stack: &[Frame],
    awaiting: Option<&Awaiting>,
) -> (String, String) {
    let app_frame = |frames: &[Frame]| {
        frames
            .iter()
            .find(|f| f.origin == FrameOrigin::App)
            .and_then(|f| f.function.clone())
    };
    let mut text = collapsed_route(route_key);
    let leaf = awaiting.and_then(|a| a.leaves.first());
    if let Some(leaf) = leaf {
        let _ = write!(
            text,
            " @ awaits {}",
            leaf.leaf.as_deref().unwrap_or("an unnamed future")
        );
        if let Some(frame) = app_frame(&leaf.chain) {
            let _ = write!(text, " in {frame}");
        }
    } else if let Some(frame) = app_frame(stack) {
        let _ = write!(text, " @ {frame}");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (format!("{:012x}", hash >> 16), text)
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
    /// When this report was made (RFC 3339, UTC).
    pub intercepted_at: String,
    /// Request method.
    pub method: String,
    /// Request URI with secret query parameters redacted.
    pub uri: String,
    /// HTTP version.
    pub version: String,
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
    /// When the request started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds between the start and this report.
    pub elapsed_secs: f64,
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
    /// A short, stable key that groups reports of the same wedge across requests, processes
    /// and hosts: a hash of [`SlowRequestReport::signature_text`].
    pub signature: String,
    /// What the signature is made of: the route (numeric and uuid-like path segments
    /// collapsed), then the innermost application frame, or for a pending request the awaited
    /// leaf and the application frame that awaits it.
    pub signature_text: String,
}

pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Seconds as `480 ms` below one second, `7.2 s` above.
pub(crate) fn format_secs(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else {
        format!("{secs:.1} s")
    }
}

impl SlowRequestReport {
    /// A one-line summary, such as `slow request: GET /api/jobs (7.2 s)`.
    pub fn summary(&self) -> String {
        match self.kind {
            ReportKind::Slow => format!(
                "slow request: {} {} ({})",
                self.method,
                self.uri,
                format_secs(self.elapsed_secs)
            ),
            ReportKind::Completed => format!(
                "slow request completed: {} {} after {} with {}",
                self.method,
                self.uri,
                format_secs(self.elapsed_secs),
                self.completion_status()
            ),
        }
    }

    fn completion_status(&self) -> String {
        match self.completion.as_ref().and_then(|c| c.status) {
            Some(status) => format!("status {status}"),
            None => "no response (the request was dropped)".to_owned(),
        }
    }

    /// The innermost frame of application code, if the stack has one.
    pub fn top_app_frame(&self) -> Option<&Frame> {
        self.stack.iter().find(|f| f.origin == FrameOrigin::App)
    }

    /// Renders the report as text, in the manner of dogslow's reports.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match self.kind {
            ReportKind::Slow => {
                let _ = writeln!(out, "Slow request intercepted at {}", self.intercepted_at);
            }
            ReportKind::Completed => {
                let _ = writeln!(
                    out,
                    "Slow request completed after {} with {}",
                    format_secs(self.elapsed_secs),
                    self.completion_status()
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{} {} {}", self.method, self.uri, self.version);
        if let Some(host) = &self.host {
            let _ = writeln!(out, "Host:       {host}");
        }
        let _ = writeln!(out, "Server:     {} (pid {})", self.hostname, self.pid);
        if let Some(thread) = &self.thread {
            let _ = writeln!(
                out,
                "Thread:     {} (tid {})",
                thread.name.as_deref().unwrap_or("<unnamed>"),
                thread.tid
            );
        }
        let _ = writeln!(out, "Request id: {}", self.request_id);
        if !self.signature.is_empty() {
            let _ = writeln!(
                out,
                "Signature:  {} ({})",
                self.signature, self.signature_text
            );
        }
        let _ = writeln!(out, "Started:    {}", self.started_at);
        let _ = writeln!(out, "Elapsed:    {}", format_secs(self.elapsed_secs));
        if self.kind == ReportKind::Slow {
            let why = match self.trigger {
                ReportTrigger::Threshold => "",
                ReportTrigger::SoftDeadline => ", at the soft deadline (asked to stop)",
                ReportTrigger::HardDeadline => ", at the hard deadline (wedged: still running)",
                ReportTrigger::Shutdown => ", at shutdown (still in flight)",
            };
            let _ = writeln!(out, "Report:     {} for this request{why}", self.capture);
        }
        if self.headers.iter().any(|(name, _)| name != "host") {
            let _ = writeln!(out);
            for (name, value) in &self.headers {
                if name == "host" {
                    continue;
                }
                let _ = writeln!(out, "{name}: {value}");
            }
        }
        if self.kind == ReportKind::Slow {
            let _ = writeln!(out);
            self.write_stack(&mut out);
            if let Some(awaiting) = &self.awaiting {
                let _ = writeln!(out);
                write_awaiting(awaiting, &mut out);
            }
            for helper in &self.helper_threads {
                let _ = writeln!(out);
                let _ = writeln!(
                    out,
                    "Working for this request on thread {} (tid {}):",
                    helper.thread.name.as_deref().unwrap_or("unnamed"),
                    helper.thread.tid
                );
                if helper.stack_status == StackStatus::Captured {
                    write_frames(&helper.stack, &mut out);
                } else {
                    let _ = writeln!(out, "      stack: {:?}", helper.stack_status);
                }
            }
            let _ = writeln!(out);
            self.write_spans(&mut out);
        }
        out
    }

    fn write_stack(&self, out: &mut String) {
        match &self.stack_status {
            StackStatus::Captured => {
                let _ = writeln!(
                    out,
                    "Stack of the polling thread (innermost first; `>` marks application code):"
                );
                write_frames(&self.stack, out);
            }
            StackStatus::Pending => {
                let _ = writeln!(
                    out,
                    "Stack: none, the request is pending (no thread is polling it). Where it waits:"
                );
            }
            StackStatus::PollEnded => {
                let _ = writeln!(
                    out,
                    "Stack: none, the poll ended before the signal arrived; the request is between polls."
                );
            }
            StackStatus::TimedOut { waited_ms } => {
                let _ = writeln!(
                    out,
                    "Stack: the polling thread did not answer the capture signal within {waited_ms} ms \
                     (signal blocked, or uninterruptible sleep)."
                );
            }
            StackStatus::ThreadGone => {
                let _ = writeln!(out, "Stack: the polling thread exited before the capture.");
            }
            StackStatus::Disabled => {
                let _ = writeln!(out, "Stack: capture is switched off in the configuration.");
            }
            StackStatus::Unavailable { reason } => {
                let _ = writeln!(out, "Stack: unavailable: {reason}");
            }
            StackStatus::NotCaptured => {}
        }
    }

    fn write_spans(&self, out: &mut String) {
        if !self.spans.installed {
            let _ = writeln!(
                out,
                "Open spans: unknown. Install tower_vigil::spans::SpanLayer in your tracing \
                 subscriber to see where a request awaits."
            );
            return;
        }
        let chains = self.spans.chains();
        if chains.is_empty() {
            let _ = writeln!(out, "Open spans: none under this request.");
            return;
        }
        let _ = writeln!(
            out,
            "Open spans (root > ... > deepest, age of the deepest):"
        );
        for chain in chains {
            let _ = writeln!(out, "  {chain}");
        }
    }
}

fn write_awaiting(awaiting: &Awaiting, out: &mut String) {
    match &awaiting.status {
        AwaitStatus::Found => {
            let _ = writeln!(
                out,
                "Awaiting ({} leaf future{}; innermost first, `>` marks application code):",
                awaiting.leaves.len(),
                if awaiting.leaves.len() == 1 { "" } else { "s" }
            );
        }
        AwaitStatus::Unknown { reason } => {
            let _ = writeln!(out, "Awaiting: await point unknown: {reason}");
        }
        AwaitStatus::NotPolled { waited_ms } => {
            let _ = writeln!(
                out,
                "Awaiting: the request is runnable but was not polled within {waited_ms} ms of                  being woken: every worker thread is busy. Threads busy in one long poll now:"
            );
        }
        AwaitStatus::Finished => {
            let _ = writeln!(
                out,
                "Awaiting: nothing; the request finished during the probe."
            );
        }
        AwaitStatus::Unavailable { reason } => {
            let _ = writeln!(out, "Awaiting: unknown: {reason}");
        }
    }
    for leaf in &awaiting.leaves {
        let what = match leaf.signal {
            LeafSignal::Waits => "waits on",
            LeafSignal::WakesItself => "wakes itself in",
        };
        let _ = writeln!(
            out,
            "  {what} {}{}",
            leaf.leaf.as_deref().unwrap_or("an unnamed future"),
            if leaf.truncated {
                " (chain truncated)"
            } else {
                ""
            }
        );
        write_frames(&leaf.chain, out);
    }
    if awaiting.more_leaves > 0 {
        let _ = writeln!(out, "  ... and {} more leaves", awaiting.more_leaves);
    }
    for busy in &awaiting.busy_threads {
        let _ = writeln!(
            out,
            "  thread {} (tid {}), polling request {} for {}:",
            busy.thread.name.as_deref().unwrap_or("unnamed"),
            busy.thread.tid,
            busy.request_id,
            format_secs(busy.request_elapsed_secs)
        );
        if busy.stack_status == StackStatus::Captured {
            write_frames(&busy.stack, out);
        } else {
            let _ = writeln!(out, "      stack: {:?}", busy.stack_status);
        }
    }
}

/// Writes frames, showing application frames in full and folding runs of library frames.
fn write_frames(frames: &[Frame], out: &mut String) {
    let mut folded: Vec<&Frame> = Vec::new();
    let flush = |folded: &mut Vec<&Frame>, out: &mut String| {
        if folded.is_empty() {
            return;
        }
        if folded.len() <= 2 {
            for frame in folded.iter() {
                write_frame(frame, ' ', out);
            }
        } else {
            let mut crates: Vec<&str> = folded
                .iter()
                .map(|f| f.function.as_deref().map_or("system libraries", crate_of))
                .collect();
            crates.sort_unstable();
            crates.dedup();
            write_frame(folded[0], ' ', out);
            let _ = writeln!(
                out,
                "      ... {} more frames in {}",
                folded.len() - 1,
                crates.join(", ")
            );
        }
        folded.clear();
    };
    for frame in frames {
        if frame.origin == FrameOrigin::App {
            flush(&mut folded, out);
            write_frame(frame, '>', out);
        } else {
            folded.push(frame);
        }
    }
    flush(&mut folded, out);
}

fn crate_of(function: &str) -> &str {
    if function.contains("::") {
        crate::stack::leading_crate(function)
    } else {
        "system libraries"
    }
}

fn write_frame(frame: &Frame, marker: char, out: &mut String) {
    let name = frame.function.as_deref().unwrap_or("<unknown>");
    let _ = write!(out, "  {marker} {name}");
    if frame.inlined {
        out.push_str(" (inlined)");
    }
    out.push('\n');
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => {
            let _ = writeln!(out, "        at {file}:{line}");
        }
        (Some(file), None) => {
            let _ = writeln!(out, "        at {file}");
        }
        _ => {
            let _ = writeln!(out, "        at {}", frame.ip);
        }
    }
}

/// Host name of this machine, read once.
pub(crate) fn hostname() -> &'static str {
    static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOSTNAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

#[cfg(test)]
mod signature_tests {
    use super::collapsed_route;

    #[test]
    fn routes_collapse_ids_and_keep_words() {
        assert_eq!(
            collapsed_route("GET /users/42/posts"),
            "GET /users/{n}/posts"
        );
        assert_eq!(
            collapsed_route("GET /o/123e4567-e89b-12d3-a456-426614174000?x=1"),
            "GET /o/{uuid}"
        );
        assert_eq!(
            collapsed_route("PUT /blob/0123456789abcdef01"),
            "PUT /blob/{hex}"
        );
        assert_eq!(collapsed_route("GET /v2/health"), "GET /v2/health");
        assert_eq!(collapsed_route("GET /"), "GET /");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(params: &[&str]) -> RequestCapture {
        RequestCapture {
            headers: vec![header::HOST, header::AUTHORIZATION, header::USER_AGENT],
            redacted_headers: Vec::new(),
            redacted_query_params: params.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn secrets_are_redacted_when_copied() {
        let request = http::Request::get("/a?token=s3cret&x=1&api%5Fkey=k&flag")
            .header("authorization", "Bearer abc")
            .header("host", "example.com")
            .body(())
            .unwrap();
        let mut meta = RequestMeta::default();
        capture(&["token", "api_key"]).fill(&request, &mut meta);
        assert_eq!(
            meta.uri,
            "/a?token=[redacted]&x=1&api%5Fkey=[redacted]&flag"
        );
        let headers: Vec<_> = meta.headers[..meta.header_count]
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.clone()))
            .collect();
        assert!(headers.contains(&("authorization".into(), REDACTED.into())));
        assert!(headers.contains(&("host".into(), "example.com".into())));
        assert!(!format!("{headers:?}").contains("abc"));
    }

    #[test]
    fn buffers_are_reused_between_requests() {
        let capture = capture(&[]);
        let mut meta = RequestMeta::default();
        let long = http::Request::get("/a/very/long/path/that/needs/room?x=1")
            .header("host", "h")
            .body(())
            .unwrap();
        capture.fill(&long, &mut meta);
        let uri_capacity = meta.uri.capacity();
        let short = http::Request::get("/b").body(()).unwrap();
        capture.fill(&short, &mut meta);
        assert_eq!(meta.uri, "/b");
        assert_eq!(meta.header_count, 0);
        assert_eq!(meta.uri.capacity(), uri_capacity);
    }

    #[test]
    fn percent_decoding_matches_names() {
        assert!(percent_decoded_eq("api%5Fkey", "api_key"));
        assert!(percent_decoded_eq("api_key", "api_key"));
        assert!(!percent_decoded_eq("API_KEY", "api_key"));
        assert!(!percent_decoded_eq("api_key2", "api_key"));
        assert!(!percent_decoded_eq("%", "api_key"));
        assert!(percent_decoded_eq("%", "%"));
    }

    #[test]
    fn span_chains_run_from_root_to_leaf() {
        let span = |name: &str, fields: &str, parent, age| OpenSpan {
            name: name.into(),
            target: "t".into(),
            fields: fields.into(),
            age_secs: age,
            entered: false,
            depth: 0,
            parent,
        };
        let tree = SpanTree {
            installed: true,
            spans: vec![
                span("handler", "", None, 5.0),
                span("load_report", "id=42", Some(0), 4.9),
                span("db.query", "sql=\"select 1\"", Some(1), 4.8),
            ],
        };
        assert_eq!(
            tree.chains(),
            vec!["handler > load_report{id=42} > db.query{sql=\"select 1\"} 4.8 s"]
        );
    }
}
