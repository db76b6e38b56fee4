//! Where a pending request awaits: the open tracing spans of every in-flight request.
//!
//! A request that is not being polled has no stack to capture. What it is waiting for is
//! described by the spans it has open: `handler > load_report{id=42} > db.query{…}`.
//! [`SpanLayer`] is a [`tracing_subscriber::Layer`] that keeps those spans per request, so the
//! watchdog can put them in its reports.
//!
//! A span belongs to the request whose future was being polled when the span was created, or
//! to the request of its parent span, so spans created in tasks spawned with
//! [`tracing::Instrument`] are attributed too.
//!
//! # Example
//!
//! ```
//! use tracing_subscriber::prelude::*;
//!
//! tracing_subscriber::registry()
//!     .with(tower_vigil::spans::SpanLayer::new())
//!     .with(tracing_subscriber::fmt::layer())
//!     .init();
//! ```
//!
//! # Filter the output, not the subscriber
//!
//! A filter on the whole subscriber (`RUST_LOG=warn` read by a global `EnvFilter`,
//! `fmt().with_env_filter(..)`, or a `LevelFilter` layer) decides whether a span exists at
//! all: spans it turns away are never created, for any layer, so `SpanLayer` cannot see where
//! a request awaits. Put the filter on the layer that prints instead, so `SpanLayer` sees
//! every span while the log stays as quiet as configured. [`hidden_by_filter`] says when a
//! filter hides spans.
//!
//! ```
//! use tracing_subscriber::{prelude::*, EnvFilter};
//!
//! tracing_subscriber::registry()
//!     .with(tower_vigil::spans::SpanLayer::new())
//!     .with(
//!         tracing_subscriber::fmt::layer()
//!             .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())),
//!     )
//!     .init();
//! // Spans of every level are created; only warnings and errors are printed.
//! assert!(tower_vigil::spans::hidden_by_filter().is_none());
//! ```
//!
//! Spans are then created at every level, which costs what creating a span costs; `SpanLayer`
//! keeps only those of monitored requests.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::report::{OpenSpan, SpanTree};

/// Longest field text kept per span; longer values are cut with `…`.
pub(crate) const MAX_FIELDS_LEN: usize = 512;

/// Locks of the span store, so requests on different threads rarely wait for each other.
const STORE_SHARDS: usize = 16;

/// Field bytes kept inside a span's record: room for an id or two (`job=12345`) without an
/// allocation of their own. With their length and tag they fill 24 bytes, as a `String` would.
const INLINE_FIELDS: usize = 22;

/// A tracing-subscriber layer that keeps the open span tree of each in-flight request.
///
/// Install it once in the global subscriber. It costs one small allocation per span created
/// under a monitored request and nothing for other spans.
#[derive(Debug, Clone, Default)]
pub struct SpanLayer {
    _private: (),
}

impl SpanLayer {
    /// Creates the layer.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One open span of a monitored request, shared by the span's extension and the store.
struct SpanRecord {
    /// The parent's record, to place the span in its request's tree; an address to compare,
    /// never upgraded, and `Weak::new()` for a span without an attributed parent.
    parent: Weak<SpanRecord>,
    /// Name and target, without a copy of either.
    metadata: &'static Metadata<'static>,
    /// When the span was created, in nanoseconds since [`epoch`].
    opened_ns: u64,
    /// Threads inside the span right now.
    entered: AtomicU32,
    /// Changed under the lock of the request's store shard (the chain) or by `on_record`.
    state: Mutex<RecordState>,
}

/// What a record's lock protects.
struct RecordState {
    /// `key=value` pairs, as the report shows them.
    fields: Fields,
    /// The request's previously created open span: a request's records form a chain from
    /// the newest, so the store needs one map entry per request and no list of its own.
    older: Option<Arc<SpanRecord>>,
}

impl SpanRecord {
    /// The record's lock; a panic while it was held leaves nothing half-written.
    fn state(&self) -> MutexGuard<'_, RecordState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Short field text, in place.
#[derive(Clone, Copy)]
struct InlineText {
    /// Bytes of `bytes` in use.
    len: u8,
    /// UTF-8 text, then unused zeros.
    bytes: [u8; INLINE_FIELDS],
}

impl InlineText {
    /// No text.
    const EMPTY: Self = Self {
        len: 0,
        bytes: [0; INLINE_FIELDS],
    };

