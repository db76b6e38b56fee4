//! Native stacks of other threads of this process, taken with a real-time signal.
//!
//! This is the only module of the crate that contains `unsafe` code.
//!
//! # How a capture works
//!
//! 1. [`start_capture`] picks a free slot from a fixed, preallocated table, writes the target
//!    thread id and the request id into it, marks it *armed*, sends a real-time signal to
//!    exactly that thread with `tgkill`, and returns a [`PendingCapture`] at once.
//! 2. The handler, running on the target thread, claims the armed slot for its own thread id,
//!    checks that the thread is still polling the same request (a thread-local set around every
//!    poll), and walks its own stack into the slot. It does not allocate, take locks, or leave
//!    `errno` changed.
//! 3. Whoever holds the [`PendingCapture`] polls it ([`PendingCapture::try_finish`]) or waits
//!    for it ([`PendingCapture::wait_until`]); the monitor never has to block on a thread that
//!    has the signal blocked. Giving up on a slot whose handler has not started frees it at once;
//!    a slot whose handler started writing is quarantined until the handler completes, so it is
//!    never reused while the handler may still write to it. Every state change of a slot is a
//!    compare-and-swap, so two monitors in one process can never both free the same slot.
//!
//! # Signals
//!
//! Two real-time signals are used: one for captures and one for the profiler's sampler. Unless
//! set with [`set_signals`] before the first capture or profile, each is the highest signal from
//! `SIGRTMIN` to `SIGRTMAX` whose disposition is still the default (runtimes and libraries that
//! claim real-time signals tend to take the lowest ones); the capture signal is claimed first.
//! A signal that already has a handler is never taken over. If the application later installs
//! its own handler (or `SIG_IGN`) on one of them, the crate notices when a capture times out,
//! at most once a second when a capture starts, and when a sampler session starts, drains or
//! stops. It then logs once at `ERROR` (target `tower_vigil`), stops sending that signal, and
//! reports the reason in every later capture or profile instead of timing out silently.
//!
//! # Interrupted system calls (`EINTR`)
//!
//! The handlers are installed with `SA_RESTART`, but a signal still interrupts the system call
//! the target thread is blocked in. The kernel restarts `read`, `write`, `accept` and other
//! calls on files, pipes and sockets without a timeout; it never restarts `poll`, `select`,
//! `epoll_wait` or sleeps, which fail with `EINTR` (`nanosleep` returns the time left). Standard
//! library code handles this: `std::thread::sleep` sleeps again for the rest, and std's I/O
//! retries `EINTR`. Raw `libc` calls in application code (or in C libraries) must retry
//! `EINTR` themselves, as POSIX has always required. The crate's tests check both behaviours.
//!
//! # Sampling
//!
//! The profiler's sampler (`sampler.rs`) uses the same walk from the second real-time signal,
//! fired by a per-thread POSIX timer at the profiled thread, into a preallocated ring that a
//! collector thread drains.
//!
//! # Unwinder
//!
//! The walk uses the platform unwinder (`_Unwind_Backtrace` from libgcc) through
//! [`backtrace::trace_unsynchronized`]. With glibc 2.35 or later and libgcc 12 or later it finds
//! unwind tables with `_dl_find_object`, which takes no lock and does not allocate, so the walk is
//! async-signal-safe in practice; the crate's tests check the no-allocation part with a counting
//! allocator. It relies on `.eh_frame` unwind tables, which Rust emits by default even in release
//! builds, so frame pointers are not needed for the walk itself. Symbol names come from the
//! symbol table; debug info adds file and line numbers and inlined frames (see the crate docs).
#![allow(unsafe_code)]

pub(crate) mod probe;
mod sampler;
mod symbolize;

pub(crate) use sampler::{
    current_thread_cpu_clock, set_parked, CpuClock, Sample, SamplerSession,
    MAX_SESSIONS as MAX_SAMPLER_SESSIONS,
};
pub(crate) use symbolize::{leading_crate, resolve, warm_up};
pub use symbolize::{Frame, FrameOrigin};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::registry::Registration;

/// Frames kept per capture; deeper stacks are truncated at the outermost end.
pub(crate) const MAX_FRAMES: usize = 128;
/// Captures that can be pending (or quarantined) at once across the process. A thread with the
/// signal blocked holds a slot until its capture is given up, and such threads must not starve
/// the others. About 1 KiB each, static.
pub(crate) const SLOT_COUNT: usize = 64;

