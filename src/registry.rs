//! In-flight requests: one reusable slot each, in shards, scanned by the monitor thread.
//!
//! The request path touches only its own slot and its shard's free list. Slots are never freed
//! while the registry lives, so a request reuses the memory (including the capacity of its
//! description) of an earlier one and registers without allocating once the registry has
//! warmed up. Slots are made 64 at a time in one chunk, whose dense array of heads (id word and
//! due time) is all the monitor's scan reads.

use std::sync::atomic::{AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::report::RequestMeta;
use crate::stack::probe::{ProbeAnswer, ProbeFindings};
use crate::timebox::Deadline;
use crate::tracked::Parts;

/// Phases of a request, packed with its id into one atomic word so that a phase change can
/// never apply to a later request that reuses the slot.
const PHASE_BITS: u64 = 2;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;
const RUNNING: u64 = 1;
const STUCK: u64 = 2;
const FINISHED: u64 = 3;

/// Sentinel for "nothing due".
pub(crate) const NEVER: u64 = u64::MAX;

const FLAG_BITS: u64 = 5;
/// The soft deadline has passed: the request's `Deadline` is cancelled.
pub(crate) const SOFT_FIRED: u64 = 1;
/// The hard deadline has passed: the response future must answer 503.
pub(crate) const HARD_FIRED: u64 = 2;
/// A thread was still inside the request's poll at the hard deadline.
pub(crate) const WEDGED: u64 = 4;
/// The monitor asked for a probe poll of the request.
const PROBE_WANTED: u64 = 8;
/// A watchdog watches the request, and the slot's description is its.
const WATCHED: u64 = 16;
/// Bits of a request id's generation: an id shifted past the flags must still fit in a word.
const GENERATION_BITS: u32 = 64 - 32 - FLAG_BITS as u32;
/// The flags that say how the request's deadlines stand.
const DEADLINE_FLAGS: u64 = SOFT_FIRED | HARD_FIRED | WEDGED;

/// Woken at soft deadlines: a request's `Deadline::cancelled` waits on the bell its id picks
/// and checks its own flag when woken. Shared bells keep a slot small; a soft deadline wakes
/// the few other waiters on its bell, who look and wait again.
static SOFT_BELLS: [Notify; 64] = [const { Notify::const_new() }; 64];

/// The bell request `id` waits on for its soft deadline.
pub(crate) fn soft_bell(id: u64) -> &'static Notify {
    &SOFT_BELLS[id as usize % SOFT_BELLS.len()]
}

/// A route hash as a slot keeps it: its low 32 bits, never 0 (which means "not taken").
fn stored_route_hash(hash: u64) -> u32 {
    (hash as u32).max(1)
}

/// When each event of a request falls due, in registry nanoseconds ([`NEVER`] for none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dues {
    pub(crate) watch: u64,
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// Nanoseconds since the registry's epoch: a monotonic clock that fits in an atomic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    epoch_wall: SystemTime,
    /// The coarse clock's reading at `epoch`.
    coarse_epoch: u64,
}

impl Clock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            coarse_epoch: crate::stack::coarse_now_ns(),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// [`Clock::now_ns`] to a few milliseconds, cheaply: for per-frame times.
    pub(crate) fn coarse_now_ns(&self) -> u64 {
        crate::stack::coarse_now_ns().saturating_sub(self.coarse_epoch)
    }

    pub(crate) fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub(crate) fn wall_at(&self, ns: u64) -> SystemTime {
        self.epoch_wall + Duration::from_nanos(ns)
    }
}

/// What a scan reads of a slot, kept apart from the slots in a dense array: a scan of a large
/// registry reads 16 bytes per slot rather than a cache line.
struct Head {
    /// `id << PHASE_BITS | phase`, or 0 while the slot is free.
    word: AtomicU64,
    /// Earliest of the slot's events: what the monitor schedules by.
    due_ns: AtomicU64,
}

/// One in-flight request's record (beyond its [`Head`]): atomics the request path and the
/// monitor share, and the rest under one lock. Kept small, since a busy service has one per
/// request in flight: times after the start are 32-bit offsets from it.
pub(crate) struct Slot {
    started_ns: AtomicU64,
    /// `id << FLAG_BITS | flags`, so a late flag can never land on a later request. The id's
    /// generation also tells the slot's next request its own.
    deadline_flags: AtomicU64,
    body_bytes: AtomicU64,
    /// Offsets from the start in [`DUE_UNIT_NS`] units, rounded up ([`NO_DUE`] for none).
    watch_due: AtomicU32,
    soft_due: AtomicU32,
    hard_due: AtomicU32,
    /// When a stuck request ended, in the same units (0 while it runs).
    finished_at: AtomicU32,
    /// Hash of the request's route, for adaptive isolation (0 when not needed).
    route_hash: AtomicU32,
    /// Milliseconds from the start to when the handler answered and the body began to
    /// stream, plus one (0 while the handler runs).
    body_started_ms: AtomicU32,
    body_frames: AtomicU32,
    /// Milliseconds from the start to the body's last frame.
    body_last_ms: AtomicU32,
    polling_tid: AtomicI32,
    reports: AtomicU16,
    /// HTTP status of the finished response, or 0 when the future was dropped without one.
    finished_status: AtomicU16,
    occupant: Mutex<Occupant>,
}

/// Unit of a slot's due offsets: 2^16 ns (65.5 µs), far below any monitor tick, so that 32
/// bits reach 78 hours past a request's start.
const DUE_UNIT_NS: u64 = 1 << 16;
/// "Nothing due" as an offset. A due more than 78 hours after the start is kept as none.
const NO_DUE: u32 = u32::MAX;

/// `due_ns` as an offset from `started_ns`, rounded up so an event never fires early.
fn due_offset(started_ns: u64, due_ns: u64) -> u32 {
    if due_ns == NEVER {
        return NO_DUE;
    }
    let units = due_ns.saturating_sub(started_ns).div_ceil(DUE_UNIT_NS);
    u32::try_from(units).unwrap_or(NO_DUE)
}

fn due_at(started_ns: u64, offset: u32) -> u64 {
    if offset == NO_DUE {
        NEVER
    } else {
        started_ns + u64::from(offset) * DUE_UNIT_NS
    }
}