    /// The text.
    fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in and cuts fall on char boundaries: always UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Appends `text` if it fits.
    fn try_push(&mut self, text: &str) -> bool {
        let len = usize::from(self.len);
        let Some(end) = len
            .checked_add(text.len())
            .filter(|&end| end <= INLINE_FIELDS)
        else {
            return false;
        };
        self.bytes[len..end].copy_from_slice(text.as_bytes());
        self.len = end as u8;
        true
    }
}

/// A record's field text as kept: inline when short, else exactly sized on the heap.
enum Fields {
    /// Up to [`INLINE_FIELDS`] bytes.
    Inline(InlineText),
    /// Longer text.
    Heap(Box<str>),
}

impl Fields {
    /// The text.
    fn as_str(&self) -> &str {
        match self {
            Fields::Inline(text) => text.as_str(),
            Fields::Heap(text) => text,
        }
    }
}

/// Field text being written: inline until it outgrows the room, then in a `String`.
enum FieldText {
    /// Text that still fits in a record.
    Inline(InlineText),
    /// Text that outgrew it.
    Heap(String),
}

impl FieldText {
    /// No text yet.
    fn new() -> Self {
        FieldText::Inline(InlineText::EMPTY)
    }

    /// The text.
    fn as_str(&self) -> &str {
        match self {
            FieldText::Inline(text) => text.as_str(),
            FieldText::Heap(text) => text,
        }
    }

    /// Length in bytes.
    fn len(&self) -> usize {
        match self {
            FieldText::Inline(text) => usize::from(text.len),
            FieldText::Heap(text) => text.len(),
        }
    }

    /// Whether no field was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts the text to `len` bytes; `len` falls on a char boundary.
    fn truncate(&mut self, len: usize) {
        match self {
            FieldText::Inline(text) => {
                if len < usize::from(text.len) {
                    text.len = len as u8;
                }
            }
            FieldText::Heap(text) => text.truncate(len),
        }
    }

    /// The text to keep; a `Box<str>` holds no spare capacity.
    fn into_fields(self) -> Fields {
        match self {
            FieldText::Inline(text) => Fields::Inline(text),
            FieldText::Heap(text) => Fields::Heap(text.into_boxed_str()),
        }
    }

    /// Kept text to append to.
    fn from_fields(fields: Fields) -> Self {
        match fields {
            Fields::Inline(text) => FieldText::Inline(text),
            Fields::Heap(text) => FieldText::Heap(text.into_string()),
        }
    }
}

impl std::fmt::Write for FieldText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        match self {
            FieldText::Inline(text) => {
                if !text.try_push(s) {
                    let mut heap = String::with_capacity(usize::from(text.len) + s.len());
                    heap.push_str(text.as_str());
                    heap.push_str(s);
                    *self = FieldText::Heap(heap);
                }
            }
            FieldText::Heap(text) => text.push_str(s),
        }
        Ok(())
    }
}

/// Span extension: which request a span belongs to.
struct Attribution {
    /// The request's id.
    request: u64,
    /// The span's record, also in the store.
    record: Arc<SpanRecord>,
}

/// Request id to the newest record of its open spans.
type Shard = Mutex<HashMap<u64, Arc<SpanRecord>>>;

/// The open spans of every monitored request.
struct SpanStore {
    /// Shard `request % STORE_SHARDS` holds `request`.
    shards: [Shard; STORE_SHARDS],
}

/// The process's span store.
fn store() -> &'static SpanStore {
    static STORE: OnceLock<SpanStore> = OnceLock::new();
    STORE.get_or_init(|| SpanStore {
        shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
    })
}

/// The instant span ages count from: a record keeps 8 bytes of nanoseconds, not an `Instant`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `now` as nanoseconds since [`epoch`].
fn nanos_since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Span callsites this layer was asked about: a filter in front of it may still turn them away.
static SPAN_CALLSITES: AtomicUsize = AtomicUsize::new(0);
/// Whether any span at all reached this layer.
static SPANS_CREATED: AtomicBool = AtomicBool::new(false);

/// Why [`SpanLayer`] cannot see some spans, or `None` when no filter hides them from it (or
/// no `SpanLayer` is installed).
///
/// A global filter below `TRACE` (`RUST_LOG=warn` read by a global `EnvFilter`) means spans
/// of the more verbose levels are never created; a filter placed in front of `SpanLayer` may
/// turn away every span. Either way a report or a profile shows no open span although the
/// request awaits inside one. See the [module docs](self) for the fix.
///
/// ```
/// // No subscriber here: nothing to explain.
/// assert_eq!(tower_vigil::spans::hidden_by_filter(), None);
/// ```
pub fn hidden_by_filter() -> Option<String> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    explain(
        LevelFilter::current(),
        SPAN_CALLSITES.load(Ordering::Relaxed),
        SPANS_CREATED.load(Ordering::Relaxed),
    )
}

