//! The monitor thread: one OS thread that finds requests past their threshold.
//!
//! It is a plain thread, not a tokio task, so it keeps working when every runtime worker is
//! blocked. It sleeps until the earliest due time in the registry (rounded up to its
//! resolution, so it wakes at most once per resolution), captures what it can while the request
//! is still running, and hands the result to the reporter thread. Symbolization and the sinks
//! run there, never here, so one slow sink or a cold symbol cache cannot delay the next capture.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::registry::{Registry, Seen, Slot, NEVER};
use crate::report::{Completion, ReportKind, RequestCapture, StackStatus, ThreadInfo};
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
    pub(crate) resolution: Duration,
}

/// Counters written by the monitor thread.
#[derive(Debug, Default)]
pub(crate) struct MonitorCounters {
    pub(crate) reported: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) capture_timeouts: AtomicU64,
    pub(crate) scans: AtomicU64,
}

/// Registry, monitor and reporter of one watchdog (or one [`crate::Vigil`] stack).
pub(crate) struct Core {
    pub(crate) registry: Arc<Registry>,
    pub(crate) settings: WatchSettings,
    pub(crate) capture: RequestCapture,
    pub(crate) reporter: Reporter,
    pub(crate) counters: MonitorCounters,
}

impl Core {
    pub(crate) fn start(
        settings: WatchSettings,
        capture: RequestCapture,
        sinks: Vec<Arc<dyn Sink>>,
        queue_capacity: usize,
    ) -> std::io::Result<Arc<Self>> {
        let reporter = Reporter::start(sinks, queue_capacity)?;
        let core = Arc::new(Self {
            registry: Arc::new(Registry::new()),
            settings,
            capture,
            reporter,
            counters: MonitorCounters::default(),
        });
        if core.settings.capture_stacks {
            // Claim the signal now, so a conflict shows up at start-up in the log, not in the
            // first report.
            if let Err(reason) = stack::capture_signal() {
                tracing::warn!(target: "tower_vigil", %reason, "native stack capture unavailable");
            }
        }
        let weak = Arc::downgrade(&core);
        let registry = core.registry.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-monitor".into())
            .spawn(move || run(weak, registry))?;
        core.registry.wake.set_thread(thread.thread().clone());
        Ok(core)
    }

    pub(crate) fn threshold_ns(&self) -> u64 {
        self.settings.threshold.as_nanos() as u64
    }

    fn fire(&self, slot: &Slot, seen: Seen) {
        match seen {
            Seen::FinishedAfterStuck { id } => {
                if let Some(report) = self.completion(slot, id) {
                    if self.reporter.submit(report) {
                        self.counters.completed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.registry.release_finished(slot, id);
            }
            Seen::Running { id } | Seen::Stuck { id } => {
                if !slot.mark_stuck(id) {
                    return;
                }
                let capture = slot.reports() + 1;
                slot.add_report();
                let multiple = self.settings.recapture_at.get(capture as usize - 1);
                let next = multiple.map_or(NEVER, |&m| {
                    slot.started_ns()
                        .saturating_add(self.threshold_ns().saturating_mul(u64::from(m)))
                });
                slot.set_due_ns(next);
                let report = self.slow_report(slot, id, capture);
                if let Some(report) = report {
                    if self.reporter.submit(report) {
                        self.counters.reported.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn slow_report(&self, slot: &Slot, id: u64, capture: u32) -> Option<PendingReport> {
        let tid = slot.polling_tid();
        let (stack, thread) = if !self.settings.capture_stacks {
            (Err(StackStatus::Disabled), None)
        } else if tid == 0 {
            (Err(StackStatus::Pending), None)
        } else {
            let result = stack::capture(tid, id, self.settings.capture_timeout);
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
                        waited_ms: self.settings.capture_timeout.as_millis() as u64,
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
        core.counters.scans.fetch_add(1, Ordering::Relaxed);
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
            core.fire(&slot, seen);
            next = next.min(slot.due_ns());
        }
        let resolution = (core.settings.resolution.as_nanos() as u64).max(1);
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
