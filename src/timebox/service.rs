use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use crate::tracked::{Parts, Tracked};

/// Middleware that cancels request work at its deadlines.
///
/// Made by [`super::TimeboxLayer`]; see the [module docs](super).
#[derive(Clone)]
pub struct Timebox<S> {
    tracked: Tracked<S>,
}

impl<S> Timebox<S> {
    pub(crate) fn new(inner: S, parts: Option<Arc<Parts>>) -> Self {
        Self {
            tracked: Tracked::new(inner, parts),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.tracked.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.tracked.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.tracked.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Timebox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timebox")
            .field("inner", &self.tracked.inner)
            .field("enabled", &self.tracked.parts.is_some())
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
        self.tracked.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture::new(self.tracked.call_isolated(request))
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
    tracked: Tracked<S>,
}

impl<S> InlineTimebox<S> {
    pub(crate) fn new(inner: S, parts: Option<Arc<Parts>>) -> Self {
        Self {
            tracked: Tracked::new(inner, parts),
        }
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.tracked.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for InlineTimebox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineTimebox")
            .field("inner", &self.tracked.inner)
            .field("enabled", &self.tracked.parts.is_some())
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
        self.tracked.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture::new(self.tracked.call_inline(request))
    }
}
