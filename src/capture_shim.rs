//! Stand-in for the non-blocking capture of `stack` while it is being written.

use std::time::Instant;

use crate::stack::{CaptureError, RawStack};

pub(crate) struct PendingCapture {
    tid: i32,
    id: u64,
}

pub(crate) fn start_capture(tid: i32, id: u64) -> Result<PendingCapture, CaptureError> {
    Ok(PendingCapture { tid, id })
}

impl PendingCapture {
    pub(crate) fn wait_until(self, deadline: Instant) -> Result<RawStack, CaptureError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        crate::stack::capture(
            self.tid,
            self.id,
            timeout.max(std::time::Duration::from_millis(1)),
        )
    }
}
