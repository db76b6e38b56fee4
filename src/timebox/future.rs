use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response};
use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use super::body::TimeboxBody;
use super::deadline::{ActiveDeadline, DeadlineScope};
use super::layer::Shared;
use crate::registry::{PollingScope, Registration, RequestHandle, HARD_FIRED, SOFT_FIRED};

pin_project! {
    /// Response future of [`super::Timebox`].
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F>
    where
        F: Future,
    {
        Passthrough {
            #[pin]
            future: F,
        },
        Inline {
            #[pin]
            future: F,
            registration: Option<Registration>,
            active: ActiveDeadline,
            shared: Arc<Shared>,
        },
        Spawned {
            task: AbortOnDrop<(F::Output, Registration)>,
            handle: RequestHandle,
            shared: Arc<Shared>,
        },
        Shed {
            shared: Arc<Shared>,
        },
        Done,
    }
}

/// Cancels the handler's task when the response future is dropped (client gone).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pin_project! {
    /// The handler's future inside its own task: marks the polling thread and the deadline in
    /// force around each poll, and hands the registration back with the output so the request
    /// stays registered while its work runs, even after a 503 went out.
    pub(crate) struct Isolated<F> {
        #[pin]
        future: F,
        registration: Option<Registration>,
        active: ActiveDeadline,
    }
}

impl<F> Isolated<F> {
    pub(crate) fn scope(
        registration: &Registration,
        active: ActiveDeadline,
    ) -> (PollingScope<'_>, DeadlineScope) {
        (
            PollingScope::enter(registration),
            DeadlineScope::enter(active),
        )
    }
}

impl<F: Future> Future for Isolated<F> {
    type Output = (F::Output, Registration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let registration = this.registration.as_ref().expect("polled after completion");
        let output = {
            let _scope = Self::scope(registration, *this.active);
            ready!(this.future.poll(cx))
        };
        let registration = this.registration.take().expect("checked above");
        Poll::Ready((output, registration))
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            state: State::Passthrough { future },
        }
    }

    pub(crate) fn shed(shared: Arc<Shared>) -> Self {
        Self {
            state: State::Shed { shared },
        }
    }

    pub(crate) fn inline(
        future: F,
        registration: Registration,
        active: ActiveDeadline,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Inline {
                future,
                registration: Some(registration),
                active,
                shared,
            },
        }
    }

    pub(crate) fn spawned(
        future: F,
        registration: Registration,
        active: ActiveDeadline,
        shared: Arc<Shared>,
    ) -> Self
    where
        F: Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = registration.handle();
        let task = tokio::spawn(Isolated {
            future,
            registration: Some(registration),
            active,
        });
        Self {
            state: State::Spawned {
                task: AbortOnDrop(task),
                handle,
                shared,
            },
        }
    }
}

fn timeout_response<B>(shared: &Shared) -> Response<TimeboxBody<B>> {
    let mut response = Response::new(TimeboxBody::full(shared.response.body.clone()));
    *response.status_mut() = shared.response.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(retry_after) = &shared.response.retry_after {
        headers.insert(RETRY_AFTER, retry_after.clone());
    }
    response
}

fn hard_timeout<B>(shared: &Shared) -> Response<TimeboxBody<B>> {
    shared
        .counters
        .hard_timeouts
        .fetch_add(1, Ordering::Relaxed);
    timeout_response(shared)
}

fn finish<B, E>(
    output: Result<Response<B>, E>,
    registration: Registration,
    shared: &Arc<Shared>,
) -> Result<Response<TimeboxBody<B>>, E> {
    let flags = registration.slot().flags(registration.id());
    if flags & SOFT_FIRED != 0 && flags & HARD_FIRED == 0 {
        shared
            .counters
            .soft_honoured
            .fetch_add(1, Ordering::Relaxed);
    }
    let response = output?;
    registration.set_status(response.status().as_u16());
    let (parts, body) = response.into_parts();
    let deadline = shared.body_deadline.then(|| (registration, shared.clone()));
    Ok(Response::from_parts(
        parts,
        TimeboxBody::inner(body, deadline),
    ))
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TimeboxBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Passthrough { future } => future.poll(cx).map(|output| {
                output.map(|response| response.map(|body| TimeboxBody::inner(body, None)))
            }),
            StateProj::Shed { shared } => {
                let response = timeout_response(shared);
                state.set(State::Done);
                Poll::Ready(Ok(response))
            }
            StateProj::Inline {
                future,
                registration,
                active,
                shared,
            } => {
                let held = registration.as_ref().expect("polled after completion");
                let slot = held.slot();
                slot.set_waker(cx.waker());
                if slot.flags(held.id()) & HARD_FIRED != 0 {
                    let response = hard_timeout(shared);
                    // Drops the handler's future in place: its destructors run now.
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                let output = {
                    let _polling = PollingScope::enter(held);
                    let _deadline = DeadlineScope::enter(*active);
                    ready!(future.poll(cx))
                };
                let registration = registration.take().expect("checked above");
                let shared = shared.clone();
                state.set(State::Done);
                Poll::Ready(finish(output, registration, &shared))
            }
            StateProj::Spawned {
                task,
                handle,
                shared,
            } => {
                handle.slot.set_waker(cx.waker());
                if handle.flags() & HARD_FIRED != 0 {
                    let response = hard_timeout(shared);
                    // Dropping the task handle aborts the task: the handler's future is dropped
                    // at its next await point, or when a blocked thread returns to the runtime.
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                let joined = ready!(Pin::new(&mut task.0).poll(cx));
                let shared = shared.clone();
                state.set(State::Done);
                match joined {
                    Ok((output, registration)) => {
                        Poll::Ready(finish(output, registration, &shared))
                    }
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    // Cancelled from outside, for instance by a runtime shutting down.
                    Err(_) => Poll::Ready(Ok(timeout_response(&shared))),
                }
            }
            StateProj::Done => panic!("timebox ResponseFuture polled after completion"),
        }
    }
}
