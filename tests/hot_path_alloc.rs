//! A request that is not slow costs no heap allocation in the watchdog once its registry slot
//! exists: proved with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};
use tower_vigil::watchdog::WatchdogLayer;

struct CountingAllocator;

thread_local! {
    /// Whether this thread's allocations are being counted, and how many there were. Per
    /// thread, so tests running in parallel do not count each other's allocations.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

fn allocations_so_far() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator; counting touches only const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `alloc`'s contract, which is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `realloc`'s contract, which is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Clone, Copy)]
struct Bare;

impl Service<Request<()>> for Bare {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn request() -> Request<()> {
    request_from("counting-test")
}

fn request_from(user_agent: &str) -> Request<()> {
    Request::get("/api/jobs?token=secret&page=2")
        .header("host", "example.com")
        .header("user-agent", user_agent)
        .header("x-request-id", "abc-123")
        .header("authorization", "Bearer x")
        .body(())
        .unwrap()
}

/// Runs one request through `service`, counting the allocations of the call and the poll.
fn allocations_of_one_request<B>(
    service: &mut impl Service<Request<()>, Response = Response<B>>,
) -> usize {
    allocations_of(service, request())
}

fn allocations_of<B>(
    service: &mut impl Service<Request<()>, Response = Response<B>>,
    request: Request<()>,
) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let before = allocations_so_far();
    COUNTING.with(|c| c.set(true));
    let future = service.call(request);
    let mut future = pin!(future);
    let ready = matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_)));
    COUNTING.with(|c| c.set(false));
    assert!(ready);
    allocations_so_far() - before
}

#[test]
fn requests_that_are_not_slow_do_not_allocate() {
    let layer = WatchdogLayer::builder(Duration::from_secs(25))
        .redact_query_param("token")
        .build()
        .unwrap();
    let mut service = layer.layer(Bare);
    // The first request on this thread creates its slot and sizes its buffers.
    for _ in 0..3 {
        allocations_of_one_request(&mut service);
    }
    let per: Vec<usize> = (0..1000)
        .map(|_| allocations_of_one_request(&mut service))
        .collect();
    let at: Vec<usize> = per
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, _)| i)
        .collect();
    let total: usize = per.iter().sum();
    assert_eq!(total, 0, "allocations in 1000 requests, at {at:?}");
    // No allocation at all also means the thread's registry slot was reused: a new slot
    // allocates. (The registry is the process's, shared with this binary's other tests, so
    // its slot count is not this test's to check.)
}

#[test]
fn a_new_header_value_allocates_once_and_only_while_the_shared_table_has_room() {
    let mut service = WatchdogLayer::new(Duration::from_secs(25)).layer(Bare);
    for _ in 0..3 {
        allocations_of(&mut service, request_from("agent/0000"));
    }
    // Every request brings a user agent never seen (all the same length, so the warm slot's
    // buffer fits each): the watchdog keeps the first few once, then copies them per request.
    let while_room: usize = (1..100)
        .map(|n| allocations_of(&mut service, request_from(&format!("agent/{n:04}"))))
        .sum();
    // One allocation per value kept (15 more fit beside the first), and one when the slot's
    // buffer, sized for a reference, first grows to hold a copy.
    assert!(
        (1..=16).contains(&while_room),
        "allocations while the table had room: {while_room}"
    );
    let after: usize = (100..1100)
        .map(|n| allocations_of(&mut service, request_from(&format!("agent/{n:04}"))))
        .sum();
    assert_eq!(
        after, 0,
        "the table is full: copies only, into the reused slot"
    );
    // A value kept once is found again without allocating.
    assert_eq!(allocations_of(&mut service, request_from("agent/0001")), 0);
}

#[test]
fn the_counter_sees_an_allocating_layer() {
    // The control: the same measurement notices a layer that allocates per request.
    let mut service = tower::util::MapRequestLayer::new(|r: Request<()>| {
        std::hint::black_box(Box::new(1u8));
        r
    })
    .layer(Bare);
    assert!(allocations_of_one_request(&mut service) >= 1);
}

#[test]
fn the_timebox_allocates_nothing_per_request_unless_its_extension_is_asked_for() {
    use tower_vigil::timebox::TimeboxLayer;
    let defaults = TimeboxLayer::builder(Duration::from_secs(25))
        .isolation(false)
        .build()
        .unwrap();
    let mut service = defaults.layer(Bare);
    for _ in 0..3 {
        allocations_of_one_request(&mut service);
    }
    let total: usize = (0..1000)
        .map(|_| allocations_of_one_request(&mut service))
        .sum();
    assert_eq!(total, 0, "allocations in 1000 requests with the defaults");
    let with_extension = TimeboxLayer::builder(Duration::from_secs(25))
        .isolation(false)
        .deadline_extension(true)
        .build()
        .unwrap();
    let mut service = with_extension.layer(Bare);
    for _ in 0..3 {
        allocations_of_one_request(&mut service);
    }
    let per_request = allocations_of_one_request(&mut service);
    eprintln!("timebox (inline) with the extension, allocations per request: {per_request}");
    // The extension map and the boxed deadline: what `http::Extensions` allocates.
    assert!((1..=3).contains(&per_request), "{per_request}");
}
