//! Native stacks of other threads of this process, taken with a real-time signal.
//!
//! This is the only module of the crate that contains `unsafe` code.
//!
//! # How a capture works
//!
//! 1. The monitor thread picks a free slot from a fixed, preallocated table, writes the target
//!    thread id and the request id into it and marks it *armed*.
//! 2. It sends a real-time signal to exactly that thread with `tgkill`.
//! 3. The handler, running on the target thread, claims the armed slot for its own thread id,
//!    checks that the thread is still polling the same request (a thread-local set around every
//!    poll), and walks its own stack into the slot. It does not allocate, take locks, or leave
//!    `errno` changed.
//! 4. The monitor waits for the slot with a timeout. A slot whose handler started writing but
//!    did not finish in time is quarantined until the handler completes, so it is never reused
//!    while the handler may still write to it.
//!
//! # Sampling
//!
//! The profiler's sampler (`sampler.rs`) uses the same walk from a second real-time signal of
//! its own, fired by a per-thread POSIX timer at the profiled thread, into a preallocated ring
//! that a collector thread drains.
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

mod sampler;
mod symbolize;

pub(crate) use sampler::{
    current_thread_cpu_clock, set_parked, CpuClock, Sample, SamplerSession,
    MAX_SESSIONS as MAX_SAMPLER_SESSIONS,
};
pub(crate) use symbolize::{leading_crate, resolve, warm_up};
pub use symbolize::{Frame, FrameOrigin};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Frames kept per capture; deeper stacks are truncated at the outermost end.
pub(crate) const MAX_FRAMES: usize = 128;
/// Captures that can be in progress (or quarantined) at once.
const SLOT_COUNT: usize = 8;

const FREE: u8 = 0;
const ARMING: u8 = 1;
const ARMED: u8 = 2;
const WRITING: u8 = 3;
const DONE: u8 = 4;
const MISMATCH: u8 = 5;

struct CaptureSlot {
    state: AtomicU8,
    /// Set when the monitor gave up on a handler that had already started writing.
    abandoned: AtomicBool,
    target_tid: AtomicI32,
    request_id: AtomicU64,
    interrupted_pc: AtomicUsize,
    len: AtomicUsize,
    frames: [AtomicUsize; MAX_FRAMES],
}

