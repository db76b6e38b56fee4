//! Slow-request reports: what the sinks receive, as typed data and as text.
//!
//! A [`SlowRequestReport`] is made when a request passes its threshold (and again at the
//! configured multiples of it), and once more when a reported request finishes. It is plain
//! data: times are [`SystemTime`](std::time::SystemTime), durations
//! [`Duration`](std::time::Duration). [`SlowRequestReport::to_text`] renders it as text and its
//! [`serde::Serialize`] form is the JSON the file sink writes.
//!
//! Secrets are redacted before any report is made, so they never reach a sink: the
//! [`ALWAYS_REDACTED_HEADERS`], and every query parameter or configured header whose name is on
//! the built-in list ([`SENSITIVE_NAME_FRAGMENTS`], [`SENSITIVE_NAMES`]) or added with
//! [`WatchdogBuilder::redact_query_param`](crate::watchdog::WatchdogBuilder::redact_query_param).
//! [`WatchdogBuilder::allow_query_param`](crate::watchdog::WatchdogBuilder::allow_query_param)
//! lets a parameter of the list through.
//!
//! # Example: testing a sink
//!
//! [`SlowRequestReport::builder`] makes a report without a slow request:
//!
//! ```
//! use std::time::Duration;
//! use tower_vigil::report::SlowRequestReport;
//! use tower_vigil::sink::{FileSink, Sink};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let report = SlowRequestReport::builder("GET", "/api/jobs?token=[redacted]")
//!     .request_id(7)
//!     .elapsed(Duration::from_secs(7))
//!     .header("host", "example.com")
//!     .frame("my_app::jobs::load", "src/jobs.rs", 42)
//!     .span("load_jobs", "page=2", Duration::from_secs(7))
//!     .build();
//!
//! let dir = std::env::temp_dir().join(format!("vigil-report-doc-{}", std::process::id()));
//! let sink = FileSink::new(&dir)?;
//! sink.deliver(&report)?;
//!
//! let text = std::fs::read_to_string(dir.join("slow-7-1.txt"))?;
//! assert!(text.contains("GET /api/jobs?token=[redacted] HTTP/1.1"));
//! assert!(text.contains("> my_app::jobs::load"));
//! let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("slow-7-1.json"))?)?;
//! assert_eq!(json["elapsed_secs"], 7.0);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

mod builder;
mod capture;
mod data;
pub(crate) mod json;
pub(crate) mod signature;
mod text;

pub use self::builder::SlowRequestReportBuilder;
pub(crate) use self::capture::{
    RenderedRequest, RequestCapture, RequestMeta, REPORT_HEADERS_LIMIT,
};
pub use self::capture::{
    ALWAYS_REDACTED_HEADERS, REDACTED, SENSITIVE_NAMES, SENSITIVE_NAME_FRAGMENTS,
    SHARED_VALUE_HEADERS,
};
pub use self::data::{
    AwaitStatus, AwaitedLeaf, Awaiting, BusyThread, Completion, HelperThread, LeafSignal, OpenSpan,
    ReportKind, ReportTrigger, RequestPhase, SlowRequestReport, SpanTree, StackStatus, ThreadInfo,
};
#[cfg(feature = "email")]
pub(crate) use self::text::format_secs;
pub use crate::stack::Frame;
pub use crate::stack::FrameOrigin;

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
