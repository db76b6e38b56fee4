use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use tower_layer::Layer;

use super::part::{Filter, IgnorePredicate, WatchCounters, WatchPart};
use super::Watchdog;
use crate::config::WatchdogConfig;
use crate::error::ConfigError;
use crate::monitor::Core;
use crate::registry::Seen;
use crate::report::RequestCapture;
use crate::sink::reporter::Reporter;
use crate::sink::{IntoSink, Sink};
use crate::tracked::Parts;

/// A layer that reports requests still running past a threshold.
///
/// A built layer is a cheap handle to a running watchdog: its reporter thread started when it
/// was built, and its requests are watched by the process's one monitor thread. Clones share
/// everything, so clone the layer before handing it to `Router::layer` to read
/// [`WatchdogLayer::stats`] later.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
pub struct WatchdogLayer {
    threshold: Duration,
    running: Option<Running>,
}

/// The parts of a watchdog that is switched on.
#[derive(Clone)]
struct Running {
    part: Arc<WatchPart>,
    parts: Arc<Parts>,
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
    /// Slots of the process's registry: the peak number of concurrent requests of every
    /// layer in the process.
    pub registry_slots: u64,
}

impl WatchdogLayer {
    /// A running watchdog that reports requests still running after `threshold`, with every
    /// other setting at its default. Add sinks with [`WatchdogLayer::sink`].
    ///
    /// # Panics
    ///
    /// If `threshold` is zero, or if the watchdog's threads cannot be started. Use
    /// [`WatchdogLayer::builder`] to get these as a [`ConfigError`].
    pub fn new(threshold: Duration) -> Self {
        match Self::builder(threshold).build() {
            Ok(layer) => layer,
            Err(error) => panic!("tower-vigil: {error}"),
        }
    }

    /// A builder for a watchdog with the given threshold.
    pub fn builder(threshold: Duration) -> WatchdogBuilder {
        Self::from_config(WatchdogConfig {
            threshold,
            ..WatchdogConfig::default()
        })
    }

    /// A builder that starts from `config` (read from a file, say); closures and sinks are
    /// added with the builder's methods.
    pub fn from_config(config: WatchdogConfig) -> WatchdogBuilder {
        WatchdogBuilder {
            config,
            sinks: Vec::new(),
            ignore_if: None,
        }
    }

    /// Adds a sink to this running watchdog, shared with every clone of the layer; every
    /// report from now on goes to every sink. Without a sink, reports are only counted: add
    /// [`crate::sink::LogSink`] at least.
    ///
    /// A sink that fails to start (an email sink without a recipient, say) is logged at ERROR
    /// and left out; [`WatchdogBuilder::sink`] reports it as an error from `build` instead.
    pub fn sink(self, sink: impl IntoSink) -> Self {
        if let Some(running) = &self.running {
            match sink.into_sink() {
                Ok(sink) => running.part.reporter.add_sink(sink),
                Err(error) => {
                    tracing::error!(target: "tower_vigil", %error, "sink not added to the watchdog");
                }
            }
        }
        self
    }

    /// The configured threshold.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// Whether the watchdog is switched on.
    pub fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    pub(crate) fn parts(&self) -> Option<&Arc<Parts>> {
        self.running.as_ref().map(|r| &r.parts)
    }

    pub(crate) fn part(&self) -> Option<&Arc<WatchPart>> {
        self.running.as_ref().map(|r| &r.part)
    }

    /// The counters of this watchdog.
    pub fn stats(&self) -> WatchdogStats {
        let Some(running) = &self.running else {
            return WatchdogStats::default();
        };
        let registry = &running.parts.registry;
        let (mut in_flight, mut stuck_now) = (0, 0);
        registry.scan(|slot, seen| {
            let id = match seen {
                Seen::Running { id } | Seen::Stuck { id } => id,
                Seen::FinishedAfterStuck { .. } => return,
            };
            let mine = slot
                .watched_parts_of(id)
                .is_some_and(|parts| parts.watches_with(&running.part));
            if mine {
                in_flight += 1;
                stuck_now += u64::from(matches!(seen, Seen::Stuck { .. }));
            }
        });
        let part = &running.part;
        let delivery = &part.reporter.counters;
        WatchdogStats {
            in_flight,
            stuck_now,
            reported: part.counters.reported.load(Ordering::Relaxed),
            completed: part.counters.completed.load(Ordering::Relaxed),
            dropped: delivery.dropped.load(Ordering::Relaxed),
            delivered: delivery.delivered.load(Ordering::Relaxed),
            sink_failures: delivery.sink_failures.load(Ordering::Relaxed),
            capture_timeouts: delivery.capture_timeouts.load(Ordering::Relaxed),
            registry_slots: registry.capacity() as u64,
        }
    }

