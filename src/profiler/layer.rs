use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderName;
use tower_layer::Layer;

use super::authorize::{Authorize, DenyAll};
use super::service::Shared;
use super::Profiler;

/// What the profiler measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Wall-clock time (`CLOCK_MONOTONIC`): time spent waiting counts, and is shown as
    /// `[awaiting] span > span` frames from the request's open tracing spans. The default,
    /// because a slow request is more often waiting than computing.
    #[default]
    WallClock,
    /// CPU time of the profiling thread (its `CLOCK_THREAD_CPUTIME_ID` clock): only time spent
    /// computing counts.
    CpuTime,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::WallClock => "wall-clock",
            Mode::CpuTime => "cpu-time",
        }
    }
}

/// Marks a request that is being profiled, in its extensions, for the application to see
/// (to skip a cache, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Profiled {
    /// What the profile measures.
    pub mode: Mode,
}

use crate::config::ProfilerConfig;
use crate::error::ConfigError;

/// Configuration shared by every service of one layer.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) enabled: bool,
    pub(crate) param: String,
    pub(crate) header: Option<HeaderName>,
    pub(crate) authorize: Arc<dyn Authorize>,
    pub(crate) mode: Mode,
    pub(crate) rate_hz: u32,
    pub(crate) max_duration: Duration,
    pub(crate) background_max_duration: Duration,
    pub(crate) max_concurrent: usize,
    pub(crate) collapse: bool,
    pub(crate) output_dir: PathBuf,
    pub(crate) retain: usize,
    pub(crate) index_path: String,
}

/// State shared by every service of one layer and its clones.
#[derive(Default)]
pub(crate) struct State {
    active: AtomicUsize,
    next_id: AtomicU64,
    /// Background profiles still running: id to request line.
    pub(crate) running: Mutex<HashMap<String, String>>,
    /// Whether this profiler's counters are published (feature `metrics`).
    #[cfg(feature = "metrics")]
    published: std::sync::atomic::AtomicBool,
}

impl State {
    /// Publishes the count of profiles while the profiler lives; once per profiler.
    #[cfg(feature = "metrics")]
    fn publish_metrics(self: &Arc<Self>) {
        if self.published.swap(true, Ordering::Relaxed) {
            return;
        }
        let instance = crate::metrics::instance("profiler");
        let state = Arc::downgrade(self);
        crate::metrics::register(move || {
            let Some(state) = state.upgrade() else {
                return false;
            };
            let started = state.next_id.load(Ordering::Relaxed);
            crate::metrics::counter("vigil_profiles_total", &instance, started);
            true
        });
    }

    #[cfg(not(feature = "metrics"))]
    fn publish_metrics(self: &Arc<Self>) {}
}

