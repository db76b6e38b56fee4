//! End-to-end: real axum servers on 127.0.0.1, a real HTTP client, the real sampler.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use axum::Router;
use common::{init_tracing, serve, temp_dir};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_vigil::profiler::{Mode, Profiled, ProfilerBuilder, ProfilerLayer, SharedSecret};
use tower_vigil::watchdog::WatchdogLayer;
use tracing::Instrument;

const SECRET: &str = "s3cret-for-tests-0123456789";
const WRONG_SECRET: &str = "s3cret-for-tests-0123456780";
const PATIENCE: Duration = Duration::from_secs(15);

/// One response, all of it: status, headers (without `date`, which changes every second), body.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// Nothing is loaded from elsewhere: no external script, stylesheet, image or font.
/// A finished profile page: its inline flamegraph, or without the `flamegraph` feature the note
/// that stands in for it.
fn shows_flamegraph(html: &str) -> bool {
    if cfg!(feature = "flamegraph") {
        html.contains("<svg")
    } else {
        html.contains("without its <code>flamegraph</code> feature")
    }
}

fn assert_self_contained(html: &str) {
    for loader in [
        " src=",
        "<link",
        "href=\"http",
        "href='http",
        "url(http",
        "url(\"http",
        "url('http",
        "@import",
        "@font-face",
        "XMLHttpRequest",
        "fetch(",
    ] {
        assert!(!html.contains(loader), "the page loads something: {loader}");
    }
}

const ADMIN: &[(&str, &str)] = &[("x-vigil-secret", SECRET)];

