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
    if !name.contains("::") {
        // C symbols (libc, the loader, the signal trampoline), or an inlined Rust frame, which
        // line-tables-only debug info names without its path (`poll`, `sleep`): the source
        // file says whose it is.
        return match file.filter(|f| f.ends_with(".rs")) {
            Some(file) => crate_of_file(file).map_or(FrameOrigin::App, |c| classify_crate(&c)),
            None => FrameOrigin::System,
        };
    }
    classify_crate(leading_crate(name))
}

fn classify_crate(crate_name: &str) -> FrameOrigin {
    if crate_name == "tower_vigil" {
        FrameOrigin::Vigil
    } else if STD_CRATES.contains(&crate_name) {
        FrameOrigin::Std
    } else if FRAMEWORK_CRATES.contains(&crate_name)
        || crate_name.starts_with("futures_")
        || crate_name.starts_with("tokio_")
    {
        FrameOrigin::Framework
    } else {
        FrameOrigin::App
    }
}

/// The crate a source file belongs to, when its path shows it: the standard library's sources
/// (`/rustc/<hash>/library/core/…`, or a toolchain's `rust/library/std/…`), a dependency in
/// cargo's registry or git checkouts (`…/tokio-1.48.0/src/…`), or this crate's own sources.
/// `None` for the application's files.
fn crate_of_file(file: &str) -> Option<String> {
    let file = file.replace('\\', "/");
    if file.starts_with(concat!(env!("CARGO_MANIFEST_DIR"), "/src/")) {
        return Some("tower_vigil".to_owned());
    }
    if let Some((_, rest)) = file.split_once("/library/") {
        if file.starts_with("/rustc/") || file.contains("/rust/library/") {
            let name = rest.split('/').next()?;
            return Some(name.to_owned());
        }
    }
    // `registry/src/<index>/<crate>-<version>/…` and `git/checkouts/<repository>-<hash>/…`.
    let directory = if let Some((_, rest)) = file.split_once("/registry/src/") {
        rest.split('/').nth(1)?
    } else {
        file.split_once("/git/checkouts/")?.1.split('/').next()?
    };
    // The version starts at the first `-` followed by a digit (`foo-bar-1.0.0-beta.1`).
    let name = directory
        .match_indices('-')
        .find(|&(at, _)| directory[at + 1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|(at, _)| &directory[..at])
        .or_else(|| directory.rsplit_once('-').map(|(name, _)| name))?;
    Some(name.replace('-', "_"))
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

    /// With line-tables-only debug info, inlined frames carry short names; their files tell
    /// whose they are.
    #[test]
    fn short_inlined_names_are_classified_by_their_source_file() {
        let registry = "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";
        assert_eq!(
            classify(
                Some("poll"),
                Some(&format!("{registry}/tokio-1.48.0/src/time/sleep.rs"))
            ),
            FrameOrigin::Framework
        );
        assert_eq!(
            classify(
                Some("call"),
                Some(&format!(
                    "{registry}/tower-http-0.6.11/src/timeout/service.rs"
                ))
            ),
            FrameOrigin::Framework
        );
        assert_eq!(
            classify(
                Some("sleep"),
                Some(
                    "/rustc/4eb161250e340c8f48f66e2b929ef4a5bed7c181/library/std/src/thread/mod.rs"
                )
            ),
            FrameOrigin::Std
        );
        assert_eq!(
            classify(
                Some("next"),
                Some("/home/u/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/core/src/iter/range.rs")
            ),
            FrameOrigin::Std
        );
        assert_eq!(
            classify(
                Some("poll"),
                Some(&format!("{registry}/hyper-util-0.1.0-rc.1/src/client.rs"))
            ),
            FrameOrigin::Framework
        );
        assert_eq!(
            classify(
                Some("deserialize"),
                Some(&format!("{registry}/serde_json-1.0.140/src/de.rs"))
            ),
            FrameOrigin::App,
            "a dependency outside the framework lists is counted with the application"
        );
        assert_eq!(
            classify(
                Some("poll_watched"),
                Some(concat!(env!("CARGO_MANIFEST_DIR"), "/src/registry.rs"))
            ),
            FrameOrigin::Vigil
        );
        assert_eq!(
            classify(Some("load_report"), Some("/srv/app/src/handlers.rs")),
            FrameOrigin::App
        );
        assert_eq!(
            classify(
                Some("clock_nanosleep"),
                Some("../sysdeps/unix/sysv/linux/clock_nanosleep.c")
            ),
            FrameOrigin::System
        );
    }
}
