//! Deadlines that request code can see and honour: [`Deadline`], [`timebox`], [`Quota`] and
//! [`spawn_blocking`].

use std::cell::Cell;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;

use crate::registry::{RequestHandle, SOFT_FIRED};

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadlineKind {
    /// The duration given to this [`timebox`] call.
    Timebox,
    /// The duration of a [`timebox`] call that encloses this one.
    Enclosing,
    /// The request's soft deadline, set by [`super::TimeboxLayer`].
    Request,
    /// The budget of a [`Quota`].
    Quota,
}

impl fmt::Display for DeadlineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timebox => "the timebox's own deadline",
            Self::Enclosing => "an enclosing timebox's deadline",
            Self::Request => "the request's deadline",
            Self::Quota => "the quota's budget",
        })
    }
}

/// A deadline ran out before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    kind: DeadlineKind,
}

impl Elapsed {
    pub(crate) fn new(kind: DeadlineKind) -> Self {
        Self { kind }
    }

    /// Which deadline fired.
    pub fn deadline(&self) -> DeadlineKind {
        self.kind
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deadline elapsed: {}", self.kind)
    }
}

impl std::error::Error for Elapsed {}

/// The deadline in force while a future is polled: set by the timebox layer around each poll
/// of a request and by [`timebox`] around each poll of its future.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActiveDeadline {
    pub(crate) at: Instant,
    pub(crate) kind: DeadlineKind,
}

thread_local! {
    static ACTIVE: Cell<Option<ActiveDeadline>> = const { Cell::new(None) };
}

/// Makes `active` the deadline in force until dropped.
pub(crate) struct DeadlineScope {
    previous: Option<ActiveDeadline>,
}

impl DeadlineScope {
    pub(crate) fn enter(active: ActiveDeadline) -> Self {
        Self {
            previous: ACTIVE.with(|a| a.replace(Some(active))),
        }
    }
}

impl Drop for DeadlineScope {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.previous));
    }
}

fn active() -> Option<ActiveDeadline> {
    ACTIVE.with(Cell::get)
}

/// Far enough away to never pass, near enough for `Instant` arithmetic.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The request's deadline.
///
/// Every request that [`super::TimeboxLayer`] timeboxes has one. At the soft deadline it is
/// cancelled: [`Deadline::check`] fails and [`Deadline::cancelled`] completes, so a handler
/// can stop early with its own cleanup and its own response. At the hard deadline the layer
/// drops the handler's future and answers 503.
///
/// An axum handler takes it as an extractor (`Option<Deadline>` where the route may run
/// without a timebox); other code calls [`Deadline::of_request`] while the request is being
/// polled. Either builds it only when asked for. With
/// [`super::TimeboxBuilder::deadline_extension`] it is also a request extension.
///
/// ```
/// use axum::response::IntoResponse;
/// use tower_vigil::timebox::Deadline;
///
/// async fn export(deadline: Deadline) -> impl IntoResponse {
///     let mut rows = Vec::new();
///     for page in 0..100 {
///         if deadline.check().is_err() {
///             return (http::StatusCode::PARTIAL_CONTENT, format!("{} rows, then out of time", rows.len()));
///         }
///         rows.push(page);
///     }
///     (http::StatusCode::OK, format!("{} rows", rows.len()))
/// }
/// ```
#[derive(Clone)]
pub struct Deadline {
    inner: DeadlineInner,
}

