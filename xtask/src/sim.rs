//! `cargo xtask sim`: builds Plumb and plumb-sim (release unless `--debug`) and runs a
//! scenario, with the report in `target/sim/<scenario>/`. Its exit status is the simulator's:
//! 0 when every invariant held, 1 when one was violated.

use crate::util::{cargo, root_dir, run};
use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn sim(args: &[String]) -> Result<()> {
    let mut debug = false;
    let mut scenario = "sim/scenarios/rides.yaml".to_string();
    let mut pass = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--debug" => debug = true,
            "--scenario" => scenario = it.next().context("--scenario needs a file")?.clone(),
            "--duration" | "--seed" | "--sabotage" | "--xds" => {
                pass.push(a.clone());
                pass.push(
                    it.next()
                        .with_context(|| format!("{a} needs a value"))?
                        .clone(),
                );
            }
            other => bail!(
                "unknown argument \"{other}\" (cargo xtask sim [--scenario FILE] [--duration 120s] \
                 [--seed N] [--sabotage retries|handover] [--debug])"
            ),
        }
    }
    let mut build = cargo();
    build.args(["build", "-p", "plumb", "-p", "plumb-sim"]);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let profile = if debug { "debug" } else { "release" };
    let root = root_dir();
    let path = root.join(&scenario);
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("scenario")
        .to_string();
    let st = Command::new(root.join(format!("target/{profile}/plumb-sim")))
        .arg("run")
        .arg("--scenario")
        .arg(&path)
        .arg("--report")
        .arg(root.join(format!("target/sim/{name}")))
        .args(&pass)
        .status()
        .context("running plumb-sim")?;
    match st.code() {
        Some(0) => Ok(()),
        Some(1) => bail!("plumb-sim: an invariant was violated (see the report above)"),
        _ => bail!("plumb-sim could not run the scenario ({st})"),
    }
}
