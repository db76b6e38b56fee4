use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use tower_service::Service;

use super::deadline::{ActiveDeadline, Deadline, DeadlineKind};
use super::future::{Isolated, ResponseFuture};
use super::layer::Shared;
use crate::exempt::ExemptFromDeadlines;
use crate::registry::Registration;

/// Middleware that cancels request work at its deadlines.
///
/// Made by [`super::TimeboxLayer`]; see the [module docs](super).
#[derive(Clone)]
pub struct Timebox<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

impl<S> Timebox<S> {
    pub(crate) fn new(inner: S, shared: Option<Arc<Shared>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Timebox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timebox")
            .field("inner", &self.inner)
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

/// What a request needs before the service is called.
enum Prepared<B> {
    Passthrough(Request<B>),
    Shed(Arc<Shared>),
    Timeboxed {
        request: Request<B>,
        registration: Registration,
        active: ActiveDeadline,
        shared: Arc<Shared>,
    },
}

/// Sheds, registers and hands the request its deadline.
fn prepare<B>(shared: &Option<Arc<Shared>>, mut request: Request<B>) -> Prepared<B> {
    let Some(shared) = shared else {
        return Prepared::Passthrough(request);
    };
    if request.extensions().get::<ExemptFromDeadlines>().is_some() {
        return Prepared::Passthrough(request);
    }
    if let Some(wait) = shared.wait_timeout {
        let waited = super::shed::queue_time(request.headers(), SystemTime::now());
        if waited.is_some_and(|waited| waited > wait) {
            shared.counters.shed.fetch_add(1, Ordering::Relaxed);
            return Prepared::Shed(shared.clone());
        }
    }
    let watched = match &shared.watch {
        Some(watch) => {
            let (checked, ignored) = watch.filter.check(request);
            request = checked;
            !ignored
        }
        None => false,
    };
    let core = &shared.core;
    let now = Instant::now();
    let started = core.registry.clock.ns_at(now);
    let dues = core.dues(started, watched);
    let registration = core.registry.register(started, dues, |meta| {
        if let Some(watch) = &shared.watch {
            watch.capture.fill(&request, meta);
        }
    });
    let (soft_at, hard_at) = match &core.deadlines {
        Some(d) => (now + d.soft_after, now + d.hard_after),
        None => (now, now),
    };
    if shared.deadline_extension {
        request.extensions_mut().insert(Deadline::for_request(
            registration.handle(),
            soft_at,
            hard_at,
        ));
    }
    Prepared::Timeboxed {
        request,
        registration,
        active: ActiveDeadline {
            at: soft_at,
            kind: DeadlineKind::Request,
        },
        shared: shared.clone(),
    }
}

/// The service called for a prepared request.
enum Called<F: std::future::Future> {
    Done(ResponseFuture<F>),
    Timeboxed {
        future: F,
        registration: Registration,
        active: ActiveDeadline,
        shared: Arc<Shared>,
    },
}

fn call_prepared<S, B>(inner: &mut S, prepared: Prepared<B>) -> Called<S::Future>
where
    S: Service<Request<B>>,
{
    match prepared {
        Prepared::Passthrough(request) => {
            Called::Done(ResponseFuture::passthrough(inner.call(request)))
        }
        Prepared::Shed(shared) => Called::Done(ResponseFuture::shed(shared)),
        Prepared::Timeboxed {
            request,
            registration,
            active,
            shared,
        } => {
            // Work done synchronously inside `call` belongs to the request too.
            let future = {
                let _scope = Isolated::<S::Future>::scope(&registration, active);
                inner.call(request)
            };
            Called::Timeboxed {
                future,
                registration,
                active,
                shared,
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Timebox<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<super::TimeboxBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match call_prepared(&mut self.inner, prepare(&self.shared, request)) {
            Called::Done(future) => future,
            Called::Timeboxed {
                future,
                registration,
                active,
                shared,
            } => {
                if shared.isolate && tokio::runtime::Handle::try_current().is_ok() {
                    ResponseFuture::spawned(future, registration, active, shared)
                } else {
                    ResponseFuture::inline(future, registration, active, shared)
                }
            }
        }
    }
}

/// [`Timebox`] for services whose futures are not `Send` or not `'static`: the handler always
/// runs inline, in the caller's task.
///
/// Made by [`super::TimeboxLayer::inline`]. The hard deadline still drops the handler's future
/// and answers 503, but only when the future yields: a handler that blocks its thread delays
/// its own 503.
#[derive(Clone)]
pub struct InlineTimebox<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

impl<S> InlineTimebox<S> {
    pub(crate) fn new(inner: S, shared: Option<Arc<Shared>>) -> Self {
        Self { inner, shared }
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for InlineTimebox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineTimebox")
            .field("inner", &self.inner)
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for InlineTimebox<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<super::TimeboxBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match call_prepared(&mut self.inner, prepare(&self.shared, request)) {
            Called::Done(future) => future,
            Called::Timeboxed {
                future,
                registration,
                active,
                shared,
            } => ResponseFuture::inline(future, registration, active, shared),
        }
    }
}