/// What a slot knows of its request beyond atomics: its description, the parts (watch,
/// deadlines) it runs under, and the wakers the monitor may call. Written at registration and
/// on pending polls, read by the monitor.
#[derive(Default)]
pub(crate) struct Occupant {
    pub(crate) request: RequestMeta,
    pub(crate) parts: Option<Arc<Parts>>,
    /// Woken at the hard deadline: the response future of the timebox.
    deadline_waker: Option<Waker>,
    /// The waker of the task that polls the request's own future, kept from its last pending
    /// poll so the monitor can ask for a probe poll.
    task_waker: Option<Waker>,
}

impl Slot {
    fn new() -> Self {
        Self {
            started_ns: AtomicU64::new(0),
            deadline_flags: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            watch_due: AtomicU32::new(NO_DUE),
            soft_due: AtomicU32::new(NO_DUE),
            hard_due: AtomicU32::new(NO_DUE),
            finished_at: AtomicU32::new(0),
            route_hash: AtomicU32::new(0),
            body_started_ms: AtomicU32::new(0),
            body_frames: AtomicU32::new(0),
            body_last_ms: AtomicU32::new(0),
            polling_tid: AtomicI32::new(0),
            reports: AtomicU16::new(0),
            finished_status: AtomicU16::new(0),
            occupant: Mutex::new(Occupant::default()),
        }
    }