#[derive(Clone)]
enum DeadlineInner {
    Request {
        handle: RequestHandle,
        soft_at: Instant,
        hard_at: Instant,
    },
    At {
        at: Instant,
        kind: DeadlineKind,
    },
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("kind", &self.kind())
            .field("remaining", &self.remaining())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Deadline {
    pub(crate) fn for_request(handle: RequestHandle, soft_at: Instant, hard_at: Instant) -> Self {
        Self {
            inner: DeadlineInner::Request {
                handle,
                soft_at,
                hard_at,
            },
        }
    }

    /// Lifts a request's deadlines for a layer that runs the request under its own rules
    /// (the profiler): they never fire, and this deadline is no longer cancelled at its soft
    /// deadline. False when this is not a request's deadline or the request is over.
    pub(crate) fn lift(&mut self) -> bool {
        let DeadlineInner::Request {
            handle,
            soft_at,
            hard_at,
        } = &mut self.inner
        else {
            return false;
        };
        if !handle.lift_deadlines() {
            return false;
        }
        Self::put_out_of_reach(handle, soft_at, hard_at);
        true
    }

    /// A request's deadline whose deadlines were lifted: see [`Deadline::lift`].
    pub(crate) fn lifted(mut self) -> Self {
        if let DeadlineInner::Request {
            handle,
            soft_at,
            hard_at,
        } = &mut self.inner
        {
            Self::put_out_of_reach(handle, soft_at, hard_at);
        }
        self
    }

    fn put_out_of_reach(handle: &RequestHandle, soft_at: &mut Instant, hard_at: &mut Instant) {
        // A soft deadline that already fired stays fired: the handler may have seen it.
        if handle.flags() & SOFT_FIRED == 0 {
            let never = Instant::now() + NEVER;
            (*soft_at, *hard_at) = (never, never);
        }
    }

    /// The deadline of a request exempt from every timebox (a profiled one): it never passes.
    pub(crate) fn never() -> Self {
        Self {
            inner: DeadlineInner::At {
                at: Instant::now() + NEVER,
                kind: DeadlineKind::Request,
            },
        }
    }

    /// A deadline at a fixed instant, for code that runs outside a timeboxed request.
    pub fn at(at: Instant) -> Self {
        Self {
            inner: DeadlineInner::At {
                at,
                kind: DeadlineKind::Timebox,
            },
        }
    }

    /// A deadline `duration` from now.
    pub fn after(duration: Duration) -> Self {
        Self::at(Instant::now() + duration)
    }

    /// The deadline in force where this is called: the innermost [`timebox`], or the
    /// request's deadline, while a timeboxed request is being polled. `None` elsewhere.
    pub fn current() -> Option<Self> {
        let active = active()?;
        if active.kind == DeadlineKind::Request {
            if let Some(deadline) = Self::of_request() {
                return Some(deadline);
            }
        }
        Some(Self {
            inner: DeadlineInner::At {
                at: active.at,
                kind: active.kind,
            },
        })
    }

    /// The deadline of the timeboxed request being polled on this thread, whatever
    /// [`timebox`]es are nested inside it: the same deadline as the request extension, built
    /// only when asked for. `None` outside a timeboxed request (and in a task the handler
    /// spawned: take the deadline along instead).
    ///
    /// With axum, a handler takes it as an extractor: `async fn handler(deadline: Deadline)`.
    pub fn of_request() -> Option<Self> {
        crate::stack::with_timeboxed(crate::registry::Registration::deadline).flatten()
    }

    fn kind(&self) -> DeadlineKind {
        match &self.inner {
            DeadlineInner::Request { .. } => DeadlineKind::Request,
            DeadlineInner::At { kind, .. } => *kind,
        }
    }

    /// When the work is asked to stop: the soft deadline of a request.
    pub fn instant(&self) -> Instant {
        match &self.inner {
            DeadlineInner::Request { soft_at, .. } => *soft_at,
            DeadlineInner::At { at, .. } => *at,
        }
    }

    /// When the timebox layer drops the request and answers 503, for a request's deadline.
    pub fn hard_instant(&self) -> Option<Instant> {
        match &self.inner {
            DeadlineInner::Request { hard_at, .. } => Some(*hard_at),
            DeadlineInner::At { .. } => None,
        }
    }

    /// Time left until the work is asked to stop; zero once it has been.
    pub fn remaining(&self) -> Duration {
        if self.is_cancelled() {
            return Duration::ZERO;
        }
        self.instant().saturating_duration_since(Instant::now())
    }

    /// Whether the work has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        match &self.inner {
            DeadlineInner::Request {
                handle, soft_at, ..
            } => handle.flags() & SOFT_FIRED != 0 || Instant::now() >= *soft_at,
            DeadlineInner::At { at, .. } => Instant::now() >= *at,
        }
    }

    /// `Err(Elapsed)` once the work has been asked to stop; for loops in handlers and in
    /// blocking code: `deadline.check()?`.
    pub fn check(&self) -> Result<(), Elapsed> {
        if self.is_cancelled() {
            Err(Elapsed::new(self.kind()))
        } else {
            Ok(())
        }
    }

    /// Completes when the work is asked to stop.
    ///
    /// For a request's deadline this is woken by the monitor thread (within its resolution of
    /// the soft deadline) and needs no timer. A fixed deadline uses a tokio timer, so it must
    /// be awaited inside a tokio runtime with the time driver enabled.
    pub async fn cancelled(&self) {
        match &self.inner {
            DeadlineInner::Request { handle, .. } => loop {
                let notified = crate::registry::soft_bell(handle.id).notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if self.is_cancelled() {
                    return;
                }
                // The monitor notifies at the soft deadline; a notification for a later request
                // that reuses the slot only makes us check again.
                notified.await;
            },
            DeadlineInner::At { at, .. } => {
                tokio::time::sleep_until(tokio::time::Instant::from_std(*at)).await;
            }
        }
    }
}