    /// Reports every request still in flight (trigger [`ReportTrigger::Shutdown`]) and
    /// hands every report to the sinks, within `timeout`; returns how many requests were in
    /// flight. Call it when the process is told to stop, before waiting for requests to drain:
    /// the supervisor's kill may come before they do. [`WatchdogLayer::on_shutdown`] wires it
    /// to axum's graceful shutdown.
    ///
    /// [`ReportTrigger::Shutdown`]: crate::report::ReportTrigger::Shutdown
    pub fn report_in_flight(&self, timeout: Duration) -> usize {
        let Some(running) = &self.running else {
            return 0;
        };
        let reported = crate::monitor::report_in_flight(running.parts.registry, &running.part);
        running.part.reporter.flush(timeout);
        reported
    }

    /// A shutdown future for axum's `with_graceful_shutdown`: it waits for `signal`, then
    /// reports every request still in flight and flushes the sinks (within `timeout`, on a
    /// blocking thread), and only then lets the server stop accepting and drain.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use axum::{routing::get, Router};
    /// use tower_vigil::{sink::LogSink, watchdog::WatchdogLayer};
    ///
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// let watchdog = WatchdogLayer::new(Duration::from_secs(5)).sink(LogSink::default());
    /// let app = Router::new().route("/", get(|| async { "hello" })).layer(watchdog.clone());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(watchdog.on_shutdown(
    ///         async { let _ = tokio::signal::ctrl_c().await; },
    ///         Duration::from_secs(5),
    ///     ))
    ///     .await
    /// # }
    /// ```
    pub fn on_shutdown<F>(
        &self,
        signal: F,
        timeout: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        F: std::future::Future + Send + 'static,
    {
        let watchdog = self.clone();
        async move {
            signal.await;
            let reported =
                tokio::task::spawn_blocking(move || watchdog.report_in_flight(timeout)).await;
            if let Ok(reported) = reported {
                tracing::info!(
                    target: "tower_vigil",
                    in_flight = reported,
                    "shutting down: requests still in flight were reported"
                );
            }
        }
    }

    /// Waits until every report so far has been handed to the sinks, for at most `timeout`;
    /// call it on graceful shutdown. That includes the completion records of reported requests
    /// that have already ended. Returns false if the time ran out.
    pub fn flush(&self, timeout: Duration) -> bool {
        match &self.running {
            Some(running) => {
                let deadline = std::time::Instant::now() + timeout;
                running.parts.registry.wake.catch_up(deadline)
                    && running
                        .part
                        .reporter
                        .flush(deadline.saturating_duration_since(std::time::Instant::now()))
            }
            None => true,
        }
    }
}

impl fmt::Debug for WatchdogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("WatchdogLayer");
        debug.field("threshold", &self.threshold);
        match &self.running {
            Some(running) => debug.field("sinks", &running.part.reporter.sink_names()),
            None => debug.field("enabled", &false),
        };
        debug.finish_non_exhaustive()
    }
}

impl<S> Layer<S> for WatchdogLayer {
    type Service = Watchdog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Watchdog::new(inner, self.running.as_ref().map(|r| r.parts.clone()))
    }
}

/// Configures a [`WatchdogLayer`]; made by [`WatchdogLayer::builder`] or
/// [`WatchdogLayer::from_config`]. Setters never panic: [`WatchdogBuilder::build`] checks
/// every value and names the one at fault.
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::sink::LogSink;
/// use tower_vigil::watchdog::WatchdogLayer;
///
/// let watchdog = WatchdogLayer::builder(Duration::from_secs(5))
///     .recapture_at([2, 4, 8])
///     .ignore_path("/health")
///     .sink(LogSink::default())
///     .build()?;
/// assert_eq!(watchdog.threshold(), Duration::from_secs(5));
///
/// let error = WatchdogLayer::builder(Duration::from_secs(5))
///     .recapture_at([4, 2])
///     .build()
///     .unwrap_err();
/// assert_eq!(error.field(), "watchdog.recapture_at");
/// # Ok::<(), tower_vigil::ConfigError>(())
/// ```
pub struct WatchdogBuilder {
    config: WatchdogConfig,
    sinks: Vec<PendingSink>,
    ignore_if: Option<Arc<IgnorePredicate>>,
}

/// A sink that starts when the watchdog is built.
type PendingSink = Box<dyn FnOnce() -> Result<Arc<dyn Sink>, ConfigError> + Send + Sync>;

impl fmt::Debug for WatchdogBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchdogBuilder")
            .field("config", &self.config)
            .field("sinks", &self.sinks.len())
            .field("ignore_if", &self.ignore_if.is_some())
            .finish()
    }
}

impl WatchdogBuilder {
    /// Adds a sink. Call again to add more; every report goes to every sink. Default: none,
    /// in which case reports are only counted; add [`crate::sink::LogSink`] at least. Sinks
    /// with threads of their own start in [`WatchdogBuilder::build`].
    pub fn sink(mut self, sink: impl IntoSink) -> Self {
        self.sinks.push(Box::new(move || sink.into_sink()));
        self
    }

