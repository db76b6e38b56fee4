//! The delivery thread: takes mails from a bounded queue and sends them, with retries and
//! backoff, so that the reporter thread (and the other sinks) never wait for a mail server.
//!
//! One mutex guards the queue, the throttle and the flags; two condition variables wake the
//! delivery thread (new work, flush, close) and the flushers (progress). Nothing here runs on
//! the application's runtime: the thread uses lettre's blocking SMTP client.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::file::FileTransport;
use lettre::{Message, Transport as _};

use super::message::{self, Envelope, SubjectTemplate};
use super::smtp::SmtpClient;
use super::throttle::{Digest, Throttle, ThrottleConfig};
use super::{EmailError, EmailStats};
use crate::report::{ReportKind, ReportTrigger, SlowRequestReport};
use crate::sink::Sink;

/// The longest wait between two retries, however many there were.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Request ids whose first mail went out, kept to decide on follow-ups.
const MAILED_IDS: usize = 4096;

/// Why one attempt failed, and whether another could succeed.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) message: String,
    pub(crate) permanent: bool,
    /// The likely reason and its fix, when the failure is a common one.
    pub(crate) diagnosis: Option<String>,
}

impl SendError {
    pub(crate) fn transient(message: String) -> Self {
        Self {
            message,
            permanent: false,
            diagnosis: None,
        }
    }

    pub(crate) fn permanent(message: String) -> Self {
        Self {
            message,
            permanent: true,
            diagnosis: None,
        }
    }

    pub(crate) fn diagnosed(mut self, diagnosis: String) -> Self {
        self.diagnosis = Some(diagnosis);
        self
    }
}

/// Where mail goes.
pub(crate) enum Transport {
    Smtp(SmtpClient),
    EmlDir(FileTransport),
}

