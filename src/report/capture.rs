//! What a report keeps of a request. The request path copies the request line and the
//! configured headers as received into buffers that are reused, so a request that is never slow
//! allocates nothing and matches no secret names; rendering, for a report, redacts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use http::header::{self, HeaderName};

/// The text that replaces every redacted value.
pub const REDACTED: &str = "[redacted]";

/// Headers whose values are always redacted, whatever the configuration says.
pub const ALWAYS_REDACTED_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// Names that mark a value as secret wherever they appear in a query parameter's or a
/// configured header's name (`x-api-key`, `user_password`, `AccessToken`, `csrf_token`).
///
/// Names are compared in lower case with `-`, `_`, `.` and spaces left out, after
/// percent-decoding, so `api_key`, `API-Key` and `api%5Fkey` are all `apikey`. The list follows
/// what error trackers scrub by default (Sentry's, Rollbar's, Rails' parameter filter).
pub const SENSITIVE_NAME_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "auth",
    "credential",
    "session",
    "sessid",
    "signature",
    "csrf",
    "xsrf",
    "jwt",
    "bearer",
    "cookie",
    "creditcard",
    "cardnumber",
    "ccnumber",
    "cvv",
    "cvc",
];

/// Short names that mark a value as secret only as the whole name: as fragments they would
/// hide ordinary parameters (`otp` is in `footprint`, `ssn` in `classname`, `sid` in `inside`).
/// Compared as [`SENSITIVE_NAME_FRAGMENTS`] are.
pub const SENSITIVE_NAMES: &[&str] = &["pw", "pin", "otp", "ssn", "sid", "sig", "key"];

/// Longest header value copied into a report; the rest is cut with a visible mark, so one huge
/// header cannot hold megabytes in a reused registry slot.
pub(crate) const HEADER_VALUE_LIMIT: usize = 1024;
/// Longest URI (and route key) copied into a report.
pub(crate) const URI_LIMIT: usize = 4096;
/// Longest parameter name compared by content; a longer one is redacted without a look.
const NAME_LIMIT: usize = 128;

/// Headers whose values repeat across requests (one host, a few clients' user agents): a
/// watchdog keeps each value of these once, and a request's record names it in 3 bytes
/// instead of holding a copy. Headers that differ per request (ids, lengths, the referer, whose
/// query may hold a secret) are copied per request, so the table never keeps them.
pub const SHARED_VALUE_HEADERS: [HeaderName; 7] = [
    header::HOST,
    header::USER_AGENT,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::ORIGIN,
];
/// Most values kept once per header; later new values are copied per request.
const SHARED_VALUES_PER_HEADER: usize = 16;
/// Longest value kept once; a longer one is copied per request.
const SHARED_VALUE_LIMIT: usize = 256;

/// The route axum matched (`/users/{id}`), when the request went through an axum router.
#[cfg(feature = "axum")]
fn matched_path<B>(request: &http::Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str())
}

#[cfg(not(feature = "axum"))]
fn matched_path<B>(_: &http::Request<B>) -> Option<&str> {
    None
}

/// What a request looked like when it came in, copied as received into one reused buffer at
/// registration. Secrets are still in it: only [`RequestCapture::render`] reads it, and that
/// redacts, so the request path only copies bytes and the matching runs for slow requests alone.
///
/// `text` holds the URI, then the route when it differs from the path, then an extension
/// method's name, then (only when the URI or the route was cut) their full lengths, then one
/// record per copied header: its index in the configured list (1 byte), the bytes kept (2, the
/// top bit set when the value was cut, and then its full length in 4 more), and the bytes kept;
/// or, for a value the watchdog keeps once, its index and the value's number with
/// [`SHARED_BIT`] set (2), and nothing more.
/// One buffer sized to the request, and offsets of 16 bits, keep a registry slot small: 100 000
/// requests in flight hold their text and little more.
#[derive(Debug, Default)]
pub(crate) struct RequestMeta {
    text_bytes: Box<[u8]>,
    /// The bytes of `text_bytes` in use.
    text_len: u32,
    /// `scheme://authority/path?query`, at most [`URI_LIMIT`] bytes of it.
    uri_len: u16,
    /// Where the path begins in the URI (after `scheme://authority`).
    path_at: u16,
    /// The route axum matched, when there was one; 0 means the URI's path is the route.
    route_len: u16,
    /// Index into [`STANDARD_METHODS`], or [`EXTENSION_METHOD`] with the name in `text`.
    method: u8,
    method_len: u8,
    version: http::Version,
    /// The URI or the route was cut: their full lengths follow the method in `text`.
    cut: bool,
}

/// Writes a slot's text: a buffer that grows to the size asked for and no more. Its bytes and
/// length are two fields of [`RequestMeta`] rather than a `Vec` (24 bytes, padded to 32 beside
/// the small fields), a slot's share of 100 000 in flight.
struct TextWriter<'a> {
    bytes: &'a mut Box<[u8]>,
    len: &'a mut u32,
}

