//! Running one request on a profiling thread of its own while a controller thread samples it.
//!
//! The profiling thread builds a current-thread tokio runtime, polls the request (and drains
//! its response body) there, outside the application's worker pool, and reports what the
//! application answered. The controller thread arms the sampler on it, drains samples until
//! the request ends or the maximum duration passes, then folds, symbolizes and delivers the
//! profile. Neither thread depends on the application's runtime making progress.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::sync::oneshot;
use tower_service::Service;

use super::fold::{self, Folder, Profile, AWAITING_PREFIX};
use super::layer::Permit;
use super::Mode;
use crate::stack::{self, CpuClock, PollScope, SamplerSession};

/// Name of the thread that runs profiled requests.
pub(crate) const PROFILING_THREAD_NAME: &str = "vigil-profiler";
const CONTROLLER_THREAD_NAME: &str = "vigil-prof-ctl";

/// Request ids of profiles have bit 63 set, so they never collide with the registry's ids,
/// which stay below 2^62.
const PROFILE_ID_BIT: u64 = 1 << 63;

fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    PROFILE_ID_BIT | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How one profile runs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) rate_hz: u32,
    pub(crate) max_duration: Duration,
    pub(crate) collapse: bool,
    /// Method and URI, the root frame and title.
    pub(crate) request_line: String,
}

/// A profile that could not be taken.
#[derive(Debug, Clone)]
pub(crate) struct ProfileError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ProfileError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Set when nobody waits for the profile any more: its response future was dropped (the
/// client went away, or an outer layer gave up).
#[derive(Debug, Clone, Default)]
pub(crate) struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// A guard that sets the flag when dropped, unless disarmed first.
    pub(crate) fn on_drop(&self) -> AbandonOnDrop {
        AbandonOnDrop(Some(self.clone()))
    }
}

/// Sets [`Abandoned`] when dropped while armed.
#[derive(Debug)]
pub(crate) struct AbandonOnDrop(Option<Abandoned>);

impl AbandonOnDrop {
    /// The profile arrived: dropping the guard now abandons nothing.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(abandoned) = self.0.take() {
            abandoned.0.store(true, Ordering::Release);
        }
    }
}

/// Receives the finished profile, on the controller thread.
pub(crate) type Deliver = Box<dyn FnOnce(Result<Profile, ProfileError>) + Send>;

/// What the application did with the request.
#[derive(Debug)]
enum Outcome {
    Answered { status: StatusCode, bytes: u64 },
    BodyFailed { status: StatusCode, bytes: u64 },
    ServiceFailed,
    Cancelled,
}

struct Finished {
    outcome: Outcome,
    wall: Duration,
    cpu: Option<Duration>,
}

/// What the park hooks know: which requests to take spans from, and the `[awaiting]` frame of
/// each park, recorded only when it changes.
#[derive(Default)]
struct ParkLog {
    /// The profile's own request id, then ids that inner layers poll it under.
    ids: Vec<u64>,
    epoch: u64,
    paths: Vec<(u64, Arc<str>)>,
}

impl ParkLog {
    fn park(&mut self) -> u64 {
        self.epoch += 1;
        let label = awaiting_label(&self.ids);
        if self.paths.last().is_none_or(|(_, last)| **last != *label) {
            self.paths.push((self.epoch, Arc::from(label)));
        }
        self.epoch
    }
}