    pub(crate) fn occupant(&self) -> MutexGuard<'_, Occupant> {
        lock(&self.occupant)
    }

    /// The occupant of request `id`, or `None` if the slot has moved on. A slot's flags word
    /// takes a new id only under this lock, so while it is held the word says whose it is: the
    /// occupant needs no id of its own.
    pub(crate) fn occupant_of(&self, id: u64) -> Option<MutexGuard<'_, Occupant>> {
        let occupant = self.occupant();
        (self.deadline_flags.load(Ordering::Relaxed) >> FLAG_BITS == id).then_some(occupant)
    }

    /// The parts of request `id`, or `None` if the slot has moved on.
    pub(crate) fn parts_of(&self, id: u64) -> Option<Arc<Parts>> {
        self.occupant_of(id)?.parts.clone()
    }

    /// The parts of request `id` if a watchdog watches it (it was not ignored), or `None`.
    pub(crate) fn watched_parts_of(&self, id: u64) -> Option<Arc<Parts>> {
        self.parts_and_watched(id)
            .and_then(|(parts, watched)| watched.then_some(parts))
    }

    /// The parts of request `id` and whether a watchdog watches it, or `None` if the slot has
    /// moved on.
    pub(crate) fn parts_and_watched(&self, id: u64) -> Option<(Arc<Parts>, bool)> {
        let parts = self.occupant_of(id)?.parts.clone()?;
        Some((parts, self.watches(id)))
    }

    /// Whether a watchdog watches request `id`.
    pub(crate) fn watches(&self, id: u64) -> bool {
        let word = self.deadline_flags.load(Ordering::Acquire);
        word >> FLAG_BITS == id && word & WATCHED != 0
    }

    /// The body's progress, once the handler has answered, in registry nanoseconds (to the
    /// millisecond): started, bytes, frames, last frame.
    pub(crate) fn body_progress(&self) -> Option<(u64, u64, u64, u64)> {
        let started_ms = self.body_started_ms.load(Ordering::Acquire);
        let request_started = self.started_ns();
        let at = |ms: u32| request_started + u64::from(ms) * 1_000_000;
        (started_ms != 0).then(|| {
            (
                at(started_ms - 1),
                self.body_bytes.load(Ordering::Relaxed),
                u64::from(self.body_frames.load(Ordering::Relaxed)),
                at(self.body_last_ms.load(Ordering::Relaxed)),
            )
        })
    }

    /// Milliseconds since the request started, to the coarse clock's precision.
    fn ms_since_start(&self, clock: &Clock) -> u32 {
        let ms = clock.coarse_now_ns().saturating_sub(self.started_ns()) / 1_000_000;
        ms.min(u64::from(u32::MAX - 1)) as u32
    }

    /// A hash of the request's route (its low 32 bits: enough to tell routes apart), when it
    /// was taken at registration.
    pub(crate) fn route_hash(&self) -> Option<u64> {
        match self.route_hash.load(Ordering::Relaxed) {
            0 => None,
            hash => Some(u64::from(hash)),
        }
    }

    /// The route hash of request `id`: the one taken at registration, or else one from the
    /// request's copy. `None` when neither exists: the slot moved on, the request was not
    /// watched, or its URI was cut.
    pub(crate) fn route_hash_of(&self, id: u64) -> Option<u64> {
        self.route_hash().or_else(|| {
            let occupant = self.occupant_of(id)?;
            self.watches(id)
                .then(|| occupant.request.route_hash())
                .flatten()
                .map(|hash| u64::from(stored_route_hash(hash)))
        })
    }

    pub(crate) fn started_ns(&self) -> u64 {
        self.started_ns.load(Ordering::Relaxed)
    }

    /// The earliest pending event.
    fn earliest_due_ns(&self) -> u64 {
        let earliest = self
            .watch_due
            .load(Ordering::Relaxed)
            .min(self.soft_due.load(Ordering::Relaxed))
            .min(self.hard_due.load(Ordering::Relaxed));
        due_at(self.started_ns(), earliest)
    }

    pub(crate) fn watch_due_ns(&self) -> u64 {
        due_at(self.started_ns(), self.watch_due.load(Ordering::Relaxed))
    }

    pub(crate) fn set_watch_due_ns(&self, due: u64) {
        self.watch_due
            .store(due_offset(self.started_ns(), due), Ordering::Relaxed);
    }

    /// Takes the soft deadline if it has come: true once per request.
    pub(crate) fn take_soft_due(&self, now: u64) -> bool {
        self.take_due(&self.soft_due, now)
    }

    /// Takes the hard deadline if it has come: true once per request.
    pub(crate) fn take_hard_due(&self, now: u64) -> bool {
        self.take_due(&self.hard_due, now)
    }

    fn take_due(&self, due: &AtomicU32, now: u64) -> bool {
        let at = due.load(Ordering::Relaxed);
        at != NO_DUE
            && due_at(self.started_ns(), at) <= now
            && due
                .compare_exchange(at, NO_DUE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Lets go of the soft and hard deadlines: they never fire.
    fn drop_deadlines(&self) {
        self.soft_due.store(NO_DUE, Ordering::Relaxed);
        self.hard_due.store(NO_DUE, Ordering::Relaxed);
    }

    fn has_hard_due(&self) -> bool {
        self.hard_due.load(Ordering::Relaxed) != NO_DUE
    }

    /// Sets deadline flags for request `id`; false if the slot has moved on to another request.
    pub(crate) fn raise(&self, id: u64, flags: u64) -> bool {
        let mut current = self.deadline_flags.load(Ordering::Acquire);
        loop {
            if current >> FLAG_BITS != id {
                return false;
            }
            match self.deadline_flags.compare_exchange_weak(
                current,
                current | flags,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Deadline flags of request `id`; a slot that moved on reports every deadline as passed,
    /// because the request it was asked about is over.
    pub(crate) fn flags(&self, id: u64) -> u64 {
        let word = self.deadline_flags.load(Ordering::Acquire);
        if word >> FLAG_BITS == id {
            word & DEADLINE_FLAGS
        } else {
            SOFT_FIRED | HARD_FIRED
        }
    }

    /// Stores the waker to call at request `id`'s hard deadline, cloning only when it changed;
    /// nothing once the slot has moved on, so a late poll cannot leave its waker to a later
    /// request's deadline.
    pub(crate) fn set_waker(&self, id: u64, waker: &Waker) {
        self.keep_waker(id, waker, |occupant| &mut occupant.deadline_waker);
    }

    pub(crate) fn wake(&self) {
        let waker = self.occupant().deadline_waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Keeps the waker of the task polling request `id`, cloning only when it changed.
    pub(crate) fn set_task_waker(&self, id: u64, waker: &Waker) {
        self.keep_waker(id, waker, |occupant| &mut occupant.task_waker);
    }

    /// Keeps `waker` in the cell `cell` picks, for request `id` only, cloning only when it
    /// changed.
    fn keep_waker(
        &self,
        id: u64,
        waker: &Waker,
        cell: impl FnOnce(&mut Occupant) -> &mut Option<Waker>,
    ) {
        let Some(mut occupant) = self.occupant_of(id) else {
            return;
        };
        let held = cell(&mut occupant);
        match held {
            Some(current) if current.will_wake(waker) => {}
            _ => *held = Some(waker.clone()),
        }
    }

    /// Takes the request for a probe poll of request `id`: true once per request made.
    pub(crate) fn take_probe(&self, id: u64) -> bool {
        let word = self.deadline_flags.load(Ordering::Relaxed);
        // Only the task holding request `id` calls this, so the slot cannot move on meanwhile.
        word >> FLAG_BITS == id
            && word & PROBE_WANTED != 0
            && self
                .deadline_flags
                .fetch_and(!PROBE_WANTED, Ordering::AcqRel)
                & PROBE_WANTED
                != 0
    }

    pub(crate) fn polling_tid(&self) -> i32 {
        self.polling_tid.load(Ordering::Acquire)
    }

    /// Number of slow reports made for the current request so far.
    pub(crate) fn reports(&self) -> u32 {
        u32::from(self.reports.load(Ordering::Relaxed))
    }

    pub(crate) fn add_report(&self) {
        // The monitor and a shutting-down watchdog may both report: one atomic step.
        let _ = self
            .reports
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// When a stuck request ended (registry ns, to [`DUE_UNIT_NS`]) and the status it sent.
    pub(crate) fn finished(&self) -> (u64, Option<u16>) {
        let status = self.finished_status.load(Ordering::Relaxed);
        (
            due_at(self.started_ns(), self.finished_at.load(Ordering::Relaxed)),
            (status != 0).then_some(status),
        )
    }
}

/// What the monitor sees of a slot in one scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Running {
        id: u64,
    },
    Stuck {
        id: u64,
    },
    /// Finished after it was reported stuck: the completion record is still owed.
    FinishedAfterStuck {
        id: u64,
    },
}

impl Seen {
    /// What a head's word says of its slot; `None` when the slot is free.
    fn of(word: u64) -> Option<Self> {
        let id = word >> PHASE_BITS;
        match word & PHASE_MASK {
            _ if word == 0 => None,
            RUNNING => Some(Seen::Running { id }),
            STUCK => Some(Seen::Stuck { id }),
            FINISHED => Some(Seen::FinishedAfterStuck { id }),
            _ => None,
        }
    }
}

/// Slots are made this many at a time: no per-slot allocation header, and a scan walks
/// memory in order. The heads of a chunk are one allocation of their own (4 KB), so a scan
/// touches a page per 256 requests: on a virtual machine a page untouched for a second can
/// cost microseconds to touch again, and the scan comes once a second.
const CHUNK_SLOTS: usize = 256;

struct Chunk {
    heads: Box<[Head; CHUNK_SLOTS]>,
    slots: Box<[Slot; CHUNK_SLOTS]>,
    /// No head of the chunk is due before this, nor holds a finished stuck request: the
    /// monitor's scan skips the chunk until then. Lowered only under the shard's lock (a
    /// registration, a stuck request's end) and set by the scan under it, so it is never later
    /// than a due; a due that moves later (a deadline taken, a report made) leaves it early,
    /// and the next scan of the chunk sets it again.
    earliest_due: AtomicU64,
}

impl Chunk {
    /// Built on the heap: a chunk is too big for a small thread's stack.
    fn new() -> Self {
        fn boxed<T>(make: impl FnMut() -> T) -> Box<[T; CHUNK_SLOTS]> {
            let items: Box<[T]> = std::iter::repeat_with(make).take(CHUNK_SLOTS).collect();
            match items.try_into() {
                Ok(array) => array,
                Err(_) => unreachable!("exactly CHUNK_SLOTS items were made"),
            }
        }
        Self {
            heads: boxed(|| Head {
                word: AtomicU64::new(0),
                due_ns: AtomicU64::new(NEVER),
            }),
            slots: boxed(Slot::new),
            earliest_due: AtomicU64::new(NEVER),
        }
    }

    /// Lowers the chunk's earliest due to `due_ns`. Only under the shard's lock.
    fn lower_earliest_due(&self, due_ns: u64) {
        if self.earliest_due.load(Ordering::Relaxed) > due_ns {
            self.earliest_due.store(due_ns, Ordering::Relaxed);
        }
    }
}

/// A slot: what requests and the monitor hold on to. Chunks are never freed (see
/// [`Registry::leak`]), so holding one costs no reference count.
#[derive(Clone, Copy)]
pub(crate) struct SlotRef {
    chunk: &'static Chunk,
    index: usize,
}

impl std::ops::Deref for SlotRef {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        // `index` is below CHUNK_SLOTS already; the modulo lets the compiler drop the bounds
        // check on this path, taken several times per request.
        &self.chunk.slots[self.index % CHUNK_SLOTS]
    }
}

impl SlotRef {
    fn head(&self) -> &'static Head {
        &self.chunk.heads[self.index % CHUNK_SLOTS]
    }

    fn slot(&self) -> &'static Slot {
        &self.chunk.slots[self.index % CHUNK_SLOTS]
    }

    /// The slot's current request id, or 0 when free.
    pub(crate) fn current_id(&self) -> u64 {
        self.head().word.load(Ordering::Acquire) >> PHASE_BITS
    }

    pub(crate) fn due_ns(&self) -> u64 {
        self.head().due_ns.load(Ordering::Relaxed)
    }

    /// Recomputes the monitor's due time from the pending events.
    pub(crate) fn reschedule(&self) {
        let due = self.slot().earliest_due_ns();
        self.head().due_ns.store(due, Ordering::Relaxed);
    }

    /// Deadline flags of request `id`, or `None` if the slot no longer holds it.
    pub(crate) fn flags_if_current(&self, id: u64) -> Option<u64> {
        let word = self.slot().deadline_flags.load(Ordering::Acquire);
        (word >> FLAG_BITS == id && self.current_id() == id).then_some(word & DEADLINE_FLAGS)
    }

    /// Marks the request stuck; false if it already finished (or the slot moved on).
    pub(crate) fn mark_stuck(&self, id: u64) -> bool {
        let running = id << PHASE_BITS | RUNNING;
        let stuck = id << PHASE_BITS | STUCK;
        match self
            .head()
            .word
            .compare_exchange(running, stuck, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(current) => current == stuck,
        }
    }
}

struct Shard {
    chunks: Vec<&'static Chunk>,
    /// Slots made so far; the last chunk may have room for more.
    made: usize,
    free: Vec<u32>,
}

/// The table of in-flight requests.
pub(crate) struct Registry {
    shards: Box<[Mutex<Shard>]>,
    pub(crate) clock: Clock,
    next_shard: AtomicUsize,
    pub(crate) wake: Wake,
    /// Where each probe poll asked for delivers what it found, by request id: a cell of the
    /// probe's own, so a later request in the slot can never overwrite an answer not yet
    /// collected. Few at a time, so kept here rather than in every slot.
    probes_asked: Mutex<Vec<(u64, Arc<ProbeAnswer>)>>,
}

/// The slot number of request `id`: its place in its shard, and its shard.
fn number_of(id: u64) -> u32 {
    id as u32
}

fn shard_of(number: u32) -> usize {
    (number & (MAX_SHARDS as u32 - 1)) as usize
}

const SHARD_BITS: u32 = 6;
const MAX_SHARDS: usize = 1 << SHARD_BITS;

thread_local! {
    static HOME_SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

impl Registry {
    /// A registry for the rest of the process. A process has one, the core's, which is never
    /// dropped; requests and the monitor hold it and its slots by reference, so registering a
    /// request counts no references up and down.
    pub(crate) fn leak() -> &'static Registry {
        Box::leak(Box::new(Self::new()))
    }

    fn new() -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(2, MAX_SHARDS);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        chunks: Vec::new(),
                        made: 0,
                        free: Vec::new(),
                    })
                })
                .collect(),
            clock: Clock::new(),
            next_shard: AtomicUsize::new(0),
            wake: Wake::new(),
            probes_asked: Mutex::new(Vec::new()),
        }
    }

    fn home_shard(&self) -> usize {
        HOME_SHARD.with(|home| {
            let mut shard = home.get();
            if shard >= self.shards.len() {
                shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
                home.set(shard);
            }
            shard
        })
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard])
    }

    /// Registers a request that started at `started_ns` with events at `dues`; for a watched
    /// request (one with a watch due), `fill` writes its description into the slot's reused
    /// buffers.
    pub(crate) fn register(
        &'static self,
        started_ns: u64,
        dues: Dues,
        route_hash: Option<u64>,
        parts: &Arc<Parts>,
        fill: impl FnOnce(&mut RequestMeta),
    ) -> Registration {
        let shard = self.home_shard();
        let offsets = [dues.watch, dues.soft, dues.hard].map(|due| due_offset(started_ns, due));
        // The rounded due, as `reschedule` gives it: the monitor wakes when the event can fire.
        let due_ns = due_at(started_ns, offsets.into_iter().min().unwrap_or(NO_DUE));
        let (slot, index) = {
            let mut guard = self.lock(shard);
            let index = match guard.free.pop() {
                Some(index) => index as usize,
                None => {
                    let index = guard.made;
                    if index % CHUNK_SLOTS == 0 {
                        // Never freed: slots are reused, and requests hold them by reference.
                        guard.chunks.push(Box::leak(Box::new(Chunk::new())));
                    }
                    guard.made += 1;
                    index
                }
            };
            let slot = SlotRef {
                chunk: guard.chunks[index / CHUNK_SLOTS],
                index: index % CHUNK_SLOTS,
            };
            // Under the shard's lock, so a scan sees the due or sets the chunk's earliest after.
            slot.head().due_ns.store(due_ns, Ordering::Relaxed);
            slot.chunk.lower_earliest_due(due_ns);
            (slot, index)
        };
        let number = ((index as u32) << SHARD_BITS) | shard as u32;
        // Only the slot's holder writes its flags word, so the last id in it is the previous
        // request's: the next generation follows from it.
        let previous = slot.deadline_flags.load(Ordering::Relaxed) >> FLAG_BITS >> 32;
        let generation = (previous as u32).wrapping_add(1) & ((1 << GENERATION_BITS) - 1);
        let generation = generation.max(1);
        let id = (u64::from(generation) << 32) | u64::from(number);
        let watched = dues.watch != NEVER;
        slot.started_ns.store(started_ns, Ordering::Relaxed);
        slot.route_hash
            .store(route_hash.map_or(0, stored_route_hash), Ordering::Relaxed);
        slot.body_started_ms.store(0, Ordering::Relaxed);
        for (offset, due) in [&slot.watch_due, &slot.soft_due, &slot.hard_due]
            .into_iter()
            .zip(offsets)
        {
            offset.store(due, Ordering::Relaxed);
        }
        slot.finished_at.store(0, Ordering::Relaxed);
        let head = slot.head();
        let watched_flag = if watched { WATCHED } else { 0 };
        slot.reports.store(0, Ordering::Relaxed);
        slot.polling_tid.store(0, Ordering::Relaxed);
        // A status left by the slot's previous request must never describe this one.
        slot.finished_status.store(0, Ordering::Relaxed);
        {
            let mut occupant = slot.occupant();
            // Under the lock: the flags word's id is whose the occupant is.
            slot.deadline_flags
                .store(id << FLAG_BITS | watched_flag, Ordering::Release);
            // Neither a probe nor a deadline may wake the slot's last request. The response
            // future keeps this request's deadline waker only once the handler waits, and looks
            // at the deadline right after, so a request answered in its first poll never
            // touches the waker.
            occupant.task_waker = None;
            occupant.deadline_waker = None;
            if !occupant
                .parts
                .as_ref()
                .is_some_and(|held| Arc::ptr_eq(held, parts))
            {
                occupant.parts = Some(parts.clone());
            }
            if watched {
                fill(&mut occupant.request);
            }
        }
        head.word
            .store(id << PHASE_BITS | RUNNING, Ordering::Release);
        self.wake.note_due(due_ns);
        Registration {
            registry: self,
            slot,
            id,
            watched,
            long_lived_exempt: parts.watch.as_ref().is_none_or(|w| w.long_lived_exempt),
            deadlines: None,
        }
    }

    /// Puts the slot of request `id` back on its shard's free list.
    fn release(&self, slot: &SlotRef, id: u64) {
        let number = number_of(id);
        let mut shard = self.lock(shard_of(number));
        // A free slot is never due: the chunk's next scan can leave it out of its earliest.
        slot.head().due_ns.store(NEVER, Ordering::Relaxed);
        shard.free.push(number >> SHARD_BITS);
    }

    /// Recomputes the due of request `id` after the monitor fired one of its events. Under
    /// the shard's lock, where a registration sets a slot's first due: a slot that passed to
    /// another request meanwhile keeps that request's due.
    pub(crate) fn reschedule(&self, slot: &SlotRef, id: u64) {
        let _shard = self.lock(shard_of(number_of(id)));
        if slot.current_id() == id {
            slot.reschedule();
        }
    }

    /// Makes the next scan visit the slot of request `id`, a stuck request that finished.
    fn note_finished(&self, slot: &SlotRef, id: u64) {
        let _shard = self.lock(shard_of(number_of(id)));
        slot.chunk.lower_earliest_due(0);
    }

    /// Frees a slot whose completion record the monitor has emitted.
    pub(crate) fn release_finished(&self, slot: &SlotRef, id: u64) {
        if slot
            .head()
            .word
            .compare_exchange(
                id << PHASE_BITS | FINISHED,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.release(slot, id);
        }
    }

    /// Calls `visit` with each chunk and its count of slots made, one shard at a time, under
    /// the shard's lock.
    fn for_each_chunk(&self, mut visit: impl FnMut(&'static Chunk, usize)) {
        for shard in 0..self.shards.len() {
            let guard = self.lock(shard);
            let mut left = guard.made;
            for &chunk in &guard.chunks {
                let in_chunk = left.min(CHUNK_SLOTS);
                left -= in_chunk;
                visit(chunk, in_chunk);
            }
        }
    }

    /// Calls `visit` for every occupied slot. Holds one shard lock at a time, briefly: the
    /// visitor must only read atomics and copy.
    pub(crate) fn scan(&self, mut visit: impl FnMut(SlotRef, Seen)) {
        self.for_each_chunk(|chunk, in_chunk| {
            for (index, head) in chunk.heads[..in_chunk].iter().enumerate() {
                if let Some(seen) = Seen::of(head.word.load(Ordering::Acquire)) {
                    visit(SlotRef { chunk, index }, seen);
                }
            }
        });
    }

    /// Calls `visit` for every occupied slot due at `now` and every finished stuck one, and
    /// returns the earliest due of the others. Chunks with nothing due are skipped: with
    /// 100 000 requests waiting for a far threshold, a scan reads a word per chunk of
    /// [`CHUNK_SLOTS`], not a head per request.
    pub(crate) fn scan_due(&self, now: u64, mut visit: impl FnMut(SlotRef, Seen)) -> u64 {
        let mut next = NEVER;
        self.for_each_chunk(|chunk, in_chunk| {
            let earliest = chunk.earliest_due.load(Ordering::Relaxed);
            if earliest > now {
                next = next.min(earliest);
                return;
            }
            let mut chunk_earliest = NEVER;
            for (index, head) in chunk.heads[..in_chunk].iter().enumerate() {
                let word = head.word.load(Ordering::Acquire);
                let due = head.due_ns.load(Ordering::Relaxed);
                chunk_earliest = chunk_earliest.min(due);
                let Some(seen) = Seen::of(word) else {
                    continue;
                };
                if matches!(seen, Seen::FinishedAfterStuck { .. }) || due <= now {
                    // Visited now; the chunk is looked at again once the visit moved it on.
                    chunk_earliest = 0;
                    visit(SlotRef { chunk, index }, seen);
                } else {
                    next = next.min(due);
                }
            }
            chunk.earliest_due.store(chunk_earliest, Ordering::Relaxed);
        });
        next
    }

    /// Slots ever created: the registry's high-water mark of concurrent requests.
    pub(crate) fn capacity(&self) -> usize {
        (0..self.shards.len()).map(|s| self.lock(s).made).sum()
    }

    /// Asks for one probe poll of request `id`, answered into `answer`, and wakes its task;
    /// false when no task waker is known (the request was never pending) or it has ended.
    pub(crate) fn request_probe(&self, slot: &Slot, id: u64, answer: Arc<ProbeAnswer>) -> bool {
        let waker = {
            let Some(occupant) = slot.occupant_of(id) else {
                return false;
            };
            match &occupant.task_waker {
                Some(waker) => waker.clone(),
                None => return false,
            }
        };
        {
            let mut asked = lock(&self.probes_asked);
            // Answers nobody waits for any more (their request ended unpolled) go.
            asked.retain(|(_, answer)| Arc::strong_count(answer) > 1);
            asked.push((id, answer));
        }
        if !slot.raise(id, PROBE_WANTED) {
            lock(&self.probes_asked).retain(|(asked_for, _)| *asked_for != id);
            return false;
        }
        waker.wake();
        true
    }

    /// Delivers what the probe poll of request `id` found to whoever asked for it.
    fn answer_probe(&self, id: u64, findings: ProbeFindings) {
        let answer = {
            let mut asked = lock(&self.probes_asked);
            let at = asked.iter().position(|(asked_for, _)| *asked_for == id);
            at.map(|at| asked.swap_remove(at).1)
        };
        if let Some(answer) = answer {
            *lock(&answer) = Some(findings);
        }
    }
}