impl TextWriter<'_> {
    fn len(&self) -> usize {
        *self.len as usize
    }

    fn text(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    fn clear(&mut self) {
        *self.len = 0;
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// Makes room for `additional` more bytes, exactly: a slot holds the largest request it
    /// has described and no more.
    #[inline]
    fn reserve_exact(&mut self, additional: usize) {
        if self.len() + additional > self.bytes.len() {
            self.grow(self.len() + additional);
        }
    }

    /// Once a slot is warm, requests of its size never come here.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, needed: usize) {
        let mut grown = vec![0; needed].into_boxed_slice();
        grown[..self.len()].copy_from_slice(self.text());
        *self.bytes = grown;
    }

    #[inline]
    fn extend_from_slice(&mut self, more: &[u8]) {
        self.reserve_exact(more.len());
        let at = self.len();
        self.bytes[at..at + more.len()].copy_from_slice(more);
        *self.len = (at + more.len()) as u32;
    }

    fn truncate(&mut self, len: usize) {
        *self.len = (*self.len).min(len as u32);
    }

    fn shrink_to_fit(&mut self) {
        *self.bytes = Box::from(self.text());
    }
}

/// Methods kept as a one-byte code.
const STANDARD_METHODS: [http::Method; 9] = [
    http::Method::GET,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::HEAD,
    http::Method::OPTIONS,
    http::Method::CONNECT,
    http::Method::PATCH,
    http::Method::TRACE,
];
const EXTENSION_METHOD: u8 = u8::MAX;
/// Longest extension method name kept.
const METHOD_LIMIT: usize = 64;
/// Bytes before each copied header value in [`RequestMeta::text`], and the more that follow
/// when the value was cut.
const HEADER_RECORD: usize = 3;
const HEADER_RECORD_CUT: usize = 4;
/// Bytes of the URI's and the route's full lengths, in `text` only when one was cut.
const CUT_TOTALS: usize = 8;
/// The kept length's bit that says the value was cut.
const CUT_BIT: u16 = 1 << 15;
/// The kept length's bit that says the rest is the number of a value kept once.
const SHARED_BIT: u16 = 1 << 14;
/// Most headers a watchdog can be configured to copy: a record names one in a byte.
pub(crate) const REPORT_HEADERS_LIMIT: usize = u8::MAX as usize;
/// Most configured headers one request copies; more matches are left out.
const HEADER_COPY_LIMIT: usize = 32;

impl RequestMeta {
    pub(crate) fn method(&self) -> http::Method {
        match STANDARD_METHODS.get(usize::from(self.method)) {
            Some(method) => method.clone(),
            None => {
                let at = self.method_at();
                http::Method::from_bytes(&self.text()[at..at + usize::from(self.method_len)])
                    .unwrap_or_default()
            }
        }
    }

    pub(crate) fn version(&self) -> http::Version {
        self.version
    }

    fn text(&self) -> &[u8] {
        &self.text_bytes[..self.text_len as usize]
    }

    fn method_at(&self) -> usize {
        usize::from(self.uri_len) + usize::from(self.route_len)
    }

    /// The full lengths of the URI and the route, as received.
    fn totals(&self) -> (usize, usize) {
        if !self.cut {
            return (usize::from(self.uri_len), usize::from(self.route_len));
        }
        let at = self.method_at() + usize::from(self.method_len);
        let read = |at| self.read_len(at).unwrap_or_default();
        (read(at), read(at + 4))
    }

    /// A full length stored in `text` (4 bytes, little-endian).
    fn read_len(&self, at: usize) -> Option<usize> {
        let bytes = self.text().get(at..at + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }

    fn uri_cut(&self) -> bool {
        self.totals().0 > usize::from(self.uri_len)
    }

    /// The hash adaptive isolation keys routes by, as `route_hash` gives it for the request
    /// itself; `None` when the URI was cut (or nothing was copied).
    pub(crate) fn route_hash(&self) -> Option<u64> {
        if self.uri_len == 0 || self.uri_cut() {
            return None;
        }
        Some(crate::timebox::part::route_hash(
            &self.method(),
            self.path(),
        ))
    }

    /// The URI's path: what follows `scheme://authority`, up to the query.
    fn path(&self) -> &str {
        let path = self
            .uri()
            .get(usize::from(self.path_at)..)
            .unwrap_or_default();
        path.split_once('?').map_or(path, |(path, _)| path)
    }

    fn uri(&self) -> &str {
        std::str::from_utf8(&self.text()[..usize::from(self.uri_len)]).unwrap_or_default()
    }

    /// The route as a report's route key shows it: axum's matched route, or else the path.
    pub(crate) fn route(&self) -> String {
        let (uri_total, route_total) = self.totals();
        if self.route_len == 0 {
            let mut route = self.path().to_owned();
            if uri_total > usize::from(self.uri_len) && !self.uri().contains('?') {
                let _ = write!(route, "…[truncated, {uri_total} bytes]");
            }
            return route;
        }
        let at = usize::from(self.uri_len);
        let mut route = std::str::from_utf8(&self.text()[at..at + usize::from(self.route_len)])
            .unwrap_or_default()
            .to_owned();
        if route_total > usize::from(self.route_len) {
            let _ = write!(route, "…[truncated, {route_total} bytes]");
        }
        route
    }

    /// Each copied header: its index in the configured list and what was kept of its value.
    fn headers(&self) -> impl Iterator<Item = (usize, KeptValue<'_>)> + '_ {
        let lengths = if self.cut { CUT_TOTALS } else { 0 };
        let mut at = self.method_at() + usize::from(self.method_len) + lengths;
        std::iter::from_fn(move || {
            let record = self.text().get(at..at + HEADER_RECORD)?;
            let index = usize::from(record[0]);
            let kept = u16::from_le_bytes([record[1], record[2]]);
            at += HEADER_RECORD;
            if kept & SHARED_BIT != 0 {
                return Some((index, KeptValue::Shared(usize::from(kept & !SHARED_BIT))));
            }
            let len = if kept & CUT_BIT != 0 {
                let full = self.read_len(at)?;
                at += HEADER_RECORD_CUT;
                full
            } else {
                usize::from(kept)
            };
            let kept = usize::from(kept & !CUT_BIT);
            let shown = self.text().get(at..at + kept)?;
            at += kept;
            Some((index, KeptValue::Copied { shown, len }))
        })
    }
}

/// What a request's record kept of one header's value.
enum KeptValue<'a> {
    /// The bytes kept and the value's full length.
    Copied { shown: &'a [u8], len: usize },
    /// The number of a value the watchdog keeps once for the header.
    Shared(usize),
}

/// `text` cut at `limit` bytes, on a character boundary.
fn cut_at(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut at = limit;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    &text[..at]
}

/// A request's description as reports show it, secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderedRequest {
    pub(crate) uri: String,
    pub(crate) headers: Vec<(String, String)>,
}

/// One header a report copies.
#[derive(Debug)]
struct ReportHeader {
    name: HeaderName,
    /// Decided once here, so the request path does not match header names.
    redacted: bool,
    /// For a header of [`SHARED_VALUE_HEADERS`], the values kept once.
    shared: Option<SharedValues>,
}

/// The values of one header that a watchdog keeps once for all its requests. Append-only and
/// bounded, so a value's number never changes and the request path reads it without a lock.
#[derive(Debug, Default)]
struct SharedValues {
    values: [OnceLock<Box<[u8]>>; SHARED_VALUES_PER_HEADER],
    len: AtomicUsize,
    adding: Mutex<()>,
}

impl SharedValues {
    fn get(&self, number: usize) -> Option<&[u8]> {
        self.values.get(number)?.get().map(|value| &**value)
    }