    /// The threshold after which a request still running is reported.
    pub fn threshold(mut self, threshold: Duration) -> Self {
        self.config.threshold = threshold;
        self
    }

    /// Multiples of the threshold at which a request still running is captured again.
    /// Default: 2× and 4×. Empty means one report. Each must be at least 2, strictly
    /// increasing.
    pub fn recapture_at(mut self, multiples: impl IntoIterator<Item = u32>) -> Self {
        self.config.recapture_at = multiples.into_iter().collect();
        self
    }

    /// Whether to capture the native stack of the polling thread. Default: true. Without it,
    /// reports still carry the request, the timing and the open spans.
    pub fn capture_stacks(mut self, enabled: bool) -> Self {
        self.config.capture_stacks = enabled;
        self
    }

    /// How long the reporter waits for a thread to answer the capture signal. Default:
    /// 250 ms. A thread that does not answer is named in the report as such; the monitor
    /// never waits for it.
    pub fn capture_timeout(mut self, timeout: Duration) -> Self {
        self.config.capture_timeout = timeout;
        self
    }

    /// How finely the threshold is kept: reports come up to one resolution after it.
    /// Default: a twentieth of the threshold, between 1 ms and 100 ms.
    pub fn resolution(mut self, resolution: Duration) -> Self {
        self.config.resolution = Some(resolution);
        self
    }

    /// Bound of the queue between the monitor and the reporter thread; a report that does not
    /// fit is dropped and counted in [`WatchdogStats::dropped`]. Default: 256.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// Headers copied into reports, replacing the default list (Host, User-Agent, Referer,
    /// Content-Type, Content-Length, X-Request-Id). Authorization, Cookie, Set-Cookie and
    /// Proxy-Authorization are always redacted if listed.
    ///
    /// Each request in flight holds its own copy of these values, except for headers of
    /// [`SHARED_VALUE_HEADERS`](crate::report::SHARED_VALUE_HEADERS), whose repeated values
    /// the watchdog keeps once (16 per header, each up to 256 bytes; other values are copied).
    pub fn report_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.report_headers = headers.into_iter().map(|h| h.as_str().to_owned()).collect();
        self
    }

    /// Another header whose value is replaced by `[redacted]` in every report; headers named
    /// by the built-in list of sensitive names (`x-api-key`, `x-csrf-token`) already are.
    pub fn redact_header(mut self, name: HeaderName) -> Self {
        self.config.redact_headers.push(name.as_str().to_owned());
        self
    }

    /// Adds a name to the built-in list of sensitive names
    /// ([`SENSITIVE_NAME_FRAGMENTS`](crate::report::SENSITIVE_NAME_FRAGMENTS)): the value of
    /// every query parameter whose name is or contains it is replaced by `[redacted]` in every
    /// report, and so is every header of [`report_headers`](Self::report_headers) so named.
    ///
    /// Names are compared after percent-decoding, in any case, with `-`, `_` and `.` left out:
    /// `ticket` redacts `ticket`, `Ticket_ID` and `x-ticket`. A name added here wins over
    /// [`allow_query_param`](Self::allow_query_param).
    pub fn redact_query_param(mut self, name: impl Into<String>) -> Self {
        self.config.redact_query_params.push(name.into());
        self
    }

    /// Lets one query parameter through that the built-in list of sensitive names would
    /// redact, such as `page_token` (a cursor, not a secret) or `author` (it contains `auth`).
    ///
    /// The name must match whole, compared as in [`redact_query_param`](Self::redact_query_param):
    /// `page_token` also lets `Page-Token` through, but not `page_token2`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_vigil::watchdog::WatchdogLayer;
    ///
    /// let watchdog = WatchdogLayer::builder(Duration::from_secs(5))
    ///     .allow_query_param("page_token")
    ///     .build()?;
    /// # Ok::<(), tower_vigil::ConfigError>(())
    /// ```
    pub fn allow_query_param(mut self, name: impl Into<String>) -> Self {
        self.config.allow_query_params.push(name.into());
        self
    }

    /// Ignores requests whose path matches `pattern`, where `*` matches any run of
    /// characters: `/health`, `/static/*`, `*.png`. Call again for more patterns. A pattern
    /// must start with `/` or `*`.
    pub fn ignore_path(mut self, pattern: impl Into<String>) -> Self {
        self.config.ignore_paths.push(pattern.into());
        self
    }

    /// Ignores requests for which `predicate` returns true, such as long polls that are slow
    /// on purpose.
    pub fn ignore_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.ignore_if = Some(Arc::new(predicate));
        self
    }

    /// Whether websocket upgrades (101) and event streams (`text/event-stream`) stop being
    /// watched once their headers are out, since they stay open by design. Default: true.
    pub fn long_lived_exempt(mut self, exempt: bool) -> Self {
        self.config.long_lived_exempt = exempt;
        self
    }

    /// Switches the watchdog off (every request passes through untouched, no thread starts)
    /// or on. Default: on.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// The configuration as it stands.
    pub fn config(&self) -> &WatchdogConfig {
        &self.config
    }

    /// Checks every setting and starts the watchdog: its reporter thread, and the process's
    /// monitor thread if it is not running yet.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting, or a thread that could not start.
    pub fn build(self) -> Result<WatchdogLayer, ConfigError> {
        let config = self.config;
        config.validate()?;
        let threshold = config.threshold;
        if !config.enabled {
            return Ok(WatchdogLayer {
                threshold,
                running: None,
            });
        }
        let headers = parse_headers("watchdog.report_headers", &config.report_headers)?;
        let redacted_headers = parse_headers("watchdog.redact_headers", &config.redact_headers)?;
        let core = Core::global()?;
        if config.capture_stacks {
            // Claim the signal now, so a conflict shows up at start-up in the log, not in the
            // first report.
            if let Err(reason) = crate::stack::capture_signal() {
                tracing::warn!(target: "tower_vigil", %reason, "native stack capture unavailable");
            }
        }
        let sinks = self
            .sinks
            .into_iter()
            .map(|start| start())
            .collect::<Result<Vec<_>, _>>()?;
        let reporter = Reporter::start(sinks, config.queue_capacity).map_err(|error| {
            ConfigError::other(
                "watchdog",
                format!("cannot start the reporter thread: {error}"),
            )
        })?;
        crate::monitor::note_resolution(config.resolution_or_default());
        let part = Arc::new(WatchPart {
            threshold,
            recapture_at: config.recapture_at.clone(),
            capture_stacks: config.capture_stacks,
            capture_timeout: config.capture_timeout,
            resolution: config.resolution_or_default(),
            reporter,
            counters: WatchCounters::default(),
            filter: Filter {
                paths: config.ignore_paths.clone(),
                predicate: self.ignore_if,
            },
            capture: RequestCapture::new(
                headers,
                &redacted_headers,
                &config.redact_query_params,
                &config.allow_query_params,
            ),
            long_lived_exempt: config.long_lived_exempt,
        });
        let parts = Arc::new(Parts {
            registry: core.registry,
            watch: Some(part.clone()),
            deadlines: None,
        });
        #[cfg(feature = "metrics")]
        publish_metrics(threshold, &part, &parts);
        Ok(WatchdogLayer {
            threshold,
            running: Some(Running { part, parts }),
        })
    }
}