const FIX: &str = "filter the output layer instead, e.g. \
    `fmt::layer().with_filter(EnvFilter::from_default_env())`, so SpanLayer sees every span";

fn explain(max: LevelFilter, span_callsites: usize, spans_created: bool) -> Option<String> {
    let hidden: Vec<String> = [
        LevelFilter::ERROR,
        LevelFilter::WARN,
        LevelFilter::INFO,
        LevelFilter::DEBUG,
        LevelFilter::TRACE,
    ]
    .into_iter()
    .filter(|level| *level > max)
    .map(|level| level.to_string().to_uppercase())
    .collect();
    if let Some((last, first)) = hidden.split_last() {
        let levels = match first {
            [] => last.clone(),
            _ => format!("{} and {last}", first.join(", ")),
        };
        return Some(format!(
            "spans at {levels} are never created: the global tracing filter's max level is \
             {} (RUST_LOG or a global EnvFilter), so SpanLayer cannot see them; {FIX}",
            max.to_string().to_uppercase()
        ));
    }
    (span_callsites > 0 && !spans_created).then(|| {
        format!(
            "no span has been created: a filter in front of SpanLayer turned away all \
             {span_callsites} span callsites it saw; {FIX}"
        )
    })
}

impl SpanStore {
    /// The locked shard that holds `request`.
    fn shard(&self, request: u64) -> MutexGuard<'_, HashMap<u64, Arc<SpanRecord>>> {
        self.shards[(request as usize) % STORE_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `record` the newest of `request`'s open spans.
    fn push(&self, request: u64, record: &Arc<SpanRecord>) {
        let mut shard = self.shard(request);
        // Linked under the shard lock, so a snapshot never sees the chain cut short.
        let older = shard.insert(request, record.clone());
        record.state().older = older;
    }

    /// Unlinks `record` from `request`'s chain, dropping the map entry with the last one.
    fn remove(&self, request: u64, record: &Arc<SpanRecord>) {
        let mut shard = self.shard(request);
        let Entry::Occupied(mut newest) = shard.entry(request) else {
            return;
        };
        // Spans mostly close newest first, so the record is usually the head.
        if Arc::ptr_eq(newest.get(), record) {
            match record.state().older.take() {
                Some(older) => drop(newest.insert(older)),
                None => drop(newest.remove()),
            }
            return;
        }
        let mut newer = newest.get().clone();
        loop {
            // Record locks are taken newer before older, and only under the shard lock.
            let mut state = newer.state();
            let Some(older) = state.older.clone() else {
                return;
            };
            if Arc::ptr_eq(&older, record) {
                state.older = record.state().older.take();
                return;
            }
            drop(state);
            newer = older;
        }
    }

    /// `request`'s open records, oldest first.
    fn records(&self, request: u64) -> Vec<Arc<SpanRecord>> {
        let mut records = Vec::new();
        {
            let shard = self.shard(request);
            let mut next = shard.get(&request).cloned();
            while let Some(record) = next {
                next = record.state().older.clone();
                records.push(record);
            }
        }
        records.reverse();
        records
    }
}

/// The open spans of `request`, parents before children; `installed: false` when no
/// [`SpanLayer`] is part of the global subscriber.
pub(crate) fn snapshot(request: u64) -> SpanTree {
    if !INSTALLED.load(Ordering::Relaxed) {
        return SpanTree {
            installed: false,
            spans: Vec::new(),
            filtered: None,
        };
    }
    let records = store().records(request);
    let now = nanos_since_epoch(Instant::now());
    let index_of: HashMap<*const SpanRecord, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (Arc::as_ptr(r), i))
        .collect();
    let parent_of: Vec<Option<usize>> = records
        .iter()
        .map(|r| index_of.get(&r.parent.as_ptr()).copied())
        .collect();
    // Depth-first from the roots, so parents come before their children.
    let mut spans = Vec::with_capacity(records.len());
    let mut stack: Vec<(usize, Option<usize>, usize)> = (0..records.len())
        .rev()
        .filter(|&i| parent_of[i].is_none())
        .map(|i| (i, None, 0))
        .collect();
    while let Some((index, parent, depth)) = stack.pop() {
        let record = &records[index];
        let position = spans.len();
        spans.push(OpenSpan {
            name: record.metadata.name().to_owned(),
            target: record.metadata.target().to_owned(),
            fields: record.state().fields.as_str().to_owned(),
            age_secs: now.saturating_sub(record.opened_ns) as f64 / 1e9,
            entered: record.entered.load(Ordering::Relaxed) > 0,
            depth,
            parent,
        });
        for child in (0..records.len()).rev() {
            if parent_of[child] == Some(index) {
                stack.push((child, Some(position), depth + 1));
            }
        }
    }
    SpanTree {
        installed: true,
        filtered: if spans.is_empty() {
            hidden_by_filter()
        } else {
            None
        },
        spans,
    }
}

