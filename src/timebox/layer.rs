use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tower_layer::Layer;

use super::Timebox;
use crate::error::ConfigError;
use crate::monitor::{Core, CoreConfig, DeadlineSettings, EscalationHook};
use crate::registry::Seen;

/// A layer that cancels request work cleanly before the process supervisor kills it.
///
/// Two phases: at the **soft deadline** the request's [`super::Deadline`] is cancelled, so the
/// handler can stop with its own cleanup and response; at the **hard deadline** the handler's
/// future is dropped (destructors run, locks and connections are released) and the client gets
/// `503 Service Unavailable` with `Retry-After`. Deadlines are fired by the monitor thread:
/// there is no timer per request.
///
/// With isolation (on by default) the handler runs in a task of its own, so the 503 goes out
/// on time even when the handler blocks its worker thread, provided another worker is free.
///
/// See the [module docs](super) for examples and the supervisor arithmetic.
#[derive(Clone)]
pub struct TimeboxLayer {
    hard: Duration,
    soft: Duration,
    status: StatusCode,
    body: Bytes,
    retry_after: Option<Duration>,
    isolate: bool,
    deadline_extension: bool,
    wait_timeout: Option<Duration>,
    body_deadline: bool,
    escalation: Option<(usize, Duration, EscalationHook)>,
    resolution: Option<Duration>,
    enabled: bool,
    started: Arc<OnceLock<Arc<Shared>>>,
}

/// What the services of one layer share.
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) response: TimeoutResponse,
    pub(crate) isolate: bool,
    pub(crate) deadline_extension: bool,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) body_deadline: bool,
    pub(crate) counters: TimeboxCounters,
    /// The watchdog of the same [`crate::Vigil`] stack, for its filter and request capture.
    pub(crate) watch: Option<Arc<crate::watchdog::layer::Shared>>,
}

/// The response sent at the hard deadline and when shedding.
pub(crate) struct TimeoutResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) retry_after: Option<HeaderValue>,
}

/// Counters kept by the services.
#[derive(Debug, Default)]
pub(crate) struct TimeboxCounters {
    pub(crate) soft_honoured: AtomicU64,
    pub(crate) hard_timeouts: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) body_timeouts: AtomicU64,
}

/// Counters of one timebox, from [`TimeboxLayer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeboxStats {
    /// Requests registered and not yet finished (including wedged work still running).
    pub in_flight: u64,
    /// Requests whose soft deadline passed: their `Deadline` was cancelled.
    pub soft_cancellations: u64,
    /// Of those, requests that then finished on their own before the hard deadline.
    pub soft_cancellations_honoured: u64,
    /// Requests answered with the timeout response at the hard deadline.
    pub hard_timeouts: u64,
    /// Requests with a thread still inside their poll at the hard deadline.
    pub wedged: u64,
    /// Requests answered at once because they had queued longer than `wait_timeout`.
    pub shed: u64,
    /// Response bodies ended with an error because they outlived the hard deadline.
    pub body_timeouts: u64,
    /// Times the escalation hook was called.
    pub escalations: u64,
}

impl TimeboxLayer {
    /// Default time between the soft and the hard deadline, for deadlines of 10 s and more;
    /// shorter deadlines get a fifth of the hard deadline.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
    /// Default margin kept between the hard deadline and the supervisor's kill, for
    /// supervisor timeouts of 30 s and more; shorter ones get a tenth.
    pub const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_secs(3);
    /// Default status of the timeout response.
    pub const DEFAULT_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
    /// Default body of the timeout response.
    pub const DEFAULT_BODY: &'static str = "Service Unavailable: the request took too long.\n";
    /// Default `Retry-After` of the timeout response.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

