//! Locating the workspace's own binaries (submitter, worker, local run) from a test or from
//! another binary: they are built into the same `target/<profile>/` directory.

use std::path::PathBuf;

use anyhow::{bail, Context};

/// The path of binary `name` built in the same profile as the running executable.
/// Errors with the command to run when it has not been built.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("the executable has no directory")?;
    // Test executables live in target/<profile>/deps, examples in target/<profile>/examples.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir
            .parent()
            .context("the executable's directory has no parent")?;
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --release --bins` (scripts/test does)",
            path.display()
        );
    }
    Ok(path)
}