/// Writes a span's fields as `key=value` pairs, up to [`MAX_FIELDS_LEN`] bytes.
struct FieldWriter<'a>(&'a mut FieldText);

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.0.len() >= MAX_FIELDS_LEN {
            return;
        }
        if !self.0.is_empty() {
            let _ = self.0.write_char(' ');
        }
        let _ = write!(self.0, "{}={:?}", field.name(), value);
        if self.0.len() > MAX_FIELDS_LEN {
            let mut cut = MAX_FIELDS_LEN;
            while !self.0.as_str().is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.truncate(cut);
            let _ = self.0.write_char('…');
        }
    }
}

impl<S> Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_layer(&mut self, _subscriber: &mut S) {
        INSTALLED.store(true, Ordering::Relaxed);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.is_span() {
            SPAN_CALLSITES.fetch_add(1, Ordering::Relaxed);
        }
        Interest::always()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Read first: a shared cache line stays shared on the hot path.
        if !SPANS_CREATED.load(Ordering::Relaxed) {
            SPANS_CREATED.store(true, Ordering::Relaxed);
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let inherited = span.parent().and_then(|p| {
            p.extensions()
                .get::<Attribution>()
                .map(|a| (a.request, Arc::downgrade(&a.record)))
        });
        let (request, parent) = match inherited {
            Some(inherited) => inherited,
            None => (crate::stack::current_request(), Weak::new()),
        };
        if request == 0 {
            return;
        }
        let mut fields = FieldText::new();
        attrs.record(&mut FieldWriter(&mut fields));
        let record = Arc::new(SpanRecord {
            parent,
            metadata: attrs.metadata(),
            opened_ns: nanos_since_epoch(Instant::now()),
            entered: AtomicU32::new(0),
            state: Mutex::new(RecordState {
                fields: fields.into_fields(),
                older: None,
            }),
        });
        store().push(request, &record);
        span.extensions_mut()
            .insert(Attribution { request, record });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(attribution) = span.extensions().get::<Attribution>() {
                let mut state = attribution.record.state();
                let kept = std::mem::replace(&mut state.fields, Fields::Inline(InlineText::EMPTY));
                let mut fields = FieldText::from_fields(kept);
                values.record(&mut FieldWriter(&mut fields));
                state.fields = fields.into_fields();
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(attribution) = span.extensions().get::<Attribution>() {
                attribution.record.entered.fetch_add(1, Ordering::Relaxed);
                // A thread other than the polling one that enters the request's span works
                // for it (spawn_blocking, spawned tasks, rayon): its stack joins the report.
                crate::helpers::enter(attribution.request);
            }
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(attribution) = span.extensions().get::<Attribution>() {
                attribution.record.entered.fetch_sub(1, Ordering::Relaxed);
                crate::helpers::leave(attribution.request);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(attribution) = span.extensions_mut().remove::<Attribution>() else {
            return;
        };
        store().remove(attribution.request, &attribution.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_global_filter_below_trace_is_explained_with_the_levels_it_hides() {
        assert_eq!(explain(LevelFilter::TRACE, 3, true), None);
        let warn = explain(LevelFilter::WARN, 0, false).unwrap();
        assert!(warn.starts_with("spans at INFO, DEBUG and TRACE are never created"));
        assert!(warn.contains("max level is WARN"), "{warn}");
        assert!(warn.contains("fmt::layer().with_filter("), "{warn}");
        let info = explain(LevelFilter::INFO, 2, true).unwrap();
        assert!(info.starts_with("spans at DEBUG and TRACE are never created"));
        let debug = explain(LevelFilter::DEBUG, 2, true).unwrap();
        assert!(debug.starts_with("spans at TRACE are never created"));
        let off = explain(LevelFilter::OFF, 0, false).unwrap();
        assert!(off.starts_with("spans at ERROR, WARN, INFO, DEBUG and TRACE"));
    }

    /// Name, depth and parent index of each span in `request`'s snapshot.
    fn tree(request: u64) -> Vec<(String, usize, Option<usize>)> {
        snapshot(request)
            .spans
            .into_iter()
            .map(|s| (s.name, s.depth, s.parent))
            .collect()
    }

    fn node(name: &str, depth: usize, parent: Option<usize>) -> (String, usize, Option<usize>) {
        (name.to_owned(), depth, parent)
    }

    #[test]
    fn the_snapshot_lists_parents_before_children_in_creation_order() {
        use tracing_subscriber::prelude::*;
        // Unlike ids of the registry, so tests running at once do not share a chain.
        const REQUEST: u64 = 0x5a17_0000_0001;
        let subscriber = tracing_subscriber::registry().with(SpanLayer::new());
        tracing::subscriber::with_default(subscriber, || {
            let polling = crate::stack::PollScope::enter(REQUEST);
            let root = tracing::info_span!("root", job = 12345);
            let entered = root.enter();
            let first = tracing::info_span!("first");
            let closed = tracing::info_span!(parent: &first, "closed");
            let second = tracing::info_span!(
                parent: &first,
                "second",
                query = "select * from a_table_with_a_long_name",
                rows = tracing::field::Empty
            );
            // Unlinked from the middle of the request's chain.
            drop(closed);
            drop(polling);
            // Not polling: attributed through the parent alone.
            let leaf = tracing::info_span!(parent: &second, "leaf");
            let unrelated = tracing::info_span!(parent: None, "unrelated");
            let sibling = tracing::info_span!(parent: &root, "sibling", id = 7);
            second.record("rows", 3);

            let spans = snapshot(REQUEST).spans;
            let expected = [
                node("root", 0, None),
                node("first", 1, Some(0)),
                node("second", 2, Some(1)),
                node("leaf", 3, Some(2)),
                node("sibling", 1, Some(0)),
            ];
            assert_eq!(tree(REQUEST), expected);
            assert_eq!(spans[0].fields, "job=12345");
            assert_eq!(
                spans[2].fields,
                "query=\"select * from a_table_with_a_long_name\" rows=3"
            );
            assert_eq!(spans[4].fields, "id=7");
            assert_eq!(spans[1].fields, "");
            assert_eq!(spans[0].target, module_path!());
            assert!(spans[0].entered && !spans[1].entered);
            assert!(spans.iter().all(|s| s.age_secs >= 0.0 && s.age_secs < 60.0));

            // The newest record and an older one close; their places close up.
            drop(sibling);
            drop(entered);
            drop(leaf);
            let expected = [
                node("root", 0, None),
                node("first", 1, Some(0)),
                node("second", 2, Some(1)),
            ];
            assert_eq!(tree(REQUEST), expected);
            assert!(!snapshot(REQUEST).spans[0].entered);
            drop((root, first, second));
            assert_eq!(tree(REQUEST), []);
            assert!(!store().shard(REQUEST).contains_key(&REQUEST));
            drop(unrelated);
        });
    }

    #[test]
    fn field_text_stays_inline_while_short_and_is_cut_at_the_limit() {
        use tracing_subscriber::prelude::*;
        const REQUEST: u64 = 0x5a17_0000_0002;
        let mut text = FieldText::new();
        let _ = write!(text, "job=12345");
        assert!(matches!(text.into_fields(), Fields::Inline(t) if t.as_str() == "job=12345"));
        let subscriber = tracing_subscriber::registry().with(SpanLayer::new());
        tracing::subscriber::with_default(subscriber, || {
            let _polling = crate::stack::PollScope::enter(REQUEST);
            let long = "é".repeat(MAX_FIELDS_LEN);
            let _span = tracing::info_span!("long", v = long.as_str());
            let fields = &snapshot(REQUEST).spans[0].fields;
            assert!(fields.starts_with("v=\"éé"), "{fields}");
            assert!(fields.ends_with('…'), "{fields}");
            assert!(fields.len() <= MAX_FIELDS_LEN + '…'.len_utf8());
        });
    }

    #[test]
    fn a_record_stays_within_its_allocation_of_88_bytes() {
        // Each open span of a monitored request costs this plus the Arc's 16 B counts.
        assert_eq!(std::mem::size_of::<Fields>(), 24);
        assert_eq!(std::mem::size_of::<SpanRecord>(), 72);
    }

    #[test]
    fn span_callsites_that_never_made_a_span_are_explained() {
        assert_eq!(explain(LevelFilter::TRACE, 0, false), None);
        let all_turned_away = explain(LevelFilter::TRACE, 4, false).unwrap();
        assert!(all_turned_away.contains("turned away all 4 span callsites"));
    }
}
