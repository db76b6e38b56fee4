use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::sync::oneshot;
use tower_service::Service;

use super::background;
use super::body::ProfilerBody;
use super::fold::Profile;
use super::future::ResponseFuture;
use super::layer::{Config, Profiled, State};
use super::page::{self, Links};
use super::runner::{self, Abandoned, ProfileError, Settings};
use super::trigger::{self, Format, Hit, Wish};
use crate::exempt::ExemptFromDeadlines;
use crate::timebox::Deadline;

/// Middleware that answers an authorized, triggered request with a profile of it.
///
/// Made by [`super::ProfilerLayer`]; see the [module docs](super).
#[derive(Clone)]
pub struct Profiler<S> {
    inner: S,
    /// One reference for both: axum clones the service for every request.
    shared: Arc<Shared>,
}

/// What a profiler's services share with its layer.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
}

impl<S> Profiler<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Profiler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("inner", &self.inner)
            .field("enabled", &self.shared.config.enabled)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Profiler<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + 'static,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<ProfilerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &self.shared.config;
        if !config.enabled {
            return ResponseFuture::inner(self.inner.call(request));
        }
        let hit = trigger::classify(
            &request,
            &config.param,
            config.header.as_ref(),
            &config.index_path,
        );
        if hit == Hit::None {
            return ResponseFuture::inner(self.inner.call(request));
        }
        let (parts, body) = request.into_parts();
        let serves_index = hit == Hit::Index && parts.method == http::Method::GET;
        if !(hit == Hit::Trigger || serves_index) || !config.authorize.authorize(&parts) {
            // Exactly as if the profiler were not there.
            return ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)));
        }
        if serves_index {
            return ResponseFuture::ready(background::serve(
                config,
                &self.shared.state,
                parts.uri.path(),
            ));
        }
        self.profile(parts, body)
    }
}

impl<S> Profiler<S> {
    fn profile<ReqBody, ResBody>(
        &mut self,
        mut parts: Parts,
        body: ReqBody,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body + 'static,
    {
        let config = self.shared.config.clone();
        let wish = match wish_of(&config, &parts) {
            Ok(wish) => wish,
            Err(message) => {
                return ResponseFuture::ready(page::error(StatusCode::BAD_REQUEST, &message))
            }
        };
        let Some(permit) = self.shared.state.try_acquire(config.max_concurrent) else {
            return ResponseFuture::ready(page::busy());
        };
        let mode = wish.mode.unwrap_or(config.mode);
        parts.uri = trigger::strip_param(&parts.uri, &config.param);
        if let Some(header) = &config.header {
            parts.headers.remove(header);
        }
        parts.extensions.insert(ExemptFromDeadlines);
        lift_enclosing_deadlines(&mut parts);
        parts.extensions.insert(Profiled { mode });
        let request_line = format!("{} {}", parts.method, parts.uri);
        let rerun = Links::Rerun {
            base: format!(
                "{}{}{}=",
                parts.uri,
                if parts.uri.query().is_some() {
                    '&'
                } else {
                    '?'
                },
                config.param
            ),
            mode,
            why: String::new(),
        };
        let request = Request::from_parts(parts, body);
        // The service that was polled ready runs the request; this one stays for the next.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let settings = Settings {
            mode,
            rate_hz: config.rate_hz,
            max_duration: if wish.background {
                config.background_max_duration
            } else {
                config.max_duration
            },
            collapse: config.collapse,
            request_line: request_line.clone(),
        };
        if wish.background {
            let id = background::new_id(&self.shared.state);
            self.shared
                .state
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), request_line.clone());
            let deliver = background::deliver(
                config.clone(),
                self.shared.state.clone(),
                id.clone(),
                request_line.clone(),
                mode.name(),
                config.rate_hz,
            );
            let never = Abandoned::default();
            return match runner::spawn(ready, request, settings, permit, deliver, never) {
                Ok(()) => ResponseFuture::ready(page::background_started(
                    &config.index_path,
                    &id,
                    &request_line,
                )),
                Err(error) => {
                    self.shared
                        .state
                        .running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    ResponseFuture::ready(page::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("cannot start the profiler's thread: {error}"),
                    ))
                }
            };
        }
        let (sender, receiver) = oneshot::channel();
        let format = wish.format;
        let state = self.shared.state.clone();
        let deliver = Box::new(move |result| {
            // Rendering happens here, on the controller thread, off the worker pool.
            let _ = sender.send(answer(&config, &state, result, format, rerun));
        });
        let abandoned = Abandoned::default();
        let guard = abandoned.on_drop();
        match runner::spawn(ready, request, settings, permit, deliver, abandoned) {
            Ok(()) => ResponseFuture::waiting(receiver, guard),
            Err(error) => ResponseFuture::ready(page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot start the profiler's thread: {error}"),
            )),
        }
    }
}

/// Exempts a profiled request from a timebox outside the profiler: a timebox inside sees
/// [`ExemptFromDeadlines`], one outside has already registered the request and would answer
/// 503 at its hard deadline while the profile is still being taken.
///
/// The handler then runs on the profiler's thread, where no deadline can be built on demand,
/// so the request carries its deadline, lifted (or one that never passes), as an extension:
/// a handler that takes a `Deadline` runs the same profiled as not.
fn lift_enclosing_deadlines(parts: &mut Parts) {
    if let Some(deadline) = parts.extensions.get_mut::<Deadline>() {
        deadline.lift();
        return;
    }
    // The timebox outside, if any, is calling this request right now.
    let deadline = match Deadline::of_request() {
        Some(mut deadline) => {
            deadline.lift();
            deadline
        }
        None => Deadline::never(),
    };
    parts.extensions.insert(deadline);
}

/// The answer to a profile taken at once. A page is kept in the profile store, so that its
/// links serve the other formats of this same profile; if it cannot be kept, they re-run it.
fn answer(
    config: &Config,
    state: &State,
    result: Result<Profile, ProfileError>,
    format: Format,
    rerun: Links,
) -> Response<Bytes> {
    match result {
        Ok(mut profile) if format == Format::Html && !profile.stacks.is_empty() => {
            match background::keep(config, state, &mut profile) {
                Ok(html) => page::html_response(&profile, html),
                Err(error) => {
                    tracing::warn!(target: "tower_vigil::profiler", %error, dir = %config.output_dir.display(), "cannot keep the profile");
                    let rerun = match rerun {
                        Links::Rerun { base, mode, .. } => Links::Rerun {
                            base,
                            mode,
                            why: format!("cannot write to the profile store: {error}"),
                        },
                        other => other,
                    };
                    page::render(&profile, format, &rerun)
                }
            }
        }
        other => page::respond(other, format, &rerun),
    }
}

/// What the trigger asks for: the parameter when present, else the header.
fn wish_of(config: &Config, parts: &Parts) -> Result<Wish, String> {
    if let Some(query) = parts.uri.query() {
        let (count, value) = trigger::find_param(query, &config.param);
        if count > 1 {
            return Err(format!("the parameter {} is repeated", config.param));
        }
        if count == 1 {
            return trigger::parse_value(value);
        }
    }
    let value = config
        .header
        .as_ref()
        .and_then(|header| parts.headers.get(header));
    match value.map(|v| v.to_str()) {
        Some(Ok(value)) => trigger::parse_value(value.trim()),
        Some(Err(_)) => Err("the profile header is not text".into()),
        None => trigger::parse_value(""),
    }
}
