use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::profiler::Mode;

const EXAMPLE: &str = include_str!("../../examples/vigil.toml");

/// The example file's values: every default, and example values where there is none.
fn example_config() -> VigilConfig {
    VigilConfig {
        disabled: false,
        watchdog: Some(WatchdogConfig::default()),
        timebox: Some(TimeboxConfig {
            supervisor_timeout: Some(Duration::from_secs(30)),
            ..TimeboxConfig::default()
        }),
        profiler: Some(ProfilerConfig::default()),
        sinks: SinksConfig {
            log: Some(LogSinkConfig::default()),
            file: Some(FileSinkConfig {
                dir: PathBuf::from("/var/log/slow-requests"),
            }),
            email: Some(EmailSinkConfig {
                url: Some("smtp://mail.example.com:587?tls=starttls".into()),
                to: vec!["oncall@example.com".into()],
                ..EmailSinkConfig::default()
            }),
        },
        signals: SignalsConfig::default(),
    }
}

#[cfg(feature = "toml")]
#[test]
fn the_example_file_holds_the_defaults() {
    let parsed = VigilConfig::from_toml_str(EXAMPLE).expect("the example file is valid");
    assert_eq!(parsed, example_config());
    // The values without a default, spelled out so that a changed example is noticed.
    let timebox = parsed.timebox.as_ref().unwrap();
    assert_eq!(timebox.supervisor_timeout, Some(Duration::from_secs(30)));
    assert_eq!(timebox.hard_deadline, None);
    let sinks = &parsed.sinks;
    assert_eq!(
        sinks.file.as_ref().unwrap().dir,
        PathBuf::from("/var/log/slow-requests")
    );
    let email = sinks.email.as_ref().unwrap();
    assert_eq!(
        email.url.as_deref(),
        Some("smtp://mail.example.com:587?tls=starttls")
    );
    assert_eq!(email.to, ["oncall@example.com"]);
}

/// Every setting appears in the example file, set or commented out, under its section.
#[test]
fn the_example_file_lists_every_setting() {
    let mut listed = BTreeSet::new();
    let mut section = String::new();
    for line in EXAMPLE.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
            continue;
        }
        let line = line.strip_prefix("# ").unwrap_or(line);
        if let Some((key, _)) = line.split_once(" = ") {
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                listed.insert(format!("{section}{key}"));
            }
        }
    }
    let known: BTreeSet<String> = VigilConfig::settings()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(listed, known);
}

#[test]
fn environment_names_are_unique_and_cover_every_setting() {
    let settings = VigilConfig::settings();
    let names: BTreeSet<&str> = settings.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(names.len(), settings.len());
    assert!(names.contains("VIGIL_WATCHDOG_THRESHOLD"));
    assert!(names.contains("VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT"));
    assert!(names.contains("VIGIL_SINKS_FILE_DIR"));
    assert!(names.contains("VIGIL_SIGNALS_CAPTURE"));
    assert!(names.contains("VIGIL_DISABLED"));
    assert_eq!(settings.len(), 65, "{settings:?}");
}

/// A valid base that each invalid case below changes in one place.
#[cfg(feature = "toml")]
const BASE: &str = r#"
[watchdog]
[timebox]
hard_deadline = "30s"
[profiler]
[sinks.log]
[sinks.file]
dir = "/tmp/x"
[sinks.email]
url = "smtp://mail.example.com"
to = ["oncall@example.com"]
"#;

/// `BASE` with `line` added to `section` (a key set twice in TOML is an error, so the cases
/// only add keys the base does not set, or replace a section).
#[cfg(feature = "toml")]
fn with(section: &str, line: &str) -> String {
    let header = format!("[{section}]\n");
    match BASE.find(&header) {
        Some(at) => {
            let end = at + header.len();
            format!("{}{line}\n{}", &BASE[..end], &BASE[end..])
        }
        None => format!("{BASE}\n{header}{line}\n"),
    }
}

#[cfg(feature = "toml")]
#[test]
fn the_base_is_valid() {
    VigilConfig::from_toml_str(BASE).expect("valid");
}

