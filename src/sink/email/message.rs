//! What a mail looks like: subject template, text body, JSON attachment, digests.

use std::fmt::Write as _;
use std::sync::OnceLock;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::throttle::Digest;
use super::EmailError;
use crate::report::{ReportKind, SlowRequestReport};
use crate::sink::FileSink;

/// The longest subject, in characters; longer ones end in `…`. Mail clients show about 80.
pub(crate) const MAX_SUBJECT_CHARS: usize = 200;

/// A parsed subject template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubjectTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(Field),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Summary,
    Method,
    Uri,
    Route,
    Elapsed,
    Hostname,
    Kind,
    RequestId,
    Capture,
    TopFrame,
    Pid,
    Signature,
    SignatureText,
}

/// Placeholder names, as documented on `EmailSink::subject`.
const FIELDS: [(&str, Field); 13] = [
    ("summary", Field::Summary),
    ("method", Field::Method),
    ("uri", Field::Uri),
    ("route", Field::Route),
    ("elapsed", Field::Elapsed),
    ("hostname", Field::Hostname),
    ("kind", Field::Kind),
    ("request_id", Field::RequestId),
    ("capture", Field::Capture),
    ("top_frame", Field::TopFrame),
    ("pid", Field::Pid),
    ("signature", Field::Signature),
    ("signature_text", Field::SignatureText),
];

impl SubjectTemplate {
    pub(crate) fn parse(template: &str) -> Result<Self, EmailError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(EmailError::new(format!(
                                    "subject template: unclosed {{{}",
                                    name.escape_default()
                                )))
                            }
                        }
                    }
                    let field = FIELDS
                        .iter()
                        .find(|(known, _)| *known == name)
                        .map(|(_, field)| *field)
                        .ok_or_else(|| {
                            EmailError::new(format!(
                                "subject template: unknown placeholder {{{}}} (known: {})",
                                name.escape_default(),
                                FIELDS.map(|(n, _)| n).join(", ")
                            ))
                        })?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => {
                    return Err(EmailError::new(
                        "subject template: a lone } (write }} for a brace)",
                    ))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self { pieces })
    }

    pub(crate) fn render(&self, report: &SlowRequestReport) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => {
                    let _ = match field {
                        Field::Summary => write!(out, "{}", report.summary()),
                        Field::Method => write!(out, "{}", report.method),
                        Field::Uri => write!(out, "{}", report.uri),
                        Field::Route => write!(out, "{}", report.route_key),
                        Field::Elapsed => write!(out, "{}", format_secs(report.elapsed)),
                        Field::Hostname => write!(out, "{}", report.hostname),
                        Field::Kind => write!(
                            out,
                            "{}",
                            match report.kind {
                                ReportKind::Completed => "completed",
                                _ => "slow",
                            }
                        ),
                        Field::RequestId => write!(out, "{}", report.request_id),
                        Field::Capture => write!(out, "{}", report.capture),
                        Field::TopFrame => write!(
                            out,
                            "{}",
                            report
                                .top_app_frame()
                                .and_then(|f| f.function.as_deref())
                                .unwrap_or("")
                        ),
                        Field::Pid => write!(out, "{}", report.pid),
                        Field::Signature => write!(out, "{}", report.signature),
                        Field::SignatureText => write!(out, "{}", report.signature_text),
                    };
                }
            }
        }
        clean_subject(&out)
    }
}

/// Makes any text safe for a one-line header: control characters (CR and LF above all, which
/// could start a forged header) and characters that display as line breaks or reorder text
/// become visible `\u{..}` escapes; every `=?` gets a space after its `=`, so that no RFC 2047
/// encoded word (`=?utf-8?q?=0D=0ABcc:...?=`) can form and be decoded by a mail client; and the
/// length is bounded.
pub(crate) fn clean_subject(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for (chars, c) in raw.chars().enumerate() {
        if chars >= MAX_SUBJECT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() || displays_as_break_or_reorders(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            if c == '?' && out.ends_with('=') {
                out.push(' ');
            }
            out.push(c);
        }
    }
    out
}

