use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::registry::{PollingScope, Registration};

pin_project! {
    /// Response future of [`super::Watchdog`].
    ///
    /// Marks the request as being polled by the current thread for the duration of each poll,
    /// and deregisters it when it completes or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        registration: Option<Registration>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn monitored(inner: F, registration: Registration) -> Self {
        Self {
            inner,
            registration: Some(registration),
        }
    }

    pub(crate) fn unmonitored(inner: F) -> Self {
        Self {
            inner,
            registration: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(registration) = this.registration.as_ref() else {
            return this.inner.poll(cx);
        };
        let output = {
            let _polling = PollingScope::enter(registration);
            ready!(this.inner.poll(cx))
        };
        if let Ok(response) = &output {
            registration.set_status(response.status().as_u16());
        }
        *this.registration = None;
        Poll::Ready(output)
    }
}
