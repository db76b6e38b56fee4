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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::report::{OpenSpan, SpanTree};

/// Longest field text kept per span; longer values are cut with `…`.
pub(crate) const MAX_FIELDS_LEN: usize = 512;

const STORE_SHARDS: usize = 16;

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

struct SpanRecord {
    id: u64,
    parent: Option<u64>,
    name: &'static str,
    target: &'static str,
    fields: Mutex<String>,
    opened: Instant,
    entered: AtomicU32,
}

/// Span extension: which request a span belongs to.
struct Attribution {
    request: u64,
    record: Arc<SpanRecord>,
}

type Shard = Mutex<HashMap<u64, Vec<Arc<SpanRecord>>>>;

struct SpanStore {
    shards: [Shard; STORE_SHARDS],
}

fn store() -> &'static SpanStore {
    static STORE: OnceLock<SpanStore> = OnceLock::new();
    STORE.get_or_init(|| SpanStore {
        shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
    })
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

impl SpanStore {
    fn shard(&self, request: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Arc<SpanRecord>>>> {
        self.shards[(request as usize) % STORE_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The open spans of `request`, parents before children; `installed: false` when no
/// [`SpanLayer`] is part of the global subscriber.
pub(crate) fn snapshot(request: u64) -> SpanTree {
    if !INSTALLED.load(Ordering::Relaxed) {
        return SpanTree {
            installed: false,
            spans: Vec::new(),
        };
    }
    let records: Vec<Arc<SpanRecord>> = store()
        .shard(request)
        .get(&request)
        .cloned()
        .unwrap_or_default();
    let now = Instant::now();
    let index_of: HashMap<u64, usize> =
        records.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let parent_of: Vec<Option<usize>> = records
        .iter()
        .map(|r| r.parent.and_then(|p| index_of.get(&p).copied()))
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
            name: record.name.to_owned(),
            target: record.target.to_owned(),
            fields: record
                .fields
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            age_secs: now.saturating_duration_since(record.opened).as_secs_f64(),
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
        spans,
    }
}

struct FieldWriter<'a>(&'a mut String);

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.0.len() >= MAX_FIELDS_LEN {
            return;
        }
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{}={:?}", field.name(), value);
        if self.0.len() > MAX_FIELDS_LEN {
            let mut cut = MAX_FIELDS_LEN;
            while !self.0.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.truncate(cut);
            self.0.push('…');
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

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let parent = span.parent();
        let inherited = parent
            .as_ref()
            .and_then(|p| p.extensions().get::<Attribution>().map(|a| a.request));
        let request = match inherited {
            Some(request) => request,
            None => crate::stack::current_request(),
        };
        if request == 0 {
            return;
        }
        let mut fields = String::new();
        attrs.record(&mut FieldWriter(&mut fields));
        let record = Arc::new(SpanRecord {
            id: id.into_u64(),
            parent: parent.as_ref().map(|p| p.id().into_u64()),
            name: attrs.metadata().name(),
            target: attrs.metadata().target(),
            fields: Mutex::new(fields),
            opened: Instant::now(),
            entered: AtomicU32::new(0),
        });
        store()
            .shard(request)
            .entry(request)
            .or_default()
            .push(record.clone());
        span.extensions_mut()
            .insert(Attribution { request, record });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(attribution) = span.extensions().get::<Attribution>() {
                let mut fields = attribution
                    .record
                    .fields
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                values.record(&mut FieldWriter(&mut fields));
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(attribution) = span.extensions().get::<Attribution>() {
                attribution.record.entered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(attribution) = span.extensions().get::<Attribution>() {
                attribution.record.entered.fetch_sub(1, Ordering::Relaxed);
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
        let mut shard = store().shard(attribution.request);
        if let Some(open) = shard.get_mut(&attribution.request) {
            open.retain(|r| !Arc::ptr_eq(r, &attribution.record));
            if open.is_empty() {
                shard.remove(&attribution.request);
            }
        }
    }
}