#[cfg(feature = "toml")]
#[test]
fn every_invalid_value_is_named_with_its_value() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("watchdog", "threshold = \"0s\"", "watchdog.threshold", "0s"),
        ("watchdog", "threshold = 5", "watchdog.threshold", "5"),
        (
            "watchdog",
            "threshold = \"25x\"",
            "watchdog.threshold",
            "25x",
        ),
        (
            "watchdog",
            "recapture_at = [1, 2]",
            "watchdog.recapture_at",
            "[1, 2]",
        ),
        (
            "watchdog",
            "recapture_at = [4, 2]",
            "watchdog.recapture_at",
            "[4, 2]",
        ),
        (
            "watchdog",
            "recapture_at = [2, 2]",
            "watchdog.recapture_at",
            "[2, 2]",
        ),
        (
            "watchdog",
            "recapture_at = [\"a\"]",
            "watchdog.recapture_at",
            "\"a\"",
        ),
        (
            "watchdog",
            "capture_stacks = \"yes\"",
            "watchdog.capture_stacks",
            "yes",
        ),
        (
            "watchdog",
            "capture_timeout = \"0ms\"",
            "watchdog.capture_timeout",
            "0s",
        ),
        (
            "watchdog",
            "resolution = \"0s\"",
            "watchdog.resolution",
            "0s",
        ),
        (
            "watchdog",
            "queue_capacity = 0",
            "watchdog.queue_capacity",
            "0",
        ),
        (
            "watchdog",
            "queue_capacity = -1",
            "watchdog.queue_capacity",
            "-1",
        ),
        (
            "watchdog",
            "report_headers = [\"bad header\"]",
            "watchdog.report_headers",
            "bad header",
        ),
        (
            "watchdog",
            "redact_headers = [\"x:y\"]",
            "watchdog.redact_headers",
            "x:y",
        ),
        (
            "watchdog",
            "ignore_paths = [\"health\"]",
            "watchdog.ignore_paths",
            "health",
        ),
        (
            "watchdog",
            "ignore_paths = [\"\"]",
            "watchdog.ignore_paths",
            "\"\"",
        ),
        (
            "timebox",
            "supervisor_timeout = \"30s\"",
            "timebox.supervisor_timeout",
            "30s",
        ),
        (
            "timebox",
            "soft_deadline = \"31s\"",
            "timebox.soft_deadline",
            "31s",
        ),
        (
            "timebox",
            "soft_deadline = \"0s\"",
            "timebox.soft_deadline",
            "0s",
        ),
        ("timebox", "grace = \"30s\"", "timebox.grace", "30s"),
        (
            "timebox",
            "grace = \"1s\"\nsoft_deadline = \"20s\"",
            "timebox.grace",
            "1s",
        ),
        ("timebox", "status = 408", "timebox.status", "408"),
        ("timebox", "status = 600", "timebox.status", "600"),
        ("timebox", "status = 70000", "timebox.status", "70000"),
        ("timebox", "status = \"503\"", "timebox.status", "503"),
        (
            "timebox",
            "wait_timeout = \"0s\"",
            "timebox.wait_timeout",
            "0s",
        ),
        ("timebox", "resolution = \"0s\"", "timebox.resolution", "0s"),
        (
            "timebox",
            "retry_after = \"soon\"",
            "timebox.retry_after",
            "soon",
        ),
        ("profiler", "param = \"a b\"", "profiler.param", "a b"),
        ("profiler", "param = \"\"", "profiler.param", "\"\""),
        (
            "profiler",
            "header = \"bad header\"",
            "profiler.header",
            "bad header",
        ),
        ("profiler", "mode = \"fast\"", "profiler.mode", "fast"),
        ("profiler", "rate_hz = 0", "profiler.rate_hz", "0"),
        ("profiler", "rate_hz = 10001", "profiler.rate_hz", "10001"),
        (
            "profiler",
            "max_duration = \"0s\"",
            "profiler.max_duration",
            "0s",
        ),
        (
            "profiler",
            "background_max_duration = \"0s\"",
            "profiler.background_max_duration",
            "0s",
        ),
        (
            "profiler",
            "max_concurrent = 0",
            "profiler.max_concurrent",
            "0",
        ),
        (
            "profiler",
            "max_concurrent = 1000",
            "profiler.max_concurrent",
            "1000",
        ),
        (
            "profiler",
            "output_dir = \"\"",
            "profiler.output_dir",
            "\"\"",
        ),
        ("profiler", "retain = 0", "profiler.retain", "0"),
        (
            "profiler",
            "index_path = \"/x/\"",
            "profiler.index_path",
            "/x/",
        ),
        ("profiler", "index_path = \"x\"", "profiler.index_path", "x"),
        ("profiler", "secret = \"\"", "profiler.secret", "\"\""),
        (
            "profiler",
            "secret_header = \"x-key\"",
            "profiler.secret_header",
            "x-key",
        ),
        (
            "profiler",
            "secret = \"s\"\nsecret_header = \"bad header\"",
            "profiler.secret_header",
            "bad header",
        ),
        ("sinks.log", "level = \"loud\"", "sinks.log.level", "loud"),
        ("sinks.log", "full_report = 1", "sinks.log.full_report", "1"),
        (
            "sinks.email",
            "eml_dir = \"/tmp/mail\"",
            "sinks.email.url",
            "smtp://mail.example.com",
        ),
        (
            "sinks.email",
            "from = \"nobody\"",
            "sinks.email.from",
            "nobody",
        ),
        (
            "sinks.email",
            "from = \"a@example.com, b@example.com\"",
            "sinks.email.from",
            "b@example.com",
        ),
        (
            "sinks.email",
            "subject = \"{sumary}\"",
            "sinks.email.subject",
            "{sumary}",
        ),
        (
            "sinks.email",
            "subject = \"{route\"",
            "sinks.email.subject",
            "{route",
        ),
        (
            "sinks.email",
            "throttle_per_route = 0",
            "sinks.email.throttle_per_route",
            "0",
        ),
        (
            "sinks.email",
            "throttle_total = 0",
            "sinks.email.throttle_total",
            "0",
        ),
        (
            "sinks.email",
            "throttle_window = \"0s\"",
            "sinks.email.throttle_window",
            "0s",
        ),
        (
            "sinks.email",
            "queue_capacity = 0",
            "sinks.email.queue_capacity",
            "0",
        ),
        (
            "sinks.email",
            "connect_timeout = \"0s\"",
            "sinks.email.connect_timeout",
            "0s",
        ),
        (
            "sinks.email",
            "command_timeout = \"0s\"",
            "sinks.email.command_timeout",
            "0s",
        ),
        ("sinks.email", "retries = -1", "sinks.email.retries", "-1"),
        (
            "sinks.email",
            "root_certificate_pem_file = \"\"",
            "sinks.email.root_certificate_pem_file",
            "\"\"",
        ),
        ("signals", "capture = 1", "signals.capture", "1"),
        ("signals", "sampler = 200", "signals.sampler", "200"),
        ("signals", "capture = \"40\"", "signals.capture", "40"),
    ];
    for (section, line, field, value) in cases {
        let text = with(section, line);
        let error = VigilConfig::from_toml_str(&text).expect_err(line);
        assert_eq!(error.field(), *field, "{line}: {error}");
        assert!(error.to_string().contains(value), "{line}: {error}");
    }
}

