//! Reading a bootstrap: the file (read no further than its size limit), the nesting scan,
//! the YAML reader, the command-line overrides, then `translate`.

use super::bootstrap::translate;
use super::overrides::Overrides;
use super::walk::Diagnostics;
use super::yaml::Value;
use super::*;
use std::path::Path;

/// Reads and translates a bootstrap file.
pub fn parse_bootstrap_file(path: &Path) -> Result<Snapshot, ConfigError> {
    parse_bootstrap_file_with(path, &Overrides::default())
}

/// As `parse_bootstrap_file`, with command-line overrides applied before validation.
pub fn parse_bootstrap_file_with(
    path: &Path,
    overrides: &Overrides,
) -> Result<Snapshot, ConfigError> {
    parse_bootstrap_file_limited(path, overrides, DEFAULT_MAX_CONFIG_BYTES)
}

/// The default bound on a bootstrap file's size (`--max-config-bytes`).
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The deepest nesting of mappings and lists a bootstrap may have.
pub const MAX_YAML_DEPTH: usize = 128;

/// As `parse_bootstrap_file_with`, refusing files larger than `max_bytes` (read no further
/// than that, so `/dev/zero` or a runaway generator cannot exhaust memory).
pub fn parse_bootstrap_file_limited(
    path: &Path,
    overrides: &Overrides,
    max_bytes: u64,
) -> Result<Snapshot, ConfigError> {
    use std::io::Read;
    let name = path.display().to_string();
    let fail = |message: String| ConfigError {
        source_name: name.clone(),
        errors: vec![Diag {
            path: String::new(),
            message,
        }],
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read {name}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read {name}: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(fail(format!(
            "the file is larger than the limit of {max_bytes} bytes (--max-config-bytes)"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "cannot read {name}: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_bootstrap_with(&text, &name, overrides)
}

/// Translates bootstrap text (YAML; JSON is YAML too). `source_name` labels errors.
pub fn parse_bootstrap(text: &str, source_name: &str) -> Result<Snapshot, ConfigError> {
    parse_bootstrap_with(text, source_name, &Overrides::default())
}

/// As `parse_bootstrap`, with command-line overrides applied before validation.
pub fn parse_bootstrap_with(
    text: &str,
    source_name: &str,
    overrides: &Overrides,
) -> Result<Snapshot, ConfigError> {
    let fail = |errors| ConfigError {
        source_name: source_name.to_string(),
        errors,
    };
    if let Some(at) = flow_depth_exceeded(text, MAX_YAML_DEPTH) {
        return Err(fail(vec![Diag {
            path: at,
            message: format!("nesting deeper than {MAX_YAML_DEPTH} levels (the limit)"),
        }]));
    }
    let mut value: Value = super::yaml::parse(text, MAX_YAML_DEPTH).map_err(|e| {
        let message = if e.message.starts_with("nesting deeper") {
            e.message.clone()
        } else {
            format!("invalid YAML: {e}")
        };
        fail(vec![Diag {
            path: format!("line {} column {}", e.line, e.column),
            message,
        }])
    })?;
    // Integers beyond 64 bits: say where, and what is accepted.
    let too_big = too_big_numbers(&value);
    if !too_big.is_empty() {
        return Err(fail(
            too_big
                .into_iter()
                .map(|path| Diag {
                    path,
                    message: format!(
                        "integer out of range (the largest accepted is {})",
                        u64::MAX
                    ),
                })
                .collect(),
        ));
    }
    let override_warnings = overrides.apply(&mut value);
    let mut d = Diagnostics::default();
    let snapshot = translate(&value, &mut d);
    drop(value);
    match snapshot {
        Some(mut s) if d.errors.is_empty() => {
            s.bootstrap = BootstrapSource::new(text, overrides);
            s.warnings = d.warnings;
            s.warnings.extend(override_warnings);
            Ok(s)
        }
        _ => {
            if d.errors.is_empty() {
                d.error("", "invalid configuration");
            }
            Err(fail(d.errors))
        }
    }
}

/// Where `{`/`[` nesting first goes deeper than `limit`, as "line L column C". A cheap scan
/// before the YAML parser, which reads a whole document before its own depth check and
/// takes minutes on a 100,000-deep flow mapping. Quoted strings and comments are skipped;
/// brackets inside plain scalars count, which only matters for more than `limit` unclosed
/// ones.
fn flow_depth_exceeded(text: &str, limit: usize) -> Option<String> {
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut escaped = false;
    let mut prev = '\n';
    for c in text.chars() {
        col += 1;
        if c == '\n' {
            line += 1;
            col = 0;
            comment = false;
            prev = c;
            continue;
        }
        if comment {
            continue;
        }
        match quote {
            Some('"') => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quote = None;
                }
            }
            Some(_) => {
                if c == '\'' {
                    quote = None;
                }
            }
            None => match c {
                // A quote opens a quoted scalar only where one can start (`it's` is plain).
                '"' | '\''
                    if prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':' | '\'') =>
                {
                    quote = Some(c)
                }
                '#' if prev.is_whitespace() => comment = true,
                '{' | '[' => {
                    depth += 1;
                    if depth > limit {
                        return Some(format!("line {line} column {col}"));
                    }
                }
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    None
}

/// Paths of the integers in `value` too large for 64 bits.
fn too_big_numbers(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo: Vec<(String, &Value)> = vec![(String::new(), value)];
    while let Some((path, v)) = todo.pop() {
        match v {
            Value::Number(n) if n.is_too_big() => out.push(path),
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    if matches!(
                        item,
                        Value::Sequence(_) | Value::Mapping(_) | Value::Number(_)
                    ) {
                        todo.push((super::walk::index(&path, i), item));
                    }
                }
            }
            Value::Mapping(m) => {
                for (k, item) in m.iter() {
                    if matches!(
                        item,
                        Value::Sequence(_) | Value::Mapping(_) | Value::Number(_)
                    ) {
                        todo.push((super::walk::join(&path, &k.to_string()), item));
                    }
                }
            }
            _ => {}
        }
    }
    out.sort();
    out
}
