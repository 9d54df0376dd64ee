//! Every secret TLS contexts use, and their rotation: the bootstrap's static `secrets`, SDS
//! secrets from the ADS stream (a slot per name, held by the contexts that name it, so the
//! subscription follows the configuration in force), and files — certificate and key files,
//! CA bundles, file-based SDS — polled for changes (a Kubernetes secret volume swaps a
//! symlink: the file reached through it changes identity).
//!
//! Each TLS context registers what it depends on; when one of those changes the context
//! rebuilds its rustls configuration and swaps it in. New handshakes see the new certificate;
//! established connections keep theirs. A rebuild that fails (a bad new certificate, a key
//! that does not match) keeps the old configuration serving and is counted.

use crate::config::tls::{
    read_secret_file, CommonTls, Secret, SecretKind, SecretRef, TlsCertificate, Validation,
};
use crate::config::DataSource;
use crate::stats::{Counter, Gauge, Store};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// How often watched files are checked for changes.
pub const FILE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// A TLS context that can rebuild itself from the secrets and files it depends on.
pub trait Reload: Send + Sync {
    /// Rebuilds and swaps in the configuration; on failure the old one keeps serving.
    fn reload(&self, secrets: &Secrets) -> Result<(), String>;
    /// The files it reads now (to watch).
    fn files(&self, secrets: &Secrets) -> Vec<PathBuf>;
    /// The static and SDS secret names it uses.
    fn names(&self) -> Vec<String>;
    /// What it is, for logs (`listener front chain 0`, `cluster backend`).
    fn describe(&self) -> String;
}

/// One SDS secret, held by the contexts that name it.
#[derive(Debug)]
pub struct SecretSlot {
    pub name: String,
    value: ArcSwapOption<SecretKind>,
    state: Mutex<(String, SystemTime)>,
    released: Arc<tokio::sync::Notify>,
}

impl Drop for SecretSlot {
    fn drop(&mut self) {
        self.released.notify_one();
    }
}

impl SecretSlot {
    pub fn value(&self) -> Option<Arc<SecretKind>> {
        self.value.load_full()
    }

    pub fn has_value(&self) -> bool {
        self.value.load().is_some()
    }

    /// The version and time of the value.
    pub fn version(&self) -> (String, SystemTime) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A file's identity and content stamp: a change of any of them is a change of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(p: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

struct Watched {
    ctx: Weak<dyn Reload>,
    files: Vec<PathBuf>,
    names: Vec<String>,
}

#[derive(Debug)]
struct RotationStats {
    /// Contexts rebuilt after a change (Plumb's `tls.context_reloads`).
    reloads: Arc<Counter>,
    /// Rebuilds refused (the old configuration kept serving).
    reload_failures: Arc<Counter>,
    /// TLS contexts alive (`tls.contexts_active`) and SDS secrets held
    /// (`tls.sds_secrets_active`): they follow the configuration in force.
    contexts: Arc<Gauge>,
    sds_secrets: Arc<Gauge>,
}

/// The secret store (one per server).
pub struct Secrets {
    statics: ArcSwap<Vec<Secret>>,
    slots: Mutex<HashMap<String, Weak<SecretSlot>>>,
    released: Arc<tokio::sync::Notify>,
    watched: Mutex<Vec<Watched>>,
    stamps: Mutex<HashMap<PathBuf, Option<Stamp>>>,
    stats: Option<RotationStats>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("statics", &self.statics.load().len())
            .finish_non_exhaustive()
    }
}

impl Default for Secrets {
    fn default() -> Self {
        Self::new(Vec::new(), None)
    }
}

impl Secrets {
    pub fn new(statics: Vec<Secret>, store: Option<&Store>) -> Self {
        Self {
            statics: ArcSwap::from_pointee(statics),
            slots: Mutex::new(HashMap::new()),
            released: Arc::new(tokio::sync::Notify::new()),
            watched: Mutex::new(Vec::new()),
            stamps: Mutex::new(HashMap::new()),
            stats: store.map(|s| {
                let s = s.root_scope("tls");
                RotationStats {
                    reloads: s.counter("context_reloads"),
                    reload_failures: s.counter("context_reload_failures"),
                    contexts: s.gauge("contexts_active"),
                    sds_secrets: s.gauge("sds_secrets_active"),
                }
            }),
        }
    }

    pub fn statics(&self) -> Arc<Vec<Secret>> {
        self.statics.load_full()
    }