/// The rejection of the [`Deadline`] extractor: the handler is not behind a timebox.
///
/// Answers 500: a handler that takes a `Deadline` was written for a timeboxed route, so
/// reaching it without one is a wiring error, not the client's. A handler that also runs
/// without a timebox takes `Option<Deadline>` instead.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRequestDeadline;

#[cfg(feature = "axum")]
impl fmt::Display for NoRequestDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no request deadline: the handler is not behind a TimeboxLayer or Vigil, or runs in \
             a task of its own",
        )
    }
}

#[cfg(feature = "axum")]
impl std::error::Error for NoRequestDeadline {}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for NoRequestDeadline {
    fn into_response(self) -> axum::response::Response {
        (http::StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// The request's deadline as an axum extractor: the extension when a layer inserted one,
/// otherwise built on demand for the timeboxed request being polled ([`Deadline::of_request`]).
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Deadline {
    type Rejection = NoRequestDeadline;

    fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        std::future::ready(request_deadline(parts).ok_or(NoRequestDeadline))
    }
}

/// `Option<Deadline>`: `None` when the handler is not behind a timebox.
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Deadline {
    type Rejection = std::convert::Infallible;

    fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Option<Self>, Self::Rejection>> + Send {
        std::future::ready(Ok(request_deadline(parts)))
    }
}

#[cfg(feature = "axum")]
fn request_deadline(parts: &http::request::Parts) -> Option<Deadline> {
    match parts.extensions.get::<Deadline>() {
        Some(deadline) => Some(deadline.clone()),
        None => Deadline::of_request(),
    }
}

/// Runs `future` for at most `duration`, or until an earlier deadline in force runs out: an
/// enclosing `timebox`, a [`Quota`], or the request's soft deadline. The earliest wins.
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::timebox::{timebox, DeadlineKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let slow = tokio::time::sleep(Duration::from_secs(10));
/// let error = timebox(Duration::from_millis(10), slow).await.unwrap_err();
/// assert_eq!(error.deadline(), DeadlineKind::Timebox);
/// # }
/// ```
pub fn timebox<F: IntoFuture>(duration: Duration, future: F) -> Timeboxed<F::IntoFuture> {
    Timeboxed::new(duration, future.into_future(), DeadlineKind::Timebox)
}

pin_project! {
    /// The future returned by [`timebox`].
    pub struct Timeboxed<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        duration: Duration,
        own_kind: DeadlineKind,
        active: Option<ActiveDeadline>,
    }
}

impl<F> Timeboxed<F> {
    fn new(duration: Duration, future: F, own_kind: DeadlineKind) -> Self {
        Self {
            future,
            sleep: None,
            duration,
            own_kind,
            active: None,
        }
    }
}

impl<F: Future> Future for Timeboxed<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let active = match *this.active {
            Some(active) => active,
            None => {
                let own = ActiveDeadline {
                    at: Instant::now() + *this.duration,
                    kind: *this.own_kind,
                };
                let active = match active() {
                    Some(enclosing) if enclosing.at <= own.at => ActiveDeadline {
                        at: enclosing.at,
                        kind: match enclosing.kind {
                            DeadlineKind::Timebox => DeadlineKind::Enclosing,
                            other => other,
                        },
                    },
                    _ => own,
                };
                *this.active = Some(active);
                this.sleep.set(Some(tokio::time::sleep_until(
                    tokio::time::Instant::from_std(active.at),
                )));
                active
            }
        };
        {
            // Inside, this deadline is the one in force; nested timeboxes see it as enclosing.
            let _scope = DeadlineScope::enter(ActiveDeadline {
                at: active.at,
                kind: match active.kind {
                    DeadlineKind::Enclosing => DeadlineKind::Timebox,
                    other => other,
                },
            });
            if let Poll::Ready(output) = this.future.poll(cx) {
                return Poll::Ready(Ok(output));
            }
        }
        let sleep = this.sleep.as_pin_mut().expect("set on first poll");
        ready!(sleep.poll(cx));
        Poll::Ready(Err(Elapsed::new(active.kind)))
    }
}

