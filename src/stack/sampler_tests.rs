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