    /// The number of `value`, kept now if it is new and there is room.
    #[inline]
    fn number_of(&self, value: &[u8]) -> Option<u16> {
        let len = self.len.load(Ordering::Acquire);
        match self.find(len, value) {
            Some(number) => Some(number),
            None if len < SHARED_VALUES_PER_HEADER && value.len() <= SHARED_VALUE_LIMIT => {
                self.add(value)
            }
            None => None,
        }
    }

    #[inline]
    fn find(&self, len: usize, value: &[u8]) -> Option<u16> {
        self.values[..len]
            .iter()
            .position(|kept| kept.get().is_some_and(|kept| **kept == *value))
            .map(|number| number as u16)
    }

    /// Keeps a value first seen: once per value for the watchdog's life, not per request.
    #[cold]
    fn add(&self, value: &[u8]) -> Option<u16> {
        let _adding = crate::registry::lock(&self.adding);
        let len = self.len.load(Ordering::Acquire);
        // Another request may have kept it meanwhile.
        if let Some(number) = self.find(len, value) {
            return Some(number);
        }
        let slot = self.values.get(len)?;
        slot.set(value.into()).ok()?;
        self.len.store(len + 1, Ordering::Release);
        Some(len as u16)
    }
}

/// Which request parts a report carries and which secrets it hides.
#[derive(Debug)]
pub(crate) struct RequestCapture {
    headers: Vec<ReportHeader>,
    /// Extra sensitive names, normalized; matched like [`SENSITIVE_NAME_FRAGMENTS`].
    redacted_params: Vec<Vec<u8>>,
    /// Parameter names let through despite the built-in list, normalized; matched whole.
    allowed_params: Vec<Vec<u8>>,
}

impl RequestCapture {
    /// `headers` are copied into reports; those named in `redacted_headers`, in
    /// [`ALWAYS_REDACTED_HEADERS`] or by the built-in list are redacted. Query parameters are
    /// redacted by the built-in list and `redacted_params`, except those in `allowed_params`
    /// (an explicit `redacted_params` entry wins over an allowed one).
    pub(crate) fn new(
        headers: Vec<HeaderName>,
        redacted_headers: &[HeaderName],
        redacted_params: &[String],
        allowed_params: &[String],
    ) -> Self {
        let owned = |names: &[String]| -> Vec<Vec<u8>> {
            names
                .iter()
                .filter_map(|name| {
                    let mut buffer = [0; NAME_LIMIT];
                    let normal = normalize(name, &mut buffer)?;
                    (!normal.is_empty()).then(|| normal.to_vec())
                })
                .collect()
        };
        let redacted_params = owned(redacted_params);
        let headers = headers
            .into_iter()
            .map(|name| {
                let redacted = ALWAYS_REDACTED_HEADERS.contains(&name)
                    || redacted_headers.contains(&name)
                    || name_is_sensitive(name.as_str(), &redacted_params);
                let shared =
                    (!redacted && SHARED_VALUE_HEADERS.contains(&name)).then(SharedValues::default);
                ReportHeader {
                    name,
                    redacted,
                    shared,
                }
            })
            .collect();
        Self {
            headers,
            redacted_params,
            allowed_params: owned(allowed_params),
        }
    }

