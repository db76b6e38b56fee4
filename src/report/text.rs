//! The text renderer: reports as text, in the manner of dogslow's, and one-line summaries.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{
    AwaitStatus, Awaiting, Frame, FrameOrigin, LeafSignal, ReportKind, ReportTrigger, RequestPhase,
    SlowRequestReport, SpanTree, StackStatus,
};

impl SpanTree {
    /// Root-to-leaf paths, such as `handler > load_report{id=42} > db.query{sql="…"} 4.8 s`.
    pub fn chains(&self) -> Vec<String> {
        let mut chains = Vec::new();
        for (index, span) in self.spans.iter().enumerate() {
            let is_leaf = !self.spans.iter().any(|s| s.parent == Some(index));
            if !is_leaf {
                continue;
            }
            let mut path = vec![index];
            let mut cursor = span.parent;
            while let Some(parent) = cursor {
                path.push(parent);
                cursor = self.spans[parent].parent;
            }
            let mut line = String::new();
            for (n, &i) in path.iter().rev().enumerate() {
                if n > 0 {
                    line.push_str(" > ");
                }
                let s = &self.spans[i];
                line.push_str(&s.name);
                if !s.fields.is_empty() {
                    let _ = write!(line, "{{{}}}", s.fields);
                }
            }
            let _ = write!(
                line,
                " {}",
                format_secs(Duration::from_secs_f64(span.age_secs.max(0.0)))
            );
            if span.entered {
                line.push_str(" (entered)");
            }
            chains.push(line);
        }
        chains
    }
}

/// `2026-11-23T10:42:00.123Z`, as in the JSON form.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Seconds as `480 ms` below one second, `7.2 s` above.
pub(crate) fn format_secs(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else {
        format!("{secs:.1} s")
    }
}

impl SlowRequestReport {
    /// A one-line summary, such as `slow request: GET /api/jobs (7.2 s)`.
    pub fn summary(&self) -> String {
        match self.kind {
            ReportKind::Slow => format!(
                "slow request: {} {} ({})",
                self.method,
                self.uri,
                format_secs(self.elapsed)
            ),
            ReportKind::Completed => format!(
                "slow request completed: {} {} after {} with {}",
                self.method,
                self.uri,
                format_secs(self.elapsed),
                self.completion_status()
            ),
        }
    }

    fn completion_status(&self) -> String {
        match self.completion.as_ref().and_then(|c| c.status) {
            Some(status) => format!("status {status}"),
            None => "no response (the request was dropped)".to_owned(),
        }
    }

