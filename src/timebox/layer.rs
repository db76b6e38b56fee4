use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tower_layer::Layer;

use super::part::{DeadlinePart, Escalation, TimeboxCounters, TimeoutResponse};
use super::Timebox;
use crate::config::{Isolation, TimeboxConfig};
use crate::error::ConfigError;
use crate::monitor::Core;
use crate::registry::Seen;
use crate::tracked::Parts;

/// A layer that cancels request work cleanly before the process supervisor kills it.
///
/// Two phases: at the **soft deadline** the request's [`super::Deadline`] is cancelled, so the
/// handler can stop with its own cleanup and response; at the **hard deadline** the handler's
/// future is dropped (destructors run, locks and connections are released) and the client gets
/// `503 Service Unavailable` with `Retry-After`. Deadlines are fired by the process's monitor
/// thread: there is no timer per request.
///
/// With isolation the handler runs in a task of its own, so the 503 goes out on time even when
/// the handler blocks its worker thread, provided another worker is free. By default only
/// routes that have wedged before are isolated ([`Isolation::Adaptive`]).
///
/// A built layer is a cheap handle to a running timebox; clones share its counters.
/// See the [module docs](super) for examples and the supervisor arithmetic.
#[derive(Clone)]
pub struct TimeboxLayer {
    soft: Duration,
    hard: Duration,
    running: Option<Running>,
}

#[derive(Clone)]
struct Running {
    part: Arc<DeadlinePart>,
    parts: Arc<Parts>,
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
    /// A running timebox with the hard deadline `hard` and every other setting at its
    /// default (soft deadline 2 s before, or a fifth of `hard` below 10 s).
    ///
    /// # Panics
    ///
    /// If `hard` is zero, or the monitor thread cannot start. Use [`TimeboxLayer::builder`] to
    /// get these as a [`ConfigError`].
    pub fn new(hard: Duration) -> Self {
        Self::builder(hard)
            .build()
            .unwrap_or_else(|error| panic!("tower-vigil: {error}"))
    }

    /// A running timebox whose deadlines derive from the supervisor's kill timeout (gunicorn's
    /// `--timeout`, Kubernetes' `terminationGracePeriodSeconds`, Heroku's 30 s):
    ///
    /// - hard deadline = `supervisor` − safety margin (3 s, or a tenth of `supervisor` when
    ///   that is smaller);
    /// - soft deadline = hard deadline − grace (2 s, or a fifth of the hard deadline below
    ///   10 s).
    ///
    /// For 30 s: hard at 27 s, soft at 25 s. In a [`crate::Vigil`] stack with a watchdog, the
    /// watchdog also captures at the soft deadline and, for wedged requests, at the hard one,
    /// so the evidence is written at least the safety margin before the kill.
    ///
    /// # Errors
    ///
    /// If `supervisor` is zero, or the monitor thread cannot start.
    pub fn supervisor_timeout(supervisor: Duration) -> Result<Self, ConfigError> {
        Self::builder_for_supervisor(supervisor).build()
    }

    /// A builder whose deadlines derive from the supervisor's kill timeout, as
    /// [`TimeboxLayer::supervisor_timeout`] does.
    pub fn builder_for_supervisor(supervisor: Duration) -> TimeboxBuilder {
        Self::from_config(TimeboxConfig {
            supervisor_timeout: Some(supervisor),
            ..TimeboxConfig::default()
        })
    }

    /// A builder for a timebox with the hard deadline `hard`.
    pub fn builder(hard: Duration) -> TimeboxBuilder {
        Self::from_config(TimeboxConfig {
            hard_deadline: Some(hard),
            ..TimeboxConfig::default()
        })
    }

    /// A builder that starts from `config`; the escalation hook is added with the builder.
    pub fn from_config(config: TimeboxConfig) -> TimeboxBuilder {
        TimeboxBuilder {
            config,
            escalation: None,
        }
    }

    /// This timebox for services whose futures are not `Send` or not `'static` (isolation
    /// needs both): the handler runs inline and the layer places no bounds on its future.
    pub fn inline(self) -> InlineTimeboxLayer {
        InlineTimeboxLayer { timebox: self }
    }

    /// The hard deadline.
    pub fn hard_deadline(&self) -> Duration {
        self.hard
    }

