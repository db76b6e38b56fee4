//! The sampler against real threads, with the counting allocator of `tests.rs`.

use super::tests::{counted_allocations, COUNTING};
use super::*;

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

/// Sessions are process-wide; tests that need one take turns.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[inline(never)]
fn vigil_sampler_spin_marker(stop: &AtomicBool) -> u64 {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

/// A thread spinning in a named function; reports its tid and CPU clock, and how many
/// allocations it made while spinning (with counting on).
fn spinning_thread(stop: Arc<AtomicBool>) -> (i32, CpuClock, std::thread::JoinHandle<usize>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        tx.send((current_tid(), current_thread_cpu_clock().unwrap()))
            .unwrap();
        let before = counted_allocations();
        COUNTING.with(|c| c.set(true));
        vigil_sampler_spin_marker(&stop);
        COUNTING.with(|c| c.set(false));
        counted_allocations() - before
    });
    let (tid, clock) = rx.recv().unwrap();
    (tid, clock, handle)
}

fn collect_for(session: &SamplerSession, duration: Duration, samples: &mut Vec<Sample>) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
        session.drain(|s| samples.push(s));
    }
}

#[test]
fn cpu_time_sampling_walks_the_target_thread_without_allocating() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let (tid, clock, handle) = spinning_thread(stop.clone());
    let cpu_before = clock.now().expect("thread CPU clock");
    let session = SamplerSession::start(tid, clock, Duration::from_millis(1)).expect("start");
    let mut samples = Vec::new();
    collect_for(&session, Duration::from_millis(300), &mut samples);
    let stats = session.stop(|s| samples.push(s));
    let cpu_used = clock.now().expect("thread CPU clock") - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let allocations = handle.join().unwrap();

    assert_eq!(allocations, 0, "the sampler's signal handler allocated");
    assert!(stats.signals >= 10, "too few signals: {stats:?}");
    let weight: u64 = samples.iter().map(|s| s.weight as u64).sum();
    // One weight per millisecond of CPU the thread got (less than 300 ms when the machine is
    // busy), minus start-up slack; overruns are folded into weights.
    let expected = cpu_used.as_millis() as u64 / 2;
    assert!(
        weight >= expected,
        "weight {weight} for {cpu_used:?} of CPU, {stats:?}"
    );
    let with_marker = samples
        .iter()
        .filter(|s| {
            resolve(&s.stack).iter().any(|f| {
                f.function
                    .as_deref()
                    .is_some_and(|n| n.contains("vigil_sampler_spin_marker"))
            })
        })
        .count();
    assert!(
        with_marker * 10 >= samples.len() * 9,
        "only {with_marker} of {} samples are in the spinning function",
        samples.len()
    );
    assert!(samples.iter().all(|s| !resolve(&s.stack).iter().any(|f| f
        .function
        .as_deref()
        .is_some_and(|n| n.contains("handle_sample_signal")))));
}

#[test]
fn a_parked_thread_records_its_epoch_instead_of_a_stack() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        tx.send(current_tid()).unwrap();
        set_parked(42);
        let _ = stop_rx.recv_timeout(Duration::from_secs(5));
        set_parked(0);
    });
    let tid = rx.recv().unwrap();
    let session =
        SamplerSession::start(tid, CpuClock::monotonic(), Duration::from_millis(2)).unwrap();
    let mut samples = Vec::new();
    collect_for(&session, Duration::from_millis(100), &mut samples);
    session.stop(|s| samples.push(s));
    stop_tx.send(()).unwrap();
    handle.join().unwrap();
    assert!(samples.len() >= 10, "{} samples", samples.len());
    // The first samples may predate set_parked.
    let parked = samples.iter().filter(|s| s.parked_epoch == 42).count();
    assert!(parked + 2 >= samples.len(), "{parked} of {}", samples.len());
    assert!(samples
        .iter()
        .filter(|s| s.parked_epoch == 42)
        .all(|s| s.stack.ips.is_empty()));
}

#[test]
fn sessions_are_limited_and_freed_on_stop() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let (tid, _clock, handle) = spinning_thread(stop.clone());
    let mut sessions = Vec::new();
    while let Ok(session) =
        SamplerSession::start(tid, CpuClock::monotonic(), Duration::from_millis(50))
    {
        sessions.push(session);
        assert!(sessions.len() <= sampler::MAX_SESSIONS);
    }
    assert!(!sessions.is_empty());
    drop(sessions.pop());
    let again = SamplerSession::start(tid, CpuClock::monotonic(), Duration::from_millis(50));
    assert!(again.is_ok(), "a stopped session was not freed");
    drop(again);
    drop(sessions);
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

#[test]
fn the_sampler_signal_is_not_the_capture_signal() {
    assert_ne!(
        sampler::test_support::sampler_signal(),
        capture_signal().unwrap()
    );
}

#[test]
fn a_stray_signal_on_another_thread_does_not_let_stop_free_a_session_mid_write() {
    use super::sampler::test_support::*;
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let (tid, _clock, target) = spinning_thread(stop.clone());
    // A long period: the session's own timer stays quiet, the test plays the target's handler.
    let session =
        SamplerSession::start(tid, CpuClock::monotonic(), Duration::from_secs(60)).unwrap();
    let index = session_index(&session);
    enter_busy(index);

    // A stray signal for this session, on a bystander thread, while the target writes.
    let (bystander_tx, bystander_rx) = mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let bystander_release = release.clone();
    let bystander = std::thread::spawn(move || {
        bystander_tx.send(current_tid()).unwrap();
        let before = counted_allocations();
        COUNTING.with(|c| c.set(true));
        // Not a channel: a blocking receive may allocate, and only the handler is counted.
        while !bystander_release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        COUNTING.with(|c| c.set(false));
        counted_allocations() - before
    });
    let bystander_tid = bystander_rx.recv().unwrap();
    let strays = stray_signals();
    let stray_timer = one_shot_timer(bystander_tid, signal_value(index));
    let until = Instant::now() + Duration::from_secs(2);
    while stray_signals() == strays && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(stray_signals() > strays, "the stray signal was not handled");
    // SAFETY: the one-shot timer was created above and is deleted once.
    unsafe { libc::timer_delete(stray_timer) };

    // The target's write ends a little later; stop must not return before it.
    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let written = written.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            written.store(true, Ordering::SeqCst);
            leave_busy(index);
        })
    };
    session.stop(|_| {});
    assert!(
        written.load(Ordering::SeqCst),
        "stop freed the session while its target was still writing"
    );
    assert!(
        session_is_idle(index),
        "the session was not freed after the write"
    );
    writer.join().unwrap();
    release.store(true, Ordering::SeqCst);
    assert_eq!(bystander.join().unwrap(), 0, "the stray handler allocated");
    stop.store(true, Ordering::Relaxed);
    target.join().unwrap();
}

/// A timer that sends the sampler's signal with `value` once, 1 ms from now, to thread `tid`.
fn one_shot_timer(tid: i32, value: usize) -> libc::timer_t {
    // SAFETY: a zeroed sigevent filled in as `SamplerSession::start` does; the value is a plain
    // integer, never dereferenced.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = sampler::test_support::sampler_signal();
    event.sigev_notify_thread_id = tid;
    event.sigev_value = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: both pointers are live locals of the right types.
    assert_eq!(
        unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) },
        0
    );
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        },
    };
    // SAFETY: the timer was just created; the spec is fully initialised.
    assert_eq!(
        unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) },
        0
    );
    timer
}