    /// Timeboxes requests to `hard`, with the soft deadline [`TimeboxLayer::DEFAULT_GRACE`]
    /// before it.
    ///
    /// # Panics
    ///
    /// If `hard` is zero; use [`TimeboxLayer::try_new`] for values read from configuration.
    pub fn new(hard: Duration) -> Self {
        Self::try_new(hard).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Like [`TimeboxLayer::new`], with an error for a zero deadline.
    pub fn try_new(hard: Duration) -> Result<Self, ConfigError> {
        if hard.is_zero() {
            return Err(ConfigError::new(
                "timebox: the hard deadline must be greater than zero",
            ));
        }
        Ok(Self {
            hard,
            soft: hard - default_grace(hard),
            status: Self::DEFAULT_STATUS,
            body: Bytes::from_static(Self::DEFAULT_BODY.as_bytes()),
            retry_after: Some(Self::DEFAULT_RETRY_AFTER),
            isolate: true,
            deadline_extension: true,
            wait_timeout: None,
            body_deadline: false,
            escalation: None,
            resolution: None,
            enabled: true,
            started: Arc::new(OnceLock::new()),
        })
    }

    /// Derives every deadline from the supervisor's kill timeout (gunicorn's `--timeout`,
    /// Kubernetes' `terminationGracePeriodSeconds`, Heroku's 30 s):
    ///
    /// - hard deadline = `supervisor` − safety margin ([`TimeboxLayer::DEFAULT_SAFETY_MARGIN`],
    ///   a tenth of `supervisor` when that is smaller);
    /// - soft deadline = hard deadline − grace (as in [`TimeboxLayer::new`]).
    ///
    /// For 30 s: hard at 27 s, soft at 25 s. In a [`crate::Vigil`] stack with a watchdog, the
    /// watchdog also captures at the soft deadline and, for wedged requests, at the hard one,
    /// so the evidence is written at least the safety margin before the kill.
    pub fn supervisor_timeout(supervisor: Duration) -> Result<Self, ConfigError> {
        let margin = Self::DEFAULT_SAFETY_MARGIN.min(supervisor / 10);
        if supervisor.is_zero() {
            return Err(ConfigError::new(
                "timebox: the supervisor timeout must be greater than zero",
            ));
        }
        Self::try_new(supervisor - margin)
    }

    fn changed(mut self) -> Self {
        self.started = Arc::new(OnceLock::new());
        self
    }

    /// Sets the time between the soft and the hard deadline.
    /// Default: [`TimeboxLayer::DEFAULT_GRACE`], or a fifth of the hard deadline below 10 s.
    ///
    /// # Errors
    ///
    /// If the grace is not shorter than the hard deadline (the soft deadline would be at or
    /// before the start).
    pub fn grace(mut self, grace: Duration) -> Result<Self, ConfigError> {
        if grace >= self.hard {
            return Err(ConfigError::new(format!(
                "timebox: grace {grace:?} must be shorter than the hard deadline {:?}",
                self.hard
            )));
        }
        self.soft = self.hard - grace;
        Ok(self.changed())
    }

    /// Sets the soft deadline, counted from the start of the request.
    ///
    /// # Errors
    ///
    /// If it is zero, or after the hard deadline (an inverted configuration).
    pub fn soft_deadline(mut self, soft: Duration) -> Result<Self, ConfigError> {
        if soft.is_zero() {
            return Err(ConfigError::new(
                "timebox: the soft deadline must be greater than zero",
            ));
        }
        if soft > self.hard {
            return Err(ConfigError::new(format!(
                "timebox: the soft deadline {soft:?} is after the hard deadline {:?}",
                self.hard
            )));
        }
        self.soft = soft;
        Ok(self.changed())
    }

    /// Status of the timeout response. Default: [`TimeboxLayer::DEFAULT_STATUS`].
    ///
    /// # Errors
    ///
    /// For a status that is not a server error (5xx): a deadline that the server missed is not
    /// the client's fault, so 408 and other 4xx are refused.
    pub fn status(mut self, status: StatusCode) -> Result<Self, ConfigError> {
        if !status.is_server_error() {
            return Err(ConfigError::new(format!(
                "timebox: the timeout status must be a 5xx server error, not {status}"
            )));
        }
        self.status = status;
        Ok(self.changed())
    }

    /// Body of the timeout response. Default: [`TimeboxLayer::DEFAULT_BODY`].
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self.changed()
    }