    /// Copies the request line and the selected headers as they are; values of redacted
    /// headers are not copied at all.
    pub(crate) fn fill<B>(&self, request: &http::Request<B>, meta: &mut RequestMeta) {
        let uri = request.uri();
        let authority = uri.authority().map_or("", |a| a.as_str());
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path(), |p| p.as_str());
        let route = matched_path(request).unwrap_or_default();
        let route_kept = cut_at(route, URI_LIMIT);
        let method = request.method();
        let (code, method_name) = match STANDARD_METHODS.iter().position(|m| m == method) {
            Some(code) => (code as u8, ""),
            None => (EXTENSION_METHOD, cut_at(method.as_str(), METHOD_LIMIT)),
        };

        let mut text = TextWriter {
            bytes: &mut meta.text_bytes,
            len: &mut meta.text_len,
        };
        text.clear();
        // Capacity grows exactly (`reserve_exact`), so a slot holds the largest request it has
        // described and no more; once warm, a request of that size or less allocates nothing.
        let scheme = uri.scheme_str().unwrap_or_default();
        let separator = if scheme.is_empty() { "" } else { "://" };
        let path_at = scheme.len() + separator.len() + authority.len();
        let uri_total = path_at + path_and_query.len();
        text.reserve_exact(uri_total.min(URI_LIMIT));
        if uri_total <= URI_LIMIT {
            // A server's request has a path and nothing else: copy no empty piece.
            if !scheme.is_empty() {
                text.extend_from_slice(scheme.as_bytes());
                text.extend_from_slice(separator.as_bytes());
            }
            if !authority.is_empty() {
                text.extend_from_slice(authority.as_bytes());
            }
            text.extend_from_slice(path_and_query.as_bytes());
        } else {
            for part in [scheme, separator, authority, path_and_query] {
                let room = URI_LIMIT - text.len();
                text.extend_from_slice(&part.as_bytes()[..part.len().min(room)]);
            }
            // Cut on a character boundary.
            if let Err(error) = std::str::from_utf8(text.text()) {
                text.truncate(error.valid_up_to());
            }
        }
        meta.uri_len = text.len() as u16;
        meta.path_at = path_at.min(text.len()) as u16;
        text.reserve_exact(route_kept.len() + method_name.len());
        if !route_kept.is_empty() {
            text.extend_from_slice(route_kept.as_bytes());
        }
        meta.route_len = route_kept.len() as u16;
        if !method_name.is_empty() {
            text.extend_from_slice(method_name.as_bytes());
        }
        meta.method = code;
        meta.method_len = method_name.len() as u8;
        meta.version = request.version();
        meta.cut = uri_total > usize::from(meta.uri_len) || route.len() > route_kept.len();
        if meta.cut {
            let full = |len: usize| (len.min(u32::MAX as usize) as u32).to_le_bytes();
            text.reserve_exact(CUT_TOTALS);
            text.extend_from_slice(&full(uri_total));
            text.extend_from_slice(&full(route.len()));
        }

        // One pass over the request's few headers beats a hash lookup per configured name.
        let mut copied = 0;
        for (name, value) in request.headers() {
            if copied == HEADER_COPY_LIMIT {
                break;
            }
            let Some(index) = self.headers.iter().position(|wanted| wanted.name == name) else {
                continue;
            };
            let bytes = value.as_bytes();
            let header = &self.headers[index];
            if let Some(number) = header.shared.as_ref().and_then(|s| s.number_of(bytes)) {
                let mut record = [index as u8, 0, 0];
                record[1..].copy_from_slice(&(number | SHARED_BIT).to_le_bytes());
                text.extend_from_slice(&record);
                copied += 1;
                continue;
            }
            let redacted = header.redacted;
            let kept = if redacted {
                &[][..]
            } else {
                &bytes[..bytes.len().min(HEADER_VALUE_LIMIT)]
            };
            // A redacted value is never copied, and shown as the same mark whatever its length.
            let cut = !redacted && kept.len() < bytes.len();
            let mut record = [0; HEADER_RECORD + HEADER_RECORD_CUT];
            record[0] = index as u8;
            let flag = if cut { CUT_BIT } else { 0 };
            record[1..3].copy_from_slice(&(kept.len() as u16 | flag).to_le_bytes());
            let record = if cut {
                let len = bytes.len().min(u32::MAX as usize) as u32;
                record[HEADER_RECORD..].copy_from_slice(&len.to_le_bytes());
                &record[..]
            } else {
                &record[..HEADER_RECORD]
            };
            text.reserve_exact(record.len() + kept.len());
            text.extend_from_slice(record);
            if !kept.is_empty() {
                text.extend_from_slice(kept);
            }
            copied += 1;
        }
        // A slot that once held a huge request gives the room back.
        if text.capacity() > 2 * text.len().max(512) {
            text.shrink_to_fit();
        }
    }

    /// The request as a report shows it: query parameters, headers and the referer's query
    /// redacted, control characters escaped, long values cut with a visible mark.
    pub(crate) fn render(&self, meta: &RequestMeta) -> RenderedRequest {
        let kept = meta.uri();
        let mut uri = String::with_capacity(kept.len() + 16);
        match kept.split_once('?') {
            Some((page, query)) => {
                uri.push_str(page);
                uri.push('?');
                self.push_redacted_query(query, &mut uri);
            }
            None => uri.push_str(kept),
        }
        let (uri_total, _) = meta.totals();
        if uri_total > kept.len() {
            let _ = write!(uri, "…[truncated, {uri_total} bytes]");
        }
        let headers = meta
            .headers()
            .map(|(index, kept)| {
                let ReportHeader {
                    name,
                    redacted,
                    shared,
                } = &self.headers[index];
                let (shown, len) = match kept {
                    KeptValue::Copied { shown, len } => (shown, len),
                    KeptValue::Shared(number) => {
                        let value = shared.as_ref().and_then(|s| s.get(number));
                        let value = value.unwrap_or_default();
                        (value, value.len())
                    }
                };
                let mut value = String::new();
                if *redacted {
                    value.push_str(REDACTED);
                } else if name == header::REFERER {
                    // The previous page's URL carries its query, tokens and all.
                    self.push_referer(shown, len, &mut value);
                } else {
                    push_header_value(shown, len, &mut value);
                }
                (name.as_str().to_owned(), value)
            })
            .collect();
        RenderedRequest { uri, headers }
    }