#[cfg(feature = "toml")]
#[test]
fn invalid_values_of_replaced_sections() {
    // Sections whose base lines must change rather than grow.
    let cases: &[(&str, &str, &str)] = &[
        ("[timebox]\n", "timebox.hard_deadline", "supervisor_timeout"),
        ("[timebox]\nhard_deadline = \"0s\"", "timebox.hard_deadline", "0s"),
        ("[timebox]\nsupervisor_timeout = \"0s\"", "timebox.supervisor_timeout", "0s"),
        ("[sinks.file]\ndir = \"\"", "sinks.file.dir", "\"\""),
        ("[sinks.email]\nto = [\"a@example.com\"]", "sinks.email.url", "eml_dir"),
        ("[sinks.email]\nurl = \"http://mail.example.com\"\nto = [\"a@example.com\"]", "sinks.email.url", "http://mail.example.com"),
        ("[sinks.email]\nurl = \"smtp://m.example.com?connect_timeout=5s\"\nto = [\"a@example.com\"]", "sinks.email.url", "connect_timeout=5s"),
        ("[sinks.email]\nurl = \"smtp://m.example.com\"\nto = []", "sinks.email.to", "[]"),
        ("[sinks.email]\nurl = \"smtp://m.example.com\"\nto = [\"not-an-address\"]", "sinks.email.to", "not-an-address"),
        ("[sinks.email]\nurl = \"smtp://m.example.com\"\nto = [\"a@example.com\"]\npassword = \"pw\"", "sinks.email.password", "username"),
        ("[sinks.email]\nurl = \"smtp://u:pw@m.example.com\"\nto = [\"a@example.com\"]\nusername = \"v\"", "sinks.email.username", "URL"),
        ("[sinks.email]\neml_dir = \"/tmp/mail\"\nto = [\"a@example.com\"]\nusername = \"v\"", "sinks.email.username", "eml_dir"),
        ("[signals]\ncapture = 40\nsampler = 40", "signals.sampler", "40"),
    ];
    for (text, field, needle) in cases {
        let error = VigilConfig::from_toml_str(text).expect_err(text);
        assert_eq!(error.field(), *field, "{text}: {error}");
        assert!(error.to_string().contains(needle), "{text}: {error}");
    }
}

