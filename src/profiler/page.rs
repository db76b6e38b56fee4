//! The responses the profiler gives admins: the profile in each format, and small pages.
//! Every page is self-contained: inline styles, no external scripts or fonts.
//!
//! Pages are maud templates, so every value is escaped unless wrapped in `PreEscaped`, which
//! only the constant style sheet and inferno's SVG (escaped by inferno) are.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::fold::Profile;
use super::runner::ProfileError;
use super::trigger::{self, Format};
use super::Mode;

/// Header set on every response that carries a partial profile.
pub(crate) const PARTIAL_HEADER: &str = "x-vigil-profile-partial";

// inferno draws a fluid graph: its SVG takes the width CSS gives it. The frames table has a
// fixed layout, so a long name is cut with an ellipsis (full name in its title) instead of
// pushing the counts off the screen.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
code,pre{font-family:ui-monospace,monospace}\
table{border-collapse:collapse;margin:.5em 0}\
th,td{padding:2px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.partial{background:#fff0f0;border:1px solid #c00;padding:.5em 1em}\
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:30em}\
svg{width:100%;display:block}\
table.frames{table-layout:fixed;width:100%}\
table.frames col.n{width:9em}\
table.frames td.name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}\
.formats a{margin-right:.8em}";

pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A plain-text answer for an admin: bad input, busy, failure.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Bytes> {
    response(
        status,
        "text/plain; charset=utf-8",
        format!("tower-vigil profiler: {message}\n"),
    )
}

/// `429 Too Many Requests` while the allowed number of profiles is running.
pub(crate) fn busy() -> Response<Bytes> {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "another profile is running; try again when it has finished",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Where the page's links to the profile's other formats lead.
#[derive(Debug, Clone)]
pub(crate) enum Links {
    /// The profile is kept in the store; `base` is `{index_path}/{id}`.
    Kept { base: String },
    /// The profile is not kept: each link profiles the request again. `base` is the request's
    /// URI with the trigger parameter appended, up to its `=`.
    Rerun {
        base: String,
        mode: Mode,
        why: String,
    },
    /// No links (the page of a profile that could not be kept nor re-run).
    None,
}

/// The formats a page links to.
fn linked_formats() -> impl Iterator<Item = Format> {
    [
        Format::Svg,
        Format::Folded,
        Format::Json,
        Format::Speedscope,
        Format::Pprof,
    ]
    .into_iter()
    .filter(|f| cfg!(feature = "flamegraph") || *f != Format::Svg)
    .filter(|f| cfg!(feature = "pprof") || *f != Format::Pprof)
}

fn links_markup(links: &Links) -> Markup {
    match links {
        Links::Kept { base } => html! {
            p.formats {
                "This profile as: "
                @for format in linked_formats() {
                    a href={ (base) "." (format.file_suffix()) } { (format.word()) }
                }
                " (kept in the profile store)"
            }
        },
        Links::Rerun { base, mode, why } => html! {
            p.formats {
                "Profile the request again as: "
                @for format in linked_formats() {
                    a href={ (base) (format.word()) "," (trigger::mode_word(*mode)) } {
                        (format.word())
                    }
                }
                " (each link runs the request again; this profile was not kept: " (why) ")"
            }
        },
        Links::None => html! {},
    }
}

/// The profile, or why there is none, in the format asked for.
pub(crate) fn respond(
    result: Result<Profile, ProfileError>,
    format: Format,
    links: &Links,
) -> Response<Bytes> {
    match result {
        Ok(profile) => render(&profile, format, links),
        Err(error) => self::error(error.status, &error.message),
    }
}

/// The profile in `format`; a profile without samples is answered with why it has none.
pub(crate) fn render(profile: &Profile, format: Format, links: &Links) -> Response<Bytes> {
    // JSON is the record of the run and says `samples: 0` itself; the other formats would be
    // empty.
    if profile.stacks.is_empty() && format != Format::Json {
        let (status, why) = no_samples(profile);
        return partial_marked(error(status, &why), profile);
    }
    let response = match format {
        Format::Html => response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            html(profile, links),
        ),
        Format::Folded => response(StatusCode::OK, "text/plain; charset=utf-8", folded(profile)),
        Format::Json => match serde_json::to_vec_pretty(profile) {
            Ok(json) => response(StatusCode::OK, "application/json", json),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Format::Svg => svg_response(profile),
        Format::Speedscope => {
            let mut response = response(
                StatusCode::OK,
                "application/json",
                super::export::speedscope(profile),
            );
            attachment(&mut response, "profile.speedscope.json");
            response
        }
        Format::Pprof => pprof_response(profile),
    };
    partial_marked(response, profile)
}

/// A page rendered already, as the answer.
pub(crate) fn html_response(profile: &Profile, page: String) -> Response<Bytes> {
    partial_marked(
        response(StatusCode::OK, "text/html; charset=utf-8", page),
        profile,
    )
}

fn partial_marked(mut response: Response<Bytes>, profile: &Profile) -> Response<Bytes> {
    if profile.partial {
        response
            .headers_mut()
            .insert(PARTIAL_HEADER, HeaderValue::from_static("true"));
    }
    response
}

fn attachment(response: &mut Response<Bytes>, filename: &'static str) {
    let value = match filename {
        "profile.pb.gz" => "attachment; filename=\"profile.pb.gz\"",
        _ => "attachment; filename=\"profile.speedscope.json\"",
    };
    response
        .headers_mut()
        .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(value));
}

