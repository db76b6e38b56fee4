//! `VIGIL_DISABLED=1` passes requests through untouched and starts no thread. In a binary of
//! its own, so that no other test has started the process's monitor.
#![cfg(feature = "toml")]

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use tower_vigil::config::VigilConfig;
use tower_vigil::Vigil;

fn vigil_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("vigil-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_disabled_passes_requests_untouched_and_starts_no_thread() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    let config = VigilConfig::from_toml_file(path)
        .unwrap()
        .with_vars([
            ("VIGIL_DISABLED", "1"),
            ("VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT", "1s"),
        ])
        .unwrap();
    let vigil = Vigil::from_config(&config).unwrap();
    assert!(vigil.watchdog_layer().is_none());
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                // Past the 0.9 s hard deadline the configuration would give.
                tokio::time::sleep(Duration::from_millis(1200)).await;
                "untouched"
            }),
        )
        .layer(vigil);
    let addr = serve(app).await;
    assert_eq!(
        http_get(addr, "/slow", &[]).await,
        (200, "untouched".to_owned())
    );
    assert_eq!(vigil_threads(), Vec::<String>::new());

    // The same file without the switch starts the monitor and the reporter.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    let mut config = VigilConfig::from_toml_file(path).unwrap();
    config.sinks = Default::default();
    let _vigil = Vigil::from_config(&config).unwrap();
    // A thread names itself once it runs.
    let mut threads = vigil_threads();
    for _ in 0..200 {
        if threads.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        threads = vigil_threads();
    }
    assert!(threads.iter().any(|t| t == "vigil-monitor"), "{threads:?}");
    assert!(threads.iter().any(|t| t == "vigil-reporter"), "{threads:?}");
}
