//! What the core needs to run one timebox: its deadlines, its response and its counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::config::Isolation;

/// Words of the set of wedged routes: 4096 bits, so unrelated routes rarely share a bit.
pub(crate) const WEDGED_ROUTE_WORDS: usize = 64;
use http::{HeaderValue, StatusCode};

/// Called on the monitor thread with the number of wedged requests in the window.
pub(crate) type EscalationHook = Arc<dyn Fn(usize) + Send + Sync>;

/// When to call the escalation hook: `count` wedged requests within `within`.
#[derive(Clone)]
pub(crate) struct Escalation {
    pub(crate) count: usize,
    pub(crate) within: Duration,
    pub(crate) hook: EscalationHook,
}

/// One running timebox, shared by its layer, its services and the slots of its requests.
pub(crate) struct DeadlinePart {
    pub(crate) soft_after: Duration,
    pub(crate) hard_after: Duration,
    pub(crate) response: TimeoutResponse,
    pub(crate) isolation: Isolation,
    /// Routes that have been wedged: a bit per route hash, for adaptive isolation.
    pub(crate) wedged_routes: [AtomicU64; WEDGED_ROUTE_WORDS],
    /// Whether any bit of `wedged_routes` is set: until one is, no request needs its route's
    /// hash before the call.
    pub(crate) any_route_wedged: AtomicBool,
    pub(crate) deadline_extension: bool,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) body_deadline: bool,
    /// Websocket upgrades and event streams are released when their headers go out.
    pub(crate) long_lived_exempt: bool,
    pub(crate) escalation: Option<Escalation>,
    pub(crate) wedged_at: Mutex<VecDeque<u64>>,
    pub(crate) counters: TimeboxCounters,
}

/// The response sent at the hard deadline and when shedding.
pub(crate) struct TimeoutResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) retry_after: Option<HeaderValue>,
}

/// Counters of one timebox, written by the monitor and by the request path.
#[derive(Debug, Default)]
pub(crate) struct TimeboxCounters {
    pub(crate) soft_cancellations: AtomicU64,
    pub(crate) soft_honoured: AtomicU64,
    pub(crate) hard_deadlines: AtomicU64,
    pub(crate) hard_timeouts: AtomicU64,
    pub(crate) wedged: AtomicU64,
    pub(crate) escalations: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) body_timeouts: AtomicU64,
}

/// A hash of a request's route: method and path, with numeric segments collapsed so that
/// `/users/1` and `/users/2` are one route. One pass over the bytes: a numeric segment is
/// hashed as it comes and replaced by `#` at its end, from the hash saved at its start.
pub(crate) fn route_hash(method: &http::Method, path: &str) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let add = |hash: u64, byte: u8| (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    let mut hash = method.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, add);
    hash = add(hash, b'/');
    let mut segment_start = hash;
    let mut numeric = false;
    let mut fresh_segment = true;
    for &byte in path.as_bytes() {
        if byte == b'/' {
            if numeric {
                hash = add(segment_start, b'#');
            }
            hash = add(hash, b'/');
            (segment_start, numeric, fresh_segment) = (hash, false, true);
        } else {
            numeric = (fresh_segment || numeric) && byte.is_ascii_digit();
            fresh_segment = false;
            hash = add(hash, byte);
        }
    }
    if numeric {
        hash = add(segment_start, b'#');
    }
    hash
}

impl DeadlinePart {
    /// Whether a request to the route with this hash runs in a task of its own; `None` when
    /// its hash was not needed (no route has been wedged yet).
    pub(crate) fn isolates(&self, route: Option<u64>) -> bool {
        match self.isolation {
            Isolation::Always => true,
            Isolation::Never => false,
            Isolation::Adaptive => route.is_some_and(|route| {
                let (word, bit) = Self::route_bit(route);
                self.wedged_routes[word].load(Ordering::Relaxed) & bit != 0
            }),
        }
    }

