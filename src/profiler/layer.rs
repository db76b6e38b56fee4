use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderName;
use tower_layer::Layer;

use super::authorize::{Authorize, DenyAll};
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

pub use crate::error::ConfigError;

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
/// See the [module docs](super) for what it does and an example. The layer holds
/// configuration and the count of running profiles, which its clones share.
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

impl ProfilerLayer {
    /// Default query parameter that triggers a profile: `__profile__`.
    pub const DEFAULT_PARAM: &'static str = "__profile__";
    /// Default header that triggers a profile: `x-vigil-profile`.
    pub const DEFAULT_HEADER: &'static str = "x-vigil-profile";
    /// Default sampling rate, 997 Hz: about a thousand samples per second of request, enough
    /// for a useful graph of a 100 ms request, for a slowdown of a CPU-bound request within a
    /// few percent (`benches/profiler.rs`); a prime, so that sampling does not run in lockstep
    /// with periodic work at round rates.
    pub const DEFAULT_RATE_HZ: u32 = 997;
    /// Highest sampling rate accepted.
    pub const MAX_RATE_HZ: u32 = 10_000;
    /// Default longest time a profile samples a request answered at once: 30 s, which is
    /// within the usual proxy timeouts.
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(30);
    /// Default longest time a background profile samples its request: 10 minutes.
    pub const DEFAULT_BACKGROUND_MAX_DURATION: Duration = Duration::from_secs(600);
    /// Default number of profiles that may run at once: 1.
    pub const DEFAULT_MAX_CONCURRENT: usize = 1;
    /// Most profiles that can run at once in one process, whatever the configuration.
    pub const MAX_CONCURRENT_LIMIT: usize = crate::stack::MAX_SAMPLER_SESSIONS;
    /// Default number of background profiles kept in the output directory: 50.
    pub const DEFAULT_RETAIN: usize = 50;
    /// Default path of the index of background profiles: `/__vigil/profiles`.
    pub const DEFAULT_INDEX_PATH: &'static str = "/__vigil/profiles";

