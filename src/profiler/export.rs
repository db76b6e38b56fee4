//! Profiles in the formats other tools import: speedscope's JSON and, with the `pprof`
//! feature, gzip-compressed pprof `profile.proto`.

use std::collections::HashMap;

use serde_json::json;

use super::fold::Profile;

/// Nanoseconds one sample stands for.
fn period_nanos(profile: &Profile) -> u64 {
    1_000_000_000 / u64::from(profile.rate_hz.max(1))
}

/// Frame names numbered in order of first appearance, and each stack as indices, root first.
struct Interned<'a> {
    names: Vec<&'a str>,
    stacks: Vec<(Vec<usize>, u64)>,
}

fn intern(profile: &Profile) -> Interned<'_> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut names = Vec::new();
    let stacks = profile
        .stacks
        .iter()
        .map(|stack| {
            let ids = stack
                .frames
                .iter()
                .map(|name| {
                    *index.entry(name.as_str()).or_insert_with(|| {
                        names.push(name.as_str());
                        names.len() - 1
                    })
                })
                .collect();
            (ids, stack.count)
        })
        .collect();
    Interned { names, stacks }
}

/// speedscope's file format (`https://www.speedscope.app/file-format-schema.json`): one
/// "sampled" profile over shared frames, weighted in nanoseconds.
pub(crate) fn speedscope(profile: &Profile) -> Vec<u8> {
    let interned = intern(profile);
    let period = period_nanos(profile);
    let frames: Vec<_> = interned
        .names
        .iter()
        .map(|name| json!({ "name": name }))
        .collect();
    let samples: Vec<&Vec<usize>> = interned.stacks.iter().map(|(ids, _)| ids).collect();
    let weights: Vec<u64> = interned
        .stacks
        .iter()
        .map(|(_, count)| count * period)
        .collect();
    let total: u64 = weights.iter().sum();
    let name = format!("{} ({})", profile.request, profile.mode);
    let document = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": concat!("tower-vigil ", env!("CARGO_PKG_VERSION")),
        "name": name,
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": [{
            "type": "sampled",
            "name": name,
            "unit": "nanoseconds",
            "startValue": 0,
            "endValue": total,
            "samples": samples,
            "weights": weights,
        }],
    });
    serde_json::to_vec(&document).unwrap_or_default()
}

#[cfg(feature = "pprof")]
pub(crate) use self::pprof::pprof;

#[cfg(feature = "pprof")]
mod pprof {
    //! The messages of pprof's `profile.proto` that a sampled profile uses, by hand: field
    //! numbers as in `github.com/google/pprof/proto/profile.proto`.

    use std::io::Write as _;

    use flate2::write::GzEncoder;
    use flate2::Compression;
    use prost::Message;

    use super::{intern, period_nanos, Profile};
    use crate::profiler::Mode;

    /// The mode a stored profile names.
    fn mode_of(profile: &Profile) -> Mode {
        if profile.mode == Mode::CpuTime.name() {
            Mode::CpuTime
        } else {
            Mode::WallClock
        }
    }

    #[derive(Clone, PartialEq, Message)]
    struct PprofProfile {
        #[prost(message, repeated, tag = "1")]
        sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        time_nanos: i64,
        #[prost(int64, tag = "10")]
        duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        period: i64,
        #[prost(int64, repeated, tag = "13")]
        comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    struct ValueType {
        #[prost(int64, tag = "1")]
        r#type: i64,
        #[prost(int64, tag = "2")]
        unit: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Location {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(message, repeated, tag = "4")]
        line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Line {
        #[prost(uint64, tag = "1")]
        function_id: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Function {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(int64, tag = "2")]
        name: i64,
        #[prost(int64, tag = "3")]
        system_name: i64,
    }

    /// The string table; index 0 is the empty string, as pprof requires.
    struct Strings(Vec<String>);

    impl Strings {
        fn add(&mut self, text: &str) -> i64 {
            self.0.push(text.to_owned());
            self.0.len() as i64 - 1
        }
    }

    /// The profile as gzip-compressed `profile.proto`: samples and time per stack, one function
    /// and one location per frame name (folded profiles keep names, not addresses).
    pub(crate) fn pprof(profile: &Profile) -> std::io::Result<Vec<u8>> {
        let interned = intern(profile);
        let period = period_nanos(profile) as i64;
        let mut strings = Strings(vec![String::new()]);
        let samples = strings.add("samples");
        let count = strings.add("count");
        let time = strings.add(match mode_of(profile) {
            Mode::CpuTime => "cpu",
            Mode::WallClock => "wall",
        });
        let nanoseconds = strings.add("nanoseconds");
        // Function and location ids are the frame's index plus one (0 means none).
        let function = interned
            .names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let name = strings.add(name);
                Function {
                    id: index as u64 + 1,
                    name,
                    system_name: name,
                }
            })
            .collect();
        let location = (1..=interned.names.len() as u64)
            .map(|id| Location {
                id,
                line: vec![Line { function_id: id }],
            })
            .collect();
        let sample = interned
            .stacks
            .iter()
            .map(|(ids, count)| Sample {
                location_id: ids.iter().rev().map(|&i| i as u64 + 1).collect(),
                value: vec![*count as i64, *count as i64 * period],
            })
            .collect();
        let mut comment = vec![strings.add(&format!("tower-vigil: {}", profile.request))];
        if profile.partial {
            comment.push(strings.add(&format!("partial: {}", profile.outcome)));
        }
        let message = PprofProfile {
            sample_type: vec![
                ValueType {
                    r#type: samples,
                    unit: count,
                },
                ValueType {
                    r#type: time,
                    unit: nanoseconds,
                },
            ],
            sample,
            location,
            function,
            string_table: strings.0,
            time_nanos: (profile.started_unix_ms as i64).saturating_mul(1_000_000),
            duration_nanos: (profile.wall_ms * 1_000_000.0) as i64,
            period_type: Some(ValueType {
                r#type: time,
                unit: nanoseconds,
            }),
            period,
            comment,
            default_sample_type: time,
        };
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(&message.encode_to_vec())?;
        gzip.finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::profiler::fold::FoldedStack;
    use crate::profiler::Mode;

    pub(crate) fn sample_profile() -> Profile {
        Profile {
            id: None,
            request: "GET /x".into(),
            mode: Mode::CpuTime.name().into(),
            rate_hz: 1000,
            started_unix_ms: 1,
            status: Some(200),
            outcome: "200 OK".into(),
            wall_ms: 5.0,
            cpu_ms: Some(5.0),
            samples: 5,
            signals: 5,
            dropped: 0,
            partial: false,
            response_bytes: 0,
            top_frames: Vec::new(),
            stacks: vec![
                FoldedStack {
                    frames: vec!["GET /x".into(), "a".into(), "b".into()],
                    count: 3,
                },
                FoldedStack {
                    frames: vec!["GET /x".into(), "a".into()],
                    count: 2,
                },
            ],
        }
    }

    #[test]
    fn speedscope_shares_frames_and_weighs_in_nanoseconds() {
        let json: serde_json::Value =
            serde_json::from_slice(&speedscope(&sample_profile())).unwrap();
        let frames = json["shared"]["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 3, "each name once");
        let profile = &json["profiles"][0];
        assert_eq!(profile["type"], "sampled");
        assert_eq!(profile["samples"], json!([[0, 1, 2], [0, 1]]));
        assert_eq!(profile["weights"], json!([3_000_000, 2_000_000]));
        assert_eq!(profile["endValue"], 5_000_000);
    }
}