const FREE: u8 = 0;
/// Being filled in by `start_capture`.
const ARMING: u8 = 1;
/// Waiting for the handler.
const ARMED: u8 = 2;
/// The handler is walking into it.
const WRITING: u8 = 3;
/// Frames ready for the waiter.
const DONE: u8 = 4;
/// The thread was polling another request; ready for the waiter.
const MISMATCH: u8 = 5;
/// The waiter gave up while the handler was writing: quarantined.
const ABANDONED: u8 = 6;
/// The handler finished after its waiter gave up: free to reclaim.
const STALE: u8 = 7;

/// A slot's state and the thread it is armed for, in one word: a handler claims a slot with one
/// compare-and-swap that succeeds only while it is armed for the handler's own thread. With the
/// thread id in a field of its own, a handler could look at a stale id, claim a slot just
/// re-armed for another thread and hand it back, and that thread's handler, finding it taken
/// meanwhile, would return with the capture never answered.
const fn slot_word(state: u8, tid: i32) -> u64 {
    ((tid as u32 as u64) << 8) | state as u64
}

fn state_of(word: u64) -> u8 {
    word as u8
}

fn tid_of(word: u64) -> i32 {
    (word >> 8) as u32 as i32
}

const FREE_WORD: u64 = slot_word(FREE, 0);

struct CaptureSlot {
    /// [`slot_word`]: state and target thread.
    state: AtomicU64,
    request_id: AtomicU64,
    interrupted_pc: AtomicUsize,
    len: AtomicUsize,
    frames: [AtomicUsize; MAX_FRAMES],
}

impl CaptureSlot {
    const fn new() -> Self {
        Self {
            state: AtomicU64::new(FREE_WORD),
            request_id: AtomicU64::new(0),
            interrupted_pc: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; MAX_FRAMES],
        }
    }

    fn state(&self) -> u8 {
        state_of(self.state.load(Ordering::Acquire))
    }

    /// Takes the slot if it is free, putting it in `state` for thread `tid`.
    fn take_free(&self, state: u8, tid: i32) -> bool {
        self.state
            .compare_exchange(
                FREE_WORD,
                slot_word(state, tid),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Moves the slot from state `from` to `to`, keeping its thread (a free slot has none);
    /// false if it was not in `from` (or changed meanwhile).
    fn advance(&self, from: u8, to: u8) -> bool {
        let word = self.state.load(Ordering::Acquire);
        let next = if to == FREE {
            FREE_WORD
        } else {
            slot_word(to, tid_of(word))
        };
        state_of(word) == from
            && self
                .state
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

static SLOTS: [CaptureSlot; SLOT_COUNT] = [const { CaptureSlot::new() }; SLOT_COUNT];

/// Per-thread state read by the signal handler. Const-initialised and without a destructor, so
/// reading it in a signal handler touches only the thread's static TLS block.
struct ThreadState {
    tid: Cell<i32>,
    current_request: AtomicU64,
    /// The request of the most recent [`PollScope`] entered on this thread, so that an outer
    /// layer can learn the id an inner layer polls its request under.
    last_entered: AtomicU64,
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            tid: Cell::new(0),
            current_request: AtomicU64::new(0),
            last_entered: AtomicU64::new(0),
        }
    };
}

/// The kernel thread id of the calling thread, cached per thread.
pub(crate) fn current_tid() -> i32 {
    THREAD.with(|t| {
        let cached = t.tid.get();
        if cached != 0 {
            return cached;
        }
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        t.tid.set(tid);
        tid
    })
}

/// The request the calling thread is polling right now, or 0.
pub(crate) fn current_request() -> u64 {
    THREAD.with(|t| t.current_request.load(Ordering::Relaxed))
}

/// The request of the most recent [`PollScope`] entered on the calling thread, or 0; resets it
/// to 0.
pub(crate) fn take_last_entered() -> u64 {
    THREAD.with(|t| t.last_entered.swap(0, Ordering::Relaxed))
}

/// Marks the calling thread as polling `request_id` until dropped.
pub(crate) struct PollScope {
    previous: u64,
}

impl PollScope {
    pub(crate) fn enter(request_id: u64) -> Self {
        // Only this thread writes its state (the signal handler reads it), so a load and a
        // store do what a swap would, without a locked instruction on every poll.
        let previous = THREAD.with(|t| {
            t.last_entered.store(request_id, Ordering::Relaxed);
            let previous = t.current_request.load(Ordering::Relaxed);
            t.current_request.store(request_id, Ordering::Relaxed);
            previous
        });
        // The handler runs on this same thread; a compiler fence is enough to keep the store
        // ahead of the poll it describes.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        Self { previous }
    }
}

impl Drop for PollScope {
    fn drop(&mut self) {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        THREAD.with(|t| t.current_request.store(self.previous, Ordering::Relaxed));
    }
}

thread_local! {
    /// The innermost timeboxed request being polled on this thread, or null.
    static TIMEBOXED: Cell<*const Registration> = const { Cell::new(std::ptr::null()) };
}

/// Makes a timeboxed request the one being polled on this thread until dropped, so that its
/// `Deadline` can be built on demand ([`with_timeboxed`]). It borrows the registration for its
/// whole life and puts back the previous one when it drops; scopes are crate-internal guards,
/// entered around one poll and never leaked.
pub(crate) struct TimeboxedScope<'a> {
    previous: *const Registration,
    _registration: std::marker::PhantomData<&'a Registration>,
}

