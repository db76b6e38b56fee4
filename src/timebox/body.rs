use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::part::DeadlinePart;
use crate::registry::{PollingScope, Registration};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Response body of [`super::Timebox`]: the service's own body, or the timeout response.
    ///
    /// With [`super::TimeboxLayer::body_deadline`], the service's body ends with an error when
    /// it is still streaming at the hard deadline, which aborts the connection.
    pub struct TimeboxBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            deadline: Option<BodyDeadline>,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

/// Keeps the request registered while its body streams, so the monitor can wake the body at
/// the hard deadline.
pub(crate) struct BodyDeadline {
    pub(crate) registration: Registration,
    /// The timebox whose hard deadline ends the body (`body_deadline`); `None` when the body
    /// is only watched.
    pub(crate) deadlines: Option<Arc<DeadlinePart>>,
}

impl<B> std::fmt::Debug for TimeboxBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { deadline, .. } => f
                .debug_struct("TimeboxBody::Inner")
                .field("deadline", deadline)
                .finish_non_exhaustive(),
            Kind::Full { data } => f
                .debug_struct("TimeboxBody::Full")
                .field("data", data)
                .finish(),
        }
    }
}

impl std::fmt::Debug for BodyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyDeadline")
            .field("request", &self.registration.id())
            .finish()
    }
}

impl<B> TimeboxBody<B> {
    pub(crate) fn inner(body: B, deadline: Option<BodyDeadline>) -> Self {
        Self {
            kind: Kind::Inner { body, deadline },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

/// An empty body, so that layers which build their own responses (tower-http's
/// `TimeoutLayer`, `CorsLayer`, `ValidateRequestHeaderLayer`) can wrap the timebox.
impl<B: Default> Default for TimeboxBody<B> {
    fn default() -> Self {
        Self::inner(B::default(), None)
    }
}

/// The response body outlived the request's hard deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDeadlineElapsed;

impl std::fmt::Display for BodyDeadlineElapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response body outlived the request's hard deadline")
    }
}

impl std::error::Error for BodyDeadlineElapsed {}

/// Ends a body whose hard deadline fired: counted, then the request released, and an error
/// that makes the server cut the response.
fn body_timeout(
    deadline: &mut Option<BodyDeadline>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if let Some(part) = deadline.as_ref().and_then(|guard| guard.deadlines.as_ref()) {
        part.counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    *deadline = None;
    Poll::Ready(Some(Err(Box::new(BodyDeadlineElapsed))))
}

impl<B> Body for TimeboxBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { mut body, deadline } => {
                let Some(guard) = deadline.as_ref() else {
                    return body.poll_frame(cx).map_err(Into::into);
                };
                let registration = &guard.registration;
                let deadline_bound = guard.deadlines.is_some();
                if deadline_bound && registration.hard_fired() {
                    return body_timeout(deadline);
                }
                let frame = {
                    let _polling = PollingScope::enter(registration);
                    registration.poll_watched_with(cx, |cx| body.as_mut().poll_frame(cx))
                };
                match &frame {
                    Poll::Ready(Some(Ok(frame))) => {
                        registration.note_frame(frame.data_ref().map_or(0, Bytes::len));
                    }
                    // The body ended, failed or was cut: so has the request.
                    Poll::Ready(_) => *deadline = None,
                    // As in the response future: the waker is kept once the body waits, and a
                    // deadline that fired before then woke nobody.
                    Poll::Pending if deadline_bound => {
                        registration.slot().set_waker(registration.id(), cx.waker());
                        if registration.hard_fired() {
                            return body_timeout(deadline);
                        }
                    }
                    Poll::Pending => {}
                }
                frame.map_err(Into::into)
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