impl Transport {
    fn send(&self, message: &Message) -> Result<(), SendError> {
        match self {
            Transport::Smtp(client) => client.send(message),
            Transport::EmlDir(files) => files
                .send(message)
                .map(|_| ())
                .map_err(|e| SendError::transient(format!("writing the .eml file: {e}"))),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    digests_sent: AtomicU64,
    retried: AtomicU64,
    failed_to_fallback: AtomicU64,
    suppressed: AtomicU64,
    repeats_not_mailed: AtomicU64,
    queue_full: AtomicU64,
    fallback_failures: AtomicU64,
    pending: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> EmailStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EmailStats {
            sent: get(&self.sent),
            digests_sent: get(&self.digests_sent),
            retried: get(&self.retried),
            failed_to_fallback: get(&self.failed_to_fallback),
            suppressed: get(&self.suppressed),
            repeats_not_mailed: get(&self.repeats_not_mailed),
            queue_full: get(&self.queue_full),
            fallback_failures: get(&self.fallback_failures),
            pending: get(&self.pending),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Everything the delivery thread needs, fixed when it starts.
pub(crate) struct Settings {
    pub(crate) transport: Transport,
    pub(crate) from: Mailbox,
    pub(crate) to: Vec<Mailbox>,
    pub(crate) subject: SubjectTemplate,
    pub(crate) follow_up: bool,
    pub(crate) every_capture: bool,
    pub(crate) throttle: ThrottleConfig,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    pub(crate) capacity: usize,
    pub(crate) fallback: Vec<Arc<dyn Sink>>,
}

enum Content {
    Report(Box<SlowRequestReport>),
    Digest(Digest),
}

struct Outgoing {
    id: u64,
    content: Arc<Content>,
    /// Attempts made so far.
    attempts: u32,
    not_before: Instant,
}

struct State {
    /// Mails to send, oldest first; the one being sent stays at the front until its attempt
    /// ends, so a flush that runs out of time sees it.
    queue: VecDeque<Outgoing>,
    throttle: Throttle,
    /// Set while someone waits in `flush`: digests go out at once, backoff is skipped.
    flushing: usize,
    closed: bool,
    next_id: u64,
    mailed: VecDeque<u64>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    progress: Condvar,
    counters: Arc<Counters>,
    settings: Settings,
}

/// Owns the delivery thread: dropping it lets the thread finish the queue and exit.
pub(crate) struct Delivery {
    shared: Arc<Shared>,
}

impl Delivery {
    pub(crate) fn start(settings: Settings, counters: Arc<Counters>) -> std::io::Result<Self> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                throttle: Throttle::new(settings.throttle, now),
                flushing: 0,
                closed: false,
                next_id: 0,
                mailed: VecDeque::new(),
            }),
            wake: Condvar::new(),
            progress: Condvar::new(),
            counters,
            settings,
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("vigil-email".into())
            .spawn(move || run(&thread_shared))?;
        Ok(Self { shared })
    }

    /// Throttles and queues a report; never waits for the mail server. A report that finds
    /// the queue full goes to the fallback sinks at once.
    pub(crate) fn submit(&self, report: &SlowRequestReport) -> Result<(), EmailError> {
        let shared = &self.shared;
        let settings = &shared.settings;
        let now = Instant::now();
        if !settings.every_capture && !is_news(report) {
            bump(&shared.counters.repeats_not_mailed);
            return Ok(());
        }
        let mut state = shared.lock();
        if report.kind == ReportKind::Completed {
            // A follow-up only for a request whose first mail went out; it needs no throttle,
            // as there is at most one per mail sent.
            if !settings.follow_up || !state.mailed.contains(&report.request_id) {
                return Ok(());
            }
        } else if !state.throttle.admit(report, now) {
            bump(&shared.counters.suppressed);
            shared.wake.notify_one();
            return Ok(());
        }
        if state.queue.len() >= settings.capacity {
            drop(state);
            bump(&shared.counters.queue_full);
            let error = format!(
                "the mail queue is full ({} mails waiting)",
                settings.capacity
            );
            shared.fall_back(&Content::Report(Box::new(report.clone())), &error);
            return Err(EmailError::new(
                "mail queue full; the report went to the fallback sinks",
            ));
        }
        if report.kind == ReportKind::Slow && report.capture <= 1 {
            state.mailed.push_back(report.request_id);
            if state.mailed.len() > MAILED_IDS {
                state.mailed.pop_front();
            }
        }
        shared.push(&mut state, Content::Report(Box::new(report.clone())), now);
        shared.wake.notify_one();
        Ok(())
    }

    /// Sends what is queued and any pending digest, until `deadline`. What is still unsent
    /// then goes to the fallback sinks, so a stalled server cannot hold reports hostage.
    pub(crate) fn flush(&self, deadline: Instant) -> bool {
        let shared = &self.shared;
        let mut state = shared.lock();
        state.flushing += 1;
        shared.wake.notify_one();
        let done = loop {
            if state.queue.is_empty() && !state.throttle.has_digest() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            state = shared
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        state.flushing -= 1;
        if done {
            return true;
        }
        // The mail in flight goes too: a duplicate is better than a loss.
        let mut left: Vec<Arc<Content>> = state.queue.drain(..).map(|o| o.content).collect();
        if let Some(digest) = state.throttle.take_digest(Instant::now(), true) {
            left.push(Arc::new(Content::Digest(digest)));
        }
        shared.count_pending(&state);
        drop(state);
        for content in left {
            shared.fall_back(
                &content,
                "not sent before the flush deadline (the mail server is slow or stalled)",
            );
        }
        false
    }
}

/// Whether a report says something its request's earlier mails did not: it is the first
/// capture, the request was wedged at its hard deadline, or it was still running at shutdown.
/// Completion records pass here; whether they are mailed is `follow_up`'s decision.
fn is_news(report: &SlowRequestReport) -> bool {
    report.kind != ReportKind::Slow
        || report.capture <= 1
        || matches!(
            report.trigger,
            ReportTrigger::HardDeadline | ReportTrigger::Shutdown
        )
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every change is one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, state: &mut State, content: Content, now: Instant) {
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Outgoing {
            id,
            content: Arc::new(content),
            attempts: 0,
            not_before: now,
        });
        self.count_pending(state);
    }

    /// Called after every change of the queue, before any sink sees the outcome, so that
    /// counters read after a fallback delivery are final.
    fn count_pending(&self, state: &State) {
        self.counters
            .pending
            .store(state.queue.len() as u64, Ordering::Relaxed);
    }

    fn message(&self, content: &Content) -> Result<Message, EmailError> {
        let settings = &self.settings;
        let envelope = Envelope {
            from: &settings.from,
            to: &settings.to,
        };
        match content {
            Content::Report(report) => {
                message::report_message(&envelope, &settings.subject, report)
            }
            Content::Digest(digest) => message::digest_message(&envelope, digest),
        }
    }

    /// Hands a report that could not be mailed to the fallback sinks, with the reason logged
    /// next to it. A digest has no report to hand over; its text is logged instead.
    fn fall_back(&self, content: &Content, error: &str) {
        bump(&self.counters.failed_to_fallback);
        match content {
            Content::Report(report) => {
                tracing::error!(
                    target: "tower_vigil::email",
                    request_id = report.request_id,
                    %error,
                    "slow-request mail not sent; the report goes to the fallback sinks"
                );
                for sink in &self.settings.fallback {
                    let outcome =
                        std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(report)));
                    let failure = match outcome {
                        Ok(Ok(())) => continue,
                        Ok(Err(failure)) => failure.to_string(),
                        Err(_) => "panicked".to_owned(),
                    };
                    bump(&self.counters.fallback_failures);
                    tracing::error!(
                        target: "tower_vigil::email",
                        request_id = report.request_id,
                        sink = sink.name(),
                        %failure,
                        "fallback sink failed too"
                    );
                }
            }
            Content::Digest(digest) => {
                tracing::error!(
                    target: "tower_vigil::email",
                    %error,
                    digest = %digest.to_text(crate::report::hostname()),
                    "slow-request digest not mailed"
                );
            }
        }
    }
}