impl<'a> TimeboxedScope<'a> {
    #[inline]
    pub(crate) fn enter(registration: &'a Registration) -> Self {
        let previous = TIMEBOXED.with(|current| current.replace(registration));
        Self {
            previous,
            _registration: std::marker::PhantomData,
        }
    }
}

impl Drop for TimeboxedScope<'_> {
    #[inline]
    fn drop(&mut self) {
        TIMEBOXED.with(|current| current.set(self.previous));
    }
}

/// Runs `f` on the innermost timeboxed request being polled on this thread; `None` outside
/// every one.
pub(crate) fn with_timeboxed<R>(f: impl FnOnce(&Registration) -> R) -> Option<R> {
    let registration = TIMEBOXED.with(Cell::get);
    if registration.is_null() {
        return None;
    }
    // SAFETY: a non-null value was set by a `TimeboxedScope` that is still alive on this
    // thread: scopes nest, each puts back its predecessor when it drops, and none is leaked.
    // That scope borrows the registration, so it is neither moved nor dropped until the scope
    // ends, after this call returns; only shared references to it exist meanwhile.
    Some(f(unsafe { &*registration }))
}

/// A coarse monotonic clock in nanoseconds (`CLOCK_MONOTONIC_COARSE`: a few milliseconds of
/// resolution, a fraction of the cost of a precise read), for times kept per response frame.
pub(crate) fn coarse_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which lives on this stack.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } == 0;
    if !ok {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The time slice [`request_short_slice`] asks for: the shortest the kernel allows.
const SHORT_SLICE_NS: u64 = 100_000;

/// Asks the scheduler to give the calling thread a short time slice (a custom slice of Linux's
/// EEVDF scheduler, from Linux 6.12 on), which also lets it preempt the running thread when it
/// wakes. For the monitor: it wakes rarely and briefly, and on a saturated machine it would
/// otherwise wait up to the running thread's slice (1.4 ms by default here) for a core, which is more than a fine
/// watchdog tick. Nice and policy stay as they are. False where the kernel refuses.
pub(crate) fn request_short_slice() -> bool {
    let Some(mut attr) = this_threads_sched_attr() else {
        return false;
    };
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return false;
    }
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_flags = 0;
    attr.sched_runtime = SHORT_SLICE_NS;
    // SAFETY: the struct is fully initialised by sched_getattr and its size field is set; the
    // call only changes the calling thread's scheduling.
    let set = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    // Kernels before custom slices accept the call and ignore the slice.
    set == 0 && this_threads_sched_attr().is_some_and(|attr| attr.sched_runtime == SHORT_SLICE_NS)
}

/// The calling thread's scheduling attributes.
fn this_threads_sched_attr() -> Option<libc::sched_attr> {
    let size = std::mem::size_of::<libc::sched_attr>() as u32;
    // SAFETY: zeroed is a valid sched_attr (plain integers).
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getattr writes at most `size` bytes into the struct it is given, which
    // lives on this stack; pid 0 is the calling thread.
    let read = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size,
            0,
        )
    };
    (read == 0).then_some(attr)
}

