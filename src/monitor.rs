//! The core: one registry of in-flight requests and one monitor OS thread for the whole process.
//!
//! The monitor is a plain thread, not a tokio task, so it keeps working when every runtime
//! worker is blocked. It sleeps until the earliest due time in the registry, but wakes at most
//! once per tick (the finest resolution any layer asked for), so requests that fall due close
//! together are handled in one wake-up and a lone one is served on time. It fires thresholds
//! and deadlines, and hands what it
//! collected to the reporter thread of the watchdog concerned. It never waits on anything: a
//! stack capture is started here (one signal) and collected by the reporter, and symbolization
//! and the sinks run there too, so neither a thread that does not answer, nor a cold symbol
//! cache, nor a slow sink can delay a deadline.
//!
//! Every layer of the process shares this core. Request ids are therefore unique in the
//! process, which the signal handler relies on to never put one request's stack into another's
//! report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::error::ConfigError;
use crate::registry::{Dues, Registry, Seen, Slot, SlotRef, HARD_FIRED, NEVER, SOFT_FIRED, WEDGED};
use crate::report::{
    Completion, RenderedRequest, ReportKind, ReportTrigger, RequestCapture, RequestPhase,
    SlowRequestReport, SpanTree, StackStatus, ThreadInfo,
};
use crate::sink::reporter::{AwaitingEvidence, RawReport, StackEvidence};
use crate::stack;
use crate::timebox::part::DeadlinePart;
use crate::tracked::Parts;
use crate::watchdog::part::WatchPart;

/// The longest the monitor sleeps when nothing is due.
const IDLE_SLEEP: Duration = Duration::from_secs(1);

/// The process's registry and monitor thread.
pub(crate) struct Core {
    pub(crate) registry: &'static Registry,
}

/// The core, once its monitor thread has started. A failed start is not remembered, so a later
/// build can try again.
static CORE: Mutex<Option<Arc<Core>>> = Mutex::new(None);

impl Core {
    /// The process's core, starting its monitor thread on first use.
    pub(crate) fn global() -> Result<Arc<Core>, ConfigError> {
        let mut core = CORE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(core) = core.as_ref() {
            return Ok(core.clone());
        }
        // One registry for the process, kept by a start that failed for the next one to use.
        static REGISTRY: std::sync::OnceLock<&'static Registry> = std::sync::OnceLock::new();
        let started = Arc::new(Core {
            registry: REGISTRY.get_or_init(Registry::leak),
        });
        let registry = started.registry;
        let thread = std::thread::Builder::new()
            .name("vigil-monitor".into())
            .spawn(move || {
                let short_slice = crate::stack::request_short_slice();
                tracing::debug!(target: "tower_vigil", short_slice, "monitor thread started");
                run(registry)
            })
            .map_err(|error| {
                ConfigError::other(
                    "monitor",
                    format!("cannot start the monitor thread: {error}"),
                )
            })?;
        started.registry.wake.set_thread(thread.thread().clone());
        *core = Some(started.clone());
        Ok(started)
    }
}

/// The finest resolution any layer asked for: the monitor wakes at most once per this long, so
/// requests that fall due close together are handled in one wake-up, and the request path does
/// no rounding.
static GRANULARITY_NS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Notes a layer's resolution; the monitor wakes at most once per the finest one.
pub(crate) fn note_resolution(resolution: Duration) {
    let ns = (resolution.as_nanos() as u64).max(1);
    GRANULARITY_NS.fetch_min(ns, Ordering::Relaxed);
}

/// When each event of a request that starts at `started` falls due under `parts`.
pub(crate) fn dues(parts: &Parts, started: u64, watched: bool) -> Dues {
    let after = |d: Duration| started.saturating_add(d.as_nanos() as u64);
    Dues {
        watch: match &parts.watch {
            Some(watch) if watched => after(watch.threshold),
            _ => NEVER,
        },
        soft: parts
            .deadlines
            .as_ref()
            .map_or(NEVER, |d| after(d.soft_after)),
        hard: parts
            .deadlines
            .as_ref()
            .map_or(NEVER, |d| after(d.hard_after)),
    }
}

