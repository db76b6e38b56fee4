use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response};
use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use crate::registry::{PollingScope, Registration, RequestHandle, HARD_FIRED, SOFT_FIRED};
use crate::timebox::part::DeadlinePart;
use crate::timebox::{ActiveDeadline, BodyDeadline, DeadlineScope, TimeboxBody};

pin_project! {
    /// The response future of [`super::Tracked`], behind each layer's own `ResponseFuture`.
    pub(crate) struct TrackedFuture<F>
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
            active: Option<ActiveDeadline>,
            deadlines: Option<Arc<DeadlinePart>>,
        },
        Spawned {
            task: AbortOnDrop<(F::Output, Registration)>,
            handle: RequestHandle,
            deadlines: Arc<DeadlinePart>,
        },
        Shed {
            deadlines: Arc<DeadlinePart>,
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
        active: Option<ActiveDeadline>,
    }
}

impl<F> Isolated<F> {
    pub(crate) fn scope(
        registration: &Registration,
        active: Option<ActiveDeadline>,
    ) -> (PollingScope<'_>, Option<DeadlineScope>) {
        (
            PollingScope::enter(registration),
            active.map(DeadlineScope::enter),
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
            ready!(registration.poll_watched(this.future, cx))
        };
        let registration = this.registration.take().expect("checked above");
        Poll::Ready((output, registration))
    }
}

impl<F: Future> TrackedFuture<F> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            state: State::Passthrough { future },
        }
    }

    pub(crate) fn shed(deadlines: Arc<DeadlinePart>) -> Self {
        Self {
            state: State::Shed { deadlines },
        }
    }

    pub(crate) fn inline(
        future: F,
        registration: Registration,
        active: Option<ActiveDeadline>,
        deadlines: Option<Arc<DeadlinePart>>,
    ) -> Self {
        Self {
            state: State::Inline {
                future,
                registration: Some(registration),
                active,
                deadlines,
            },
        }
    }

    pub(crate) fn spawned(
        future: F,
        registration: Registration,
        active: Option<ActiveDeadline>,
        deadlines: Arc<DeadlinePart>,
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
                deadlines,
            },
        }
    }
}

fn timeout_response<B>(deadlines: &DeadlinePart) -> Response<TimeboxBody<B>> {
    let mut response = Response::new(TimeboxBody::full(deadlines.response.body.clone()));
    *response.status_mut() = deadlines.response.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(retry_after) = &deadlines.response.retry_after {
        headers.insert(RETRY_AFTER, retry_after.clone());
    }
    response
}

/// Answers an inline request whose hard deadline fired with the 503, dropping the handler's
/// future in place: its destructors run now.
fn hard_timeout<F: Future, B>(mut state: Pin<&mut State<F>>) -> Response<TimeboxBody<B>> {
    let StateProj::Inline {
        registration: Some(held),
        deadlines: Some(part),
        ..
    } = state.as_mut().project()
    else {
        unreachable!("only a registered, timeboxed inline request has a hard deadline here")
    };
    part.counters.hard_timeouts.fetch_add(1, Ordering::Relaxed);
    let response = timeout_response(part);
    held.set_status(response.status().as_u16());
    state.set(State::Done);
    response
}