    /// `Retry-After` of the timeout response, or `None` for no header.
    /// Default: [`TimeboxLayer::DEFAULT_RETRY_AFTER`].
    pub fn retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self.changed()
    }

    /// Whether the handler runs in a task of its own. Default: true, inside a tokio runtime.
    /// Without isolation there is no task per request, but a handler that blocks its thread
    /// also delays its own 503 until it yields.
    pub fn isolation(mut self, isolate: bool) -> Self {
        self.isolate = isolate;
        self.changed()
    }

    /// Whether each request gets its [`super::Deadline`] as a request extension. Default:
    /// true. The extension costs the request's extension map its allocations; without it,
    /// handlers still see the deadline through [`super::Deadline::current`] and
    /// [`super::timebox`].
    pub fn deadline_extension(mut self, enabled: bool) -> Self {
        self.deadline_extension = enabled;
        self.changed()
    }

    /// This timebox for services whose futures are not `Send` or not `'static` (isolation
    /// needs both): the handler runs inline and the layer places no bounds on its future.
    pub fn inline(self) -> InlineTimeboxLayer {
        InlineTimeboxLayer {
            timebox: self.isolation(false),
        }
    }

    /// Answers 503 at once, without calling the service, for a request whose
    /// `X-Request-Start` header says it queued longer than `wait` (rack-timeout's
    /// `wait_timeout`). A malformed, implausible or future-dated header is ignored.
    /// Default: off.
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait_timeout = Some(wait);
        self.changed()
    }

    /// Whether a response body still streaming at the hard deadline is ended with an error,
    /// which aborts the connection. Default: false.
    pub fn body_deadline(mut self, enabled: bool) -> Self {
        self.body_deadline = enabled;
        self.changed()
    }

    /// Calls `hook` (on the monitor thread; it must not block) with the count when `count`
    /// requests were wedged within `within`, for example to begin a graceful shutdown so that
    /// the supervisor restarts the worker cleanly (rack-timeout's `term_on_timeout`).
    /// Default: off.
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    pub fn escalate_after<F>(mut self, count: usize, within: Duration, hook: F) -> Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        assert!(count > 0, "escalate_after: count must be at least 1");
        self.escalation = Some((count, within, Arc::new(hook)));
        self.changed()
    }

    /// How finely deadlines are kept: they fire up to one resolution late. Default: a
    /// fiftieth of the grace, between 1 ms and 50 ms.
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

    /// Switches the timebox off (requests pass through untouched) or on, for debugging
    /// sessions. Default: on.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self.changed()
    }

    /// The hard deadline.
    pub fn hard_deadline(&self) -> Duration {
        self.hard
    }

    /// The soft deadline.
    pub fn soft_deadline_after(&self) -> Duration {
        self.soft
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn effective_resolution(&self) -> Duration {
        self.resolution.unwrap_or_else(|| {
            ((self.hard - self.soft) / 50)
                .clamp(Duration::from_millis(1), Duration::from_millis(50))
        })
    }

    pub(crate) fn deadline_settings(&self) -> DeadlineSettings {
        DeadlineSettings {
            soft_after: self.soft,
            hard_after: self.hard,
            escalation: self.escalation.clone(),
        }
    }

    fn shared_with(
        &self,
        core: Arc<Core>,
        watch: Option<Arc<crate::watchdog::layer::Shared>>,
    ) -> Arc<Shared> {
        let retry_after = self
            .retry_after
            .map(|d| HeaderValue::from(d.as_secs().max(1)));
        Arc::new(Shared {
            core,
            response: TimeoutResponse {
                status: self.status,
                body: self.body.clone(),
                retry_after,
            },
            isolate: self.isolate,
            deadline_extension: self.deadline_extension,
            wait_timeout: self.wait_timeout,
            body_deadline: self.body_deadline,
            counters: TimeboxCounters::default(),
            watch,
        })
    }

    /// The shared state of this layer on `core`, shared with a watchdog in a [`crate::Vigil`]
    /// stack; [`TimeboxLayer::stats`] of this layer and its clones reads it.
    pub(crate) fn attach(
        &self,
        core: Arc<Core>,
        watch: Option<Arc<crate::watchdog::layer::Shared>>,
    ) -> Arc<Shared> {
        let shared = self
            .started
            .get_or_init(|| self.shared_with(core.clone(), watch.clone()));
        if Arc::ptr_eq(&shared.core, &core) {
            shared.clone()
        } else {
            self.shared_with(core, watch)
        }
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        if !self.enabled {
            return None;
        }
        let shared = self.started.get_or_init(|| {
            let core = Core::start(CoreConfig {
                watch: None,
                deadlines: Some(self.deadline_settings()),
                resolution: self.effective_resolution(),
            })
            .unwrap_or_else(|error| {
                panic!("tower-vigil: cannot start the monitor thread: {error}")
            });
            self.shared_with(core, None)
        });
        Some(shared.clone())
    }

    /// The counters of this timebox (all zero before it has been layered).
    pub fn stats(&self) -> TimeboxStats {
        let Some(shared) = self.started.get() else {
            return TimeboxStats::default();
        };
        let mut in_flight = 0;
        shared.core.registry.scan(|_, seen| {
            if !matches!(seen, Seen::FinishedAfterStuck { .. }) {
                in_flight += 1;
            }
        });
        let monitor = &shared.core.counters;
        let counters = &shared.counters;
        TimeboxStats {
            in_flight,
            soft_cancellations: monitor.soft_cancellations.load(Ordering::Relaxed),
            soft_cancellations_honoured: counters.soft_honoured.load(Ordering::Relaxed),
            hard_timeouts: counters.hard_timeouts.load(Ordering::Relaxed),
            wedged: monitor.wedged.load(Ordering::Relaxed),
            shed: counters.shed.load(Ordering::Relaxed),
            body_timeouts: counters.body_timeouts.load(Ordering::Relaxed),
            escalations: monitor.escalations.load(Ordering::Relaxed),
        }
    }
}

