//! [`Vigil`]: the layers stacked in the right order, each request registered once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::VigilConfig;
use crate::error::ConfigError;
use crate::profiler::{Profiler, ProfilerLayer};
use crate::sink::{FileSink, LogSink};
use crate::timebox::{TimeboxBody, TimeboxLayer};
use crate::tracked::{Parts, Tracked, TrackedFuture};
use crate::watchdog::WatchdogLayer;

/// Stacks tower-vigil's layers in the right order, with each request registered once.
///
/// The profiler is outermost, so a profiled request runs on the profiling thread and is exempt
/// from the timebox. With both a watchdog and a timebox, each request is registered once, with
/// both parts, and the monitor fires its threshold and its deadlines; the watchdog also
/// captures at the soft deadline and, for wedged requests, at the hard one, so the evidence is
/// written before the supervisor's kill. The layers given here are running handles: their
/// clones keep reading the same counters ([`WatchdogLayer::stats`], [`TimeboxLayer::stats`]).
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
    /// The parts every request of this stack registers with; derived from the two layers.
    parts: Option<Arc<Parts>>,
}

impl fmt::Debug for Vigil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vigil")
            .field("profiler", &self.profiler)
            .field("watchdog", &self.watchdog)
            .field("timebox", &self.timebox)
            .finish()
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
        self.parts = self.combined_parts();
        self
    }

    /// Adds the timebox. Default: none.
    pub fn timebox(mut self, timebox: TimeboxLayer) -> Self {
        self.timebox = Some(timebox);
        self.parts = self.combined_parts();
        self
    }

    /// Builds and starts everything a configuration asks for: the sections present are on.
    /// With `disabled` (`VIGIL_DISABLED=1`) every request passes through untouched and no
    /// thread starts.
    ///
    /// ```
    /// use tower_vigil::{config::VigilConfig, Vigil};
    ///
    /// let config = VigilConfig::from_toml_str(
    ///     r#"
    ///     [watchdog]
    ///     threshold = "5s"
    ///     [timebox]
    ///     supervisor_timeout = "30s"
    ///     [sinks.log]
    ///     "#,
    /// )?
    /// .with_vars([("VIGIL_WATCHDOG_THRESHOLD", "2s")])?;
    /// let vigil = Vigil::from_config(&config)?;
    /// let watchdog = vigil.watchdog_layer().expect("the section is present");
    /// assert_eq!(watchdog.threshold(), std::time::Duration::from_secs(2));
    /// # Ok::<(), tower_vigil::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting, a sink that cannot start, or a
    /// thread that cannot start.
    pub fn from_config(config: &VigilConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        if config.disabled {
            return Ok(Self::new());
        }
        let (capture, sampler) = (config.signals.capture, config.signals.sampler);
        if capture.is_some() || sampler.is_some() {
            crate::stack::set_signals(capture, sampler)
                .map_err(|problem| ConfigError::other("signals", problem))?;
        }
        let mut vigil = Self::new();
        if let Some(section) = &config.profiler {
            vigil = vigil.profiler(ProfilerLayer::from_config(section).build()?);
        }
        if let Some(section) = &config.watchdog {
            let mut watchdog = WatchdogLayer::from_config(section.clone());
            let sinks = &config.sinks;
            if let Some(log) = &sinks.log {
                watchdog = watchdog.sink(LogSink::from_config(log)?);
            }
            if let Some(file) = &sinks.file {
                watchdog = watchdog.sink(FileSink::from_config(file)?);
            }
            #[cfg(feature = "email")]
            if let Some(email) = &sinks.email {
                watchdog = watchdog.sink(crate::sink::EmailSink::from_config(email)?);
            }
            #[cfg(not(feature = "email"))]
            if sinks.email.is_some() {
                return Err(ConfigError::other(
                    "sinks.email",
                    "this build has no email sink: enable the `email` feature",
                ));
            }
            vigil = vigil.watchdog(watchdog.build()?);
        }
        if let Some(section) = &config.timebox {
            vigil = vigil.timebox(TimeboxLayer::from_config(section.clone()).build()?);
        }
        Ok(vigil)
    }

    /// A shutdown future for axum's `with_graceful_shutdown`; see
    /// [`WatchdogLayer::on_shutdown`]. Without a watchdog it only waits for `signal`.
    pub fn on_shutdown<F>(
        &self,
        signal: F,
        timeout: std::time::Duration,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future + Send + 'static,
    {
        let watchdog = self.watchdog.clone();
        async move {
            match watchdog {
                Some(watchdog) => watchdog.on_shutdown(signal, timeout).await,
                None => {
                    signal.await;
                }
            }
        }
    }

    /// The stack's watchdog, for its [`WatchdogLayer::stats`] and [`WatchdogLayer::flush`].
    pub fn watchdog_layer(&self) -> Option<&WatchdogLayer> {
        self.watchdog.as_ref()
    }

    /// The stack's timebox, for its [`TimeboxLayer::stats`].
    pub fn timebox_layer(&self) -> Option<&TimeboxLayer> {
        self.timebox.as_ref()
    }

    /// The stack's profiler.
    pub fn profiler_layer(&self) -> Option<&ProfilerLayer> {
        self.profiler.as_ref()
    }

    /// One set of parts holding both the watch and the deadlines.
    fn combined_parts(&self) -> Option<Arc<Parts>> {
        let watch = self.watchdog.as_ref().and_then(|w| w.parts());
        let deadlines = self.timebox.as_ref().and_then(|t| t.parts());
        let registry = watch.or(deadlines)?.registry;
        Some(Arc::new(Parts {
            registry,
            watch: self.watchdog.as_ref().and_then(|w| w.part()).cloned(),
            deadlines: self.timebox.as_ref().and_then(|t| t.part()).cloned(),
        }))
    }
}

impl<S> Layer<S> for Vigil {
    type Service = Profiler<VigilService<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let service = VigilService {
            tracked: Tracked::new(inner, self.parts.clone()),
        };
        // Without a profiler, an unauthorized one: it passes every request straight through.
        let profiler = self.profiler.clone().unwrap_or_default();
        profiler.layer(service)
    }
}

/// The watchdog and timebox part of a [`Vigil`] stack, inside its profiler.
#[derive(Clone)]
pub struct VigilService<S> {
    tracked: Tracked<S>,
}

impl<S: fmt::Debug> fmt::Debug for VigilService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VigilService")
            .field("inner", &self.tracked.inner)
            .field("enabled", &self.tracked.parts.is_some())
            .finish()
    }
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
        self.tracked.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        VigilFuture {
            inner: self.tracked.call_isolated(request),
        }
    }
}

pin_project! {
    /// Response future of [`VigilService`].
    pub struct VigilFuture<F>
    where
        F: Future,
    {
        #[pin]
        inner: TrackedFuture<F>,
    }
}

impl<F, B, E> Future for VigilFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TimeboxBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