    /// Renders the report as text, in the manner of dogslow's reports.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match self.kind {
            ReportKind::Slow => {
                let _ = writeln!(
                    out,
                    "Slow request intercepted at {}",
                    rfc3339(self.intercepted_at)
                );
            }
            ReportKind::Completed => {
                let _ = writeln!(
                    out,
                    "Slow request completed after {} with {}",
                    format_secs(self.elapsed),
                    self.completion_status()
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{} {} {:?}", self.method, self.uri, self.version);
        if let Some(host) = &self.host {
            let _ = writeln!(out, "Host:       {host}");
        }
        let _ = writeln!(out, "Server:     {} (pid {})", self.hostname, self.pid);
        if let Some(thread) = &self.thread {
            let _ = writeln!(
                out,
                "Thread:     {} (tid {})",
                thread.name.as_deref().unwrap_or("<unnamed>"),
                thread.tid
            );
        }
        let _ = writeln!(out, "Request id: {}", self.request_id);
        if !self.signature.is_empty() {
            let _ = writeln!(
                out,
                "Signature:  {} ({})",
                self.signature, self.signature_text
            );
        }
        let _ = writeln!(out, "Started:    {}", rfc3339(self.started_at));
        let _ = writeln!(out, "Elapsed:    {}", format_secs(self.elapsed));
        if let RequestPhase::StreamingBody {
            response_after,
            bytes,
            frames,
            since_last_frame,
        } = self.phase
        {
            let what = if self.kind == ReportKind::Completed {
                "body streamed to its last byte"
            } else {
                "streaming body"
            };
            let _ = writeln!(
                out,
                "Phase:      {what}: {bytes} bytes in {frames} frames, last frame {} ago \
                 (handler answered after {})",
                format_secs(since_last_frame),
                format_secs(response_after)
            );
        }
        if self.kind == ReportKind::Slow {
            let why = match self.trigger {
                ReportTrigger::Threshold => "",
                ReportTrigger::SoftDeadline => ", at the soft deadline (asked to stop)",
                ReportTrigger::HardDeadline => ", at the hard deadline (wedged: still running)",
                ReportTrigger::Shutdown => ", at shutdown (still in flight)",
            };
            let _ = writeln!(out, "Report:     {} for this request{why}", self.capture);
        }
        if self.headers.iter().any(|(name, _)| name != "host") {
            let _ = writeln!(out);
            for (name, value) in &self.headers {
                if name == "host" {
                    continue;
                }
                let _ = writeln!(out, "{name}: {value}");
            }
        }
        if self.kind == ReportKind::Slow {
            let _ = writeln!(out);
            self.write_stack(&mut out);
            if let Some(awaiting) = &self.awaiting {
                let _ = writeln!(out);
                write_awaiting(awaiting, &mut out);
            }
            for helper in &self.helper_threads {
                let _ = writeln!(out);
                let _ = writeln!(
                    out,
                    "Working for this request on thread {} (tid {}):",
                    helper.thread.name.as_deref().unwrap_or("unnamed"),
                    helper.thread.tid
                );
                if helper.stack_status == StackStatus::Captured {
                    write_frames(&helper.stack, &mut out);
                } else {
                    let _ = writeln!(out, "      stack: {:?}", helper.stack_status);
                }
            }
            let _ = writeln!(out);
            self.write_spans(&mut out);
        }
        out
    }

    fn write_stack(&self, out: &mut String) {
        match &self.stack_status {
            StackStatus::Captured => {
                let _ = writeln!(
                    out,
                    "Stack of the polling thread (innermost first; `>` marks application code):"
                );
                write_frames(&self.stack, out);
            }
            StackStatus::Pending => {
                let _ = writeln!(
                    out,
                    "Stack: none, the request is pending (no thread is polling it). Where it waits:"
                );
            }
            StackStatus::PollEnded => {
                let _ = writeln!(
                    out,
                    "Stack: none, the poll ended before the signal arrived; the request is between polls."
                );
            }
            StackStatus::TimedOut { waited_ms } => {
                let _ = writeln!(
                    out,
                    "Stack: the polling thread did not answer the capture signal within {waited_ms} ms \
                     (signal blocked, or uninterruptible sleep)."
                );
            }
            StackStatus::ThreadGone => {
                let _ = writeln!(out, "Stack: the polling thread exited before the capture.");
            }
            StackStatus::Disabled => {
                let _ = writeln!(out, "Stack: capture is switched off in the configuration.");
            }
            StackStatus::Unavailable { reason } => {
                let _ = writeln!(out, "Stack: unavailable: {reason}");
            }
            StackStatus::NotApplicable => {}
        }
    }

    fn write_spans(&self, out: &mut String) {
        if !self.spans.installed {
            let _ = writeln!(
                out,
                "Open spans: unknown. Install tower_vigil::spans::SpanLayer in your tracing \
                 subscriber to see where a request awaits."
            );
            return;
        }
        let chains = self.spans.chains();
        if chains.is_empty() {
            let _ = writeln!(out, "Open spans: none under this request.");
            if let Some(why) = &self.spans.filtered {
                let _ = writeln!(out, "  Note: {why}");
            }
            return;
        }
        let _ = writeln!(
            out,
            "Open spans (root > ... > deepest, age of the deepest):"
        );
        for chain in chains {
            let _ = writeln!(out, "  {chain}");
        }
    }
}

fn write_awaiting(awaiting: &Awaiting, out: &mut String) {
    match &awaiting.status {
        AwaitStatus::Found => {
            let _ = writeln!(
                out,
                "Awaiting ({} leaf future{}; innermost first, `>` marks application code):",
                awaiting.leaves.len(),
                if awaiting.leaves.len() == 1 { "" } else { "s" }
            );
        }
        AwaitStatus::Unknown { reason } => {
            let _ = writeln!(out, "Awaiting: await point unknown: {reason}");
        }
        AwaitStatus::NotPolled { waited_ms } => {
            let _ = writeln!(
                out,
                "Awaiting: the request is runnable but was not polled within {waited_ms} ms of \
                 being woken: every worker thread is busy. Threads busy in one long poll now:"
            );
        }
        AwaitStatus::Finished => {
            let _ = writeln!(
                out,
                "Awaiting: nothing; the request finished during the probe."
            );
        }
        AwaitStatus::Unavailable { reason } => {
            let _ = writeln!(out, "Awaiting: unknown: {reason}");
        }
    }
    for leaf in &awaiting.leaves {
        let what = match leaf.signal {
            LeafSignal::Waits => "waits on",
            LeafSignal::WakesItself => "wakes itself in",
        };
        let _ = writeln!(
            out,
            "  {what} {}{}",
            leaf.leaf.as_deref().unwrap_or("an unnamed future"),
            if leaf.truncated {
                " (chain truncated)"
            } else {
                ""
            }
        );
        write_frames(&leaf.chain, out);
    }
    if awaiting.more_leaves > 0 {
        let _ = writeln!(out, "  ... and {} more leaves", awaiting.more_leaves);
    }
    for busy in &awaiting.busy_threads {
        let _ = writeln!(
            out,
            "  thread {} (tid {}), polling request {} for {}:",
            busy.thread.name.as_deref().unwrap_or("unnamed"),
            busy.thread.tid,
            busy.request_id,
            format_secs(Duration::from_secs_f64(busy.request_elapsed_secs.max(0.0)))
        );
        if busy.stack_status == StackStatus::Captured {
            write_frames(&busy.stack, out);
        } else {
            let _ = writeln!(out, "      stack: {:?}", busy.stack_status);
        }
    }
}

/// Writes frames, showing application frames in full and folding runs of library frames.
fn write_frames(frames: &[Frame], out: &mut String) {
    let mut folded: Vec<&Frame> = Vec::new();
    let flush = |folded: &mut Vec<&Frame>, out: &mut String| {
        if folded.is_empty() {
            return;
        }
        if folded.len() <= 2 {
            for frame in folded.iter() {
                write_frame(frame, ' ', out);
            }
        } else {
            let mut crates: Vec<&str> = folded
                .iter()
                .map(|f| f.function.as_deref().map_or("system libraries", crate_of))
                .collect();
            crates.sort_unstable();
            crates.dedup();
            write_frame(folded[0], ' ', out);
            let _ = writeln!(
                out,
                "      ... {} more frames in {}",
                folded.len() - 1,
                crates.join(", ")
            );
        }
        folded.clear();
    };
    for frame in frames {
        if frame.origin == FrameOrigin::App {
            flush(&mut folded, out);
            write_frame(frame, '>', out);
        } else {
            folded.push(frame);
        }
    }
    flush(&mut folded, out);
}

fn crate_of(function: &str) -> &str {
    if function.contains("::") {
        crate::stack::leading_crate(function)
    } else {
        "system libraries"
    }
}

fn write_frame(frame: &Frame, marker: char, out: &mut String) {
    let name = frame.function.as_deref().unwrap_or("<unknown>");
    let _ = write!(out, "  {marker} {name}");
    if frame.inlined {
        out.push_str(" (inlined)");
    }
    out.push('\n');
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => {
            let _ = writeln!(out, "        at {file}:{line}");
        }
        (Some(file), None) => {
            let _ = writeln!(out, "        at {file}");
        }
        _ => {
            let _ = writeln!(out, "        at {}", frame.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::OpenSpan;

    #[test]
    fn span_chains_run_from_root_to_leaf() {
        let span = |name: &str, fields: &str, parent, age| OpenSpan {
            name: name.into(),
            target: "t".into(),
            fields: fields.into(),
            age_secs: age,
            entered: false,
            depth: 0,
            parent,
        };
        let tree = SpanTree {
            filtered: None,
            installed: true,
            spans: vec![
                span("handler", "", None, 5.0),
                span("load_report", "id=42", Some(0), 4.9),
                span("db.query", "sql=\"select 1\"", Some(1), 4.8),
            ],
        };
        assert_eq!(
            tree.chains(),
            vec!["handler > load_report{id=42} > db.query{sql=\"select 1\"} 4.8 s"]
        );
    }
}
