//! The one per-request path behind the watchdog, the timebox and [`crate::Vigil`].
//!
//! A request is registered once, in the process's registry, with the parts it runs under: a
//! threshold watch, deadlines, or both. The layers are thin views of [`Tracked`]: each builds
//! its [`Parts`] once, when it is built, and the monitor fires whatever those parts ask for.

mod future;
mod service;

use std::sync::Arc;

use crate::registry::Registry;
use crate::timebox::part::DeadlinePart;
use crate::watchdog::part::WatchPart;

pub(crate) use self::future::TrackedFuture;
pub(crate) use self::service::Tracked;

/// What the requests of one service are registered with.
pub(crate) struct Parts {
    pub(crate) registry: &'static Registry,
    pub(crate) watch: Option<Arc<WatchPart>>,
    pub(crate) deadlines: Option<Arc<DeadlinePart>>,
}

impl Parts {
    /// Whether `part` is this request's watch.
    pub(crate) fn watches_with(&self, part: &Arc<WatchPart>) -> bool {
        self.watch.as_ref().is_some_and(|w| Arc::ptr_eq(w, part))
    }

    /// Whether `part` is this request's deadlines.
    pub(crate) fn deadlines_with(&self, part: &Arc<DeadlinePart>) -> bool {
        self.deadlines
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, part))
    }
}