    /// Whether a request's route is hashed before the call. Only adaptive isolation uses the
    /// hash. A watched request's copy can give it later, if the request wedges; so it is
    /// needed now only when some route has wedged (isolation is decided before the call) or
    /// when there will be no copy.
    pub(crate) fn needs_route_hash(&self, watched: bool) -> bool {
        self.isolation == Isolation::Adaptive
            && (!watched || self.any_route_wedged.load(Ordering::Relaxed))
    }

    /// Remembers that a request to the route with this hash was wedged.
    pub(crate) fn note_wedged_route(&self, route: u64) {
        let (word, bit) = Self::route_bit(route);
        self.wedged_routes[word].fetch_or(bit, Ordering::Relaxed);
        self.any_route_wedged.store(true, Ordering::Relaxed);
    }

    fn route_bit(route: u64) -> (usize, u64) {
        let bit = (route % (WEDGED_ROUTE_WORDS as u64 * 64)) as usize;
        (bit / 64, 1 << (bit % 64))
    }

    /// Notes a wedged request at `now` and calls the hook when the window is full.
    pub(crate) fn escalate_if_needed(&self, now: u64) {
        let Some(escalation) = &self.escalation else {
            return;
        };
        let mut wedged_at = self.wedged_at.lock().unwrap_or_else(|e| e.into_inner());
        wedged_at.push_back(now);
        let window = escalation.within.as_nanos() as u64;
        while wedged_at
            .front()
            .is_some_and(|&at| now.saturating_sub(at) > window)
        {
            wedged_at.pop_front();
        }
        if wedged_at.len() >= escalation.count {
            let count = wedged_at.len();
            wedged_at.clear();
            drop(wedged_at);
            self.counters.escalations.fetch_add(1, Ordering::Relaxed);
            let hook = &escalation.hook;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(count))).is_err() {
                tracing::error!(target: "tower_vigil", "timebox escalation hook panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route_hash;

    /// The definition `route_hash` computes in one pass: `/` before each segment, `#` for a
    /// numeric one.
    fn route_hash_by_segments(method: &http::Method, path: &str) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut add = |byte: u8| {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        };
        method.as_str().bytes().for_each(&mut add);
        for segment in path.split('/') {
            add(b'/');
            if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                add(b'#');
            } else {
                segment.bytes().for_each(&mut add);
            }
        }
        hash
    }

    #[test]
    fn numeric_segments_are_one_route_and_others_are_not() {
        let get = http::Method::GET;
        assert_eq!(route_hash(&get, "/users/1"), route_hash(&get, "/users/23"));
        assert_eq!(
            route_hash(&get, "/users/1/posts/9"),
            route_hash(&get, "/users/77/posts/0")
        );
        assert_ne!(route_hash(&get, "/users/1"), route_hash(&get, "/users/1a"));
        assert_ne!(route_hash(&get, "/users/1"), route_hash(&get, "/users/"));
        assert_ne!(
            route_hash(&get, "/users/1"),
            route_hash(&http::Method::POST, "/users/1")
        );
        assert_ne!(route_hash(&get, "/a/b"), route_hash(&get, "/ab"));
    }

    #[test]
    fn the_one_pass_hash_is_the_hash_by_segments() {
        let paths = [
            "",
            "/",
            "//",
            "/1",
            "1",
            "12/",
            "/api/job",
            "/users/1",
            "/users/1/",
            "/users/a1",
            "/users/1a",
            "/42/7/x",
            "/x//9",
            "/é/3",
            "/v2/items/0042",
            "/a/b/c/d/e/f/g/12345",
        ];
        for method in [
            http::Method::GET,
            http::Method::from_bytes(b"PURGE").unwrap(),
        ] {
            for path in paths {
                assert_eq!(
                    route_hash(&method, path),
                    route_hash_by_segments(&method, path),
                    "{method} {path:?}"
                );
            }
        }
    }
}