/// Line and paragraph separators, and the bidirectional marks, embeddings, overrides and
/// isolates that can make a subject read differently from what it says.
fn displays_as_break_or_reorders(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

pub(crate) use crate::report::format_secs;

/// Letters, digits, dots and hyphens: usable in an EHLO name, a Message-ID or a default From.
pub(crate) fn is_domain_like(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn mail_domain() -> &'static str {
    let host = crate::report::hostname();
    if is_domain_like(host) {
        host
    } else {
        "localhost"
    }
}

/// The From address used when none is set: `vigil@<host name>`.
pub(crate) fn default_from() -> Mailbox {
    format!("vigil@{}", mail_domain())
        .parse()
        .unwrap_or_else(|_| "vigil@localhost".parse().expect("a valid address"))
}

/// Parses one address, `user@example.com` or `Name <user@example.com>`, and refuses anything
/// the parser would skip over silently (it ignores trailing text) or that could break a header.
pub(crate) fn parse_mailbox(input: &str) -> Result<Mailbox, EmailError> {
    let invalid = || {
        EmailError::new(format!(
            "invalid email address {:?}",
            input.escape_default()
        ))
    };
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.chars().any(char::is_control) {
        return Err(invalid());
    }
    let mailbox: Mailbox = trimmed.parse().map_err(|_| invalid())?;
    let address = mailbox.email.to_string();
    let whole = trimmed == address
        || (trimmed.ends_with('>') && trimmed.ends_with(&format!("<{address}>")));
    if !whole {
        return Err(invalid());
    }
    Ok(mailbox)
}

/// A tag that makes Message-IDs unique across restarts of a process with the same pid.
fn process_tag() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    *TAG.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

fn message_id(request_id: u64, part: &str) -> String {
    format!(
        "<vigil.{:x}.{}.{request_id}.{part}@{}>",
        process_tag(),
        std::process::id(),
        mail_domain()
    )
}

/// Addresses and subject of every message.
pub(crate) struct Envelope<'a> {
    pub(crate) from: &'a Mailbox,
    pub(crate) to: &'a [Mailbox],
}

impl Envelope<'_> {
    fn builder(&self, subject: String) -> Result<lettre::message::MessageBuilder, EmailError> {
        if self.to.is_empty() {
            return Err(EmailError::new(
                "EmailSink has no recipient: call .to(address)",
            ));
        }
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .user_agent(concat!("tower-vigil/", env!("CARGO_PKG_VERSION")).to_owned());
        for to in self.to {
            builder = builder.to(to.clone());
        }
        Ok(builder)
    }
}

/// A report as a mail: the text report as body, the JSON report attached.
pub(crate) fn report_message(
    envelope: &Envelope<'_>,
    subject: &SubjectTemplate,
    report: &SlowRequestReport,
) -> Result<Message, EmailError> {
    let part = match report.kind {
        ReportKind::Completed => "done".to_owned(),
        _ => report.capture.to_string(),
    };
    let mut builder = envelope
        .builder(subject.render(report))?
        .message_id(Some(message_id(report.request_id, &part)));
    if report.kind == ReportKind::Completed || report.capture > 1 {
        // Threads the follow-ups of a request under its first mail.
        let first = message_id(report.request_id, "1");
        builder = builder.in_reply_to(first.clone()).references(first);
    }
    let mut body = report.to_text();
    let _ = write!(
        body,
        "\n-- \nSent by tower-vigil from {} (pid {}). The report as JSON is attached.\n",
        report.hostname, report.pid
    );
    let json = crate::report::json::to_json(report)
        .map_err(|error| EmailError::new(format!("cannot render the JSON report: {error}")))?;
    let attachment = Attachment::new(format!("{}.json", FileSink::file_stem(report))).body(
        json,
        ContentType::parse("application/json").expect("a valid type"),
    );
    builder
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(body))
                .singlepart(attachment),
        )
        .map_err(|error| EmailError::new(format!("cannot build the mail: {error}")))
}

/// A digest as a mail: what the throttle held back, signature by signature. With one
/// signature, its subject ends like the default subject of that signature's report mails, so
/// a mail filter on the signature finds the digest too.
pub(crate) fn digest_message(
    envelope: &Envelope<'_>,
    digest: &Digest,
) -> Result<Message, EmailError> {
    let hostname = crate::report::hostname();
    let subject = match digest.groups.as_slice() {
        [only] if digest.other_groups == 0 => format!(
            "[vigil] {} of {} on {hostname} [{}]",
            more_slow_requests(only.requests),
            only.route,
            only.signature
        ),
        groups => format!(
            "[vigil] {} with {} signatures on {hostname}",
            more_slow_requests(digest.total_requests()),
            groups.len() as u64 + digest.other_groups
        ),
    };
    text_message(envelope, clean_subject(&subject), digest.to_text(hostname))
}

fn text_message(
    envelope: &Envelope<'_>,
    subject: String,
    body: String,
) -> Result<Message, EmailError> {
    envelope
        .builder(subject)?
        .message_id(Some(message_id(
            0,
            &format!("digest.{:x}", next_digest_number()),
        )))
        .singlepart(SinglePart::plain(body))
        .map_err(|error| EmailError::new(format!("cannot build the mail: {error}")))
}

