//! Where a pending future awaits: one poll with a probe waker.
//!
//! A leaf future (tokio's `Sleep`, an IO resource, a channel, a lock, a `JoinHandle`) clones or
//! wakes the waker it is given from inside its own `poll`. Polling a pending request once more
//! with a waker whose `clone` and `wake_by_ref` record a backtrace therefore shows the chain of
//! async functions from the handler down to each leaf it waits on. The backtrace is taken on the
//! polling thread in ordinary code, never in a signal handler, and is symbolized later by the
//! reporter.
//!
//! Nothing of the probe outlives the poll: its `clone` returns a clone of the real waker, so a
//! leaf stores the real one, and the probe waker itself only lives on this function's stack.

#[cfg(test)]
use std::future::Future;
use std::mem::ManuallyDrop;
#[cfg(test)]
use std::pin::Pin;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use std::cell::RefCell;

/// Frames kept per awaited chain; deeper chains are cut at the outermost end and marked.
pub(crate) const MAX_PROBE_FRAMES: usize = 96;
/// Leaves kept per probe (`select!` and `join!` wait on several at once).
pub(crate) const MAX_LEAVES: usize = 16;

/// How a leaf showed itself during the probe poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeafSignal {
    /// It kept the waker (cloned it) to be woken later: it waits.
    Cloned,
    /// It woke the task at once: it is runnable again (yields, or wakes itself).
    Woke,
}

/// One leaf's call chain, raw, innermost first, as seen from inside the waker.
#[derive(Debug, Clone)]
pub(crate) struct RawLeaf {
    pub(crate) signal: LeafSignal,
    pub(crate) ips: Vec<usize>,
    pub(crate) truncated: bool,
}

/// Where one probe poll's findings are delivered: filled by the polling thread, read by the
/// reporter.
pub(crate) type ProbeAnswer = std::sync::Mutex<Option<ProbeFindings>>;

/// What one probe poll found.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeFindings {
    pub(crate) leaves: Vec<RawLeaf>,
    /// Leaves seen beyond [`MAX_LEAVES`].
    pub(crate) more_leaves: usize,
    /// The future completed during the probe poll.
    pub(crate) completed: bool,
}

struct ProbeState<'a> {
    real: &'a Waker,
    findings: RefCell<ProbeFindings>,
}

impl ProbeState<'_> {
    fn record(&self, signal: LeafSignal) {
        let mut ips = Vec::with_capacity(32);
        let mut truncated = false;
        // SAFETY: the unsynchronized walk is the platform unwinder, which is thread-safe on the
        // platforms stacks are taken on (see the module docs of `stack`). The synchronized
        // `trace` would take the lock that symbolization holds for up to a second, stalling
        // the application's worker thread inside its poll.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                if ips.len() == MAX_PROBE_FRAMES {
                    truncated = true;
                    return false;
                }
                ips.push(frame.ip() as usize);
                true
            });
        }
        let Ok(mut findings) = self.findings.try_borrow_mut() else {
            return;
        };
        if findings
            .leaves
            .iter()
            .any(|leaf| leaf.signal == signal && leaf.ips == ips)
        {
            return;
        }
        if findings.leaves.len() == MAX_LEAVES {
            findings.more_leaves += 1;
            return;
        }
        findings.leaves.push(RawLeaf {
            signal,
            ips,
            truncated,
        });
    }
}

const PROBE_VTABLE: RawWakerVTable =
    RawWakerVTable::new(probe_clone, probe_wake, probe_wake_by_ref, probe_drop);

