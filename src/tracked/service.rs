use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::Request;
use tower_service::Service;

use super::future::{Isolated, TrackedFuture};
use super::Parts;
use crate::exempt::ExemptFromDeadlines;
use crate::registry::Registration;
use crate::timebox::part::DeadlinePart;
use crate::timebox::{ActiveDeadline, Deadline, DeadlineKind};

/// Registers each request once with its parts and watches it until it ends.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    /// `None` when every part is switched off: requests pass through untouched.
    pub(crate) parts: Option<Arc<Parts>>,
    /// Run handlers in a task of their own when a deadline applies (always, or on routes that
    /// have been wedged).
    pub(crate) isolate: bool,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, parts: Option<Arc<Parts>>) -> Self {
        let isolate = parts
            .as_ref()
            .and_then(|p| p.deadlines.as_ref())
            .is_some_and(|d| d.isolation != crate::config::Isolation::Never);
        Self {
            inner,
            parts,
            isolate,
        }
    }

    /// Calls the inner service for a request whose handler may run in a task of its own.
    pub(crate) fn call_isolated<B>(&mut self, request: Request<B>) -> TrackedFuture<S::Future>
    where
        S: Service<Request<B>>,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        S::Error: Send + 'static,
    {
        match self.start(request) {
            Admission::Answered(future) => future,
            Admission::Registered {
                future,
                registration,
                active,
                deadlines: Some(part),
            } if self.isolate
                && part.isolates(registration.slot().route_hash())
                && tokio::runtime::Handle::try_current().is_ok() =>
            {
                TrackedFuture::spawned(future, registration, active, part)
            }
            Admission::Registered {
                future,
                registration,
                active,
                deadlines,
            } => TrackedFuture::inline(future, registration, active, deadlines),
        }
    }

    /// Calls the inner service; the handler runs in the caller's task.
    pub(crate) fn call_inline<B>(&mut self, request: Request<B>) -> TrackedFuture<S::Future>
    where
        S: Service<Request<B>>,
    {
        match self.start(request) {
            Admission::Answered(future) => future,
            Admission::Registered {
                future,
                registration,
                active,
                deadlines,
            } => TrackedFuture::inline(future, registration, active, deadlines),
        }
    }

    /// Sheds, filters, registers and calls the inner service.
    fn start<B>(&mut self, mut request: Request<B>) -> Admission<S::Future>
    where
        S: Service<Request<B>>,
    {
        let Some(parts) = &self.parts else {
            return Admission::Answered(TrackedFuture::passthrough(self.inner.call(request)));
        };
        let deadlines = parts.deadlines.as_ref();
        if deadlines.is_some() && request.extensions().get::<ExemptFromDeadlines>().is_some() {
            // Run under another layer's rules (the profiler's thread): no deadline, no watch.
            return Admission::Answered(TrackedFuture::passthrough(self.inner.call(request)));
        }
        if let Some(part) = deadlines {
            if let Some(wait) = part.wait_timeout {
                let waited = crate::timebox::shed::queue_time(request.headers(), SystemTime::now());
                if waited.is_some_and(|waited| waited > wait) {
                    part.counters.shed.fetch_add(1, Ordering::Relaxed);
                    return Admission::Answered(TrackedFuture::shed(part.clone()));
                }
            }
        }
        let watched = match &parts.watch {
            // Moving the request costs a copy of a few hundred bytes: only a predicate needs it.
            Some(watch) if watch.filter.predicate.is_none() => {
                !watch.filter.ignores_path(request.uri().path())
            }
            Some(watch) => {
                let (checked, ignored) = watch.filter.check(request);
                request = checked;
                !ignored
            }
            None => false,
        };
        if !watched && deadlines.is_none() {
            return Admission::Answered(TrackedFuture::passthrough(self.inner.call(request)));
        }
        let now = Instant::now();
        let started = parts.registry.clock.ns_at(now);
        let dues = crate::monitor::dues(parts, started, watched);
        let route = match deadlines {
            Some(part) if part.needs_route_hash(watched) => Some(crate::timebox::part::route_hash(
                request.method(),
                request.uri().path(),
            )),
            _ => None,
        };
        let mut registration = parts
            .registry
            .register(started, dues, route, parts, |meta| {
                if let Some(watch) = &parts.watch {
                    watch.capture.fill(&request, meta);
                }
            });
        let active = match deadlines {
            Some(part) => {
                let (soft_at, hard_at) = (now + part.soft_after, now + part.hard_after);
                registration.set_deadlines(soft_at, hard_at);
                if part.deadline_extension {
                    request.extensions_mut().insert(Deadline::for_request(
                        registration.handle(),
                        soft_at,
                        hard_at,
                    ));
                }
                Some(ActiveDeadline {
                    at: soft_at,
                    kind: DeadlineKind::Request,
                })
            }
            None => None,
        };
        // Work done synchronously inside `call` belongs to the request too.
        let future = {
            let _scope = Isolated::<S::Future>::scope(&registration, active);
            self.inner.call(request)
        };
        Admission::Registered {
            future,
            registration,
            active,
            deadlines: deadlines.cloned(),
        }
    }
}

/// How [`Tracked::start`] let a request in: answered without registration, or registered and
/// waiting for its future to be placed.
enum Admission<F: std::future::Future> {
    /// Passed through, shed or exempt: the response future is ready to go.
    Answered(TrackedFuture<F>),
    Registered {
        future: F,
        registration: Registration,
        active: Option<ActiveDeadline>,
        deadlines: Option<Arc<DeadlinePart>>,
    },
}