/// Why a profile has no samples: the status to answer with, and the explanation.
pub(crate) fn no_samples(profile: &Profile) -> (StatusCode, String) {
    let period_ms = 1000.0 / f64::from(profile.rate_hz.max(1));
    let cpu = profile.mode == Mode::CpuTime.name();
    let measured_ms = if cpu {
        profile.cpu_ms.unwrap_or(0.0)
    } else {
        profile.wall_ms
    };
    let rate = format!("one every {period_ms:.1} ms at {} Hz", profile.rate_hz);
    if profile.dropped > 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no samples: all {} were lost because the sample buffer was full",
                profile.dropped
            ),
        );
    }
    // Many periods without a single signal: not a fast request, a sampler that is not heard.
    if profile.signals == 0 && measured_ms >= (20.0 * period_ms).max(50.0) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no samples: the sampler's timer signal never arrived in {} of {} time ({rate}); \
                 the signal may be blocked on the profiling thread or taken by another handler",
                millis(measured_ms),
                if cpu { "CPU" } else { "wall-clock" },
            ),
        );
    }
    let why = if cpu {
        format!(
            "no samples: the request used {} of CPU time in {} ({}), before the first sample \
             ({rate}; the kernel fires CPU timers at its own tick, often every 4 ms). Profile a \
             slower request, or use =wall to see where it waits",
            millis(measured_ms),
            millis(profile.wall_ms),
            profile.outcome,
        )
    } else {
        format!(
            "no samples: the request finished in {} ({}), before the first sample ({rate}). \
             Profile a slower request or raise the sampling rate",
            millis(profile.wall_ms),
            profile.outcome,
        )
    };
    // The request was run and understood; no profile can be made of it.
    (StatusCode::UNPROCESSABLE_ENTITY, why)
}

