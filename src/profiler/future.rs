use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use super::body::ProfilerBody;
use super::page;
use super::runner::AbandonOnDrop;

pin_project! {
    /// Response future of [`super::Profiler`].
    ///
    /// For a request without the trigger it is the inner service's future; for a profiled
    /// request it waits for the profile from the profiling threads.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        // Dropping the guard before the profile arrives cancels the profile.
        Waiting { profile: oneshot::Receiver<Response<Bytes>>, guard: AbandonOnDrop },
        Ready { response: Option<Response<Bytes>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn waiting(
        profile: oneshot::Receiver<Response<Bytes>>,
        guard: AbandonOnDrop,
    ) -> Self {
        Self {
            kind: Kind::Waiting { profile, guard },
        }
    }

    pub(crate) fn ready(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ProfilerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project().kind.project() {
            KindProj::Inner { future } => {
                return future
                    .poll(cx)
                    .map(|result| result.map(|response| response.map(ProfilerBody::inner)));
            }
            KindProj::Waiting { profile, guard } => {
                let received = ready!(Pin::new(profile).poll(cx));
                guard.disarm();
                match received {
                    Ok(response) => response,
                    Err(_) => page::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the profiler's controller thread ended without a profile",
                    ),
                }
            }
            KindProj::Ready { response } => response
                .take()
                .expect("ResponseFuture polled after completion"),
        };
        Poll::Ready(Ok(response.map(ProfilerBody::full)))
    }
}