fn default_grace(hard: Duration) -> Duration {
    TimeboxLayer::DEFAULT_GRACE.min(hard / 5)
}

impl fmt::Debug for TimeboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeboxLayer")
            .field("hard", &self.hard)
            .field("soft", &self.soft)
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("isolate", &self.isolate)
            .field("wait_timeout", &self.wait_timeout)
            .field("body_deadline", &self.body_deadline)
            .field(
                "escalation",
                &self.escalation.as_ref().map(|(n, w, _)| (n, w)),
            )
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// [`TimeboxLayer`] for services whose futures are not `Send` or not `'static`; made by
/// [`TimeboxLayer::inline`].
#[derive(Clone, Debug)]
pub struct InlineTimeboxLayer {
    timebox: TimeboxLayer,
}

impl InlineTimeboxLayer {
    /// The counters of this timebox.
    pub fn stats(&self) -> TimeboxStats {
        self.timebox.stats()
    }
}

impl<S> Layer<S> for InlineTimeboxLayer {
    type Service = super::InlineTimebox<S>;

    fn layer(&self, inner: S) -> Self::Service {
        super::InlineTimebox::new(inner, self.timebox.shared())
    }
}

impl<S> Layer<S> for TimeboxLayer {
    type Service = Timebox<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timebox::new(inner, self.shared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_inverted_deadlines_are_errors() {
        assert!(TimeboxLayer::try_new(Duration::ZERO).is_err());
        let layer = TimeboxLayer::new(Duration::from_secs(10));
        assert!(layer
            .clone()
            .soft_deadline(Duration::from_secs(11))
            .is_err());
        assert!(layer.clone().soft_deadline(Duration::ZERO).is_err());
        assert!(layer.clone().grace(Duration::from_secs(10)).is_err());
        assert!(layer.clone().status(StatusCode::REQUEST_TIMEOUT).is_err());
        assert!(TimeboxLayer::supervisor_timeout(Duration::ZERO).is_err());
    }

    #[test]
    fn supervisor_arithmetic() {
        let layer = TimeboxLayer::supervisor_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(layer.hard_deadline(), Duration::from_secs(27));
        assert_eq!(layer.soft_deadline_after(), Duration::from_secs(25));
        let short = TimeboxLayer::supervisor_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(short.hard_deadline(), Duration::from_millis(4500));
        assert_eq!(short.soft_deadline_after(), Duration::from_millis(3600));
    }
}
