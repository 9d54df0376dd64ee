//! A path-tracking reader over parsed YAML, used by the bootstrap translation.
//!
//! Every object is read against a field table that says, for each Envoy field, whether Plumb
//! supports it, ignores it on purpose (harmless; a warning is reported) or rejects it (it would
//! change behaviour in a way Plumb cannot honour). Fields not in the table are errors, as in
//! Envoy. Keys are accepted in snake_case and lowerCamelCase, like proto3 JSON.

use super::yaml::Value;
use std::fmt;
use std::time::Duration;

/// One finding, with the full field path, e.g.
/// `static_resources.listeners[0].filter_chains[0].filters[0].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    pub errors: Vec<Diag>,
    pub warnings: Vec<Diag>,
}

impl Diagnostics {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Diag {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Diag {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// How Plumb treats one Envoy field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Supported,
    /// Accepted and reported as a warning; the reason says why it is safe to ignore.
    Ignored(&'static str),
    /// Refused with the reason.
    Rejected(&'static str),
}

pub type FieldTable = &'static [(&'static str, Field)];

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(crate) fn snake_case(key: &str) -> String {
    if key.starts_with('@') {
        return key.to_string();
    }
    let mut out = String::with_capacity(key.len() + 4);
    for ch in key.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Longest name or stat prefix accepted (bytes).
pub const MAX_NAME_LEN: usize = 1024;

/// A mapping being read, with its path and its fields normalized to snake_case.
pub struct Obj<'v> {
    pub path: String,
    fields: Vec<(String, &'v Value)>,
}

impl<'v> Obj<'v> {
    /// Reads `value` as an object of the type described by `table`; reports unknown, ignored
    /// and rejected fields. Returns `None` (with an error) if it is not a mapping.
    pub fn new(
        value: &'v Value,
        path: &str,
        table: FieldTable,
        d: &mut Diagnostics,
    ) -> Option<Self> {
        let Value::Mapping(map) = value else {
            d.error(path, format!("expected a mapping, found {}", kind(value)));
            return None;
        };
        let mut fields: Vec<(String, &'v Value)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Value::String(k) = k else {
                d.error(
                    path,
                    format!("field names must be strings, found {}", kind(k)),
                );
                continue;
            };
            let key = snake_case(k);
            let fpath = join(path, k);
            if fields.iter().any(|(existing, _)| *existing == key) {
                d.error(fpath, "field given twice");
                continue;
            }
            match table.iter().find(|(name, _)| *name == key) {
                Some((_, Field::Supported)) => {}
                Some((_, Field::Ignored(why))) => {
                    d.warn(fpath, format!("ignored: {why}"));
                    continue;
                }
                Some((_, Field::Rejected(why))) => {
                    d.error(fpath, format!("not supported: {why}"));
                    continue;
                }
                None => {
                    let known: Vec<&str> = table
                        .iter()
                        .filter(|(_, f)| *f == Field::Supported)
                        .map(|(n, _)| *n)
                        .collect();
                    d.error(
                        fpath,
                        format!(
                            "unknown field \"{k}\" (supported here: {})",
                            known.join(", ")
                        ),
                    );
                    continue;
                }
            }
            fields.push((key, v));
        }
        Some(Self {
            path: path.to_string(),
            fields,
        })
    }

    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_null())
    }

    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn required(&self, key: &str, d: &mut Diagnostics) -> Option<&'v Value> {
        let v = self.get(key);
        if v.is_none() {
            d.error(self.at(key), "missing required field");
        }
        v
    }

    pub fn string(&self, key: &str, d: &mut Diagnostics) -> Option<String> {
        let v = self.get(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                d.error(
                    self.at(key),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// A name or stat prefix: a string of at most `MAX_NAME_LEN` bytes without control
    /// characters (which would split `/stats`, `/clusters` and log lines).
    pub fn name(&self, key: &str, d: &mut Diagnostics) -> Option<String> {
        let s = self.string(key, d)?;
        if s.len() > MAX_NAME_LEN {
            d.error(
                self.at(key),
                format!(
                    "{} bytes long; names are limited to {MAX_NAME_LEN}",
                    s.len()
                ),
            );
            return None;
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            d.error(
                self.at(key),
                format!(
                    "contains the control character {:?}; names must be printable",
                    c
                ),
            );
            return None;
        }
        Some(s)
    }

    /// `name`, required and not empty.
    pub fn required_name(&self, key: &str, d: &mut Diagnostics) -> Option<String> {
        self.required_string(key, d)?;
        self.name(key, d)
    }

    pub fn required_string(&self, key: &str, d: &mut Diagnostics) -> Option<String> {
        self.required(key, d)?;
        let s = self.string(key, d)?;
        if s.is_empty() {
            d.error(self.at(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// An unsigned integer in `[min, max]`; numbers may be given as strings (proto3 JSON).
    pub fn uint(&self, key: &str, min: u64, max: u64, d: &mut Diagnostics) -> Option<u64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                d.error(self.at(key), format!("{n} is out of range [{min}, {max}]"));
                None
            }
            None => {
                let shown = v.to_string();
                d.error(
                    self.at(key),
                    format!(
                        "expected an integer in [{min}, {max}], found {}",
                        shown.trim()
                    ),
                );
                None
            }
        }
    }

    /// A number in `[min, max]`; numbers may be given as strings (proto3 JSON).
    pub fn float(&self, key: &str, min: f64, max: f64, d: &mut Diagnostics) -> Option<f64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Some(n),
            Some(n) => {
                d.error(self.at(key), format!("{n} is out of range [{min}, {max}]"));
                None
            }
            None => {
                d.error(
                    self.at(key),
                    format!("expected a number in [{min}, {max}], found {}", kind(v)),
                );
                None
            }
        }
    }

    pub fn boolean(&self, key: &str, d: &mut Diagnostics) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                d.error(
                    self.at(key),
                    format!("expected true or false, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// A proto3 JSON duration: `"5s"`, `"0.25s"`.
    pub fn duration(&self, key: &str, d: &mut Diagnostics) -> Option<Duration> {
        let v = self.get(key)?;
        match v {
            Value::String(s) => match parse_duration(s) {
                Ok(dur) => Some(dur),
                Err(e) => {
                    d.error(self.at(key), e);
                    None
                }
            },
            other => {
                d.error(
                    self.at(key),
                    format!(
                        "expected a duration string such as \"5s\" or \"0.25s\", found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    /// One of a set of enum names; the first of `supported` is not implied as a default.
    pub fn enumeration(
        &self,
        key: &str,
        supported: &[&str],
        rejected: &[(&str, &str)],
        d: &mut Diagnostics,
    ) -> Option<String> {
        let s = self.string(key, d)?;
        if supported.contains(&s.as_str()) {
            return Some(s);
        }
        if let Some((_, why)) = rejected.iter().find(|(name, _)| *name == s) {
            d.error(self.at(key), format!("{s} is not supported: {why}"));
        } else {
            d.error(
                self.at(key),
                format!(
                    "unknown value \"{s}\" (expected one of: {})",
                    supported.join(", ")
                ),
            );
        }
        None
    }

    pub fn object(&self, key: &str, table: FieldTable, d: &mut Diagnostics) -> Option<Obj<'v>> {
        let v = self.get(key)?;
        Obj::new(v, &self.at(key), table, d)
    }

    /// The elements of a list field with their paths; absent means empty.
    pub fn list(&self, key: &str, d: &mut Diagnostics) -> Vec<(String, &'v Value)> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (index(&self.at(key), i), v))
                .collect(),
            Some(other) => {
                d.error(
                    self.at(key),
                    format!("expected a list, found {}", kind(other)),
                );
                Vec::new()
            }
        }
    }
}

/// Parses a proto3 JSON duration (`"1.5s"`); Envoy accepts only the seconds form.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration \"{s}\": expected seconds with an \"s\" suffix, e.g. \"5s\" or \"0.25s\"")
    };
    let num = s.trim().strip_suffix('s').ok_or_else(err)?;
    if num.starts_with('-') {
        return Err(format!("invalid duration \"{s}\": must not be negative"));
    }
    if num.is_empty() || num.starts_with('+') {
        return Err(err());
    }
    let secs: f64 = num.parse().map_err(|_| err())?;
    // proto3's limit (10 000 years).
    if !secs.is_finite() || secs > 315_576_000_000.0 {
        return Err(format!(
            "invalid duration \"{s}\": larger than the maximum, 315576000000s (10 000 years)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_proto3_json() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0.25s").unwrap(), Duration::from_millis(250));
        for bad in ["5", "1m", "-1s", "s", "abc s", "1e999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn camel_case_keys_are_read_as_snake_case() {
        assert_eq!(snake_case("portValue"), "port_value");
        assert_eq!(snake_case("port_value"), "port_value");
        assert_eq!(snake_case("@type"), "@type");
    }
}