/// A time budget shared by several timeboxed calls: each call may use what the calls before
/// it left.
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::timebox::Quota;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let quota = Quota::new(Duration::from_millis(100));
/// quota.timebox(tokio::time::sleep(Duration::from_millis(60))).await.unwrap();
/// // 40 ms left: the second call cannot take 60 ms.
/// assert!(quota.timebox(tokio::time::sleep(Duration::from_millis(60))).await.is_err());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Quota {
    remaining: Arc<Mutex<Duration>>,
}

impl Quota {
    /// A quota of `budget`.
    pub fn new(budget: Duration) -> Self {
        Self {
            remaining: Arc::new(Mutex::new(budget)),
        }
    }

    /// What is left of the budget.
    pub fn remaining(&self) -> Duration {
        *self.remaining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `future` within what is left of the budget (or an earlier deadline in force) and
    /// charges the time it took.
    pub async fn timebox<F: IntoFuture>(&self, future: F) -> Result<F::Output, Elapsed> {
        let started = Instant::now();
        let result =
            Timeboxed::new(self.remaining(), future.into_future(), DeadlineKind::Quota).await;
        let spent = started.elapsed();
        let mut remaining = self.remaining.lock().unwrap_or_else(|e| e.into_inner());
        *remaining = remaining.saturating_sub(spent);
        result
    }
}

/// Runs blocking code on tokio's blocking pool with the deadline in force, which it can check
/// in its loops with `deadline.check()?`.
///
/// Completes with `Err(Elapsed)` at the deadline even if the closure is still running; the
/// closure then sees `check()` fail and should return soon. Outside any deadline, the closure
/// gets a deadline that never passes.
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::timebox::{spawn_blocking, timebox};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let started = std::time::Instant::now();
/// let outcome = timebox(Duration::from_millis(50), spawn_blocking(|deadline| {
///     let mut rounds = 0u64;
///     while deadline.check().is_ok() {
///         std::thread::sleep(Duration::from_millis(5));
///         rounds += 1;
///     }
///     rounds
/// }))
/// .await;
/// // The 50 ms deadline in force reached the blocking code, which stopped in time; the
/// // outcome is the closure's result if it returned first, or `Elapsed` if the deadline did.
/// assert!(started.elapsed() < Duration::from_millis(500));
/// if let Ok(Ok(rounds)) = outcome {
///     assert!(rounds < 50);
/// }
/// # }
/// ```
pub async fn spawn_blocking<F, R>(work: F) -> Result<R, Elapsed>
where
    F: FnOnce(Deadline) -> R + Send + 'static,
    R: Send + 'static,
{
    let deadline = Deadline::current().unwrap_or_else(|| Deadline::after(NEVER));
    let kind = deadline.kind();
    let until = tokio::time::Instant::from_std(deadline.instant());
    // The blocking thread works for the calling request: its stack goes into the request's
    // reports.
    let request = crate::stack::current_request();
    let mut task = tokio::task::spawn_blocking(move || {
        let _helping = crate::helpers::HelpingScope::enter(request);
        work(deadline)
    });
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(until));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(joined) = Pin::new(&mut task).poll(cx) {
            return Poll::Ready(match joined {
                Ok(value) => Ok(value),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // The runtime is shutting down: the work will not finish.
                Err(_) => Err(Elapsed::new(kind)),
            });
        }
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(Elapsed::new(kind)))
    })
    .await
}
