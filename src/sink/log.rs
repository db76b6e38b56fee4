use tracing::Level;

use super::{Sink, SinkError};
use crate::report::{ReportKind, SlowRequestReport};

/// Reports as `tracing` events, target `tower_vigil::report`.
///
/// Each event carries structured fields (`request_id`, `method`, `uri`, `elapsed_ms`, `kind`,
/// `capture`, `top_frame`, `status`, `signature` and `signature_text`) and the full text
/// report in the field `report`. Group by `signature` to see how many requests are stuck in
/// the same place: it is the same across requests, processes and hosts.
///
/// ```
/// use tower_vigil::sink::LogSink;
///
/// let sink = LogSink::default().level(tracing::Level::ERROR);
/// ```
#[derive(Debug, Clone)]
pub struct LogSink {
    level: Level,
    full_report: bool,
}

impl LogSink {
    /// A log sink as the `[sinks.log]` section describes it.
    ///
    /// # Errors
    ///
    /// An unknown level.
    pub fn from_config(config: &crate::config::LogSinkConfig) -> Result<Self, crate::ConfigError> {
        Ok(Self::new()
            .level(config.tracing_level()?)
            .full_report(config.full_report))
    }

    /// The default level: [`Level::WARN`].
    pub(crate) const DEFAULT_LEVEL: Level = Level::WARN;

    /// A sink logging at `WARN` with the full text report.
    pub fn new() -> Self {
        Self {
            level: Self::DEFAULT_LEVEL,
            full_report: true,
        }
    }

    /// Sets the level of the events. Default: `WARN`.
    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// Whether the event includes the whole text report in its `report` field, or only the
    /// structured fields. Default: true.
    pub fn full_report(mut self, full_report: bool) -> Self {
        self.full_report = full_report;
        self
    }
}

impl Default for LogSink {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! emit {
    ($level:expr, $report:expr, $text:expr, $top:expr, $status:expr) => {
        tracing::event!(
            target: "tower_vigil::report",
            $level,
            request_id = $report.request_id,
            method = %$report.method,
            uri = %$report.uri,
            elapsed_ms = $report.elapsed.as_millis() as u64,
            kind = ?$report.kind,
            capture = $report.capture,
            top_frame = $top,
            status = $status,
            signature = %$report.signature,
            signature_text = %$report.signature_text,
            report = $text,
            "{}",
            $report.summary()
        )
    };
}

impl Sink for LogSink {
    fn name(&self) -> &str {
        "log"
    }

    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
        let text = if self.full_report {
            report.to_text()
        } else {
            String::new()
        };
        let top = report
            .top_app_frame()
            .and_then(|f| f.function.as_deref())
            .unwrap_or("");
        let status = match report.kind {
            ReportKind::Completed => report
                .completion
                .as_ref()
                .and_then(|c| c.status)
                .unwrap_or(0),
            _ => 0,
        };
        let text = text.as_str();
        match self.level {
            Level::ERROR => emit!(Level::ERROR, report, text, top, status),
            Level::WARN => emit!(Level::WARN, report, text, top, status),
            Level::INFO => emit!(Level::INFO, report, text, top, status),
            Level::DEBUG => emit!(Level::DEBUG, report, text, top, status),
            Level::TRACE => emit!(Level::TRACE, report, text, top, status),
        }
        Ok(())
    }
}