/// Locks `mutex`, taking over a poisoned one: every value behind these locks stays valid
/// when a holder panics, and the monitor must keep running.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered request. Dropping it deregisters the request.
pub(crate) struct Registration {
    registry: &'static Registry,
    slot: SlotRef,
    id: u64,
    /// A watchdog watches it: its task waker is kept for probe polls.
    watched: bool,
    /// Its watch lets go of websocket upgrades and event streams.
    pub(crate) long_lived_exempt: bool,
    /// Its soft and hard deadlines, when a timebox applies: what a [`Deadline`] built on
    /// demand needs.
    deadlines: Option<(Instant, Instant)>,
}

impl Registration {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether the monitor has fired the request's hard deadline.
    pub(crate) fn hard_fired(&self) -> bool {
        self.slot.flags(self.id) & HARD_FIRED != 0
    }

    pub(crate) fn set_deadlines(&mut self, soft_at: Instant, hard_at: Instant) {
        self.deadlines = Some((soft_at, hard_at));
    }

    /// The request's deadline, built on demand, when a timebox applies; lifted (by the
    /// profiler) when its hard deadline is gone without having fired.
    pub(crate) fn deadline(&self) -> Option<Deadline> {
        let (soft_at, hard_at) = self.deadlines?;
        let deadline = Deadline::for_request(self.handle(), soft_at, hard_at);
        let lifted = !self.slot.has_hard_due() && !self.hard_fired();
        Some(if lifted { deadline.lifted() } else { deadline })
    }

