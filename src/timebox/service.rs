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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture::passthrough(self.inner.call(request));
        };
        if request.extensions().get::<ExemptFromDeadlines>().is_some() {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        if let Some(wait) = shared.wait_timeout {
            let waited = super::shed::queue_time(request.headers(), SystemTime::now());
            if waited.is_some_and(|waited| waited > wait) {
                shared.counters.shed.fetch_add(1, Ordering::Relaxed);
                return ResponseFuture::shed(shared.clone());
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
        let active = ActiveDeadline {
            at: soft_at,
            kind: DeadlineKind::Request,
        };
        let isolate = shared.isolate && tokio::runtime::Handle::try_current().is_ok();
        let future = {
            let _scope = Isolated::<S::Future>::scope(&registration, active);
            self.inner.call(request)
        };
        if isolate {
            ResponseFuture::spawned(future, registration, active, shared.clone())
        } else {
            ResponseFuture::inline(future, registration, active, shared.clone())
        }
    }
}