/// Makes `request` the request this thread works for, returning the one it replaces; for
/// threads that work for a request outside its poll (see `crate::helpers`).
pub(crate) fn set_current_request(request: u64) -> u64 {
    let previous = THREAD.with(|t| {
        let previous = t.current_request.load(Ordering::Relaxed);
        t.current_request.store(request, Ordering::Relaxed);
        previous
    });
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    previous
}

/// Why a capture produced no frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaptureError {
    /// The thread finished polling the request before the signal arrived.
    PollEnded,
    /// The handler did not answer within the timeout.
    TimedOut { started_writing: bool },
    /// The thread no longer exists.
    ThreadGone,
    /// Every capture slot is busy or quarantined.
    NoFreeSlot,
    /// No real-time signal could be claimed, sending failed, or another handler took the signal
    /// over.
    Unavailable(String),
}

/// Raw frames of one capture: instruction pointers, innermost first, starting at the
/// interrupted instruction when the unwinder reached it.
#[derive(Debug, Clone)]
pub(crate) struct RawStack {
    pub(crate) ips: Vec<usize>,
    /// True when the innermost frame is the interrupted instruction itself, not a return address.
    pub(crate) first_is_exact: bool,
}

/// Signals chosen with [`set_signals`]; frozen once either signal is installed.
struct SignalChoice {
    capture: Option<libc::c_int>,
    sampler: Option<libc::c_int>,
    frozen: bool,
}

static SIGNAL_CHOICE: Mutex<SignalChoice> = Mutex::new(SignalChoice {
    capture: None,
    sampler: None,
    frozen: false,
});

/// Freezes the choice and returns it as (capture, sampler).
fn freeze_signal_choice() -> (Option<libc::c_int>, Option<libc::c_int>) {
    let mut choice = SIGNAL_CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    choice.frozen = true;
    (choice.capture, choice.sampler)
}

/// Chooses the real-time signals for captures and for the profiler's sampler; `None` keeps the
/// default, the highest real-time signal that has no handler yet.
///
/// Fails when called after the first capture or profile, when a signal is outside
/// `SIGRTMIN..=SIGRTMAX` or already has a handler, or when both are the same.
// Called by the configuration of the core, which is wired separately.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn set_signals(
    capture: Option<libc::c_int>,
    sampler: Option<libc::c_int>,
) -> Result<(), String> {
    let (first, last) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let both = [("capture", capture), ("sampler", sampler)];
    for (what, signal) in both {
        if let Some(signal) = signal.filter(|s| !(first..=last).contains(s)) {
            return Err(format!(
                "{what} signal {signal} is not a real-time signal (allowed: {first} to {last})"
            ));
        }
    }
    if let (Some(a), Some(b)) = (capture, sampler) {
        if a == b {
            return Err(format!(
                "the capture and sampler signals must differ, both are {a}"
            ));
        }
    }
    let mut choice = SIGNAL_CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    if choice.frozen {
        return Err("the signals must be set before the first stack capture or profile".to_owned());
    }
    for (what, signal) in both {
        if let Some(signal) = signal.filter(|&s| installed_handler(s) != libc::SIG_DFL) {
            return Err(format!("{what} signal {signal} already has a handler"));
        }
    }
    choice.capture = capture;
    choice.sampler = sampler;
    Ok(())
}

/// The handler currently installed for `signal` (`SIG_DFL`, `SIG_IGN` or a function).
fn installed_handler(signal: libc::c_int) -> usize {
    // SAFETY: sigaction with a null new action only reads the current disposition into a
    // zeroed, properly sized struct.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
            return libc::SIG_DFL;
        }
        current.sa_sigaction
    }
}

/// Milliseconds on a process-wide monotonic clock.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How soon [`OwnedSignal::usable`] looks at the installed handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Now,
    AtMostOncePerSecond,
}

/// A real-time signal carrying one of the crate's handlers, watched for a takeover.
#[derive(Debug)]
struct OwnedSignal {
    signal: libc::c_int,
    handler: usize,
    /// What stops working without the signal, for the messages.
    purpose: &'static str,
    lost: AtomicBool,
    /// When the next throttled check is due, in [`now_ms`] milliseconds.
    next_check_ms: AtomicU64,
}

