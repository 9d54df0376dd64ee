//! The scenario reader's plumbing: YAML to a JSON tree, a node that knows its field path
//! (for errors) and refuses keys nobody read, and durations ("250ms", "2s", "1m").

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

pub(crate) fn to_json(v: &plumb::config::yaml::Value) -> Value {
    use plumb::config::yaml::{Number, Value as Y};
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(Number::U64(n)) => (*n).into(),
        Y::Number(Number::I64(n)) => (*n).into(),
        Y::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(s) => Value::Array(s.iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => to_json(&t.1),
    }
}

/// A value and the path that leads to it, for errors; `finish` refuses keys nobody read.
pub(crate) struct Node<'a> {
    pub(crate) v: &'a Value,
    pub(crate) path: String,
    read: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Node<'a> {
    pub(crate) fn root(v: &'a Value) -> Self {
        Self::at(v, String::new())
    }

    pub(crate) fn at(v: &'a Value, path: String) -> Self {
        Self {
            v,
            path,
            read: Default::default(),
        }
    }

    pub(crate) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.v.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn obj(&self, key: &str) -> Result<Option<Node<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(Node::at(v, self.child_path(key)))),
            Some(v) => bail!("{}: expected a mapping, got {v}", self.child_path(key)),
        }
    }

    pub(crate) fn list(&self, key: &str) -> Result<Vec<Node<'a>>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, v)| Node::at(v, format!("{}[{i}]", self.child_path(key))))
                .collect()),
            Some(v) => bail!("{}: expected a list, got {v}", self.child_path(key)),
        }
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => bail!("{}: expected a string, got {v}", self.child_path(key)),
        }
    }

    pub(crate) fn str(&self, key: &str) -> Result<String> {
        self.opt_str(key)?
            .ok_or_else(|| anyhow!("{}: required", self.child_path(key)))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => bail!("{}: expected a number, got {v}", self.child_path(key)),
        }
    }

    pub(crate) fn fraction(&self, key: &str, default: f64) -> Result<f64> {
        let f = self.opt_f64(key)?.unwrap_or(default);
        if !(0.0..=1.0).contains(&f) {
            bail!("{}: {f} is not a fraction in 0..1", self.child_path(key));
        }
        Ok(f)
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                anyhow!(
                    "{}: expected a whole number ≥ 0, got {n}",
                    self.child_path(key)
                )
            }),
            Some(v) => bail!("{}: expected a number, got {v}", self.child_path(key)),
        }
    }

    pub(crate) fn count(&self, key: &str, default: u64, max: u64) -> Result<u64> {
        let n = self.opt_u64(key)?.unwrap_or(default);
        if n > max {
            bail!("{}: {n} is more than {max}", self.child_path(key));
        }
        Ok(n)
    }

    pub(crate) fn opt_dur(&self, key: &str) -> Result<Option<Duration>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => parse_duration(s)
                .map(Some)
                .map_err(|e| anyhow!("{}: {e}", self.child_path(key))),
            Some(v) => bail!(
                "{}: expected a duration such as \"250ms\", \"2s\" or \"1m\", got {v}",
                self.child_path(key)
            ),
        }
    }

    pub(crate) fn dur(&self, key: &str) -> Result<Duration> {
        self.opt_dur(key)?
            .ok_or_else(|| anyhow!("{}: required", self.child_path(key)))
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if let Value::Object(m) = self.v {
            let read = self.read.borrow();
            if let Some(k) = m.keys().find(|k| !read.contains(*k)) {
                bail!("{}: unknown field", self.child_path(k));
            }
            Ok(())
        } else {
            bail!(
                "{}: expected a mapping, got {}",
                if self.path.is_empty() {
                    "scenario"
                } else {
                    &self.path
                },
                self.v
            )
        }
    }
}

/// "250ms", "2s", "1.5s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| anyhow!("\"{s}\" has no unit (ms, s, m or h)"))?;
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("\"{s}\" is not a number followed by a unit"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("\"{s}\": unknown unit \"{unit}\" (ms, s, m or h)"),
    };
    if !(0.0..=7.0 * 86400.0).contains(&secs) {
        bail!("\"{s}\" is out of range (0 to 7 days)");
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Node<'_> {
    pub(crate) fn finish_check_is_map(&self) -> Result<()> {
        if !self.v.is_object() {
            bail!("scenario: expected a mapping at the top, got {}", self.v);
        }
        Ok(())
    }
}