    /// The soft deadline.
    pub fn soft_deadline(&self) -> Duration {
        self.soft
    }

    /// Whether the timebox is switched on.
    pub fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    pub(crate) fn parts(&self) -> Option<&Arc<Parts>> {
        self.running.as_ref().map(|r| &r.parts)
    }

    pub(crate) fn part(&self) -> Option<&Arc<DeadlinePart>> {
        self.running.as_ref().map(|r| &r.part)
    }

    /// The counters of this timebox.
    pub fn stats(&self) -> TimeboxStats {
        let Some(running) = &self.running else {
            return TimeboxStats::default();
        };
        let mut in_flight = 0;
        running.parts.registry.scan(|slot, seen| {
            let id = match seen {
                Seen::Running { id } | Seen::Stuck { id } => id,
                Seen::FinishedAfterStuck { .. } => return,
            };
            if slot
                .parts_of(id)
                .is_some_and(|parts| parts.deadlines_with(&running.part))
            {
                in_flight += 1;
            }
        });
        let counters = &running.part.counters;
        TimeboxStats {
            in_flight,
            soft_cancellations: counters.soft_cancellations.load(Ordering::Relaxed),
            soft_cancellations_honoured: counters.soft_honoured.load(Ordering::Relaxed),
            hard_timeouts: counters.hard_timeouts.load(Ordering::Relaxed),
            wedged: counters.wedged.load(Ordering::Relaxed),
            shed: counters.shed.load(Ordering::Relaxed),
            body_timeouts: counters.body_timeouts.load(Ordering::Relaxed),
            escalations: counters.escalations.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for TimeboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeboxLayer")
            .field("soft", &self.soft)
            .field("hard", &self.hard)
            .field("enabled", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for TimeboxLayer {
    type Service = Timebox<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timebox::new(inner, self.running.as_ref().map(|r| r.parts.clone()))
    }
}

/// Configures a [`TimeboxLayer`]; made by [`TimeboxLayer::builder`] or
/// [`TimeboxLayer::from_config`]. Setters never panic: [`TimeboxBuilder::build`] checks every
/// value and names the one at fault.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_vigil::timebox::TimeboxLayer;
///
/// let timebox = TimeboxLayer::builder(Duration::from_secs(10))
///     .grace(Duration::from_secs(3))
///     .wait_timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(timebox.soft_deadline(), Duration::from_secs(7));
///
/// let error = TimeboxLayer::builder(Duration::from_secs(10))
///     .status(StatusCode::REQUEST_TIMEOUT)
///     .build()
///     .unwrap_err();
/// assert_eq!(error.field(), "timebox.status");
/// # Ok::<(), tower_vigil::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct TimeboxBuilder {
    config: TimeboxConfig,
    escalation: Option<Escalation>,
}

impl fmt::Debug for TimeboxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeboxBuilder")
            .field("config", &self.config)
            .field(
                "escalation",
                &self.escalation.as_ref().map(|e| (e.count, e.within)),
            )
            .finish()
    }
}

impl TimeboxBuilder {
    /// Sets the hard deadline, counted from the start of the request.
    pub fn hard_deadline(mut self, hard: Duration) -> Self {
        self.config.hard_deadline = Some(hard);
        self.config.supervisor_timeout = None;
        self
    }

    /// Derives the hard deadline from the supervisor's kill timeout, as
    /// [`TimeboxLayer::supervisor_timeout`] does.
    pub fn supervisor_timeout(mut self, supervisor: Duration) -> Self {
        self.config.supervisor_timeout = Some(supervisor);
        self.config.hard_deadline = None;
        self
    }