impl OwnedSignal {
    fn new(signal: libc::c_int, handler: usize, purpose: &'static str) -> Self {
        Self {
            signal,
            handler,
            purpose,
            lost: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(now_ms() + 1000),
        }
    }

    /// The signal, unless another handler has taken it over. The handler is looked at now or at
    /// most once a second, as `check` says; once it is gone, this stays an error.
    fn usable(&self, check: Check) -> Result<libc::c_int, String> {
        if self.lost.load(Ordering::Acquire) {
            return Err(self.lost_message());
        }
        let due = match check {
            Check::Now => true,
            Check::AtMostOncePerSecond => {
                let now = now_ms();
                let next = self.next_check_ms.load(Ordering::Relaxed);
                now >= next
                    && self
                        .next_check_ms
                        .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
            }
        };
        if due && installed_handler(self.signal) != self.handler {
            let message = self.lost_message();
            if !self.lost.swap(true, Ordering::AcqRel) {
                tracing::error!(target: "tower_vigil", signal = self.signal, "{message}");
            }
            return Err(message);
        }
        Ok(self.signal)
    }

    fn lost_message(&self) -> String {
        let signal = self.signal;
        let offset = signal - libc::SIGRTMIN();
        format!(
            "signal {signal} was taken over by another handler (or SIG_IGN) after tower-vigil \
             installed its own, so {} is off; leave signal {signal} (SIGRTMIN+{offset}) to \
             tower-vigil, or configure tower-vigil to use another real-time signal",
            self.purpose
        )
    }

    #[cfg(test)]
    fn check_on_next_use(&self) {
        self.next_check_ms.store(0, Ordering::Relaxed);
    }
}

/// Installs `handler` on `chosen`, or on the highest free real-time signal other than `avoid`.
fn install_signal(
    chosen: Option<libc::c_int>,
    avoid: Option<libc::c_int>,
    handler: usize,
    also_block: &[libc::c_int],
    purpose: &'static str,
) -> Result<OwnedSignal, String> {
    let signal = match chosen {
        Some(signal) => install_on_first_free([signal], handler, also_block).ok_or_else(|| {
            format!("signal {signal}, configured for {purpose}, already has a handler")
        })?,
        None => claim_signal(handler, also_block, avoid)?,
    };
    Ok(OwnedSignal::new(signal, handler, purpose))
}

fn capture_owned() -> Result<&'static OwnedSignal, String> {
    static SIGNAL: OnceLock<Result<OwnedSignal, String>> = OnceLock::new();
    SIGNAL
        .get_or_init(|| {
            let (capture, sampler) = freeze_signal_choice();
            install_signal(
                capture,
                sampler,
                handle_capture_signal as *const () as usize,
                &[],
                "native stack capture",
            )
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The real-time signal used for captures, claimed on first use (even if another handler has
/// taken it over since; [`start_capture`] says so).
pub(crate) fn capture_signal() -> Result<libc::c_int, String> {
    capture_owned().map(|owned| owned.signal)
}

/// Installs `handler` (an `SA_SIGINFO` handler) on the highest real-time signal whose
/// disposition is still `SIG_DFL`, other than `avoid`, never over an existing handler.
/// `also_block` are signals blocked while the handler runs.
fn claim_signal(
    handler: usize,
    also_block: &[libc::c_int],
    avoid: Option<libc::c_int>,
) -> Result<libc::c_int, String> {
    let first = libc::SIGRTMIN();
    let last = libc::SIGRTMAX();
    // Search from the top: runtimes and libraries that claim real-time signals tend to take the
    // lowest ones.
    let candidates = (first..=last).rev().filter(|&s| Some(s) != avoid);
    install_on_first_free(candidates, handler, also_block).ok_or_else(|| {
        format!("every real-time signal from {first} to {last} already has a handler")
    })
}
/// Installs `handler` on the first of `candidates` whose disposition is the default one, and
/// never over a handler someone else installed.
fn install_on_first_free(
    candidates: impl IntoIterator<Item = libc::c_int>,
    handler: usize,
    also_block: &[libc::c_int],
) -> Option<libc::c_int> {
    for signal in candidates {
        // SAFETY: sigaction with a null new action only reads the current disposition into a
        // zeroed, properly sized struct.
        let current = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            current
        };
        if current.sa_sigaction != libc::SIG_DFL {
            continue;
        }
        // SAFETY: the action is fully initialised: a mask built with sigemptyset/sigaddset,
        // SA_SIGINFO with a handler of the matching three-argument signature, and SA_RESTART so
        // that interrupted system calls of the application resume instead of failing with EINTR
        // where the kernel allows it.
        let previous = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            for &blocked in also_block {
                libc::sigaddset(&mut action.sa_mask, blocked);
            }
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, &action, &mut previous) != 0 {
                continue;
            }
            previous
        };
        if previous.sa_sigaction != libc::SIG_DFL {
            // Someone claimed it between our look and our install: give it back untouched.
            // SAFETY: `previous` is the exact action the kernel returned for this signal.
            unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
            continue;
        }
        return Some(signal);
    }
    None
}

