//! A complete `vigil.toml` with environment overrides, loaded into a running stack behind a
//! real axum server, with a real SMTP server and real files.
#![cfg(all(feature = "toml", feature = "email"))]

mod common;

use std::path::Path;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::smtp::SmtpServer;
use common::*;
use tower_vigil::config::VigilConfig;
use tower_vigil::Vigil;

#[inline(never)]
fn vigil_configured_slow_work(duration: Duration) {
    std::thread::sleep(duration);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_file_and_the_environment_make_a_running_stack() {
    let reports = temp_dir("config-stack-reports");
    let profiles = temp_dir("config-stack-profiles");
    let smtp = SmtpServer::start();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    let config = VigilConfig::from_toml_file(&path)
        .unwrap()
        .with_vars([
            ("VIGIL_WATCHDOG_THRESHOLD", "300ms".to_owned()),
            ("VIGIL_WATCHDOG_RECAPTURE_AT", String::new()),
            ("VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT", "4s".to_owned()),
            ("VIGIL_PROFILER_SECRET", "an-admin-secret".to_owned()),
            ("VIGIL_PROFILER_OUTPUT_DIR", profiles.display().to_string()),
            ("VIGIL_SINKS_FILE_DIR", reports.display().to_string()),
            ("VIGIL_SINKS_EMAIL_URL", smtp.url()),
        ])
        .unwrap();
    let vigil = Vigil::from_config(&config).unwrap();
    let watchdog = vigil.watchdog_layer().unwrap().clone();
    let timebox = vigil.timebox_layer().unwrap().clone();
    assert_eq!(watchdog.threshold(), Duration::from_millis(300));
    assert_eq!(timebox.hard_deadline(), Duration::from_millis(3600));
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                vigil_configured_slow_work(Duration::from_millis(900));
                "done"
            }),
        )
        .layer(vigil);
    let addr = serve(app).await;
    assert_eq!(http_get(addr, "/slow", &[]).await, (200, "done".to_owned()));
    assert!(watchdog.flush(Duration::from_secs(10)));
    let file = wait_for_file_ending(&reports, ".txt", Duration::from_secs(10))
        .expect("a report file from [sinks.file]");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("vigil_configured_slow_work"), "{text}");
    let mail = smtp
        .wait_for_messages(1, Duration::from_secs(10))
        .expect("a mail from [sinks.email]");
    assert_eq!(mail[0].rcpt_to, vec!["oncall@example.com".to_owned()]);
    assert!(watchdog.stats().reported >= 1);
    // The profiler section is on, with the secret from the environment.
    let (status, _) = http_get(
        addr,
        "/slow?__profile__=json",
        &[("x-vigil-secret", "an-admin-secret")],
    )
    .await;
    assert_eq!(status, 200);
}

#[test]
fn an_invalid_value_from_the_environment_stops_the_build_with_its_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    let error = VigilConfig::from_toml_file(&path)
        .unwrap()
        .with_vars([("VIGIL_TIMEBOX_STATUS", "408")])
        .unwrap_err();
    assert_eq!(error.field(), "timebox.status");
    assert!(error.to_string().contains("408"), "{error}");
}
