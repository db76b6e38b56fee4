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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
            filtered: None,
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
        filtered: if spans.is_empty() {
            hidden_by_filter()
        } else {
            None
        },
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
        let mut shard = store().shard(attribution.request);
        if let Some(open) = shard.get_mut(&attribution.request) {
            open.retain(|r| !Arc::ptr_eq(r, &attribution.record));
            if open.is_empty() {
                shard.remove(&attribution.request);
            }
        }
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

    #[test]
    fn span_callsites_that_never_made_a_span_are_explained() {
        assert_eq!(explain(LevelFilter::TRACE, 0, false), None);
        let all_turned_away = explain(LevelFilter::TRACE, 4, false).unwrap();
        assert!(all_turned_away.contains("turned away all 4 span callsites"));
    }
}
