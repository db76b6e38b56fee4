//! End-to-end: the profile in the formats other tools read (pprof, speedscope), the page's
//! escaping and layout, profiles without samples, and profiles abandoned by their client.
//! Real axum servers on 127.0.0.1, real clients, the real sampler.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use common::{init_tracing, serve, temp_dir};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_vigil::profiler::{ProfilerBuilder, ProfilerLayer, SharedSecret};
use tracing::Instrument;

const SECRET: &str = "s3cret-for-format-tests-0123456789";
const ADMIN: &[(&str, &str)] = &[("x-vigil-secret", SECRET)];
const PATIENCE: Duration = Duration::from_secs(15);
const HOT: &str = "vigil_profiler_formats_hot";

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn fetch(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("http://{addr}{path_and_query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        PATIENCE,
        client.request(request.body(Empty::new()).unwrap()),
    )
    .await
    .expect("no response in time")
    .expect("request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// One request written by hand, for a request target that `http::Uri` would refuse.
async fn raw_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nhost: vigil\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("no response in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

#[inline(never)]
fn vigil_profiler_formats_hot(duration: Duration) -> u64 {
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < duration {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

fn app() -> Router {
    Router::new()
        .route(
            "/cpu",
            get(|| async {
                let x = vigil_profiler_formats_hot(Duration::from_millis(300));
                format!("computed {}", x % 10)
            }),
        )
        .route("/fast", get(|| async { "fast" }))
}

fn profiler() -> ProfilerLayer {
    builder().build().unwrap()
}

fn builder() -> ProfilerBuilder {
    ProfilerLayer::builder().authorize(SharedSecret::new(SECRET))
}

/// A decoder of protobuf's wire format, independent of the crate's prost structs: just enough
/// of `profile.proto` to find samples by function name.
#[cfg(feature = "pprof")]
mod wire {
    pub enum Value<'a> {
        Int(u64),
        Bytes(&'a [u8]),
    }

    fn varint(buf: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = buf[0];
            *buf = &buf[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint too long")
    }

    /// Every field of one message, in order.
    pub fn fields(mut buf: &[u8]) -> Vec<(u64, Value<'_>)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            let value = match key & 7 {
                0 => Value::Int(varint(&mut buf)),
                2 => {
                    let len = varint(&mut buf) as usize;
                    let (bytes, rest) = buf.split_at(len);
                    buf = rest;
                    Value::Bytes(bytes)
                }
                1 => {
                    buf = &buf[8..];
                    continue;
                }
                5 => {
                    buf = &buf[4..];
                    continue;
                }
                other => panic!("wire type {other}"),
            };
            out.push((key >> 3, value));
        }
        out
    }

    /// The integers of field `tag`, packed or not.
    pub fn ints(fields: &[(u64, Value<'_>)], tag: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (t, value) in fields {
            if *t != tag {
                continue;
            }
            match value {
                Value::Int(v) => out.push(*v),
                Value::Bytes(mut packed) => {
                    while !packed.is_empty() {
                        out.push(varint(&mut packed));
                    }
                }
            }
        }
        out
    }

    pub fn messages<'a>(fields: &[(u64, Value<'a>)], tag: u64) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter_map(|(t, v)| match v {
                Value::Bytes(b) if *t == tag => Some(*b),
                _ => None,
            })
            .collect()
    }

    /// The parts of a decoded profile the tests look at.
    #[derive(Debug)]
    pub struct Profile {
        pub strings: Vec<String>,
        /// (type, unit) of each sample value.
        pub sample_types: Vec<(String, String)>,
        pub period_type: (String, String),
        pub period: u64,
        /// Location ids (leaf first) and values.
        pub samples: Vec<(Vec<u64>, Vec<u64>)>,
        /// Location id to function ids.
        pub locations: Vec<(u64, Vec<u64>)>,
        /// Function id to name.
        pub functions: Vec<(u64, String)>,
    }

    pub fn profile(bytes: &[u8]) -> Profile {
        let top = fields(bytes);
        let strings: Vec<String> = messages(&top, 6)
            .iter()
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect();
        assert_eq!(strings[0], "", "string 0 must be empty");
        let value_type = |m: &[u8]| {
            let f = fields(m);
            (
                strings[ints(&f, 1)[0] as usize].clone(),
                strings[ints(&f, 2)[0] as usize].clone(),
            )
        };
        let sample_types = messages(&top, 1).into_iter().map(value_type).collect();
        let period_type = value_type(messages(&top, 11)[0]);
        let samples = messages(&top, 2)
            .into_iter()
            .map(|m| {
                let f = fields(m);
                (ints(&f, 1), ints(&f, 2))
            })
            .collect();
        let locations = messages(&top, 4)
            .into_iter()
            .map(|m| {
                let f = fields(m);
                let lines = messages(&f, 4)
                    .into_iter()
                    .map(|line| ints(&fields(line), 1)[0])
                    .collect();
                (ints(&f, 1)[0], lines)
            })
            .collect();
        let functions = messages(&top, 5)
            .into_iter()
            .map(|m| {
                let f = fields(m);
                (ints(&f, 1)[0], strings[ints(&f, 2)[0] as usize].clone())
            })
            .collect();
        Profile {
            period: ints(&top, 12)[0],
            strings,
            sample_types,
            period_type,
            samples,
            locations,
            functions,
        }
    }

    impl Profile {
        /// Sum of the first value of the samples whose stack has a function named like `name`,
        /// and of all samples.
        pub fn samples_in(&self, name: &str) -> (u64, u64) {
            let functions: Vec<u64> = self
                .functions
                .iter()
                .filter(|(_, n)| n.contains(name))
                .map(|(id, _)| *id)
                .collect();
            let locations: Vec<u64> = self
                .locations
                .iter()
                .filter(|(_, fs)| fs.iter().any(|f| functions.contains(f)))
                .map(|(id, _)| *id)
                .collect();
            let mut hot = 0;
            let mut all = 0;
            for (ids, values) in &self.samples {
                all += values[0];
                if ids.iter().any(|id| locations.contains(id)) {
                    hot += values[0];
                }
            }
            (hot, all)
        }
    }
}

#[cfg(feature = "pprof")]
fn decode_pprof(gzipped: &[u8]) -> wire::Profile {
    use std::io::Read as _;
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .unwrap();
    wire::profile(&raw)
}

/// Weight of the samples of a speedscope document that pass through `name`, and of all.
fn speedscope_weight_in(document: &serde_json::Value, name: &str) -> (u64, u64) {
    let frames = document["shared"]["frames"].as_array().unwrap();
    let hot: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f["name"].as_str().unwrap().contains(name))
        .map(|(i, _)| i)
        .collect();
    let profile = &document["profiles"][0];
    let samples = profile["samples"].as_array().unwrap();
    let weights = profile["weights"].as_array().unwrap();
    assert_eq!(samples.len(), weights.len());
    let mut in_hot = 0;
    let mut all = 0;
    for (stack, weight) in samples.iter().zip(weights) {
        let weight = weight.as_u64().unwrap();
        all += weight;
        let stack = stack.as_array().unwrap();
        assert!(stack
            .iter()
            .all(|i| (i.as_u64().unwrap() as usize) < frames.len()));
        if stack
            .iter()
            .any(|i| hot.contains(&(i.as_u64().unwrap() as usize)))
        {
            in_hot += weight;
        }
    }
    (in_hot, all)
}

