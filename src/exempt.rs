//! Request markers that one layer leaves for another.

/// Inserted into a request's extensions by a layer that runs the request under its own rules
/// (the profiler runs a profiled request on its own thread); deadlines do not apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExemptFromDeadlines;
