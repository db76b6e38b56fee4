//! Threads that work for a request outside its poll: a blocking-pool thread running its
//! `spawn_blocking` job, a thread with one of its spans entered. While they do, their stacks
//! belong in the request's report.
//!
//! A fixed table, written with atomics only, so marking a thread costs no lock and no
//! allocation; the reporter reads it when it makes a report.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// Helper threads tracked at once in the process; more are left out of reports.
const TABLE_SIZE: usize = 64;

struct Entry {
    request: AtomicU64,
    tid: AtomicI32,
}

static TABLE: [Entry; TABLE_SIZE] = [const {
    Entry {
        request: AtomicU64::new(0),
        tid: AtomicI32::new(0),
    }
}; TABLE_SIZE];

/// What this thread does for a request: which, how deep, and in which table entry.
#[derive(Clone, Copy)]
struct Helping {
    request: u64,
    depth: u32,
    entry: usize,
    previous: u64,
}

thread_local! {
    static HELPING: Cell<Option<Helping>> = const { Cell::new(None) };
}

/// Marks this thread as working for `request` until the matching [`leave`]; nested calls for
/// the same request only count. A thread polling another request is left alone.
pub(crate) fn enter(request: u64) {
    if request == 0 {
        return;
    }
    HELPING.with(|helping| {
        if let Some(mut current) = helping.get() {
            if current.request == request {
                current.depth += 1;
                helping.set(Some(current));
            }
            return;
        }
        if crate::stack::current_request() != 0 {
            // The polling thread itself: its stack is the report's own.
            return;
        }
        let tid = crate::stack::current_tid();
        let Some(entry) = TABLE.iter().position(|entry| {
            entry
                .request
                .compare_exchange(0, request, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }) else {
            return;
        };
        TABLE[entry].tid.store(tid, Ordering::Release);
        let previous = crate::stack::set_current_request(request);
        helping.set(Some(Helping {
            request,
            depth: 1,
            entry,
            previous,
        }));
    });
}

/// Ends one [`enter`] for `request` on this thread.
pub(crate) fn leave(request: u64) {
    HELPING.with(|helping| {
        let Some(mut current) = helping.get() else {
            return;
        };
        if current.request != request {
            return;
        }
        current.depth -= 1;
        if current.depth > 0 {
            helping.set(Some(current));
            return;
        }
        crate::stack::set_current_request(current.previous);
        TABLE[current.entry].tid.store(0, Ordering::Release);
        TABLE[current.entry].request.store(0, Ordering::Release);
        helping.set(None);
    });
}

/// While alive, this thread works for a request.
pub(crate) struct HelpingScope(u64);

impl HelpingScope {
    pub(crate) fn enter(request: u64) -> Self {
        enter(request);
        Self(request)
    }
}

impl Drop for HelpingScope {
    fn drop(&mut self) {
        leave(self.0);
    }
}

/// Threads working for `request` right now.
pub(crate) fn threads_of(request: u64) -> Vec<i32> {
    TABLE
        .iter()
        .filter(|entry| entry.request.load(Ordering::Acquire) == request)
        .map(|entry| entry.tid.load(Ordering::Acquire))
        .filter(|&tid| tid != 0)
        .collect()
}

/// [`tokio::task::spawn_blocking`] for request handlers: the blocking thread is marked as
/// working for the calling request while `work` runs, so a slow report of that request shows
/// the blocking thread's stack too, without any tracing span.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let rows = tower_vigil::spawn_blocking(|| 6 * 7).await.unwrap();
/// assert_eq!(rows, 42);
/// # }
/// ```
///
/// # Panics
///
/// Outside a tokio runtime, as [`tokio::task::spawn_blocking`] does.
pub fn spawn_blocking<F, R>(work: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let request = crate::stack::current_request();
    tokio::task::spawn_blocking(move || {
        let _helping = HelpingScope::enter(request);
        work()
    })
}
