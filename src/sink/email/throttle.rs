//! Throttling: at most N mails per route key and M in all per sliding window; what is held
//! back is summed up in one digest, due one window after the first report it holds.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use super::message::{format_secs, more_slow_requests};
use crate::report::SlowRequestReport;

/// Routes listed one by one in a digest; the rest are summed up in one line.
const MAX_DIGEST_ROUTES: usize = 50;
/// Example requests listed per route in a digest (the longest ones).
const EXAMPLES_PER_ROUTE: usize = 3;

#[derive(Debug, Clone, Copy)]
pub(crate) struct ThrottleConfig {
    pub(crate) per_route: u32,
    pub(crate) total: u32,
    pub(crate) window: Duration,
}

pub(crate) struct Throttle {
    config: ThrottleConfig,
    /// When mails went out, per route key, within the last window.
    routes: HashMap<String, VecDeque<Instant>>,
    total: VecDeque<Instant>,
    digest: Option<Digest>,
    last_sweep: Instant,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig, now: Instant) -> Self {
        Self {
            config,
            routes: HashMap::new(),
            total: VecDeque::new(),
            digest: None,
            last_sweep: now,
        }
    }

    /// Whether a mail may go out for this report now; if not, the report joins the digest.
    pub(crate) fn admit(&mut self, report: &SlowRequestReport, now: Instant) -> bool {
        let window = self.config.window;
        let expired = |sent: &Instant| now.saturating_duration_since(*sent) >= window;
        while self.total.front().is_some_and(expired) {
            self.total.pop_front();
        }
        if now.saturating_duration_since(self.last_sweep) >= window {
            // Bounds the map by the routes mailed within one window.
            self.routes.retain(|_, sent| {
                sent.retain(|t| !expired(t));
                !sent.is_empty()
            });
            self.last_sweep = now;
        }
        let route_has_room = match self.routes.get_mut(&report.route_key) {
            Some(sent) => {
                while sent.front().is_some_and(expired) {
                    sent.pop_front();
                }
                sent.len() < self.config.per_route as usize
            }
            None => self.config.per_route > 0,
        };
        if route_has_room && self.total.len() < self.config.total as usize {
            self.total.push_back(now);
            self.routes
                .entry(report.route_key.clone())
                .or_default()
                .push_back(now);
            true
        } else {
            self.digest
                .get_or_insert_with(|| Digest::new(now))
                .add(report);
            false
        }
    }

    /// When the pending digest is due: one window after the first report it holds.
    pub(crate) fn digest_due(&self) -> Option<Instant> {
        self.digest
            .as_ref()
            .map(|d| d.first_at + self.config.window)
    }

    /// The pending digest if it is due (or `now` is forced, as on flush).
    pub(crate) fn take_digest(&mut self, now: Instant, force: bool) -> Option<Digest> {
        match self.digest_due() {
            Some(due) if force || now >= due => self.digest.take(),
            _ => None,
        }
    }

    pub(crate) fn has_digest(&self) -> bool {
        self.digest.is_some()
    }
}

/// Reports the throttle held back, grouped by route key.
#[derive(Debug, Clone)]
pub(crate) struct Digest {
    first_at: Instant,
    pub(crate) routes: Vec<RouteDigest>,
    /// Routes beyond [`MAX_DIGEST_ROUTES`], summed up.
    pub(crate) other_routes: u64,
    other_requests: u64,
    other_recaptures: u64,
}

/// What was held back for one route key.
#[derive(Debug, Clone)]
pub(crate) struct RouteDigest {
    pub(crate) route_key: String,
    /// First captures: each is a distinct slow request.
    pub(crate) requests: u64,
    /// Later captures (and completion records) of requests.
    pub(crate) recaptures: u64,
    since: SystemTime,
    longest: Duration,
    examples: Vec<Example>,
}

#[derive(Debug, Clone)]
struct Example {
    request_id: u64,
    method: String,
    uri: String,
    elapsed: Duration,
    intercepted_at: SystemTime,
    top_frame: Option<String>,
}

impl Digest {
    fn new(first_at: Instant) -> Self {
        Self {
            first_at,
            routes: Vec::new(),
            other_routes: 0,
            other_requests: 0,
            other_recaptures: 0,
        }
    }

    fn add(&mut self, report: &SlowRequestReport) {
        let first_capture = report.capture <= 1 && report.kind == crate::report::ReportKind::Slow;
        let index = self
            .routes
            .iter()
            .position(|r| r.route_key == report.route_key);
        let route = match index {
            Some(index) => &mut self.routes[index],
            None if self.routes.len() < MAX_DIGEST_ROUTES => {
                self.routes.push(RouteDigest {
                    route_key: report.route_key.clone(),
                    requests: 0,
                    recaptures: 0,
                    since: SystemTime::now(),
                    longest: Duration::ZERO,
                    examples: Vec::new(),
                });
                self.routes.last_mut().expect("just pushed")
            }
            None => {
                // Counting routes exactly would need a set; a new route per report is the
                // worst case, and the count is only shown.
                self.other_routes += u64::from(first_capture);
                if first_capture {
                    self.other_requests += 1;
                } else {
                    self.other_recaptures += 1;
                }
                return;
            }
        };
        if first_capture {
            route.requests += 1;
        } else {
            route.recaptures += 1;
        }
        route.longest = route.longest.max(report.elapsed);
        let example = Example {
            request_id: report.request_id,
            method: report.method.clone(),
            uri: report.uri.clone(),
            elapsed: report.elapsed,
            intercepted_at: report.intercepted_at,
            top_frame: report.top_app_frame().and_then(|f| f.function.clone()),
        };
        route.examples.push(example);
        route.examples.sort_by_key(|e| std::cmp::Reverse(e.elapsed));
        route.examples.truncate(EXAMPLES_PER_ROUTE);
    }

