//! Captures under faults: blocked signals, two monitors at once, interrupted system calls, and
//! another handler taking the signals over. Tests that change process-wide signal state run in
//! a child process of the test binary, so they cannot disturb the tests running beside them.

use super::sampler::test_support::{sampler_signal, sampler_watch};
use super::test_support::*;
use super::tests::{counted_allocations, function_names, BusyThread, COUNTING};
use super::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

/// Set to the name of the child test that a parent test runs in a fresh process.
const CHILD_ENV: &str = "TOWER_VIGIL_STACK_CHILD";

/// Runs the ignored test `name` of this module alone in a child process and returns its
/// output, after checking that it ran and passed.
fn run_child(name: &str) -> std::process::Output {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            &format!("stack::fault_tests::{name}"),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child {name} failed:\n{stdout}\n{stderr}"
    );
    output
}

/// True in the child process started for `name`; child tests do nothing elsewhere.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// Process-unique request ids, as the registries hand them out.
const fn request(n: u64) -> u64 {
    1 << 62 | n
}

// ---- item 2: the monitor never waits on a capture ----

#[test]
fn captures_of_blocked_threads_stay_pending_without_holding_up_the_others() {
    run_child("child_pending_captures");
}

#[test]
#[ignore = "run in a child process by captures_of_blocked_threads_stay_pending_without_holding_up_the_others"]
fn child_pending_captures() {
    if !is_child("child_pending_captures") {
        return;
    }
    const BLOCKED: u64 = 16;
    let mut releases = Vec::new();
    let mut blocked = Vec::new();
    for n in 0..BLOCKED {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let id = request(100 + n);
        let thread = std::thread::spawn(move || {
            let _scope = PollScope::enter(id);
            let _blocked = block_capture_signal();
            tid_tx.send(current_tid()).unwrap();
            let _ = release_rx.recv();
        });
        blocked.push((tid_rx.recv().unwrap(), id, thread));
        releases.push(release_tx);
    }
    let normal = BusyThread::start(request(99), false);
    assert_eq!(free_slots(), SLOT_COUNT);

    let started = Instant::now();
    let mut pending: Vec<PendingCapture> = blocked
        .iter()
        .map(|&(tid, id, _)| start_capture(tid, id).expect("start a capture"))
        .collect();
    let normal_capture = start_capture(normal.tid, request(99)).expect("start a capture");
    let all_started = started.elapsed();
    let normal_result = normal_capture.wait_until(Instant::now() + Duration::from_secs(2));
    let normal_answered = started.elapsed();
    assert!(normal_result.is_ok(), "{normal_result:?}");
    assert!(
        normal_answered < Duration::from_millis(500),
        "the normal thread answered after {normal_answered:?}"
    );
    for capture in &mut pending {
        assert!(capture.try_finish().is_none(), "{capture:?}");
    }
    assert_eq!(free_slots() + BLOCKED as usize, SLOT_COUNT);

    // Another thread waits for them, as the monitor hands them over.
    let deadline = started + Duration::from_millis(300);
    let results = std::thread::spawn(move || {
        pending
            .into_iter()
            .map(|capture| capture.wait_until(deadline))
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let all_resolved = started.elapsed();
    for result in results {
        assert_eq!(
            result.unwrap_err(),
            CaptureError::TimedOut {
                started_writing: false
            }
        );
    }
    assert_eq!(
        free_slots(),
        SLOT_COUNT,
        "a timed-out capture kept its slot"
    );
    assert!(all_resolved < Duration::from_secs(1), "{all_resolved:?}");
    eprintln!(
        "17 captures, 16 blocked: all started in {all_started:?}, the normal one answered in \
         {normal_answered:?}, all resolved in {all_resolved:?} (timeout 300 ms)"
    );
    normal.finish();
    drop(releases);
    for (_, _, thread) in blocked {
        thread.join().unwrap();
    }
    // The queued signals were delivered when the threads unblocked them; they found no slot.
    assert_eq!(free_slots(), SLOT_COUNT);
}

// ---- item 1: two monitors at once ----

/// Spins while polling `id` of the first registry.
#[inline(never)]
fn vigil_fault_first_registry(id: u64, spins: u32) -> u64 {
    let _scope = PollScope::enter(id);
    let mut x = 1u64;
    for i in 0..spins {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i as u64));
    }
    x
}