#[cfg(feature = "pprof")]
fn pprof_response(profile: &Profile) -> Response<Bytes> {
    match super::export::pprof(profile) {
        Ok(bytes) => {
            let mut response = response(StatusCode::OK, "application/octet-stream", bytes);
            attachment(&mut response, "profile.pb.gz");
            response
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(not(feature = "pprof"))]
fn pprof_response(_profile: &Profile) -> Response<Bytes> {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "pprof needs tower-vigil's `pprof` feature; use =speedscope, =folded or =json",
    )
}

#[cfg(feature = "flamegraph")]
fn svg_response(profile: &Profile) -> Response<Bytes> {
    match super::render::svg(profile) {
        Ok(svg) => response(StatusCode::OK, "image/svg+xml", svg),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[cfg(not(feature = "flamegraph"))]
fn svg_response(_profile: &Profile) -> Response<Bytes> {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "SVG needs tower-vigil's `flamegraph` feature; use =folded, =speedscope or =json",
    )
}

/// Folded stacks, with a comment line (which flamegraph tools skip) when partial.
pub(crate) fn folded(profile: &Profile) -> String {
    let mut out = String::new();
    if profile.partial {
        let _ = writeln!(out, "# partial: {}", profile.outcome);
    }
    out.push_str(&profile.folded());
    out
}

fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.3} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// Wall time as a title shows it.
pub(crate) fn duration_text(profile: &Profile) -> String {
    millis(profile.wall_ms)
}

fn percent(part: u64, all: u64) -> String {
    format!("{:.1}%", part as f64 * 100.0 / all.max(1) as f64)
}

/// The profile page: summary, links to the other formats, top frames, flamegraph, folded
/// stacks.
pub(crate) fn html(profile: &Profile, links: &Links) -> String {
    let status = profile
        .status
        .map_or_else(|| "none".to_owned(), |s| s.to_string());
    let cpu = profile.cpu_ms.map_or_else(|| "unknown".to_owned(), millis);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width";
                title { "Profile: " (profile.request) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Profile of " code { (profile.request) } }
                @if profile.partial {
                    p.partial {
                        strong { "Partial profile." }
                        " Sampling stopped at the maximum duration: " (profile.outcome) "."
                    }
                }
                table {
                    tr { th { "Request" } td { code { (profile.request) } } }
                    tr { th { "Application status" } td { (status) } }
                    tr { th { "Outcome" } td { (profile.outcome) } }
                    tr { th { "Wall time" } td { (duration_text(profile)) } }
                    tr { th { "CPU time" } td { (cpu) } }
                    tr { th { "Mode" } td { (profile.mode) " at " (profile.rate_hz) " Hz" } }
                    tr {
                        th { "Samples" }
                        td {
                            (profile.samples) " (" (profile.signals) " signals, "
                            (profile.dropped) " lost)"
                        }
                    }
                    tr { th { "Response body" } td { (profile.response_bytes) " bytes" } }
                }
                (links_markup(links))
                h2 { "Top frames" }
                @if profile.top_frames.is_empty() {
                    p { "No samples were taken: the request finished within one sampling period." }
                } @else {
                    table.frames {
                        colgroup { col; col.n; col.n; }
                        tr { th { "Frame" } th { "Self" } th { "Total" } }
                        @for frame in &profile.top_frames {
                            tr {
                                td.name title=(frame.name) { code { (frame.name) } }
                                td.n {
                                    (frame.self_samples) " ("
                                    (percent(frame.self_samples, profile.samples)) ")"
                                }
                                td.n {
                                    (frame.total_samples) " ("
                                    (percent(frame.total_samples, profile.samples)) ")"
                                }
                            }
                        }
                    }
                }
                h2 { "Flamegraph" }
                (flamegraph(profile))
                details {
                    summary { "Folded stacks" }
                    pre { (folded(profile)) }
                }
            }
        }
    }
    .into_string()
}

#[cfg(feature = "flamegraph")]
fn flamegraph(profile: &Profile) -> Markup {
    if profile.stacks.is_empty() {
        return html! { p { "No samples, no graph." } };
    }
    match super::render::svg(profile) {
        // inferno escapes the names it writes. Inline, without the XML prolog, which only a
        // standalone file needs.
        Ok(svg) => PreEscaped(
            svg.find("<svg")
                .map_or(svg.clone(), |at| svg[at..].to_owned()),
        ),
        Err(e) => html! { p { "The flamegraph failed: " (e) } },
    }
}

