use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Shared;
use crate::registry::PollingScope;

/// Middleware that reports requests still running past a threshold.
///
/// Made by [`super::WatchdogLayer`]; see the [module docs](super).
#[derive(Clone)]
pub struct Watchdog<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

impl<S> Watchdog<S> {
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

impl<S: std::fmt::Debug> std::fmt::Debug for Watchdog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("inner", &self.inner)
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Watchdog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture::unmonitored(self.inner.call(request));
        };
        let (request, ignored) = shared.filter.check(request);
        if ignored {
            return ResponseFuture::unmonitored(self.inner.call(request));
        }
        let core = &shared.core;
        let started = core.registry.clock.ns_at(Instant::now());
        let registration = core
            .registry
            .register(started, core.dues(started, true), |meta| {
                shared.capture.fill(&request, meta)
            });
        // Work done synchronously inside `call` belongs to the request too.
        let future = {
            let _polling = PollingScope::enter(&registration);
            self.inner.call(request)
        };
        ResponseFuture::monitored(future, registration)
    }
}
