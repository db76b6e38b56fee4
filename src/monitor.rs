//! The monitor thread: one OS thread that finds requests past their threshold.
//!
//! It is a plain thread, not a tokio task, so it keeps working when every runtime worker is
//! blocked. It sleeps until the earliest due time in the registry (rounded up to its
//! resolution, so it wakes at most once per resolution), captures what it can while the request
//! is still running, and hands the result to the reporter thread. Symbolization and the sinks
//! run there, never here, so one slow sink or a cold symbol cache cannot delay the next capture.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use crate::registry::{Dues, Registry, Seen, Slot, HARD_FIRED, NEVER, SOFT_FIRED, WEDGED};
use crate::report::{Completion, ReportKind, ReportTrigger, StackStatus, ThreadInfo};
use crate::sink::reporter::{PendingReport, Reporter};
use crate::sink::Sink;
use crate::stack::{self, CaptureError};

/// The longest the monitor sleeps when nothing is due, so it notices shutdown.
const IDLE_SLEEP: Duration = Duration::from_secs(1);

/// What the monitor does for a watchdog.
#[derive(Debug, Clone)]
pub(crate) struct WatchSettings {
    pub(crate) threshold: Duration,
    pub(crate) recapture_at: Vec<u32>,
    pub(crate) capture_stacks: bool,
    pub(crate) capture_timeout: Duration,
}

/// Called on the monitor thread with the number of wedged requests in the window.
pub(crate) type EscalationHook = Arc<dyn Fn(usize) + Send + Sync>;

/// What the monitor does for a timebox.
#[derive(Clone)]
pub(crate) struct DeadlineSettings {
    pub(crate) soft_after: Duration,
    pub(crate) hard_after: Duration,
    pub(crate) escalation: Option<(usize, Duration, EscalationHook)>,
}

/// The watchdog part of a core.
pub(crate) struct Watch {
    pub(crate) settings: WatchSettings,
    pub(crate) reporter: Reporter,
}

/// Counters written by the monitor thread.
#[derive(Debug, Default)]
pub(crate) struct MonitorCounters {
    pub(crate) reported: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) capture_timeouts: AtomicU64,
    pub(crate) soft_cancellations: AtomicU64,
    pub(crate) hard_deadlines: AtomicU64,
    pub(crate) wedged: AtomicU64,
    pub(crate) escalations: AtomicU64,
}

/// Registry, monitor and reporter of one layer, or of one [`crate::Vigil`] stack.
pub(crate) struct Core {
    pub(crate) registry: Arc<Registry>,
    pub(crate) watch: Option<Watch>,
    pub(crate) deadlines: Option<DeadlineSettings>,
    resolution: Duration,
    pub(crate) counters: MonitorCounters,
    wedged_at: Mutex<VecDeque<u64>>,
}

/// The watchdog part of a core's configuration: settings, sinks and the queue capacity.
pub(crate) type WatchConfig = (WatchSettings, Vec<Arc<dyn Sink>>, usize);

/// Everything a core is started with.
pub(crate) struct CoreConfig {
    pub(crate) watch: Option<WatchConfig>,
    pub(crate) deadlines: Option<DeadlineSettings>,
    pub(crate) resolution: Duration,
}

/// What fired a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Threshold,
    SoftDeadline,
    HardDeadline,
}

impl Core {
    pub(crate) fn start(config: CoreConfig) -> std::io::Result<Arc<Self>> {
        let watch = match config.watch {
            Some((settings, sinks, queue_capacity)) => {
                if settings.capture_stacks {
                    // Claim the signal now, so a conflict shows up at start-up in the log, not
                    // in the first report.
                    if let Err(reason) = stack::capture_signal() {
                        tracing::warn!(target: "tower_vigil", %reason, "native stack capture unavailable");
                    }
                }
                Some(Watch {
                    settings,
                    reporter: Reporter::start(sinks, queue_capacity)?,
                })
            }
            None => None,
        };
        let core = Arc::new(Self {
            registry: Arc::new(Registry::new()),
            watch,
            deadlines: config.deadlines,
            resolution: config.resolution,
            counters: MonitorCounters::default(),
            wedged_at: Mutex::new(VecDeque::new()),
        });
        let weak = Arc::downgrade(&core);
        let registry = core.registry.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-monitor".into())
            .spawn(move || run(weak, registry))?;
        core.registry.wake.set_thread(thread.thread().clone());
        Ok(core)
    }