#[cfg(all(feature = "toml", feature = "email"))]
#[test]
fn the_smtp_url_is_parsed_as_the_sink_parses_it_and_never_shows_the_password() {
    let text = "[sinks.email]\nurl = \"smtp://vigil:hunter2@mail.example.com?tls=none\"\nto = [\"a@example.com\"]";
    let error = VigilConfig::from_toml_str(text).unwrap_err();
    assert_eq!(error.field(), "sinks.email.url");
    assert!(error.to_string().contains("clear text"), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    let text =
        "[sinks.email]\nurl = \"smtp://mail.example.com?tls=maybe\"\nto = [\"a@example.com\"]";
    let error = VigilConfig::from_toml_str(text).unwrap_err();
    assert!(error.to_string().contains("maybe"), "{error}");
}

#[cfg(feature = "toml")]
#[test]
fn secrets_stay_out_of_errors() {
    let error = VigilConfig::from_toml_str("[profiler]\nsecret = 12345678").unwrap_err();
    assert_eq!(error.field(), "profiler.secret");
    assert!(!error.to_string().contains("12345678"), "{error}");
}

#[cfg(feature = "toml")]
#[test]
fn unknown_keys_are_named_with_the_keys_expected() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[watchdog]\nthresold = \"5s\"",
            "watchdog.thresold",
            "threshold",
        ),
        ("watchdgo = 1", "watchdgo", "watchdog"),
        ("[sinks.emial]\nto = []", "sinks.emial", "email"),
        ("[sinks.email]\ntoo = []", "sinks.email.too", "to"),
        (
            "[signals]\ncapture_signal = 40",
            "signals.capture_signal",
            "sampler",
        ),
    ];
    for (text, field, expected) in cases {
        let error = VigilConfig::from_toml_str(text).expect_err(text);
        assert_eq!(error.field(), *field, "{error}");
        assert!(error.problem().contains("unknown key"), "{error}");
        assert!(error.problem().contains(expected), "{error}");
    }
}

#[cfg(feature = "toml")]
#[test]
fn syntax_errors_are_reported() {
    let error = VigilConfig::from_toml_str("[watchdog\nthreshold = ").unwrap_err();
    assert!(error.problem().contains("invalid TOML"), "{error}");
}

#[test]
fn supervisor_arithmetic_matches_the_layer() {
    let supervisor = |secs| TimeboxConfig {
        supervisor_timeout: Some(Duration::from_secs(secs)),
        ..TimeboxConfig::default()
    };
    assert_eq!(
        supervisor(30).resolved_deadlines().unwrap(),
        (Duration::from_secs(25), Duration::from_secs(27))
    );
    assert_eq!(
        supervisor(5).resolved_deadlines().unwrap(),
        (Duration::from_millis(3600), Duration::from_millis(4500))
    );
    for secs in [1, 5, 30, 120] {
        let layer =
            crate::timebox::TimeboxLayer::supervisor_timeout(Duration::from_secs(secs)).unwrap();
        assert_eq!(
            supervisor(secs).resolved_deadlines().unwrap(),
            (layer.soft_deadline(), layer.hard_deadline()),
            "{secs}s"
        );
    }
    let hard = TimeboxConfig {
        hard_deadline: Some(Duration::from_secs(10)),
        soft_deadline: Some(Duration::from_secs(10)),
        ..TimeboxConfig::default()
    };
    assert_eq!(
        hard.resolved_deadlines().unwrap(),
        (Duration::from_secs(10), Duration::from_secs(10))
    );
    let grace = TimeboxConfig {
        soft_deadline: None,
        grace: Some(Duration::from_secs(4)),
        ..hard
    };
    assert_eq!(
        grace.resolved_deadlines().unwrap(),
        (Duration::from_secs(6), Duration::from_secs(10))
    );
    // A fiftieth of the 4 s grace is 80 ms, clamped to 50 ms.
    assert_eq!(grace.resolution_or_default(), Duration::from_millis(50));
    // A 30 s supervisor leaves 2 s of grace: 40 ms.
    assert_eq!(
        supervisor(30).resolution_or_default(),
        Duration::from_millis(40)
    );
    assert_eq!(
        TimeboxConfig::default().resolution_or_default(),
        Duration::from_millis(50)
    );
}