fn run(shared: &Shared) {
    let settings = &shared.settings;
    // Whether the last attempt failed: the first failure of each outage is logged at ERROR
    // with its reason and fix, the retries after it at WARN.
    let mut failing = false;
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        let hurry = state.flushing > 0 || state.closed;
        if let Some(digest) = state.throttle.take_digest(now, hurry) {
            // First in line, so a mail waiting for a retry does not make the digest late.
            // No attempt is in flight here: this thread is the one that makes them.
            shared.push(&mut state, Content::Digest(digest), now);
            state.queue.rotate_right(1);
        }
        let Some(head) = state.queue.front() else {
            shared.progress.notify_all();
            if state.closed {
                return;
            }
            state = match state.throttle.digest_due() {
                Some(due) => {
                    let wait = due.saturating_duration_since(now);
                    shared
                        .wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => shared.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
            continue;
        };
        if head.not_before > now && !hurry {
            let mut until = head.not_before;
            if let Some(due) = state.throttle.digest_due() {
                until = until.min(due);
            }
            let wait = until.saturating_duration_since(now);
            state = shared
                .wake
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let (id, content, attempts) = (head.id, head.content.clone(), head.attempts);
        drop(state);

        if attempts > 0 {
            bump(&shared.counters.retried);
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            shared
                .message(&content)
                .map_err(|e| SendError::permanent(e.to_string()))
                .and_then(|message| settings.transport.send(&message))
        }))
        .unwrap_or_else(|_| Err(SendError::permanent("mail delivery panicked".to_owned())));
        match &outcome {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                log_first_failure(error);
            }
            Err(_) => {}
        }

        state = shared.lock();
        // A flush that ran out of time may have taken the mail to the fallback already.
        let position = state.queue.iter().position(|o| o.id == id);
        match (outcome, position) {
            (Ok(()), position) => {
                let counter = match *content {
                    Content::Report(_) => &shared.counters.sent,
                    Content::Digest(_) => &shared.counters.digests_sent,
                };
                bump(counter);
                if let Some(position) = position {
                    state.queue.remove(position);
                }
                shared.count_pending(&state);
            }
            // Already handed to the fallback sinks by a flush that ran out of time.
            (Err(_), None) => {}
            (Err(error), Some(position)) => {
                let budget_left = attempts < settings.retries;
                if error.permanent || !budget_left {
                    state.queue.remove(position);
                    shared.count_pending(&state);
                    drop(state);
                    let why = if error.permanent {
                        error.message
                    } else {
                        format!(
                            "{} (gave up after {} attempts)",
                            error.message,
                            attempts + 1
                        )
                    };
                    shared.fall_back(&content, &why);
                    state = shared.lock();
                } else {
                    let backoff = settings
                        .backoff
                        .saturating_mul(1 << attempts.min(20))
                        .min(MAX_BACKOFF);
                    tracing::warn!(
                        target: "tower_vigil::email",
                        error = %error.message,
                        retry_in = ?backoff,
                        "slow-request mail not sent; will retry"
                    );
                    let outgoing = &mut state.queue[position];
                    outgoing.attempts += 1;
                    outgoing.not_before = Instant::now() + backoff;
                }
            }
        }
        shared.progress.notify_all();
    }
}

/// One ERROR line that says what went wrong and what to change, such as "relay 127.0.0.1:25
/// does not offer STARTTLS; for a local relay use `?tls=none`".
fn log_first_failure(error: &SendError) {
    let diagnosis = error.diagnosis.as_deref().unwrap_or(&error.message);
    tracing::error!(
        target: "tower_vigil::email",
        error = %error.message,
        permanent = error.permanent,
        "mail delivery failed: {diagnosis}"
    );
}

#[cfg(test)]
mod tests {
    use super::super::message::tests::report;
    use super::*;

    #[test]
    fn only_first_captures_and_news_are_mailed() {
        let mut r = report("/slow");
        assert!(is_news(&r), "the first capture");
        r.capture = 2;
        assert!(!is_news(&r), "a threshold recapture");
        r.trigger = ReportTrigger::SoftDeadline;
        assert!(
            !is_news(&r),
            "the soft deadline of a request already mailed"
        );
        r.trigger = ReportTrigger::HardDeadline;
        assert!(is_news(&r), "wedged at the hard deadline");
        r.trigger = ReportTrigger::Shutdown;
        assert!(is_news(&r), "still running at shutdown");
        r.trigger = ReportTrigger::Threshold;
        r.kind = ReportKind::Completed;
        assert!(is_news(&r), "completion records are follow_up's decision");
    }
}
