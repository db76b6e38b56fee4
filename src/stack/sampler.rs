//! Sampling one thread with a per-thread POSIX timer, for the profiler.
//!
//! A [`SamplerSession`] arms a `timer_create` timer on either the target thread's CPU-time clock
//! or `CLOCK_MONOTONIC`, with `SIGEV_THREAD_ID` so that every expiry is delivered as the
//! sampler's own real-time signal to exactly that thread. The handler walks the thread's stack
//! into a fixed ring of preallocated frame arrays, written with atomics; a collector thread
//! drains the ring. The handler keeps the capture handler's discipline: no allocation, no
//! locks, only async-signal-safe calls, `errno` saved and restored.
//!
//! The handler announces itself in the session's `busy` count before it checks whether the
//! signal is for the session, and withdraws after. A count, not a flag: a stray signal handled
//! on another thread at the same time must not hide the target thread's write from `stop`.
//!
//! If another handler takes the sampler's signal over, starting, draining or stopping a session
//! notices it (see the module docs of `stack`): the timer is deleted, and
//! [`SamplerStats::lost_signal`] and [`SamplerSession::start`] say why there are no samples.
//!
//! A thread that has told the sampler it is parked (see [`set_parked`]) is not unwound: the
//! sample records only the park epoch, and the collector attributes it to what the thread was
//! waiting for, which is known outside the handler.

use std::cell::Cell;
use std::sync::atomic::{
    compiler_fence, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::RawStack;
use super::{
    capture_signal, errno_location, freeze_signal_choice, install_signal, interrupted_pc,
    trim_to_interrupted, Check, OwnedSignal,
};

/// Threads that can be sampled at once.
pub(crate) const MAX_SESSIONS: usize = 4;
/// Frames kept per sample; deeper stacks are truncated at the outermost end.
pub(crate) const SAMPLE_FRAMES: usize = 256;
/// Samples a session buffers between two drains.
const RING: usize = 128;
/// Heaviest weight one sample can carry (timer overruns folded into it).
const MAX_WEIGHT: u32 = 10_000;

const IDLE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;
const STOPPING: u8 = 3;
/// A handler never let go of the session; it is not reused.
const LOST: u8 = 4;

const EMPTY: u8 = 0;
const FULL: u8 = 1;

struct SampleSlot {
    state: AtomicU8,
    parked_epoch: AtomicU64,
    weight: AtomicU32,
    pc: AtomicUsize,
    len: AtomicUsize,
    frames: [AtomicUsize; SAMPLE_FRAMES],
}

impl SampleSlot {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(EMPTY),
            parked_epoch: AtomicU64::new(0),
            weight: AtomicU32::new(0),
            pc: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; SAMPLE_FRAMES],
        }
    }
}

struct SessionSlot {
    state: AtomicU8,
    generation: AtomicU32,
    tid: AtomicI32,
    /// Handlers running for this session, or for a signal carrying its index (on any thread);
    /// `stop` waits for zero before reusing the ring.
    busy: AtomicU32,
    /// Next ring position the handler writes (only the target thread writes it).
    write: AtomicUsize,
    /// Next ring position the collector reads (only the collector writes it).
    read: AtomicUsize,
    signals: AtomicU64,
    dropped: AtomicU64,
    ring: [SampleSlot; RING],
}

impl SessionSlot {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(IDLE),
            generation: AtomicU32::new(0),
            tid: AtomicI32::new(0),
            busy: AtomicU32::new(0),
            write: AtomicUsize::new(0),
            read: AtomicUsize::new(0),
            signals: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            ring: [const { SampleSlot::new() }; RING],
        }
    }
}

static SESSIONS: [SessionSlot; MAX_SESSIONS] = [const { SessionSlot::new() }; MAX_SESSIONS];

/// Sampler signals that were not for the thread or session generation they reached.
static STRAY_SIGNALS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Nonzero while this thread is parked by its runtime: the epoch of that park.
    /// Const-initialised and without a destructor, so the handler can read it.
    static PARKED: AtomicU64 = const { AtomicU64::new(0) };
}

/// Tells the sampler that the calling thread is parked (`epoch` nonzero, one number per park)
/// or running again (`epoch` zero).
pub(crate) fn set_parked(epoch: u64) {
    PARKED.with(|p| p.store(epoch, Ordering::Relaxed));
    // The handler runs on this same thread; keep the store ahead of the park it describes.
    compiler_fence(Ordering::SeqCst);
}