    /// The bootstrap's secrets changed (a reload): contexts that name them rebuild.
    pub fn set_statics(&self, secrets: Vec<Secret>) {
        let before = self.statics.load_full();
        let changed: Vec<String> = secrets
            .iter()
            .filter(|s| !before.iter().any(|b| b == *s))
            .map(|s| s.name.clone())
            .chain(
                before
                    .iter()
                    .filter(|b| !secrets.iter().any(|s| s.name == b.name))
                    .map(|b| b.name.clone()),
            )
            .collect();
        self.statics.store(Arc::new(secrets));
        for n in changed {
            self.reload_dependents(|w| w.names.contains(&n));
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<SecretSlot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of SDS secret `name`, created (empty) if no one holds it.
    pub fn slot(&self, name: &str) -> Arc<SecretSlot> {
        let mut slots = self.slots();
        if let Some(s) = slots.get(name).and_then(Weak::upgrade) {
            return s;
        }
        slots.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(SecretSlot {
            name: name.to_string(),
            value: ArcSwapOption::empty(),
            state: Mutex::new((String::new(), SystemTime::now())),
            released: self.released.clone(),
        });
        slots.insert(name.to_string(), Arc::downgrade(&s));
        s
    }

    pub fn get_slot(&self, name: &str) -> Option<Arc<SecretSlot>> {
        self.slots().get(name).and_then(Weak::upgrade)
    }

    /// The SDS names someone holds (the SDS subscription).
    pub fn names(&self) -> BTreeSet<String> {
        self.slots()
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The slots held now (for `/config_dump`).
    pub fn held(&self) -> Vec<Arc<SecretSlot>> {
        let mut v: Vec<_> = self.slots().values().filter_map(Weak::upgrade).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Resolves when a slot was dropped (its name may leave the subscription).
    pub async fn released(&self) {
        self.released.notified().await
    }

    /// An SDS secret arrived: stores it and rebuilds the contexts that name it. Returns
    /// whether anyone holds the name.
    pub fn set(&self, name: &str, value: SecretKind, version: &str) -> bool {
        let Some(slot) = self.get_slot(name) else {
            return false;
        };
        // The same secret again (a state-of-the-world re-send): nothing to rebuild.
        if slot.value().is_some_and(|v| *v == value) {
            *slot.state.lock().unwrap_or_else(|p| p.into_inner()) =
                (version.to_string(), SystemTime::now());
            return true;
        }
        slot.value.store(Some(Arc::new(value)));
        *slot.state.lock().unwrap_or_else(|p| p.into_inner()) =
            (version.to_string(), SystemTime::now());
        self.reload_dependents(|w| w.names.iter().any(|n| n == name));
        true
    }

    /// The slots of the SDS secrets `common` names (held by its context: the subscription).
    pub fn hold(&self, common: &CommonTls) -> Vec<Arc<SecretSlot>> {
        common
            .sds_names()
            .iter()
            .map(|(n, _)| self.slot(n))
            .collect()
    }

    /// Registers a new context for rotation (first: a secret arriving meanwhile reloads it),
    /// then builds it; without its secrets yet it stays unbuilt, and `what` says why.
    pub fn start(&self, ctx: Arc<dyn Reload>, what: &str) {
        self.register(Arc::downgrade(&ctx));
        if let Err(e) = ctx.reload(self) {
            tracing::warn!(context = %ctx.describe(), error = %e, "{what}");
        }
    }

    /// Registers a context for rotation.
    pub fn register(&self, ctx: Weak<dyn Reload>) {
        let Some(c) = ctx.upgrade() else { return };
        let files = c.files(self);
        let names = c.names();
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        for f in &files {
            stamps.entry(f.clone()).or_insert_with(|| stamp(f));
        }
        drop(stamps);
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.ctx.strong_count() > 0);
        w.push(Watched { ctx, files, names });
        let n = w.len();
        drop(w);
        self.publish_gauges(Some(n));
    }

    /// Refreshes `tls.contexts_active` and `tls.sds_secrets_active`.
    fn publish_gauges(&self, contexts: Option<usize>) {
        let Some(s) = &self.stats else { return };
        let contexts = contexts.unwrap_or_else(|| self.registered());
        s.contexts.set(contexts as i64);
        s.sds_secrets.set(self.names().len() as i64);
    }

    /// How many contexts are registered now (churn checks).
    pub fn registered(&self) -> usize {
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.ctx.strong_count() > 0);
        w.len()
    }

    fn reload_dependents(&self, pick: impl Fn(&Watched) -> bool) {
        let targets: Vec<Arc<dyn Reload>> = {
            let w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            w.iter()
                .filter(|x| pick(x))
                .filter_map(|x| x.ctx.upgrade())
                .collect()
        };
        for c in targets {
            match c.reload(self) {
                Ok(()) => {
                    tracing::info!(context = %c.describe(), "TLS context reloaded");
                    if let Some(s) = &self.stats {
                        s.reloads.inc();
                    }
                }
                Err(e) => {
                    tracing::error!(context = %c.describe(), error = %e, "TLS context not reloaded: the previous certificates keep serving");
                    if let Some(s) = &self.stats {
                        s.reload_failures.inc();
                    }
                }
            }
            // The files it reads may have changed (an SDS file naming new paths).
            let files = c.files(self);
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            for f in &files {
                stamps.entry(f.clone()).or_insert_with(|| stamp(f));
            }
            drop(stamps);
            let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            for x in w.iter_mut() {
                if x.ctx.upgrade().is_some_and(|y| Arc::ptr_eq(&y, &c)) {
                    x.files = files.clone();
                }
            }
        }
    }

    /// Checks the watched files once; the contexts reading a changed one rebuild.
    pub fn poll_files(&self) {
        self.publish_gauges(None);
        self.slots().retain(|_, w| w.strong_count() > 0);
        let files: BTreeSet<PathBuf> = {
            let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            w.retain(|x| x.ctx.strong_count() > 0);
            w.iter().flat_map(|x| x.files.iter().cloned()).collect()
        };
        let mut changed = Vec::new();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            // Memory follows the files watched now.
            stamps.retain(|p, _| files.contains(p));
            for f in files {
                let now = stamp(&f);
                match stamps.get(&f) {
                    Some(before) if *before == now => {}
                    Some(_) => {
                        stamps.insert(f.clone(), now);
                        changed.push(f);
                    }
                    None => {
                        stamps.insert(f, now);
                    }
                }
            }
        }
        for f in changed {
            tracing::debug!(file = %f.display(), "TLS file changed");
            self.reload_dependents(|w| w.files.contains(&f));
        }
    }

    /// Polls the watched files until `stop`.
    pub async fn watch_files(self: Arc<Self>, mut stop: crate::drain::Watch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FILE_POLL_INTERVAL) => {}
                _ = stop.draining() => return,
            }
            // Stat calls: off the async workers.
            let s = self.clone();
            let _ = tokio::task::spawn_blocking(move || s.poll_files()).await;
        }
    }

    fn resolve(&self, r: &SecretRef<()>) -> Result<Arc<SecretKind>, String> {
        match r {
            SecretRef::Inline(()) => Err("inline".into()),
            SecretRef::Named(n) => self
                .statics
                .load()
                .iter()
                .find(|s| s.name == *n)
                .map(|s| Arc::new(s.kind.clone()))
                .ok_or_else(|| format!("no static secret named \"{n}\"")),
            SecretRef::Sds { name, .. } => self
                .get_slot(name)
                .and_then(|s| s.value())
                .ok_or_else(|| format!("SDS secret \"{name}\" has not arrived")),
            SecretRef::File { name, path } => read_secret_file(path, name).map(Arc::new),
        }
    }

    /// The certificates `common` names or holds.
    pub fn certificates(&self, common: &CommonTls) -> Result<Vec<TlsCertificate>, String> {
        common
            .certificates
            .iter()
            .map(|c| match c {
                SecretRef::Inline(c) => Ok(c.clone()),
                r => match &*self.resolve(&unit(r))? {
                    SecretKind::Certificate(c) => Ok(c.clone()),
                    _ => Err(format!(
                        "secret \"{}\" is not a tls_certificate",
                        ref_name(r)
                    )),
                },
            })
            .collect()
    }

    /// The validation context `common` names or holds, with a combined context's matchers.
    pub fn validation(&self, common: &CommonTls) -> Result<Option<Validation>, String> {
        let mut v = match &common.validation {
            None => return Ok(None),
            Some(SecretRef::Inline(v)) => v.clone(),
            Some(r) => match &*self.resolve(&unit(r))? {
                SecretKind::Validation(v) => v.clone(),
                _ => {
                    return Err(format!(
                        "secret \"{}\" is not a validation_context",
                        ref_name(r)
                    ))
                }
            },
        };
        v.san_matchers
            .extend(common.extra_san_matchers.iter().cloned());
        Ok(Some(v))
    }

    /// The files a context with `common` reads now (data sources and SDS files).
    pub fn files_of(&self, common: &CommonTls) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let add_ds = |ds: &DataSource, out: &mut Vec<PathBuf>| {
            if let DataSource::File(p) = ds {
                out.push(p.clone());
            }
        };
        for r in common
            .certificates
            .iter()
            .map(unit)
            .chain(common.validation.iter().map(unit))
        {
            if let SecretRef::File { path, .. } = &r {
                out.push(path.clone());
            }
        }
        if let Ok(certs) = self.certificates(common) {
            for c in &certs {
                add_ds(&c.chain, &mut out);
                add_ds(&c.key, &mut out);
            }
        }
        if let Ok(Some(v)) = self.validation(common) {
            for ds in v.trusted_ca.iter().chain(v.crl.iter()) {
                add_ds(ds, &mut out);
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The names (static or SDS) `common` uses.
pub fn names_of(common: &CommonTls) -> Vec<String> {
    common
        .certificates
        .iter()
        .map(unit)
        .chain(common.validation.iter().map(unit))
        .filter(|r| !matches!(r, SecretRef::Inline(())))
        .map(|r| ref_name(&r).to_string())
        .collect()
}

fn unit<T>(r: &SecretRef<T>) -> SecretRef<()> {
    match r {
        SecretRef::Inline(_) => SecretRef::Inline(()),
        SecretRef::Named(n) => SecretRef::Named(n.clone()),
        SecretRef::Sds {
            name,
            initial_fetch_timeout,
        } => SecretRef::Sds {
            name: name.clone(),
            initial_fetch_timeout: *initial_fetch_timeout,
        },
        SecretRef::File { name, path } => SecretRef::File {
            name: name.clone(),
            path: path.clone(),
        },
    }
}

fn ref_name<T>(r: &SecretRef<T>) -> &str {
    match r {
        SecretRef::Inline(_) => "",
        SecretRef::Named(n) | SecretRef::Sds { name: n, .. } | SecretRef::File { name: n, .. } => n,
    }
}
