//! Counters where dashboards read them: the `stats()` counters of every layer, published through
//! the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), which Prometheus, StatsD
//! and OpenTelemetry exporters read.
//!
//! The monitor thread publishes once a second; nothing is added to the request path. Each
//! layer's series carry a label `instance` (`watchdog-1`, `timebox-1`, `profiler-1`,
//! `email-1`, numbered in the order the layers were built), so several layers of one process
//! stay apart.
//!
//! | name | kind | what it counts |
//! |---|---|---|
//! | `vigil_requests_in_flight` | gauge | requests registered and not finished (watchdog, timebox) |
//! | `vigil_requests_stuck` | gauge | in-flight requests past the watchdog's threshold |
//! | `vigil_reports_total` | counter | slow reports handed to the sinks |
//! | `vigil_completions_total` | counter | completion records of reported requests |
//! | `vigil_reports_dropped_total` | counter | reports dropped because the reporter queue was full |
//! | `vigil_sink_failures_total` | counter | deliveries that failed or panicked in a sink |
//! | `vigil_capture_timeouts_total` | counter | stack captures whose thread did not answer |
//! | `vigil_soft_timeouts_total` | counter | requests whose soft deadline passed |
//! | `vigil_hard_timeouts_total` | counter | requests answered with the timeout response |
//! | `vigil_wedged_total` | counter | requests with a thread still in their poll at the hard deadline |
//! | `vigil_shed_total` | counter | requests shed because they queued too long |
//! | `vigil_profiles_total` | counter | profiles started |
//! | `vigil_mails_sent_total` | counter | report mails the server accepted |
//! | `vigil_mails_suppressed_total` | counter | reports the throttle held back for a digest |
//!
//! ```
//! // Install any exporter as the global recorder; the layers publish to it.
//! use std::time::Duration;
//! use tower_vigil::watchdog::WatchdogLayer;
//!
//! let watchdog = WatchdogLayer::new(Duration::from_secs(5));
//! // `vigil_requests_in_flight{instance="watchdog-1"}` and the rest appear within a second.
//! # drop(watchdog);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Publishes one source's series; false once the source is gone.
type Publish = Box<dyn FnMut() -> bool + Send>;

static SOURCES: Mutex<Vec<Publish>> = Mutex::new(Vec::new());
static LAST: Mutex<Option<Instant>> = Mutex::new(None);
const EVERY: Duration = Duration::from_secs(1);

/// A fresh `instance` label for a layer of `kind`.
pub(crate) fn instance(kind: &str) -> String {
    static NEXT: [AtomicUsize; 4] = [const { AtomicUsize::new(1) }; 4];
    let slot = match kind {
        "watchdog" => 0,
        "timebox" => 1,
        "profiler" => 2,
        _ => 3,
    };
    format!("{kind}-{}", NEXT[slot].fetch_add(1, Ordering::Relaxed))
}

/// Adds a source of series, published from now on.
pub(crate) fn register(publish: impl FnMut() -> bool + Send + 'static) {
    SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(publish));
}

/// Called by the monitor on every wake-up: publishes every source once a second.
pub(crate) fn publish_if_due() {
    let now = Instant::now();
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < EVERY) {
            return;
        }
        *last = Some(now);
    }
    SOURCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain_mut(|publish| publish());
}

/// Sets a gauge of `instance`.
pub(crate) fn gauge(name: &'static str, instance: &str, value: u64) {
    metrics::gauge!(name, "instance" => instance.to_owned()).set(value as f64);
}

/// Sets a counter of `instance` to its absolute value.
pub(crate) fn counter(name: &'static str, instance: &str, value: u64) {
    metrics::counter!(name, "instance" => instance.to_owned()).absolute(value);
}
