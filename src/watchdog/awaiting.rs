//! Where a pending request awaits: the monitor asks for a probe poll, the reporter collects
//! what it found here, on the reporter thread, where waiting is allowed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::registry::{lock, Registry, Seen, SlotRef};
use crate::report::{
    AwaitStatus, AwaitedLeaf, Awaiting, BusyThread, Frame, FrameOrigin, LeafSignal, StackStatus,
    ThreadInfo,
};
use crate::sink::reporter::{DeliveryCounters, StackEvidence};
use crate::stack::probe::{self as probe, ProbeAnswer, ProbeFindings, RawLeaf};
use crate::stack::{self, RawStack};

/// The threads busy in one long poll when a probe went unanswered, with their captures under
/// way: taken by the monitor at the probe's deadline, collected by the reporter.
pub(crate) type BusySnapshot = Vec<(ThreadInfo, u64, f64, StackEvidence)>;

/// A probe poll the monitor asked for, and how long to wait for it.
pub(crate) struct ProbeRequest {
    pub(crate) slot: SlotRef,
    pub(crate) id: u64,
    /// When the task has had its chance to be polled.
    pub(crate) deadline: Instant,
    pub(crate) waited: Duration,
    /// Filled by the probe poll.
    pub(crate) answer: Arc<ProbeAnswer>,
    /// Filled by the monitor at the deadline when the probe was not polled.
    pub(crate) busy: Arc<Mutex<Option<BusySnapshot>>>,
}

/// Probes waiting for their deadline, checked by the monitor on every wake-up.
static WAITING: Mutex<Vec<WaitingProbe>> = Mutex::new(Vec::new());

struct WaitingProbe {
    slot: SlotRef,
    id: u64,
    deadline: Instant,
    capture_timeout: Duration,
    answer: Arc<ProbeAnswer>,
    busy: Arc<Mutex<Option<BusySnapshot>>>,
}

/// Asks for a probe poll of request `id` and returns what the reporter will wait on; `None`
/// when the request never waited (no task waker was kept for it).
pub(crate) fn request_probe(
    registry: &Registry,
    slot: &SlotRef,
    id: u64,
    waited: Duration,
    capture_timeout: Duration,
) -> Option<ProbeRequest> {
    let answer = Arc::new(ProbeAnswer::default());
    if !registry.request_probe(slot, id, answer.clone()) {
        return None;
    }
    let deadline = Instant::now() + waited;
    let busy = Arc::new(Mutex::new(None));
    lock(&WAITING).push(WaitingProbe {
        slot: *slot,
        id,
        deadline,
        capture_timeout,
        answer: answer.clone(),
        busy: busy.clone(),
    });
    Some(ProbeRequest {
        slot: *slot,
        id,
        deadline,
        waited,
        answer,
        busy,
    })
}

/// On the monitor: for every probe past its deadline and still not polled, starts captures
/// of the threads busy in a poll right now. Returns the earliest deadline still waiting.
pub(crate) fn check_waiting(registry: &Registry) -> Option<Instant> {
    let mut waiting = lock(&WAITING);
    if waiting.is_empty() {
        return None;
    }
    let now = Instant::now();
    let mut due = Vec::new();
    waiting.retain(|probe| {
        // Answered, ended, or no longer awaited by the reporter: no snapshot is owed.
        let reporter_gone = Arc::strong_count(&probe.busy) == 1;
        if reporter_gone || lock(&probe.answer).is_some() || probe.slot.current_id() != probe.id {
            return false;
        }
        if probe.deadline <= now {
            due.push((probe.id, probe.capture_timeout, probe.busy.clone()));
            return false;
        }
        true
    });
    let next = waiting.iter().map(|probe| probe.deadline).min();
    drop(waiting);
    for (id, capture_timeout, busy) in due {
        *lock(&busy) = Some(busy_threads(registry, id, capture_timeout));
    }
    next
}

/// Starts a capture of every thread inside a poll of another request, without waiting.
fn busy_threads(registry: &Registry, except: u64, capture_timeout: Duration) -> BusySnapshot {
    let mut busy = Vec::new();
    let now = registry.clock.now_ns();
    registry.scan(|slot, seen| {
        let id = match seen {
            Seen::Running { id } | Seen::Stuck { id } => id,
            Seen::FinishedAfterStuck { .. } => return,
        };
        let tid = slot.polling_tid();
        if tid == 0 || id == except {
            return;
        }
        let evidence = StackEvidence::start(tid, id, capture_timeout);
        let thread = ThreadInfo {
            tid,
            name: stack::thread_name(tid),
        };
        let elapsed = Duration::from_nanos(now.saturating_sub(slot.started_ns())).as_secs_f64();
        busy.push((thread, id, elapsed, evidence));
    });
    busy
}

/// How long the reporter waits past the deadline for the monitor's snapshot.
const SNAPSHOT_GRACE: Duration = Duration::from_secs(2);

impl ProbeRequest {
    /// Waits for the probe poll, or for the monitor's snapshot of busy threads, and turns what
    /// came into report data. Runs on the reporter thread.
    pub(crate) fn resolve(self, counters: &DeliveryCounters) -> Awaiting {
        // Each lock is let go before the answer is worked on: the monitor looks at these cells
        // and must never wait while the reporter symbolizes.
        loop {
            let answered = lock(&self.answer).take();
            if let Some(findings) = answered {
                return from_findings(findings);
            }
            let busy = lock(&self.busy).take();
            if let Some(busy) = busy {
                return not_polled(self.waited, busy, counters);
            }
            if self.slot.current_id() != self.id {
                // A probe poll answers before its request lets go of the slot: look once more.
                let answered = lock(&self.answer).take();
                if let Some(findings) = answered {
                    return from_findings(findings);
                }
                return unavailable(
                    "the request ended before its probe poll answered: it finished, its client \
                     went away, or the poll panicked",
                );
            }
            if Instant::now() >= self.deadline + SNAPSHOT_GRACE {
                return unavailable("the probe was neither polled nor checked in time");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn not_polled(waited: Duration, busy: BusySnapshot, counters: &DeliveryCounters) -> Awaiting {
    let busy_threads = busy
        .into_iter()
        .map(|(thread, request_id, request_elapsed_secs, evidence)| {
            let (stack_status, stack) = match evidence.resolve(counters) {
                Ok(raw) => (StackStatus::Captured, stack::resolve(&raw)),
                Err(status) => (status, Vec::new()),
            };
            BusyThread {
                thread,
                request_id,
                request_elapsed_secs,
                stack_status,
                stack,
            }
        })
        .collect();
    Awaiting {
        status: AwaitStatus::NotPolled {
            waited_ms: waited.as_millis() as u64,
        },
        leaves: Vec::new(),
        more_leaves: 0,
        busy_threads,
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