#[cfg(not(feature = "flamegraph"))]
fn flamegraph(_profile: &Profile) -> Markup {
    html! {
        p {
            "tower-vigil was built without its " code { "flamegraph" } " feature; the folded "
            "stacks below can be rendered with any flamegraph tool."
        }
    }
}

fn refresh_page(status: StatusCode, title: &str, body: Markup, target: &str) -> Response<Bytes> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content={ "1;url=" (target) };
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                (body)
                p {
                    "This page refreshes until the profile is ready: "
                    a href=(target) { (target) }
                }
            }
        }
    };
    response(status, "text/html; charset=utf-8", page.into_string())
}

/// The answer to `=background`: the profile runs, this page leads to it.
pub(crate) fn background_started(index_path: &str, id: &str, request: &str) -> Response<Bytes> {
    refresh_page(
        StatusCode::ACCEPTED,
        "Profile started",
        html! { p { "Profiling " code { (request) } " in the background as " code { (id) } "." } },
        &format!("{index_path}/{id}"),
    )
}

/// A background profile that is still running.
pub(crate) fn still_running(index_path: &str, id: &str, request: &str) -> Response<Bytes> {
    refresh_page(
        StatusCode::OK,
        "Profile running",
        html! { p { code { (request) } " is still being profiled." } },
        &format!("{index_path}/{id}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiler::export::tests::sample_profile;
    use crate::profiler::fold::{top_frames, FoldedStack};

    #[test]
    fn markup_in_the_request_and_in_frame_names_is_escaped() {
        let mut profile = sample_profile();
        profile.request = "GET /<script>alert(1)</script>".into();
        profile.outcome = "<i>ok</i>".into();
        let long = format!("[awaiting] q{{v=<b onclick=alert(2)>{}}}", "x".repeat(400));
        profile.stacks.push(FoldedStack {
            frames: vec![profile.request.clone(), long.clone()],
            count: 9,
        });
        profile.top_frames = top_frames(&profile.stacks);
        let links = Links::Rerun {
            base: "/<script>?__profile__=".into(),
            mode: Mode::CpuTime,
            why: "<off>".into(),
        };
        let page = html(&profile, &links);
        for markup in ["<script>alert", "<b onclick", "<i>ok", "<off>", "<script>?"] {
            assert!(!page.contains(markup), "unescaped {markup:?}");
        }
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // The long name is cut by the table's fixed layout and kept whole in the tooltip.
        for rule in [
            "table.frames{table-layout:fixed;width:100%}",
            "td.name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}",
        ] {
            assert!(page.contains(rule), "missing {rule}");
        }
        let escaped_long = long.replace('<', "&lt;").replace('>', "&gt;");
        assert!(
            page.contains(&format!("<td class=\"name\" title=\"{escaped_long}\">")),
            "no tooltip with the full name"
        );
        assert!(
            page.contains("href=\"/&lt;script&gt;?__profile__=pprof,cpu\"")
                || !cfg!(feature = "pprof")
        );
    }

    #[test]
    fn a_profile_without_samples_says_why_in_every_format() {
        let mut profile = sample_profile();
        profile.stacks.clear();
        profile.samples = 0;
        profile.signals = 0;
        profile.wall_ms = 0.4;
        profile.cpu_ms = Some(0.3);
        for format in [
            Format::Html,
            Format::Svg,
            Format::Folded,
            Format::Pprof,
            Format::Speedscope,
        ] {
            let response = render(&profile, format, &Links::None);
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{format:?}"
            );
            let text = String::from_utf8(response.into_body().to_vec()).unwrap();
            assert!(text.contains("before the first sample"), "{text}");
        }
        assert_eq!(render(&profile, Format::Json, &Links::None).status(), 200);
        // Two seconds of wall-clock time and not one signal: the sampler is not heard.
        profile.mode = Mode::WallClock.name().into();
        profile.wall_ms = 2000.0;
        let response = render(&profile, Format::Folded, &Links::None);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = String::from_utf8(response.into_body().to_vec()).unwrap();
        assert!(text.contains("signal never arrived"), "{text}");
    }
}
