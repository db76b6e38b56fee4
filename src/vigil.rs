//! [`Vigil`]: the layers stacked in the right order over one registry and one monitor thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::monitor::{Core, CoreConfig};
use crate::profiler::{Profiler, ProfilerLayer};
use crate::timebox::{Timebox, TimeboxBody, TimeboxLayer};
use crate::watchdog::{Watchdog, WatchdogLayer};

/// Stacks tower-vigil's layers in the right order over one registry and one monitor thread.
///
/// The profiler is outermost, so a profiled request runs on the profiling thread and is exempt
/// from the timebox. With both a watchdog and a timebox, each request is registered once and the monitor fires
/// its threshold and its deadlines; the watchdog also captures at the soft deadline and, for
/// wedged requests, at the hard one, so the evidence is written before the supervisor's kill.
/// Counters stay readable through clones of the layers given here
/// ([`WatchdogLayer::stats`], [`TimeboxLayer::stats`]).
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tower_vigil::profiler::{ProfilerLayer, SharedSecret};
/// use tower_vigil::{timebox::TimeboxLayer, watchdog::WatchdogLayer, Vigil};
///
/// let watchdog = WatchdogLayer::new(Duration::from_secs(10));
/// let timebox = TimeboxLayer::supervisor_timeout(Duration::from_secs(30)).unwrap();
/// let profiler = ProfilerLayer::new().authorize(SharedSecret::new("s3cret-token"));
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(
///         Vigil::new()
///             .profiler(profiler)
///             .watchdog(watchdog.clone())
///             .timebox(timebox.clone()),
///     );
/// assert_eq!(watchdog.stats().reported, 0);
/// ```
#[derive(Clone, Default)]
pub struct Vigil {
    profiler: Option<ProfilerLayer>,
    watchdog: Option<WatchdogLayer>,
    timebox: Option<TimeboxLayer>,
    started: Arc<OnceLock<Started>>,
}

#[derive(Clone)]
enum Started {
    Combined(Arc<crate::timebox::layer::Shared>),
    WatchdogOnly(Box<WatchdogLayer>),
    Nothing,
}

impl fmt::Debug for Vigil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vigil")
            .field("profiler", &self.profiler)
            .field("watchdog", &self.watchdog)
            .field("timebox", &self.timebox)
            .finish_non_exhaustive()
    }
}

impl Vigil {
    /// A stack with no layer enabled; requests pass through untouched.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the profiler, outermost. Default: none.
    pub fn profiler(mut self, profiler: ProfilerLayer) -> Self {
        self.profiler = Some(profiler);
        self
    }

    /// Adds the watchdog. Default: none.
    pub fn watchdog(mut self, watchdog: WatchdogLayer) -> Self {
        self.watchdog = Some(watchdog);
        self.started = Arc::new(OnceLock::new());
        self
    }

    /// Adds the timebox. Default: none.
    pub fn timebox(mut self, timebox: TimeboxLayer) -> Self {
        self.timebox = Some(timebox);
        self.started = Arc::new(OnceLock::new());
        self
    }

    fn start(&self) -> Started {
        let watchdog = self.watchdog.as_ref().filter(|w| w.is_enabled());
        let timebox = self.timebox.as_ref().filter(|t| t.is_enabled());
        match (watchdog, timebox) {
            (_, Some(timebox)) => {
                let resolution = watchdog.map_or(Duration::MAX, |w| w.effective_resolution());
                let core = Core::start(CoreConfig {
                    watch: watchdog.map(|w| w.watch_config()),
                    deadlines: Some(timebox.deadline_settings()),
                    resolution: resolution.min(timebox.effective_resolution()),
                })
                .unwrap_or_else(|error| {
                    panic!("tower-vigil: cannot start the monitor thread: {error}")
                });
                let watch = watchdog.map(|w| w.attach(core.clone()));
                Started::Combined(timebox.attach(core, watch))
            }
            (Some(watchdog), None) => Started::WatchdogOnly(Box::new(watchdog.clone())),
            (None, None) => Started::Nothing,
        }
    }
}

impl<S> Layer<S> for Vigil {
    type Service = Profiler<VigilService<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let kind = match self.started.get_or_init(|| self.start()) {
            Started::Combined(shared) => Kind::Timebox(Timebox::new(inner, Some(shared.clone()))),
            Started::WatchdogOnly(watchdog) => Kind::Watchdog(watchdog.layer(inner)),
            Started::Nothing => Kind::Watchdog(Watchdog::new(inner, None)),
        };
        // Without a profiler, an unauthorized one: it passes every request straight through.
        let profiler = self.profiler.clone().unwrap_or_default();
        profiler.layer(VigilService { kind })
    }
}

/// The watchdog and timebox part of a [`Vigil`] stack, inside its profiler.
#[derive(Clone, Debug)]
pub struct VigilService<S> {
    kind: Kind<S>,
}

#[derive(Clone, Debug)]
enum Kind<S> {
    Watchdog(Watchdog<S>),
    Timebox(Timebox<S>),
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for VigilService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<TimeboxBody<ResBody>>;
    type Error = S::Error;
    type Future = VigilFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.kind {
            Kind::Watchdog(service) => service.poll_ready(cx),
            Kind::Timebox(service) => service.poll_ready(cx),
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let kind = match &mut self.kind {
            Kind::Watchdog(service) => FutureKind::Watchdog {
                future: service.call(request),
            },
            Kind::Timebox(service) => FutureKind::Timebox {
                future: service.call(request),
            },
        };
        VigilFuture { kind }
    }
}

pin_project! {
    /// Response future of [`VigilService`].
    pub struct VigilFuture<F>
    where
        F: Future,
    {
        #[pin]
        kind: FutureKind<F>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F>
    where
        F: Future,
    {
        Watchdog {
            #[pin]
            future: crate::watchdog::ResponseFuture<F>,
        },
        Timebox {
            #[pin]
            future: crate::timebox::ResponseFuture<F>,
        },
    }
}

impl<F, B, E> Future for VigilFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TimeboxBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Watchdog { future } => future.poll(cx).map(|output| {
                output.map(|response| response.map(|body| TimeboxBody::inner(body, None)))
            }),
            FutureKindProj::Timebox { future } => future.poll(cx),
        }
    }
}