/// One running profile; frees its place when dropped.
pub(crate) struct Permit {
    state: Arc<State>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl State {
    pub(crate) fn try_acquire(self: &Arc<Self>, limit: usize) -> Option<Permit> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                state: self.clone(),
            })
    }

    /// A fresh number for a profile; ids of background profiles are built from it.
    pub(crate) fn next_number(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A layer that turns an authorized request carrying `?__profile__` into a flamegraph of that
/// one request.
///
/// See the [module docs](super) for what it does and an example. A built layer holds its
/// checked configuration and the count of running profiles, which its clones share.
#[derive(Clone)]
pub struct ProfilerLayer {
    config: Arc<Config>,
    state: Arc<State>,
}

impl Default for ProfilerLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// Highest sampling rate accepted.
const MAX_RATE_HZ: u32 = 10_000;

impl ProfilerLayer {
    /// A profiler with every setting at its default, that profiles nothing until
    /// [`ProfilerLayer::authorize`] is given.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config::default()),
            state: Arc::new(State::default()),
        }
    }

    /// A builder for every setting; [`ProfilerBuilder::build`] checks them.
    pub fn builder() -> ProfilerBuilder {
        ProfilerBuilder {
            config: Config::default(),
            invalid: None,
        }
    }

    /// A builder that starts from the `[profiler]` section; a `secret` there authorizes with a
    /// [`super::SharedSecret`], and [`ProfilerBuilder::authorize`] can set any other rule.
    pub fn from_config(config: &ProfilerConfig) -> ProfilerBuilder {
        let mut builder = Self::builder()
            .param(config.param.clone())
            .mode(config.mode)
            .rate_hz(config.rate_hz)
            .max_duration(config.max_duration)
            .background_max_duration(config.background_max_duration)
            .max_concurrent(config.max_concurrent)
            .collapse_framework_frames(config.collapse_framework_frames)
            .output_dir(config.output_dir_or_default())
            .retain(config.retain)
            .index_path(config.index_path.clone());
        let header = |field: &str, name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::invalid(field, name, "must be a valid header name"))
        };
        match header("profiler.header", &config.header) {
            Ok(name) => builder = builder.header(name).header_trigger(config.header_trigger),
            Err(error) => builder.invalid = Some(error),
        }
        if let Some(secret) = &config.secret {
            let mut shared = super::SharedSecret::new(secret);
            if let Some(name) = &config.secret_header {
                match header("profiler.secret_header", name) {
                    Ok(name) => shared = shared.header(name),
                    Err(error) => builder.invalid = Some(error),
                }
            }
            builder = builder.authorize(shared);
        }
        builder
    }

    /// Who may profile: a closure over the request's parts, [`super::SharedSecret`],
    /// [`super::RequireExtension`], or any [`Authorize`]. Default: [`DenyAll`], so nothing
    /// is profiled until this is set.
    pub fn authorize(mut self, authorize: impl Authorize) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.authorize = Arc::new(authorize);
        config.enabled = true;
        self.state.publish_metrics();
        self
    }

    /// The trigger's query parameter.
    pub fn param(&self) -> &str {
        &self.config.param
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            param: "__profile__".to_owned(),
            header: Some(HeaderName::from_static(DEFAULT_HEADER)),
            authorize: Arc::new(DenyAll),
            mode: Mode::default(),
            // About a thousand samples per second of request: enough for a useful graph of a
            // 100 ms request, for a slowdown within a few percent (`benches/profiler.rs`); a
            // prime, so sampling does not run in lockstep with periodic work.
            rate_hz: 997,
            max_duration: Duration::from_secs(30),
            background_max_duration: Duration::from_secs(600),
            max_concurrent: 1,
            collapse: true,
            output_dir: std::env::temp_dir().join("tower-vigil-profiles"),
            retain: 50,
            index_path: "/__vigil/profiles".to_owned(),
        }
    }
}

const DEFAULT_HEADER: &str = "x-vigil-profile";

/// Configures a [`ProfilerLayer`]; made by [`ProfilerLayer::builder`]. Setters never panic:
/// [`ProfilerBuilder::build`] checks every value and names the one at fault.
///
/// ```
/// use std::time::Duration;
/// use tower_vigil::profiler::{Mode, ProfilerLayer, SharedSecret};
///
/// let profiler = ProfilerLayer::builder()
///     .authorize(SharedSecret::new("s3cret-token"))
///     .mode(Mode::CpuTime)
///     .max_duration(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(profiler.param(), "__profile__");
///
/// let error = ProfilerLayer::builder().rate_hz(0).build().unwrap_err();
/// assert_eq!(error.field(), "profiler.rate_hz");
/// # Ok::<(), tower_vigil::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ProfilerBuilder {
    config: Config,
    /// A setting from a configuration that could not even be stored.
    invalid: Option<ConfigError>,
}

impl fmt::Debug for ProfilerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_config(f.debug_struct("ProfilerBuilder"), &self.config)
    }
}

impl ProfilerBuilder {
    /// Who may profile; see [`ProfilerLayer::authorize`]. Default: nobody.
    pub fn authorize(mut self, authorize: impl Authorize) -> Self {
        self.config.authorize = Arc::new(authorize);
        self.config.enabled = true;
        self
    }