    fn push_referer(&self, shown: &[u8], len: usize, out: &mut String) {
        let plain = len == shown.len() && shown.iter().all(|&b| b == b' ' || b.is_ascii_graphic());
        match std::str::from_utf8(shown).ok().filter(|_| plain) {
            Some(text) => match text.split_once('?') {
                Some((page, query)) => {
                    out.push_str(page);
                    out.push('?');
                    self.push_redacted_query(query, out);
                }
                None => out.push_str(text),
            },
            // Cut or not plain text: nothing of it is worth the risk.
            None if shown.contains(&b'?') => out.push_str(REDACTED),
            None => push_header_value(shown, len, out),
        }
    }

    fn push_redacted_query(&self, query: &str, out: &mut String) {
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            let (key, has_value) = match pair.split_once('=') {
                Some((key, _)) => (key, true),
                None => (pair, false),
            };
            if has_value && self.is_redacted_param(key) {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            } else {
                out.push_str(pair);
            }
        }
    }

    /// Compares names the way a server would decode them, so `api%5Fkey` does not slip past a
    /// rule for `api_key`.
    fn is_redacted_param(&self, raw_key: &str) -> bool {
        let mut buffer = [0; NAME_LIMIT];
        let Some(name) = normalize(raw_key, &mut buffer) else {
            return true;
        };
        if self.redacted_params.iter().any(|r| contains(name, r)) {
            return true;
        }
        if self.allowed_params.iter().any(|a| a == name) {
            return false;
        }
        is_sensitive(name)
    }
}

/// Whether a name (a header's, or a parameter's as written) is on the built-in list or on
/// `extra`, matched as fragments.
fn name_is_sensitive(raw: &str, extra: &[Vec<u8>]) -> bool {
    let mut buffer = [0; NAME_LIMIT];
    match normalize(raw, &mut buffer) {
        Some(name) => is_sensitive(name) || extra.iter().any(|e| contains(name, e)),
        None => true,
    }
}

/// Whether a normalized name is on the built-in list.
fn is_sensitive(name: &[u8]) -> bool {
    SENSITIVE_NAMES.iter().any(|s| s.as_bytes() == name)
        || SENSITIVE_NAME_FRAGMENTS
            .iter()
            .any(|s| contains(name, s.as_bytes()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The name percent-decoded (`+` as a space), in ASCII lower case, without separators, in
/// `buffer`; `None` when it does not fit.
fn normalize<'b>(raw: &str, buffer: &'b mut [u8; NAME_LIMIT]) -> Option<&'b [u8]> {
    let mut len = 0;
    for byte in decoded(raw.as_bytes()) {
        if matches!(byte, b'-' | b'_' | b'.' | b' ') {
            continue;
        }
        *buffer.get_mut(len)? = byte.to_ascii_lowercase();
        len += 1;
    }
    Some(&buffer[..len])
}

/// The bytes of a query name as a server decodes them: `%XX` escapes and `+` for a space.
fn decoded(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let byte = *raw.get(i)?;
        i += 1;
        Some(match byte {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    raw.get(i).and_then(|&b| hex(b)),
                    raw.get(i + 1).and_then(|&b| hex(b)),
                ) {
                    (Some(high), Some(low)) => {
                        i += 2;
                        (high * 16 + low) as u8
                    }
                    _ => b'%',
                }
            }
            b'+' => b' ',
            other => other,
        })
    })
}

/// Header values are usually ASCII; anything else is shown lossily, and control characters are
/// escaped so a value cannot forge lines in a text report. `shown` is what was copied of a value
/// `len` bytes long.
fn push_header_value(shown: &[u8], len: usize, out: &mut String) {
    let start = out.len();
    if shown.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        // The common case: printable ASCII, copied as it is.
        out.push_str(std::str::from_utf8(shown).unwrap_or_default());
    } else {
        push_escaped(shown, out, start);
    }
    if len > shown.len() {
        let _ = write!(out, "…[truncated, {len} bytes]");
    }
}