fn errno_location() -> *mut libc::c_int {
    // SAFETY: __errno_location has no preconditions and returns this thread's errno.
    unsafe { libc::__errno_location() }
}

extern "C" fn handle_capture_signal(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno_location points at this thread's errno for the thread's whole life.
    let saved_errno = unsafe { *errno_location() };
    // SAFETY: the raw gettid system call is async-signal-safe and has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let polling = THREAD
        .try_with(|t| t.current_request.load(Ordering::Relaxed))
        .unwrap_or(0);
    let armed_here = slot_word(ARMED, tid);
    for slot in &SLOTS {
        // A plain look first, so that a capture does not take every slot's cache line.
        if slot.state.load(Ordering::Relaxed) != armed_here
            || slot
                .state
                .compare_exchange(
                    armed_here,
                    slot_word(WRITING, tid),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            continue;
        }
        if slot.request_id.load(Ordering::Relaxed) != polling || polling == 0 {
            finish_writing(slot, MISMATCH);
            break;
        }
        let pc = interrupted_pc(context);
        slot.interrupted_pc.store(pc, Ordering::Relaxed);
        let mut len = 0usize;
        // SAFETY: no other thread unwinds on this thread's behalf while the handler runs; the
        // callback only stores into preallocated atomics and never panics or allocates.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                slot.frames[len].store(frame.ip() as usize, Ordering::Relaxed);
                len += 1;
                len < MAX_FRAMES
            });
        }
        slot.len.store(len, Ordering::Relaxed);
        finish_writing(slot, DONE);
        break;
    }
    // SAFETY: as above; restoring errno keeps the interrupted code's view unchanged.
    unsafe { *errno_location() = saved_errno };
}

