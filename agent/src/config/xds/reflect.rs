//! Envoy API messages rendered by reflection: the HTTP connection manager, route
//! configurations and what nests in them, read from their descriptors (compiled by
//! `build.rs` from the `.proto` files of `envoy-types`) and printed as the proto3 JSON Envoy
//! would print. Every set field appears with its value, so the field tables judge each one
//! exactly as for the bootstrap. An `Any` of a type outside the descriptors becomes
//! `{"@type": …}` alone, so the reader names it (an unsupported filter, say).

use super::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, ReflectMessage, Value};
use serde_json::{json, Map, Value as Json};
use std::sync::LazyLock;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/envoy.bin"))[..])
        .expect("descriptors compiled by build.rs decode")
});

/// Deepest nesting rendered; a message nested deeper (only a hostile one) stops there.
const MAX_DEPTH: usize = 64;

/// The JSON of `any` when its type is known (`None` for unknown types and undecodable
/// bytes: the caller reports those).
pub fn any_json(any: &Any) -> Option<Json> {
    let name = any.type_url.rsplit('/').next()?;
    let desc = POOL.get_message_by_name(name)?;
    let msg = DynamicMessage::decode(desc, any.value.as_slice()).ok()?;
    let mut j = message_json(&msg, 0);
    if let Json::Object(m) = &mut j {
        m.insert("@type".into(), json!(any.type_url));
    }
    Some(j)
}

/// Decodes `bytes` as message `full_name` and renders it.
pub fn decode_json(full_name: &str, bytes: &[u8]) -> Result<Json, String> {
    let desc = POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("no descriptor for {full_name}"))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    Ok(message_json(&msg, 0))
}

fn duration_json(m: &DynamicMessage) -> Json {
    let get = |n: &str| m.get_field_by_name(n).map(|v| v.into_owned());
    let secs = match get("seconds") {
        Some(Value::I64(s)) => s,
        _ => 0,
    };
    let nanos = match get("nanos") {
        Some(Value::I32(n)) => n,
        _ => 0,
    };
    if nanos == 0 {
        json!(format!("{secs}s"))
    } else {
        let s = format!("{:.9}", secs as f64 + nanos as f64 / 1e9);
        json!(format!(
            "{}s",
            s.trim_end_matches('0').trim_end_matches('.')
        ))
    }
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn message_json(m: &DynamicMessage, depth: usize) -> Json {
    if depth > MAX_DEPTH {
        return json!({"too_deep": {}});
    }
    let name = m.descriptor().full_name().to_string();
    match name.as_str() {
        "google.protobuf.Duration" => return duration_json(m),
        "google.protobuf.BoolValue"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.Int64Value"
        | "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => {
            let f = m
                .descriptor()
                .get_field_by_name("value")
                .expect("wrapper value");
            return value_json(&m.get_field(&f), &f.kind(), depth);
        }
        "google.protobuf.Struct" => {
            let f = m
                .descriptor()
                .get_field_by_name("fields")
                .expect("struct fields");
            return value_json(&m.get_field(&f), &f.kind(), depth);
        }
        "google.protobuf.Value" => {
            return match m.fields().next() {
                Some((f, v)) if f.name() == "null_value" => {
                    let _ = v;
                    Json::Null
                }
                Some((f, v)) => value_json(v, &f.kind(), depth),
                None => Json::Null,
            };
        }
        "google.protobuf.ListValue" => {
            let f = m
                .descriptor()
                .get_field_by_name("values")
                .expect("list values");
            return value_json(&m.get_field(&f), &f.kind(), depth);
        }
        "google.protobuf.Any" => {
            let url = match m.get_field_by_name("type_url").map(|v| v.into_owned()) {
                Some(Value::String(s)) => s,
                _ => String::new(),
            };
            let value = match m.get_field_by_name("value").map(|v| v.into_owned()) {
                Some(Value::Bytes(b)) => b.to_vec(),
                _ => Vec::new(),
            };
            return any_json(&Any {
                type_url: url.clone(),
                value,
            })
            .unwrap_or_else(|| json!({"@type": url}));
        }
        _ => {}
    }
    let mut out = Map::new();
    for (f, v) in m.fields() {
        out.insert(f.name().to_string(), value_json(v, &f.kind(), depth));
    }
    Json::Object(out)
}

fn value_json(v: &Value, kind: &Kind, depth: usize) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F32(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(base64(b)),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(ev) => json!(ev.name()),
                None => json!(n),
            },
            _ => json!(n),
        },
        Value::Message(m) => message_json(m, depth + 1),
        Value::List(items) => {
            Json::Array(items.iter().map(|i| value_json(i, kind, depth)).collect())
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut keys: Vec<&MapKey> = entries.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                let key = match k {
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                    MapKey::String(s) => s.clone(),
                };
                out.insert(key, value_json(&entries[k], &value_kind, depth));
            }
            Json::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
