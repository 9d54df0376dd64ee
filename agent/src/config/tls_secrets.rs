//! Secrets in the configuration: `SdsSecretConfig` references (a static secret, SDS over
//! ADS, or a file), file-based SDS files, the bootstrap's `static_resources.secrets[]`, and
//! the check that static names exist with the right kind.

use super::tls::*;
use super::walk::{Diagnostics, Obj};
use super::yaml::Value;
use super::DataSource;
use std::time::Duration;

/// An `SdsSecretConfig`: a static secret (no `sds_config`), one from the ADS stream, or one
/// from a file.
pub(super) fn read_sds_ref<T>(o: &Obj, d: &mut Diagnostics) -> Option<SecretRef<T>> {
    let name = o.required_name("name", d)?;
    let Some(src) = o.object("sds_config", SDS_CONFIG_SOURCE, d) else {
        return Some(SecretRef::Named(name));
    };
    let initial_fetch_timeout = src
        .duration("initial_fetch_timeout", d)
        .unwrap_or(Duration::from_secs(15));
    let path = match (
        src.get("ads"),
        src.get("path_config_source"),
        src.get("path"),
    ) {
        (Some(_), None, None) => {
            return Some(SecretRef::Sds {
                name,
                initial_fetch_timeout,
            })
        }
        (None, Some(_), None) => {
            let p = src.object("path_config_source", PATH_CONFIG_SOURCE, d)?;
            // The directory is watched through the file itself: its changes (a symlink
            // swapped by Kubernetes) are seen when the file is polled.
            if let Some(w) = p.object("watched_directory", WATCHED_DIRECTORY, d) {
                let _ = w.required_string("path", d);
            }
            p.required_string("path", d)?
        }
        (None, None, Some(_)) => src.required_string("path", d)?,
        _ => {
            d.error(
                &src.path,
                "expected exactly one of ads, path_config_source or path",
            );
            return None;
        }
    };
    if path.is_empty() {
        d.error(src.at("path"), "must not be empty");
        return None;
    }
    let path = std::path::PathBuf::from(path);
    // Read now: a file that is missing or holds no such secret is refused with its path.
    if let Err(e) = read_secret_file(&path, &name) {
        d.error(&src.path, e);
        return None;
    }
    Some(SecretRef::File { name, path })
}

/// Secret `name` from a file-based SDS file: a DiscoveryResponse in YAML or JSON whose
/// `resources` are Secrets.
pub fn read_secret_file(path: &std::path::Path, name: &str) -> Result<SecretKind, String> {
    let text = crate::tls::material::read(&DataSource::File(path.to_path_buf()))?;
    let text = String::from_utf8(text).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let v = super::yaml::parse(&text, super::MAX_YAML_DEPTH)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut d = Diagnostics::default();
    let at = path.display().to_string();
    let Some(resources) = v.get("resources") else {
        return Err(format!(
            "{at}: no resources (expected a DiscoveryResponse of Secrets)"
        ));
    };
    let Value::Sequence(items) = resources else {
        return Err(format!("{at}: resources: expected a list"));
    };
    for (i, item) in items.iter().enumerate() {
        if item.get("name").and_then(|n| n.as_str()) != Some(name) {
            continue;
        }
        let rpath = format!("{at}: resources[{i}]");
        let secret = read_secret(item, &rpath, &mut d);
        return match (secret, d.errors.first()) {
            (Some(s), None) => Ok(s.kind),
            (_, Some(e)) => Err(format!("{}: {}", e.path, e.message)),
            (None, None) => Err(format!("{rpath}: not a secret")),
        };
    }
    Err(format!("{at}: no secret named \"{name}\""))
}

/// `static_resources.secrets[]`.
pub(crate) fn read_secret(v: &Value, path: &str, d: &mut Diagnostics) -> Option<Secret> {
    let s = Obj::new(v, path, SECRET, d)?;
    let name = s.required_name("name", d)?;
    let given: Vec<&str> = ["tls_certificate", "validation_context", "generic_secret"]
        .into_iter()
        .filter(|k| s.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            path,
            "expected exactly one of tls_certificate, validation_context or generic_secret",
        );
        return None;
    }
    let kind = match given[0] {
        "tls_certificate" => SecretKind::Certificate(read_certificate(
            s.get("tls_certificate")?,
            &s.at("tls_certificate"),
            d,
        )?),
        "validation_context" => SecretKind::Validation(read_validation(
            &s.object("validation_context", CERT_VALIDATION_CONTEXT, d)?,
            d,
        )),
        _ => {
            let g = s.object("generic_secret", GENERIC_SECRET, d)?;
            let ds = g
                .required("secret", d)
                .and_then(|_| g.object("secret", DATA_SOURCE, d))
                .and_then(|o| read_data_source(&o, d))?;
            SecretKind::Generic(ds)
        }
    };
    Some(Secret { name, kind })
}

/// Checks that the secrets `common` names are static secrets of the right kind.
pub fn check_names(common: &CommonTls, secrets: &[Secret]) -> Result<(), String> {
    let find = |n: &str| secrets.iter().find(|s| s.name == n);
    for c in &common.certificates {
        if let SecretRef::Named(n) = c {
            match find(n).map(|s| &s.kind) {
                Some(SecretKind::Certificate(_)) => {}
                Some(_) => return Err(format!("secret \"{n}\" is not a tls_certificate")),
                None => return Err(format!("unknown secret \"{n}\" (static_resources.secrets)")),
            }
        }
    }
    if let Some(SecretRef::Named(n)) = &common.validation {
        match find(n).map(|s| &s.kind) {
            Some(SecretKind::Validation(_)) => {}
            Some(_) => return Err(format!("secret \"{n}\" is not a validation_context")),
            None => return Err(format!("unknown secret \"{n}\" (static_resources.secrets)")),
        }
    }
    Ok(())
}
