//! Shared helpers: a real axum server on 127.0.0.1:0, a real HTTP client, report collectors.
#![allow(dead_code)]

pub mod smtp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_vigil::report::SlowRequestReport;
use tower_vigil::sink::{Sink, SinkError};

/// Installs a global subscriber with the span layer, once per test binary.
pub fn init_tracing() {
    init_tracing_with(Vec::new());
}

/// A layer of the global subscriber that [`init_tracing_with`] installs.
pub type TestLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// [`init_tracing`] plus `extra` layers, once per test binary: the first call decides.
pub fn init_tracing_with(extra: Vec<TestLayer>) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        use tracing_subscriber::prelude::*;
        let mut layers: Vec<TestLayer> = vec![
            tower_vigil::spans::SpanLayer::new().boxed(),
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("VIGIL_TEST_LOG").unwrap_or_else(|_| "off".into()),
                ))
                .boxed(),
        ];
        layers.extend(extra);
        tracing_subscriber::registry().with(layers).init();
    });
}

/// Serves `app` on the current runtime; returns the address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// Serves `app` on a runtime of its own with `workers` worker threads, so a test can block
/// every worker of the server while its client keeps running.
pub fn serve_on_own_runtime(app: Router, workers: usize) -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("server-worker")
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        addr
    });
    (addr, runtime)
}

/// One GET with extra headers; returns status and body.
pub async fn http_get(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("http://{addr}{path_and_query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .expect("request failed");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A sink that keeps every report in memory.
#[derive(Clone, Default)]
pub struct Collect {
    pub reports: Arc<Mutex<Vec<SlowRequestReport>>>,
}

impl Collect {
    pub fn all(&self) -> Vec<SlowRequestReport> {
        self.reports.lock().unwrap().clone()
    }

    /// Waits until `predicate` holds for some report, up to `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        predicate: impl Fn(&SlowRequestReport) -> bool,
    ) -> Option<SlowRequestReport> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.all().into_iter().find(|r| predicate(r)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Sink for Collect {
    fn name(&self) -> &str {
        "collect"
    }

    fn deliver(&self, report: &SlowRequestReport) -> Result<(), SinkError> {
        self.reports.lock().unwrap().push(report.clone());
        Ok(())
    }
}

/// A fresh, empty directory under the target directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until a file with this exact name exists in `dir`.
pub fn wait_for_file(dir: &Path, name: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(contents) = std::fs::read_to_string(dir.join(name)) {
            return Some(contents);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Names of the functions in a report's stack.
pub fn stack_functions(report: &SlowRequestReport) -> Vec<String> {
    report
        .stack
        .iter()
        .filter_map(|f| f.function.clone())
        .collect()
}

/// Waits until a file whose name ends with `suffix` exists in `dir`; returns its path.
pub fn wait_for_file_ending(dir: &Path, suffix: &str, timeout: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(suffix) && !name.starts_with('.') {
                    return Some(entry.path());
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One GET; returns status, headers and body, or the error when the body was cut off.
pub async fn http_get_full(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, String), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("http://{addr}{path_and_query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body failed: {e:?}"))?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Counts how many guards were made and dropped.
#[derive(Clone, Default)]
pub struct DropCounter {
    pub made: Arc<std::sync::atomic::AtomicUsize>,
    pub dropped: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct Guard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl DropCounter {
    pub fn guard(&self) -> Guard {
        self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Guard(self.dropped.clone())
    }

    pub fn balanced(&self) -> bool {
        self.made.load(std::sync::atomic::Ordering::SeqCst)
            == self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub async fn wait_until(timeout: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

/// A route at `path` whose handler never answers by itself (it sleeps 30 s) and holds a guard
/// of `counter`, so a test can see that the timebox dropped it.
pub fn never_answering_route(path: &str, counter: DropCounter) -> Router {
    Router::new().route(
        path,
        axum::routing::get(move || {
            let guard = counter.guard();
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(30)).await;
                "never"
            }
        }),
    )
}

/// A watchdog for probe tests: a 200 ms threshold, one report per request, a 10 ms tick.
pub fn probe_watchdog(collect: &Collect) -> tower_vigil::watchdog::WatchdogLayer {
    collecting_watchdog(Duration::from_millis(200), collect)
}

/// A watchdog reporting into `collect` once per request past `threshold`, on a 10 ms tick.
pub fn collecting_watchdog(
    threshold: Duration,
    collect: &Collect,
) -> tower_vigil::watchdog::WatchdogLayer {
    tower_vigil::watchdog::WatchdogLayer::builder(threshold)
        .recapture_at([])
        .resolution(Duration::from_millis(10))
        .sink(collect.clone())
        .build()
        .unwrap()
}

/// The first slow report of a request to `path`, waiting up to 10 s for it.
pub fn slow_report_of(collect: &Collect, path: &str) -> SlowRequestReport {
    collect
        .wait_for(Duration::from_secs(10), |r| {
            r.uri.ends_with(path) && r.kind == tower_vigil::report::ReportKind::Slow
        })
        .unwrap_or_else(|| panic!("a slow report of {path}"))
}
