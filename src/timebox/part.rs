//! What the core needs to run one timebox: its deadlines, its response and its counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
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
    pub(crate) resolution: Duration,
    pub(crate) response: TimeoutResponse,
    pub(crate) isolate: bool,
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

impl DeadlinePart {
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
