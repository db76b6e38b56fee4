//! Turning raw instruction pointers into names, off every runtime thread, with a cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use super::RawStack;

/// Where a frame's code comes from, so reports can tell the application's frames apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FrameOrigin {
    /// Code of the application (anything not recognised below).
    App,
    /// The Rust standard library (`std`, `core`, `alloc`).
    Std,
    /// The async runtime and HTTP stack: tokio, hyper, tower, axum, futures, tracing.
    Framework,
    /// tower-vigil itself.
    Vigil,
    /// The C library, the dynamic loader, thread start-up, or an unnamed address.
    System,
}

/// One symbolized frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Frame {
    /// Instruction pointer, as hex.
    pub ip: String,
    /// Demangled function name without the hash suffix, if the binary has symbols.
    pub function: Option<String>,
    /// Source file, if the binary has debug info.
    pub file: Option<String>,
    /// Source line, if the binary has debug info.
    pub line: Option<u32>,
    /// Whose code this is.
    pub origin: FrameOrigin,
    /// True for a frame that the compiler inlined into its caller.
    pub inlined: bool,
}

type Cache = Mutex<HashMap<usize, Arc<[Frame]>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Symbols resolved per address are kept for the life of the process; code addresses are few.
const CACHE_LIMIT: usize = 64 * 1024;

/// Resolves every frame of a raw stack, innermost first; inlined functions become frames of
/// their own.
pub(crate) fn resolve(stack: &RawStack) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(stack.ips.len());
    for (index, &ip) in stack.ips.iter().enumerate() {
        // Return addresses point after the call; `backtrace::resolve` looks one byte back,
        // which is wrong only for the exact interrupted instruction.
        let lookup = if index == 0 && stack.first_is_exact {
            ip + 1
        } else {
            ip
        };
        frames.extend(resolve_one(lookup, ip).iter().cloned());
    }
    frames
}

/// Loads the symbol tables of this binary by resolving one of its own addresses.
pub(crate) fn warm_up() {
    let here = warm_up as *const () as usize;
    resolve_one(here + 1, here);
}

fn resolve_one(lookup: usize, ip: usize) -> Arc<[Frame]> {
    if let Some(hit) = cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&lookup)
    {
        return hit.clone();
    }
    let mut symbols = Vec::new();
    backtrace::resolve(lookup as *mut std::ffi::c_void, |symbol| {
        let function = symbol.name().map(|n| format!("{n:#}"));
        let file = symbol.filename().map(|p| p.display().to_string());
        symbols.push((function, file, symbol.lineno()));
    });
    let count = symbols.len();
    let resolved: Arc<[Frame]> = if symbols.is_empty() {
        Arc::from(vec![Frame {
            ip: format!("{ip:#x}"),
            function: None,
            file: None,
            line: None,
            origin: FrameOrigin::System,
            inlined: false,
        }])
    } else {
        symbols
            .into_iter()
            .enumerate()
            .map(|(i, (function, file, line))| Frame {
                ip: format!("{ip:#x}"),
                origin: classify(function.as_deref(), file.as_deref()),
                function,
                file,
                line,
                // backtrace reports the innermost inlined function first.
                inlined: i + 1 < count,
            })
            .collect()
    };
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() < CACHE_LIMIT {
        cache.insert(lookup, resolved.clone());
    }
    resolved
}

const STD_CRATES: &[&str] = &["std", "core", "alloc", "panic_unwind", "proc_macro"];
const FRAMEWORK_CRATES: &[&str] = &[
    "tokio",
    "hyper",
    "hyper_util",
    "h2",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "axum",
    "axum_core",
    "futures",
    "futures_util",
    "futures_core",
    "futures_executor",
    "tracing",
    "tracing_core",
    "tracing_subscriber",
    "tracing_futures",
    "pin_project_lite",
    "mio",
    "http",
    "http_body",
    "http_body_util",
    "bytes",
];

