use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::body::TimeboxBody;
use crate::tracked::TrackedFuture;

pin_project! {
    /// Response future of [`super::Timebox`] and [`super::InlineTimebox`].
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
    type Output = Result<Response<TimeboxBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
