//! Finding the trigger in a request, without allocating, and reading what it asks for.

use http::header::HeaderName;
use http::uri::{PathAndQuery, Uri};
use http::Request;

use super::Mode;

/// What a request asks of the profiler, found without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Nothing: pass the request on.
    None,
    /// The trigger parameter or header is present.
    Trigger,
    /// The path is the index of background profiles, or under it.
    Index,
}

/// Looks for the trigger: the exact parameter name (case-sensitive, not percent-decoded) in the
/// query, or the header; then for the index path.
pub(crate) fn classify<B>(
    request: &Request<B>,
    param: &str,
    header: Option<&HeaderName>,
    index_path: &str,
) -> Hit {
    if let Some(query) = request.uri().query() {
        if find_param(query, param).0 > 0 {
            return Hit::Trigger;
        }
    }
    if let Some(header) = header {
        if has_header(request.headers(), header) {
            return Hit::Trigger;
        }
    }
    if under_index(request.uri().path(), index_path) {
        return Hit::Index;
    }
    Hit::None
}

/// Whether `headers` holds `name`. Most requests carry a handful of headers, and comparing
/// their names costs less than hashing a custom name, which `contains_key` does.
fn has_header(headers: &http::HeaderMap, name: &HeaderName) -> bool {
    const SCANNED_UP_TO: usize = 16;
    if headers.keys_len() <= SCANNED_UP_TO {
        headers.keys().any(|key| key == name)
    } else {
        headers.contains_key(name)
    }
}

/// The index path itself, or a path below it.
pub(crate) fn under_index(path: &str, index_path: &str) -> bool {
    match path.strip_prefix(index_path) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// How often `name` occurs as a parameter of `query`, and the value of the first occurrence
/// (empty when it has no `=`). A plain byte scan: this runs for every request.
pub(crate) fn find_param<'a>(query: &'a str, name: &str) -> (usize, &'a str) {
    let bytes = query.as_bytes();
    let name = name.as_bytes();
    let mut count = 0;
    let mut first = "";
    let mut start = 0;
    while start <= bytes.len() {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'&')
            .map_or(bytes.len(), |at| start + at);
        let pair = &bytes[start..end];
        let matches =
            pair.starts_with(name) && (pair.len() == name.len() || pair[name.len()] == b'=');
        if matches {
            if count == 0 {
                // `name` is ASCII and `=` and `&` are ASCII, so these are char boundaries.
                let value_start = (start + name.len() + 1).min(end);
                first = &query[value_start..end];
            }
            count += 1;
        }
        start = end + 1;
    }
    (count, first)
}

/// The output a profile is rendered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Html,
    Svg,
    Folded,
    Json,
    /// Gzip-compressed pprof `profile.proto`.
    Pprof,
    /// speedscope's JSON file format.
    Speedscope,
}

impl Format {
    /// The word that asks for this format, and the suffix of its file in the profile store.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Svg => "svg",
            Format::Folded => "folded",
            Format::Json => "json",
            Format::Pprof => "pprof",
            Format::Speedscope => "speedscope",
        }
    }

    /// The name under which the profile store serves this format.
    pub(crate) fn file_suffix(self) -> &'static str {
        match self {
            Format::Pprof => "pb.gz",
            Format::Speedscope => "speedscope.json",
            other => other.word(),
        }
    }

    /// The format the store serves under `suffix`.
    pub(crate) fn from_file_suffix(suffix: &str) -> Option<Format> {
        [
            Format::Html,
            Format::Svg,
            Format::Folded,
            Format::Json,
            Format::Pprof,
            Format::Speedscope,
        ]
        .into_iter()
        .find(|f| f.file_suffix() == suffix)
    }
}

/// The word that asks for `mode`.
pub(crate) fn mode_word(mode: Mode) -> &'static str {
    match mode {
        Mode::WallClock => "wall",
        Mode::CpuTime => "cpu",
    }
}

/// What an authorized trigger asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wish {
    pub(crate) format: Format,
    pub(crate) mode: Option<Mode>,
    pub(crate) background: bool,
}

/// Reads a trigger's value: comma-separated words among `html`, `svg`, `folded`, `json`,
/// `pprof`, `speedscope` (format), `wall`, `cpu` (mode) and `background`. Empty (or `1`) asks for the defaults.
pub(crate) fn parse_value(value: &str) -> Result<Wish, String> {
    let mut format = None;
    let mut mode = None;
    let mut background = false;
    if value.is_empty() || value == "1" {
        return Ok(Wish {
            format: Format::Html,
            mode: None,
            background: false,
        });
    }
    for word in value.split(',') {
        let (new_format, new_mode) = match word {
            "html" => (Some(Format::Html), None),
            "svg" => (Some(Format::Svg), None),
            "folded" => (Some(Format::Folded), None),
            "json" => (Some(Format::Json), None),
            "pprof" => (Some(Format::Pprof), None),
            "speedscope" => (Some(Format::Speedscope), None),
            "wall" => (None, Some(Mode::WallClock)),
            "cpu" => (None, Some(Mode::CpuTime)),
            "background" if !background => {
                background = true;
                (None, None)
            }
            _ => {
                return Err(format!(
                    "unknown or repeated profile option {word:?}; expected a comma-separated \
                     list of: html, svg, folded, json, pprof, speedscope, wall, cpu, \
                     background"
                ))
            }
        };
        if new_format.is_some() {
            if format.is_some() {
                return Err("more than one format requested".into());
            }
            format = new_format;
        }
        if new_mode.is_some() {
            if mode.is_some() {
                return Err("more than one mode requested".into());
            }
            mode = new_mode;
        }
    }
    let format = format.unwrap_or(Format::Html);
    if background && format != Format::Html {
        return Err("background profiles are kept in every format; give no format".into());
    }
    Ok(Wish {
        format,
        mode,
        background,
    })
}