/// Spins while polling `id` of the second registry.
#[inline(never)]
fn vigil_fault_second_registry(id: u64, spins: u32) -> u64 {
    let _scope = PollScope::enter(id);
    let mut x = 2u64;
    for i in 0..spins {
        x = std::hint::black_box(x.wrapping_mul(37).wrapping_add(i as u64));
    }
    x
}

const MARKERS: [&str; 2] = ["vigil_fault_first_registry", "vigil_fault_second_registry"];

#[test]
fn two_monitors_only_get_stacks_of_the_request_they_ask_about() {
    // Busy threads: keep the CPU-time sampler tests from running beside this one.
    let _serial = super::sampler_test_serial();
    const TARGETS: usize = 2;
    let stop = Arc::new(AtomicBool::new(false));
    // ids[target][registry]
    let ids: Vec<[u64; 2]> = (0..TARGETS as u64)
        .map(|t| [request(1000 + t), request(2000 + t)])
        .collect();
    let mut targets = Vec::new();
    for &[first, second] in &ids {
        let (tid_tx, tid_rx) = mpsc::channel();
        let stop = stop.clone();
        let thread = std::thread::spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            let before = counted_allocations();
            COUNTING.with(|c| c.set(true));
            while !stop.load(Ordering::Relaxed) {
                vigil_fault_first_registry(first, 20_000);
                vigil_fault_second_registry(second, 20_000);
            }
            COUNTING.with(|c| c.set(false));
            counted_allocations() - before
        });
        targets.push((tid_rx.recv().unwrap(), thread));
    }
    let tids: Vec<i32> = targets.iter().map(|(tid, _)| *tid).collect();

    let monitors: Vec<_> = (0..2)
        .map(|registry| {
            let tids = tids.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_millis(600);
                let mut stacks = Vec::new();
                let mut poll_ended = 0;
                while Instant::now() < until {
                    for (target, &tid) in tids.iter().enumerate() {
                        // Generous: only a lost capture may fail this, not a loaded machine.
                        match capture(tid, ids[target][registry], Duration::from_secs(5)) {
                            Ok(stack) => stacks.push(stack),
                            Err(CaptureError::PollEnded) => poll_ended += 1,
                            Err(other) => panic!("monitor {registry}: {other:?}"),
                        }
                    }
                }
                (stacks, poll_ended)
            })
        })
        .collect();
    let results: Vec<_> = monitors.into_iter().map(|m| m.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for (_, thread) in targets {
        assert_eq!(thread.join().unwrap(), 0, "a capture handler allocated");
    }

    for (registry, (stacks, poll_ended)) in results.iter().enumerate() {
        assert!(
            stacks.len() >= 10,
            "monitor {registry}: {} stacks, {poll_ended} ended polls",
            stacks.len()
        );
        // Symbolizing is slow; a sample of each monitor's stacks is enough.
        let step = (stacks.len() / 100).max(1);
        for stack in stacks.iter().step_by(step) {
            let names = function_names(stack);
            let has = |marker: &str| names.iter().any(|n| n.contains(marker));
            assert!(
                has(MARKERS[registry]) && !has(MARKERS[1 - registry]),
                "monitor {registry} got another request's stack: {names:#?}"
            );
        }
    }
}

/// A thread id no thread has, so no handler ever touches the slots the test holds.
const NO_THREAD: i32 = i32::MAX - 7;