    /// Polls the request's future, as a probe when the monitor asked for one; after a pending
    /// poll of a watched request, keeps the task's waker for the next probe.
    pub(crate) fn poll_watched<F: std::future::Future>(
        &self,
        future: std::pin::Pin<&mut F>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.poll_watched_with(cx, |cx| future.poll(cx))
    }

    /// [`Registration::poll_watched`] for any poll function, such as a body's `poll_frame`.
    pub(crate) fn poll_watched_with<T>(
        &self,
        cx: &mut std::task::Context<'_>,
        poll: impl FnOnce(&mut std::task::Context<'_>) -> std::task::Poll<T>,
    ) -> std::task::Poll<T> {
        if !self.watched {
            return poll(cx);
        }
        let output = if self.slot.take_probe(self.id) {
            let (output, findings) = crate::stack::probe::poll_probed_with(cx, poll);
            self.registry.answer_probe(self.id, findings);
            output
        } else {
            poll(cx)
        };
        if output.is_pending() {
            self.slot.set_task_waker(self.id, cx.waker());
        }
        output
    }

    pub(crate) fn watched(&self) -> bool {
        self.watched
    }

    /// The handler has answered; from now on the request is its response body streaming.
    /// Deadlines other than the body's own no longer apply.
    pub(crate) fn start_body(&self, keep_deadlines: bool) {
        let slot = &self.slot;
        if !keep_deadlines && slot.has_hard_due() {
            slot.drop_deadlines();
            slot.reschedule();
        }
        let now = slot.ms_since_start(&self.registry.clock);
        slot.body_bytes.store(0, Ordering::Relaxed);
        slot.body_frames.store(0, Ordering::Relaxed);
        slot.body_last_ms.store(now, Ordering::Relaxed);
        slot.body_started_ms.store(now + 1, Ordering::Release);
    }

    /// One frame of the response body went out.
    pub(crate) fn note_frame(&self, bytes: usize) {
        // Only the task polling the body writes these, so plain stores suffice.
        let slot = &self.slot;
        slot.body_bytes.store(
            slot.body_bytes.load(Ordering::Relaxed) + bytes as u64,
            Ordering::Relaxed,
        );
        slot.body_frames.store(
            slot.body_frames.load(Ordering::Relaxed).saturating_add(1),
            Ordering::Relaxed,
        );
        slot.body_last_ms
            .store(slot.ms_since_start(&self.registry.clock), Ordering::Relaxed);
    }

    /// A handle to the request that does not own its registration.
    pub(crate) fn handle(&self) -> RequestHandle {
        RequestHandle {
            slot: self.slot,
            id: self.id,
        }
    }

    pub(crate) fn slot(&self) -> &Slot {
        &self.slot
    }

    pub(crate) fn set_polling(&self, tid: i32) {
        self.slot.polling_tid.store(tid, Ordering::Release);
    }

    /// Records the response status; the slot is released when the registration drops.
    pub(crate) fn set_status(&self, status: u16) {
        self.slot.finished_status.store(status, Ordering::Relaxed);
    }

    /// Ends the request. Returns true when it had been reported stuck, so the monitor owes a
    /// completion record and must be woken.
    fn finish(&self) -> bool {
        let running = self.id << PHASE_BITS | RUNNING;
        let stuck = self.id << PHASE_BITS | STUCK;
        self.slot.polling_tid.store(0, Ordering::Release);
        let head = self.slot.head();
        if head
            .word
            .compare_exchange(running, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.registry.release(&self.slot, self.id);
            return false;
        }
        let started = self.slot.started_ns();
        let ended = due_offset(started, self.registry.clock.now_ns()).clamp(1, NO_DUE - 1);
        self.slot.finished_at.store(ended, Ordering::Relaxed);
        let finished = head
            .word
            .compare_exchange(
                stuck,
                self.id << PHASE_BITS | FINISHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if finished {
            self.registry.note_finished(&self.slot, self.id);
        }
        finished
    }
}

/// While alive, the registry and the signal handler know that this thread polls the request.
pub(crate) struct PollingScope<'a> {
    registration: &'a Registration,
    _thread: crate::stack::PollScope,
    /// A timeboxed request's deadline can be built on demand while it is polled.
    _timeboxed: Option<crate::stack::TimeboxedScope<'a>>,
}

impl<'a> PollingScope<'a> {
    pub(crate) fn enter(registration: &'a Registration) -> Self {
        let thread = crate::stack::PollScope::enter(registration.id());
        registration.set_polling(crate::stack::current_tid());
        Self {
            registration,
            _thread: thread,
            _timeboxed: registration
                .deadlines
                .is_some()
                .then(|| crate::stack::TimeboxedScope::enter(registration)),
        }
    }
}

impl Drop for PollingScope<'_> {
    fn drop(&mut self) {
        self.registration.set_polling(0);
    }
}