#[test]
fn watchdog_resolution_is_a_twentieth_of_the_threshold_within_bounds() {
    let at = |threshold| WatchdogConfig {
        threshold,
        ..WatchdogConfig::default()
    };
    assert_eq!(
        at(Duration::from_secs(25)).resolution_or_default(),
        Duration::from_millis(100)
    );
    assert_eq!(
        at(Duration::from_secs(1)).resolution_or_default(),
        Duration::from_millis(50)
    );
    assert_eq!(
        at(Duration::from_millis(5)).resolution_or_default(),
        Duration::from_millis(1)
    );
    let given = WatchdogConfig {
        resolution: Some(Duration::from_millis(7)),
        ..WatchdogConfig::default()
    };
    assert_eq!(given.resolution_or_default(), Duration::from_millis(7));
}

#[test]
fn defaults_are_the_layers_defaults() {
    let layer = crate::watchdog::WatchdogLayer::new(WatchdogConfig::default().threshold);
    assert_eq!(layer.threshold(), Duration::from_secs(25));
    assert_eq!(LogSinkConfig::default().level, "warn");
    assert_eq!(
        LogSinkConfig::default().tracing_level().unwrap(),
        tracing::Level::WARN
    );
    assert_eq!(TimeboxConfig::default().status, 503);
    assert_eq!(
        crate::profiler::ProfilerLayer::new().param(),
        ProfilerConfig::default().param
    );
    assert_eq!(ProfilerConfig::default().mode, Mode::WallClock);
    assert_eq!(
        ProfilerConfig::default().output_dir_or_default(),
        std::env::temp_dir().join("tower-vigil-profiles")
    );
}

#[test]
fn debug_hides_the_profiler_secret() {
    let config = ProfilerConfig {
        secret: Some("hunter2".into()),
        ..ProfilerConfig::default()
    };
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
}

#[test]
fn json_round_trips() {
    let config = example_config();
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains("\"threshold\":\"25s\""), "{json}");
    assert!(json.contains("\"mode\":\"wall-clock\""), "{json}");
    let back: VigilConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
}

