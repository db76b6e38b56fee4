use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use crate::tracked::{Parts, Tracked};

/// Middleware that reports requests still running past a threshold.
///
/// Made by [`super::WatchdogLayer`]; see the [module docs](super).
#[derive(Clone)]
pub struct Watchdog<S> {
    tracked: Tracked<S>,
}

impl<S> Watchdog<S> {
    pub(crate) fn new(inner: S, parts: Option<std::sync::Arc<Parts>>) -> Self {
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

impl<S: std::fmt::Debug> std::fmt::Debug for Watchdog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("inner", &self.tracked.inner)
            .field("enabled", &self.tracked.parts.is_some())
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Watchdog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<super::WatchdogBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tracked.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture::new(self.tracked.call_inline(request))
    }
}