fn next_digest_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `1 more slow request`, `37 more slow requests`.
pub(crate) fn more_slow_requests(n: u64) -> String {
    if n == 1 {
        "1 more slow request".to_owned()
    } else {
        format!("{n} more slow requests")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    pub(crate) fn report(uri: &str) -> SlowRequestReport {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_430_520);
        let mut report = SlowRequestReport::builder("GET", uri)
            .request_id(42)
            .intercepted_at(at)
            .elapsed(Duration::from_millis(7200))
            .header("host", "example.com")
            .build();
        // The host header is kept apart here, as the crafted-header tests set their own.
        report.headers.clear();
        report.pid = 7;
        report.hostname = "web-3".into();
        report
    }

    fn default_template() -> SubjectTemplate {
        SubjectTemplate::parse(super::super::EmailSink::DEFAULT_SUBJECT).unwrap()
    }

    #[test]
    fn the_default_subject_reads_like_the_issue_and_ends_with_the_signature() {
        let report = report("/api/jobs");
        assert_eq!(report.signature.len(), 12);
        assert_eq!(
            default_template().render(&report),
            format!(
                "[vigil] slow request: GET /api/jobs (7.2 s) on web-3 [{}]",
                report.signature
            )
        );
    }

    #[test]
    fn the_signature_and_its_text_are_placeholders() {
        let mut report = report("/users/7");
        report.signature = "0123456789ab".into();
        report.signature_text = "GET /users/{n} @ app::load".into();
        let t = SubjectTemplate::parse("{signature} {{{signature_text}}}").unwrap();
        assert_eq!(
            t.render(&report),
            "0123456789ab {GET /users/{n} @ app::load}"
        );
    }

    #[test]
    fn templates_have_placeholders_and_escaped_braces() {
        let t =
            SubjectTemplate::parse("{{{kind}}} {method} {route} {elapsed} #{request_id}").unwrap();
        assert_eq!(t.render(&report("/a?x=1")), "{slow} GET GET /a 7.2 s #42");
        for bad in ["{nope}", "{summary", "a } b"] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_characters_never_reach_the_subject() {
        let crafted = report("/x\r\nBcc: evil@example.net\r\n\tX-Injected: 1");
        let subject = default_template().render(&crafted);
        assert!(!subject.chars().any(char::is_control), "{subject:?}");
        assert!(
            subject.contains("/x\\u{d}\\u{a}Bcc: evil@example.net"),
            "{subject}"
        );

        let from = parse_mailbox("vigil@example.com").unwrap();
        let to = [parse_mailbox("oncall@example.com").unwrap()];
        let envelope = Envelope {
            from: &from,
            to: &to,
        };
        let message = report_message(&envelope, &default_template(), &crafted).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        let headers = raw.split("\r\n\r\n").next().unwrap();
        for line in headers.split("\r\n") {
            assert!(!line.starts_with("Bcc"), "{headers}");
            assert!(!line.starts_with("X-Injected"), "{headers}");
        }
        let subject = headers
            .replace("\r\n ", " ")
            .lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap()
            .to_owned();
        assert!(subject.contains("Bcc: evil@example.net\\u{d}"), "{subject}");
        assert_eq!(message.envelope().to().len(), 1);
    }

    fn envelope_parts() -> (Mailbox, [Mailbox; 1]) {
        (
            parse_mailbox("vigil@example.com").unwrap(),
            [parse_mailbox("oncall@example.com").unwrap()],
        )
    }

    fn formatted(report: &SlowRequestReport) -> Vec<u8> {
        let (from, to) = envelope_parts();
        let envelope = Envelope {
            from: &from,
            to: &to,
        };
        report_message(&envelope, &default_template(), report)
            .unwrap()
            .formatted()
    }

    /// The Subject header as written, folded lines joined.
    fn raw_subject(raw: &[u8]) -> String {
        let raw = String::from_utf8(raw.to_vec()).unwrap();
        let headers = raw.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ");
        headers
            .lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn encoded_words_in_the_uri_are_never_decoded_into_the_subject() {
        for uri in [
            "/=?utf-8?q?=0D=0ABcc:_evil@example.net?=",
            "/a =?UTF-8?B?DQpCY2M6IGV2aWxAZXhhbXBsZS5uZXQ=?= b",
            "/x?q==?utf-8?q?=0D=0ABcc:_evil@example.net?==?utf-8?q?=0A?=",
        ] {
            let raw = formatted(&report(uri));
            let subject_line = raw_subject(&raw);
            assert!(!subject_line.contains("=?"), "{subject_line}");
            let mail = mail_parser::MessageParser::default().parse(&raw).unwrap();
            let subject = mail.subject().unwrap();
            assert!(!subject.contains(['\r', '\n']), "{subject:?}");
            assert!(!subject.contains("=?"), "{subject:?}");
            assert!(mail.bcc().is_none() && mail.header("Bcc").is_none());
        }
        // With other non-ASCII text the subject is encoded as a whole, and what it decodes to
        // still holds no encoded word.
        let raw = formatted(&report("/é=?utf-8?q?=0D=0ABcc:_evil@example.net?="));
        let mail = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let subject = mail.subject().unwrap();
        assert!(subject.contains("/é"), "{subject:?}");
        assert!(!subject.contains(['\r', '\n']), "{subject:?}");
        assert!(!subject.contains("=?"), "{subject:?}");
        assert!(mail.bcc().is_none() && mail.header("Bcc").is_none());
    }

    #[test]
    fn text_that_reads_as_line_breaks_or_reversed_text_is_escaped_in_subjects() {
        let subject = clean_subject("a\u{2028}b\u{2029}c\u{202e}d\u{2066}e\u{200f}f");
        assert_eq!(
            subject,
            "a\\u{2028}b\\u{2029}c\\u{202e}d\\u{2066}e\\u{200f}f"
        );
    }

    #[test]
    fn crlf_and_non_ascii_everywhere_still_make_a_well_formed_message() {
        let nasty =
            "\r\nBcc: evil@example.net\r\n\r\nbody? ünï\u{0}cödé \u{7f}\u{202e} =?x?q?y?= \r.\r\n";
        let mut crafted = report(&format!("/ü{nasty}"));
        crafted.headers = vec![
            ("user-agent".into(), nasty.into()),
            (format!("x-{nasty}"), "plain".into()),
        ];
        crafted.host = Some(nasty.into());
        let raw = formatted(&crafted);
        assert!(raw.is_ascii());
        let mail = mail_parser::MessageParser::default()
            .parse(&raw)
            .expect("mail-parser reads the message");
        let subject = mail.subject().unwrap();
        assert!(
            subject.starts_with("[vigil] slow request: GET /ü"),
            "{subject:?}"
        );
        assert!(!subject.contains(['\r', '\n']), "{subject:?}");
        assert!(mail.bcc().is_none() && mail.header("Bcc").is_none());
        assert_eq!(
            mail.to().unwrap().first().unwrap().address(),
            Some("oncall@example.com")
        );
        let body = mail.body_text(0).unwrap();
        assert!(body.contains("ünï"), "{body}");
        assert_eq!(mail.attachment_count(), 1);
        let json: serde_json::Value =
            serde_json::from_slice(mail.attachment(0).unwrap().contents()).unwrap();
        assert_eq!(json["uri"], crafted.uri.as_str());
        assert_eq!(json["headers"][0][1], nasty);
    }

    #[test]
    fn long_subjects_are_cut() {
        let long = format!("/{}", "a".repeat(500));
        let subject = default_template().render(&report(&long));
        assert_eq!(subject.chars().count(), MAX_SUBJECT_CHARS + 1);
        assert!(subject.ends_with('…'));
    }

    #[test]
    fn every_line_fits_smtp_limits_and_non_ascii_is_encoded() {
        let long = format!("/{}?q=é{}", "a".repeat(3000), "b".repeat(1000));
        let from = parse_mailbox("vigil@example.com").unwrap();
        let to = [parse_mailbox("oncall@example.com").unwrap()];
        let envelope = Envelope {
            from: &from,
            to: &to,
        };
        let message = report_message(&envelope, &default_template(), &report(&long)).unwrap();
        let raw = message.formatted();
        assert!(raw.is_ascii());
        for line in raw.split(|&b| b == b'\n') {
            assert!(line.len() <= 998, "{} bytes", line.len());
        }
    }

    #[test]
    fn addresses_are_checked_whole() {
        assert!(parse_mailbox("oncall@example.com").is_ok());
        assert!(parse_mailbox("On Call <oncall@example.com>").is_ok());
        for bad in [
            "",
            "not an address",
            "oncall@",
            "@example.com",
            "oncall@example.com, evil@example.net",
            "oncall@example.com junk",
            "oncall@example.com\r\nBcc: evil@example.net",
        ] {
            assert!(parse_mailbox(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domain_names_are_recognised() {
        assert!(is_domain_like("web-3.example.com"));
        assert!(!is_domain_like("web 3"));
        assert!(!is_domain_like("-x"));
        assert!(!is_domain_like(""));
    }
}
