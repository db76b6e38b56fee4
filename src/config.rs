//! Provisional: replaced by the configuration module.
#![allow(missing_docs)]

use std::time::Duration;

use crate::error::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogConfig {
    pub enabled: bool,
    pub threshold: Duration,
    pub recapture_at: Vec<u32>,
    pub capture_stacks: bool,
    pub capture_timeout: Duration,
    pub resolution: Option<Duration>,
    pub queue_capacity: usize,
    pub report_headers: Vec<String>,
    pub redact_headers: Vec<String>,
    pub redact_query_params: Vec<String>,
    pub ignore_paths: Vec<String>,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: Duration::from_secs(25),
            recapture_at: vec![2, 4],
            capture_stacks: true,
            capture_timeout: Duration::from_millis(250),
            resolution: None,
            queue_capacity: 256,
            report_headers: [
                "host",
                "user-agent",
                "referer",
                "content-type",
                "content-length",
                "x-request-id",
            ]
            .map(String::from)
            .to_vec(),
            redact_headers: Vec::new(),
            redact_query_params: Vec::new(),
            ignore_paths: Vec::new(),
        }
    }
}

impl WatchdogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.threshold.is_zero() {
            return Err(ConfigError::invalid(
                "watchdog.threshold",
                "0s",
                "must be greater than zero",
            ));
        }
        let m = &self.recapture_at;
        if !(m.windows(2).all(|w| w[0] < w[1]) && m.first().is_none_or(|&x| x >= 2)) {
            return Err(ConfigError::invalid(
                "watchdog.recapture_at",
                format!("{m:?}"),
                "multiples must be at least 2 and strictly increasing",
            ));
        }
        if self.capture_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "watchdog.capture_timeout",
                "0s",
                "must be greater than zero",
            ));
        }
        if self.resolution.is_some_and(|r| r.is_zero()) {
            return Err(ConfigError::invalid(
                "watchdog.resolution",
                "0s",
                "must be greater than zero",
            ));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::invalid(
                "watchdog.queue_capacity",
                0,
                "must be greater than zero",
            ));
        }
        for p in &self.ignore_paths {
            if !(p.starts_with('/') || p.starts_with('*')) {
                return Err(ConfigError::invalid(
                    "watchdog.ignore_paths",
                    p,
                    "patterns must start with '/' or '*'",
                ));
            }
        }
        Ok(())
    }
    pub fn resolution_or_default(&self) -> Duration {
        self.resolution.unwrap_or_else(|| {
            (self.threshold / 20).clamp(Duration::from_millis(1), Duration::from_millis(100))
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimeboxConfig {
    pub enabled: bool,
    pub hard_deadline: Option<Duration>,
    pub supervisor_timeout: Option<Duration>,
    pub soft_deadline: Option<Duration>,
    pub grace: Option<Duration>,
    pub status: u16,
    pub body: String,
    pub retry_after: Option<Duration>,
    pub isolation: bool,
    pub deadline_extension: bool,
    pub wait_timeout: Option<Duration>,
    pub body_deadline: bool,
    pub resolution: Option<Duration>,
}

impl Default for TimeboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hard_deadline: None,
            supervisor_timeout: None,
            soft_deadline: None,
            grace: None,
            status: 503,
            body: "Service Unavailable: the request took too long.\n".into(),
            retry_after: Some(Duration::from_secs(5)),
            isolation: true,
            deadline_extension: true,
            wait_timeout: None,
            body_deadline: false,
            resolution: None,
        }
    }
}

impl TimeboxConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolved_deadlines().map(|_| ())
    }
    pub fn resolved_deadlines(&self) -> Result<(Duration, Duration), ConfigError> {
        let hard = match (self.hard_deadline, self.supervisor_timeout) {
            (Some(hard), None) => hard,
            (None, Some(s)) => s - Duration::from_secs(3).min(s / 10),
            _ => {
                return Err(ConfigError::other(
                    "timebox.hard_deadline",
                    "give exactly one of hard_deadline and supervisor_timeout",
                ))
            }
        };
        if hard.is_zero() {
            return Err(ConfigError::invalid(
                "timebox.hard_deadline",
                "0s",
                "must be greater than zero",
            ));
        }
        let soft = match (self.soft_deadline, self.grace) {
            (Some(soft), None) => soft,
            (None, Some(grace)) => hard.saturating_sub(grace),
            (None, None) => hard - Duration::from_secs(2).min(hard / 5),
            _ => {
                return Err(ConfigError::other(
                    "timebox.grace",
                    "give soft_deadline or grace, not both",
                ))
            }
        };
        if soft.is_zero() || soft > hard {
            return Err(ConfigError::invalid(
                "timebox.soft_deadline",
                format!("{soft:?}"),
                "must be greater than zero and not after the hard deadline",
            ));
        }
        if !(500..=599).contains(&self.status) {
            return Err(ConfigError::invalid(
                "timebox.status",
                self.status,
                "must be a 5xx status, 500..=599",
            ));
        }
        Ok((soft, hard))
    }
    pub fn resolution_or_default(&self) -> Duration {
        let Ok((soft, hard)) = self.resolved_deadlines() else {
            return Duration::from_millis(50);
        };
        self.resolution.unwrap_or_else(|| {
            ((hard - soft) / 50).clamp(Duration::from_millis(1), Duration::from_millis(50))
        })
    }
}