    /// Distinct slow requests held back.
    pub(crate) fn total_requests(&self) -> u64 {
        self.routes.iter().map(|r| r.requests).sum::<u64>() + self.other_requests
    }

    /// Reports held back, first captures and later ones.
    pub(crate) fn total_reports(&self) -> u64 {
        self.routes
            .iter()
            .map(|r| r.requests + r.recaptures)
            .sum::<u64>()
            + self.other_requests
            + self.other_recaptures
    }

    pub(crate) fn to_text(&self, hostname: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "The mail throttle of tower-vigil on {hostname} held back {} slow-request reports.\n\
             Every one of them still went to the other sinks (log, files).\n",
            self.total_reports()
        );
        for route in &self.routes {
            let _ = writeln!(
                out,
                "{} of {} since {}, longest {}",
                more_slow_requests(route.requests),
                route.route_key,
                clock(route.since),
                format_secs(route.longest)
            );
            if route.recaptures > 0 {
                let _ = writeln!(
                    out,
                    "  plus {} later captures of requests already reported",
                    route.recaptures
                );
            }
            for example in &route.examples {
                let _ = write!(
                    out,
                    "  request {}: {} {} {} at {}",
                    example.request_id,
                    example.method,
                    example.uri,
                    format_secs(example.elapsed),
                    humantime::format_rfc3339_millis(example.intercepted_at)
                );
                if let Some(top) = &example.top_frame {
                    let _ = write!(out, " in {top}");
                }
                out.push('\n');
            }
        }
        if self.other_requests + self.other_recaptures > 0 {
            let _ = writeln!(
                out,
                "{} on {} more routes ({} later captures)",
                more_slow_requests(self.other_requests),
                self.other_routes,
                self.other_recaptures
            );
        }
        out
    }
}

/// `10:42:07 UTC`: the time of day, which is all a digest of one window needs.
fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let of_day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::super::message::tests::report;
    use super::*;

    fn throttle(per_route: u32, total: u32, window_ms: u64) -> (Throttle, Instant) {
        let now = Instant::now();
        let config = ThrottleConfig {
            per_route,
            total,
            window: Duration::from_millis(window_ms),
        };
        (Throttle::new(config, now), now)
    }

    #[test]
    fn each_route_gets_n_mails_per_window_then_a_digest() {
        let (mut t, start) = throttle(2, 100, 1000);
        let jobs = report("/api/jobs");
        let other = report("/other");
        assert!(t.admit(&jobs, start));
        assert!(t.admit(&jobs, start));
        assert!(t.admit(&other, start), "routes are counted apart");
        let first_held = start + Duration::from_millis(10);
        assert!(!t.admit(&jobs, first_held));
        for ms in 20..57 {
            assert!(!t.admit(&jobs, start + Duration::from_millis(ms)));
        }
        assert_eq!(
            t.digest_due(),
            Some(first_held + Duration::from_millis(1000))
        );
        assert!(t
            .take_digest(first_held + Duration::from_millis(999), false)
            .is_none());
        // The window has slid past the first two mails: room again.
        assert!(t.admit(&jobs, start + Duration::from_millis(1000)));
        let digest = t
            .take_digest(first_held + Duration::from_millis(1000), false)
            .expect("due");
        assert_eq!(digest.total_requests(), 38);
        let text = digest.to_text("web-3");
        assert!(
            text.contains("38 more slow requests of GET /api/jobs since "),
            "{text}"
        );
        assert!(text.contains(", longest 7.2 s"), "{text}");
        assert!(!t.has_digest());
    }

    #[test]
    fn the_total_cap_holds_across_routes() {
        let (mut t, now) = throttle(10, 3, 1000);
        let admitted = (0..20)
            .filter(|i| t.admit(&report(&format!("/r{i}")), now))
            .count();
        assert_eq!(admitted, 3);
        let digest = t.take_digest(now, true).unwrap();
        assert_eq!(digest.total_requests(), 17);
        assert_eq!(digest.routes.len(), 17);
    }

    #[test]
    fn recaptures_are_told_apart_and_routes_are_bounded() {
        let (mut t, now) = throttle(1, 1, 1000);
        assert!(t.admit(&report("/a"), now));
        let mut again = report("/a");
        again.capture = 2;
        assert!(!t.admit(&again, now));
        for i in 0..(MAX_DIGEST_ROUTES + 5) {
            assert!(!t.admit(&report(&format!("/r{i}")), now));
        }
        let digest = t.take_digest(now, true).unwrap();
        assert_eq!(digest.routes.len(), MAX_DIGEST_ROUTES);
        assert_eq!(digest.total_requests(), MAX_DIGEST_ROUTES as u64 + 5);
        assert_eq!(digest.total_reports(), MAX_DIGEST_ROUTES as u64 + 6);
        let text = digest.to_text("web-3");
        assert!(text.contains("plus 1 later captures"), "{text}");
        assert!(text.contains("on 6 more routes"), "{text}");
    }

    #[test]
    fn the_clock_reads_the_time_of_day_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_430_527);
        assert_eq!(clock(at), "10:42:07 UTC");
        assert_eq!(clock(SystemTime::UNIX_EPOCH), "00:00:00 UTC");
    }

    #[test]
    fn old_routes_are_swept() {
        let (mut t, now) = throttle(1, 1000, 100);
        for i in 0..100 {
            assert!(t.admit(&report(&format!("/r{i}")), now));
        }
        assert!(t.admit(&report("/late"), now + Duration::from_millis(200)));
        assert_eq!(t.routes.len(), 1);
    }
}
