//! Checks shared by the sections.

use std::time::Duration;

use http::HeaderName;

use super::layers::show_duration;
use crate::error::ConfigError;

/// A string value as given, quoted so that an empty one or one with spaces shows.
pub(super) fn show(value: &str) -> String {
    format!("{value:?}")
}

/// Refuses a zero duration.
pub(super) fn positive(field: &str, duration: Duration) -> Result<(), ConfigError> {
    if duration.is_zero() {
        return Err(ConfigError::invalid(
            field,
            show_duration(duration),
            "must be greater than zero",
        ));
    }
    Ok(())
}

/// Refuses a name that is not a valid HTTP header name.
pub(super) fn header_names(field: &str, names: &[String]) -> Result<(), ConfigError> {
    for name in names {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                field,
                show(name),
                "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
            ));
        }
    }
    Ok(())
}