/// Ends the handler's write with `outcome` (DONE or MISMATCH) for the waiter, or marks the slot
/// reclaimable if the waiter already gave up on it.
fn finish_writing(slot: &CaptureSlot, outcome: u8) {
    if !slot.advance(WRITING, outcome) {
        // Only the waiter changes a slot that is being written: it gave up (ABANDONED).
        slot.state.store(slot_word(STALE, 0), Ordering::Release);
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn interrupted_pc(context: *mut libc::c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t as third argument.
    unsafe {
        (*(context as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    }
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn interrupted_pc(context: *mut libc::c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t as third argument.
    unsafe { (*(context as *const libc::ucontext_t)).uc_mcontext.pc as usize }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn interrupted_pc(_context: *mut libc::c_void) -> usize {
    0
}

/// Frees the slots whose handlers finished after their waiters gave up. A compare-and-swap per
/// slot, so two monitors can never both free one.
fn reclaim_abandoned() {
    for slot in &SLOTS {
        let _ = slot.advance(STALE, FREE);
    }
}

/// A free slot, now being armed for thread `tid`.
fn claim_slot(tid: i32) -> Option<&'static CaptureSlot> {
    reclaim_abandoned();
    SLOTS.iter().find(|slot| slot.take_free(ARMING, tid))
}

/// The handler's answer, if it has come, leaving the slot free.
fn take_outcome(slot: &CaptureSlot) -> Option<Result<RawStack, CaptureError>> {
    // DONE and MISMATCH belong to the waiter alone: nobody else changes them.
    match slot.state() {
        DONE => {
            let len = slot.len.load(Ordering::Relaxed).min(MAX_FRAMES);
            let ips: Vec<usize> = slot.frames[..len]
                .iter()
                .map(|f| f.load(Ordering::Relaxed))
                .collect();
            let pc = slot.interrupted_pc.load(Ordering::Relaxed);
            slot.state.store(FREE_WORD, Ordering::Release);
            Some(Ok(trim_to_interrupted(ips, pc)))
        }
        MISMATCH => {
            slot.state.store(FREE_WORD, Ordering::Release);
            Some(Err(CaptureError::PollEnded))
        }
        _ => None,
    }
}

/// Gives up on a slot the caller waits on: frees it if no handler claimed it, quarantines it if
/// one is writing, and returns the answer if it came in meanwhile.
fn release_slot(slot: &CaptureSlot) -> Result<RawStack, CaptureError> {
    loop {
        match slot.state() {
            ARMED => {
                if slot.advance(ARMED, FREE) {
                    // A late handler finds nothing armed for it.
                    return Err(CaptureError::TimedOut {
                        started_writing: false,
                    });
                }
            }
            WRITING => {
                if slot.advance(WRITING, ABANDONED) {
                    // The handler turns it STALE when done; `reclaim_abandoned` frees it then.
                    return Err(CaptureError::TimedOut {
                        started_writing: true,
                    });
                }
            }
            _ => {
                if let Some(outcome) = take_outcome(slot) {
                    return outcome;
                }
                // Not a state a waiter's slot can be in; leave it alone rather than free it.
                return Err(CaptureError::TimedOut {
                    started_writing: true,
                });
            }
        }
    }
}

/// Starts capturing the native stack of thread `tid`, provided it is still polling
/// `request_id` when the signal lands, and returns at once.
pub(crate) fn start_capture(tid: i32, request_id: u64) -> Result<PendingCapture, CaptureError> {
    let owned = capture_owned().map_err(CaptureError::Unavailable)?;
    let signal = owned
        .usable(Check::AtMostOncePerSecond)
        .map_err(CaptureError::Unavailable)?;
    let slot = claim_slot(tid).ok_or(CaptureError::NoFreeSlot)?;
    slot.request_id.store(request_id, Ordering::Relaxed);
    slot.len.store(0, Ordering::Relaxed);
    slot.interrupted_pc.store(0, Ordering::Relaxed);
    slot.state.store(slot_word(ARMED, tid), Ordering::Release);
    let pending = PendingCapture {
        slot: Some(slot),
        outcome: None,
    };

    // SAFETY: tgkill only delivers a signal; the pid is our own, so a recycled tid can only name
    // another thread of this process, whose handler rejects the capture.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    if sent != 0 {
        let error = std::io::Error::last_os_error();
        // Dropping releases the slot (a stale signal of the same thread may hold it already).
        drop(pending);
        return Err(if error.raw_os_error() == Some(libc::ESRCH) {
            CaptureError::ThreadGone
        } else {
            CaptureError::Unavailable(format!("tgkill failed: {error}"))
        });
    }
    Ok(pending)
}

/// A capture whose signal has been sent. It can be handed to another thread; dropping it gives
/// up on the capture safely.
pub(crate) struct PendingCapture {
    slot: Option<&'static CaptureSlot>,
    /// The answer once known, for repeated calls of `try_finish`.
    outcome: Option<Result<RawStack, CaptureError>>,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<PendingCapture>();
};

impl std::fmt::Debug for PendingCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = self
            .slot
            .and_then(|slot| SLOTS.iter().position(|s| std::ptr::eq(s, slot)));
        f.debug_struct("PendingCapture")
            .field("slot", &slot)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl PendingCapture {
    /// The result once the handler has answered, `None` while it has not. Later calls return
    /// the same result.
    pub(crate) fn try_finish(&mut self) -> Option<Result<RawStack, CaptureError>> {
        if let Some(slot) = self.slot {
            self.outcome = Some(take_outcome(slot)?);
            self.slot = None;
        }
        self.outcome.clone()
    }

    /// Waits for the answer until `deadline`, then gives up (at once for a deadline already
    /// past).
    pub(crate) fn wait_until(mut self, deadline: Instant) -> Result<RawStack, CaptureError> {
        let mut pause = Duration::from_micros(20);
        loop {
            if let Some(outcome) = self.try_finish() {
                return outcome;
            }
            let now = Instant::now();
            if now >= deadline {
                return self.give_up();
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    fn give_up(&mut self) -> Result<RawStack, CaptureError> {
        let Some(slot) = self.slot.take() else {
            return self.outcome.clone().unwrap_or(Err(CaptureError::PollEnded));
        };
        let mut outcome = release_slot(slot);
        if matches!(outcome, Err(CaptureError::TimedOut { .. })) {
            // A handler that never answers may no longer be ours.
            if let Err(reason) = capture_owned().and_then(|owned| owned.usable(Check::Now)) {
                outcome = Err(CaptureError::Unavailable(reason));
            }
        }
        self.outcome = Some(outcome.clone());
        outcome
    }
}

impl Drop for PendingCapture {
    fn drop(&mut self) {
        if self.slot.is_some() {
            let _ = self.give_up();
        }
    }
}

/// Captures the native stack of thread `tid`, provided it is still polling `request_id` when
/// the signal lands, waiting up to `timeout` for the answer. The monitor never waits like this
/// (it starts captures and the reporter collects them); tests do.
#[cfg(test)]
pub(crate) fn capture(
    tid: i32,
    request_id: u64,
    timeout: Duration,
) -> Result<RawStack, CaptureError> {
    start_capture(tid, request_id)?.wait_until(Instant::now() + timeout)
}

/// Drops the handler's own frames and the signal trampoline so that the stack starts at the
/// instruction the thread was executing.
fn trim_to_interrupted(ips: Vec<usize>, pc: usize) -> RawStack {
    if pc != 0 {
        if let Some(at) = ips.iter().position(|&ip| ip == pc) {
            return RawStack {
                ips: ips[at..].to_vec(),
                first_is_exact: true,
            };
        }
    }
    RawStack {
        ips,
        first_is_exact: false,
    }
}

/// Name of a thread of this process, from procfs.
pub(crate) fn thread_name(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Blocks the capture signal on the calling thread; returns a guard that unblocks it.
    pub(crate) struct SignalBlocked(libc::c_int);

    pub(crate) fn block_capture_signal() -> SignalBlocked {
        let signal = capture_signal().expect("capture signal");
        // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only changes
        // the calling thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        SignalBlocked(signal)
    }

    impl Drop for SignalBlocked {
        fn drop(&mut self) {
            // SAFETY: as in block_capture_signal.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, self.0);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
        }
    }

    /// Puts a slot in the state a slow handler leaves it in, for the quarantine test.
    pub(crate) fn occupy_slot_as_writing(tid: i32) -> usize {
        let index = SLOTS
            .iter()
            .position(|s| s.take_free(WRITING, tid))
            .expect("free slot");
        index
    }

    pub(crate) fn abandon(index: usize) -> CaptureError {
        release_slot(&SLOTS[index]).expect_err("a writing slot has no result")
    }

    pub(crate) fn slot_is_free(index: usize) -> bool {
        SLOTS[index].state() == FREE
    }

    /// Ends a write as the handler does.
    pub(crate) fn finish_slot_write(index: usize) {
        super::finish_writing(&SLOTS[index], DONE);
    }

    pub(crate) fn reclaim() {
        reclaim_abandoned();
    }

    /// Slots free right now.
    pub(crate) fn free_slots() -> usize {
        SLOTS.iter().filter(|s| s.state() == FREE).count()
    }

    /// Installs `handler` on `signal` unconditionally, as another library would.
    pub(crate) fn install_foreign(signal: libc::c_int, handler: usize) {
        // SAFETY: a fully initialised action with a handler of the SA_SIGINFO signature.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }

    pub(crate) fn claim_first_free(
        candidates: impl IntoIterator<Item = libc::c_int>,
        handler: usize,
    ) -> Option<libc::c_int> {
        super::install_on_first_free(candidates, handler, &[])
    }

    /// The capture signal's watch, to force a check of its handler.
    pub(in crate::stack) fn capture_watch() -> &'static OwnedSignal {
        capture_owned().expect("capture signal")
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod sampler_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use sampler_tests::serial as sampler_test_serial;
#[cfg(test)]
pub(crate) use tests::count_allocations;
