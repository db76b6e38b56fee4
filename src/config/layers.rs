//! The sections of the three layers: `[watchdog]`, `[timebox]` and `[profiler]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{header_names, positive, show};
use crate::error::ConfigError;
use crate::profiler::Mode;

/// The `[watchdog]` section: what [`WatchdogLayer`](crate::watchdog::WatchdogLayer) reports,
/// and when.
///
/// Sinks are configured apart, in [`super::SinksConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Whether the watchdog watches requests. Default: true.
    pub enabled: bool,
    /// Time after which a request still running is reported. Default: 25 s.
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    /// Multiples of the threshold at which a request still running is captured again: each
    /// at least 2, strictly increasing; empty for one report. Default: `[2, 4]`.
    pub recapture_at: Vec<u32>,
    /// Whether the native stack of the polling thread is captured. Default: true.
    pub capture_stacks: bool,
    /// How long to wait for a thread to answer the capture signal. Default: 250 ms.
    #[serde(with = "humantime_serde")]
    pub capture_timeout: Duration,
    /// How finely the monitor tells time. Default: `None`, which is a twentieth of the
    /// threshold between 1 ms and 100 ms (see [`WatchdogConfig::resolution_or_default`]).
    #[serde(with = "humantime_serde")]
    pub resolution: Option<Duration>,
    /// Bound of the queue between the monitor and the reporter thread. Default: 256.
    pub queue_capacity: usize,
    /// Headers copied into reports. Default: host, user-agent, referer, content-type,
    /// content-length, x-request-id.
    pub report_headers: Vec<String>,
    /// More headers whose values are redacted in reports (Authorization, Cookie, Set-Cookie and
    /// Proxy-Authorization always are). Default: none.
    pub redact_headers: Vec<String>,
    /// More names of query parameters whose values are redacted in reports, matched like the
    /// built-in list ([`SENSITIVE_NAME_FRAGMENTS`](crate::report::SENSITIVE_NAME_FRAGMENTS)):
    /// in any case, as the whole name or a part of it. Default: none.
    pub redact_query_params: Vec<String>,
    /// Query parameters let through although the built-in list of sensitive names would
    /// redact them (`page_token`), matched as whole names in any case. Default: none.
    pub allow_query_params: Vec<String>,
    /// Paths the watchdog ignores; `*` matches any run of characters (`/health`, `/static/*`,
    /// `*.png`). Each starts with `/` or `*`. Default: none.
    pub ignore_paths: Vec<String>,
    /// Whether websocket upgrades (101) and event streams (`text/event-stream`) stop being
    /// watched once their headers are out, since they stay open by design. Default: true.
    pub long_lived_exempt: bool,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: Self::DEFAULT_THRESHOLD,
            recapture_at: Self::DEFAULT_RECAPTURE_AT.to_vec(),
            capture_stacks: true,
            capture_timeout: Self::DEFAULT_CAPTURE_TIMEOUT,
            resolution: None,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            report_headers: Self::DEFAULT_REPORT_HEADERS.map(str::to_owned).to_vec(),
            redact_headers: Vec::new(),
            redact_query_params: Vec::new(),
            allow_query_params: Vec::new(),
            ignore_paths: Vec::new(),
            long_lived_exempt: true,
        }
    }
}