unsafe fn probe_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is the `ProbeState` on `poll_probed`'s stack; a probe waker (and so this
    // call) can only exist while `poll_probed` is running, because the only owned wakers the
    // vtable ever hands out are clones of the real waker.
    let state = unsafe { &*(data as *const ProbeState<'_>) };
    state.record(LeafSignal::Cloned);
    let real = ManuallyDrop::new(state.real.clone());
    RawWaker::new(real.data(), real.vtable())
}

unsafe fn probe_wake(data: *const ()) {
    // SAFETY: as in `probe_clone`. The probe waker owns nothing, so consuming it frees nothing.
    unsafe { probe_wake_by_ref(data) }
}

unsafe fn probe_wake_by_ref(data: *const ()) {
    // SAFETY: as in `probe_clone`.
    let state = unsafe { &*(data as *const ProbeState<'_>) };
    state.record(LeafSignal::Woke);
    state.real.wake_by_ref();
}

unsafe fn probe_drop(_: *const ()) {}

/// Polls `future` once with a probe waker that wraps the waker of `cx`, and returns the poll's
/// result with what the leaves showed. A panic in the poll propagates as from a normal poll.
#[cfg(test)]
pub(crate) fn poll_probed<F: Future>(
    future: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> (Poll<F::Output>, ProbeFindings) {
    poll_probed_with(cx, |cx| future.poll(cx))
}

/// [`poll_probed`] for any poll function, such as a response body's `poll_frame`.
pub(crate) fn poll_probed_with<T>(
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> (Poll<T>, ProbeFindings) {
    let state = ProbeState {
        real: cx.waker(),
        findings: RefCell::new(ProbeFindings::default()),
    };
    let raw = RawWaker::new(&state as *const ProbeState<'_> as *const (), &PROBE_VTABLE);
    // SAFETY: the vtable's functions uphold the `RawWaker` contract: clone returns a working
    // waker (the real one), wake and wake_by_ref wake the real waker, and drop has nothing to
    // free. `data` stays valid for as long as this waker lives, which ends with this function;
    // it never escapes, because `clone` hands out the real waker, not this one.
    let probe = ManuallyDrop::new(unsafe { Waker::from_raw(raw) });
    let mut probe_cx = Context::from_waker(&probe);
    let output = poll(&mut probe_cx);
    let mut findings = state.findings.into_inner();
    findings.completed = output.is_ready();
    (output, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWake(AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[inline(never)]
    fn vigil_probe_leaf_keeps_the_waker(cx: &mut Context<'_>, slot: &mut Option<Waker>) {
        *slot = Some(cx.waker().clone());
    }

    #[test]
    fn a_leaf_that_keeps_the_waker_is_found_and_keeps_the_real_one() {
        let counter = Arc::new(CountingWake(AtomicUsize::new(0)));
        let real = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&real);
        let mut stored = None;
        let mut future = std::future::poll_fn(|cx| {
            vigil_probe_leaf_keeps_the_waker(cx, &mut stored);
            Poll::<()>::Pending
        });
        let (output, findings) = poll_probed(Pin::new(&mut future), &mut cx);
        assert!(output.is_pending());
        assert_eq!(findings.leaves.len(), 1);
        assert_eq!(findings.leaves[0].signal, LeafSignal::Cloned);
        let stored = stored.take().expect("the leaf kept a waker");
        assert!(stored.will_wake(&real), "the leaf holds the real waker");
        stored.wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // The recorded chain names the leaf.
        let mut names = Vec::new();
        for &ip in &findings.leaves[0].ips {
            backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
                if let Some(name) = symbol.name() {
                    names.push(name.to_string());
                }
            });
        }
        assert!(
            names
                .iter()
                .any(|n| n.contains("vigil_probe_leaf_keeps_the_waker")),
            "{names:?}"
        );
    }

    #[test]
    fn a_future_that_wakes_itself_is_seen_once_per_probe_and_still_woken() {
        let counter = Arc::new(CountingWake(AtomicUsize::new(0)));
        let real = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&real);
        let mut future = std::future::poll_fn(|cx| {
            // The same call site twice: one chain, two wakes.
            for _ in 0..2 {
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        });
        let (_, findings) = poll_probed(Pin::new(&mut future), &mut cx);
        assert_eq!(findings.leaves.len(), 1, "the same chain is kept once");
        assert_eq!(findings.leaves[0].signal, LeafSignal::Woke);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            2,
            "every wake reaches the task"
        );
    }

    #[test]
    fn a_completing_future_completes_and_a_panic_propagates() {
        let real = Waker::noop();
        let mut cx = Context::from_waker(real);
        let mut ready = std::future::ready(7);
        let (output, findings) = poll_probed(Pin::new(&mut ready), &mut cx);
        assert_eq!(output, Poll::Ready(7));
        assert!(findings.completed);
        let mut panicking = std::future::poll_fn(|_| -> Poll<()> { panic!("vigil probe panic") });
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_probed(Pin::new(&mut panicking), &mut cx)
        }));
        assert!(caught.is_err());
    }
}
