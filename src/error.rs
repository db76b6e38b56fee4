//! Configuration errors.

use std::fmt;

/// An invalid configuration, found when a layer is built or a configuration is loaded.
///
/// It names the setting (`watchdog.threshold`), the value given and what is allowed, so an
/// operator can fix a configuration file from the message alone.
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::watchdog::WatchdogLayer;
///
/// let error = WatchdogLayer::builder(Duration::ZERO).build().unwrap_err();
/// assert_eq!(error.field(), "watchdog.threshold");
/// assert!(error.to_string().contains("greater than zero"));
/// ```
///
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    value: Option<String>,
    problem: String,
}

impl ConfigError {
    /// A setting whose value is outside what is allowed.
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: Some(value.to_string()),
            problem: allowed.into(),
        }
    }

    /// A setting that is wrong in a way no single value describes (a thread that could not
    /// start, a file that could not be read).
    pub(crate) fn other(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: None,
            problem: problem.into(),
        }
    }

    /// The setting at fault, as it is named in a configuration file (`watchdog.threshold`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The value that was refused, as it was given, when there is one.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// What is wrong, or what would be allowed.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value}: {}", self.field, self.problem),
            None => write!(f, "{}: {}", self.field, self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}