fn finish<B, E>(
    output: Result<Response<B>, E>,
    registration: Registration,
    deadlines: Option<&Arc<DeadlinePart>>,
) -> Result<Response<TimeboxBody<B>>, E> {
    if let Some(deadlines) = deadlines {
        let flags = registration.slot().flags(registration.id());
        if flags & SOFT_FIRED != 0 && flags & HARD_FIRED == 0 {
            deadlines
                .counters
                .soft_honoured
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    let response = output?;
    registration.set_status(response.status().as_u16());
    let (parts, body) = response.into_parts();
    // A websocket or an event stream may stay open for hours by design: neither slow nor late.
    let long_lived = parts.status == http::StatusCode::SWITCHING_PROTOCOLS
        || parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| is_event_stream(value.as_bytes()));
    let deadline_exempt = long_lived && deadlines.is_none_or(|d| d.long_lived_exempt);
    let body_deadline = deadlines
        .filter(|d| d.body_deadline && !deadline_exempt)
        .cloned();
    // The request is in flight until its body ends: a slow stream is a slow request.
    let watch_body = registration.watched() && !(long_lived && registration.long_lived_exempt);
    let guard = if watch_body || body_deadline.is_some() {
        registration.start_body(body_deadline.is_some());
        Some(BodyDeadline {
            registration,
            deadlines: body_deadline,
        })
    } else {
        None
    };
    Ok(Response::from_parts(parts, TimeboxBody::inner(body, guard)))
}

/// Whether a `Content-Type` value names `text/event-stream`, parameters aside. On bytes: every
/// response passes through here, and most are not event streams.
fn is_event_stream(content_type: &[u8]) -> bool {
    const MIME: &[u8] = b"text/event-stream";
    let value = content_type.trim_ascii_start();
    value.len() >= MIME.len()
        && value[..MIME.len()].eq_ignore_ascii_case(MIME)
        && matches!(
            value[MIME.len()..].trim_ascii_start().first(),
            None | Some(b';')
        )
}

impl<F, B, E> Future for TrackedFuture<F>
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
            StateProj::Shed { deadlines } => {
                let response = timeout_response(deadlines);
                state.set(State::Done);
                Poll::Ready(Ok(response))
            }
            StateProj::Inline {
                future,
                registration,
                active,
                deadlines,
            } => {
                let held = registration.as_ref().expect("polled after completion");
                if deadlines.is_some() && held.hard_fired() {
                    return Poll::Ready(Ok(hard_timeout(state)));
                }
                let polled = {
                    let _scope = Isolated::<F>::scope(held, *active);
                    held.poll_watched(future, cx)
                };
                let Poll::Ready(output) = polled else {
                    if deadlines.is_some() {
                        // Kept only once the handler waits, so a request answered in its first
                        // poll never takes the slot's lock nor clones the waker. A deadline
                        // that fired before the waker was kept woke nobody: look again.
                        held.slot().set_waker(held.id(), cx.waker());
                        if held.hard_fired() {
                            return Poll::Ready(Ok(hard_timeout(state)));
                        }
                    }
                    return Poll::Pending;
                };
                let registration = registration.take().expect("checked above");
                // Taken, not cloned: the state is done with it, and a clone costs two atomics.
                let deadlines = deadlines.take();
                state.set(State::Done);
                Poll::Ready(finish(output, registration, deadlines.as_ref()))
            }
            StateProj::Spawned {
                task,
                handle,
                deadlines,
            } => {
                // The task's own result comes first: a task that ended (or panicked) released
                // its slot, and the slot's flags may already describe another request.
                if let Poll::Ready(joined) = Pin::new(&mut task.0).poll(cx) {
                    let deadlines = deadlines.clone();
                    state.set(State::Done);
                    return match joined {
                        Ok((output, registration)) => {
                            Poll::Ready(finish(output, registration, Some(&deadlines)))
                        }
                        Err(error) if error.is_panic() => {
                            std::panic::resume_unwind(error.into_panic())
                        }
                        // Cancelled from outside, for instance by a runtime shutting down.
                        Err(_) => Poll::Ready(Ok(timeout_response(&deadlines))),
                    };
                }
                handle.slot.set_waker(handle.id, cx.waker());
                match handle.current_flags() {
                    // The task ended between the two looks; the join handle wakes us with its
                    // result.
                    None => Poll::Pending,
                    Some(flags) if flags & HARD_FIRED != 0 => {
                        deadlines
                            .counters
                            .hard_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        let response = timeout_response(deadlines);
                        handle.set_status(response.status().as_u16());
                        // Dropping the task handle aborts the task: the handler's future is
                        // dropped at its next await point, or when a blocked thread returns to
                        // the runtime.
                        state.set(State::Done);
                        Poll::Ready(Ok(response))
                    }
                    Some(_) => Poll::Pending,
                }
            }
            StateProj::Done => panic!("tower-vigil ResponseFuture polled after completion"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_event_stream;

    #[test]
    fn an_event_stream_is_known_with_parameters_case_and_spaces() {
        for value in [
            "text/event-stream",
            "Text/Event-Stream",
            " text/event-stream ;charset=utf-8",
            "text/event-stream; retry=10",
        ] {
            assert!(is_event_stream(value.as_bytes()), "{value:?}");
        }
        for value in [
            "",
            "application/json",
            "text/event-streams",
            "text/event",
            "text/plain; note=text/event-stream",
        ] {
            assert!(!is_event_stream(value.as_bytes()), "{value:?}");
        }
    }
}