/// A request's slot and id, without ownership: for deadlines and wake-ups. Every read checks
/// that the slot still holds the same request.
#[derive(Clone)]
pub(crate) struct RequestHandle {
    pub(crate) slot: SlotRef,
    pub(crate) id: u64,
}

impl RequestHandle {
    pub(crate) fn flags(&self) -> u64 {
        self.slot.flags(self.id)
    }

    /// Deadline flags of the request, or `None` once its slot has moved on (the request's
    /// registration was dropped).
    pub(crate) fn current_flags(&self) -> Option<u64> {
        self.slot.flags_if_current(self.id)
    }

    /// Records the status the client was sent, unless the slot has moved on.
    pub(crate) fn set_status(&self, status: u16) {
        if self.slot.current_id() == self.id {
            self.slot.finished_status.store(status, Ordering::Relaxed);
        }
    }

    /// Removes the request's soft and hard deadlines if they have not fired yet; the monitor
    /// then never fires them. Call it while the request's registration is held (within the
    /// call that registered it), so the slot cannot pass to another request meanwhile.
    pub(crate) fn lift_deadlines(&self) -> bool {
        if self.slot.current_id() != self.id {
            return false;
        }
        self.slot.drop_deadlines();
        self.slot.reschedule();
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.finish() {
            self.registry.wake.wake_now();
        }
    }
}

