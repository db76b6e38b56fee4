//! Loading `VigilConfig` from files and the environment, as an application does.
#![cfg(feature = "toml")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tower_vigil::config::{VigilConfig, WatchdogConfig};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml")
}

/// A file of its own in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "vigil-config-test-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write the test file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_example_file_loads() {
    let config = VigilConfig::from_toml_file(example_path()).expect("a valid example");
    assert!(!config.disabled);
    assert_eq!(config.watchdog, Some(WatchdogConfig::default()));
    let (soft, hard) = config.timebox.unwrap().resolved_deadlines().unwrap();
    assert_eq!(
        (soft, hard),
        (Duration::from_secs(25), Duration::from_secs(27))
    );
}

#[test]
fn the_environment_overrides_the_file() {
    let file = TempFile::new("override", "[watchdog]\nthreshold = \"25s\"\n");
    let config = VigilConfig::from_toml_file(&file.0).unwrap();
    assert_eq!(
        config.watchdog.as_ref().unwrap().threshold,
        Duration::from_secs(25)
    );
    let config = config
        .with_vars([("VIGIL_WATCHDOG_THRESHOLD", "5s")])
        .unwrap();
    assert_eq!(config.watchdog.unwrap().threshold, Duration::from_secs(5));
}

/// The one test that touches the process environment; the others pass variables by hand.
#[test]
fn the_environment_completes_the_file() {
    // Invalid alone: the timebox needs a deadline, which the deployment gives.
    let file = TempFile::new("complete", "[timebox]\nstatus = 504\n");
    assert_eq!(
        VigilConfig::from_toml_file(&file.0).unwrap_err().field(),
        "timebox.hard_deadline"
    );
    std::env::set_var("VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT", "60s");
    let loaded = VigilConfig::from_toml_file_and_env(&file.0);
    let from_env = VigilConfig::from_env();
    std::env::remove_var("VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT");
    let timebox = loaded.unwrap().timebox.unwrap();
    assert_eq!(timebox.status, 504);
    assert_eq!(timebox.supervisor_timeout, Some(Duration::from_secs(60)));
    assert_eq!(from_env.unwrap().timebox.unwrap().status, 503);
}

#[test]
fn vigil_disabled_switches_everything_off() {
    let config = VigilConfig::from_toml_file(example_path())
        .unwrap()
        .with_vars([("VIGIL_DISABLED", "1")])
        .unwrap();
    assert!(config.disabled);
    assert!(config.watchdog.is_some(), "the sections stay as they are");
}

#[test]
fn an_unknown_vigil_variable_is_refused() {
    let error = VigilConfig::default()
        .with_vars([("VIGIL_WATCHDOG_TRESHOLD", "5s")])
        .unwrap_err();
    assert_eq!(error.field(), "VIGIL_WATCHDOG_TRESHOLD");
    assert!(
        error.to_string().contains("VIGIL_WATCHDOG_THRESHOLD"),
        "{error}"
    );
}

#[test]
fn an_invalid_value_in_a_file_is_named() {
    let file = TempFile::new(
        "invalid",
        "[timebox]\nhard_deadline = \"10s\"\nstatus = 408\n",
    );
    let error = VigilConfig::from_toml_file(&file.0).unwrap_err();
    assert_eq!(error.field(), "timebox.status");
    assert_eq!(error.value(), Some("408"));
    assert!(error.problem().contains("500..=599"), "{error}");
}

#[test]
fn an_unknown_key_in_a_file_is_named() {
    let file = TempFile::new("unknown", "[watchdog]\nthresold = \"5s\"\n");
    let error = VigilConfig::from_toml_file(&file.0).unwrap_err();
    assert_eq!(error.field(), "watchdog.thresold");
    assert!(error.problem().contains("threshold"), "{error}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let error = VigilConfig::from_toml_file("/nonexistent/vigil.toml").unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/vigil.toml"),
        "{error}"
    );
}