impl WatchdogConfig {
    /// The default threshold, 25 s: dogslow's default, 5 s before gunicorn's (and Heroku's)
    /// 30 s limit, so the report is out before the supervisor kills the worker.
    pub(crate) const DEFAULT_THRESHOLD: Duration = Duration::from_secs(25);
    /// Default multiples of the threshold at which a still-running request is captured again.
    pub(crate) const DEFAULT_RECAPTURE_AT: [u32; 2] = [2, 4];
    /// Default time to wait for the signal handler of a polling thread.
    pub(crate) const DEFAULT_CAPTURE_TIMEOUT: Duration = Duration::from_millis(250);
    /// Default bound of the queue between the monitor and the reporter thread.
    pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 256;
    /// Headers copied into reports by default. Secret ones among them are redacted.
    pub(crate) const DEFAULT_REPORT_HEADERS: [&'static str; 6] = [
        "host",
        "user-agent",
        "referer",
        "content-type",
        "content-length",
        "x-request-id",
    ];

    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("watchdog.threshold", self.threshold)?;
        let m = &self.recapture_at;
        if m.first().is_some_and(|&first| first < 2) || m.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::invalid(
                "watchdog.recapture_at",
                format!("{m:?}"),
                "multiples must be at least 2 and strictly increasing",
            ));
        }
        positive("watchdog.capture_timeout", self.capture_timeout)?;
        if let Some(resolution) = self.resolution {
            positive("watchdog.resolution", resolution)?;
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::invalid(
                "watchdog.queue_capacity",
                0,
                "must be greater than zero",
            ));
        }
        header_names("watchdog.report_headers", &self.report_headers)?;
        if self.report_headers.len() > crate::report::REPORT_HEADERS_LIMIT {
            return Err(ConfigError::invalid(
                "watchdog.report_headers",
                self.report_headers.len(),
                format!(
                    "at most {} headers can be copied into reports",
                    crate::report::REPORT_HEADERS_LIMIT
                ),
            ));
        }
        header_names("watchdog.redact_headers", &self.redact_headers)?;
        for pattern in &self.ignore_paths {
            if !(pattern.starts_with('/') || pattern.starts_with('*')) {
                return Err(ConfigError::invalid(
                    "watchdog.ignore_paths",
                    show(pattern),
                    "each pattern must start with '/' or '*', or it could never match a path",
                ));
            }
        }
        Ok(())
    }

    /// The resolution given, or the automatic one: a twentieth of the threshold, between 1 ms
    /// and 100 ms.
    pub fn resolution_or_default(&self) -> Duration {
        self.resolution.unwrap_or_else(|| {
            (self.threshold / 20).clamp(Duration::from_millis(1), Duration::from_millis(100))
        })
    }
}

/// When a timeboxed handler runs in a task of its own.
///
/// A task per request costs about a microsecond and a half (`benches/overhead.rs`); without
/// one, a handler that blocks its thread also holds back its own 503 until it yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Isolation {
    /// Every request: the 503 is always on time, at the cost of a task per request.
    Always,
    /// Only requests to routes that have been wedged before (a thread was still inside a
    /// request's poll at its hard deadline): the first wedge of a route answers when the
    /// handler yields, every later one on time. Routes are told apart by method and path, with
    /// numeric segments collapsed. A wedged request that the watchdog copied with a URI over
    /// 4 KiB (cut in its copy) does not mark its route.
    #[default]
    Adaptive,
    /// Never: no task per request.
    Never,
}

/// The `[timebox]` section: the deadlines of [`TimeboxLayer`](crate::timebox::TimeboxLayer) and
/// its timeout response.
///
/// Exactly one of `hard_deadline` and `supervisor_timeout` is given; at most one of
/// `soft_deadline` and `grace`. [`TimeboxConfig::resolved_deadlines`] does the arithmetic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeboxConfig {
    /// Whether the timebox acts. Default: true.
    pub enabled: bool,
    /// Time after which the handler's future is dropped and the client gets the timeout
    /// response. No default: give this or `supervisor_timeout`.
    #[serde(with = "humantime_serde")]
    pub hard_deadline: Option<Duration>,
    /// The supervisor's kill timeout (gunicorn's `--timeout`, Heroku's 30 s); the hard deadline
    /// is kept a margin before it: 3 s, or a tenth when that is smaller. No default: give this
    /// or `hard_deadline`.
    #[serde(with = "humantime_serde")]
    pub supervisor_timeout: Option<Duration>,
    /// Time, from the start of the request, at which its `Deadline` is cancelled; at most the
    /// hard deadline. Default: the hard deadline less the grace.
    #[serde(with = "humantime_serde")]
    pub soft_deadline: Option<Duration>,
    /// Time between the soft and the hard deadline, shorter than the hard deadline.
    /// Default: 2 s, or a fifth of the hard deadline when that is smaller.
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
    /// Status of the timeout response, a 5xx. Default: 503.
    pub status: u16,
    /// Body of the timeout response. Default:
    /// `"Service Unavailable: the request took too long.\n"`.
    pub body: String,
    /// `Retry-After` of the timeout response; `None` for no header. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub retry_after: Option<Duration>,
    /// When the handler runs in a task of its own, so the 503 goes out on time even when it
    /// blocks its thread: `always`, `adaptive` (only on routes that have been wedged before)
    /// or `never`. Default: `adaptive`.
    pub isolation: Isolation,
    /// Whether each request also gets its `Deadline` as a request extension, for code that
    /// reads extensions (`Extension<Deadline>`). Default: false: handlers take the `Deadline`
    /// extractor or call `Deadline::of_request`, which build it on demand.
    pub deadline_extension: bool,
    /// Answers 503 at once to a request whose `X-Request-Start` says it queued longer than
    /// this. Default: `None` (off).
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Option<Duration>,
    /// Whether a response body still streaming at the hard deadline is ended with an error.
    /// Default: false.
    pub body_deadline: bool,
    /// Whether long-lived responses, a websocket upgrade (`101 Switching Protocols`) or an
    /// event stream (`Content-Type: text/event-stream`), are released when their headers go
    /// out: no body deadline, no longer in flight. Default: true.
    pub long_lived_exempt: bool,
    /// How finely deadlines are kept. Default: `None`, which is a fiftieth of the grace between
    /// 1 ms and 50 ms (see [`TimeboxConfig::resolution_or_default`]).
    #[serde(with = "humantime_serde")]
    pub resolution: Option<Duration>,
}