/// How request threads wake the monitor thread without a timer of their own.
///
/// The monitor publishes when it will next wake up. A request due earlier than that wakes it;
/// with one threshold for all requests this only happens when the monitor was idle, so busy
/// services never pay for the wake-up.
pub(crate) struct Wake {
    /// When the monitor will wake on its own (registry ns), or [`AWAKE`] while it scans.
    sleeping_until: AtomicU64,
    /// Set when the monitor must scan again at once (a stuck request finished).
    rescan: std::sync::atomic::AtomicBool,
    /// Earliest due time of the requests that registered while the monitor was scanning (and
    /// that the scan may have missed), or [`NEVER`]. The monitor scans again only if one of
    /// them falls due before it would wake anyway, so a long scan of a large registry under a
    /// steady stream of registrations does not turn into back-to-back scans.
    noted_while_awake: AtomicU64,
    /// Passes of the monitor over the registry so far.
    passes: AtomicU64,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

pub(crate) const AWAKE: u64 = 0;

impl Wake {
    fn new() -> Self {
        Self {
            sleeping_until: AtomicU64::new(AWAKE),
            rescan: std::sync::atomic::AtomicBool::new(false),
            noted_while_awake: AtomicU64::new(NEVER),
            passes: AtomicU64::new(0),
            thread: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn set_thread(&self, thread: std::thread::Thread) {
        let _ = self.thread.set(thread);
    }

    fn note_due(&self, due_ns: u64) {
        let until = self.sleeping_until.load(Ordering::SeqCst);
        if until == AWAKE {
            self.noted_while_awake.fetch_min(due_ns, Ordering::SeqCst);
            // The monitor may have gone to sleep between the load above and the note, without
            // seeing it: look again.
            let until = self.sleeping_until.load(Ordering::SeqCst);
            if until != AWAKE && due_ns < until {
                self.wake_now();
            }
        } else if due_ns < until {
            self.wake_now();
        }
    }

    pub(crate) fn wake_now(&self) {
        self.rescan.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Called by the monitor before it parks; false if it must scan again first.
    pub(crate) fn going_to_sleep(&self, until_ns: u64) -> bool {
        self.sleeping_until.store(until_ns.max(1), Ordering::SeqCst);
        let noted = self.noted_while_awake.swap(NEVER, Ordering::SeqCst);
        let rescan = self.rescan.swap(false, Ordering::SeqCst);
        !rescan && noted >= until_ns
    }

    /// Called by the monitor after each pass, once what it fired has been handed on.
    pub(crate) fn passed(&self) {
        self.passes.fetch_add(1, Ordering::Release);
    }

    /// Wakes the monitor and waits, until `deadline` at the latest, for a whole pass that began
    /// after this call: what has happened so far (a stuck request that ended) is then reported.
    pub(crate) fn catch_up(&self, deadline: std::time::Instant) -> bool {
        // The pass under way may have begun before the call: wait for the one after it.
        let wanted = self.passes.load(Ordering::Acquire) + 2;
        self.wake_now();
        while self.passes.load(Ordering::Acquire) < wanted {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub(crate) fn woke_up(&self) {
        self.sleeping_until.store(AWAKE, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dues() -> Dues {
        Dues {
            watch: 1_000_000_000,
            soft: NEVER,
            hard: NEVER,
        }
    }

    /// A registry, and parts with neither watch nor deadlines to register requests under.
    fn registry_and_parts() -> (&'static Registry, Arc<Parts>) {
        let registry = Registry::leak();
        let parts = Arc::new(Parts {
            registry,
            watch: None,
            deadlines: None,
        });
        (registry, parts)
    }

    fn due_at_ms(ms: u64) -> Dues {
        Dues {
            watch: ms * 1_000_000,
            soft: NEVER,
            hard: NEVER,
        }
    }

    /// A due at `ms` as a slot keeps it (rounded up to its unit).
    fn rounded(ms: u64) -> u64 {
        due_at(0, due_offset(0, ms * 1_000_000))
    }

    /// What `scan_due` at `now_ms` visits (ids) and gives as the next due.
    fn due_scan(registry: &Registry, now_ms: u64) -> (Vec<u64>, u64) {
        let mut visited = Vec::new();
        let next = registry.scan_due(now_ms * 1_000_000, |slot, _| {
            visited.push(slot.current_id());
        });
        (visited, next)
    }

    #[test]
    fn a_due_scan_visits_what_is_due_and_skips_chunks_with_nothing_due() {
        let (registry, parts) = registry_and_parts();
        // Three chunks' worth on this thread's shard, due from 10 s on.
        let held: Vec<Registration> = (0..3 * CHUNK_SLOTS as u64)
            .map(|n| registry.register(0, due_at_ms(10_000 + n), None, &parts, |_| {}))
            .collect();
        // The first scan learns each chunk's earliest due; the next ones skip the chunks.
        assert_eq!(due_scan(registry, 0), (vec![], rounded(10_000)));
        assert_eq!(due_scan(registry, 5_000), (vec![], rounded(10_000)));
        let chunks = held.iter().map(|r| &r.slot.chunk);
        let earliest: Vec<u64> = chunks
            .map(|chunk| chunk.earliest_due.load(Ordering::Relaxed))
            .collect();
        assert!(earliest.iter().all(|&due| due >= rounded(10_000)));

        // A request registered later with an earlier due lowers its chunk's: it is not skipped.
        let early = registry.register(0, due_at_ms(2_000), None, &parts, |_| {});
        assert_eq!(due_scan(registry, 1_000), (vec![], rounded(2_000)));
        assert_eq!(
            due_scan(registry, 2_001),
            (vec![early.id()], rounded(10_000))
        );

        // Once due, every request is visited, in whichever chunk.
        let (visited, _) = due_scan(registry, 20_000);
        assert_eq!(visited.len(), held.len() + 1);

        // Freed slots are never due: once the chunks were looked at, nothing is left to find.
        drop(held);
        drop(early);
        let _ = due_scan(registry, 20_000);
        assert_eq!(due_scan(registry, 20_000), (vec![], NEVER));
    }

    #[test]
    fn a_stuck_request_that_finished_is_visited_though_nothing_is_due() {
        let (registry, parts) = registry_and_parts();
        let request = registry.register(0, due_at_ms(10_000), None, &parts, |_| {});
        let id = request.id();
        let slot = request.slot;
        assert_eq!(due_scan(registry, 0), (vec![], rounded(10_000)));
        assert!(slot.mark_stuck(id));
        // Reported: nothing more is due for it.
        slot.set_watch_due_ns(NEVER);
        registry.reschedule(&slot, id);
        let _ = due_scan(registry, 11_000);
        assert_eq!(due_scan(registry, 11_000), (vec![], NEVER));
        drop(request);
        let mut seen = Vec::new();
        registry.scan_due(11_000 * 1_000_000, |_, s| seen.push(s));
        assert!(matches!(seen[..], [Seen::FinishedAfterStuck { id: i }] if i == id));
    }

    #[test]
    fn ids_of_every_generation_keep_their_flags() {
        let (registry, parts) = registry_and_parts();
        // The last generations before the counter wraps: their ids, shifted past the flags,
        // must still fit in a word, or every deadline check would read "moved on".
        let first = registry.register(0, dues(), None, &parts, |_| {});
        let slot = first.slot;
        let number = first.id() & u64::from(u32::MAX);
        drop(first);
        let last_but_three = u64::from((1u32 << GENERATION_BITS) - 4) << 32 | number;
        slot.deadline_flags
            .store(last_but_three << FLAG_BITS, Ordering::Relaxed);
        for _ in 0..4 {
            let registration = registry.register(0, dues(), None, &parts, |_| {});
            let id = registration.id();
            assert!(std::ptr::eq(registration.slot.chunk, slot.chunk));
            assert_eq!(slot.current_id(), id);
            assert_eq!(slot.flags(id), 0, "a fresh request has no deadline passed");
            assert!(slot.watches(id));
            assert!(slot.raise(id, SOFT_FIRED));
            assert_eq!(slot.flags_if_current(id), Some(SOFT_FIRED));
            drop(registration);
            assert_eq!(slot.current_id(), 0);
            assert_eq!(slot.flags_if_current(id), None, "it reads as over");
        }
    }

    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_late_poll_cannot_leave_its_waker_to_the_next_request() {
        let (registry, parts) = registry_and_parts();
        let earlier = registry.register(0, dues(), None, &parts, |_| {});
        let (slot, earlier_id) = (earlier.slot, earlier.id());
        drop(earlier);
        let later = registry.register(0, dues(), None, &parts, |_| {});
        assert!(std::ptr::eq(later.slot.chunk, slot.chunk) && later.slot.index == slot.index);
        let stale = Arc::new(CountingWaker(Default::default()));
        slot.set_waker(earlier_id, &Waker::from(stale.clone()));
        let current = Arc::new(CountingWaker(Default::default()));
        slot.set_waker(later.id(), &Waker::from(current.clone()));
        slot.set_waker(earlier_id, &Waker::from(stale.clone()));
        slot.wake();
        assert_eq!(stale.0.load(Ordering::SeqCst), 0);
        assert_eq!(current.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_slot_is_small() {
        // 100 000 requests in flight hold one slot each.
        assert!(
            std::mem::size_of::<Slot>() <= 144,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn due_offsets_round_up_and_give_up_past_their_reach() {
        let start = 5_000_000_000;
        assert_eq!(due_offset(start, NEVER), NO_DUE);
        assert_eq!(due_at(start, NO_DUE), NEVER);
        // Never early: a due between two units fires at the later one.
        assert_eq!(due_offset(start, start + 1), 1);
        assert_eq!(due_at(start, 1), start + DUE_UNIT_NS);
        assert_eq!(due_offset(start, start + DUE_UNIT_NS), 1);
        assert_eq!(due_offset(start, start + DUE_UNIT_NS + 1), 2);
        // A due already past (or at the start) is due at once.
        assert_eq!(due_offset(start, start - 10), 0);
        assert_eq!(due_at(start, 0), start);
        // 25 s lands within one unit of itself.
        let due = start + 25_000_000_000;
        let at = due_at(start, due_offset(start, due));
        assert!(at >= due && at - due < DUE_UNIT_NS, "{at} vs {due}");
        // Beyond 32 bits of units the due is kept as none rather than wrapped.
        let far = start + u64::from(u32::MAX) * DUE_UNIT_NS + 1;
        assert_eq!(due_offset(start, far), NO_DUE);
    }

    #[test]
    fn a_request_falls_due_when_its_first_event_can_fire() {
        let (registry, parts) = registry_and_parts();
        // A deadline between two due units: the monitor must not wake before it can fire.
        let started = 1_000_000_000;
        let soft = started + 3 * DUE_UNIT_NS + 1;
        let dues = Dues {
            watch: NEVER,
            soft,
            hard: NEVER,
        };
        let registration = registry.register(started, dues, None, &parts, |_| {});
        let slot = registration.slot;
        let woken_at = slot.due_ns();
        assert!(woken_at >= soft, "{woken_at} is before {soft}");
        assert!(slot.take_soft_due(woken_at), "due when the monitor wakes");
    }
}
