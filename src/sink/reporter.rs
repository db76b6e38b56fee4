//! The reporter thread: turns raw captures into reports and hands them to the sinks.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::Sink;
use crate::report::{HelperThread, SlowRequestReport, StackStatus, ThreadInfo};
use crate::stack::{self, CaptureError, PendingCapture, RawStack};

/// The stack of a report: known when the monitor handed it over, or a capture whose signal
/// went out and whose answer the reporter waits for, so the monitor never waits on a thread.
pub(crate) enum StackEvidence {
    Known(Result<RawStack, StackStatus>),
    Awaited {
        capture: PendingCapture,
        deadline: Instant,
        timeout: Duration,
    },
}

impl StackEvidence {
    /// Sends the capture signal to thread `tid` for request `id` without waiting: the answer
    /// is collected by the reporter, up to `timeout` from now.
    pub(crate) fn start(tid: i32, id: u64, timeout: Duration) -> Self {
        match stack::start_capture(tid, id) {
            Ok(capture) => StackEvidence::Awaited {
                capture,
                deadline: Instant::now() + timeout,
                timeout,
            },
            Err(error) => StackEvidence::Known(Err(error.into())),
        }
    }

    pub(crate) fn resolve(self, counters: &DeliveryCounters) -> Result<RawStack, StackStatus> {
        let (capture, deadline, timeout) = match self {
            StackEvidence::Known(known) => return known,
            StackEvidence::Awaited {
                capture,
                deadline,
                timeout,
            } => (capture, deadline, timeout),
        };
        capture.wait_until(deadline).map_err(|error| match error {
            CaptureError::PollEnded => StackStatus::PollEnded,
            CaptureError::TimedOut { .. } => {
                counters.capture_timeouts.fetch_add(1, Ordering::Relaxed);
                StackStatus::TimedOut {
                    waited_ms: timeout.as_millis() as u64,
                }
            }
            CaptureError::ThreadGone => StackStatus::ThreadGone,
            CaptureError::NoFreeSlot => StackStatus::Unavailable {
                reason: "every capture slot is waiting for a handler that did not finish"
                    .to_owned(),
            },
            CaptureError::Unavailable(reason) => StackStatus::Unavailable { reason },
        })
    }
}

/// Where a pending request awaits: a probe poll to collect, or why none was asked for.
pub(crate) enum AwaitingEvidence {
    Probe(crate::watchdog::awaiting::ProbeRequest),
    Unavailable(&'static str),
}

/// A report as the monitor makes it: complete but for the stack, which the reporter resolves
/// (waits for the capture, symbolizes) so the monitor never does.
pub(crate) struct RawReport {
    /// The report; its `stack_status` and `stack` are filled in from `evidence`, and its
    /// `awaiting` from `awaiting`.
    pub(crate) report: SlowRequestReport,
    pub(crate) evidence: StackEvidence,
    /// For a pending request: the probe poll asked for, or why there is none.
    pub(crate) awaiting: Option<AwaitingEvidence>,
    /// Threads working for the request outside its poll, with their captures under way.
    pub(crate) helpers: Vec<(ThreadInfo, StackEvidence)>,
}

impl RawReport {
    fn into_report(self, counters: &DeliveryCounters) -> SlowRequestReport {
        let mut report = self.report;
        (report.stack_status, report.stack) = match self.evidence.resolve(counters) {
            Ok(raw) => (StackStatus::Captured, stack::resolve(&raw)),
            Err(status) => (status, Vec::new()),
        };
        report.awaiting = self.awaiting.map(|evidence| match evidence {
            AwaitingEvidence::Probe(probe) => probe.resolve(counters),
            AwaitingEvidence::Unavailable(reason) => crate::watchdog::awaiting::unavailable(reason),
        });
        report.helper_threads = self
            .helpers
            .into_iter()
            .map(|(thread, evidence)| {
                let (stack_status, stack) = match evidence.resolve(counters) {
                    Ok(raw) => (StackStatus::Captured, stack::resolve(&raw)),
                    Err(status) => (status, Vec::new()),
                };
                HelperThread {
                    thread,
                    stack_status,
                    stack,
                }
            })
            .collect();
        (report.signature, report.signature_text) = crate::report::signature::signature(
            &report.route_key,
            &report.stack,
            report.awaiting.as_ref(),
        );
        report
    }
}

// The monitor sets what it learns last (the trigger) on the report itself.
impl std::ops::Deref for RawReport {
    type Target = SlowRequestReport;

    fn deref(&self) -> &SlowRequestReport {
        &self.report
    }
}

impl std::ops::DerefMut for RawReport {
    fn deref_mut(&mut self) -> &mut SlowRequestReport {
        &mut self.report
    }
}

enum Message {
    Report(Box<RawReport>),
    Flush {
        deadline: std::time::Instant,
        done: mpsc::Sender<bool>,
    },
}

/// Counters kept by the reporter thread.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) sink_failures: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) capture_timeouts: AtomicU64,
}

