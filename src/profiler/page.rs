//! The responses the profiler gives admins: the profile in each format, and small pages.
//! Every page is self-contained: inline styles, no external scripts or fonts.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::fold::Profile;
use super::runner::ProfileError;
use super::trigger::Format;

/// Header set on every response that carries a partial profile.
pub(crate) const PARTIAL_HEADER: &str = "x-vigil-profile-partial";

// inferno draws a fluid graph: its SVG takes the width CSS gives it.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
code,pre{font-family:ui-monospace,monospace}\
table{border-collapse:collapse;margin:.5em 0}\
th,td{padding:2px 10px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.partial{background:#fff0f0;border:1px solid #c00;padding:.5em 1em}\
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:30em}\
svg{width:100%;display:block}";

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

/// The profile, or why there is none, in the format asked for.
pub(crate) fn respond(result: Result<Profile, ProfileError>, format: Format) -> Response<Bytes> {
    let profile = match result {
        Ok(profile) => profile,
        Err(error) => return self::error(error.status, &error.message),
    };
    let mut response = match format {
        Format::Html => response(StatusCode::OK, "text/html; charset=utf-8", html(&profile)),
        Format::Folded => response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            folded(&profile),
        ),
        Format::Json => match serde_json::to_vec_pretty(&profile) {
            Ok(json) => response(StatusCode::OK, "application/json", json),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Format::Svg => svg_response(&profile),
    };
    if profile.partial {
        response
            .headers_mut()
            .insert(PARTIAL_HEADER, HeaderValue::from_static("true"));
    }
    response
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
        "SVG needs tower-vigil's `flamegraph` feature; use =folded or =json",
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

/// The profile page: summary, top frames, flamegraph, folded stacks.
pub(crate) fn html(profile: &Profile) -> String {
    let mut page = String::new();
    let request = escape(&profile.request);
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Profile: {request}</title><style>{STYLE}</style></head><body>\
         <h1>Profile of <code>{request}</code></h1>"
    );
    if profile.partial {
        let _ = write!(
            page,
            "<p class=\"partial\"><strong>Partial profile.</strong> Sampling stopped at the \
             maximum duration: {}.</p>",
            escape(&profile.outcome)
        );
    }
    let status = profile
        .status
        .map_or_else(|| "none".to_owned(), |s| s.to_string());
    let cpu = profile.cpu_ms.map_or_else(|| "unknown".to_owned(), millis);
    let _ = write!(
        page,
        "<table><tr><th>Request</th><td><code>{request}</code></td></tr>\
         <tr><th>Application status</th><td>{status}</td></tr>\
         <tr><th>Outcome</th><td>{}</td></tr>\
         <tr><th>Wall time</th><td>{}</td></tr>\
         <tr><th>CPU time</th><td>{cpu}</td></tr>\
         <tr><th>Mode</th><td>{} at {} Hz</td></tr>\
         <tr><th>Samples</th><td>{} ({} signals, {} lost)</td></tr>\
         <tr><th>Response body</th><td>{} bytes</td></tr></table>",
        escape(&profile.outcome),
        duration_text(profile),
        profile.mode,
        profile.rate_hz,
        profile.samples,
        profile.signals,
        profile.dropped,
        profile.response_bytes,
    );
    page.push_str("<h2>Top frames</h2>");
    if profile.top_frames.is_empty() {
        page.push_str(
            "<p>No samples were taken: the request finished within one sampling period.</p>",
        );
    } else {
        page.push_str("<table><tr><th>Frame</th><th>Self</th><th>Total</th></tr>");
        let all = profile.samples.max(1) as f64;
        for frame in &profile.top_frames {
            let _ = write!(
                page,
                "<tr><td><code>{}</code></td><td class=\"n\">{} ({:.1}%)</td>\
                 <td class=\"n\">{} ({:.1}%)</td></tr>",
                escape(&frame.name),
                frame.self_samples,
                frame.self_samples as f64 * 100.0 / all,
                frame.total_samples,
                frame.total_samples as f64 * 100.0 / all,
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Flamegraph</h2>");
    inline_svg(&mut page, profile);
    let _ = write!(
        page,
        "<details><summary>Folded stacks</summary><pre>{}</pre></details></body></html>",
        escape(&folded(profile))
    );
    page
}

#[cfg(feature = "flamegraph")]
fn inline_svg(page: &mut String, profile: &Profile) {
    match super::render::svg(profile) {
        // Inline, without the XML prolog, which only a standalone file needs.
        Ok(svg) => page.push_str(svg.find("<svg").map_or(svg.as_str(), |at| &svg[at..])),
        Err(e) => {
            let _ = write!(page, "<p>The flamegraph failed: {}</p>", escape(&e));
        }
    }
}

#[cfg(not(feature = "flamegraph"))]
fn inline_svg(page: &mut String, _profile: &Profile) {
    page.push_str(
        "<p>tower-vigil was built without its <code>flamegraph</code> feature; the folded \
         stacks below can be rendered with any flamegraph tool.</p>",
    );
}

fn refresh_page(status: StatusCode, title: &str, body: &str, target: &str) -> Response<Bytes> {
    let target = escape(target);
    response(
        status,
        "text/html; charset=utf-8",
        format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"1;url={target}\">\
             <title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>{body}\
             <p>This page refreshes until the profile is ready: <a href=\"{target}\">{target}</a></p>\
             </body></html>"
        ),
    )
}

/// The answer to `=background`: the profile runs, this page leads to it.
pub(crate) fn background_started(index_path: &str, id: &str, request: &str) -> Response<Bytes> {
    refresh_page(
        StatusCode::ACCEPTED,
        "Profile started",
        &format!(
            "<p>Profiling <code>{}</code> in the background as <code>{}</code>.</p>",
            escape(request),
            escape(id)
        ),
        &format!("{index_path}/{id}"),
    )
}

/// A background profile that is still running.
pub(crate) fn still_running(index_path: &str, id: &str, request: &str) -> Response<Bytes> {
    refresh_page(
        StatusCode::OK,
        "Profile running",
        &format!(
            "<p><code>{}</code> is still being profiled.</p>",
            escape(request)
        ),
        &format!("{index_path}/{id}"),
    )
}
