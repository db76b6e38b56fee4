//! Throttling: at most N mails per signature and M in all per sliding window; what is held
//! back is summed up in one digest, grouped by signature, due one window after the first
//! report it holds.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use super::message::{format_secs, more_slow_requests};
use crate::report::SlowRequestReport;

/// Signatures listed one by one in a digest; the rest are summed up in one line.
const MAX_DIGEST_GROUPS: usize = 50;
/// Example requests listed per signature in a digest (the longest ones).
const EXAMPLES_PER_GROUP: usize = 3;

/// What the throttle groups a report by: its signature, or its route key for a report made
/// without one.
fn key(report: &SlowRequestReport) -> &str {
    if report.signature.is_empty() {
        &report.route_key
    } else {
        &report.signature
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ThrottleConfig {
    pub(crate) per_route: u32,
    pub(crate) total: u32,
    pub(crate) window: Duration,
}

pub(crate) struct Throttle {
    config: ThrottleConfig,
    /// When mails went out, per signature, within the last window.
    groups: HashMap<String, VecDeque<Instant>>,
    total: VecDeque<Instant>,
    digest: Option<Digest>,
    last_sweep: Instant,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig, now: Instant) -> Self {
        Self {
            config,
            groups: HashMap::new(),
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
            // Bounds the map by the signatures mailed within one window.
            self.groups.retain(|_, sent| {
                sent.retain(|t| !expired(t));
                !sent.is_empty()
            });
            self.last_sweep = now;
        }
        let group_has_room = match self.groups.get_mut(key(report)) {
            Some(sent) => {
                while sent.front().is_some_and(expired) {
                    sent.pop_front();
                }
                sent.len() < self.config.per_route as usize
            }
            None => self.config.per_route > 0,
        };
        if group_has_room && self.total.len() < self.config.total as usize {
            self.total.push_back(now);
            self.groups
                .entry(key(report).to_owned())
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

/// Reports the throttle held back, grouped by signature.
#[derive(Debug, Clone)]
pub(crate) struct Digest {
    first_at: Instant,
    pub(crate) groups: Vec<GroupDigest>,
    /// Signatures beyond [`MAX_DIGEST_GROUPS`], summed up (an upper bound).
    pub(crate) other_groups: u64,
    other_requests: u64,
    other_recaptures: u64,
}

/// What was held back for one signature.
#[derive(Debug, Clone)]
pub(crate) struct GroupDigest {
    /// The signature, or the route key of reports made without one.
    pub(crate) signature: String,
    /// What the signature is made of.
    pub(crate) signature_text: String,
    /// The route with ids collapsed (`GET /users/{n}`), for the digest's subject.
    pub(crate) route: String,
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
            groups: Vec::new(),
            other_groups: 0,
            other_requests: 0,
            other_recaptures: 0,
        }
    }

    fn add(&mut self, report: &SlowRequestReport) {
        let first_capture = report.capture <= 1 && report.kind == crate::report::ReportKind::Slow;
        let index = self.groups.iter().position(|g| g.signature == key(report));
        let route = match index {
            Some(index) => &mut self.groups[index],
            None if self.groups.len() < MAX_DIGEST_GROUPS => {
                self.groups.push(GroupDigest {
                    signature: key(report).to_owned(),
                    signature_text: report.signature_text.clone(),
                    route: crate::report::signature::collapsed_route(&report.route_key),
                    requests: 0,
                    recaptures: 0,
                    since: SystemTime::now(),
                    longest: Duration::ZERO,
                    examples: Vec::new(),
                });
                self.groups.last_mut().expect("just pushed")
            }
            None => {
                // Counting signatures exactly would need a set; a new one per report is the
                // worst case, and the count is only shown.
                self.other_groups += u64::from(first_capture);
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
        route.examples.truncate(EXAMPLES_PER_GROUP);
    }

    /// Distinct slow requests held back.
    pub(crate) fn total_requests(&self) -> u64 {
        self.groups.iter().map(|r| r.requests).sum::<u64>() + self.other_requests
    }

    /// Reports held back, first captures and later ones.
    pub(crate) fn total_reports(&self) -> u64 {
        self.groups
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
        for route in &self.groups {
            let _ = writeln!(
                out,
                "{} of {} since {}, longest {}",
                more_slow_requests(route.requests),
                route.route,
                clock(route.since),
                format_secs(route.longest)
            );
            if route.signature_text.is_empty() {
                let _ = writeln!(out, "  signature {}", route.signature);
            } else {
                let _ = writeln!(
                    out,
                    "  signature {}: {}",
                    route.signature, route.signature_text
                );
            }
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
                "{} with {} more signatures ({} later captures)",
                more_slow_requests(self.other_requests),
                self.other_groups,
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
        assert!(t.admit(&other, start), "signatures are counted apart");
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
    fn the_total_cap_holds_across_signatures() {
        let (mut t, now) = throttle(10, 3, 1000);
        let admitted = (0..20)
            .filter(|i| t.admit(&report(&format!("/r{i}")), now))
            .count();
        assert_eq!(admitted, 3);
        let digest = t.take_digest(now, true).unwrap();
        assert_eq!(digest.total_requests(), 17);
        assert_eq!(digest.groups.len(), 17);
    }

    #[test]
    fn recaptures_are_told_apart_and_signatures_are_bounded() {
        let (mut t, now) = throttle(1, 1, 1000);
        assert!(t.admit(&report("/a"), now));
        let mut again = report("/a");
        again.capture = 2;
        assert!(!t.admit(&again, now));
        for i in 0..(MAX_DIGEST_GROUPS + 5) {
            assert!(!t.admit(&report(&format!("/r{i}")), now));
        }
        let digest = t.take_digest(now, true).unwrap();
        assert_eq!(digest.groups.len(), MAX_DIGEST_GROUPS);
        assert_eq!(digest.total_requests(), MAX_DIGEST_GROUPS as u64 + 5);
        assert_eq!(digest.total_reports(), MAX_DIGEST_GROUPS as u64 + 6);
        let text = digest.to_text("web-3");
        assert!(text.contains("plus 1 later captures"), "{text}");
        assert!(text.contains("with 6 more signatures"), "{text}");
    }

    /// A report on `uri` stuck in `function`, with the signature the reporter would give it.
    fn stuck_in(uri: &str, function: &str) -> SlowRequestReport {
        let mut r = report(uri);
        r.signature_text = format!(
            "{} @ {function}",
            crate::report::signature::collapsed_route(&r.route_key)
        );
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&r.signature_text, &mut hasher);
        r.signature = format!("{:012x}", std::hash::Hasher::finish(&hasher) >> 16);
        r
    }

    #[test]
    fn requests_stuck_in_one_place_share_the_mails_of_their_signature() {
        let (mut t, now) = throttle(1, 100, 1000);
        // Different ids, one route once collapsed, one function: one signature.
        assert!(t.admit(&stuck_in("/users/1", "app::load"), now));
        for n in 2..=20 {
            assert!(!t.admit(&stuck_in(&format!("/users/{n}"), "app::load"), now));
        }
        // The same route stuck somewhere else is news of its own.
        assert!(t.admit(&stuck_in("/users/7", "app::save"), now));
        let digest = t.take_digest(now, true).unwrap();
        assert_eq!(digest.groups.len(), 1);
        assert_eq!(digest.total_requests(), 19);
        let text = digest.to_text("web-3");
        let load = stuck_in("/users/1", "app::load");
        assert!(
            text.contains("19 more slow requests of GET /users/{n} since "),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "  signature {}: GET /users/{{n}} @ app::load\n",
                load.signature
            )),
            "{text}"
        );
    }

    #[test]
    fn the_clock_reads_the_time_of_day_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_430_527);
        assert_eq!(clock(at), "10:42:07 UTC");
        assert_eq!(clock(SystemTime::UNIX_EPOCH), "00:00:00 UTC");
    }

    #[test]
    fn old_signatures_are_swept() {
        let (mut t, now) = throttle(1, 1000, 100);
        for i in 0..100 {
            assert!(t.admit(&report(&format!("/r{i}")), now));
        }
        assert!(t.admit(&report("/late"), now + Duration::from_millis(200)));
        assert_eq!(t.groups.len(), 1);
    }
}