    /// The query parameter that triggers a profile. Default: `__profile__`. It is matched
    /// exactly, case-sensitively and without percent-decoding, so it must be non-empty and use
    /// only ASCII letters, digits, `-`, `.`, `_` and `~` (what a URL never encodes).
    pub fn param(mut self, name: impl Into<String>) -> Self {
        self.config.param = name.into();
        self
    }

    /// The header that triggers a profile, with the same values as the parameter.
    /// Default: `x-vigil-profile`.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config.header = Some(name);
        self
    }

    /// Whether the header triggers profiles at all. Default: true.
    pub fn header_trigger(mut self, enabled: bool) -> Self {
        if !enabled {
            self.config.header = None;
        } else if self.config.header.is_none() {
            self.config.header = Some(HeaderName::from_static(DEFAULT_HEADER));
        }
        self
    }

    /// What is measured when the trigger does not say (`=wall` or `=cpu`).
    /// Default: [`Mode::WallClock`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }

    /// Samples per second, from 1 to 10 000. Default: 997. In CPU-time mode the kernel fires
    /// CPU timers at its tick (often 250 Hz); missed periods are counted in the next sample,
    /// so the graph's proportions hold at any rate.
    pub fn rate_hz(mut self, hz: u32) -> Self {
        self.config.rate_hz = hz;
        self
    }

    /// Longest time a profile answered at once samples its request (more than zero). Past
    /// it, sampling stops, the partial profile is returned marked as such, and the request is
    /// cancelled at its next await point. Default: 30 s, within the usual proxy timeouts.
    pub fn max_duration(mut self, limit: Duration) -> Self {
        self.config.max_duration = limit;
        self
    }

    /// Longest time a background profile samples its request (more than zero).
    /// Default: 10 minutes.
    pub fn background_max_duration(mut self, limit: Duration) -> Self {
        self.config.background_max_duration = limit;
        self
    }

    /// How many profiles may run at once, from 1 to the process-wide limit of sampler
    /// sessions; more get `429 Too Many Requests`. A profile's place is freed when its request
    /// has finished, even after a partial profile. Default: 1.
    pub fn max_concurrent(mut self, limit: usize) -> Self {
        self.config.max_concurrent = limit;
        self
    }

    /// Whether runs of frames from std, the runtime and HTTP stack (tokio, hyper, tower, axum
    /// …), tower-vigil and the C library are folded into one frame each, such as
    /// `[std, tokio, hyper]`. The innermost run is always kept. Default: true, since the
    /// application's frames are what an admin looks for.
    pub fn collapse_framework_frames(mut self, collapse: bool) -> Self {
        self.config.collapse = collapse;
        self
    }

    /// Where background profiles are written. Default: `tower-vigil-profiles` in the system's
    /// temporary directory. Created when the first background profile is written.
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.output_dir = dir.into();
        self
    }

    /// How many background profiles are kept (at least 1); older ones are deleted.
    /// Default: 50.
    pub fn retain(mut self, count: usize) -> Self {
        self.config.retain = count;
        self
    }

    /// Path of the index of background profiles, served to authorized requests only (others
    /// reach the application). It starts with `/` and does not end with one.
    /// Default: `/__vigil/profiles`.
    pub fn index_path(mut self, path: impl Into<String>) -> Self {
        self.config.index_path = path.into();
        self
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<ProfilerLayer, ConfigError> {
        if let Some(error) = self.invalid {
            return Err(error);
        }
        let c = &self.config;
        let unreserved = |ch: char| ch.is_ascii_alphanumeric() || "-._~".contains(ch);
        if c.param.is_empty() || !c.param.chars().all(unreserved) {
            return Err(ConfigError::invalid(
                "profiler.param",
                &c.param,
                "must be non-empty and use only ASCII letters, digits, '-', '.', '_' and '~'",
            ));
        }
        if c.rate_hz == 0 || c.rate_hz > MAX_RATE_HZ {
            return Err(ConfigError::invalid(
                "profiler.rate_hz",
                c.rate_hz,
                format!("must be between 1 and {MAX_RATE_HZ}"),
            ));
        }
        for (field, limit) in [
            ("profiler.max_duration", c.max_duration),
            (
                "profiler.background_max_duration",
                c.background_max_duration,
            ),
        ] {
            if limit.is_zero() {
                return Err(ConfigError::invalid(
                    field,
                    "0s",
                    "must be greater than zero",
                ));
            }
        }
        let most = crate::stack::MAX_SAMPLER_SESSIONS;
        if !(1..=most).contains(&c.max_concurrent) {
            return Err(ConfigError::invalid(
                "profiler.max_concurrent",
                c.max_concurrent,
                format!("must be between 1 and {most}"),
            ));
        }
        if c.retain == 0 {
            return Err(ConfigError::invalid(
                "profiler.retain",
                0,
                "must be at least 1",
            ));
        }
        let path = &c.index_path;
        if !(path.starts_with('/') && path.len() > 1 && !path.ends_with('/')) {
            return Err(ConfigError::invalid(
                "profiler.index_path",
                path,
                "must start with '/' and not end with '/'",
            ));
        }
        let state = Arc::new(State::default());
        if self.config.enabled {
            state.publish_metrics();
        }
        Ok(ProfilerLayer {
            config: Arc::new(self.config),
            state,
        })
    }
}

