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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::SlowRequestReport;

    #[test]
    fn times_are_rfc3339_and_durations_seconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_430_527_250);
        let report = SlowRequestReport::builder("GET", "http://example.com/a?b=1")
            .intercepted_at(at)
            .elapsed(Duration::from_millis(7250))
            .span("handler", "", Duration::from_millis(1500))
            .completed(Some(503))
            .build();
        let json: serde_json::Value =
            serde_json::from_slice(&super::to_json(&report).unwrap()).expect("valid JSON");
        assert_eq!(json["intercepted_at"], "2026-11-23T10:42:07.250Z");
        assert_eq!(json["started_at"], "2026-11-23T10:42:00.000Z");
        assert_eq!(json["elapsed_secs"], 7.25);
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["kind"], "completed");
        assert_eq!(json["host"], "example.com");
        assert_eq!(json["route_key"], "GET /a");
        assert_eq!(json["completion"]["status"], 503);
        assert_eq!(json["stack_status"]["status"], "not_applicable");
        assert_eq!(json["spans"]["spans"][0]["age_secs"], 1.5);
    }
}
