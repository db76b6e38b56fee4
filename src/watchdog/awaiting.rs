//! Where a pending request awaits: the monitor asks for a probe poll, the reporter collects
//! what it found here, on the reporter thread, where waiting is allowed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::registry::{Registry, Seen, Slot};
use crate::report::{
    AwaitStatus, AwaitedLeaf, Awaiting, BusyThread, Frame, FrameOrigin, LeafSignal, StackStatus,
    ThreadInfo,
};
use crate::stack::probe::{self as probe, ProbeFindings, RawLeaf};
use crate::stack::{self, RawStack};

/// A probe poll the monitor asked for, and how long to wait for it.
pub(crate) struct ProbeRequest {
    pub(crate) slot: Arc<Slot>,
    pub(crate) id: u64,
    pub(crate) registry: Arc<Registry>,
    /// When the task has had its chance to be polled.
    pub(crate) deadline: Instant,
    pub(crate) waited: Duration,
    pub(crate) capture_timeout: Duration,
}

impl ProbeRequest {
    /// Waits for the probe poll (up to the deadline) and turns what it found into report data.
    pub(crate) fn resolve(self) -> Awaiting {
        loop {
            if let Some(findings) = self.slot.take_probe_findings(self.id) {
                return from_findings(findings);
            }
            if Instant::now() >= self.deadline {
                return self.not_polled();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Nobody polled the woken task: show who keeps the workers busy.
    fn not_polled(&self) -> Awaiting {
        let mut busy = Vec::new();
        let clock = &self.registry.clock;
        self.registry.scan(|slot, seen| {
            let id = match seen {
                Seen::Running { id } | Seen::Stuck { id } => id,
                Seen::FinishedAfterStuck { .. } => return,
            };
            let tid = slot.polling_tid();
            if tid != 0 && id != self.id {
                busy.push((tid, id, slot.started_ns(), slot.clone()));
            }
        });
        let now = clock.now_ns();
        let busy_threads = busy
            .into_iter()
            .map(|(tid, id, started, slot)| {
                let capture = || {
                    stack::start_capture(tid, id).and_then(|capture| {
                        capture.wait_until(Instant::now() + self.capture_timeout)
                    })
                };
                let mut result = capture();
                // A capture racing the monitor's own capture of the same thread can miss its
                // poll; the registry says whether the thread still polls the request.
                if matches!(result, Err(stack::CaptureError::PollEnded))
                    && slot.polling_tid() == tid
                    && slot.current_id() == id
                {
                    result = capture();
                }
                let (stack_status, stack) = match result {
                    Ok(raw) => (StackStatus::Captured, stack::resolve(&raw)),
                    Err(error) => (StackStatus::from(error), Vec::new()),
                };
                BusyThread {
                    thread: ThreadInfo {
                        tid,
                        name: stack::thread_name(tid),
                    },
                    request_id: id,
                    request_elapsed_secs: Duration::from_nanos(now.saturating_sub(started))
                        .as_secs_f64(),
                    stack_status,
                    stack,
                }
            })
            .collect();
        Awaiting {
            status: AwaitStatus::NotPolled {
                waited_ms: self.waited.as_millis() as u64,
            },
            leaves: Vec::new(),
            more_leaves: 0,
            busy_threads,
        }
    }
}

/// Report data for a request whose awaiting could not be probed.
pub(crate) fn unavailable(reason: &str) -> Awaiting {
    Awaiting {
        status: AwaitStatus::Unavailable {
            reason: reason.to_owned(),
        },
        leaves: Vec::new(),
        more_leaves: 0,
        busy_threads: Vec::new(),
    }
}

fn from_findings(findings: ProbeFindings) -> Awaiting {
    let leaves: Vec<AwaitedLeaf> = findings.leaves.iter().map(leaf).collect();
    let status = if !leaves.is_empty() {
        AwaitStatus::Found
    } else if findings.completed {
        AwaitStatus::Finished
    } else {
        AwaitStatus::Unknown {
            reason: "no future kept or woke the waker during the probe poll; the request waits \
                     on something that does not use wakers (a future that returns Pending \
                     without registering, or polling by a timer of its own)"
                .to_owned(),
        }
    };
    Awaiting {
        status,
        leaves,
        more_leaves: findings.more_leaves,
        busy_threads: Vec::new(),
    }
}

fn is_probe_machinery(frame: &Frame) -> bool {
    frame.function.as_deref().is_some_and(|name| {
        name.contains("tower_vigil::stack::probe")
            || name.starts_with("backtrace::")
            || name.contains("core::task::wake::")
    })
}

fn leaf(raw: &RawLeaf) -> AwaitedLeaf {
    let frames = stack::resolve(&RawStack {
        ips: raw.ips.clone(),
        first_is_exact: false,
    });
    // Innermost first: the probe's own frames, the leaf, the async fns, then the request's
    // future and the runtime, which end at the probe poll.
    let start = frames
        .iter()
        .rposition(|frame| {
            is_probe_machinery(frame)
                && !frame
                    .function
                    .as_deref()
                    .is_some_and(|name| name.contains("poll_probed"))
        })
        .map_or(0, |at| at + 1);
    let end = frames
        .iter()
        .position(|frame| {
            frame
                .function
                .as_deref()
                .is_some_and(|name| name.contains("poll_probed"))
        })
        .unwrap_or(frames.len())
        .max(start);
    let chain: Vec<Frame> = frames[start..end].to_vec();
    let first_app = chain.iter().position(|f| f.origin == FrameOrigin::App);
    let leaf = match first_app {
        Some(at) if at > 0 => chain[at - 1].function.clone(),
        _ => chain.first().and_then(|f| f.function.clone()),
    };
    AwaitedLeaf {
        signal: match raw.signal {
            probe::LeafSignal::Cloned => LeafSignal::Waits,
            probe::LeafSignal::Woke => LeafSignal::WakesItself,
        },
        leaf,
        chain,
        truncated: raw.truncated,
    }
}