fn push_escaped(shown: &[u8], out: &mut String, start: usize) {
    'chunks: for chunk in shown.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() - start >= HEADER_VALUE_LIMIT {
                break 'chunks;
            }
            if c.is_control() {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            } else {
                out.push(c);
            }
        }
        if !chunk.invalid().is_empty() {
            out.push('\u{fffd}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(params: &[&str]) -> RequestCapture {
        let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
        RequestCapture::new(
            vec![header::HOST, header::AUTHORIZATION, header::USER_AGENT],
            &[],
            &params,
            &[],
        )
    }

    fn normal(raw: &str) -> Option<String> {
        let mut buffer = [0; NAME_LIMIT];
        normalize(raw, &mut buffer).map(|n| String::from_utf8(n.to_vec()).unwrap())
    }

    fn uri_of(capture: &RequestCapture, uri: &str) -> String {
        let request = http::Request::get(uri).body(()).unwrap();
        let mut meta = RequestMeta::default();
        capture.fill(&request, &mut meta);
        capture.render(&meta).uri
    }

    #[test]
    fn secrets_are_redacted_when_copied() {
        let request = http::Request::get("/a?ticket=s3cret&x=1&my%5Fticket=k&flag")
            .header("authorization", "Bearer abc")
            .header("host", "example.com")
            .body(())
            .unwrap();
        let mut meta = RequestMeta::default();
        let capture = capture(&["ticket"]);
        capture.fill(&request, &mut meta);
        // The secret header's value is never copied; the query is redacted when rendered.
        assert!(!meta.text().windows(6).any(|w| w == b"Bearer"));
        let rendered = capture.render(&meta);
        assert_eq!(
            rendered.uri,
            "/a?ticket=[redacted]&x=1&my%5Fticket=[redacted]&flag"
        );
        let headers = rendered.headers;
        assert!(headers.contains(&("authorization".into(), REDACTED.into())));
        assert!(headers.contains(&("host".into(), "example.com".into())));
        assert!(!format!("{headers:?}").contains("abc"));
    }

    fn with_headers(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut request = http::Request::get("/p");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn rendered_headers(
        capture: &RequestCapture,
        request: &http::Request<()>,
    ) -> Vec<(String, String)> {
        let mut meta = RequestMeta::default();
        capture.fill(request, &mut meta);
        capture.render(&meta).headers
    }

    #[test]
    fn repeated_values_are_kept_once_and_shown_as_received() {
        let capture = capture(&[]);
        let agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        let request = with_headers(&[("host", "api.example.com"), ("user-agent", agent)]);
        let mut first = RequestMeta::default();
        capture.fill(&request, &mut first);
        let mut second = RequestMeta::default();
        capture.fill(&request, &mut second);
        // Both records name the values kept once: neither holds a copy.
        for meta in [&first, &second] {
            assert!(!meta.text().windows(7).any(|w| w == b"Mozilla"));
            assert_eq!(meta.text().len(), "/p".len() + 2 * HEADER_RECORD);
            let headers = capture.render(meta).headers;
            assert_eq!(
                headers,
                [
                    ("host".to_owned(), "api.example.com".to_owned()),
                    ("user-agent".to_owned(), agent.to_owned()),
                ]
            );
        }
        let other = with_headers(&[("host", "www.example.com")]);
        assert_eq!(
            rendered_headers(&capture, &other),
            [("host".to_owned(), "www.example.com".to_owned())]
        );
        // The first request's record still names its own value.
        assert_eq!(capture.render(&first).headers[0].1, "api.example.com");
    }

    #[test]
    fn values_past_the_shared_table_are_copied() {
        let capture = capture(&[]);
        let hosts: Vec<String> = (0..SHARED_VALUES_PER_HEADER + 4)
            .map(|n| format!("host-{n}.example.com"))
            .collect();
        let metas: Vec<RequestMeta> = hosts
            .iter()
            .map(|host| {
                let mut meta = RequestMeta::default();
                capture.fill(&with_headers(&[("host", host)]), &mut meta);
                meta
            })
            .collect();
        for (n, (host, meta)) in hosts.iter().zip(&metas).enumerate() {
            let copied = meta
                .text()
                .windows(host.len())
                .any(|w| w == host.as_bytes());
            assert_eq!(copied, n >= SHARED_VALUES_PER_HEADER, "{host}");
            assert_eq!(
                capture.render(meta).headers,
                [("host".to_owned(), host.clone())]
            );
        }
        // A value too long to keep once is copied, and one seen before is still found.
        let long = "a".repeat(SHARED_VALUE_LIMIT + 1);
        let capture = RequestCapture::new(vec![header::USER_AGENT], &[], &[], &[]);
        let mut meta = RequestMeta::default();
        capture.fill(&with_headers(&[("user-agent", &long)]), &mut meta);
        assert!(meta.text().len() > SHARED_VALUE_LIMIT);
        assert_eq!(capture.render(&meta).headers[0].1, long);
        capture.fill(
            &with_headers(&[("host", &hosts[0]), ("user-agent", "curl/8")]),
            &mut meta,
        );
        capture.fill(&with_headers(&[("user-agent", "curl/8")]), &mut meta);
        assert_eq!(meta.text().len(), "/p".len() + HEADER_RECORD);
    }

    #[test]
    fn redacted_and_unlisted_headers_are_never_kept_once() {
        let capture = RequestCapture::new(
            vec![
                header::USER_AGENT,
                header::REFERER,
                "x-request-id".parse().unwrap(),
            ],
            &[header::USER_AGENT],
            &[],
            &[],
        );
        assert!(capture.headers.iter().all(|header| header.shared.is_none()));
        let request = with_headers(&[
            ("user-agent", "agent/1"),
            ("referer", "https://example.com/?token=t0ps3cret"),
            ("x-request-id", "r-1"),
        ]);
        let mut meta = RequestMeta::default();
        capture.fill(&request, &mut meta);
        assert!(!meta.text().windows(7).any(|w| w == b"agent/1"));
        let headers = capture.render(&meta).headers;
        assert_eq!(headers[0], ("user-agent".to_owned(), REDACTED.to_owned()));
        assert_eq!(headers[1].1, "https://example.com/?token=[redacted]");
        assert_eq!(headers[2].1, "r-1");
    }

    #[test]
    fn threads_that_meet_a_new_value_at_once_agree_on_its_number() {
        let capture = RequestCapture::new(vec![header::USER_AGENT], &[], &[], &[]);
        let agents: Vec<String> = (0..SHARED_VALUES_PER_HEADER)
            .map(|n| format!("agent/{n}"))
            .collect();
        let seen: Vec<Vec<Option<u16>>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let shared = capture.headers[0].shared.as_ref().unwrap();
                        agents
                            .iter()
                            .map(|a| shared.number_of(a.as_bytes()))
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let shared = capture.headers[0].shared.as_ref().unwrap();
        for numbers in &seen {
            for (agent, number) in agents.iter().zip(numbers) {
                let number = number.expect("room for every agent");
                assert_eq!(shared.get(usize::from(number)), Some(agent.as_bytes()));
            }
        }
        assert_eq!(shared.len.load(Ordering::Relaxed), SHARED_VALUES_PER_HEADER);
    }

    #[test]
    fn buffers_are_reused_between_requests() {
        let capture = capture(&[]);
        let mut meta = RequestMeta::default();
        let long = http::Request::get("/a/very/long/path/that/needs/room?x=1")
            .header("host", "h")
            .body(())
            .unwrap();
        capture.fill(&long, &mut meta);
        let capacity = meta.text_bytes.len();
        let short = http::Request::get("/b").body(()).unwrap();
        capture.fill(&short, &mut meta);
        assert_eq!(capture.render(&meta).uri, "/b");
        assert!(capture.render(&meta).headers.is_empty());
        assert_eq!(meta.text_bytes.len(), capacity);
    }

    #[test]
    fn the_request_line_survives_the_copy() {
        let capture = capture(&[]);
        let mut meta = RequestMeta::default();
        let absolute = http::Request::builder()
            .method(http::Method::from_bytes(b"PURGE").unwrap())
            .uri("https://api.example.com:8443/jobs/7?page=2")
            .version(http::Version::HTTP_2)
            .header("user-agent", "ua/1")
            .body(())
            .unwrap();
        capture.fill(&absolute, &mut meta);
        assert_eq!(meta.method().as_str(), "PURGE");
        assert_eq!(meta.version(), http::Version::HTTP_2);
        assert_eq!(meta.route(), "/jobs/7");
        let rendered = capture.render(&meta);
        assert_eq!(rendered.uri, "https://api.example.com:8443/jobs/7?page=2");
        assert_eq!(rendered.headers, [("user-agent".into(), "ua/1".into())]);

        let long_path = format!("/{}", "p".repeat(URI_LIMIT + 10));
        let long = http::Request::post(long_path.as_str()).body(()).unwrap();
        capture.fill(&long, &mut meta);
        assert_eq!(meta.method(), http::Method::POST);
        let mark = format!("…[truncated, {} bytes]", URI_LIMIT + 11);
        assert_eq!(capture.render(&meta).uri.len(), URI_LIMIT + mark.len());
        assert!(capture.render(&meta).uri.ends_with(&mark));
        assert!(meta.route().ends_with(&mark));
    }

    #[test]
    fn the_copy_gives_the_route_hash_of_the_request_itself() {
        let capture = capture(&[]);
        let mut meta = RequestMeta::default();
        assert_eq!(meta.route_hash(), None, "nothing copied yet");
        let purge = http::Method::from_bytes(b"PURGE").unwrap();
        for (method, uri) in [
            (http::Method::GET, "/users/7?page=2"),
            (http::Method::POST, "/"),
            (purge, "https://api.example.com:8443/jobs/7/runs?x=/1"),
            (http::Method::OPTIONS, "*"),
            (http::Method::GET, "http://example.com"),
        ] {
            let request = http::Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(())
                .unwrap();
            capture.fill(&request, &mut meta);
            assert_eq!(
                meta.route_hash(),
                Some(crate::timebox::part::route_hash(
                    &method,
                    request.uri().path()
                )),
                "{method} {uri}"
            );
        }
        let long_path = format!("/{}", "p".repeat(URI_LIMIT));
        let long = http::Request::get(long_path.as_str()).body(()).unwrap();
        capture.fill(&long, &mut meta);
        assert_eq!(meta.route_hash(), None, "a cut URI has lost its path");
    }

    #[test]
    fn a_uri_cut_inside_a_character_keeps_what_comes_before() {
        let capture = capture(&[]);
        let mut meta = RequestMeta::default();
        // One byte of padding puts the limit inside a two-byte character.
        let path = format!("/{}", "é".repeat(URI_LIMIT));
        let request = http::Request::get(path.as_str()).body(()).unwrap();
        capture.fill(&request, &mut meta);
        let uri = capture.render(&meta).uri;
        let mark = format!("…[truncated, {} bytes]", path.len());
        assert!(uri.ends_with(&mark), "{}", &uri[uri.len() - 40..]);
        assert_eq!(uri.len(), URI_LIMIT - 1 + mark.len());
        // The kept part, plus the two full lengths a cut request line records.
        assert!(
            meta.text_bytes.len() <= URI_LIMIT + CUT_TOTALS,
            "only the kept part is copied: {}",
            meta.text_bytes.len()
        );
    }

    #[test]
    fn percent_decoding_matches_names() {
        assert_eq!(normal("api%5Fkey").as_deref(), Some("apikey"));
        assert_eq!(normal("API_KEY").as_deref(), Some("apikey"));
        assert_eq!(normal("x-Api.Key+2").as_deref(), Some("xapikey2"));
        assert_eq!(normal("%").as_deref(), Some("%"));
        assert_eq!(normal("%4").as_deref(), Some("%4"));
        assert_eq!(normal("%zz").as_deref(), Some("%zz"));
        assert_eq!(normal(&"a".repeat(NAME_LIMIT + 1)), None);
        // Names past the limit are redacted unseen rather than half read.
        assert!(capture(&[]).is_redacted_param(&"a".repeat(NAME_LIMIT + 1)));
    }

    #[test]
    fn the_built_in_list_matches_whole_names_and_fragments_in_any_case() {
        let capture = capture(&[]);
        for secret in [
            "token",
            "api_key",
            "apikey",
            "access_token",
            "AccessToken",
            "refresh-token",
            "password",
            "user_password",
            "passwd",
            "pwd",
            "secret",
            "client_secret",
            "auth",
            "credentials",
            "session",
            "PHPSESSID",
            "signature",
            "X-Amz-Signature",
            "private_key",
            "csrf_token",
            "_xsrf",
            "jwt",
            "card_number",
            "cvv",
            "otp",
            "ssn",
            "sig",
            "key",
            "api%5Fkey",
        ] {
            assert!(capture.is_redacted_param(secret), "{secret}");
        }
        for plain in [
            "page",
            "q",
            "id",
            "footprint",
            "classname",
            "inside",
            "monkey",
            "sort",
        ] {
            assert!(!capture.is_redacted_param(plain), "{plain}");
        }
    }

    #[test]
    fn allowed_names_pass_and_explicit_redaction_wins() {
        let capture = RequestCapture::new(
            vec![],
            &[],
            &["author".into()],
            &["page_token".into(), "author".into()],
        );
        assert_eq!(
            uri_of(&capture, "/a?Page-Token=p2&token=t&author=me"),
            "/a?Page-Token=p2&token=[redacted]&author=[redacted]"
        );
    }

    #[test]
    fn configured_headers_with_sensitive_names_are_redacted() {
        let capture = RequestCapture::new(
            vec![
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-csrf-token"),
                HeaderName::from_static("x-request-id"),
                header::USER_AGENT,
                header::REFERER,
            ],
            &[],
            &[],
            &[],
        );
        let request = http::Request::get("/")
            .header("x-api-key", "k3y")
            .header("x-csrf-token", "c")
            .header("x-request-id", "r-1")
            .header("user-agent", "ua")
            .header("referer", "https://example.com/login?next=/a&token=t0k")
            .body(())
            .unwrap();
        let mut meta = RequestMeta::default();
        capture.fill(&request, &mut meta);
        let headers: Vec<_> = capture
            .render(&meta)
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        assert_eq!(
            headers,
            [
                "x-api-key: [redacted]",
                "x-csrf-token: [redacted]",
                "x-request-id: r-1",
                "user-agent: ua",
                "referer: https://example.com/login?next=/a&token=[redacted]",
            ]
        );
    }

    #[test]
    fn long_values_are_cut_with_their_full_length() {
        let capture = RequestCapture::new(vec![header::USER_AGENT], &[], &[], &[]);
        let long_query = format!("/a?token=s3cret&pad={}", "x".repeat(URI_LIMIT));
        let request = http::Request::get(long_query.as_str())
            .header("user-agent", "u".repeat(HEADER_VALUE_LIMIT + 10))
            .body(())
            .unwrap();
        let mut meta = RequestMeta::default();
        capture.fill(&request, &mut meta);
        let rendered = capture.render(&meta);
        assert!(rendered.uri.starts_with("/a?token=[redacted]&pad=xxx"));
        assert!(rendered
            .uri
            .ends_with(&format!("…[truncated, {} bytes]", long_query.len())));
        assert!(!rendered.uri.contains("s3cret"));
        let (_, agent) = &rendered.headers[0];
        assert_eq!(
            agent.len(),
            HEADER_VALUE_LIMIT + "…[truncated, 1034 bytes]".len()
        );
        assert!(agent.ends_with("…[truncated, 1034 bytes]"));
    }

    #[test]
    fn a_cut_referer_with_a_query_is_redacted_whole() {
        let capture = RequestCapture::new(vec![header::REFERER], &[], &[], &[]);
        let referer = format!(
            "https://e.com/p?token=t0k&pad={}",
            "x".repeat(HEADER_VALUE_LIMIT)
        );
        let request = http::Request::get("/")
            .header("referer", referer)
            .body(())
            .unwrap();
        let mut meta = RequestMeta::default();
        capture.fill(&request, &mut meta);
        assert_eq!(capture.render(&meta).headers[0].1, REDACTED);
    }

    #[test]
    fn control_characters_are_escaped_when_rendered() {
        let capture = RequestCapture::new(vec![header::USER_AGENT], &[], &[], &[]);
        let request = http::Request::get("/")
            .header(
                "user-agent",
                http::HeaderValue::from_bytes(b"a\tb\xffc").unwrap(),
            )
            .body(())
            .unwrap();
        let mut meta = RequestMeta::default();
        capture.fill(&request, &mut meta);
        assert_eq!(capture.render(&meta).headers[0].1, "a\\u{9}b\u{fffd}c");
    }
}
