//! What the core needs to run one watchdog: its settings, its reporter and its counters.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::Request;

use crate::report::RequestCapture;
use crate::sink::reporter::Reporter;

/// Decides per request whether the watchdog ignores it.
pub(crate) type IgnorePredicate = dyn Fn(&http::request::Parts) -> bool + Send + Sync;

/// One running watchdog, shared by its layer, its services and the slots of its requests.
pub(crate) struct WatchPart {
    pub(crate) threshold: Duration,
    pub(crate) recapture_at: Vec<u32>,
    pub(crate) capture_stacks: bool,
    pub(crate) capture_timeout: Duration,
    pub(crate) resolution: Duration,
    pub(crate) reporter: Reporter,
    pub(crate) counters: WatchCounters,
    pub(crate) filter: Filter,
    pub(crate) capture: RequestCapture,
    pub(crate) long_lived_exempt: bool,
}

/// Counters written by the monitor thread for one watchdog.
#[derive(Debug, Default)]
pub(crate) struct WatchCounters {
    pub(crate) reported: AtomicU64,
    pub(crate) completed: AtomicU64,
}

/// Which requests the watchdog leaves alone.
pub(crate) struct Filter {
    pub(crate) paths: Vec<String>,
    pub(crate) predicate: Option<Arc<IgnorePredicate>>,
}

impl Filter {
    /// Whether a path pattern ignores `path`.
    pub(crate) fn ignores_path(&self, path: &str) -> bool {
        self.paths.iter().any(|pattern| glob_match(pattern, path))
    }

    /// Returns the request (taken apart and put back together only when a predicate needs
    /// its parts) and whether it is ignored.
    pub(crate) fn check<B>(&self, request: Request<B>) -> (Request<B>, bool) {
        if self.ignores_path(request.uri().path()) {
            return (request, true);
        }
        match &self.predicate {
            None => (request, false),
            Some(predicate) => {
                let (parts, body) = request.into_parts();
                let ignored = predicate(&parts);
                (Request::from_parts(parts, body), ignored)
            }
        }
    }
}

/// `*` matches any run of characters, everything else matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("/health", "/health"));
        assert!(!glob_match("/health", "/healthz"));
        assert!(glob_match("/static/*", "/static/a/b.css"));
        assert!(glob_match("*.png", "/img/x.png"));
        assert!(glob_match("/a/*/c", "/a/b/c"));
        assert!(!glob_match("/a/*/c", "/a/b/d"));
    }
}
