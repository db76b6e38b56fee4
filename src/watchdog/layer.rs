use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{self, HeaderName};
use http::Request;
use tower_layer::Layer;

use super::Watchdog;
pub use crate::error::ConfigError;
use crate::monitor::{Core, CoreConfig, WatchConfig, WatchSettings};
use crate::registry::Seen;
use crate::report::RequestCapture;
use crate::sink::Sink;

/// Decides per request whether the watchdog ignores it.
type IgnorePredicate = dyn Fn(&http::request::Parts) -> bool + Send + Sync;

/// A layer that reports requests still running past a threshold.
///
/// The layer holds configuration. The registry, the monitor thread and the reporter thread are
/// started on the first call of [`Layer::layer`] and shared by every service made from this
/// layer and its clones, so `Router::layer` (which layers every route) gets one watchdog. Clone
/// the layer before handing it over to read [`WatchdogLayer::stats`] later.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
pub struct WatchdogLayer {
    threshold: Duration,
    recapture_at: Vec<u32>,
    capture_stacks: bool,
    capture_timeout: Duration,
    resolution: Option<Duration>,
    queue_capacity: usize,
    sinks: Vec<Arc<dyn Sink>>,
    headers: Vec<HeaderName>,
    redacted_headers: Vec<HeaderName>,
    redacted_query_params: Vec<String>,
    ignore_paths: Vec<String>,
    ignore_if: Option<Arc<IgnorePredicate>>,
    enabled: bool,
    started: Arc<OnceLock<Arc<Shared>>>,
}

/// What the services of one layer share.
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) filter: Filter,
    pub(crate) capture: RequestCapture,
}

/// Which requests the watchdog leaves alone.
pub(crate) struct Filter {
    paths: Vec<String>,
    predicate: Option<Arc<IgnorePredicate>>,
}

impl Filter {
    /// Returns the request (taken apart and put back together only when a predicate needs
    /// its parts) and whether it is ignored.
    pub(crate) fn check<B>(&self, request: Request<B>) -> (Request<B>, bool) {
        let path = request.uri().path();
        if self.paths.iter().any(|pattern| glob_match(pattern, path)) {
            return (request, true);
        }
        match &self.predicate {
            None => (request, false),
            Some(predicate) => {
                let (parts, body) = request.into_parts();
                let ignored = predicate(&parts);
                (Request::from_parts(parts, body), ignored)
            }
        }
    }
}

/// `*` matches any run of characters, everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Counters of one watchdog, from [`WatchdogLayer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchdogStats {
    /// Requests registered and not yet finished.
    pub in_flight: u64,
    /// In-flight requests that have passed the threshold.
    pub stuck_now: u64,
    /// Slow reports handed to the reporter thread (every capture counts).
    pub reported: u64,
    /// Completion records of reported requests handed to the reporter thread.
    pub completed: u64,
    /// Reports dropped because the reporter queue was full.
    pub dropped: u64,
    /// Reports the sinks accepted (one per report and sink).
    pub delivered: u64,
    /// Deliveries that failed or panicked in a sink.
    pub sink_failures: u64,
    /// Stack captures whose signal handler did not answer in time.
    pub capture_timeouts: u64,
    /// Registry slots ever created: the peak number of concurrent requests.
    pub registry_slots: u64,
}

impl WatchdogLayer {
    /// The default threshold, 25 s: dogslow's default, 5 s before gunicorn's (and Heroku's)
    /// 30 s limit, so the report is out before the supervisor kills the worker.
    pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(25);
    /// Default multiples of the threshold at which a still-running request is captured again.
    pub const DEFAULT_RECAPTURE_AT: [u32; 2] = [2, 4];
    /// Default time to wait for the signal handler of a polling thread.
    pub const DEFAULT_CAPTURE_TIMEOUT: Duration = Duration::from_millis(250);
    /// Default bound of the queue between the monitor and the reporter thread.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
    /// Headers copied into reports by default. Secret ones among them are redacted.
    pub const DEFAULT_HEADERS: [HeaderName; 6] = [
        header::HOST,
        header::USER_AGENT,
        header::REFERER,
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        HeaderName::from_static("x-request-id"),
    ];

