//! From raw samples to folded stacks, top frames and the profile as data.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::stack::{self, Frame, FrameOrigin, RawStack, Sample};

/// Name of the function that polls the profiled request on the profiling thread; frames
/// outside it belong to the profiling thread, not the request.
pub(crate) const REQUEST_MARKER: &str = "tower_vigil::profiler::runner::poll_profiled_request";

/// Frame under which samples taken outside the request's poll are shown (runtime work, tasks
/// the request spawned).
pub(crate) const RUNTIME_FRAME: &str = "[runtime]";
/// Frame for samples whose stack was too deep to reach the request's root.
pub(crate) const TRUNCATED_FRAME: &str = "[truncated]";
/// Prefix of frames that stand for time parked while the request waited.
pub(crate) const AWAITING_PREFIX: &str = "[awaiting]";

/// How many frames the summary lists.
const TOP_FRAMES: usize = 12;

/// One profile, as rendered and as kept by background mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    /// Identifier of a background profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// Method and URI, without the trigger.
    pub(crate) request: String,
    /// `wall-clock` or `cpu-time`.
    pub(crate) mode: String,
    pub(crate) rate_hz: u32,
    pub(crate) started_unix_ms: u64,
    /// The application's status, if it answered.
    pub(crate) status: Option<u16>,
    /// What became of the request, in words.
    pub(crate) outcome: String,
    pub(crate) wall_ms: f64,
    pub(crate) cpu_ms: Option<f64>,
    /// Sum of the sample weights: timer periods observed.
    pub(crate) samples: u64,
    /// Timer signals handled.
    pub(crate) signals: u64,
    /// Timer periods lost because the sample buffer was full.
    pub(crate) dropped: u64,
    /// True when sampling stopped at the maximum duration before the request finished.
    pub(crate) partial: bool,
    pub(crate) response_bytes: u64,
    pub(crate) top_frames: Vec<TopFrame>,
    /// Folded stacks, sorted.
    pub(crate) stacks: Vec<FoldedStack>,
}

/// One frame of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopFrame {
    pub(crate) name: String,
    /// Samples in which this frame was the innermost.
    pub(crate) self_samples: u64,
    /// Samples in which this frame appears.
    pub(crate) total_samples: u64,
}

/// One folded stack: root first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FoldedStack {
    pub(crate) frames: Vec<String>,
    pub(crate) count: u64,
}