#[test]
fn a_quarantined_slot_is_freed_once_when_two_monitors_reclaim_it() {
    let _serial = super::sampler_test_serial();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    // Two reclaimers, as two monitors call `claim_slot` and give up at the same time.
    for _ in 0..2 {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                reclaim();
            }
            0u64
        }));
    }
    // Slots given up while their handler wrote, then finished by the handler.
    for _ in 0..2 {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let index = occupy_slot_as_writing(NO_THREAD);
                abandon(index);
                finish_slot_write(index);
                // One at a time, so the slots of the tests running beside this one last.
                while !slot_is_free(index) && !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
            0u64
        }));
    }
    // Captures that hold their slot and check that nobody else freed or took it.
    for worker in 0..2u64 {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut stolen = 0;
            let mut token = worker << 40;
            while !stop.load(Ordering::Relaxed) {
                let Some(slot) = claim_slot(NO_THREAD) else {
                    continue;
                };
                token += 1;
                slot.request_id.store(token, Ordering::Relaxed);
                for _ in 0..50 {
                    std::hint::spin_loop();
                }
                if slot.state.load(Ordering::Acquire) != slot_word(ARMING, NO_THREAD)
                    || slot.request_id.load(Ordering::Relaxed) != token
                {
                    stolen += 1;
                }
                let _ = slot.advance(ARMING, FREE);
            }
            stolen
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let stolen: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(
        stolen, 0,
        "slots were freed or taken while a capture held them"
    );
    reclaim();
}

#[test]
fn captures_that_reuse_each_others_slots_across_threads_are_all_answered() {
    // Slots pass between threads all the time here: a handler must never take one that was
    // just re-armed for another thread, or that thread's capture goes unanswered.
    let _serial = super::sampler_test_serial();
    const THREADS: u64 = 4;
    let targets: Vec<BusyThread> = (0..THREADS)
        .map(|t| BusyThread::start(request(4000 + t), false))
        .collect();
    let tids: Vec<i32> = targets.iter().map(|t| t.tid).collect();
    let monitors: Vec<_> = (0..THREADS as usize)
        .map(|monitor| {
            let tids = tids.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_millis(500);
                let (mut answered, mut unanswered) = (0u32, Vec::new());
                let mut round = monitor;
                while Instant::now() < until {
                    let target = round % tids.len();
                    round += 1;
                    match capture(
                        tids[target],
                        request(4000 + target as u64),
                        Duration::from_secs(2),
                    ) {
                        Ok(_) => answered += 1,
                        Err(other) => unanswered.push(other),
                    }
                }
                (answered, unanswered)
            })
        })
        .collect();
    let results: Vec<_> = monitors.into_iter().map(|m| m.join().unwrap()).collect();
    for target in targets {
        target.finish();
    }
    for (monitor, (answered, unanswered)) in results.iter().enumerate() {
        assert!(
            unanswered.is_empty() && *answered >= 20,
            "monitor {monitor}: {answered} answered, unanswered: {unanswered:?}"
        );
    }
}

// ---- item 11: interrupted system calls ----