impl Default for TimeboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hard_deadline: None,
            supervisor_timeout: None,
            soft_deadline: None,
            grace: None,
            status: Self::DEFAULT_STATUS,
            body: Self::DEFAULT_BODY.to_owned(),
            retry_after: Some(Self::DEFAULT_RETRY_AFTER),
            isolation: Isolation::Adaptive,
            deadline_extension: false,
            wait_timeout: None,
            body_deadline: false,
            long_lived_exempt: true,
            resolution: None,
        }
    }
}

impl TimeboxConfig {
    /// Default time between the soft and the hard deadline, for deadlines of 10 s and more;
    /// shorter deadlines get a fifth of the hard deadline.
    pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(2);
    /// Default margin kept between the hard deadline and the supervisor's kill, for
    /// supervisor timeouts of 30 s and more; shorter ones get a tenth.
    pub(crate) const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_secs(3);
    /// Default status of the timeout response: 503 Service Unavailable.
    pub(crate) const DEFAULT_STATUS: u16 = 503;
    /// Default body of the timeout response.
    pub(crate) const DEFAULT_BODY: &'static str =
        "Service Unavailable: the request took too long.\n";
    /// Default `Retry-After` of the timeout response.
    pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

    /// The soft and the hard deadline, in that order, from `hard_deadline` or
    /// `supervisor_timeout` and from `soft_deadline` or `grace`:
    ///
    /// - hard = `supervisor_timeout` less a safety margin of 3 s, or a tenth
    ///   of it when that is smaller (30 s gives 27 s);
    /// - soft = `soft_deadline`, or hard less `grace`, whose default is
    ///   2 s or a fifth of hard when that is smaller.
    pub fn resolved_deadlines(&self) -> Result<(Duration, Duration), ConfigError> {
        let hard = match (self.hard_deadline, self.supervisor_timeout) {
            (Some(hard), None) => {
                positive("timebox.hard_deadline", hard)?;
                hard
            }
            (None, Some(supervisor)) => {
                positive("timebox.supervisor_timeout", supervisor)?;
                supervisor - Self::DEFAULT_SAFETY_MARGIN.min(supervisor / 10)
            }
            (None, None) => {
                return Err(ConfigError::other(
                    "timebox.hard_deadline",
                    "give timebox.hard_deadline or timebox.supervisor_timeout",
                ))
            }
            (Some(_), Some(supervisor)) => {
                return Err(ConfigError::invalid(
                    "timebox.supervisor_timeout",
                    show_duration(supervisor),
                    "give timebox.hard_deadline or timebox.supervisor_timeout, not both",
                ))
            }
        };
        let soft = match (self.soft_deadline, self.grace) {
            (Some(soft), None) => {
                positive("timebox.soft_deadline", soft)?;
                if soft > hard {
                    return Err(ConfigError::invalid(
                        "timebox.soft_deadline",
                        show_duration(soft),
                        format!(
                            "must not be after the hard deadline ({})",
                            show_duration(hard)
                        ),
                    ));
                }
                soft
            }
            (None, Some(grace)) => {
                if grace >= hard {
                    return Err(ConfigError::invalid(
                        "timebox.grace",
                        show_duration(grace),
                        format!(
                            "must be shorter than the hard deadline ({})",
                            show_duration(hard)
                        ),
                    ));
                }
                hard - grace
            }
            (None, None) => hard - Self::DEFAULT_GRACE.min(hard / 5),
            (Some(_), Some(grace)) => {
                return Err(ConfigError::invalid(
                    "timebox.grace",
                    show_duration(grace),
                    "give timebox.soft_deadline or timebox.grace, not both",
                ))
            }
        };
        Ok((soft, hard))
    }

