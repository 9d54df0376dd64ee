//! The bootstrap's YAML (JSON is YAML too) read into a compact tree, streaming: events go
//! straight into the tree instead of being collected first, and a node is 32 bytes (a mapping
//! entry 64), so a 50 MB bootstrap costs a small multiple of its size instead of ~40× with
//! `serde_yaml` (issue 11). Scalars resolve as YAML 1.2's core schema, as `serde_yaml` did:
//! `null`/`~`/empty, booleans, integers (decimal, `0x`, `0o`), floats (`.inf`, `.nan`);
//! quoted scalars are strings. Duplicate keys are errors; aliases expand within a budget;
//! nesting deeper than [`super::MAX_YAML_DEPTH`] is an error.

use std::collections::HashMap;
use std::fmt;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Sequence(Vec<Value>),
    Mapping(Mapping),
    /// A value with an explicit tag (`!foo bar`); the config reader refuses it.
    Tagged(Box<(String, Value)>),
}

/// A number as written: an unsigned or negative integer, a float, or an integer beyond 64
/// bits (kept as text so the reader can say it is out of range).
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
    TooBig(Box<str>),
}

impl Number {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Number::U64(n) => Some(n),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Number::U64(n) => i64::try_from(n).ok(),
            Number::I64(n) => Some(n),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Number::U64(n) => Some(n as f64),
            Number::I64(n) => Some(n as f64),
            Number::F64(f) => Some(f),
            Number::TooBig(_) => None,
        }
    }
    pub fn is_too_big(&self) -> bool {
        matches!(self, Number::TooBig(_))
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::U64(n) => write!(f, "{n}"),
            Number::I64(n) => write!(f, "{n}"),
            Number::F64(x) if x.is_nan() => f.write_str(".nan"),
            Number::F64(x) if x.is_infinite() => {
                f.write_str(if *x > 0.0 { ".inf" } else { "-.inf" })
            }
            Number::F64(x) => write!(f, "{x:?}"),
            Number::TooBig(s) => f.write_str(s),
        }
    }
}

/// A mapping in document order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping(Vec<(Value, Value)>);

impl Mapping {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Value, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(k, _)| k)
    }
    /// The value of `key` (a string key, or any value).
    pub fn get(&self, key: impl Key) -> Option<&Value> {
        self.0.iter().find(|(k, _)| key.is(k)).map(|(_, v)| v)
    }
    pub fn get_mut(&mut self, key: impl Key) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| key.is(k)).map(|(_, v)| v)
    }
    /// Sets `key` (replacing its value, or appending it).
    pub fn insert(&mut self, key: Value, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }
    pub fn remove(&mut self, key: impl Key) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| key.is(k))?;
        Some(self.0.remove(i).1)
    }
}

/// What a mapping can be indexed by: a string key, or a key value.
pub trait Key {
    fn is(&self, k: &Value) -> bool;
}

impl Key for &str {
    fn is(&self, k: &Value) -> bool {
        k.as_str() == Some(*self)
    }
}

impl Key for &String {
    fn is(&self, k: &Value) -> bool {
        k.as_str() == Some(self.as_str())
    }
}

impl Key for &Value {
    fn is(&self, k: &Value) -> bool {
        *self == k
    }
}