/// `[awaiting] outer > inner{fields}` for the most recently opened innermost span of the
/// request, from [`crate::spans::SpanLayer`].
fn awaiting_label(ids: &[u64]) -> String {
    let mut best: Option<(f64, String)> = None;
    let mut installed = false;
    for &id in ids {
        let tree = crate::spans::snapshot(id);
        installed |= tree.installed;
        for (index, span) in tree.spans.iter().enumerate() {
            let is_leaf = !tree.spans.iter().any(|s| s.parent == Some(index));
            if !is_leaf || best.as_ref().is_some_and(|(age, _)| *age <= span.age_secs) {
                continue;
            }
            let mut chain = vec![index];
            let mut cursor = span.parent;
            while let Some(parent) = cursor {
                chain.push(parent);
                cursor = tree.spans[parent].parent;
            }
            let mut label = String::from(AWAITING_PREFIX);
            for (n, &i) in chain.iter().rev().enumerate() {
                label.push_str(if n == 0 { " " } else { " > " });
                let s = &tree.spans[i];
                label.push_str(&s.name);
                if !s.fields.is_empty() {
                    label.push('{');
                    label.extend(s.fields.chars().take(80));
                    label.push('}');
                }
            }
            best = Some((span.age_secs, label));
        }
    }
    match best {
        Some((_, label)) => label,
        None if installed => format!("{AWAITING_PREFIX} (no open span)"),
        None => format!("{AWAITING_PREFIX} (install tower_vigil::spans::SpanLayer to see where)"),
    }
}

fn lock(log: &Mutex<ParkLog>) -> std::sync::MutexGuard<'_, ParkLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

// One value per request, on the profiling thread: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Stage<S, B, F, RB> {
    Call {
        inner: S,
        request: Request<B>,
    },
    Respond {
        future: Pin<Box<F>>,
    },
    Drain {
        status: StatusCode,
        body: Pin<Box<RB>>,
        bytes: u64,
    },
    Done,
}

/// The profiled request, polled on the profiling thread inside a [`PollScope`] of its id.
struct ProfiledRequest<S, B, F, RB> {
    stage: Stage<S, B, F, RB>,
    id: u64,
    cancel: oneshot::Receiver<()>,
    park_log: Arc<Mutex<ParkLog>>,
    nested: Vec<u64>,
}

impl<S, B, RB> Future for ProfiledRequest<S, B, S::Future, RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        if Pin::new(&mut this.cancel).poll(cx).is_ready() {
            this.stage = Stage::Done;
            return Poll::Ready(Outcome::Cancelled);
        }
        let polled = {
            let _scope = PollScope::enter(this.id);
            stack::take_last_entered();
            let polled = poll_profiled_request(&mut this.stage, cx);
            (polled, stack::take_last_entered())
        };
        let (result, inner_id) = polled;
        // An inner layer (the watchdog) polls the request under its own id, and spans opened
        // inside belong to that id: follow it too.
        if inner_id != 0 && inner_id != this.id && !this.nested.contains(&inner_id) {
            this.nested.push(inner_id);
            lock(&this.park_log).ids.push(inner_id);
        }
        result
    }
}

/// Polls the request one step. Its frame marks where the request's own stack begins.
#[inline(never)]
fn poll_profiled_request<S, B, RB>(
    stage: &mut Stage<S, B, S::Future, RB>,
    cx: &mut Context<'_>,
) -> Poll<Outcome>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    loop {
        match stage {
            Stage::Call { .. } => {
                let Stage::Call { mut inner, request } = std::mem::replace(stage, Stage::Done)
                else {
                    unreachable!()
                };
                let future = inner.call(request);
                *stage = Stage::Respond {
                    future: Box::pin(future),
                };
            }
            Stage::Respond { future } => match future.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    *stage = Stage::Done;
                    return Poll::Ready(Outcome::ServiceFailed);
                }
                Poll::Ready(Ok(response)) => {
                    let status = response.status();
                    *stage = Stage::Drain {
                        status,
                        body: Box::pin(response.into_body()),
                        bytes: 0,
                    };
                }
            },
            Stage::Drain {
                status,
                body,
                bytes,
            } => match body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *bytes += bytes::Buf::remaining(data) as u64;
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    let outcome = Outcome::BodyFailed {
                        status: *status,
                        bytes: *bytes,
                    };
                    *stage = Stage::Done;
                    return Poll::Ready(outcome);
                }
                Poll::Ready(None) => {
                    let outcome = Outcome::Answered {
                        status: *status,
                        bytes: *bytes,
                    };
                    *stage = Stage::Done;
                    return Poll::Ready(outcome);
                }
            },
            Stage::Done => return Poll::Ready(Outcome::Cancelled),
        }
    }
}

