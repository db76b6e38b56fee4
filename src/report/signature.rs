//! The signature of a report: a stable key that groups reports of the same wedge across
//! requests, processes and hosts.

use std::fmt::Write as _;

use super::{Awaiting, Frame, FrameOrigin};

/// The route of a request for grouping: its method and path, with numeric, uuid-like and long
/// hexadecimal segments collapsed, so `/users/1` and `/users/2` are one route.
pub(crate) fn collapsed_route(route_key: &str) -> String {
    let (method, path) = route_key.split_once(' ').unwrap_or(("", route_key));
    let path = path.split('?').next().unwrap_or(path);
    let mut out = String::with_capacity(route_key.len());
    out.push_str(method);
    out.push(' ');
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            out.push('/');
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let is_uuid = segment.len() == 36
            && segment.split('-').map(str::len).eq([8usize, 4, 4, 4, 12])
            && hex(&segment.replace('-', ""));
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str("{n}");
        } else if is_uuid {
            out.push_str("{uuid}");
        } else if segment.len() >= 16 && hex(segment) {
            out.push_str("{hex}");
        } else {
            out.push_str(segment);
        }
    }
    out
}

/// The signature of a report: its text, and a 12-digit hash of it (FNV-1a, stable everywhere).
pub(crate) fn signature(
    route_key: &str,
    stack: &[Frame],
    awaiting: Option<&Awaiting>,
) -> (String, String) {
    let app_frame = |frames: &[Frame]| {
        frames
            .iter()
            .find(|f| f.origin == FrameOrigin::App)
            .and_then(|f| f.function.clone())
    };
    let mut text = collapsed_route(route_key);
    let leaf = awaiting.and_then(|a| a.leaves.first());
    if let Some(leaf) = leaf {
        let _ = write!(
            text,
            " @ awaits {}",
            leaf.leaf.as_deref().unwrap_or("an unnamed future")
        );
        if let Some(frame) = app_frame(&leaf.chain) {
            let _ = write!(text, " in {frame}");
        }
    } else if let Some(frame) = app_frame(stack) {
        let _ = write!(text, " @ {frame}");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (format!("{:012x}", hash >> 16), text)
}

#[cfg(test)]
mod tests {
    use super::collapsed_route;

    #[test]
    fn routes_collapse_ids_and_keep_words() {
        assert_eq!(
            collapsed_route("GET /users/42/posts"),
            "GET /users/{n}/posts"
        );
        assert_eq!(
            collapsed_route("GET /o/123e4567-e89b-12d3-a456-426614174000?x=1"),
            "GET /o/{uuid}"
        );
        assert_eq!(
            collapsed_route("PUT /blob/0123456789abcdef01"),
            "PUT /blob/{hex}"
        );
        assert_eq!(collapsed_route("GET /v2/health"), "GET /v2/health");
        assert_eq!(collapsed_route("GET /"), "GET /");
    }
}