/// The sinks of one watchdog; more can be added while it runs.
pub(crate) type SinkList = Arc<RwLock<Vec<Arc<dyn Sink>>>>;

/// Handle to the reporter thread; the thread ends when the handle is dropped and the queue is
/// drained.
pub(crate) struct Reporter {
    queue: SyncSender<Message>,
    pub(crate) counters: Arc<DeliveryCounters>,
    pub(crate) sinks: SinkList,
}

impl Reporter {
    pub(crate) fn start(sinks: Vec<Arc<dyn Sink>>, capacity: usize) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::sync_channel(capacity);
        let counters = Arc::new(DeliveryCounters::default());
        let sinks: SinkList = Arc::new(RwLock::new(sinks));
        let thread_counters = counters.clone();
        let thread_sinks = sinks.clone();
        std::thread::Builder::new()
            .name("vigil-reporter".into())
            .spawn(move || run(receiver, thread_sinks, thread_counters))?;
        Ok(Self {
            queue,
            counters,
            sinks,
        })
    }

    /// Adds a sink for every report from now on.
    pub(crate) fn add_sink(&self, sink: Arc<dyn Sink>) {
        self.sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    /// Names of the sinks, for `Debug`.
    pub(crate) fn sink_names(&self) -> Vec<String> {
        self.sinks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|sink| sink.name().to_owned())
            .collect()
    }

    /// Queues a report without blocking; a full queue drops it and counts the drop.
    pub(crate) fn submit(&self, report: RawReport) -> bool {
        match self.queue.try_send(Message::Report(Box::new(report))) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        target: "tower_vigil",
                        dropped,
                        "slow-request report queue is full; report dropped"
                    );
                }
                false
            }
        }
    }

    /// Waits until every report queued before the call has been handed to the sinks.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut message = Message::Flush { deadline, done };
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    message = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return true,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        wait.recv_timeout(left).unwrap_or(false)
    }
}

fn run(receiver: Receiver<Message>, sinks: SinkList, counters: Arc<DeliveryCounters>) {
    // Loading debug info takes from milliseconds to seconds for a large binary; do it now so
    // the first report is not late.
    let started = std::time::Instant::now();
    stack::warm_up();
    tracing::debug!(target: "tower_vigil", elapsed = ?started.elapsed(), "symbolizer warmed up");
    // The signature of each reported request, so its completion record, which has no stack to
    // sign, groups with its slow reports.
    let mut signatures: std::collections::HashMap<u64, (String, String)> =
        std::collections::HashMap::new();
    for message in receiver {
        match message {
            Message::Report(pending) => {
                let started = std::time::Instant::now();
                let mut report = pending.into_report(&counters);
                if report.kind == crate::report::ReportKind::Completed {
                    if let Some((signature, text)) = signatures.remove(&report.request_id) {
                        report.signature = signature;
                        report.signature_text = text;
                    }
                } else if report.capture <= 1 || !signatures.contains_key(&report.request_id) {
                    // A completion record lost to a full queue leaves its entry; keep it bounded.
                    if signatures.len() >= 65_536 {
                        signatures.clear();
                    }
                    signatures.insert(
                        report.request_id,
                        (report.signature.clone(), report.signature_text.clone()),
                    );
                }
                tracing::debug!(
                    target: "tower_vigil",
                    frames = report.stack.len(),
                    elapsed = ?started.elapsed(),
                    "report symbolized"
                );
                let sinks = sinks.read().unwrap_or_else(|e| e.into_inner()).clone();
                for sink in &sinks {
                    deliver(sink.as_ref(), &report, &counters);
                }
            }
            Message::Flush { deadline, done } => {
                let mut complete = true;
                let sinks = sinks.read().unwrap_or_else(|e| e.into_inner()).clone();
                for sink in &sinks {
                    let flushed =
                        std::panic::catch_unwind(AssertUnwindSafe(|| sink.flush(deadline)));
                    complete &= flushed.unwrap_or(false);
                }
                let _ = done.send(complete);
            }
        }
    }
}

fn deliver(sink: &dyn Sink, report: &SlowRequestReport, counters: &DeliveryCounters) {
    match std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(report))) {
        Ok(Ok(())) => {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(error)) => {
            counters.sink_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "tower_vigil",
                sink = sink.name(),
                request_id = report.request_id,
                %error,
                "slow-request sink failed"
            );
        }
        Err(_) => {
            counters.sink_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "tower_vigil",
                sink = sink.name(),
                request_id = report.request_id,
                "slow-request sink panicked"
            );
        }
    }
}
