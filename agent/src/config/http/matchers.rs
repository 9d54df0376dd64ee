//! Matchers of a route: headers, strings, regexes (compiled once, under a size limit),
//! query parameters.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;
use crate::config::yaml::Value;

use Field::{Ignored as I, Rejected as R, Supported as S};

/// Compiled size a route regex may take (as the admin's stats filter).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(super) const HEADER_MATCHER: FieldTable = &[
    ("name", S),
    ("exact_match", S),
    ("safe_regex_match", S),
    ("range_match", S),
    ("present_match", S),
    ("prefix_match", S),
    ("suffix_match", S),
    ("contains_match", S),
    ("string_match", S),
    ("invert_match", S),
    ("treat_missing_header_as_empty", S),
];

pub(crate) const STRING_MATCHER: FieldTable = &[
    ("exact", S),
    ("prefix", S),
    ("suffix", S),
    ("safe_regex", S),
    ("contains", S),
    ("custom", R("custom matchers are not supported")),
    ("ignore_case", S),
];

pub(super) const REGEX_MATCHER: FieldTable = &[
    ("regex", S),
    (
        "google_re2",
        I("RE2 limits are replaced by a 1 MiB compiled-size limit"),
    ),
];

pub(super) const REGEX_REWRITE: FieldTable = &[("pattern", S), ("substitution", S)];

pub(super) const INT64_RANGE: FieldTable = &[("start", S), ("end", S)];

pub(super) const QUERY_PARAMETER_MATCHER: FieldTable =
    &[("name", S), ("string_match", S), ("present_match", S)];

pub(super) fn pattern(o: &Obj, key: &str, d: &mut Diagnostics) -> Option<Pattern> {
    let m = o.object(key, REGEX_MATCHER, d)?;
    let source = m.required_string("regex", d)?;
    match regex::RegexBuilder::new(&source)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(regex) => Some(Pattern { source, regex }),
        Err(e) => {
            d.error(m.at("regex"), format!("invalid regex: {e}"));
            None
        }
    }
}

pub(crate) fn read_string_matcher(s: &Obj, d: &mut Diagnostics) -> Option<StringMatcher> {
    let ignore_case = s.boolean("ignore_case", d).unwrap_or(false);
    let fold = |v: String| {
        if ignore_case {
            v.to_ascii_lowercase()
        } else {
            v
        }
    };
    let kinds = ["exact", "prefix", "suffix", "safe_regex", "contains"];
    let given: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| s.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            &s.path,
            "exactly one of exact, prefix, suffix, safe_regex or contains is required",
        );
        return None;
    }
    let kind = match given[0] {
        "exact" => StringMatch::Exact(fold(s.string("exact", d)?)),
        "prefix" => StringMatch::Prefix(fold(s.string("prefix", d)?)),
        "suffix" => StringMatch::Suffix(fold(s.string("suffix", d)?)),
        "contains" => StringMatch::Contains(fold(s.string("contains", d)?)),
        _ => StringMatch::Regex(pattern(s, "safe_regex", d)?),
    };
    Some(StringMatcher { kind, ignore_case })
}

pub(crate) fn read_header_matcher(
    v: &Value,
    path: &str,
    d: &mut Diagnostics,
) -> Option<HeaderMatcher> {
    let h = Obj::new(v, path, HEADER_MATCHER, d)?;
    let name = h.required_string("name", d)?.to_ascii_lowercase();
    let pseudo = matches!(
        name.as_str(),
        ":path" | ":method" | ":authority" | ":scheme"
    );
    if !pseudo && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        d.error(
            h.at("name"),
            format!("\"{name}\" is not a valid header name"),
        );
        return None;
    }
    let specs = [
        "exact_match",
        "safe_regex_match",
        "range_match",
        "present_match",
        "prefix_match",
        "suffix_match",
        "contains_match",
        "string_match",
    ];
    let given: Vec<&str> = specs
        .iter()
        .copied()
        .filter(|k| h.get(k).is_some())
        .collect();
    if given.len() > 1 {
        d.error(
            path,
            format!("at most one of {} may be given", specs.join(", ")),
        );
        return None;
    }
    let plain = |kind| {
        HeaderCheck::String(StringMatcher {
            kind,
            ignore_case: false,
        })
    };
    let check = match given.first().copied() {
        // No specifier: the header must be present.
        None => HeaderCheck::Present(true),
        Some("exact_match") => plain(StringMatch::Exact(h.string("exact_match", d)?)),
        Some("prefix_match") => plain(StringMatch::Prefix(h.string("prefix_match", d)?)),
        Some("suffix_match") => plain(StringMatch::Suffix(h.string("suffix_match", d)?)),
        Some("contains_match") => plain(StringMatch::Contains(h.string("contains_match", d)?)),
        Some("safe_regex_match") => plain(StringMatch::Regex(pattern(&h, "safe_regex_match", d)?)),
        Some("present_match") => HeaderCheck::Present(h.boolean("present_match", d)?),
        Some("range_match") => {
            let r = h.object("range_match", INT64_RANGE, d)?;
            let int = |k: &str, d: &mut Diagnostics| -> Option<i64> {
                let v = r.get(k)?;
                let n = match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                if n.is_none() {
                    d.error(r.at(k), "expected a 64-bit integer");
                }
                n
            };
            let start = int("start", d).unwrap_or(0);
            let end = int("end", d).unwrap_or(0);
            if end <= start {
                d.error(r.at("end"), "must be greater than start");
                return None;
            }
            HeaderCheck::Range(start, end)
        }
        _ => HeaderCheck::String(read_string_matcher(
            &h.object("string_match", STRING_MATCHER, d)?,
            d,
        )?),
    };
    Some(HeaderMatcher {
        name,
        check,
        invert: h.boolean("invert_match", d).unwrap_or(false),
        treat_missing_as_empty: h
            .boolean("treat_missing_header_as_empty", d)
            .unwrap_or(false),
    })
}