impl Profile {
    /// The folded-stacks text (`root;frame;frame count` per line), sorted.
    pub(crate) fn folded(&self) -> String {
        let mut out = String::new();
        for stack in &self.stacks {
            let _ = writeln!(out, "{} {}", stack.frames.join(";"), stack.count);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StackKey {
    ips: Vec<usize>,
    first_is_exact: bool,
    truncated: bool,
}

/// Adds up raw samples as they are drained.
#[derive(Debug, Default)]
pub(crate) struct Folder {
    stacks: HashMap<StackKey, u64>,
    parked: BTreeMap<u64, u64>,
    total: u64,
}

impl Folder {
    pub(crate) fn add(&mut self, sample: Sample) {
        let weight = u64::from(sample.weight);
        self.total += weight;
        if sample.parked_epoch != 0 {
            *self.parked.entry(sample.parked_epoch).or_default() += weight;
            return;
        }
        let key = StackKey {
            ips: sample.stack.ips,
            first_is_exact: sample.stack.first_is_exact,
            truncated: sample.truncated,
        };
        *self.stacks.entry(key).or_default() += weight;
    }

    /// Timer periods observed.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Symbolizes and folds: `root` is the bottom frame of every stack, `park_paths` maps park
    /// epochs (each entry valid from its epoch on) to `[awaiting] …` frames.
    pub(crate) fn finish(
        self,
        root: &str,
        park_paths: &[(u64, Arc<str>)],
        collapse: bool,
    ) -> Vec<FoldedStack> {
        let root = sanitize(root);
        let mut folded: HashMap<Vec<String>, u64> = HashMap::new();
        for (key, count) in self.stacks {
            let raw = RawStack {
                ips: key.ips,
                first_is_exact: key.first_is_exact,
            };
            let frames = stack::resolve(&raw);
            let mut names = vec![root.clone()];
            names.extend(request_frames(&frames, key.truncated, collapse));
            *folded.entry(names).or_default() += count;
        }
        for (epoch, count) in self.parked {
            let at = park_paths.partition_point(|(start, _)| *start <= epoch);
            let label = match at.checked_sub(1) {
                Some(index) => sanitize(&park_paths[index].1),
                None => AWAITING_PREFIX.to_owned(),
            };
            *folded.entry(vec![root.clone(), label]).or_default() += count;
        }
        let mut stacks: Vec<FoldedStack> = folded
            .into_iter()
            .map(|(frames, count)| FoldedStack { frames, count })
            .collect();
        // Sort as the text lines sort, which is what flamegraph tools expect.
        stacks.sort_by_cached_key(|s| s.frames.join(";"));
        stacks
    }
}

/// The frames of one sample, outermost first, from the request's poll inward.
fn request_frames(frames: &[Frame], truncated: bool, collapse: bool) -> Vec<String> {
    let marker = frames.iter().position(|f| {
        f.function
            .as_deref()
            .is_some_and(|name| name.starts_with(REQUEST_MARKER))
    });
    let (inner, prefix) = match marker {
        Some(at) => (&frames[..at], None),
        None if truncated => (frames, Some(TRUNCATED_FRAME)),
        None => (frames, Some(RUNTIME_FRAME)),
    };
    let outermost_first: Vec<&Frame> = inner.iter().rev().collect();
    let mut names: Vec<String> = prefix.map(str::to_owned).into_iter().collect();
    if !collapse {
        names.extend(outermost_first.iter().map(|f| frame_name(f)));
        return names;
    }
    // Runs of std, runtime, vigil and system frames become one frame each, except the
    // innermost frames of the innermost run, which say where the time went.
    let keep_from = match outermost_first
        .iter()
        .rposition(|f| f.origin == FrameOrigin::App)
    {
        Some(last_app) => last_app,
        None => outermost_first.len().saturating_sub(KEEP_INNERMOST),
    };
    let mut index = 0;
    while index < outermost_first.len() {
        let frame = outermost_first[index];
        if frame.origin == FrameOrigin::App || index >= keep_from {
            names.push(frame_name(frame));
            index += 1;
            continue;
        }
        let mut crates: Vec<&str> = Vec::new();
        while index < keep_from && outermost_first[index].origin != FrameOrigin::App {
            let name = crate_of(outermost_first[index]);
            if !crates.contains(&name) {
                crates.push(name);
            }
            index += 1;
        }
        names.push(collapsed_label(&crates));
    }
    names
}

/// Frames kept at the inner end of a stack without application frames.
const KEEP_INNERMOST: usize = 4;

fn collapsed_label(crates: &[&str]) -> String {
    let mut label = String::from("[");
    for (n, name) in crates.iter().take(4).enumerate() {
        if n > 0 {
            label.push_str(", ");
        }
        label.push_str(name);
    }
    if crates.len() > 4 {
        label.push_str(", …");
    }
    label.push(']');
    label
}

fn crate_of(frame: &Frame) -> &str {
    match (&frame.function, frame.origin) {
        (_, FrameOrigin::Std) => "std",
        (_, FrameOrigin::Vigil) => "tower_vigil",
        (Some(name), FrameOrigin::Framework) => stack::leading_crate(name),
        _ => "system",
    }
}

fn frame_name(frame: &Frame) -> String {
    match &frame.function {
        Some(name) => sanitize(name),
        None => frame.ip.clone(),
    }
}

/// Makes a name safe for the folded format: `;` separates frames, and a line is one stack.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect()
}

/// The frames that took the most samples: innermost first, then anywhere in the stack.
pub(crate) fn top_frames(stacks: &[FoldedStack]) -> Vec<TopFrame> {
    let mut by_name: HashMap<&str, (u64, u64)> = HashMap::new();
    for stack in stacks {
        // Skip the root: it is in every stack.
        let frames = &stack.frames[1.min(stack.frames.len())..];
        if let Some(leaf) = frames.last() {
            by_name.entry(leaf).or_default().0 += stack.count;
        }
        let mut seen: Vec<&str> = Vec::with_capacity(frames.len());
        for frame in frames {
            if !seen.contains(&frame.as_str()) {
                seen.push(frame);
                by_name.entry(frame).or_default().1 += stack.count;
            }
        }
    }
    let mut top: Vec<TopFrame> = by_name
        .into_iter()
        .map(|(name, (self_samples, total_samples))| TopFrame {
            name: name.to_owned(),
            self_samples,
            total_samples,
        })
        .collect();
    top.sort_by(|a, b| {
        (b.self_samples, b.total_samples, &a.name).cmp(&(a.self_samples, a.total_samples, &b.name))
    });
    top.truncate(TOP_FRAMES);
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, origin: FrameOrigin) -> Frame {
        Frame {
            ip: "0x1".into(),
            function: Some(name.into()),
            file: None,
            line: None,
            origin,
            inlined: false,
        }
    }

    #[test]
    fn folds_from_the_marker_and_collapses_framework_runs() {
        // Innermost first, as the resolver returns them.
        let frames = vec![
            frame("core::hash::sip::Hasher::write", FrameOrigin::Std),
            frame("app::hot", FrameOrigin::App),
            frame("tower::util::Oneshot::poll", FrameOrigin::Framework),
            frame("axum::routing::Route::call", FrameOrigin::Framework),
            frame("std::panicking::try", FrameOrigin::Std),
            frame("app::handler", FrameOrigin::App),
            frame(
                "tower_vigil::profiler::runner::poll_profiled_request",
                FrameOrigin::Vigil,
            ),
            frame("tokio::runtime::block_on", FrameOrigin::Framework),
        ];
        assert_eq!(
            request_frames(&frames, false, true),
            vec![
                "app::handler",
                "[std, axum, tower]",
                "app::hot",
                "core::hash::sip::Hasher::write"
            ]
        );
        assert_eq!(request_frames(&frames, false, false).len(), 6);
        // Without application frames, the innermost few stay and the rest collapse.
        let runtime_only: Vec<Frame> = (0..8)
            .map(|i| frame(&format!("tokio::f{i}"), FrameOrigin::Framework))
            .chain([frame(
                "tower_vigil::profiler::runner::poll_profiled_request",
                FrameOrigin::Vigil,
            )])
            .collect();
        assert_eq!(
            request_frames(&runtime_only, false, true),
            vec![
                "[tokio]",
                "tokio::f3",
                "tokio::f2",
                "tokio::f1",
                "tokio::f0"
            ]
        );
        assert_eq!(request_frames(&frames[..2], false, true)[0], RUNTIME_FRAME);
        assert_eq!(request_frames(&frames[..2], true, true)[0], TRUNCATED_FRAME);
    }

    #[test]
    fn top_frames_count_self_and_total() {
        let stacks = vec![
            FoldedStack {
                frames: vec!["GET /".into(), "a".into(), "b".into()],
                count: 3,
            },
            FoldedStack {
                frames: vec!["GET /".into(), "a".into()],
                count: 2,
            },
        ];
        let top = top_frames(&stacks);
        assert_eq!(top[0].name, "b");
        assert_eq!((top[0].self_samples, top[0].total_samples), (3, 3));
        assert_eq!(top[1].name, "a");
        assert_eq!((top[1].self_samples, top[1].total_samples), (2, 5));
    }

    #[test]
    fn parked_samples_take_the_path_of_their_park() {
        let mut folder = Folder::default();
        for epoch in [1, 2, 5, 5] {
            folder.add(Sample {
                stack: RawStack {
                    ips: Vec::new(),
                    first_is_exact: false,
                },
                parked_epoch: epoch,
                weight: 1,
                truncated: false,
            });
        }
        let paths: Vec<(u64, Arc<str>)> = vec![
            (2, Arc::from("[awaiting] handler")),
            (4, Arc::from("[awaiting] handler > db;query")),
        ];
        let stacks = folder.finish("GET /x", &paths, true);
        let lines: Vec<String> = stacks
            .iter()
            .map(|s| format!("{} {}", s.frames.join(";"), s.count))
            .collect();
        assert_eq!(
            lines,
            vec![
                "GET /x;[awaiting] 1",
                "GET /x;[awaiting] handler 1",
                "GET /x;[awaiting] handler > db:query 2"
            ]
        );
    }
}
