use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::tracked::TrackedFuture;

pin_project! {
    /// Response future of [`super::Watchdog`].
    ///
    /// Marks the request as being polled by the current thread for the duration of each poll.
    /// The request stays registered until its response body ends (or is dropped).
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
    type Output = Result<Response<super::WatchdogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