/// Captures thread `tid` (polling `id`) until `done`, pausing briefly between captures, and
/// returns the stacks taken.
fn capture_until(tid: i32, id: u64, done: &AtomicBool) -> Vec<RawStack> {
    let mut stacks = Vec::new();
    while !done.load(Ordering::Acquire) {
        if let Ok(stack) = capture(tid, id, Duration::from_secs(1)) {
            stacks.push(stack);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stacks
}

fn some_stack_is_in(stacks: &[RawStack], needle: &str) -> bool {
    stacks
        .iter()
        .take(50)
        .any(|s| function_names(s).iter().any(|n| n.contains(needle)))
}

#[test]
fn std_sleep_completes_its_full_time_while_captured() {
    let id = request(3001);
    let done = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let thread_done = done.clone();
    let thread = std::thread::spawn(move || {
        let _scope = PollScope::enter(id);
        tid_tx.send(current_tid()).unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        let slept = started.elapsed();
        thread_done.store(true, Ordering::Release);
        slept
    });
    let tid = tid_rx.recv().unwrap();
    let stacks = capture_until(tid, id, &done);
    let slept = thread.join().unwrap();
    assert!(slept >= Duration::from_millis(300), "slept only {slept:?}");
    assert!(
        some_stack_is_in(&stacks, "sleep"),
        "no capture landed in the sleep ({} stacks)",
        stacks.len()
    );
}

#[test]
fn std_read_completes_normally_while_captured() {
    let id = request(3002);
    let (mut reader, mut writer) = UnixStream::pair().unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _scope = PollScope::enter(id);
        tid_tx.send(current_tid()).unwrap();
        let mut buf = [0u8; 5];
        let read = reader.read_exact(&mut buf);
        (read.map(|()| buf), reader)
    });
    let tid = tid_rx.recv().unwrap();
    // Capture until one lands inside the read, then a few more, then answer it.
    let started = Instant::now();
    let mut in_read = 0;
    while in_read < 5 && started.elapsed() < Duration::from_secs(3) {
        if let Ok(stack) = capture(tid, id, Duration::from_secs(1)) {
            if function_names(&stack).iter().any(|n| n.contains("read")) {
                in_read += 1;
            }
        }
    }
    writer.write_all(b"hello").unwrap();
    let (read, _reader) = thread.join().unwrap();
    assert_eq!(in_read, 5, "captures did not land inside the read");
    assert_eq!(read.expect("std's read failed"), *b"hello");
}

#[test]
fn raw_poll_fails_with_eintr_when_captured() {
    let id = request(3003);
    let (reader, _writer) = UnixStream::pair().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let thread_done = done.clone();
    let thread = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let _scope = PollScope::enter(id);
        tid_tx.send(current_tid()).unwrap();
        let mut fd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let started = Instant::now();
        // SAFETY: one valid pollfd for a socket this thread owns.
        let rc = unsafe { libc::poll(&mut fd, 1, 5000) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        thread_done.store(true, Ordering::Release);
        (rc, errno, started.elapsed())
    });
    let tid = tid_rx.recv().unwrap();
    capture_until(tid, id, &done);
    let (rc, errno, waited) = thread.join().unwrap();
    assert_eq!((rc, errno), (-1, Some(libc::EINTR)));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

// ---- item 3: a handler installed after start-up ----

static FOREIGN_CAPTURE_CALLS: AtomicUsize = AtomicUsize::new(0);
static FOREIGN_SAMPLER_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn foreign_capture(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    FOREIGN_CAPTURE_CALLS.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn foreign_sampler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    FOREIGN_SAMPLER_CALLS.fetch_add(1, Ordering::Relaxed);
}

fn taken_over(result: &Result<RawStack, CaptureError>, signal: libc::c_int) -> bool {
    matches!(result, Err(CaptureError::Unavailable(reason))
        if reason.starts_with(&format!("signal {signal} was taken over by another handler")))
}

#[test]
fn a_handler_installed_later_is_detected_logged_once_and_no_longer_signalled() {
    let output = run_child("child_takeover_by_a_handler");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("was taken over"))
        .collect();
    assert_eq!(errors.len(), 2, "one error per signal expected:\n{stderr}");
    assert!(errors.iter().all(|l| l.contains("tower_vigil")), "{stderr}");
}

