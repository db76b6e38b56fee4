//! Reports made by hand, to test a sink without a slow request.

use std::time::{Duration, SystemTime};

use super::{
    Completion, OpenSpan, ReportKind, ReportTrigger, RequestPhase, SlowRequestReport, SpanTree,
    StackStatus, ThreadInfo,
};
use crate::stack::{Frame, FrameOrigin};

impl SlowRequestReport {
    /// A builder for a report about `method uri`, to test a [`Sink`](crate::sink::Sink) with.
    ///
    /// Unless set otherwise, the report is the first slow capture of request 1, made now at
    /// the threshold, with no elapsed time, no stack (the request is pending) and no spans.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_vigil::report::{ReportKind, SlowRequestReport};
    ///
    /// let report = SlowRequestReport::builder("GET", "/api/jobs?page=2")
    ///     .elapsed(Duration::from_millis(7200))
    ///     .header("host", "example.com")
    ///     .frame("my_app::jobs::load", "src/jobs.rs", 42)
    ///     .build();
    /// assert_eq!(report.kind, ReportKind::Slow);
    /// assert_eq!(report.route_key, "GET /api/jobs");
    /// assert_eq!(report.summary(), "slow request: GET /api/jobs?page=2 (7.2 s)");
    /// assert_eq!(
    ///     report.top_app_frame().and_then(|f| f.function.as_deref()),
    ///     Some("my_app::jobs::load")
    /// );
    /// ```
    pub fn builder(method: impl Into<String>, uri: impl Into<String>) -> SlowRequestReportBuilder {
        let method = method.into();
        let uri = uri.into();
        SlowRequestReportBuilder {
            stack_status: None,
            report: SlowRequestReport {
                kind: ReportKind::Slow,
                request_id: 1,
                capture: 1,
                trigger: ReportTrigger::Threshold,
                intercepted_at: SystemTime::now(),
                route_key: format!("{method} {}", path_of(&uri)),
                method,
                uri,
                version: http::Version::HTTP_11,
                host: None,
                headers: Vec::new(),
                pid: std::process::id(),
                hostname: super::hostname().to_owned(),
                thread: None,
                started_at: SystemTime::UNIX_EPOCH,
                elapsed: Duration::ZERO,
                stack_status: StackStatus::Pending,
                stack: Vec::new(),
                spans: SpanTree::unknown(),
                completion: None,
                awaiting: None,
                helper_threads: Vec::new(),
                phase: RequestPhase::Handler,
                signature: String::new(),
                signature_text: String::new(),
            },
        }
    }
}

/// Builds a [`SlowRequestReport`]; made by [`SlowRequestReport::builder`].
#[derive(Debug, Clone)]
pub struct SlowRequestReportBuilder {
    report: SlowRequestReport,
    stack_status: Option<StackStatus>,
}

impl SlowRequestReportBuilder {
    /// The request's id. Default: 1.
    pub fn request_id(mut self, id: u64) -> Self {
        self.report.request_id = id;
        self
    }

    /// Which capture of the request this is, from 1. Default: 1.
    pub fn capture(mut self, capture: u32) -> Self {
        self.report.capture = capture;
        self
    }

    /// What made the report. Default: [`ReportTrigger::Threshold`].
    pub fn trigger(mut self, trigger: ReportTrigger) -> Self {
        self.report.trigger = trigger;
        self
    }

    /// Time from the request's start to the report. Default: zero.
    pub fn elapsed(mut self, elapsed: Duration) -> Self {
        self.report.elapsed = elapsed;
        self
    }

    /// When the report was made; the request started [`elapsed`](Self::elapsed) before.
    /// Default: when the builder was made.
    pub fn intercepted_at(mut self, at: SystemTime) -> Self {
        self.report.intercepted_at = at;
        self
    }

    /// The HTTP version. Default: HTTP/1.1.
    pub fn version(mut self, version: http::Version) -> Self {
        self.report.version = version;
        self
    }

    /// A request header, as the watchdog would have copied it (name in lower case, secrets
    /// already redacted). A `host` header also sets [`SlowRequestReport::host`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        let value = value.into();
        if name == "host" {
            self.report.host = Some(value.clone());
        }
        self.report.headers.push((name, value));
        self
    }

    /// The thread that was polling the request.
    pub fn thread(mut self, tid: i32, name: Option<&str>) -> Self {
        self.report.thread = Some(ThreadInfo {
            tid,
            name: name.map(str::to_owned),
        });
        self
    }

    /// The next frame of application code outwards (call it innermost first). A report with
    /// frames has the stack status [`StackStatus::Captured`] unless
    /// [`stack_status`](Self::stack_status) says otherwise.
    pub fn frame(self, function: impl Into<String>, file: impl Into<String>, line: u32) -> Self {
        self.frame_from(FrameOrigin::App, function, file, line)
    }

    /// The next frame outwards, of code from `origin` (a library, the runtime, the system).
    pub fn frame_from(
        mut self,
        origin: FrameOrigin,
        function: impl Into<String>,
        file: impl Into<String>,
        line: u32,
    ) -> Self {
        self.report.stack.push(Frame {
            ip: "0x0".to_owned(),
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            origin,
            inlined: false,
        });
        self
    }

    /// How the stack was obtained. Default: [`StackStatus::Captured`] with frames,
    /// [`StackStatus::Pending`] without.
    pub fn stack_status(mut self, status: StackStatus) -> Self {
        self.stack_status = Some(status);
        self
    }

    /// An open span inside the previous one (call it outermost first), such as
    /// `span("db.query", "sql=\"select 1\"", Duration::from_secs(4))`.
    pub fn span(
        mut self,
        name: impl Into<String>,
        fields: impl Into<String>,
        age: Duration,
    ) -> Self {
        let spans = &mut self.report.spans;
        spans.installed = true;
        let depth = spans.spans.len();
        spans.spans.push(OpenSpan {
            name: name.into(),
            target: String::new(),
            fields: fields.into(),
            age_secs: age.as_secs_f64(),
            entered: false,
            depth,
            parent: depth.checked_sub(1),
        });
        self
    }

    /// Makes this the completion record of the request, answered with `status` (`None`: the
    /// request was dropped before it answered).
    pub fn completed(mut self, status: Option<u16>) -> Self {
        self.report.kind = ReportKind::Completed;
        self.report.completion = Some(Completion { status });
        self
    }

    /// The report.
    pub fn build(self) -> SlowRequestReport {
        let mut report = self.report;
        report.started_at = report
            .intercepted_at
            .checked_sub(report.elapsed)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if report.host.is_none() {
            report.host = authority_of(&report.uri).map(str::to_owned);
        }
        report.stack_status = match self.stack_status {
            Some(status) => status,
            None if report.kind == ReportKind::Completed => StackStatus::NotApplicable,
            None if report.stack.is_empty() => StackStatus::Pending,
            None => StackStatus::Captured,
        };
        (report.signature, report.signature_text) =
            super::signature::signature(&report.route_key, &report.stack, None);
        report
    }
}

fn authority_of(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// The path of a URI as the watchdog keeps it: no scheme, authority or query.
fn path_of(uri: &str) -> &str {
    let rest = match uri.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => uri,
    };
    rest.split('?').next().unwrap_or(rest)
}
