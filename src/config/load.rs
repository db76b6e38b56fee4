//! Loading: the key tree, unknown keys, typed errors with dotted paths, and `VIGIL_*`
//! variables.
//!
//! Every source is turned into a `serde_json::Value` first, so that a TOML file, a file of
//! another format and the environment are checked against one tree of known keys and report
//! errors the same way.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::sinks::redact_url;
use super::{SignalsConfig, SinksConfig, VigilConfig};
use crate::error::ConfigError;

/// Prefix of the environment variables read by [`VigilConfig::with_env`].
pub(super) const ENV_PREFIX: &str = "VIGIL_";

/// Every key there is: a configuration with every section present, as a tree.
pub(super) fn key_tree() -> Value {
    let full = VigilConfig {
        watchdog: Some(Default::default()),
        timebox: Some(Default::default()),
        profiler: Some(Default::default()),
        sinks: SinksConfig {
            log: Some(Default::default()),
            file: Some(Default::default()),
            email: Some(Default::default()),
        },
        signals: SignalsConfig::default(),
        ..VigilConfig::default()
    };
    serde_json::to_value(full).expect("a configuration always serializes")
}

/// The dotted path of every setting (every leaf of [`key_tree`]), in order.
pub(super) fn setting_paths() -> Vec<String> {
    fn walk(value: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, sub) in map {
                    walk(sub, &join(path, key), out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(&key_tree(), "", &mut out);
    out
}

/// The environment variable of a setting: `watchdog.threshold` is `VIGIL_WATCHDOG_THRESHOLD`.
pub(super) fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Refuses the first key that `tree` does not have, by its dotted path, listing the keys that
/// would be accepted there.
#[cfg(feature = "toml")]
fn check_keys(given: &Value, tree: &Value, path: &str) -> Result<(), ConfigError> {
    let (Value::Object(given), Value::Object(known)) = (given, tree) else {
        return Ok(());
    };
    for (key, value) in given {
        let here = join(path, key);
        match known.get(key) {
            Some(sub) => check_keys(value, sub, &here)?,
            None => {
                let expected: Vec<&str> = known.keys().map(String::as_str).collect();
                return Err(ConfigError::other(
                    here,
                    format!("unknown key; expected one of: {}", expected.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// A value as an error message shows it: secrets hidden, strings as given.
fn shown(field: &str, value: Option<&Value>) -> String {
    match value {
        _ if is_secret(field) => crate::report::REDACTED.to_owned(),
        Some(Value::String(s)) if field == "sinks.email.url" => format!("{:?}", redact_url(s)),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
        None => "(none)".to_owned(),
    }
}

/// What serde says is wrong, made safe and helpful: a secret's value, which serde quotes, is
/// left out, and durations get an example.
fn problem(field: &str, said: String) -> String {
    if is_secret(field) {
        return "must be a string".to_owned();
    }
    if said.ends_with("expected a duration") {
        return format!("{said} such as \"25s\", \"500ms\" or \"1m 30s\"");
    }
    said
}

fn is_secret(field: &str) -> bool {
    field == "profiler.secret" || field == "sinks.email.password"
}

/// A deserialization error, by dotted field (list indexes left out) and the value found there.
struct TypeError {
    field: String,
    value: Option<Value>,
    problem: String,
}

fn deserialize(value: &Value) -> Result<VigilConfig, TypeError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut field = String::new();
        let mut at = Some(value);
        for segment in error.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key } => {
                    field = join(&field, key);
                    at = at.and_then(|v| v.get(key));
                }
                serde_path_to_error::Segment::Seq { index } => {
                    at = at.and_then(|v| v.get(index));
                }
                _ => {}
            }
        }
        if field.is_empty() {
            field = "configuration".to_owned();
        }
        TypeError {
            problem: problem(&field, error.into_inner().to_string()),
            field,
            value: at.cloned(),
        }
    })
}

/// A configuration from a tree of any format, with unknown keys and wrong types refused.
/// Not validated.
#[cfg(feature = "toml")]
pub(super) fn from_value(value: &Value) -> Result<VigilConfig, ConfigError> {
    check_keys(value, &key_tree(), "")?;
    deserialize(value).map_err(|error| {
        ConfigError::invalid(
            &error.field,
            shown(&error.field, error.value.as_ref()),
            error.problem,
        )
    })
}

/// `1`, `true`, `yes`, `on` and `0`, `false`, `no`, `off`, in any case.
fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `raw` as a JSON number, if it is one.
fn parse_number(raw: &str) -> Option<Value> {
    let raw = raw.trim();
    raw.parse::<u64>()
        .map(Value::from)
        .or_else(|_| raw.parse::<i64>().map(Value::from))
        .ok()
        .or_else(|| {
            raw.parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
        })
}

/// What `raw` may stand for in a slot whose default is `template`, best guess first. A slot
/// that is `null` by default (an `Option` left out) says nothing of its type, so every reading
/// is offered and deserialization picks.
fn readings(raw: &str, template: &Value) -> Vec<Value> {
    let text = Value::String(raw.to_owned());
    match template {
        Value::Bool(_) => vec![parse_bool(raw).map_or(text, Value::Bool)],
        Value::Number(_) => vec![parse_number(raw).unwrap_or(text)],
        Value::Array(items) => {
            let element = items
                .first()
                .cloned()
                .unwrap_or(Value::String(String::new()));
            let list = if raw.trim().is_empty() {
                Vec::new()
            } else {
                raw.split(',')
                    .map(|item| readings(item.trim(), &element).remove(0))
                    .collect()
            };
            vec![Value::Array(list)]
        }
        Value::Null => {
            let mut all = vec![text];
            all.extend(parse_number(raw));
            all.extend(parse_bool(raw).map(Value::Bool));
            all
        }
        _ => vec![text],
    }
}

/// The slot of `path` in `value`, turning on with defaults (from `tree`) every absent section
/// on the way.
fn slot<'v>(value: &'v mut Value, tree: &Value, path: &str) -> &'v mut Value {
    let (mut here, mut known) = (value, tree);
    for key in path.split('.') {
        if !here.is_object() {
            *here = known.clone();
        }
        known = &known[key];
        here = here
            .as_object_mut()
            .map(|map: &mut Map<String, Value>| map.entry(key).or_insert(Value::Null))
            .expect("an object");
    }
    here
}

/// `config` with the settings of the `VIGIL_*` variables among `vars`. Not validated.
pub(super) fn apply_vars<I, K, V>(config: &VigilConfig, vars: I) -> Result<VigilConfig, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let tree = key_tree();
    let by_name: BTreeMap<String, String> = setting_paths()
        .into_iter()
        .map(|path| (env_name(&path), path))
        .collect();
    let mut value = serde_json::to_value(config).expect("a configuration always serializes");
    let mut set: BTreeMap<String, FromEnv> = BTreeMap::new();
    for (name, raw) in vars {
        let (name, raw) = (name.as_ref(), raw.as_ref());
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let Some(path) = by_name.get(name) else {
            let closest = by_name
                .keys()
                .map(|known| (edit_distance(known, name), known))
                .min()
                .filter(|(distance, _)| *distance <= 3);
            let hint = match closest {
                Some((_, known)) => format!("did you mean {known}?"),
                None => "variables are VIGIL_ and the setting's dotted path in upper case with \
                         '_' for '.', such as VIGIL_WATCHDOG_THRESHOLD"
                    .to_owned(),
            };
            return Err(ConfigError::other(
                name,
                format!("is not a tower-vigil setting; {hint}"),
            ));
        };
        let template = path.split('.').fold(&tree, |at, key| &at[key]);
        let mut readings = readings(raw, template);
        *slot(&mut value, &tree, path) = readings.remove(0);
        let from = FromEnv {
            name: name.to_owned(),
            raw: raw.to_owned(),
            readings,
            first_problem: None,
        };
        set.insert(path.clone(), from);
    }
    loop {
        let error = match deserialize(&value) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let Some(from) = set.get_mut(&error.field) else {
            return Err(ConfigError::invalid(
                &error.field,
                shown(&error.field, error.value.as_ref()),
                error.problem,
            ));
        };
        // The first reading's complaint is the telling one ("time unit needed" for `5`).
        let problem = from.first_problem.get_or_insert(error.problem).clone();
        if from.readings.is_empty() {
            let raw = Value::String(from.raw.clone());
            return Err(ConfigError::invalid(
                &error.field,
                shown(&error.field, Some(&raw)),
                format!("{problem} (from {})", from.name),
            ));
        }
        *slot(&mut value, &tree, &error.field) = from.readings.remove(0);
    }
}

/// Levenshtein distance, for the hint at a misspelt variable.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A setting given by a variable.
struct FromEnv {
    name: String,
    raw: String,
    /// Readings of `raw` not tried yet.
    readings: Vec<Value>,
    first_problem: Option<String>,
}

/// Parses TOML into the common tree.
#[cfg(feature = "toml")]
pub(super) fn toml_value(text: &str) -> Result<Value, ConfigError> {
    let table: toml::Table = toml::from_str(text)
        .map_err(|error| ConfigError::other("configuration", format!("invalid TOML: {error}")))?;
    serde_json::to_value(table)
        .map_err(|error| ConfigError::other("configuration", error.to_string()))
}