impl CaptureSlot {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(FREE),
            abandoned: AtomicBool::new(false),
            target_tid: AtomicI32::new(0),
            request_id: AtomicU64::new(0),
            interrupted_pc: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; MAX_FRAMES],
        }
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
        let previous = THREAD.with(|t| {
            t.last_entered.store(request_id, Ordering::Relaxed);
            t.current_request.swap(request_id, Ordering::Relaxed)
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
    /// No real-time signal could be claimed, or sending failed.
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

/// The real-time signal used for captures, claimed on first use.
pub(crate) fn capture_signal() -> Result<libc::c_int, String> {
    static SIGNAL: OnceLock<Result<libc::c_int, String>> = OnceLock::new();
    SIGNAL.get_or_init(install_handler).clone()
}

fn install_handler() -> Result<libc::c_int, String> {
    claim_signal(handle_capture_signal as *const () as usize, &[])
}

/// Installs `handler` (an `SA_SIGINFO` handler) on the highest real-time signal whose
/// disposition is still `SIG_DFL`, never over an existing handler. `also_block` are signals
/// blocked while the handler runs.
fn claim_signal(handler: usize, also_block: &[libc::c_int]) -> Result<libc::c_int, String> {
    let first = libc::SIGRTMIN();
    let last = libc::SIGRTMAX();
    // Search from the top: runtimes and libraries that claim real-time signals tend to take the
    // lowest ones.
    install_on_first_free((first..=last).rev(), handler, also_block).ok_or_else(|| {
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
    for slot in &SLOTS {
        if slot.target_tid.load(Ordering::Relaxed) != tid {
            continue;
        }
        if slot
            .state
            .compare_exchange(ARMED, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // Re-check under ownership: the slot may have been re-armed for another thread between
        // the look above and the claim.
        if slot.target_tid.load(Ordering::Relaxed) != tid
            || slot.request_id.load(Ordering::Relaxed) != polling
            || polling == 0
        {
            slot.state.store(MISMATCH, Ordering::Release);
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
        slot.state.store(DONE, Ordering::Release);
        break;
    }
    // SAFETY: as above; restoring errno keeps the interrupted code's view unchanged.
    unsafe { *errno_location() = saved_errno };
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

/// Releases slots whose abandoned handlers have since finished.
fn reclaim_abandoned() {
    for slot in &SLOTS {
        if slot.abandoned.load(Ordering::Acquire) {
            let state = slot.state.load(Ordering::Acquire);
            if state == DONE || state == MISMATCH {
                slot.abandoned.store(false, Ordering::Relaxed);
                slot.state.store(FREE, Ordering::Release);
            }
        }
    }
}

fn claim_slot() -> Option<&'static CaptureSlot> {
    reclaim_abandoned();
    SLOTS.iter().find(|slot| {
        !slot.abandoned.load(Ordering::Acquire)
            && slot
                .state
                .compare_exchange(FREE, ARMING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    })
}

/// Captures the native stack of thread `tid`, provided it is still polling `request_id` when
/// the signal lands.
pub(crate) fn capture(
    tid: i32,
    request_id: u64,
    timeout: Duration,
) -> Result<RawStack, CaptureError> {
    let signal = capture_signal().map_err(CaptureError::Unavailable)?;
    let slot = claim_slot().ok_or(CaptureError::NoFreeSlot)?;
    slot.target_tid.store(tid, Ordering::Relaxed);
    slot.request_id.store(request_id, Ordering::Relaxed);
    slot.len.store(0, Ordering::Relaxed);
    slot.interrupted_pc.store(0, Ordering::Relaxed);
    slot.state.store(ARMED, Ordering::Release);

    // SAFETY: tgkill only delivers a signal; the pid is our own, so a recycled tid can only name
    // another thread of this process, whose handler rejects the capture.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    if sent != 0 {
        let error = std::io::Error::last_os_error();
        slot.state.store(FREE, Ordering::Release);
        return Err(if error.raw_os_error() == Some(libc::ESRCH) {
            CaptureError::ThreadGone
        } else {
            CaptureError::Unavailable(format!("tgkill failed: {error}"))
        });
    }
    wait_for(slot, timeout)
}

fn wait_for(slot: &'static CaptureSlot, timeout: Duration) -> Result<RawStack, CaptureError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(20);
    loop {
        match slot.state.load(Ordering::Acquire) {
            DONE => {
                let len = slot.len.load(Ordering::Relaxed).min(MAX_FRAMES);
                let ips: Vec<usize> = slot.frames[..len]
                    .iter()
                    .map(|f| f.load(Ordering::Relaxed))
                    .collect();
                let pc = slot.interrupted_pc.load(Ordering::Relaxed);
                slot.state.store(FREE, Ordering::Release);
                return Ok(trim_to_interrupted(ips, pc));
            }
            MISMATCH => {
                slot.state.store(FREE, Ordering::Release);
                return Err(CaptureError::PollEnded);
            }
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Err(give_up(slot));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Abandons a capture that did not answer in time.
fn give_up(slot: &'static CaptureSlot) -> CaptureError {
    if slot
        .state
        .compare_exchange(ARMED, FREE, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // The handler never claimed the slot, and a late one will find nothing armed.
        return CaptureError::TimedOut {
            started_writing: false,
        };
    }
    // The handler owns the slot now; it stays out of use until the handler lets go of it.
    slot.abandoned.store(true, Ordering::Release);
    reclaim_abandoned();
    CaptureError::TimedOut {
        started_writing: true,
    }
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
            .position(|s| {
                s.state
                    .compare_exchange(FREE, WRITING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .expect("free slot");
        SLOTS[index].target_tid.store(tid, Ordering::Relaxed);
        index
    }

    pub(crate) fn abandon(index: usize) -> CaptureError {
        give_up(&SLOTS[index])
    }

    pub(crate) fn slot_is_free(index: usize) -> bool {
        SLOTS[index].state.load(Ordering::Acquire) == FREE
            && !SLOTS[index].abandoned.load(Ordering::Acquire)
    }

    pub(crate) fn finish_writing(index: usize) {
        SLOTS[index].state.store(DONE, Ordering::Release);
    }

    pub(crate) fn reclaim() {
        reclaim_abandoned();
    }

    /// The handler currently installed for `signal`.
    pub(crate) fn installed_handler(signal: libc::c_int) -> usize {
        // SAFETY: reads the disposition into a zeroed, properly sized struct.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current);
            current.sa_sigaction
        }
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
}

#[cfg(test)]
mod sampler_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use sampler_tests::serial as sampler_test_serial;
#[cfg(test)]
pub(crate) use tests::count_allocations;