/// The URI without every occurrence of parameter `name`.
pub(crate) fn strip_param(uri: &Uri, name: &str) -> Uri {
    let Some(query) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let mut path_and_query = uri.path().to_owned();
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    // The pieces come from a valid URI, so they form a valid one again.
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    const NAME: &str = "__profile__";

    fn hit(uri: &str) -> Hit {
        let header = HeaderName::from_static("x-vigil-profile");
        classify(&request(uri), NAME, Some(&header), "/__vigil/profiles")
    }

    #[test]
    fn only_the_exact_parameter_triggers() {
        assert_eq!(hit("/a?__profile__"), Hit::Trigger);
        assert_eq!(hit("/a?x=1&__profile__=svg"), Hit::Trigger);
        assert_eq!(hit("/a?__PROFILE__"), Hit::None);
        assert_eq!(hit("/a?%5F%5Fprofile%5F%5F"), Hit::None);
        assert_eq!(hit("/a?x=__profile__"), Hit::None);
        assert_eq!(hit("/__profile__"), Hit::None);
        assert_eq!(hit("/a?__profile__x"), Hit::None);
        assert_eq!(hit("/__vigil/profiles"), Hit::Index);
        assert_eq!(hit("/__vigil/profiles/1-2"), Hit::Index);
        assert_eq!(hit("/__vigil/profilesX"), Hit::None);
        let mut with_header = request("/a");
        with_header
            .headers_mut()
            .insert("x-vigil-profile", "1".parse().unwrap());
        let header = HeaderName::from_static("x-vigil-profile");
        assert_eq!(
            classify(&with_header, NAME, Some(&header), "/i"),
            Hit::Trigger
        );
        assert_eq!(classify(&with_header, NAME, None, "/i"), Hit::None);
    }

    #[test]
    fn the_trigger_header_is_found_among_few_headers_and_many() {
        let header = HeaderName::from_static("x-vigil-profile");
        for others in [0, 3, 16, 40] {
            let mut headers = http::HeaderMap::new();
            for i in 0..others {
                headers.insert(
                    HeaderName::try_from(format!("x-other-{i}")).unwrap(),
                    "1".parse().unwrap(),
                );
            }
            headers.insert(http::header::HOST, "example.com".parse().unwrap());
            assert!(!has_header(&headers, &header), "{others} others");
            headers.insert(header.clone(), "1".parse().unwrap());
            assert!(has_header(&headers, &header), "{others} others");
            assert!(has_header(&headers, &http::header::HOST), "{others} others");
            assert!(
                !has_header(&headers, &HeaderName::from_static("x-vigil-profil")),
                "{others} others: a prefix is another name"
            );
        }
    }

    #[test]
    fn counts_repeats_and_reads_the_first_value() {
        assert_eq!(find_param("__profile__&__profile__=svg", NAME), (2, ""));
        assert_eq!(find_param("a=1&__profile__=json", NAME), (1, "json"));
        assert_eq!(find_param("a=1", NAME), (0, ""));
        assert_eq!(find_param("", NAME), (0, ""));
        assert_eq!(find_param("__profile__=", NAME), (1, ""));
        assert_eq!(find_param("x&__profile__=é,cpu&", NAME), (1, "é,cpu"));
        assert_eq!(find_param("__profile", NAME), (0, ""));
    }

    #[test]
    fn values() {
        let wish = parse_value("").unwrap();
        assert_eq!(
            (wish.format, wish.mode, wish.background),
            (Format::Html, None, false)
        );
        let wish = parse_value("svg,cpu").unwrap();
        assert_eq!((wish.format, wish.mode), (Format::Svg, Some(Mode::CpuTime)));
        assert!(parse_value("background,wall").unwrap().background);
        assert!(parse_value("pdf").is_err());
        assert!(parse_value("svg,json").is_err());
        assert!(parse_value("background,svg").is_err());
        assert!(parse_value("SVG").is_err());
        assert_eq!(parse_value("pprof,cpu").unwrap().format, Format::Pprof);
        assert_eq!(
            parse_value("speedscope").unwrap().format,
            Format::Speedscope
        );
        for format in [Format::Pprof, Format::Speedscope, Format::Svg] {
            assert_eq!(Format::from_file_suffix(format.file_suffix()), Some(format));
        }
    }

    #[test]
    fn strips_every_occurrence_and_keeps_the_rest() {
        let uri: Uri = "/a/b?x=1&__profile__=svg&y=2&__profile__".parse().unwrap();
        assert_eq!(strip_param(&uri, NAME), "/a/b?x=1&y=2");
        let uri: Uri = "/a?__profile__".parse().unwrap();
        assert_eq!(strip_param(&uri, NAME), "/a");
        let uri: Uri = "http://h:1/a?__profile__&k".parse().unwrap();
        assert_eq!(strip_param(&uri, NAME).to_string(), "http://h:1/a?k");
    }
}