#[cfg(feature = "pprof")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pprof_decodes_independently_and_names_the_hot_function() {
    let addr = serve(app().layer(profiler())).await;
    let reply = fetch(addr, "/cpu?__profile__=pprof,cpu", ADMIN).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/octet-stream");
    assert_eq!(
        reply.header("content-disposition"),
        "attachment; filename=\"profile.pb.gz\""
    );
    let profile = decode_pprof(&reply.body);
    let pair = |t: &str, u: &str| (t.to_owned(), u.to_owned());
    assert_eq!(
        profile.sample_types,
        vec![pair("samples", "count"), pair("cpu", "nanoseconds")]
    );
    assert_eq!(profile.period_type, pair("cpu", "nanoseconds"));
    assert_eq!(profile.period, 1_000_000_000 / 997);
    for (_, values) in &profile.samples {
        assert_eq!(values[1], values[0] * profile.period);
    }
    let (hot, all) = profile.samples_in(HOT);
    // 300 ms of CPU work at 997 Hz, on two cores shared with other tests: count only a share.
    assert!(
        all >= 20 && hot * 2 >= all,
        "{hot} of {all} samples in the hot function: {profile:?}"
    );
    assert!(profile.strings.iter().any(|s| s == "GET /cpu"));

    // Two formats at once are bad input, as before.
    let both = fetch(addr, "/cpu?__profile__=pprof,speedscope", ADMIN).await;
    assert_eq!(both.status, 400, "{}", both.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedscope_json_names_the_hot_function() {
    let addr = serve(app().layer(profiler())).await;
    let reply = fetch(addr, "/cpu?__profile__=speedscope", ADMIN).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/json");
    let document: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        document["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let profile = &document["profiles"][0];
    assert_eq!(profile["type"], "sampled");
    assert_eq!(profile["unit"], "nanoseconds");
    let (hot, all) = speedscope_weight_in(&document, HOT);
    assert_eq!(profile["endValue"].as_u64().unwrap(), all);
    let period = 1_000_000_000 / 997;
    assert!(
        all >= 100 * period && hot * 2 >= all,
        "{hot} of {all} ns in the hot function"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_links_to_its_own_profile_in_every_format() {
    let dir = temp_dir("page-links");
    let addr = serve(app().layer(builder().output_dir(&dir).build().unwrap())).await;
    let page = fetch(addr, "/cpu?__profile__", ADMIN).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    let prefix = "href=\"/__vigil/profiles/";
    let at = html.find(prefix).expect("links to the kept profile");
    let id: String = html[at + prefix.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    let base = format!("/__vigil/profiles/{id}");
    let samples: u64 = {
        let at = html.find("<th>Samples</th><td>").expect("samples row") + 20;
        html[at..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .expect("sample count")
    };
    assert!(samples > 0);
    let mut suffixes = vec!["json", "folded", "speedscope.json"];
    if cfg!(feature = "pprof") {
        suffixes.push("pb.gz");
    }
    if cfg!(feature = "flamegraph") {
        suffixes.push("svg");
    }
    for suffix in &suffixes {
        assert!(
            html.contains(&format!("href=\"{base}.{suffix}\"")),
            "no link to .{suffix}"
        );
    }

    // Each link serves this very profile: the same number of samples, in every format.
    let json = fetch(addr, &format!("{base}.json"), ADMIN).await;
    let json: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["samples"].as_u64().unwrap(), samples);
    let speedscope = fetch(addr, &format!("{base}.speedscope.json"), ADMIN).await;
    let speedscope: serde_json::Value = serde_json::from_slice(&speedscope.body).unwrap();
    let (hot, all) = speedscope_weight_in(&speedscope, HOT);
    assert_eq!(all, samples * (1_000_000_000 / 997));
    assert!(hot > 0);
    #[cfg(feature = "pprof")]
    {
        let pprof = fetch(addr, &format!("{base}.pb.gz"), ADMIN).await;
        assert_eq!(pprof.status, 200, "{}", pprof.text());
        let profile = decode_pprof(&pprof.body);
        let pair = |t: &str, u: &str| (t.to_owned(), u.to_owned());
        assert_eq!(profile.sample_types[1], pair("wall", "nanoseconds"));
        let (hot, all) = profile.samples_in(HOT);
        assert_eq!(all, samples);
        assert!(hot > 0);
    }
    // The store is for admins only.
    let outsider = fetch(addr, &format!("{base}.speedscope.json"), &[]).await;
    assert_eq!(outsider.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_the_route_and_in_frame_names_reaches_the_page_escaped() {
    init_tracing();
    let app = Router::new().fallback(|| {
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "page"
        }
        .instrument(tracing::info_span!(
            "vigil_markup_wait",
            note = "<b onclick=alert(2)>bold</b>"
        ))
    });
    let dir = temp_dir("markup");
    let addr = serve(app.layer(builder().output_dir(&dir).build().unwrap())).await;
    // `<` and `>` cannot reach a service through hyper: the URI is refused before any layer
    // (the unit test in page.rs renders such a request line). Quotes and `&` can.
    let (status, _) = raw_get(addr, "/<script>alert(1)</script>?__profile__", ADMIN).await;
    assert_eq!(status, 400);
    let (status, html) = raw_get(addr, "/q\"onmouseover=\"alert(1)&x=1?__profile__", ADMIN).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("vigil_markup_wait"),
        "the span's frame is missing: {html}"
    );
    for markup in ["<b onclick", "</b>", "\"onmouseover", "&x=1"] {
        assert!(!html.contains(markup), "unescaped {markup:?} in the page");
    }
    assert!(html.contains("/q&quot;onmouseover=&quot;alert(1)&amp;x=1"));
    assert!(html.contains("&lt;b onclick=alert(2)&gt;bold&lt;/b&gt;"));

    // The index lists the kept profile, escaped as well.
    let (status, index) = raw_get(addr, "/__vigil/profiles", ADMIN).await;
    assert_eq!(status, 200);
    assert!(index.contains("/q&quot;onmouseover"), "{index}");
    assert!(!index.contains("\"onmouseover"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_frame_name_is_cut_with_its_full_name_in_a_tooltip() {
    init_tracing();
    // Span names are static; fields are cut at 80 characters, so the name makes it long.
    const LONG: &str = concat!(
        "vigil_long_span_name_segment_segment_segment_segment_segment_segment_segment_segment_",
        "segment_segment_segment_segment_segment_segment_segment_segment_segment_segment_",
        "segment_segment_segment_segment_segment_segment_segment_segment_segment_end"
    );
    let app = Router::new().route(
        "/wait",
        get(|| {
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "waited"
            }
            .instrument(tracing::info_span!(LONG))
        }),
    );
    let dir = temp_dir("long");
    let addr = serve(app.layer(builder().output_dir(&dir).build().unwrap())).await;
    let html = fetch(addr, "/wait?__profile__", ADMIN).await.text();
    assert!(html.contains("table-layout:fixed"), "no fixed table layout");
    assert!(
        html.contains("td.name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"),
        "names are not cut"
    );
    let frame = format!("[awaiting] {LONG}");
    assert!(
        html.contains(&format!("<td class=\"name\" title=\"{frame}\">")),
        "no tooltip with the full name {frame}: {html}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_without_samples_says_why_in_every_format() {
    // One sample a second: a fast request is over long before the first.
    let addr = serve(app().layer(builder().rate_hz(1).build().unwrap())).await;
    let mut formats = vec!["", "=html", "=folded", "=speedscope", "=pprof"];
    if cfg!(feature = "flamegraph") {
        formats.push("=svg");
    }
    for format in formats {
        let reply = fetch(addr, &format!("/fast?__profile__{format}"), ADMIN).await;
        let text = reply.text();
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
            "{format}: {text}"
        );
        assert!(
            text.contains("before the first sample") && text.contains("at 1 Hz"),
            "{format}: {text}"
        );
    }
    // JSON is the record of the run, and says 0 samples itself.
    let json = fetch(addr, "/fast?__profile__=json", ADMIN).await;
    assert_eq!(json.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(json["samples"], 0);
}

/// Sets its flag when the request's future is dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A route that runs for a minute, and flags when it started and when it was dropped.
fn slow_app(started: Arc<AtomicBool>, dropped: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/slow",
            get(move || {
                let started = started.clone();
                let dropped = dropped.clone();
                async move {
                    let _flag = DropFlag(dropped);
                    started.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "slow"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
}

async fn wait_for(flag: &AtomicBool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Profiles `/fast` as `admin` until it is not refused as busy; returns the reply and how long
/// that took.
async fn profile_when_free(addr: SocketAddr, admin: &[(&str, &str)]) -> (Reply, Duration) {
    let started = Instant::now();
    loop {
        let reply = fetch(addr, "/fast?__profile__=json", admin).await;
        if reply.status != 429 || started.elapsed() > Duration::from_secs(10) {
            return (reply, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const OTHER_ADMIN: &str = "another-admin-token-0123456789";

fn two_admins() -> ProfilerLayer {
    // Longer than the test's patience: only cancellation frees the place in time.
    ProfilerLayer::builder()
        .authorize(|parts: &http::request::Parts| {
            parts
                .headers
                .get("x-admin")
                .is_some_and(|v| v == SECRET || v == OTHER_ADMIN)
        })
        .max_duration(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_abandoned_by_its_client_frees_its_place() {
    let started = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let addr = serve(slow_app(started.clone(), dropped.clone()).layer(two_admins())).await;

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            format!("GET /slow?__profile__ HTTP/1.1\r\nhost: vigil\r\nx-admin: {SECRET}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    wait_for(&started, "the slow profiled request").await;
    // The client goes away.
    drop(client);

    let (reply, waited) = profile_when_free(addr, &[("x-admin", OTHER_ADMIN)]).await;
    assert_eq!(
        reply.status,
        200,
        "after {waited:?}, the abandoned profile still holds the place: {}",
        reply.text()
    );
    assert!(waited < Duration::from_secs(10));
    wait_for(&dropped, "dropping the abandoned request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outer_tower_http_timeout_cancels_the_profile_it_gave_up_on() {
    use tower_http::cors::CorsLayer;
    use tower_http::timeout::TimeoutLayer;
    use tower_http::validate_request::ValidateRequestHeaderLayer;

    let started = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    // tower-http's body-generic layers need `ProfilerBody: Default` to sit outside. `bearer` is
    // deprecated upstream but is what issue 11 names and what apps use.
    #[allow(deprecated)]
    let app = slow_app(started.clone(), dropped.clone())
        .layer(two_admins())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(300),
        ))
        .layer(CorsLayer::permissive())
        .layer(ValidateRequestHeaderLayer::bearer("vigil-token"));
    let addr = serve(app).await;
    let bearer = ("authorization", "Bearer vigil-token");

    let refused = fetch(addr, "/fast", &[]).await;
    assert_eq!(refused.status, 401);
    let first = fetch(addr, "/slow?__profile__", &[bearer, ("x-admin", SECRET)]).await;
    assert_eq!(first.status, 503, "{}", first.text());
    assert!(started.load(Ordering::SeqCst));

    let (reply, waited) = profile_when_free(addr, &[bearer, ("x-admin", OTHER_ADMIN)]).await;
    // The place is free once the second admin is no longer told 429; on a loaded machine the
    // outer 300 ms timeout may still cut that second profile short (503 with no body).
    assert_ne!(
        reply.status,
        429,
        "after {waited:?}, the dropped profile still holds the place: {}",
        reply.text()
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    wait_for(&dropped, "dropping the timed-out request").await;
    assert!(reply.header("access-control-allow-origin") == "*");
}