    /// A watchdog that reports requests still running after `threshold`.
    ///
    /// # Panics
    ///
    /// If `threshold` is zero. Use [`WatchdogLayer::try_new`] for a threshold read from
    /// configuration.
    pub fn new(threshold: Duration) -> Self {
        match Self::try_new(threshold) {
            Ok(layer) => layer,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`WatchdogLayer::new`], with an error instead of a panic for a zero threshold.
    pub fn try_new(threshold: Duration) -> Result<Self, ConfigError> {
        if threshold.is_zero() {
            return Err(ConfigError::new(
                "watchdog threshold must be greater than zero",
            ));
        }
        Ok(Self {
            threshold,
            recapture_at: Self::DEFAULT_RECAPTURE_AT.to_vec(),
            capture_stacks: true,
            capture_timeout: Self::DEFAULT_CAPTURE_TIMEOUT,
            resolution: None,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            sinks: Vec::new(),
            headers: Self::DEFAULT_HEADERS.to_vec(),
            redacted_headers: Vec::new(),
            redacted_query_params: Vec::new(),
            ignore_paths: Vec::new(),
            ignore_if: None,
            enabled: true,
            started: Arc::new(OnceLock::new()),
        })
    }

    fn changed(mut self) -> Self {
        // A changed configuration must not share the monitor started for the old one.
        self.started = Arc::new(OnceLock::new());
        self
    }

    /// Adds a sink. Call again to add more; every report goes to every sink. Default: none, in
    /// which case reports are only counted; add [`crate::sink::LogSink`] at least.
    pub fn sink(mut self, sink: impl Sink) -> Self {
        self.sinks.push(Arc::new(sink));
        self.changed()
    }

    /// Multiples of the threshold at which a request still running is captured again.
    /// Default: [`WatchdogLayer::DEFAULT_RECAPTURE_AT`] (2× and 4×). Empty means one report.
    ///
    /// # Panics
    ///
    /// If a multiple is below 2 or the list is not strictly increasing.
    pub fn recapture_at(mut self, multiples: impl IntoIterator<Item = u32>) -> Self {
        let multiples: Vec<u32> = multiples.into_iter().collect();
        let increasing = multiples.windows(2).all(|w| w[0] < w[1]);
        assert!(
            increasing && multiples.first().is_none_or(|&m| m >= 2),
            "recapture_at: multiples must be at least 2 and strictly increasing, got {multiples:?}"
        );
        self.recapture_at = multiples;
        self.changed()
    }

    /// Whether to capture the native stack of the polling thread. Default: true. Without it,
    /// reports still carry the request, the timing and the open spans.
    pub fn capture_stacks(mut self, enabled: bool) -> Self {
        self.capture_stacks = enabled;
        self.changed()
    }

    /// How long the monitor waits for a thread to answer the capture signal. Default:
    /// [`WatchdogLayer::DEFAULT_CAPTURE_TIMEOUT`]. A thread that does not answer is named in
    /// the report as such.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    pub fn capture_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "capture_timeout must be greater than zero"
        );
        self.capture_timeout = timeout;
        self.changed()
    }

    /// How finely the monitor tells time: it wakes at most once per resolution, so reports
    /// come up to one resolution after the threshold. Default: a twentieth of the threshold,
    /// between 1 ms and 100 ms.
    ///
    /// # Panics
    ///
    /// If `resolution` is zero.
    pub fn resolution(mut self, resolution: Duration) -> Self {
        assert!(
            !resolution.is_zero(),
            "resolution must be greater than zero"
        );
        self.resolution = Some(resolution);
        self.changed()
    }

    /// Bound of the queue between the monitor and the reporter thread; a report that does not
    /// fit is dropped and counted in [`WatchdogStats::dropped`]. Default:
    /// [`WatchdogLayer::DEFAULT_QUEUE_CAPACITY`].
    ///
    /// # Panics
    ///
    /// If `capacity` is zero.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        assert!(capacity > 0, "queue_capacity must be greater than zero");
        self.queue_capacity = capacity;
        self.changed()
    }

    /// Headers copied into reports, replacing the default list
    /// [`WatchdogLayer::DEFAULT_HEADERS`]. Authorization, Cookie, Set-Cookie and
    /// Proxy-Authorization are always redacted if listed.
    pub fn report_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = headers.into_iter().collect();
        self.changed()
    }

    /// Another header whose value is replaced by `[redacted]` in every report.
    pub fn redact_header(mut self, name: HeaderName) -> Self {
        self.redacted_headers.push(name);
        self.changed()
    }

    /// A query parameter whose value is replaced by `[redacted]` in every report. Names
    /// match after percent-decoding, case-sensitively.
    pub fn redact_query_param(mut self, name: impl Into<String>) -> Self {
        self.redacted_query_params.push(name.into());
        self.changed()
    }

    /// Ignores requests whose path matches `pattern`, where `*` matches any run of
    /// characters: `/health`, `/static/*`, `*.png`. Call again for more patterns.
    ///
    /// # Panics
    ///
    /// If `pattern` is empty or starts with neither `/` nor `*`, since it could never match
    /// a path.
    pub fn ignore_path(mut self, pattern: impl Into<String>) -> Self {
        let pattern = pattern.into();
        assert!(
            pattern.starts_with('/') || pattern.starts_with('*'),
            "ignore_path: pattern {pattern:?} must start with '/' or '*'"
        );
        self.ignore_paths.push(pattern);
        self.changed()
    }

    /// Ignores requests for which `predicate` returns true, such as long polls or
    /// websocket upgrades that are slow on purpose.
    pub fn ignore_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.ignore_if = Some(Arc::new(predicate));
        self.changed()
    }

    /// Switches the watchdog off (every request passes through untouched) or on. Default: on.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self.changed()
    }

    /// The configured threshold.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    pub(crate) fn effective_resolution(&self) -> Duration {
        self.resolution.unwrap_or_else(|| {
            (self.threshold / 20).clamp(Duration::from_millis(1), Duration::from_millis(100))
        })
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// What a core needs to run this watchdog.
    pub(crate) fn watch_config(&self) -> WatchConfig {
        let settings = WatchSettings {
            threshold: self.threshold,
            recapture_at: self.recapture_at.clone(),
            capture_stacks: self.capture_stacks,
            capture_timeout: self.capture_timeout,
        };
        (settings, self.sinks.clone(), self.queue_capacity)
    }

    fn request_capture(&self) -> RequestCapture {
        RequestCapture {
            headers: self.headers.clone(),
            redacted_headers: self.redacted_headers.clone(),
            redacted_query_params: self.redacted_query_params.clone(),
        }
    }

    /// Ties this layer (and its clones, for `stats`) to a core, which may be shared with a
    /// timebox in a [`crate::Vigil`] stack.
    fn shared_with(&self, core: Arc<Core>) -> Arc<Shared> {
        Arc::new(Shared {
            core,
            filter: Filter {
                paths: self.ignore_paths.clone(),
                predicate: self.ignore_if.clone(),
            },
            capture: self.request_capture(),
        })
    }

    /// The shared state of this layer running on `core` (a [`crate::Vigil`] stack's), so that
    /// [`WatchdogLayer::stats`] of this layer and its clones reads that core.
    pub(crate) fn attach(&self, core: Arc<Core>) -> Arc<Shared> {
        let shared = self.started.get_or_init(|| self.shared_with(core.clone()));
        if Arc::ptr_eq(&shared.core, &core) {
            shared.clone()
        } else {
            self.shared_with(core)
        }
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        if !self.enabled {
            return None;
        }
        let shared = self.started.get_or_init(|| {
            let core = Core::start(CoreConfig {
                watch: Some(self.watch_config()),
                deadlines: None,
                resolution: self.effective_resolution(),
            })
            .unwrap_or_else(|error| {
                panic!("tower-vigil: cannot start the watchdog threads: {error}")
            });
            self.shared_with(core)
        });
        Some(shared.clone())
    }

    /// The counters of this watchdog (all zero before it has been layered).
    pub fn stats(&self) -> WatchdogStats {
        let Some(shared) = self.started.get() else {
            return WatchdogStats::default();
        };
        let core = &shared.core;
        let (mut in_flight, mut stuck_now) = (0, 0);
        core.registry.scan(|_, seen| match seen {
            Seen::Running { .. } => in_flight += 1,
            Seen::Stuck { .. } => {
                in_flight += 1;
                stuck_now += 1;
            }
            Seen::FinishedAfterStuck { .. } => {}
        });
        let Some(watch) = &core.watch else {
            return WatchdogStats::default();
        };
        let delivery = &watch.reporter.counters;
        WatchdogStats {
            in_flight,
            stuck_now,
            reported: core.counters.reported.load(Ordering::Relaxed),
            completed: core.counters.completed.load(Ordering::Relaxed),
            dropped: delivery.dropped.load(Ordering::Relaxed),
            delivered: delivery.delivered.load(Ordering::Relaxed),
            sink_failures: delivery.sink_failures.load(Ordering::Relaxed),
            capture_timeouts: core.counters.capture_timeouts.load(Ordering::Relaxed),
            registry_slots: core.registry.capacity() as u64,
        }
    }

    /// Waits until every report made so far has been handed to the sinks, for at most
    /// `timeout`; call it on graceful shutdown. Returns false if the time ran out.
    pub fn flush(&self, timeout: Duration) -> bool {
        match self
            .started
            .get()
            .and_then(|shared| shared.core.watch.as_ref())
        {
            Some(watch) => watch.reporter.flush(timeout),
            None => true,
        }
    }
}

impl fmt::Debug for WatchdogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchdogLayer")
            .field("threshold", &self.threshold)
            .field("recapture_at", &self.recapture_at)
            .field("capture_stacks", &self.capture_stacks)
            .field("capture_timeout", &self.capture_timeout)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("headers", &self.headers)
            .field("redacted_query_params", &self.redacted_query_params)
            .field("ignore_paths", &self.ignore_paths)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for WatchdogLayer {
    type Service = Watchdog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Watchdog::new(inner, self.shared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("/health", "/health"));
        assert!(!glob_match("/health", "/healthz"));
        assert!(glob_match("/static/*", "/static/a/b.css"));
        assert!(glob_match("*.png", "/img/x.png"));
        assert!(glob_match("/a/*/c", "/a/b/c"));
        assert!(!glob_match("/a/*/c", "/a/b/d"));
    }

    #[test]
    fn zero_threshold_is_a_configuration_error() {
        let error = WatchdogLayer::try_new(Duration::ZERO).unwrap_err();
        assert!(error.to_string().contains("threshold"));
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn recapture_multiples_must_increase() {
        let _ = WatchdogLayer::new(Duration::from_secs(1)).recapture_at([4, 2]);
    }
}
