//! The JSON form: the report's own [`serde::Serialize`], with times as RFC 3339 text and
//! durations as seconds, so the files and mail attachments stay readable and stable.

use std::time::{Duration, SystemTime};

use serde::Serializer;

use super::SlowRequestReport;

/// `2026-11-23T10:42:00.123Z`.
pub(crate) fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// Seconds as a number, `7.2`.
pub(crate) fn secs<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// `HTTP/1.1`, `HTTP/2.0`.
pub(crate) fn version<S: Serializer>(
    version: &http::Version,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{version:?}"))
}

/// The report as pretty-printed JSON, as the file sink writes it and mails attach it.
pub(crate) fn to_json(report: &SlowRequestReport) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec_pretty(report)
}
