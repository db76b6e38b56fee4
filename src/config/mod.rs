//! Configuration as plain data: serde structs with documented defaults, loaded from a TOML
//! file, any other serde format or the environment, and checked in one place.
//!
//! [`VigilConfig`] is the whole configuration; each part is a section, and a section that is
//! present turns its part on (`[watchdog]` alone gives a watchdog with every default).
//! Durations are written as `25s`, `500ms`, `1m 30s`. Unknown keys are refused, naming the
//! key, so a typo cannot silently leave a default in place. `examples/vigil.toml` lists every
//! setting with its default.
//!
//! ```
//! # #[cfg(feature = "toml")]
//! # fn main() -> Result<(), tower_vigil::ConfigError> {
//! use std::time::Duration;
//! use tower_vigil::config::VigilConfig;
//!
//! let config = VigilConfig::from_toml_str(
//!     r#"
//!     [watchdog]
//!     threshold = "5s"
//!     ignore_paths = ["/health"]
//!
//!     [timebox]
//!     supervisor_timeout = "30s"
//!
//!     [sinks.log]
//!     level = "error"
//!     "#,
//! )?;
//! let watchdog = config.watchdog.as_ref().expect("the section is present");
//! assert_eq!(watchdog.threshold, Duration::from_secs(5));
//! let timebox = config.timebox.as_ref().expect("the section is present");
//! // A 30 s supervisor: hard deadline 27 s, soft 25 s.
//! assert_eq!(
//!     timebox.resolved_deadlines()?,
//!     (Duration::from_secs(25), Duration::from_secs(27))
//! );
//! assert!(config.profiler.is_none());
//! # Ok(()) }
//! # #[cfg(not(feature = "toml"))]
//! # fn main() {}
//! ```
//!
//! # Other formats
//!
//! `VigilConfig` implements [`serde::Deserialize`], so any serde format reads it; call
//! [`VigilConfig::validate`] after:
//!
//! ```
//! use tower_vigil::config::VigilConfig;
//!
//! let config: VigilConfig =
//!     serde_json::from_str(r#"{ "watchdog": { "threshold": "10s" }, "signals": { "capture": null } }"#)
//!         .expect("valid JSON");
//! config.validate().expect("a valid configuration");
//! assert_eq!(config.watchdog.unwrap().threshold.as_secs(), 10);
//! ```
//!
//! # Environment
//!
//! [`VigilConfig::with_env`] applies `VIGIL_*` variables over a configuration, and
//! [`VigilConfig::from_env`] over the defaults. A variable is `VIGIL_` and the setting's dotted
//! path in upper case, `.` written `_`: `VIGIL_WATCHDOG_THRESHOLD=5s`,
//! `VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT=30s`, `VIGIL_SINKS_FILE_DIR=/var/log/slow`,
//! `VIGIL_SIGNALS_CAPTURE=40`. Values are read as the setting's type; lists are
//! comma-separated (`VIGIL_WATCHDOG_IGNORE_PATHS=/health,/static/*`); booleans are `1`,
//! `true`, `yes`, `on` or `0`, `false`, `no`, `off`. Setting a key of an absent section turns
//! the section on with its defaults. `VIGIL_DISABLED=1` switches everything off. A `VIGIL_`
//! variable that names no setting is an error; other variables are ignored.
//!
//! ```
//! use std::time::Duration;
//! use tower_vigil::config::VigilConfig;
//!
//! let config = VigilConfig::default()
//!     .with_vars([("VIGIL_WATCHDOG_THRESHOLD", "5s"), ("HOME", "/root")])
//!     .expect("a valid configuration");
//! assert_eq!(config.watchdog.unwrap().threshold, Duration::from_secs(5));
//! ```

mod check;
mod layers;
mod load;
mod sinks;
#[cfg(test)]
mod tests;

#[cfg(feature = "toml")]
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use self::layers::{Isolation, ProfilerConfig, TimeboxConfig, WatchdogConfig};
pub use self::sinks::{EmailSinkConfig, FileSinkConfig, LogSinkConfig};
use crate::error::ConfigError;

/// The whole configuration of tower-vigil: a section per part, present when the part is on.
///
/// See the [module docs](self) for loading it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VigilConfig {
    /// Switches every part off, whatever the sections say, for a debugging session.
    /// Default: false.
    pub disabled: bool,
    /// The watchdog, on when present.
    pub watchdog: Option<WatchdogConfig>,
    /// The timebox, on when present.
    pub timebox: Option<TimeboxConfig>,
    /// The profiler, on when present.
    pub profiler: Option<ProfilerConfig>,
    /// Where reports go.
    pub sinks: SinksConfig,
    /// Which real-time signals the stack capture and the profiler's sampler use.
    pub signals: SignalsConfig,
}

/// The `[sinks]` section: each sink is on when its section is present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    /// `[sinks.log]`: reports as `tracing` events.
    pub log: Option<LogSinkConfig>,
    /// `[sinks.file]`: reports as files in a directory.
    pub file: Option<FileSinkConfig>,
    /// `[sinks.email]`: reports as mail.
    pub email: Option<EmailSinkConfig>,
}