    /// The resolution given, or the automatic one: a fiftieth of the time between the soft and
    /// the hard deadline, between 1 ms and 50 ms (50 ms while the deadlines are invalid, which
    /// [`TimeboxConfig::validate`] refuses).
    pub fn resolution_or_default(&self) -> Duration {
        self.resolution.unwrap_or_else(|| {
            let grace = self
                .resolved_deadlines()
                .map_or(Duration::MAX, |(soft, hard)| hard - soft);
            (grace / 50).clamp(Duration::from_millis(1), Duration::from_millis(50))
        })
    }

    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolved_deadlines()?;
        if !(500..=599).contains(&self.status) {
            return Err(ConfigError::invalid(
                "timebox.status",
                self.status,
                "must be a 5xx status, 500..=599: a missed deadline is not the client's fault",
            ));
        }
        if let Some(wait) = self.wait_timeout {
            positive("timebox.wait_timeout", wait)?;
        }
        if let Some(resolution) = self.resolution {
            positive("timebox.resolution", resolution)?;
        }
        Ok(())
    }
}

/// The `[profiler]` section: what triggers a profile of
/// [`ProfilerLayer`](crate::profiler::ProfilerLayer), how it samples and
/// where background profiles go.
///
/// Who may profile is code (an `Authorize`), except for the one case that is data: a
/// [`SharedSecret`](crate::profiler::SharedSecret) given by `secret` (and `secret_header`). Without a secret and without an
/// authorizer from the application, nothing is profiled. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilerConfig {
    /// The query parameter that triggers a profile: ASCII letters, digits, `-`, `.`, `_`, `~`.
    /// Default: `__profile__`.
    pub param: String,
    /// The header that triggers a profile. Default: `x-vigil-profile`.
    pub header: String,
    /// Whether the header triggers profiles at all. Default: true.
    pub header_trigger: bool,
    /// What is measured when the trigger does not say: `wall-clock` or `cpu-time`.
    /// Default: `wall-clock`.
    #[serde(with = "mode_name")]
    pub mode: Mode,
    /// Samples per second, 1 to 10000. Default: 997.
    pub rate_hz: u32,
    /// Longest time a profile answered at once samples its request. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Longest time a background profile samples its request. Default: 10 min.
    #[serde(with = "humantime_serde")]
    pub background_max_duration: Duration,
    /// How many profiles may run at once, 1 to [`ProfilerConfig::MAX_CONCURRENT_LIMIT`].
    /// Default: 1.
    pub max_concurrent: usize,
    /// Whether runs of framework frames are folded into one frame each. Default: true.
    pub collapse_framework_frames: bool,
    /// Where background profiles are written. Default: `None`, which is
    /// `tower-vigil-profiles` in the system's temporary directory.
    pub output_dir: Option<PathBuf>,
    /// How many background profiles are kept. Default: 50.
    pub retain: usize,
    /// Path of the index of background profiles: starts with `/`, does not end with `/`.
    /// Default: `/__vigil/profiles`.
    pub index_path: String,
    /// A shared secret that authorizes profiling ([`SharedSecret`](crate::profiler::SharedSecret)); not empty. Default: none.
    pub secret: Option<String>,
    /// The header that carries the secret. Default: `None`, which is `x-vigil-secret`.
    pub secret_header: Option<String>,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        Self {
            param: Self::DEFAULT_PARAM.to_owned(),
            header: Self::DEFAULT_HEADER.to_owned(),
            header_trigger: true,
            mode: Mode::default(),
            rate_hz: Self::DEFAULT_RATE_HZ,
            max_duration: Self::DEFAULT_MAX_DURATION,
            background_max_duration: Self::DEFAULT_BACKGROUND_MAX_DURATION,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            collapse_framework_frames: true,
            output_dir: None,
            retain: Self::DEFAULT_RETAIN,
            index_path: Self::DEFAULT_INDEX_PATH.to_owned(),
            secret: None,
            secret_header: None,
        }
    }
}