/// Publishes this watchdog's counters while it lives.
#[cfg(feature = "metrics")]
fn publish_metrics(threshold: Duration, part: &Arc<WatchPart>, parts: &Arc<Parts>) {
    use crate::metrics::{counter, gauge};
    let instance = crate::metrics::instance("watchdog");
    let (part, parts) = (Arc::downgrade(part), Arc::downgrade(parts));
    crate::metrics::register(move || {
        let (Some(part), Some(parts)) = (part.upgrade(), parts.upgrade()) else {
            return false;
        };
        let layer = WatchdogLayer {
            threshold,
            running: Some(Running { part, parts }),
        };
        let stats = layer.stats();
        gauge("vigil_requests_in_flight", &instance, stats.in_flight);
        gauge("vigil_requests_stuck", &instance, stats.stuck_now);
        counter("vigil_reports_total", &instance, stats.reported);
        counter("vigil_completions_total", &instance, stats.completed);
        counter("vigil_reports_dropped_total", &instance, stats.dropped);
        counter("vigil_sink_failures_total", &instance, stats.sink_failures);
        counter(
            "vigil_capture_timeouts_total",
            &instance,
            stats.capture_timeouts,
        );
        true
    });
}

fn parse_headers(field: &str, names: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::invalid(field, name, "must be valid header names"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threshold_is_a_configuration_error() {
        let error = WatchdogLayer::builder(Duration::ZERO).build().unwrap_err();
        assert_eq!(error.field(), "watchdog.threshold");
    }

    #[test]
    fn recapture_multiples_must_increase() {
        let error = WatchdogLayer::builder(Duration::from_secs(1))
            .recapture_at([4, 2])
            .build()
            .unwrap_err();
        assert_eq!(error.field(), "watchdog.recapture_at");
    }

    #[test]
    fn a_disabled_watchdog_starts_nothing() {
        let layer = WatchdogLayer::builder(Duration::from_secs(1))
            .enabled(false)
            .build()
            .unwrap();
        assert!(!layer.is_enabled());
        assert_eq!(layer.stats(), WatchdogStats::default());
    }
}