    /// Sets the time between the soft and the hard deadline; it must be shorter than the hard
    /// deadline. Default: 2 s, or a fifth of the hard deadline below 10 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.config.grace = Some(grace);
        self.config.soft_deadline = None;
        self
    }

    /// Sets the soft deadline, counted from the start of the request; it must be greater
    /// than zero and not after the hard deadline.
    pub fn soft_deadline(mut self, soft: Duration) -> Self {
        self.config.soft_deadline = Some(soft);
        self.config.grace = None;
        self
    }

    /// Status of the timeout response, a 5xx server error. Default: 503. A deadline that the
    /// server missed is not the client's fault, so 408 and other 4xx are refused.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.config.status = status.as_u16();
        self
    }

    /// Body of the timeout response. Default: a one-line plain-text explanation.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.config.body = body.into();
        self
    }

    /// `Retry-After` of the timeout response, or `None` for no header. Default: 5 s.
    pub fn retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.config.retry_after = retry_after;
        self
    }

    /// Whether every handler runs in a task of its own (`true`: [`Isolation::Always`]) or
    /// none does (`false`: [`Isolation::Never`]). See [`TimeboxBuilder::isolation_mode`].
    pub fn isolation(mut self, isolate: bool) -> Self {
        self.config.isolation = if isolate {
            Isolation::Always
        } else {
            Isolation::Never
        };
        self
    }

    /// When a handler runs in a task of its own, inside a tokio runtime. Default:
    /// [`Isolation::Adaptive`]: only on routes that have been wedged before, so that most
    /// requests pay no task while a route that blocks its thread gets its 503 on time from its
    /// second wedge on. Without a task, a handler that blocks its thread also delays its own
    /// 503 until it yields.
    pub fn isolation_mode(mut self, isolation: Isolation) -> Self {
        self.config.isolation = isolation;
        self
    }

    /// Whether each request also gets its [`super::Deadline`] as a request extension, for code
    /// that reads extensions (`Extension<Deadline>`, a layer inside this one). Default: false.
    /// Without it, handlers take the `Deadline` extractor (axum) or call
    /// [`super::Deadline::of_request`], which build the same deadline only when asked for; the
    /// extension costs every request an allocation of its extension map and an insertion
    /// (about 300 instructions).
    pub fn deadline_extension(mut self, enabled: bool) -> Self {
        self.config.deadline_extension = enabled;
        self
    }

    /// Answers 503 at once, without calling the service, for a request whose
    /// `X-Request-Start` header says it queued longer than `wait` (rack-timeout's
    /// `wait_timeout`). A malformed, implausible or future-dated header is ignored.
    /// Default: off.
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.config.wait_timeout = Some(wait);
        self
    }

    /// Whether a response body still streaming at the hard deadline is ended with an error,
    /// which aborts the connection. Default: false.
    pub fn body_deadline(mut self, enabled: bool) -> Self {
        self.config.body_deadline = enabled;
        self
    }

    /// Whether long-lived responses are let go once their headers are out: a websocket upgrade
    /// (`101 Switching Protocols`) or an event stream (`Content-Type: text/event-stream`)
    /// gets no body deadline and no longer counts as in flight, so an hour-long stream is
    /// neither cut off nor slow. Default: true. Off, such a response is timeboxed like any
    /// other: with [`TimeboxBuilder::body_deadline`] an event stream ends at the hard deadline
    /// (an upgraded connection is never cut: its body has ended when the upgrade happens).
    pub fn long_lived_exempt(mut self, exempt: bool) -> Self {
        self.config.long_lived_exempt = exempt;
        self
    }

    /// Calls `hook` (on the monitor thread; it must not block) with the count when `count`
    /// (at least 1) requests were wedged within `within`, for example to begin a graceful
    /// shutdown so that the supervisor restarts the worker cleanly (rack-timeout's
    /// `term_on_timeout`). Default: off.
    pub fn escalate_after<F>(mut self, count: usize, within: Duration, hook: F) -> Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        self.escalation = Some(Escalation {
            count,
            within,
            hook: Arc::new(hook),
        });
        self
    }

    /// How finely deadlines are kept: they fire up to one resolution late. Default: a
    /// fiftieth of the grace, between 1 ms and 50 ms.
    pub fn resolution(mut self, resolution: Duration) -> Self {
        self.config.resolution = Some(resolution);
        self
    }

    /// Switches the timebox off (requests pass through untouched, no thread starts) or on.
    /// Default: on.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// The configuration as it stands.
    pub fn config(&self) -> &TimeboxConfig {
        &self.config
    }

    /// Checks every setting and starts the timebox (the process's monitor thread, if it is not
    /// running yet).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting, or a thread that could not start.
    pub fn build(self) -> Result<TimeboxLayer, ConfigError> {
        let config = self.config;
        config.validate()?;
        let (soft, hard) = config.resolved_deadlines()?;
        if let Some(escalation) = &self.escalation {
            if escalation.count == 0 {
                return Err(ConfigError::invalid(
                    "timebox.escalate_after.count",
                    0,
                    "must be at least 1",
                ));
            }
        }
        if !config.enabled {
            return Ok(TimeboxLayer {
                soft,
                hard,
                running: None,
            });
        }
        let status = StatusCode::from_u16(config.status)
            .map_err(|_| ConfigError::invalid("timebox.status", config.status, "500..=599"))?;
        let core = Core::global()?;
        crate::monitor::note_resolution(config.resolution_or_default());
        let part = Arc::new(DeadlinePart {
            soft_after: soft,
            hard_after: hard,
            response: TimeoutResponse {
                status,
                body: Bytes::from(config.body.clone()),
                retry_after: config
                    .retry_after
                    .map(|d| HeaderValue::from(d.as_secs().max(1))),
            },
            isolation: config.isolation,
            wedged_routes: [const { AtomicU64::new(0) }; super::part::WEDGED_ROUTE_WORDS],
            any_route_wedged: AtomicBool::new(false),
            deadline_extension: config.deadline_extension,
            wait_timeout: config.wait_timeout,
            body_deadline: config.body_deadline,
            long_lived_exempt: config.long_lived_exempt,
            escalation: self.escalation,
            wedged_at: Mutex::default(),
            counters: TimeboxCounters::default(),
        });
        let parts = Arc::new(Parts {
            registry: core.registry,
            watch: None,
            deadlines: Some(part.clone()),
        });
        #[cfg(feature = "metrics")]
        publish_metrics(soft, hard, &part, &parts);
        Ok(TimeboxLayer {
            soft,
            hard,
            running: Some(Running { part, parts }),
        })
    }
}

