//! Background profiles (geordi's celery mode): kept as files in an output directory, with a
//! retention limit, and listed at an index path that only authorized requests see.
//!
//! Each profile `ID` is written as `ID.json`, `ID.folded`, `ID.svg` (with the `flamegraph`
//! feature) and, last, `ID.html`, whose presence means the profile is complete. Files are
//! written under a temporary name and renamed, so a reader never sees half a file.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;

use super::fold::Profile;
use super::layer::{Config, State};
use super::page::{self, escape};
use super::runner::{Deliver, ProfileError};

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
        if let Err(error) = write(&config.output_dir, &id, &profile) {
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

fn write(dir: &Path, id: &str, profile: &Profile) -> std::io::Result<()> {
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
    write_file(dir, &format!("{id}.html"), page::html(profile).as_bytes())
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
    let (id, extension) = rest.split_once('.').unwrap_or((rest, "html"));
    let content_type = match extension {
        "html" => "text/html; charset=utf-8",
        "svg" => "image/svg+xml",
        "folded" => "text/plain; charset=utf-8",
        "json" => "application/json",
        _ => return not_found(),
    };
    if !valid_id(id) {
        return not_found();
    }
    let file = config.output_dir.join(format!("{id}.{extension}"));
    match std::fs::read(&file) {
        Ok(contents) => page::response(StatusCode::OK, content_type, contents),
        Err(_) => {
            let running = state
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .cloned();
            match running {
                Some(request) if extension == "html" => page::still_running(index, id, &request),
                _ => not_found(),
            }
        }
    }
}

fn not_found() -> Response<Bytes> {
    page::error(StatusCode::NOT_FOUND, "no such profile")
}

fn index_page(config: &Config, state: &State) -> Response<Bytes> {
    let index = escape(&config.index_path);
    let mut page = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Profiles</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:1.5em}}th,td{{padding:2px 10px;\
         text-align:left}}</style></head><body><h1>Profiles</h1><p>Kept in <code>{}</code>, \
         at most {}.</p>",
        escape(&config.output_dir.display().to_string()),
        config.retain
    );
    let mut running: Vec<(String, String)> = state
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, request)| (id.clone(), request.clone()))
        .collect();
    running.sort();
    if !running.is_empty() {
        page.push_str("<h2>Running</h2><ul>");
        for (id, request) in &running {
            let _ = write!(
                page,
                "<li><a href=\"{index}/{id}\">{id}</a> <code>{}</code></li>",
                escape(request)
            );
        }
        page.push_str("</ul>");
    }
    page.push_str(
        "<h2>Finished</h2><table><tr><th>Profile</th><th>Request</th><th>Status</th>\
         <th>Wall time</th><th>Mode</th><th>Samples</th><th>Formats</th></tr>",
    );
    for id in complete_ids(&config.output_dir).iter().rev() {
        let summary = std::fs::read(config.output_dir.join(format!("{id}.json")))
            .ok()
            .and_then(|json| serde_json::from_slice::<Summary>(&json).ok());
        let Some(s) = summary else { continue };
        let status = s
            .status
            .map_or_else(|| escape(&s.outcome), |c| c.to_string());
        let partial = if s.partial { " (partial)" } else { "" };
        let _ = write!(
            page,
            "<tr><td><a href=\"{index}/{id}\">{id}</a></td><td><code>{}</code></td><td>{status}</td>\
             <td>{:.1} ms{partial}</td><td>{}</td><td>{}</td><td><a href=\"{index}/{id}.svg\">svg</a> \
             <a href=\"{index}/{id}.folded\">folded</a> <a href=\"{index}/{id}.json\">json</a></td></tr>",
            escape(&s.request),
            s.wall_ms,
            escape(&s.mode),
            s.samples,
        );
    }
    page.push_str("</table></body></html>");
    page::response(StatusCode::OK, "text/html; charset=utf-8", page)
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