impl<'a> IntoIterator for &'a Mapping {
    type Item = (&'a Value, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Value, Value)>,
        fn(&'a (Value, Value)) -> (&'a Value, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The value of string key `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Mapping(m) => m.get(key),
            _ => None,
        }
    }
    pub fn as_sequence_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Sequence(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_mapping_mut(&mut self) -> Option<&mut Mapping> {
        match self {
            Value::Mapping(m) => Some(m),
            _ => None,
        }
    }

    /// As JSON (for `/config_dump`): mappings become objects (non-string keys written as
    /// YAML text), floats that JSON cannot hold become null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(Number::U64(n)) => J::from(*n),
            Value::Number(Number::I64(n)) => J::from(*n),
            Value::Number(Number::F64(f)) => {
                serde_json::Number::from_f64(*f).map_or(J::Null, J::Number)
            }
            Value::Number(Number::TooBig(s)) => J::String(s.to_string()),
            Value::String(s) => J::String(s.clone()),
            Value::Sequence(v) => J::Array(v.iter().map(Value::to_json).collect()),
            Value::Mapping(m) => J::Object(
                m.iter()
                    .map(|(k, v)| {
                        let k = match k {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k, v.to_json())
                    })
                    .collect(),
            ),
            Value::Tagged(t) => t.1.to_json(),
        }
    }

    /// From JSON (xDS resources translated through the same readers as the bootstrap).
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Number(if let Some(u) = n.as_u64() {
                Number::U64(u)
            } else if let Some(i) = n.as_i64() {
                Number::I64(i)
            } else {
                Number::F64(n.as_f64().unwrap_or(f64::NAN))
            }),
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => Value::Sequence(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Mapping(Mapping(
                o.iter()
                    .map(|(k, v)| (Value::String(k.clone()), Value::from_json(v)))
                    .collect(),
            )),
        }
    }
}

/// Short YAML-like text of a value, for error messages.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::String(s) => f.write_str(s),
            Value::Sequence(_) | Value::Mapping(_) => f.write_str(&self.to_json().to_string()),
            Value::Tagged(t) => write!(f, "{} {}", t.0, t.1),
        }
    }
}

static NULL: Value = Value::Null;

/// `value["key"]`: the key's value, or null.
impl std::ops::Index<&str> for Value {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

/// `value[i]`: the sequence's item, or null.
impl std::ops::Index<usize> for Value {
    type Output = Value;
    fn index(&self, i: usize) -> &Value {
        match self {
            Value::Sequence(v) => v.get(i).unwrap_or(&NULL),
            _ => &NULL,
        }
    }
}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

/// A YAML syntax error, or a document this reader refuses (duplicate key, too deep).
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

/// The most nodes aliases may expand to (a "billion laughs" document is refused).
const MAX_ALIAS_NODES: usize = 1_000_000;

/// Reads the first document of `text` (an empty text is `Null`).
pub fn parse(text: &str, max_depth: usize) -> Result<Value, YamlError> {
    enum Frame {
        Seq(Vec<Value>, usize, Option<String>),
        Map(
            Mapping,
            Option<Value>,
            usize,
            Option<String>,
            HashMap<String, ()>,
        ),
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Value> = HashMap::new();
    let mut alias_nodes = 0usize;
    let mut root: Option<Value> = None;
    let err = |mark: &yaml_rust2::scanner::Marker, message: String| YamlError {
        line: mark.line(),
        column: mark.col() + 1,
        message,
    };
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        let (value, anchor, tag) = match event {
            Event::StreamStart | Event::Nothing => continue,
            Event::DocumentStart if root.is_some() => {
                return Err(err(
                    &mark,
                    "more than one YAML document: a bootstrap is one document".into(),
                ))
            }
            Event::DocumentStart | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::SequenceStart(anchor, tag) => {
                if stack.len() >= max_depth {
                    return Err(err(
                        &mark,
                        format!("nesting deeper than {max_depth} levels (the limit)"),
                    ));
                }
                stack.push(Frame::Seq(
                    Vec::new(),
                    anchor,
                    tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                ));
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                if stack.len() >= max_depth {
                    return Err(err(
                        &mark,
                        format!("nesting deeper than {max_depth} levels (the limit)"),
                    ));
                }
                stack.push(Frame::Map(
                    Mapping::new(),
                    None,
                    anchor,
                    tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                    HashMap::new(),
                ));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(mut v, anchor, tag)) => {
                    // Most lists and mappings of a config hold one or two entries: no spare
                    // capacity is kept (it would double the tree).
                    v.shrink_to_fit();
                    (Value::Sequence(v), anchor, tag)
                }
                _ => return Err(err(&mark, "unbalanced sequence end".into())),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(mut m, None, anchor, tag, _)) => {
                    m.0.shrink_to_fit();
                    (Value::Mapping(m), anchor, tag)
                }
                _ => return Err(err(&mark, "unbalanced mapping end".into())),
            },
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                (resolve(text, style, &mark)?, anchor, tag)
            }
            Event::Alias(id) => {
                let Some(v) = anchors.get(&id) else {
                    return Err(err(&mark, "unknown anchor".into()));
                };
                alias_nodes += count_nodes(v);
                if alias_nodes > MAX_ALIAS_NODES {
                    return Err(err(
                        &mark,
                        format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                    ));
                }
                (v.clone(), 0, None)
            }
        };
        let value = match tag {
            // `!!str`, `!!int` and the like are what the plain value already is.
            Some(t) if !t.starts_with("tag:yaml.org,2002:") && !t.starts_with("!!") => {
                Value::Tagged(Box::new((t, value)))
            }
            _ => value,
        };
        if anchor > 0 {
            anchors.insert(anchor, value.clone());
        }
        match stack.last_mut() {
            None => {
                root = Some(value);
            }
            Some(Frame::Seq(v, ..)) => v.push(value),
            Some(Frame::Map(m, key, _, _, seen)) => match key.take() {
                None => *key = Some(value),
                Some(k) => {
                    if let Value::String(s) = &k {
                        if seen.insert(s.clone(), ()).is_some() {
                            return Err(err(&mark, format!("duplicate entry with key \"{s}\"")));
                        }
                    } else if m.iter().any(|(existing, _)| *existing == k) {
                        return Err(err(&mark, format!("duplicate entry with key {k}")));
                    }
                    m.0.push((k, value));
                }
            },
        }
    }
    Ok(root.unwrap_or(Value::Null))
}

fn count_nodes(v: &Value) -> usize {
    let mut n = 0;
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        n += 1;
        match v {
            Value::Sequence(s) => todo.extend(s.iter()),
            Value::Mapping(m) => {
                for (k, v) in m.iter() {
                    todo.push(k);
                    todo.push(v);
                }
            }
            Value::Tagged(t) => todo.push(&t.1),
            _ => {}
        }
    }
    n
}

/// YAML 1.2 core schema resolution of a scalar.
fn resolve(
    text: String,
    style: TScalarStyle,
    mark: &yaml_rust2::scanner::Marker,
) -> Result<Value, YamlError> {
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text));
    }
    let t = text.as_str();
    match t {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Ok(Value::Number(Number::F64(f64::INFINITY)))
        }
        "-.inf" | "-.Inf" | "-.INF" => return Ok(Value::Number(Number::F64(f64::NEG_INFINITY))),
        ".nan" | ".NaN" | ".NAN" => return Ok(Value::Number(Number::F64(f64::NAN))),
        _ => {}
    }
    let int = |digits: &str, radix: u32, negative: bool| -> Value {
        match u64::from_str_radix(digits, radix) {
            Ok(n) if !negative => Value::Number(Number::U64(n)),
            Ok(n) => match i64::try_from(n) {
                Ok(i) => Value::Number(Number::I64(-i)),
                Err(_) if n == 1u64 << 63 => Value::Number(Number::I64(i64::MIN)),
                Err(_) => Value::Number(Number::TooBig(t.into())),
            },
            Err(_) => Value::Number(Number::TooBig(t.into())),
        }
    };
    let (negative, unsigned) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(int(unsigned, 10, negative));
    }
    if let Some(hex) = t.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(int(hex, 16, false));
        }
    }
    if let Some(oct) = t.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Ok(int(oct, 8, false));
        }
    }
    if is_float(unsigned) {
        if let Ok(f) = t.parse::<f64>() {
            return Ok(Value::Number(Number::F64(f)));
        }
    }
    let _ = mark;
    Ok(Value::String(text))
}

/// `[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?` or `\.[0-9]+(...)?` (the core schema's floats).
fn is_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}

/// `parse` for tests: panics on an error.
#[cfg(test)]
pub fn parse_test(text: &str) -> Result<Value, YamlError> {
    parse(text, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Value {
        parse(s, 128).unwrap()
    }

    #[test]
    fn scalars_resolve_as_the_core_schema() {
        let v = p("a: ~\nb: true\nc: 42\nd: -7\ne: 0x1F\nf: 0o17\ng: 1.5\nh: .inf\ni: 1e3\nj: '42'\nk: yes\nl: 99999999999999999999\nm: \"\"\nn: 5s\no: a-b\n");
        let m = |k: &str| v.get(k).unwrap().clone();
        assert_eq!(m("a"), Value::Null);
        assert_eq!(m("b"), Value::Bool(true));
        assert_eq!(m("c"), Value::Number(Number::U64(42)));
        assert_eq!(m("d"), Value::Number(Number::I64(-7)));
        assert_eq!(m("e"), Value::Number(Number::U64(31)));
        assert_eq!(m("f"), Value::Number(Number::U64(15)));
        assert_eq!(m("g"), Value::Number(Number::F64(1.5)));
        assert_eq!(m("h"), Value::Number(Number::F64(f64::INFINITY)));
        assert_eq!(m("i"), Value::Number(Number::F64(1000.0)));
        assert_eq!(m("j"), Value::String("42".into()));
        assert_eq!(m("k"), Value::String("yes".into()));
        assert!(matches!(m("l"), Value::Number(Number::TooBig(_))));
        assert_eq!(m("m"), Value::String(String::new()));
        assert_eq!(m("n"), Value::String("5s".into()));
        assert_eq!(m("o"), Value::String("a-b".into()));
    }

    #[test]
    fn json_documents_and_flow_style_read_the_same() {
        let a = p(r#"{"x": [1, {"y": "z"}], "w": null}"#);
        let b = p("x:\n- 1\n- y: z\nw:\n");
        assert_eq!(a, b);
        assert_eq!(
            a.to_json(),
            serde_json::json!({"x": [1, {"y": "z"}], "w": null})
        );
    }

    #[test]
    fn duplicate_keys_deep_nesting_and_alias_bombs_are_refused() {
        let e = parse("a: 1\nb: 2\na: 3\n", 128).unwrap_err();
        assert!(e.message.contains("duplicate entry with key \"a\""), "{e}");
        assert_eq!(e.line, 3);
        let nested: String = (0..200).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        let e = parse(&nested, 128).unwrap_err();
        assert!(e.message.contains("nesting deeper than 128 levels"), "{e}");
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let e = parse(&bomb, 128).unwrap_err();
        assert!(e.message.contains("aliases expand to more than"), "{e}");
        // Anchors and aliases within the budget work.
        let v = p("a: &x {k: 1}\nb: *x\n");
        assert_eq!(v.get("a"), v.get("b"));
    }

    #[test]
    fn one_document_only() {
        assert!(parse("---\na: 1\n...\n", 128).is_ok());
        let e = parse("a: 1\n---\nb: 2\n", 128).unwrap_err();
        assert!(e.message.contains("more than one YAML document"), "{e}");
        assert_eq!(parse("", 128).unwrap(), Value::Null);
        assert_eq!(parse("# only a comment\n", 128).unwrap(), Value::Null);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("static_resources:\n  listeners: [\n", 128).unwrap_err();
        assert!(e.line >= 2, "{e}");
        let e = parse("a: !custom 1\n", 128).unwrap();
        assert!(matches!(e.get("a"), Some(Value::Tagged(_))));
    }
}