    /// When each event of a request that starts at `started` falls due.
    pub(crate) fn dues(&self, started: u64, watched: bool) -> Dues {
        let after = |d: Duration| started.saturating_add(d.as_nanos() as u64);
        Dues {
            watch: match &self.watch {
                Some(watch) if watched => after(watch.settings.threshold),
                _ => NEVER,
            },
            soft: self
                .deadlines
                .as_ref()
                .map_or(NEVER, |d| after(d.soft_after)),
            hard: self
                .deadlines
                .as_ref()
                .map_or(NEVER, |d| after(d.hard_after)),
        }
    }

    fn fire(&self, slot: &Slot, seen: Seen, now: u64) {
        match seen {
            Seen::FinishedAfterStuck { id } => {
                if let Some(watch) = &self.watch {
                    if let Some(report) = self.completion(slot, id) {
                        if watch.reporter.submit(report) {
                            self.counters.completed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                self.registry.release_finished(slot, id);
            }
            Seen::Running { id } | Seen::Stuck { id } => {
                if slot.current_id() != id {
                    return;
                }
                if self.deadlines.is_some() {
                    self.fire_deadlines(slot, id, now);
                }
                if let Some(watch) = &self.watch {
                    if slot.watch_due_ns() <= now && slot.mark_stuck(id) {
                        let capture = slot.reports() + 1;
                        let multiple = watch.settings.recapture_at.get(capture as usize - 1);
                        let threshold = watch.settings.threshold.as_nanos() as u64;
                        slot.set_watch_due_ns(multiple.map_or(NEVER, |&m| {
                            slot.started_ns()
                                .saturating_add(threshold.saturating_mul(u64::from(m)))
                        }));
                        self.report(slot, id, Trigger::Threshold);
                    }
                }
                slot.reschedule();
            }
        }
    }

    fn fire_deadlines(&self, slot: &Slot, id: u64, now: u64) {
        if slot.take_soft_due(now) && slot.raise(id, SOFT_FIRED) {
            self.counters
                .soft_cancellations
                .fetch_add(1, Ordering::Relaxed);
            slot.soft_cancelled.notify_waiters();
            // Evidence before the hard deadline: what the request does when asked to stop.
            if self.watch.is_some() && slot.mark_stuck(id) {
                self.report(slot, id, Trigger::SoftDeadline);
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
                self.counters.hard_deadlines.fetch_add(1, Ordering::Relaxed);
                if wedged {
                    self.counters.wedged.fetch_add(1, Ordering::Relaxed);
                    self.escalate_if_needed(now);
                }
                slot.wake();
                if wedged && self.watch.is_some() && slot.mark_stuck(id) {
                    self.report(slot, id, Trigger::HardDeadline);
                }
            }
        }
    }

    fn escalate_if_needed(&self, now: u64) {
        let Some((after, within, hook)) =
            self.deadlines.as_ref().and_then(|d| d.escalation.as_ref())
        else {
            return;
        };
        let mut wedged_at = self.wedged_at.lock().unwrap_or_else(|e| e.into_inner());
        wedged_at.push_back(now);
        let window = within.as_nanos() as u64;
        while wedged_at
            .front()
            .is_some_and(|&at| now.saturating_sub(at) > window)
        {
            wedged_at.pop_front();
        }
        if wedged_at.len() >= *after {
            let count = wedged_at.len();
            wedged_at.clear();
            drop(wedged_at);
            self.counters.escalations.fetch_add(1, Ordering::Relaxed);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(count))).is_err() {
                tracing::error!(target: "tower_vigil", "timebox escalation hook panicked");
            }
        }
    }

    fn report(&self, slot: &Slot, id: u64, trigger: Trigger) {
        let Some(watch) = &self.watch else {
            return;
        };
        let capture = slot.reports() + 1;
        slot.add_report();
        if let Some(mut report) = self.slow_report(watch, slot, id, capture) {
            report.trigger = match trigger {
                Trigger::Threshold => ReportTrigger::Threshold,
                Trigger::SoftDeadline => ReportTrigger::SoftDeadline,
                Trigger::HardDeadline => ReportTrigger::HardDeadline,
            };
            if watch.reporter.submit(report) {
                self.counters.reported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn slow_report(
        &self,
        watch: &Watch,
        slot: &Slot,
        id: u64,
        capture: u32,
    ) -> Option<PendingReport> {
        let tid = slot.polling_tid();
        let (stack, thread) = if !watch.settings.capture_stacks {
            (Err(StackStatus::Disabled), None)
        } else if tid == 0 {
            (Err(StackStatus::Pending), None)
        } else {
            let result = stack::capture(tid, id, watch.settings.capture_timeout);
            let thread = ThreadInfo {
                tid,
                name: stack::thread_name(tid),
            };
            let stack = result.map_err(|error| match error {
                CaptureError::PollEnded => StackStatus::PollEnded,
                CaptureError::TimedOut { .. } => {
                    self.counters
                        .capture_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    StackStatus::TimedOut {
                        waited_ms: watch.settings.capture_timeout.as_millis() as u64,
                    }
                }
                CaptureError::ThreadGone => StackStatus::ThreadGone,
                CaptureError::NoFreeSlot => StackStatus::Unavailable {
                    reason: "every capture slot is waiting for a handler that did not finish"
                        .to_owned(),
                },
                CaptureError::Unavailable(reason) => StackStatus::Unavailable { reason },
            });
            (stack, Some(thread))
        };
        let spans = crate::spans::snapshot(id);
        let now = self.registry.clock.now_ns();
        let mut report = self.describe(slot, id, now)?;
        report.kind = ReportKind::Slow;
        report.capture = capture;
        report.thread = thread;
        report.stack = stack;
        report.spans = spans;
        Some(report)
    }

    fn completion(&self, slot: &Slot, id: u64) -> Option<PendingReport> {
        let (finished_ns, status) = slot.finished();
        let mut report = self.describe(slot, id, finished_ns)?;
        report.kind = ReportKind::Completed;
        report.capture = slot.reports();
        report.completion = Some(Completion { status });
        Some(report)
    }

    /// The request's description, or `None` if the slot no longer holds request `id`.
    fn describe(&self, slot: &Slot, id: u64, at_ns: u64) -> Option<PendingReport> {
        let meta = slot.meta();
        if meta.id != id {
            return None;
        }
        let clock = &self.registry.clock;
        let started = slot.started_ns();
        let headers: Vec<(String, String)> = meta.headers[..meta.header_count]
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
            .collect();
        let host = headers
            .iter()
            .find(|(name, _)| name == "host")
            .map(|(_, value)| value.clone())
            .or_else(|| authority_of(&meta.uri));
        Some(PendingReport {
            kind: ReportKind::Slow,
            request_id: id,
            capture: 0,
            intercepted_at: SystemTime::now(),
            started_at: clock.wall_at(started),
            elapsed: Duration::from_nanos(at_ns.saturating_sub(started)),
            method: meta.method.to_string(),
            uri: meta.uri.clone(),
            version: format!("{:?}", meta.version),
            route_key: format!("{} {}", meta.method, meta.route_key),
            host,
            headers,
            thread: None,
            stack: Err(StackStatus::NotCaptured),
            spans: crate::report::SpanTree {
                installed: false,
                spans: Vec::new(),
            },
            completion: None,
            trigger: ReportTrigger::Threshold,
        })
    }
}

fn authority_of(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest).to_owned())
}

impl Drop for Core {
    fn drop(&mut self) {
        // Let the monitor notice that it has nothing left to watch.
        self.registry.wake.wake_now();
    }
}

fn run(core: Weak<Core>, registry: Arc<Registry>) {
    let mut due: Vec<(Arc<Slot>, Seen)> = Vec::new();
    loop {
        registry.wake.woke_up();
        let Some(core) = core.upgrade() else {
            return;
        };
        let now = registry.clock.now_ns();
        let mut next = NEVER;
        registry.scan(|slot, seen| {
            let slot_due = slot.due_ns();
            if matches!(seen, Seen::FinishedAfterStuck { .. }) || slot_due <= now {
                due.push((slot.clone(), seen));
            } else {
                next = next.min(slot_due);
            }
        });
        for (slot, seen) in due.drain(..) {
            core.fire(&slot, seen, now);
            next = next.min(slot.due_ns());
        }
        let resolution = (core.resolution.as_nanos() as u64).max(1);
        drop(core);

        let now = registry.clock.now_ns();
        let idle_limit = now + IDLE_SLEEP.as_nanos() as u64;
        // Rounding up to the resolution batches requests that fall due close together.
        let wake_at = next
            .checked_next_multiple_of(resolution)
            .unwrap_or(NEVER)
            .min(idle_limit);
        if !registry.wake.going_to_sleep(wake_at) {
            continue;
        }
        let now = registry.clock.now_ns();
        if wake_at > now {
            std::thread::park_timeout(Duration::from_nanos(wake_at - now));
        }
    }
}