    /// A profiler that profiles nothing until [`ProfilerLayer::authorize`] is given.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                enabled: false,
                param: Self::DEFAULT_PARAM.to_owned(),
                header: Some(HeaderName::from_static(Self::DEFAULT_HEADER)),
                authorize: Arc::new(DenyAll),
                mode: Mode::default(),
                rate_hz: Self::DEFAULT_RATE_HZ,
                max_duration: Self::DEFAULT_MAX_DURATION,
                background_max_duration: Self::DEFAULT_BACKGROUND_MAX_DURATION,
                max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
                collapse: true,
                output_dir: std::env::temp_dir().join("tower-vigil-profiles"),
                retain: Self::DEFAULT_RETAIN,
                index_path: Self::DEFAULT_INDEX_PATH.to_owned(),
            }),
            state: Arc::new(State::default()),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Who may profile: a closure over the request's parts, [`super::SharedSecret`],
    /// [`super::RequireExtension`], or any [`Authorize`]. Default: [`DenyAll`], so nothing
    /// is profiled until this is set.
    pub fn authorize(mut self, authorize: impl Authorize) -> Self {
        self.config().authorize = Arc::new(authorize);
        self.config().enabled = true;
        self
    }

    /// The query parameter that triggers a profile. Default: [`ProfilerLayer::DEFAULT_PARAM`].
    /// It is matched exactly, case-sensitively and without percent-decoding.
    ///
    /// # Panics
    ///
    /// If `name` is empty or has a character other than ASCII letters, digits, `-`, `.`, `_`
    /// and `~` (the characters a URL never needs to encode).
    pub fn param(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        assert!(
            !name.is_empty() && name.chars().all(unreserved),
            "ProfilerLayer::param: {name:?} must be non-empty and use only ASCII letters, digits, '-', '.', '_' and '~'"
        );
        self.config().param = name;
        self
    }

    /// The header that triggers a profile, with the same values as the parameter.
    /// Default: [`ProfilerLayer::DEFAULT_HEADER`].
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config().header = Some(name);
        self
    }

    /// Whether the header triggers profiles at all. Default: true.
    pub fn header_trigger(mut self, enabled: bool) -> Self {
        if !enabled {
            self.config().header = None;
        } else if self.config.header.is_none() {
            self.config().header = Some(HeaderName::from_static(Self::DEFAULT_HEADER));
        }
        self
    }

    /// What is measured when the trigger does not say (`=wall` or `=cpu`).
    /// Default: [`Mode::WallClock`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config().mode = mode;
        self
    }

    /// Samples per second. Default: [`ProfilerLayer::DEFAULT_RATE_HZ`]. In CPU-time mode the
    /// kernel fires CPU timers at its tick (often 250 Hz); missed periods are counted in the
    /// next sample, so the graph's proportions hold at any rate.
    ///
    /// # Panics
    ///
    /// If `hz` is 0 or above [`ProfilerLayer::MAX_RATE_HZ`]; see
    /// [`ProfilerLayer::try_rate_hz`].
    pub fn rate_hz(self, hz: u32) -> Self {
        self.try_rate_hz(hz)
            .unwrap_or_else(|error| panic!("ProfilerLayer::rate_hz: {error}"))
    }

    /// Like [`ProfilerLayer::rate_hz`], returning an error for a rate out of range.
    pub fn try_rate_hz(mut self, hz: u32) -> Result<Self, ConfigError> {
        if hz == 0 || hz > Self::MAX_RATE_HZ {
            return Err(ConfigError::new(format!(
                "sampling rate must be between 1 and {} Hz, got {hz}",
                Self::MAX_RATE_HZ
            )));
        }
        self.config().rate_hz = hz;
        Ok(self)
    }

    /// Longest time a profile answered at once samples its request. Past it, sampling stops,
    /// the partial profile is returned marked as such, and the request is cancelled at its next
    /// await point. Default: [`ProfilerLayer::DEFAULT_MAX_DURATION`].
    ///
    /// # Panics
    ///
    /// If `limit` is zero.
    pub fn max_duration(mut self, limit: Duration) -> Self {
        assert!(
            !limit.is_zero(),
            "ProfilerLayer::max_duration must be greater than zero"
        );
        self.config().max_duration = limit;
        self
    }

    /// Longest time a background profile samples its request.
    /// Default: [`ProfilerLayer::DEFAULT_BACKGROUND_MAX_DURATION`].
    ///
    /// # Panics
    ///
    /// If `limit` is zero.
    pub fn background_max_duration(mut self, limit: Duration) -> Self {
        assert!(
            !limit.is_zero(),
            "ProfilerLayer::background_max_duration must be greater than zero"
        );
        self.config().background_max_duration = limit;
        self
    }

    /// How many profiles may run at once; more get `429 Too Many Requests`. A profile's place
    /// is freed when its request has finished, even after a partial profile.
    /// Default: [`ProfilerLayer::DEFAULT_MAX_CONCURRENT`].
    ///
    /// # Panics
    ///
    /// If `limit` is 0 or above [`ProfilerLayer::MAX_CONCURRENT_LIMIT`].
    pub fn max_concurrent(mut self, limit: usize) -> Self {
        assert!(
            (1..=Self::MAX_CONCURRENT_LIMIT).contains(&limit),
            "ProfilerLayer::max_concurrent must be between 1 and {}, got {limit}",
            Self::MAX_CONCURRENT_LIMIT
        );
        self.config().max_concurrent = limit;
        self
    }

    /// Whether runs of frames from std, the runtime and HTTP stack (tokio, hyper, tower, axum
    /// …), tower-vigil and the C library are folded into one frame each, such as
    /// `[std, tokio, hyper]`. The innermost run is always kept. Default: true, since the
    /// application's frames are what an admin looks for.
    pub fn collapse_framework_frames(mut self, collapse: bool) -> Self {
        self.config().collapse = collapse;
        self
    }

    /// Where background profiles are written. Default: `tower-vigil-profiles` in the system's
    /// temporary directory. Created when the first background profile is written.
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config().output_dir = dir.into();
        self
    }

    /// How many background profiles are kept; older ones are deleted.
    /// Default: [`ProfilerLayer::DEFAULT_RETAIN`].
    ///
    /// # Panics
    ///
    /// If `count` is zero.
    pub fn retain(mut self, count: usize) -> Self {
        assert!(count > 0, "ProfilerLayer::retain must be at least 1");
        self.config().retain = count;
        self
    }

    /// Path of the index of background profiles, served to authorized requests only (others
    /// reach the application). Default: [`ProfilerLayer::DEFAULT_INDEX_PATH`].
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/` or ends with `/`.
    pub fn index_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        assert!(
            path.starts_with('/') && path.len() > 1 && !path.ends_with('/'),
            "ProfilerLayer::index_path: {path:?} must start with '/' and not end with '/'"
        );
        self.config().index_path = path;
        self
    }
}

impl fmt::Debug for ProfilerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("ProfilerLayer")
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
}

impl<S> Layer<S> for ProfilerLayer {
    type Service = Profiler<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Profiler::new(inner, self.config.clone(), self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_out_of_range_are_configuration_errors() {
        assert!(ProfilerLayer::new().try_rate_hz(0).is_err());
        let error = ProfilerLayer::new().try_rate_hz(10_001).unwrap_err();
        assert!(error.to_string().contains("between 1 and 10000"), "{error}");
        assert!(ProfilerLayer::new().try_rate_hz(10_000).is_ok());
    }

    #[test]
    #[should_panic(expected = "sampling rate must be between")]
    fn the_infallible_builder_panics_on_a_zero_rate() {
        let _ = ProfilerLayer::new().rate_hz(0);
    }

    #[test]
    #[should_panic(expected = "max_concurrent")]
    fn concurrency_is_bounded() {
        let _ = ProfilerLayer::new().max_concurrent(ProfilerLayer::MAX_CONCURRENT_LIMIT + 1);
    }

    #[test]
    #[should_panic(expected = "must be non-empty")]
    fn parameter_names_need_no_encoding() {
        let _ = ProfilerLayer::new().param("a b");
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