fn debug_config(mut debug: fmt::DebugStruct<'_, '_>, c: &Config) -> fmt::Result {
    debug
        .field("enabled", &c.enabled)
        .field("param", &c.param)
        .field("header", &c.header)
        .field("mode", &c.mode)
        .field("rate_hz", &c.rate_hz)
        .field("max_duration", &c.max_duration)
        .field("background_max_duration", &c.background_max_duration)
        .field("max_concurrent", &c.max_concurrent)
        .field("collapse", &c.collapse)
        .field("output_dir", &c.output_dir)
        .field("retain", &c.retain)
        .field("index_path", &c.index_path)
        .finish_non_exhaustive()
}

impl fmt::Debug for ProfilerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_config(f.debug_struct("ProfilerLayer"), &self.config)
    }
}

impl<S> Layer<S> for ProfilerLayer {
    type Service = Profiler<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared {
            config: self.config.clone(),
            state: self.state.clone(),
        };
        Profiler::new(inner, Arc::new(shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_configuration_errors_naming_the_field() {
        let field = |b: ProfilerBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(
            field(ProfilerLayer::builder().rate_hz(0)),
            "profiler.rate_hz"
        );
        let error = ProfilerLayer::builder()
            .rate_hz(10_001)
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("between 1 and 10000"), "{error}");
        assert!(ProfilerLayer::builder().rate_hz(10_000).build().is_ok());
        assert_eq!(
            field(ProfilerLayer::builder().max_concurrent(crate::stack::MAX_SAMPLER_SESSIONS + 1)),
            "profiler.max_concurrent"
        );
        assert_eq!(
            field(ProfilerLayer::builder().param("a b")),
            "profiler.param"
        );
        assert_eq!(field(ProfilerLayer::builder().retain(0)), "profiler.retain");
        assert_eq!(
            field(ProfilerLayer::builder().index_path("/x/")),
            "profiler.index_path"
        );
        assert_eq!(
            field(ProfilerLayer::builder().max_duration(Duration::ZERO)),
            "profiler.max_duration"
        );
    }

    #[test]
    fn closed_until_authorized() {
        assert!(!ProfilerLayer::new().config.enabled);
        assert!(
            ProfilerLayer::new()
                .authorize(|_: &http::request::Parts| true)
                .config
                .enabled
        );
    }

    #[test]
    fn permits_are_limited_and_returned() {
        let state = Arc::new(State::default());
        let first = state.try_acquire(1).expect("first");
        assert!(state.try_acquire(1).is_none());
        drop(first);
        assert!(state.try_acquire(1).is_some());
    }
}
