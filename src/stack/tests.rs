use super::test_support::*;
use super::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

/// Counts allocations made on threads that opted in, so a test can watch one thread only.
struct CountingAllocator;

thread_local! {
    pub(super) static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Per thread, so that tests running at the same time do not see each other's counts.
    static COUNTED_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations counted so far on the calling thread.
pub(super) fn counted_allocations() -> usize {
    COUNTED_ALLOCATIONS.with(Cell::get)
}

fn count_one() {
    let _ = COUNTED_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

/// Runs `f` and counts the allocations it makes on the calling thread.
pub(crate) fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = counted_allocations();
    COUNTING.with(|c| c.set(true));
    let result = f();
    COUNTING.with(|c| c.set(false));
    (result, counted_allocations() - before)
}

// SAFETY: delegates every call to the system allocator unchanged; the flag and the counter are
// const-initialised thread-locals, so counting itself never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            count_one();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            count_one();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const WAIT: Duration = Duration::from_secs(2);

/// A thread that polls `request_id` while spinning in a named function, until told to stop.
pub(super) struct BusyThread {
    pub(super) tid: i32,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

#[inline(never)]
fn vigil_test_spin_marker(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}

impl BusyThread {
    pub(super) fn start(request_id: u64, count_allocations: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread_stop = stop.clone();
        let handle = std::thread::spawn(move || {
            let tid = current_tid();
            let _scope = PollScope::enter(request_id);
            tid_tx.send(tid).unwrap();
            let before = counted_allocations();
            COUNTING.with(|c| c.set(count_allocations));
            vigil_test_spin_marker(&thread_stop);
            COUNTING.with(|c| c.set(false));
            counted_allocations() - before
        });
        let tid = tid_rx.recv().unwrap();
        // Let the thread reach the spin loop.
        std::thread::sleep(Duration::from_millis(20));
        Self {
            tid,
            stop,
            handle: Some(handle),
        }
    }

    pub(super) fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

pub(super) fn function_names(stack: &RawStack) -> Vec<String> {
    resolve(stack)
        .into_iter()
        .filter_map(|f| f.function)
        .collect()
}

#[test]
fn captures_the_target_threads_own_stack_without_allocating() {
    let busy = BusyThread::start(41, true);
    let stack = capture(busy.tid, 41, WAIT).expect("capture");
    let allocations = busy.finish();
    assert_eq!(allocations, 0, "the signal handler allocated");
    assert!(
        stack.first_is_exact,
        "unwinder did not reach the interrupted instruction"
    );
    let names = function_names(&stack);
    assert!(
        names.iter().any(|n| n.contains("vigil_test_spin_marker")),
        "busy function missing from {names:#?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("handle_capture_signal")),
        "handler frames leaked into the stack: {names:#?}"
    );
}

#[test]
fn a_thread_polling_another_request_yields_no_stack() {
    let busy = BusyThread::start(7, false);
    let result = capture(busy.tid, 8, WAIT);
    busy.finish();
    assert_eq!(result.unwrap_err(), CaptureError::PollEnded);
}

#[test]
fn a_thread_that_polls_nothing_yields_no_stack() {
    let busy = BusyThread::start(0, false);
    let result = capture(busy.tid, 9, WAIT);
    busy.finish();
    assert_eq!(result.unwrap_err(), CaptureError::PollEnded);
}

#[test]
fn an_exited_thread_is_reported_gone() {
    let tid = std::thread::spawn(current_tid).join().unwrap();
    // The tid may already be reused by a thread of this test binary; then that thread's handler
    // must refuse, because it does not poll request 77.
    let result = capture(tid, 77, WAIT);
    assert!(
        matches!(
            result,
            Err(CaptureError::ThreadGone) | Err(CaptureError::PollEnded)
        ),
        "{result:?}"
    );
}

#[test]
fn a_handler_that_never_runs_times_out_and_frees_its_slot() {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _scope = PollScope::enter(55);
        let blocked = block_capture_signal();
        tid_tx.send(current_tid()).unwrap();
        go_rx.recv().unwrap();
        // Unblocking delivers the stale signal; the handler must find nothing armed.
        drop(blocked);
    });
    let tid = tid_rx.recv().unwrap();
    let result = capture(tid, 55, Duration::from_millis(50));
    assert_eq!(
        result.unwrap_err(),
        CaptureError::TimedOut {
            started_writing: false
        }
    );
    go_tx.send(()).unwrap();
    thread.join().unwrap();
    // Every slot is usable again: a fresh capture on a live thread works.
    let busy = BusyThread::start(56, false);
    assert!(capture(busy.tid, 56, WAIT).is_ok());
    busy.finish();
}

#[test]
fn a_slot_whose_handler_is_still_writing_is_not_reused() {
    let index = occupy_slot_as_writing(i32::MAX);
    assert_eq!(
        abandon(index),
        CaptureError::TimedOut {
            started_writing: true
        }
    );
    assert!(!slot_is_free(index));
    // Claiming must skip the quarantined slot.
    for _ in 0..3 {
        let claimed = claim_slot(i32::MAX).expect("another slot");
        assert!(!std::ptr::eq(claimed, &SLOTS[index]));
        claimed.state.store(FREE_WORD, Ordering::Release);
    }
    finish_slot_write(index);
    reclaim();
    assert!(slot_is_free(index));
}

#[test]
fn the_counting_allocator_sees_allocations_of_the_counting_thread() {
    let counted = std::thread::spawn(|| {
        let before = counted_allocations();
        COUNTING.with(|c| c.set(true));
        let boxed = std::hint::black_box(Box::new(42u64));
        COUNTING.with(|c| c.set(false));
        drop(boxed);
        counted_allocations() - before
    })
    .join()
    .unwrap();
    assert!(
        counted >= 1,
        "the allocation test would not notice an allocation"
    );
}

extern "C" fn foreign_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
extern "C" fn our_test_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

#[test]
fn a_signal_that_already_has_a_handler_is_never_taken_over() {
    // Two low real-time signals that the crate's own handlers (which search from the top) leave
    // alone.
    let taken = libc::SIGRTMIN() + 1;
    let free = libc::SIGRTMIN() + 2;
    let foreign = foreign_handler as *const () as usize;
    let ours = our_test_handler as *const () as usize;
    install_foreign(taken, foreign);
    assert_eq!(claim_first_free([taken, free], ours), Some(free));
    assert_eq!(installed_handler(taken), foreign);
    assert_eq!(installed_handler(free), ours);
    assert_eq!(claim_first_free([taken, free], ours), None);
    // The capture signal is a different one, claimed the same way.
    let capture = capture_signal().unwrap();
    assert!(capture != taken && capture != free);
    assert_eq!(
        installed_handler(capture),
        handle_capture_signal as *const () as usize
    );
}

#[test]
fn a_short_slice_is_granted_or_scheduling_is_left_alone() {
    std::thread::spawn(|| {
        let before = this_threads_sched_attr().expect("sched_getattr");
        let granted = request_short_slice();
        let after = this_threads_sched_attr().expect("sched_getattr");
        assert_eq!(after.sched_policy, before.sched_policy);
        assert_eq!(after.sched_nice, before.sched_nice);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        if version >= (6, 12) {
            assert!(granted, "Linux {version:?} has custom slices");
        }
        if granted {
            assert_eq!(after.sched_runtime, SHORT_SLICE_NS);
        } else {
            assert_eq!(after.sched_runtime, before.sched_runtime);
        }
        eprintln!(
            "granted {granted}: slice {} ns -> {} ns",
            before.sched_runtime, after.sched_runtime
        );
    })
    .join()
    .unwrap();
}
