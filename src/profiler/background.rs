//! Background profiles (geordi's celery mode): kept as files in an output directory, with a
//! retention limit, and listed at an index path that only authorized requests see.
//!
//! Each profile `ID` is written as `ID.json`, `ID.folded`, `ID.svg` (with the `flamegraph`
//! feature) and, last, `ID.html`, whose presence means the profile is complete. Files are
//! written under a temporary name and renamed, so a reader never sees half a file. The pprof
//! and speedscope formats are made from `ID.json` when asked for. Profiles viewed as a page
//! (`?__profile__`) are kept here too, so that their page can link to their other formats.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use maud::{html, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::fold::Profile;
use super::layer::{Config, State};
use super::page::{self, Links};
use super::runner::{Deliver, ProfileError};
use super::trigger::Format;

/// A new identifier: milliseconds since the epoch and a counter, so ids sort by age.
pub(crate) fn new_id(state: &State) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{millis:013}-{}", state.next_number())
}

/// Ids are produced by [`new_id`]; anything else in a URL is refused before it nears the
/// file system.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

/// Writes the finished profile to the output directory, then forgets the running entry.
pub(crate) fn deliver(
    config: Arc<Config>,
    state: Arc<State>,
    id: String,
    request: String,
    mode: &'static str,
    rate_hz: u32,
) -> Deliver {
    Box::new(move |result: Result<Profile, ProfileError>| {
        let mut profile = result.unwrap_or_else(|error| Profile {
            id: None,
            request,
            mode: mode.to_owned(),
            rate_hz,
            started_unix_ms: 0,
            status: None,
            outcome: format!("no profile: {}", error.message),
            wall_ms: 0.0,
            cpu_ms: None,
            samples: 0,
            signals: 0,
            dropped: 0,
            partial: false,
            response_bytes: 0,
            top_frames: Vec::new(),
            stacks: Vec::new(),
        });
        profile.id = Some(id.clone());
        if let Err(error) = write(&config, &id, &profile) {
            tracing::warn!(target: "tower_vigil::profiler", %error, dir = %config.output_dir.display(), "cannot write background profile");
        }
        prune(&config.output_dir, config.retain);
        state
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    })
}

/// Keeps a profile that is answered at once as a page; returns the page, which links to the
/// kept formats.
pub(crate) fn keep(
    config: &Config,
    state: &State,
    profile: &mut Profile,
) -> std::io::Result<String> {
    let id = new_id(state);
    profile.id = Some(id.clone());
    let page = write(config, &id, profile)?;
    prune(&config.output_dir, config.retain);
    Ok(page)
}

/// Writes the profile's files; returns its page.
fn write(config: &Config, id: &str, profile: &Profile) -> std::io::Result<String> {
    let dir = &config.output_dir;
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(profile).map_err(std::io::Error::other)?;
    write_file(dir, &format!("{id}.json"), &json)?;
    write_file(
        dir,
        &format!("{id}.folded"),
        page::folded(profile).as_bytes(),
    )?;
    #[cfg(feature = "flamegraph")]
    if let Ok(svg) = super::render::svg(profile) {
        write_file(dir, &format!("{id}.svg"), svg.as_bytes())?;
    }
    let links = Links::Kept {
        base: format!("{}/{id}", config.index_path),
    };
    let page = page::html(profile, &links);
    write_file(dir, &format!("{id}.html"), page.as_bytes())?;
    Ok(page)
}

fn write_file(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, dir.join(name))
}

/// Ids of complete profiles in `dir`, oldest first.
fn complete_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_suffix(".html")?;
            valid_id(id).then(|| id.to_owned())
        })
        .collect();
    ids.sort();
    ids
}

/// Deletes the oldest profiles beyond `retain`.
pub(crate) fn prune(dir: &Path, retain: usize) {
    let ids = complete_ids(dir);
    let excess = ids.len().saturating_sub(retain);
    for id in &ids[..excess] {
        // The page goes first, so a profile being deleted no longer counts as complete.
        for extension in ["html", "json", "folded", "svg"] {
            let _ = std::fs::remove_file(dir.join(format!("{id}.{extension}")));
        }
    }
}

/// What the index shows of each profile.
#[derive(Deserialize)]
struct Summary {
    request: String,
    mode: String,
    status: Option<u16>,
    outcome: String,
    wall_ms: f64,
    samples: u64,
    partial: bool,
}

