//! Flamegraph SVG with inferno (feature `flamegraph`).

use inferno::flamegraph::{self, color, Options};

use super::fold::Profile;
use super::page::duration_text;

/// The profile as a self-contained flamegraph SVG (inline script, generic font).
pub(crate) fn svg(profile: &Profile) -> Result<String, String> {
    if profile.stacks.is_empty() {
        // inferno refuses empty input; callers say why there are no samples instead.
        return Err("the profile has no samples".to_owned());
    }
    let mut options = Options::default();
    options.title = format!("{} — {}", profile.request, duration_text(profile));
    let mut subtitle = format!(
        "{} at {} Hz, {} samples, status {}",
        profile.mode,
        profile.rate_hz,
        profile.samples,
        profile
            .status
            .map_or_else(|| "none".to_owned(), |s| s.to_string())
    );
    if profile.partial {
        subtitle.push_str(" — PARTIAL: stopped at the maximum duration");
    }
    options.subtitle = Some(subtitle);
    options.colors = color::Palette::Multi(color::MultiPalette::Rust);
    options.hash = true;
    options.count_name = "samples".to_owned();
    let folded = profile.folded();
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, folded.lines(), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}