/// What fired a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Threshold,
    SoftDeadline,
    HardDeadline,
    Shutdown,
}

/// Reports every request of `watch` still in flight, now, on the calling thread; returns how
/// many. Each then gets a completion record when it ends.
pub(crate) fn report_in_flight(registry: &'static Registry, watch: &Arc<WatchPart>) -> usize {
    let mut in_flight = Vec::new();
    registry.scan(|slot, seen| {
        if let Seen::Running { id } | Seen::Stuck { id } = seen {
            in_flight.push((slot, id));
        }
    });
    let mut reported = 0;
    for (slot, id) in in_flight {
        let mine = slot
            .watched_parts_of(id)
            .is_some_and(|parts| parts.watches_with(watch));
        if mine && slot.mark_stuck(id) {
            report(registry, watch, &slot, id, Trigger::Shutdown);
            reported += 1;
        }
    }
    reported
}

fn fire(registry: &'static Registry, slot: &SlotRef, seen: Seen, now: u64) {
    let id = match seen {
        Seen::Running { id } | Seen::Stuck { id } | Seen::FinishedAfterStuck { id } => id,
    };
    let Some((parts, watched)) = slot.parts_and_watched(id) else {
        return;
    };
    // A request the watchdog ignores is not reported, whatever its deadlines do.
    let watch = parts.watch.as_deref().filter(|_| watched);
    match seen {
        Seen::FinishedAfterStuck { id } => {
            if let Some(watch) = watch {
                if let Some(report) = completion(registry, watch, slot, id) {
                    if watch.reporter.submit(report) {
                        watch.counters.completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            registry.release_finished(slot, id);
        }
        Seen::Running { id } | Seen::Stuck { id } => {
            if slot.current_id() != id {
                return;
            }
            if let Some(deadlines) = &parts.deadlines {
                fire_deadlines(registry, deadlines, watch, slot, id, now);
            }
            if let Some(watch) = watch {
                if slot.watch_due_ns() <= now && slot.mark_stuck(id) {
                    let capture = slot.reports() + 1;
                    let multiple = watch.recapture_at.get(capture as usize - 1);
                    let threshold = watch.threshold.as_nanos() as u64;
                    slot.set_watch_due_ns(multiple.map_or(NEVER, |&m| {
                        slot.started_ns()
                            .saturating_add(threshold.saturating_mul(u64::from(m)))
                    }));
                    report(registry, watch, slot, id, Trigger::Threshold);
                }
            }
            registry.reschedule(slot, id);
        }
    }
}

fn fire_deadlines(
    registry: &'static Registry,
    deadlines: &DeadlinePart,
    watch: Option<&WatchPart>,
    slot: &SlotRef,
    id: u64,
    now: u64,
) {
    if slot.take_soft_due(now) && slot.raise(id, SOFT_FIRED) {
        deadlines
            .counters
            .soft_cancellations
            .fetch_add(1, Ordering::Relaxed);
        crate::registry::soft_bell(id).notify_waiters();
        // Evidence before the hard deadline: what the request does when asked to stop.
        if let Some(watch) = watch {
            if slot.mark_stuck(id) {
                report(registry, watch, slot, id, Trigger::SoftDeadline);
            }
        }
    }
    if slot.take_hard_due(now) {
        let wedged = slot.polling_tid() != 0;
        let flags = if wedged {
            HARD_FIRED | WEDGED
        } else {
            HARD_FIRED
        };
        if slot.raise(id, flags) {
            // Count before waking, so the 503 never goes out ahead of its counters.
            deadlines
                .counters
                .hard_deadlines
                .fetch_add(1, Ordering::Relaxed);
            if wedged {
                deadlines.counters.wedged.fetch_add(1, Ordering::Relaxed);
                // A request whose URI was cut cannot teach its route: its copy lacks the path.
                if let Some(route) = slot.route_hash_of(id) {
                    deadlines.note_wedged_route(route);
                }
                deadlines.escalate_if_needed(now);
            }
            slot.wake();
            if let Some(watch) = watch {
                if wedged && slot.mark_stuck(id) {
                    report(registry, watch, slot, id, Trigger::HardDeadline);
                }
            }
        }
    }
}

fn report(
    registry: &'static Registry,
    watch: &WatchPart,
    slot: &SlotRef,
    id: u64,
    trigger: Trigger,
) {
    let capture = slot.reports() + 1;
    slot.add_report();
    if let Some(mut report) = slow_report(registry, watch, slot, id, capture) {
        report.trigger = match trigger {
            Trigger::Threshold => ReportTrigger::Threshold,
            Trigger::SoftDeadline => ReportTrigger::SoftDeadline,
            Trigger::HardDeadline => ReportTrigger::HardDeadline,
            Trigger::Shutdown => ReportTrigger::Shutdown,
        };
        if watch.reporter.submit(report) {
            watch.counters.reported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn slow_report(
    registry: &'static Registry,
    watch: &WatchPart,
    slot: &SlotRef,
    id: u64,
    capture: u32,
) -> Option<RawReport> {
    let tid = slot.polling_tid();
    let mut awaiting = None;
    let (evidence, thread) = if !watch.capture_stacks {
        (StackEvidence::Known(Err(StackStatus::Disabled)), None)
    } else if tid == 0 {
        // Pending: wake its task once for a probe poll; the reporter collects the findings.
        // Two ticks, but never so short that a merely busy runtime reads as a starved one.
        let waited = (2 * watch.resolution).max(Duration::from_millis(100));
        awaiting = Some(
            match crate::watchdog::awaiting::request_probe(
                registry,
                slot,
                id,
                waited,
                watch.capture_timeout,
            ) {
                Some(probe) => AwaitingEvidence::Probe(probe),
                None => AwaitingEvidence::Unavailable(
                    "the request has not waited yet (no task waker was kept for it)",
                ),
            },
        );
        (StackEvidence::Known(Err(StackStatus::Pending)), None)
    } else {
        let thread = ThreadInfo {
            tid,
            name: stack::thread_name(tid),
        };
        // Only the signal goes out here; the reporter waits for the answer.
        let evidence = StackEvidence::start(tid, id, watch.capture_timeout);
        (evidence, Some(thread))
    };
    let helpers = if watch.capture_stacks {
        crate::helpers::threads_of(id)
            .into_iter()
            .map(|tid| {
                let evidence = StackEvidence::start(tid, id, watch.capture_timeout);
                let thread = ThreadInfo {
                    tid,
                    name: stack::thread_name(tid),
                };
                (thread, evidence)
            })
            .collect()
    } else {
        Vec::new()
    };
    let spans = crate::spans::snapshot(id);
    let now = registry.clock.now_ns();
    let mut raw = describe(registry, &watch.capture, slot, id, now)?;
    raw.report.kind = ReportKind::Slow;
    raw.report.capture = capture;
    raw.report.thread = thread;
    raw.report.spans = spans;
    raw.evidence = evidence;
    raw.awaiting = awaiting;
    raw.helpers = helpers;
    Some(raw)
}

fn completion(registry: &Registry, watch: &WatchPart, slot: &Slot, id: u64) -> Option<RawReport> {
    let (finished_ns, status) = slot.finished();
    let mut raw = describe(registry, &watch.capture, slot, id, finished_ns)?;
    raw.report.kind = ReportKind::Completed;
    raw.report.capture = slot.reports();
    raw.report.completion = Some(Completion { status });
    Some(raw)
}

/// The request's description, or `None` if the slot no longer holds request `id`.
fn describe(
    registry: &Registry,
    capture: &RequestCapture,
    slot: &Slot,
    id: u64,
    at_ns: u64,
) -> Option<RawReport> {
    let occupant = slot.occupant_of(id)?;
    if !slot.watches(id) {
        return None;
    }
    let meta = &occupant.request;
    let clock = &registry.clock;
    let started = slot.started_ns();
    let RenderedRequest { uri, headers } = capture.render(meta);
    let host = headers
        .iter()
        .find(|(name, _)| name == "host")
        .map(|(_, value)| value.clone())
        .or_else(|| authority_of(&uri));
    let report = SlowRequestReport {
        kind: ReportKind::Slow,
        request_id: id,
        capture: 0,
        trigger: ReportTrigger::Threshold,
        intercepted_at: SystemTime::now(),
        method: meta.method().to_string(),
        uri,
        version: meta.version(),
        host,
        headers,
        pid: std::process::id(),
        hostname: crate::report::hostname().to_owned(),
        thread: None,
        started_at: clock.wall_at(started),
        elapsed: Duration::from_nanos(at_ns.saturating_sub(started)),
        stack_status: StackStatus::NotApplicable,
        stack: Vec::new(),
        spans: SpanTree::unknown(),
        completion: None,
        route_key: format!("{} {}", meta.method(), meta.route()),
        awaiting: None,
        helper_threads: Vec::new(),
        phase: match slot.body_progress() {
            None => RequestPhase::Handler,
            Some((body_started, bytes, frames, last)) => RequestPhase::StreamingBody {
                response_after: Duration::from_nanos(body_started.saturating_sub(started)),
                bytes,
                frames,
                since_last_frame: Duration::from_nanos(at_ns.saturating_sub(last)),
            },
        },
        // Set by the reporter, from the resolved stack.
        signature: String::new(),
        signature_text: String::new(),
    };
    Some(RawReport {
        report,
        evidence: StackEvidence::Known(Err(StackStatus::NotApplicable)),
        awaiting: None,
        helpers: Vec::new(),
    })
}

fn authority_of(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest).to_owned())
}

fn run(registry: &'static Registry) {
    let mut due: Vec<(SlotRef, Seen)> = Vec::new();
    loop {
        registry.wake.woke_up();
        let now = registry.clock.now_ns();
        let woke_at = now;
        let mut next = registry.scan_due(now, |slot, seen| due.push((slot, seen)));
        for (slot, seen) in due.drain(..) {
            fire(registry, &slot, seen, now);
            next = next.min(slot.due_ns());
        }
        registry.wake.passed();

        #[cfg(feature = "metrics")]
        crate::metrics::publish_if_due();

        let now = registry.clock.now_ns();
        if let Some(at) = crate::watchdog::awaiting::check_waiting(registry) {
            next = next.min(registry.clock.ns_at(at));
        }
        // On time for the earliest due, but never sooner than a tick after this wake-up: a
        // lone request is served when it falls due, a crowd in batches, one per tick.
        let granularity = GRANULARITY_NS.load(Ordering::Relaxed).max(1);
        let wake_at = next
            .max(woke_at.saturating_add(granularity))
            .min(now + IDLE_SLEEP.as_nanos() as u64);
        if !registry.wake.going_to_sleep(wake_at) {
            continue;
        }
        let now = registry.clock.now_ns();
        if wake_at > now {
            std::thread::park_timeout(Duration::from_nanos(wake_at - now));
        }
    }
}

impl From<stack::CaptureError> for StackStatus {
    fn from(error: stack::CaptureError) -> Self {
        match error {
            stack::CaptureError::PollEnded => StackStatus::PollEnded,
            stack::CaptureError::TimedOut { .. } => StackStatus::TimedOut { waited_ms: 0 },
            stack::CaptureError::ThreadGone => StackStatus::ThreadGone,
            stack::CaptureError::NoFreeSlot => StackStatus::Unavailable {
                reason: "every capture slot is waiting for a handler that did not finish"
                    .to_owned(),
            },
            stack::CaptureError::Unavailable(reason) => StackStatus::Unavailable { reason },
        }
    }
}