/// The real-time signal used by the sampler, claimed on first use. It is never the capture
/// signal: that one is claimed first, and claiming skips signals that already have a handler.
fn sampler_owned() -> Result<&'static OwnedSignal, String> {
    static SIGNAL: OnceLock<Result<OwnedSignal, String>> = OnceLock::new();
    SIGNAL
        .get_or_init(|| {
            // Block the capture signal while sampling so the two walks never nest.
            let capture = capture_signal().ok();
            let also_block: &[libc::c_int] = match &capture {
                Some(signal) => std::slice::from_ref(signal),
                None => &[],
            };
            let (_, sampler) = freeze_signal_choice();
            install_signal(
                sampler,
                capture,
                handle_sample_signal as *const () as usize,
                also_block,
                "sampling for the profiler",
            )
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A clock a timer can count: a thread's CPU time, or the monotonic wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuClock(libc::clockid_t);

impl CpuClock {
    /// The monotonic wall clock.
    pub(crate) fn monotonic() -> Self {
        Self(libc::CLOCK_MONOTONIC)
    }

    /// The clock's current reading, or `None` once the thread it belongs to has exited.
    pub(crate) fn now(self) -> Option<Duration> {
        // SAFETY: clock_gettime writes into a properly sized, initialised timespec; an invalid
        // clock id (an exited thread) is reported as an error, not undefined behaviour.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

/// The CPU-time clock of the calling thread, usable from other threads.
pub(crate) fn current_thread_cpu_clock() -> Result<CpuClock, String> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread; the out pointer is a live
    // local.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc != 0 {
        return Err(format!(
            "pthread_getcpuclockid failed: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(CpuClock(clock))
}

/// One drained sample.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// The interrupted stack; empty for a parked sample.
    pub(crate) stack: RawStack,
    /// Nonzero when the thread was parked: the epoch given to [`set_parked`].
    pub(crate) parked_epoch: u64,
    /// Timer periods this sample stands for (1 plus the overruns the kernel folded into it).
    pub(crate) weight: u32,
    /// True when the stack filled every frame, so its outermost frames are missing.
    pub(crate) truncated: bool,
}

/// Counters of a finished session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SamplerStats {
    /// Signals handled for the session.
    pub(crate) signals: u64,
    /// Samples lost because the ring was full.
    pub(crate) dropped: u64,
    /// Set when another handler took the sampler's signal over: why samples stopped coming.
    pub(crate) lost_signal: Option<String>,
}

/// Samples one thread until stopped or dropped.
pub(crate) struct SamplerSession {
    index: usize,
    timer: libc::timer_t,
    /// The timer has been deleted (by `stop`, or by `drain` on a lost signal).
    timer_deleted: Cell<bool>,
    stopped: bool,
    lost_signal: std::cell::RefCell<Option<String>>,
}

impl std::fmt::Debug for SamplerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerSession")
            .field("index", &self.index)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl SamplerSession {
    /// Starts sampling thread `tid` every `interval` of `clock`.
    pub(crate) fn start(tid: i32, clock: CpuClock, interval: Duration) -> Result<Self, String> {
        let signal = sampler_owned()?.usable(Check::Now)?;
        let index = SESSIONS
            .iter()
            .position(|s| {
                s.state
                    .compare_exchange(IDLE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| format!("all {MAX_SESSIONS} sampler sessions are in use"))?;
        let session = &SESSIONS[index];
        // 24 bits of generation travel with every signal, so a stale one is recognised.
        let generation = session.generation.load(Ordering::Relaxed).wrapping_add(1) & 0xff_ffff;
        session.generation.store(generation, Ordering::Relaxed);
        session.tid.store(tid, Ordering::Relaxed);
        session.write.store(0, Ordering::Relaxed);
        session.read.store(0, Ordering::Relaxed);
        session.signals.store(0, Ordering::Relaxed);
        session.dropped.store(0, Ordering::Relaxed);
        for slot in &session.ring {
            slot.state.store(EMPTY, Ordering::Relaxed);
        }
        session.state.store(ACTIVE, Ordering::SeqCst);

        // SAFETY: the sigevent is zeroed and then filled in; SIGEV_THREAD_ID names a thread of
        // this process, and the kernel validates it. The value is a plain integer, never
        // dereferenced.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        event.sigev_notify_thread_id = tid;
        event.sigev_value = libc::sigval {
            sival_ptr: ((generation as usize) << 8 | index) as *mut libc::c_void,
        };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: both pointers are live locals of the right types.
        if unsafe { libc::timer_create(clock.0, &mut event, &mut timer) } != 0 {
            let error = std::io::Error::last_os_error();
            session.state.store(IDLE, Ordering::SeqCst);
            return Err(format!("timer_create failed: {error}"));
        }
        let interval = interval.max(Duration::from_micros(50));
        let period = libc::timespec {
            tv_sec: interval.as_secs() as libc::time_t,
            tv_nsec: interval.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `timer` was just created by timer_create; the spec is fully initialised.
        if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            let error = std::io::Error::last_os_error();
            // SAFETY: the timer exists and is deleted exactly once.
            unsafe { libc::timer_delete(timer) };
            session.state.store(IDLE, Ordering::SeqCst);
            return Err(format!("timer_settime failed: {error}"));
        }
        Ok(Self {
            index,
            timer,
            timer_deleted: Cell::new(false),
            stopped: false,
            lost_signal: std::cell::RefCell::new(None),
        })
    }

    /// Why samples stopped coming, once another handler has taken the signal over. Looks at the
    /// handler now or at most once a second, as `check` says, and deletes the timer when it is
    /// not ours any more, so the other handler gets no more signals.
    fn check_signal(&self, check: Check) -> Option<String> {
        if self.lost_signal.borrow().is_none() {
            let reason = sampler_owned()
                .and_then(|owned| owned.usable(check))
                .err()?;
            self.delete_timer();
            *self.lost_signal.borrow_mut() = Some(reason);
        }
        self.lost_signal.borrow().clone()
    }

    fn delete_timer(&self) {
        if !self.timer_deleted.replace(true) {
            // SAFETY: the timer was created by `start` and is deleted exactly once (guarded by
            // `timer_deleted`). After timer_delete returns, no new expiry of it is queued.
            unsafe { libc::timer_delete(self.timer) };
        }
    }

    /// Hands every sample written since the last drain to `each`, oldest first.
    pub(crate) fn drain(&self, mut each: impl FnMut(Sample)) {
        self.check_signal(Check::AtMostOncePerSecond);
        let session = &SESSIONS[self.index];
        let mut read = session.read.load(Ordering::Relaxed);
        loop {
            let slot = &session.ring[read % RING];
            if slot.state.load(Ordering::Acquire) != FULL {
                break;
            }
            let len = slot.len.load(Ordering::Relaxed).min(SAMPLE_FRAMES);
            let ips: Vec<usize> = slot.frames[..len]
                .iter()
                .map(|f| f.load(Ordering::Relaxed))
                .collect();
            let pc = slot.pc.load(Ordering::Relaxed);
            let parked_epoch = slot.parked_epoch.load(Ordering::Relaxed);
            let weight = slot.weight.load(Ordering::Relaxed);
            slot.state.store(EMPTY, Ordering::Release);
            read += 1;
            let stack = if parked_epoch != 0 {
                RawStack {
                    ips: Vec::new(),
                    first_is_exact: false,
                }
            } else {
                trim_to_interrupted(ips, pc)
            };
            each(Sample {
                stack,
                parked_epoch,
                weight,
                truncated: len == SAMPLE_FRAMES,
            });
        }
        session.read.store(read, Ordering::Relaxed);
    }

    /// Stops the timer, hands the last samples to `each`, and frees the session.
    pub(crate) fn stop(mut self, each: impl FnMut(Sample)) -> SamplerStats {
        self.stop_timer();
        self.drain(each);
        self.release()
    }

    fn stop_timer(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.delete_timer();
        let session = &SESSIONS[self.index];
        session.state.store(STOPPING, Ordering::SeqCst);
        // A handler that counted itself in `busy` before seeing STOPPING may still be writing;
        // one that starts later sees STOPPING and leaves at once.
        let started = Instant::now();
        while session.busy.load(Ordering::SeqCst) != 0 {
            if started.elapsed() > Duration::from_secs(1) {
                session.state.store(LOST, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn release(&self) -> SamplerStats {
        let session = &SESSIONS[self.index];
        let stats = SamplerStats {
            signals: session.signals.load(Ordering::Relaxed),
            dropped: session.dropped.load(Ordering::Relaxed),
            lost_signal: self.check_signal(Check::Now),
        };
        if session.state.load(Ordering::SeqCst) == STOPPING {
            session.state.store(IDLE, Ordering::SeqCst);
        }
        stats
    }
}

impl Drop for SamplerSession {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop_timer();
            self.release();
        }
    }
}

extern "C" fn handle_sample_signal(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno_location points at this thread's errno for the thread's whole life.
    let saved_errno = unsafe { *errno_location() };
    if !info.is_null() {
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo_t.
        let (value, overrun) = unsafe {
            let info = &*info;
            let overrun = if info.si_code == libc::SI_TIMER {
                info.si_overrun()
            } else {
                0
            };
            (info.si_value().sival_ptr as usize, overrun)
        };
        record_sample(value, overrun, context);
    }
    // SAFETY: as above; restoring errno keeps the interrupted code's view unchanged.
    unsafe { *errno_location() = saved_errno };
}

fn record_sample(value: usize, overrun: libc::c_int, context: *mut libc::c_void) {
    let index = value & 0xff;
    let generation = (value >> 8) as u32;
    let Some(session) = SESSIONS.get(index) else {
        return;
    };
    // Announce first, then check: `stop` sets STOPPING first, then waits for `busy` to reach 0.
    session.busy.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the raw gettid system call is async-signal-safe and has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let ours = session.state.load(Ordering::SeqCst) == ACTIVE
        && session.generation.load(Ordering::Relaxed) == generation
        && session.tid.load(Ordering::Relaxed) == tid;
    if !ours {
        STRAY_SIGNALS.fetch_add(1, Ordering::Relaxed);
    } else {
        session.signals.fetch_add(1, Ordering::Relaxed);
        let weight = (1 + overrun.max(0) as u32).min(MAX_WEIGHT);
        let position = session.write.load(Ordering::Relaxed);
        let slot = &session.ring[position % RING];
        if slot.state.load(Ordering::Acquire) != EMPTY {
            session.dropped.fetch_add(weight as u64, Ordering::Relaxed);
        } else {
            let parked = PARKED.try_with(|p| p.load(Ordering::Relaxed)).unwrap_or(0);
            let mut len = 0usize;
            if parked == 0 {
                slot.pc.store(interrupted_pc(context), Ordering::Relaxed);
                // SAFETY: no other thread unwinds on this thread's behalf while the handler
                // runs (the capture signal is blocked here); the callback only stores into
                // preallocated atomics and never panics or allocates.
                unsafe {
                    backtrace::trace_unsynchronized(|frame| {
                        slot.frames[len].store(frame.ip() as usize, Ordering::Relaxed);
                        len += 1;
                        len < SAMPLE_FRAMES
                    });
                }
            }
            slot.len.store(len, Ordering::Relaxed);
            slot.parked_epoch.store(parked, Ordering::Relaxed);
            slot.weight.store(weight, Ordering::Relaxed);
            slot.state.store(FULL, Ordering::Release);
            session.write.store(position + 1, Ordering::Relaxed);
        }
    }
    session.busy.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
pub(super) mod test_support {
    use super::*;

    pub(crate) fn sampler_signal() -> libc::c_int {
        sampler_watch().usable(Check::Now).expect("sampler signal")
    }

    pub(in crate::stack) fn sampler_watch() -> &'static OwnedSignal {
        sampler_owned().expect("sampler signal")
    }

    /// The session's index, which travels in its signals.
    pub(crate) fn session_index(session: &SamplerSession) -> usize {
        session.index
    }

    /// The signal value the timer of session `index` sends.
    pub(crate) fn signal_value(index: usize) -> usize {
        let generation = SESSIONS[index].generation.load(Ordering::Relaxed) as usize;
        generation << 8 | index
    }

    /// Counts a handler in on session `index`, as `record_sample` does first.
    pub(crate) fn enter_busy(index: usize) {
        SESSIONS[index].busy.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts it out again, as `record_sample` does last.
    pub(crate) fn leave_busy(index: usize) {
        SESSIONS[index].busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Signals handled on the wrong thread or for another session generation.
    pub(crate) fn stray_signals() -> u64 {
        STRAY_SIGNALS.load(Ordering::Relaxed)
    }

    /// True when session `index` is free for the next `start`.
    pub(crate) fn session_is_idle(index: usize) -> bool {
        SESSIONS[index].state.load(Ordering::SeqCst) == IDLE
    }
}