fn build_runtime(
    mode: Mode,
    park_log: &Arc<Mutex<ParkLog>>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if mode == Mode::WallClock {
        // The span path is taken here, off the signal handler; the handler only reads the
        // epoch.
        let log = park_log.clone();
        builder
            .on_thread_park(move || {
                let epoch = lock(&log).park();
                stack::set_parked(epoch);
            })
            .on_thread_unpark(|| stack::set_parked(0));
    }
    builder.build()
}

/// Starts profiling `request` through `inner` (a service that is ready), on new threads.
pub(crate) fn spawn<S, B, RB>(
    inner: S,
    request: Request<B>,
    settings: Settings,
    permit: Permit,
    deliver: Deliver,
    abandoned: Abandoned,
) -> std::io::Result<()>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    B: Send + 'static,
    RB: Body + 'static,
{
    std::thread::Builder::new()
        .name(CONTROLLER_THREAD_NAME.into())
        .spawn(move || control(inner, request, settings, permit, deliver, abandoned))
        .map(drop)
}

fn control<S, B, RB>(
    inner: S,
    request: Request<B>,
    settings: Settings,
    permit: Permit,
    deliver: Deliver,
    abandoned: Abandoned,
) where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    B: Send + 'static,
    RB: Body + 'static,
{
    let started_at = SystemTime::now();
    let id = next_request_id();
    let park_log = Arc::new(Mutex::new(ParkLog {
        ids: vec![id],
        ..ParkLog::default()
    }));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(i32, CpuClock), String>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Finished>();
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let mode = settings.mode;
    let thread_log = park_log.clone();
    let spawned = std::thread::Builder::new()
        .name(PROFILING_THREAD_NAME.into())
        .spawn(move || {
            // The place stays taken until the request is over, even after a partial profile.
            let permit = permit;
            let started = (|| {
                let runtime = build_runtime(mode, &thread_log).map_err(|e| e.to_string())?;
                let clock = stack::current_thread_cpu_clock()?;
                Ok::<_, String>((runtime, clock))
            })();
            let (runtime, clock) = match started {
                Ok(ok) => ok,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((stack::current_tid(), clock)));
            if go_rx.recv().is_err() {
                return;
            }
            let wall_start = Instant::now();
            let cpu_start = clock.now();
            let outcome = runtime.block_on(ProfiledRequest {
                stage: Stage::Call { inner, request },
                id,
                cancel: cancel_rx,
                park_log: thread_log,
                nested: Vec::new(),
            });
            let wall = wall_start.elapsed();
            let cpu = clock.now().zip(cpu_start).map(|(end, start)| end - start);
            // Free the place before the profile is delivered, so that whoever reads it can
            // start the next one.
            drop(permit);
            let _ = done_tx.send(Finished { outcome, wall, cpu });
            // Tasks the request spawned on this runtime end with it; do not wait for blocking
            // ones.
            runtime.shutdown_background();
        });
    if let Err(error) = spawned {
        deliver(Err(ProfileError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot start the profiling thread: {error}"),
        )));
        return;
    }
    let (tid, clock) = match ready_rx.recv() {
        Ok(Ok(started)) => started,
        Ok(Err(error)) => {
            deliver(Err(ProfileError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot start the profiling runtime: {error}"),
            )));
            return;
        }
        Err(_) => {
            deliver(Err(ProfileError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the profiling thread ended before it started",
            )));
            return;
        }
    };
    // Load the symbol tables before the request starts, not while samples pile up.
    stack::warm_up();
    let timer_clock = match settings.mode {
        Mode::CpuTime => clock,
        Mode::WallClock => CpuClock::monotonic(),
    };
    let interval = Duration::from_secs(1) / settings.rate_hz.max(1);
    let session = match SamplerSession::start(tid, timer_clock, interval) {
        Ok(session) => session,
        Err(error) => {
            // Dropping `go_tx` lets the profiling thread end without running the request.
            deliver(Err(ProfileError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot start the sampler: {error}"),
            )));
            return;
        }
    };
    let cpu_start = clock.now();
    let started = Instant::now();
    if go_tx.send(()).is_err() {
        drop(session);
        deliver(Err(ProfileError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the profiling thread ended before it started",
        )));
        return;
    }
    // Drain well before the ring (128 samples) can fill.
    let drain_every = (interval * 32).clamp(Duration::from_millis(1), Duration::from_millis(10));
    let mut folder = Folder::default();
    let ended = loop {
        match done_rx.recv_timeout(drain_every) {
            Ok(finished) => break Some(finished),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if abandoned.is_set() {
                    // Nobody will read this profile: stop sampling, and drop the request at its
                    // next await point, which frees the place for the next admin.
                    drop(session);
                    let _ = cancel_tx.send(());
                    tracing::debug!(
                        target: "tower_vigil::profiler",
                        request = %settings.request_line,
                        "profile abandoned by its client; request cancelled"
                    );
                    return;
                }
                session.drain(|sample| folder.add(sample));
                if started.elapsed() >= settings.max_duration {
                    break None;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Some(Finished {
                    outcome: Outcome::ServiceFailed,
                    wall: started.elapsed(),
                    cpu: None,
                })
            }
        }
    };
    let stats = session.stop(|sample| folder.add(sample));
    let partial = ended.is_none();
    let finished = ended.unwrap_or_else(|| {
        // Stop the request at its next await point; its thread keeps the permit until then.
        let _ = cancel_tx.send(());
        // A request parked at an await point ends at once: wait a little, so that whoever
        // reads this partial profile finds the place free again.
        let _ = done_rx.recv_timeout(Duration::from_millis(100));
        Finished {
            outcome: Outcome::Cancelled,
            wall: started.elapsed(),
            cpu: clock.now().zip(cpu_start).map(|(end, start)| end - start),
        }
    });
    let samples = folder.total();
    let paths = lock(&park_log).paths.clone();
    let stacks = folder.finish(&settings.request_line, &paths, settings.collapse);
    let (status, outcome, response_bytes) = match finished.outcome {
        Outcome::Answered { status, bytes } => (Some(status), describe(status), bytes),
        Outcome::BodyFailed { status, bytes } => (
            Some(status),
            format!("{}; the response body failed", describe(status)),
            bytes,
        ),
        Outcome::ServiceFailed => (
            None,
            "the service returned an error or panicked".to_owned(),
            0,
        ),
        Outcome::Cancelled => (
            None,
            format!(
                "still running after {}; cancelled at its next await point",
                humantime::format_duration(settings.max_duration)
            ),
            0,
        ),
    };
    let profile = Profile {
        id: None,
        request: settings.request_line,
        mode: settings.mode.name().to_owned(),
        rate_hz: settings.rate_hz,
        started_unix_ms: started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        status: status.map(|s| s.as_u16()),
        outcome,
        wall_ms: finished.wall.as_secs_f64() * 1000.0,
        cpu_ms: finished.cpu.map(|d| d.as_secs_f64() * 1000.0),
        samples,
        signals: stats.signals,
        dropped: stats.dropped,
        partial,
        response_bytes,
        top_frames: fold::top_frames(&stacks),
        stacks,
    };
    deliver(Ok(profile));
}

fn describe(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

// Stage moves the service and the request out before anything is pinned, and the futures it
// polls are boxed, so nothing in it relies on staying in place.
impl<S, B, F, RB> Unpin for ProfiledRequest<S, B, F, RB> {}