impl ProfilerConfig {
    /// Default query parameter that triggers a profile: `__profile__`.
    pub(crate) const DEFAULT_PARAM: &'static str = "__profile__";
    /// Default header that triggers a profile: `x-vigil-profile`.
    pub(crate) const DEFAULT_HEADER: &'static str = "x-vigil-profile";
    /// Default sampling rate, 997 Hz: about a thousand samples per second of request, enough
    /// for a useful graph of a 100 ms request; a prime, so that sampling does not run in
    /// lockstep with periodic work at round rates.
    pub(crate) const DEFAULT_RATE_HZ: u32 = 997;
    /// Highest sampling rate accepted.
    pub const MAX_RATE_HZ: u32 = 10_000;
    /// Default longest time a profile answered at once samples its request: 30 s.
    pub(crate) const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(30);
    /// Default longest time a background profile samples its request: 10 minutes.
    pub(crate) const DEFAULT_BACKGROUND_MAX_DURATION: Duration = Duration::from_secs(600);
    /// Default number of profiles that may run at once: 1.
    pub(crate) const DEFAULT_MAX_CONCURRENT: usize = 1;
    /// Most profiles that can run at once in one process, whatever the configuration.
    pub const MAX_CONCURRENT_LIMIT: usize = crate::stack::MAX_SAMPLER_SESSIONS;
    /// Default number of background profiles kept in the output directory: 50.
    pub(crate) const DEFAULT_RETAIN: usize = 50;
    /// Default path of the index of background profiles: `/__vigil/profiles`.
    pub(crate) const DEFAULT_INDEX_PATH: &'static str = "/__vigil/profiles";

    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if self.param.is_empty() || !self.param.chars().all(unreserved) {
            return Err(ConfigError::invalid(
                "profiler.param",
                show(&self.param),
                "must be non-empty and use only ASCII letters, digits, '-', '.', '_' and '~'",
            ));
        }
        header_names("profiler.header", std::slice::from_ref(&self.header))?;
        if self.rate_hz == 0 || self.rate_hz > Self::MAX_RATE_HZ {
            return Err(ConfigError::invalid(
                "profiler.rate_hz",
                self.rate_hz,
                format!("must be between 1 and {} Hz", Self::MAX_RATE_HZ),
            ));
        }
        positive("profiler.max_duration", self.max_duration)?;
        positive(
            "profiler.background_max_duration",
            self.background_max_duration,
        )?;
        if !(1..=Self::MAX_CONCURRENT_LIMIT).contains(&self.max_concurrent) {
            return Err(ConfigError::invalid(
                "profiler.max_concurrent",
                self.max_concurrent,
                format!("must be between 1 and {}", Self::MAX_CONCURRENT_LIMIT),
            ));
        }
        if self
            .output_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid(
                "profiler.output_dir",
                "\"\"",
                "must not be empty; leave it out for the temporary directory",
            ));
        }
        if self.retain == 0 {
            return Err(ConfigError::invalid(
                "profiler.retain",
                0,
                "must be at least 1",
            ));
        }
        let path = &self.index_path;
        if !(path.starts_with('/') && path.len() > 1 && !path.ends_with('/')) {
            return Err(ConfigError::invalid(
                "profiler.index_path",
                show(path),
                "must start with '/' and not end with '/'",
            ));
        }
        if self.secret.as_ref().is_some_and(String::is_empty) {
            return Err(ConfigError::invalid(
                "profiler.secret",
                "\"\"",
                "must not be empty",
            ));
        }
        if let Some(header) = &self.secret_header {
            if self.secret.is_none() {
                return Err(ConfigError::invalid(
                    "profiler.secret_header",
                    show(header),
                    "has no use without profiler.secret",
                ));
            }
            header_names("profiler.secret_header", std::slice::from_ref(header))?;
        }
        Ok(())
    }

    /// The output directory given, or `tower-vigil-profiles` in the system's temporary
    /// directory.
    pub fn output_dir_or_default(&self) -> PathBuf {
        self.output_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tower-vigil-profiles"))
    }
}

impl fmt::Debug for ProfilerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfilerConfig")
            .field("param", &self.param)
            .field("header", &self.header)
            .field("header_trigger", &self.header_trigger)
            .field("mode", &self.mode)
            .field("rate_hz", &self.rate_hz)
            .field("max_duration", &self.max_duration)
            .field("background_max_duration", &self.background_max_duration)
            .field("max_concurrent", &self.max_concurrent)
            .field("collapse_framework_frames", &self.collapse_framework_frames)
            .field("output_dir", &self.output_dir)
            .field("retain", &self.retain)
            .field("index_path", &self.index_path)
            .field(
                "secret",
                &self.secret.as_ref().map(|_| crate::report::REDACTED),
            )
            .field("secret_header", &self.secret_header)
            .finish()
    }
}

/// A duration as configuration files write it: `25s`, `1m 30s`, `250ms`.
pub(super) fn show_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// [`Mode`] as `wall-clock` or `cpu-time`, the names reports use.
mod mode_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::profiler::Mode;

    pub(super) fn serialize<S: Serializer>(mode: &Mode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(mode.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Mode, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "wall-clock" => Ok(Mode::WallClock),
            "cpu-time" => Ok(Mode::CpuTime),
            _ => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&name),
                &"wall-clock or cpu-time",
            )),
        }
    }
}
