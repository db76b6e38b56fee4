//! Where reports go: the [`Sink`] trait and the built-in sinks.
//!
//! Sinks run on the reporter thread, one report at a time, never on a request's path or in the
//! monitor loop. A sink that fails or panics never affects requests: the failure is logged
//! with `tracing` and counted in [`crate::watchdog::WatchdogStats::sink_failures`].
//!
//! | sink | what it does |
//! |---|---|
//! | [`LogSink`] | one `tracing` event per report, with structured fields and the text report |
//! | [`FileSink`] | one `.txt` and one `.json` file per report in a directory |
//! | `EmailSink` | one mail per report through SMTP (or one `.eml` file), throttled, with digests, retries and a fallback; feature `email` (default) |
//!
//! # Writing a sink
//!
//! ```
//! use tower_vigil::report::SlowRequestReport;
//! use tower_vigil::sink::{Sink, SinkError};
//!
//! struct Stderr;
//!
//! impl Sink for Stderr {
//!     fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
//!         eprintln!("{}", report.to_text());
//!         Ok(())
//!     }
//! }
//! ```

#[cfg(feature = "email")]
mod email;
mod file;
mod log;
pub(crate) mod reporter;

#[cfg(feature = "email")]
pub use self::email::{EmailError, EmailSink, EmailStats, SmtpConfig, TlsMode};
pub use self::file::FileSink;
pub use self::log::LogSink;

use std::fmt;
use std::sync::Arc;

use crate::error::ConfigError;

use crate::report::SlowRequestReport;

/// A destination for slow-request reports.
///
/// `deliver` is called on the reporter thread, so it may block (write files, talk to a
/// server), but the time it takes delays the reports behind it.
pub trait Sink: Send + Sync + 'static {
    /// A short name used in logs about this sink's failures. Defaults to the type name.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Delivers one report.
    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError>;

    /// Finishes work the sink has queued of its own (a sink with its own delivery thread,
    /// retries or digests), waiting until `deadline` at the latest. Returns false if work was
    /// left undone. Called on the reporter thread by [`crate::watchdog::WatchdogLayer::flush`],
    /// after every queued report has been delivered. The default does nothing.
    fn flush(&self, deadline: std::time::Instant) -> bool {
        let _ = deadline;
        true
    }
}

/// Something that becomes a running sink when a watchdog is built: every [`Sink`], and sinks
/// that check settings and start threads of their own first, such as the email sink.
///
/// [`crate::watchdog::WatchdogBuilder::build`] calls [`IntoSink::into_sink`] for each sink, so
/// a sink that cannot start is a [`ConfigError`] there, not a lost report later.
pub trait IntoSink: Send + Sync + 'static {
    /// Checks the sink's settings and starts it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting at fault, or a thread that could not start.
    fn into_sink(self) -> Result<Arc<dyn Sink>, ConfigError>;
}

impl<S: Sink> IntoSink for S {
    fn into_sink(self) -> Result<Arc<dyn Sink>, ConfigError> {
        Ok(Arc::new(self))
    }
}

/// Why a sink could not deliver a report.
#[derive(Debug)]
pub struct SinkError {
    inner: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    /// Wraps any error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            inner: error.into(),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.inner)
    }
}

impl From<std::io::Error> for SinkError {
    fn from(error: std::io::Error) -> Self {
        Self::new(error)
    }
}