/// Publishes this timebox's counters while it lives.
#[cfg(feature = "metrics")]
fn publish_metrics(soft: Duration, hard: Duration, part: &Arc<DeadlinePart>, parts: &Arc<Parts>) {
    use crate::metrics::{counter, gauge};
    let instance = crate::metrics::instance("timebox");
    let (part, parts) = (Arc::downgrade(part), Arc::downgrade(parts));
    crate::metrics::register(move || {
        let (Some(part), Some(parts)) = (part.upgrade(), parts.upgrade()) else {
            return false;
        };
        let layer = TimeboxLayer {
            soft,
            hard,
            running: Some(Running { part, parts }),
        };
        let stats = layer.stats();
        gauge("vigil_requests_in_flight", &instance, stats.in_flight);
        counter(
            "vigil_soft_timeouts_total",
            &instance,
            stats.soft_cancellations,
        );
        counter("vigil_hard_timeouts_total", &instance, stats.hard_timeouts);
        counter("vigil_wedged_total", &instance, stats.wedged);
        counter("vigil_shed_total", &instance, stats.shed);
        true
    });
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
        super::InlineTimebox::new(
            inner,
            self.timebox.running.as_ref().map(|r| r.parts.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_inverted_deadlines_are_errors() {
        let build = |b: TimeboxBuilder| b.build().unwrap_err().field().to_owned();
        assert!(TimeboxLayer::builder(Duration::ZERO).build().is_err());
        let builder = TimeboxLayer::builder(Duration::from_secs(10));
        assert_eq!(
            build(builder.clone().soft_deadline(Duration::from_secs(11))),
            "timebox.soft_deadline"
        );
        assert!(builder
            .clone()
            .soft_deadline(Duration::ZERO)
            .build()
            .is_err());
        assert!(builder
            .clone()
            .grace(Duration::from_secs(10))
            .build()
            .is_err());
        assert_eq!(
            build(builder.clone().status(StatusCode::REQUEST_TIMEOUT)),
            "timebox.status"
        );
        assert!(TimeboxLayer::supervisor_timeout(Duration::ZERO).is_err());
    }

    #[test]
    fn supervisor_arithmetic() {
        let layer = TimeboxLayer::supervisor_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(layer.hard_deadline(), Duration::from_secs(27));
        assert_eq!(layer.soft_deadline(), Duration::from_secs(25));
        let short = TimeboxLayer::supervisor_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(short.hard_deadline(), Duration::from_millis(4500));
        assert_eq!(short.soft_deadline(), Duration::from_millis(3600));
    }
}