impl SinksConfig {
    /// Checks every sink present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(log) = &self.log {
            log.validate()?;
        }
        if let Some(file) = &self.file {
            file.validate()?;
        }
        if let Some(email) = &self.email {
            email.validate()?;
        }
        Ok(())
    }
}

/// The `[signals]` section: the real-time signals tower-vigil installs its handlers on.
///
/// Each is a number from `SIGRTMIN` to `SIGRTMAX` (34 to 64 on Linux with glibc), and the two
/// differ. Default: `None` for both, which picks the highest signals that have no handler
/// yet. Set them when the application or a library uses real-time signals of its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// The signal that captures the stack of a polling thread. Default: automatic.
    pub capture: Option<i32>,
    /// The signal of the profiler's sampling timer. Default: automatic.
    pub sampler: Option<i32>,
}

impl SignalsConfig {
    /// Checks that each signal given is a real-time signal and that they differ.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, signal) in [
            ("signals.capture", self.capture),
            ("signals.sampler", self.sampler),
        ] {
            if let Some(signal) = signal {
                check_realtime_signal(field, signal)?;
            }
        }
        if let (Some(capture), Some(sampler)) = (self.capture, self.sampler) {
            if capture == sampler {
                return Err(ConfigError::invalid(
                    "signals.sampler",
                    sampler,
                    "must differ from signals.capture",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn check_realtime_signal(field: &str, signal: i32) -> Result<(), ConfigError> {
    let (first, last) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if !(first..=last).contains(&signal) {
        return Err(ConfigError::invalid(
            field,
            signal,
            format!("must be a real-time signal, SIGRTMIN..=SIGRTMAX ({first}..={last})"),
        ));
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check_realtime_signal(field: &str, signal: i32) -> Result<(), ConfigError> {
    Err(ConfigError::invalid(
        field,
        signal,
        "real-time signals are used on Linux only; leave it out here",
    ))
}

impl VigilConfig {
    /// Checks every section present; the error names the first setting at fault, as it is
    /// written in a file (`watchdog.threshold`), with its value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(watchdog) = &self.watchdog {
            watchdog.validate()?;
        }
        if let Some(timebox) = &self.timebox {
            timebox.validate()?;
        }
        if let Some(profiler) = &self.profiler {
            profiler.validate()?;
        }
        self.sinks.validate()?;
        self.signals.validate()
    }

    /// Reads and validates a configuration in TOML.
    ///
    /// # Errors
    ///
    /// Invalid TOML; an unknown key (named by its dotted path, with the keys expected there);
    /// a value of the wrong type; anything [`VigilConfig::validate`] refuses.
    #[cfg(feature = "toml")]
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config = load::from_value(&load::toml_value(text)?)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file, such as `examples/vigil.toml`.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, and the errors of [`VigilConfig::from_toml_str`].
    #[cfg(feature = "toml")]
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let config = load::from_value(&load::toml_value(&read(path.as_ref())?)?)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file, applies the `VIGIL_*` variables of the environment over it, and
    /// validates the result once, so a setting may be completed by the environment (a
    /// `[timebox]` section whose `VIGIL_TIMEBOX_SUPERVISOR_TIMEOUT` comes from the deployment).
    ///
    /// # Errors
    ///
    /// Those of [`VigilConfig::from_toml_file`] and [`VigilConfig::with_env`].
    #[cfg(feature = "toml")]
    pub fn from_toml_file_and_env(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let config = load::from_value(&load::toml_value(&read(path.as_ref())?)?)?;
        config.with_env()
    }

    /// The defaults with the `VIGIL_*` variables of the environment applied, validated.
    ///
    /// # Errors
    ///
    /// Those of [`VigilConfig::with_vars`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::default().with_env()
    }

    /// This configuration with the `VIGIL_*` variables of the environment applied, validated.
    ///
    /// # Errors
    ///
    /// A `VIGIL_` variable whose value is not Unicode, and those of [`VigilConfig::with_vars`].
    pub fn with_env(self) -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().map(str::to_owned) else {
                continue;
            };
            if !name.starts_with(load::ENV_PREFIX) {
                continue;
            }
            let Ok(value) = value.into_string() else {
                return Err(ConfigError::other(name, "the value is not valid Unicode"));
            };
            vars.push((name, value));
        }
        self.with_vars(vars)
    }

    /// This configuration with the settings of the `VIGIL_*` pairs among `vars` applied, then
    /// validated; names without the `VIGIL_` prefix are ignored. [`VigilConfig::with_env`]
    /// with the variables given instead of read.
    ///
    /// # Errors
    ///
    /// A `VIGIL_` name that is no setting (named in [`ConfigError::field`]); a value that
    /// does not read as its setting's type; anything [`VigilConfig::validate`] refuses.
    pub fn with_vars<I, K, V>(self, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let config = load::apply_vars(&self, vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Every setting as `(dotted path, environment variable)`, sorted by path:
    /// `("watchdog.threshold", "VIGIL_WATCHDOG_THRESHOLD")`.
    pub fn settings() -> Vec<(String, String)> {
        load::setting_paths()
            .into_iter()
            .map(|path| {
                let name = load::env_name(&path);
                (path, name)
            })
            .collect()
    }
}

#[cfg(feature = "toml")]
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| {
        ConfigError::other(
            "configuration",
            format!("cannot read {}: {error}", path.display()),
        )
    })
}