#[test]
#[ignore = "run in a child process by a_handler_installed_later_is_detected_logged_once_and_no_longer_signalled"]
fn child_takeover_by_a_handler() {
    if !is_child("child_takeover_by_a_handler") {
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let id = request(4001);
    let busy = BusyThread::start(id, false);
    assert!(capture(busy.tid, id, Duration::from_secs(2)).is_ok());

    let signal = capture_signal().unwrap();
    install_foreign(signal, foreign_capture as *const () as usize);
    // The signal reaches the other handler; the timeout finds out why.
    let result = capture(busy.tid, id, Duration::from_millis(200));
    assert!(taken_over(&result, signal), "{result:?}");
    let calls = FOREIGN_CAPTURE_CALLS.load(Ordering::Relaxed);
    assert_eq!(calls, 1);
    for _ in 0..3 {
        let started = Instant::now();
        let result = capture(busy.tid, id, Duration::from_millis(200));
        assert!(taken_over(&result, signal), "{result:?}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    assert_eq!(
        FOREIGN_CAPTURE_CALLS.load(Ordering::Relaxed),
        calls,
        "the signal was still sent"
    );

    // The sampler: taken over while a session runs.
    let session =
        SamplerSession::start(busy.tid, CpuClock::monotonic(), Duration::from_millis(1)).unwrap();
    let mut samples = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while samples == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
        session.drain(|_| samples += 1);
    }
    assert!(samples > 0);
    let sampler = sampler_signal();
    install_foreign(sampler, foreign_sampler as *const () as usize);
    sampler_watch().check_on_next_use();
    session.drain(|_| {});
    // The timer is gone: at most a signal already queued still arrives.
    std::thread::sleep(Duration::from_millis(10));
    let sampler_calls = FOREIGN_SAMPLER_CALLS.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(FOREIGN_SAMPLER_CALLS.load(Ordering::Relaxed), sampler_calls);
    let stats = session.stop(|_| {});
    let reason = stats
        .lost_signal
        .expect("the profile says why samples stopped");
    assert!(
        reason.starts_with(&format!("signal {sampler} was taken over")),
        "{reason}"
    );
    let again = SamplerSession::start(busy.tid, CpuClock::monotonic(), Duration::from_millis(1));
    assert!(again.unwrap_err().contains("was taken over"));
    busy.finish();
}

#[test]
fn sig_ign_set_later_is_found_by_the_periodic_check_before_sending() {
    run_child("child_takeover_by_sig_ign");
}

#[test]
#[ignore = "run in a child process by sig_ign_set_later_is_found_by_the_periodic_check_before_sending"]
fn child_takeover_by_sig_ign() {
    if !is_child("child_takeover_by_sig_ign") {
        return;
    }
    let id = request(4002);
    let busy = BusyThread::start(id, false);
    assert!(capture(busy.tid, id, Duration::from_secs(2)).is_ok());
    let signal = capture_signal().unwrap();
    // SAFETY: a fully initialised action that ignores the signal, as an application might set.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
    capture_watch().check_on_next_use();
    let started = Instant::now();
    let result = start_capture(busy.tid, id).map(|_| ());
    assert!(
        matches!(&result, Err(CaptureError::Unavailable(r)) if r.contains("was taken over")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    busy.finish();
}

#[test]
fn set_signals_refuses_numbers_that_cannot_work() {
    let (first, last) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    for (capture, sampler) in [
        (Some(first - 1), None),
        (None, Some(last + 1)),
        (Some(libc::SIGUSR1), None),
        (Some(first + 5), Some(first + 5)),
    ] {
        let error = set_signals(capture, sampler).unwrap_err();
        assert!(
            error.contains("not a real-time signal") || error.contains("must differ"),
            "{error}"
        );
    }
}

#[test]
fn configured_signals_are_used() {
    run_child("child_set_signals");
}

#[test]
#[ignore = "run in a child process by configured_signals_are_used"]
fn child_set_signals() {
    if !is_child("child_set_signals") {
        return;
    }
    let first = libc::SIGRTMIN();
    install_foreign(first + 5, foreign_capture as *const () as usize);
    let error = set_signals(Some(first + 5), None).unwrap_err();
    assert!(error.contains("already has a handler"), "{error}");

    set_signals(Some(first + 3), Some(first + 4)).unwrap();
    let id = request(4003);
    let busy = BusyThread::start(id, false);
    assert!(capture(busy.tid, id, Duration::from_secs(2)).is_ok());
    assert_eq!(capture_signal(), Ok(first + 3));
    assert_eq!(sampler_signal(), first + 4);
    assert_eq!(
        installed_handler(first + 3),
        handle_capture_signal as *const () as usize
    );
    let error = set_signals(None, None).unwrap_err();
    assert!(error.contains("before the first"), "{error}");
    busy.finish();
}