#[test]
fn environment_overrides_and_turns_sections_on() {
    let config = VigilConfig::default()
        .with_vars([
            ("VIGIL_WATCHDOG_THRESHOLD", "5s"),
            ("VIGIL_WATCHDOG_RECAPTURE_AT", "3, 9"),
            ("VIGIL_WATCHDOG_IGNORE_PATHS", "/health,/static/*"),
            ("VIGIL_WATCHDOG_CAPTURE_STACKS", "off"),
            ("VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT", "30s"),
            ("VIGIL_TIMEBOX_STATUS", "504"),
            ("VIGIL_SINKS_FILE_DIR", "/var/log/slow"),
            ("VIGIL_PROFILER_SECRET", "12345"),
            ("PATH", "/usr/bin"),
            ("vigil_lowercase", "ignored"),
        ])
        .expect("valid");
    let watchdog = config.watchdog.unwrap();
    assert_eq!(watchdog.threshold, Duration::from_secs(5));
    assert_eq!(watchdog.recapture_at, [3, 9]);
    assert_eq!(watchdog.ignore_paths, ["/health", "/static/*"]);
    assert!(!watchdog.capture_stacks);
    assert_eq!(watchdog.capture_timeout, Duration::from_millis(250));
    let timebox = config.timebox.unwrap();
    assert_eq!(timebox.supervisor_timeout, Some(Duration::from_secs(30)));
    assert_eq!(timebox.status, 504);
    assert_eq!(
        config.sinks.file.unwrap().dir,
        PathBuf::from("/var/log/slow")
    );
    // A secret of digits stays a string although it reads as a number.
    assert_eq!(config.profiler.unwrap().secret.as_deref(), Some("12345"));
    assert!(config.sinks.email.is_none() && config.sinks.log.is_none());
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn environment_signals_are_numbers() {
    let signal = libc::SIGRTMIN() + 2;
    let config = VigilConfig::default()
        .with_vars([("VIGIL_SIGNALS_CAPTURE", signal.to_string())])
        .unwrap();
    assert_eq!(config.signals.capture, Some(signal));
}

#[test]
fn environment_disabled_takes_yes_and_no_words() {
    for (raw, disabled) in [
        ("1", true),
        ("yes", true),
        ("ON", true),
        ("0", false),
        ("off", false),
    ] {
        let config = VigilConfig {
            disabled: !disabled,
            ..VigilConfig::default()
        }
        .with_vars([("VIGIL_DISABLED", raw)])
        .unwrap();
        assert_eq!(config.disabled, disabled, "{raw}");
    }
    let error = VigilConfig::default()
        .with_vars([("VIGIL_DISABLED", "maybe")])
        .unwrap_err();
    assert_eq!(error.field(), "disabled");
    assert!(error.to_string().contains("maybe"), "{error}");
    assert!(error.to_string().contains("VIGIL_DISABLED"), "{error}");
}

#[test]
fn environment_errors_name_the_setting_and_the_variable() {
    let error = VigilConfig::default()
        .with_vars([("VIGIL_WATCHDOG_THRESHOLD", "soon")])
        .unwrap_err();
    assert_eq!(error.field(), "watchdog.threshold");
    assert!(error.to_string().contains("soon"), "{error}");
    assert!(
        error.to_string().contains("VIGIL_WATCHDOG_THRESHOLD"),
        "{error}"
    );
    let error = VigilConfig::default()
        .with_vars([("VIGIL_TIMEBOX_GRACE", "5")])
        .unwrap_err();
    assert_eq!(error.field(), "timebox.grace");
    assert!(
        error.to_string().contains("expected a duration such as"),
        "{error}"
    );
    let error = VigilConfig::default()
        .with_vars([("VIGIL_WATCHDOG_QUEUE_CAPACITY", "0")])
        .unwrap_err();
    assert_eq!(error.field(), "watchdog.queue_capacity");
    let error = VigilConfig::default()
        .with_vars([("VIGIL_WATCHDOG_THRESOLD", "5s")])
        .unwrap_err();
    assert_eq!(error.field(), "VIGIL_WATCHDOG_THRESOLD");
    let error = VigilConfig::default()
        .with_vars([("VIGIL_SOMETHING_ELSE", "1")])
        .unwrap_err();
    assert_eq!(error.field(), "VIGIL_SOMETHING_ELSE");
    assert!(!error.problem().contains("did you mean"), "{error}");
    // An absent section turned on by the environment is validated too.
    let error = VigilConfig::default()
        .with_vars([("VIGIL_TIMEBOX_STATUS", "503")])
        .unwrap_err();
    assert_eq!(error.field(), "timebox.hard_deadline");
}

#[cfg(feature = "toml")]
#[test]
fn valid_edge_values_pass() {
    let text = r#"
        [watchdog]
        recapture_at = []
        ignore_paths = ["*.png", "/static/*"]
        report_headers = ["X-Request-Id"]
        [timebox]
        hard_deadline = "10s"
        soft_deadline = "10s"
        status = 599
        [profiler]
        param = "profile.me-now_~"
        mode = "cpu-time"
        rate_hz = 10000
        secret = "s3cret"
        secret_header = "x-admin-key"
        [sinks.log]
        level = "ERROR"
        [sinks.email]
        url = "smtps://mail.example.com"
        from = "Vigil <vigil@example.com>"
        to = ["Platform team <platform@example.com>", "oncall@example.com"]
        username = "vigil"
        password = "pw"
        subject = "{{vigil}} {route} took {elapsed}"
        [signals]
    "#;
    let config = VigilConfig::from_toml_str(text).expect("valid");
    assert_eq!(config.profiler.unwrap().mode, Mode::CpuTime);
    let grace = r#"
        [timebox]
        hard_deadline = "10s"
        grace = "0s"
        [sinks.email]
        eml_dir = "/tmp/vigil-mail"
        to = ["a@example.com"]
    "#;
    let config = VigilConfig::from_toml_str(grace).expect("valid");
    assert_eq!(
        config.timebox.unwrap().resolved_deadlines().unwrap(),
        (Duration::from_secs(10), Duration::from_secs(10))
    );
}

#[test]
fn more_report_headers_than_a_report_can_index_are_refused() {
    let at_limit = WatchdogConfig {
        report_headers: (0..crate::report::REPORT_HEADERS_LIMIT)
            .map(|i| format!("x-h{i}"))
            .collect(),
        ..WatchdogConfig::default()
    };
    at_limit.validate().expect("255 headers fit");
    let over = WatchdogConfig {
        report_headers: (0..=crate::report::REPORT_HEADERS_LIMIT)
            .map(|i| format!("x-h{i}"))
            .collect(),
        ..WatchdogConfig::default()
    };
    let error = over.validate().unwrap_err();
    assert_eq!(error.field(), "watchdog.report_headers");
    assert!(error.to_string().contains("at most 255"), "{error}");
}