#[inline(never)]
fn vigil_profiler_cpu_hot(duration: Duration) -> u64 {
    let started = Instant::now();
    let mut x = 0u64;
    while started.elapsed() < duration {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

async fn echo(uri: Uri, headers: HeaderMap) -> String {
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort();
    format!("uri={uri}\nheaders={names:?}\n")
}

fn app() -> Router {
    Router::new()
        .route(
            "/cpu",
            get(|| async {
                let x = vigil_profiler_cpu_hot(Duration::from_millis(300));
                format!("computed {}", x % 10)
            }),
        )
        .route("/echo", get(echo))
}

fn profiler() -> ProfilerLayer {
    builder().build().unwrap()
}

fn builder() -> ProfilerBuilder {
    ProfilerLayer::builder().authorize(SharedSecret::new(SECRET))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_request_gets_a_flamegraph_of_its_hot_function() {
    let addr = serve(app().layer(profiler())).await;

    let page = fetch(addr, "/cpu?__profile__", ADMIN).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(shows_flamegraph(&html), "no inline SVG");
    assert!(
        html.contains("vigil_profiler_cpu_hot"),
        "hot function missing"
    );
    assert!(
        !html.contains("computed "),
        "the application's page leaked in"
    );
    assert!(html.contains("Application status</th><td>200"), "no status");
    assert!(html.contains("GET /cpu"), "no request line");
    assert!(
        !html.contains("__profile__"),
        "the trigger reached the page"
    );
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/profile-page.html"),
        &html,
    )
    .unwrap();
    assert_self_contained(&html);

    let svg = fetch(addr, "/cpu?__profile__=svg,cpu", ADMIN).await;
    if cfg!(feature = "flamegraph") {
        assert_eq!(svg.status, 200, "{}", svg.text());
        assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
        let svg = svg.text();
        assert!(svg.contains("<svg") && svg.contains("vigil_profiler_cpu_hot"));
        assert!(
            svg.contains("cpu-time at 997 Hz"),
            "mode missing from the subtitle"
        );
        assert!(svg.contains("GET /cpu —"), "title without the request");
    } else {
        assert_eq!(svg.status, 501, "{}", svg.text());
    }

    let folded = fetch(addr, "/cpu?__profile__=folded", ADMIN).await.text();
    let lines: Vec<&str> = folded.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "folded stacks must be sorted");
    assert!(lines.iter().all(|l| l.starts_with("GET /cpu;")), "{folded}");
    let hot: u64 = lines
        .iter()
        .filter(|l| l.contains("vigil_profiler_cpu_hot"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    // 300 ms at 997 Hz; sampling is shared with other tests on two cores.
    assert!(
        hot >= 100,
        "only {hot} samples in the hot function:\n{folded}"
    );

    let json = fetch(addr, "/cpu?__profile__=json", ADMIN).await;
    let json: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(json["status"], 200);
    assert_eq!(json["partial"], false);
    assert_eq!(json["mode"], "wall-clock");
    assert!(json["samples"].as_u64().unwrap() >= 100);
    assert!(json["wall_ms"].as_f64().unwrap() >= 300.0);
    // CPU time is what the thread got of two shared cores: only bounded, not a fixed share.
    let cpu_ms = json["cpu_ms"].as_f64().unwrap();
    assert!(cpu_ms > 0.0 && cpu_ms <= json["wall_ms"].as_f64().unwrap() + 1.0);
    let top = json["top_frames"].as_array().unwrap();
    assert!(top.iter().any(|f| f["name"]
        .as_str()
        .unwrap()
        .contains("vigil_profiler_cpu_hot")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_and_forged_triggers_get_the_applications_own_response() {
    let profiled = serve(app().layer(profiler())).await;
    let bare = serve(app()).await;
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/echo?__profile__", &[]),
        ("/echo?__profile__=svg", &[]),
        ("/echo?__PROFILE__", ADMIN),
        ("/echo?%5F%5Fprofile%5F%5F", ADMIN),
        ("/echo?__profile__&__profile__", &[]),
        ("/__profile__", ADMIN),
        ("/echo/__profile__", ADMIN),
        ("/echo", &[("x-vigil-profile", "1")]),
        ("/echo?__profile__", &[("x-vigil-secret", WRONG_SECRET)]),
        (
            "/echo",
            &[("x-vigil-profile", "1"), ("x-vigil-secret", WRONG_SECRET)],
        ),
        ("/echo?__profile__=pdf", &[]),
        ("/echo?__profile__", &[("x-vigil-secret", "")]),
        ("/__vigil/profiles", &[]),
        ("/__vigil/profiles/0000000000001-1", &[]),
        ("/echo?x=1", ADMIN),
    ];
    for (path, headers) in cases {
        let expected = fetch(bare, path, headers).await;
        let got = fetch(profiled, path, headers).await;
        assert_eq!(got, expected, "{path} with {headers:?}");
    }
    // The same forged shapes from an admin are refused as bad input, not silently run.
    let repeated = fetch(profiled, "/echo?__profile__&__profile__", ADMIN).await;
    assert_eq!(repeated.status, 400);
    let unknown = fetch(profiled, "/echo?__profile__=pdf", ADMIN).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.text().contains("pdf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_bound_request_shows_the_span_it_waited_in() {
    init_tracing();
    // A backend on 127.0.0.1 that answers after 400 ms.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = backend.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = socket.write_all(b"pong").await;
            });
        }
    });
    let io_app = move || {
        Router::new().route(
            "/io",
            get(move || {
                async move {
                    let mut stream = tokio::net::TcpStream::connect(backend_addr).await.unwrap();
                    let mut answer = Vec::new();
                    stream.read_to_end(&mut answer).await.unwrap();
                    String::from_utf8(answer).unwrap()
                }
                .instrument(tracing::info_span!("vigil_wait_for_backend"))
            }),
        )
    };
    let addr = serve(io_app().layer(builder().mode(Mode::WallClock).build().unwrap())).await;

    let folded = fetch(addr, "/io?__profile__=folded", ADMIN).await;
    assert_eq!(folded.status, 200, "{}", folded.text());
    let folded = folded.text();
    let waited: u64 = folded
        .lines()
        .filter(|l| l.contains("[awaiting] vigil_wait_for_backend"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    // 400 ms at 997 Hz, nearly all of it parked.
    assert!(
        waited >= 200,
        "{waited} samples waiting in the span:\n{folded}"
    );

    let html = fetch(addr, "/io?__profile__", ADMIN).await.text();
    assert!(shows_flamegraph(&html));
    assert!(html.contains("[awaiting] vigil_wait_for_backend"));

    // With the watchdog inside, spans belong to the watchdog's id for the request; the
    // profiler follows it.
    let nested = serve(
        io_app()
            .layer(WatchdogLayer::new(Duration::from_secs(30)))
            .layer(profiler()),
    )
    .await;
    let folded = fetch(nested, "/io?__profile__=folded", ADMIN).await.text();
    assert!(
        folded.contains("[awaiting] vigil_wait_for_backend"),
        "span missing behind the watchdog:\n{folded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_profile_gets_429() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                STARTED.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(800)).await;
                "slow"
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(profiler());
    let addr = serve(app).await;
    let first = tokio::spawn(async move { fetch(addr, "/slow?__profile__=json", ADMIN).await });
    let deadline = Instant::now() + PATIENCE;
    while !STARTED.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the first profile never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = fetch(addr, "/fast?__profile__", ADMIN).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(second.header("retry-after").is_some());
    // Requests without the trigger are not affected.
    assert_eq!(fetch(addr, "/fast", &[]).await.text(), "fast");

    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let again = fetch(addr, "/fast?__profile__=json", ADMIN).await;
    assert_eq!(
        again.status,
        200,
        "the place was not freed: {}",
        again.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiled_request_is_exempt_and_runs_outside_the_worker_pool() {
    // The timebox layer is not on this branch: what it relies on is checked here, the
    // request's extensions as the application sees them and the thread that runs it.
    /// The thread that ran each request, and its `Profiled` extension.
    type Seen = Vec<(Option<String>, Option<Profiled>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let app = Router::new()
        .route(
            "/whoami",
            get(move |request: Request| {
                let record = record.clone();
                async move {
                    let thread = std::thread::current().name().map(str::to_owned);
                    let profiled = request.extensions().get::<Profiled>().copied();
                    record.lock().unwrap().push((thread, profiled));
                    "me"
                }
            }),
        )
        .layer(builder().mode(Mode::CpuTime).build().unwrap());
    let addr = serve(app).await;
    assert_eq!(fetch(addr, "/whoami", &[]).await.text(), "me");
    let profiled = fetch(addr, "/whoami?__profile__=json", ADMIN).await;
    assert_eq!(profiled.status, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].0.as_deref(), Some("vigil-profiler"));
    assert_eq!(seen[0].1, None);
    assert_eq!(seen[1].0.as_deref(), Some("vigil-profiler"));
    assert!(matches!(seen[1].1, Some(p) if p.mode == Mode::CpuTime));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_past_its_maximum_duration_is_returned_partial() {
    let app = Router::new()
        .route(
            "/stuck",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .layer(
            builder()
                .max_duration(Duration::from_millis(300))
                .build()
                .unwrap(),
        );
    let addr = serve(app).await;
    let started = Instant::now();
    let reply = fetch(addr, "/stuck?__profile__=json", ADMIN).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the profile waited for the request"
    );
    assert_eq!(reply.header("x-vigil-profile-partial"), Some("true"));
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["partial"], true);
    assert!(json["samples"].as_u64().unwrap() > 50, "{json}");
    // The first profile frees its slot just after its partial answer is sent, so a second
    // one right away may be told to wait (429).
    let deadline = Instant::now() + PATIENCE;
    let html = loop {
        let reply = fetch(addr, "/stuck?__profile__", ADMIN).await;
        if reply.status != 429 || Instant::now() >= deadline {
            break reply.text();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(html.contains("Partial profile"), "{html}");
    assert!(
        html.contains("PARTIAL") || !cfg!(feature = "flamegraph"),
        "the flamegraph is not marked partial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_profile_is_kept_and_listed_for_admins_only() {
    let dir = temp_dir("profiles");
    let addr = serve(app().layer(builder().output_dir(&dir).retain(5).build().unwrap())).await;

    let started = fetch(addr, "/cpu?__profile__=background", ADMIN).await;
    assert_eq!(started.status, 202, "{}", started.text());
    let page = started.text();
    let at = page
        .find("url=/__vigil/profiles/")
        .expect("a refresh to the profile");
    let id: String = page[at + "url=/__vigil/profiles/".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    assert!(!id.is_empty());

    let deadline = Instant::now() + PATIENCE;
    let profile = loop {
        let reply = fetch(addr, &format!("/__vigil/profiles/{id}"), ADMIN).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        if shows_flamegraph(&reply.text()) {
            break reply.text();
        }
        assert!(
            reply.text().contains("http-equiv=\"refresh\""),
            "a running profile's page must refresh"
        );
        assert!(Instant::now() < deadline, "the profile never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(profile.contains("vigil_profiler_cpu_hot"));
    assert!(dir.join(format!("{id}.folded")).exists());

    let index = fetch(addr, "/__vigil/profiles", ADMIN).await;
    assert_eq!(index.status, 200);
    assert!(index.text().contains(&id), "{}", index.text());
    assert!(index.text().contains("GET /cpu"));
    if cfg!(feature = "flamegraph") {
        let svg = fetch(addr, &format!("/__vigil/profiles/{id}.svg"), ADMIN).await;
        assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    }

    let outsider = fetch(addr, "/__vigil/profiles", &[]).await;
    assert_eq!(outsider.status, 404);
    assert!(!outsider.text().contains(&id));
}
