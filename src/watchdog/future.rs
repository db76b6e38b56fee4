use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::tracked::TrackedFuture;

pin_project! {
    /// Response future of [`super::Watchdog`].
    ///
    /// Marks the request as being polled by the current thread for the duration of each poll,
    /// and deregisters it when it completes or is dropped.
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        inner: TrackedFuture<F>,
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn new(inner: TrackedFuture<F>) -> Self {
        Self { inner }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|output| {
            // A watchdog has no deadline part, so the body is always the handler's own.
            output.map(|response| response.map(crate::timebox::TimeboxBody::into_handler_body))
        })
    }
}