/// Tells whose code a symbol is, from its demangled name (and file, for unnamed code).
pub(crate) fn classify(function: Option<&str>, file: Option<&str>) -> FrameOrigin {
    let Some(name) = function else {
        return FrameOrigin::System;
    };
    let crate_name = leading_crate(name);
    if crate_name == "tower_vigil" {
        FrameOrigin::Vigil
    } else if STD_CRATES.contains(&crate_name) {
        FrameOrigin::Std
    } else if FRAMEWORK_CRATES.contains(&crate_name)
        || crate_name.starts_with("futures_")
        || crate_name.starts_with("tokio_")
    {
        FrameOrigin::Framework
    } else if !name.contains("::") {
        // C symbols: libc, the loader, the signal trampoline, thread start-up.
        let in_rust_source = file.is_some_and(|f| f.ends_with(".rs"));
        if in_rust_source {
            FrameOrigin::App
        } else {
            FrameOrigin::System
        }
    } else {
        FrameOrigin::App
    }
}

const PRIMITIVES: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
    "f64", "bool", "char", "str",
];

/// The crate a demangled path belongs to: `a::b` gives `a`; `<a::T as b::Trait>::m` gives `a`,
/// the implementing type's crate, because that is whose code runs. Methods of primitive types
/// belong to `core`; for a generic parameter (`<F as axum::Handler>::call`) the trait's crate
/// is the best guess.
pub(crate) fn leading_crate(name: &str) -> &str {
    let first = first_path_segment(name);
    if PRIMITIVES.contains(&first) || name.starts_with("<[") || name.starts_with("<(") {
        return "core";
    }
    let is_generic_param = name.starts_with('<')
        && first.len() <= 2
        && first.starts_with(|c: char| c.is_ascii_uppercase());
    if is_generic_param {
        if let Some((_, rest)) = name.split_once(" as ") {
            return first_path_segment(rest);
        }
    }
    first
}

fn first_path_segment(name: &str) -> &str {
    let mut rest = name.trim_start_matches(['<', '&', '*', ' ', '(', '[']);
    rest = rest.strip_prefix("mut ").unwrap_or(rest);
    rest = rest.strip_prefix("dyn ").unwrap_or(rest);
    rest = rest.trim_start_matches(['<', '&', '*', ' ']);
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_crate_of_the_running_code() {
        assert_eq!(classify(Some("std::thread::sleep"), None), FrameOrigin::Std);
        assert_eq!(
            classify(Some("tokio::runtime::task::raw::poll"), None),
            FrameOrigin::Framework
        );
        assert_eq!(
            classify(
                Some(
                    "<axum::routing::route::RouteFuture<E> as core::future::future::Future>::poll"
                ),
                None
            ),
            FrameOrigin::Framework
        );
        assert_eq!(
            classify(
                Some("<demo::SlowFuture as core::future::future::Future>::poll"),
                None
            ),
            FrameOrigin::App
        );
        assert_eq!(
            classify(Some("demo::blocking_handler::{{closure}}"), None),
            FrameOrigin::App
        );
        assert_eq!(
            classify(Some("tower_vigil::watchdog::future::x"), None),
            FrameOrigin::Vigil
        );
        assert_eq!(classify(Some("clock_nanosleep"), None), FrameOrigin::System);
        assert_eq!(
            classify(Some("<u64>::unchecked_add"), None),
            FrameOrigin::Std
        );
        assert_eq!(
            classify(
                Some("<u64 as core::iter::range::Step>::forward_unchecked"),
                None
            ),
            FrameOrigin::Std
        );
        assert_eq!(
            classify(
                Some("<F as axum::handler::Handler<((),),S>>::call::{{closure}}"),
                None
            ),
            FrameOrigin::Framework
        );
        assert_eq!(
            classify(
                Some("<F as futures_core::future::TryFuture>::try_poll"),
                None
            ),
            FrameOrigin::Framework
        );
        assert_eq!(classify(None, None), FrameOrigin::System);
    }
}