/// Answers an authorized request for the index path or below it.
pub(crate) fn serve(config: &Config, state: &State, path: &str) -> Response<Bytes> {
    let index = config.index_path.as_str();
    let rest = path.strip_prefix(index).unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return index_page(config, state);
    }
    let (id, suffix) = rest.split_once('.').unwrap_or((rest, "html"));
    let Some(format) = Format::from_file_suffix(suffix) else {
        return not_found();
    };
    if !valid_id(id) {
        return not_found();
    }
    // The page marks a complete profile; every other format comes from its JSON.
    let file = if format == Format::Html {
        "html"
    } else {
        "json"
    };
    match std::fs::read(config.output_dir.join(format!("{id}.{file}"))) {
        Ok(contents) if format == Format::Html => {
            page::response(StatusCode::OK, "text/html; charset=utf-8", contents)
        }
        Ok(json) => match serde_json::from_slice::<Profile>(&json) {
            Ok(profile) => serve_format(config, id, &profile, format),
            Err(_) => not_found(),
        },
        Err(_) => {
            let running = state
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .cloned();
            match running {
                Some(request) if format == Format::Html => page::still_running(index, id, &request),
                _ => not_found(),
            }
        }
    }
}

fn serve_format(config: &Config, id: &str, profile: &Profile, format: Format) -> Response<Bytes> {
    if format == Format::Svg && !profile.stacks.is_empty() {
        // Rendered when it was kept; not again on a worker thread.
        if let Ok(svg) = std::fs::read(config.output_dir.join(format!("{id}.svg"))) {
            return page::response(StatusCode::OK, "image/svg+xml", svg);
        }
    }
    page::render(profile, format, &Links::None)
}

fn not_found() -> Response<Bytes> {
    page::error(StatusCode::NOT_FOUND, "no such profile")
}

fn index_page(config: &Config, state: &State) -> Response<Bytes> {
    let index = config.index_path.as_str();
    let mut running: Vec<(String, String)> = state
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, request)| (id.clone(), request.clone()))
        .collect();
    running.sort();
    let finished: Vec<(String, Summary)> = complete_ids(&config.output_dir)
        .into_iter()
        .rev()
        .filter_map(|id| {
            let json = std::fs::read(config.output_dir.join(format!("{id}.json"))).ok()?;
            let summary = serde_json::from_slice::<Summary>(&json).ok()?;
            Some((id, summary))
        })
        .collect();
    let formats: Vec<Format> = [
        Format::Svg,
        Format::Folded,
        Format::Json,
        Format::Speedscope,
        Format::Pprof,
    ]
    .into_iter()
    .filter(|f| cfg!(feature = "flamegraph") || *f != Format::Svg)
    .filter(|f| cfg!(feature = "pprof") || *f != Format::Pprof)
    .collect();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Profiles" }
                style {
                    (PreEscaped("body{font-family:system-ui,sans-serif;margin:1.5em}\
                                 th,td{padding:2px 10px;text-align:left}\
                                 td a{margin-right:.6em}"))
                }
            }
            body {
                h1 { "Profiles" }
                p {
                    "Kept in " code { (config.output_dir.display()) } ", at most "
                    (config.retain) "."
                }
                @if !running.is_empty() {
                    h2 { "Running" }
                    ul {
                        @for (id, request) in &running {
                            li { a href={ (index) "/" (id) } { (id) } " " code { (request) } }
                        }
                    }
                }
                h2 { "Finished" }
                table {
                    tr {
                        th { "Profile" } th { "Request" } th { "Status" } th { "Wall time" }
                        th { "Mode" } th { "Samples" } th { "Formats" }
                    }
                    @for (id, s) in &finished {
                        tr {
                            td { a href={ (index) "/" (id) } { (id) } }
                            td { code { (s.request) } }
                            td {
                                @match s.status {
                                    Some(code) => (code),
                                    None => (s.outcome),
                                }
                            }
                            td {
                                (format!("{:.1} ms", s.wall_ms))
                                @if s.partial { " (partial)" }
                            }
                            td { (s.mode) }
                            td { (s.samples) }
                            td {
                                @if s.samples > 0 {
                                    @for format in &formats {
                                        a href={ (index) "/" (id) "." (format.file_suffix()) } {
                                            (format.word())
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page::response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page.into_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vigil-bg-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn retention_deletes_the_oldest_complete_profiles() {
        let dir = temp_dir("retain");
        for id in ["0000000000001-1", "0000000000002-2", "0000000000003-3"] {
            for extension in ["html", "json", "folded"] {
                std::fs::write(dir.join(format!("{id}.{extension}")), "x").unwrap();
            }
        }
        std::fs::write(dir.join("notes.txt"), "kept").unwrap();
        prune(&dir, 2);
        assert_eq!(
            complete_ids(&dir),
            vec!["0000000000002-2", "0000000000003-3"]
        );
        assert!(!dir.join("0000000000001-1.json").exists());
        assert!(dir.join("notes.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_from_urls_cannot_leave_the_directory() {
        assert!(valid_id("0001712345678-3"));
        assert!(!valid_id("../etc/passwd"));
        assert!(!valid_id(""));
        assert!(!valid_id("1/2"));
    }
}
