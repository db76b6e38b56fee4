//! Queue-time shedding: how long a request waited before it reached the service, from the
//! `X-Request-Start` header that nginx and Heroku's router add.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// The header read for queue time.
pub const REQUEST_START_HEADER: &str = "x-request-start";

/// A start time more than this far in the past is not a queue time but a bad header.
const IMPLAUSIBLE_WAIT: Duration = Duration::from_secs(3600);
/// Clocks of the proxy and this host may differ a little; a start time up to this far in the
/// future counts as "no wait".
const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// How long the request has waited since the proxy saw it, or `None` when the header is
/// missing, malformed, implausible or in the future: such a header is never trusted to shed.
///
/// Accepted forms, with or without the `t=` prefix that nginx configurations add: seconds with
/// a fraction (`t=1700000000.123`), milliseconds (`1700000000123`, Heroku) and microseconds
/// (`t=1700000000123456`, nginx's `$msec` without the dot).
pub(crate) fn queue_time(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(REQUEST_START_HEADER)?.to_str().ok()?.trim();
    let started = parse_start(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?;
    if started > now + CLOCK_SKEW {
        return None;
    }
    let waited = now.saturating_sub(started);
    (waited <= IMPLAUSIBLE_WAIT).then_some(waited)
}

/// The start time as a duration since the Unix epoch.
fn parse_start(value: &str) -> Option<Duration> {
    let number = value.strip_prefix("t=").unwrap_or(value);
    if number.is_empty() || number.len() > 24 {
        return None;
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    match fraction {
        Some(fraction) => {
            if fraction.is_empty()
                || fraction.len() > 9
                || !fraction.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let nanos: u32 = format!("{fraction:0<9}").parse().ok()?;
            Some(Duration::new(whole, nanos))
        }
        // Tell the unit by magnitude: seconds have 10 digits until the year 2286,
        // milliseconds 13 and microseconds 16.
        None => match whole {
            0..=99_999_999_999 => Some(Duration::from_secs(whole)),
            100_000_000_000..=99_999_999_999_999 => Some(Duration::from_millis(whole)),
            100_000_000_000_000..=99_999_999_999_999_999 => Some(Duration::from_micros(whole)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_START_HEADER, value.parse().unwrap());
        headers
    }

    const NOW: Duration = Duration::from_millis(1_700_000_010_500);

    fn waited(value: &str) -> Option<Duration> {
        queue_time(&headers(value), UNIX_EPOCH + NOW)
    }

    #[test]
    fn reads_every_format_proxies_send() {
        assert_eq!(waited("t=1700000000.500"), Some(Duration::from_secs(10)));
        assert_eq!(waited("1700000000.5"), Some(Duration::from_secs(10)));
        assert_eq!(waited("1700000000500"), Some(Duration::from_secs(10)));
        assert_eq!(waited("t=1700000000500"), Some(Duration::from_secs(10)));
        assert_eq!(waited("t=1700000000500000"), Some(Duration::from_secs(10)));
        assert_eq!(waited("t=1700000010"), Some(Duration::from_millis(500)));
    }

    #[test]
    fn hostile_or_malformed_values_are_ignored() {
        for value in [
            "",
            "t=",
            "abc",
            "t=-5",
            "-1700000000",
            "t=1.2.3",
            "t=17000000 00",
            "t=1e9",
            "t=99999999999999999999999",
            "t=18446744073709551616",
            "t=1700000000.",
            "t=.5",
            "t=1700000000.1234567890",
            "t=1",              // 1970: a wait of decades is not a queue time
            "t=1700000099.000", // in the future
            "t=0x10",
        ] {
            assert_eq!(waited(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_missing_header_is_no_wait_information() {
        assert_eq!(queue_time(&HeaderMap::new(), SystemTime::now()), None);
    }
}
