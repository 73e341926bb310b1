//! Locating the project's Python interpreter (the `.venv` that `scripts/setup` creates).

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // This crate lives at <root>/testkit.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit has a parent directory")
        .to_path_buf()
}

/// The Python interpreter with the project's pinned tools: `$EMBATCH_PYTHON` if set, else
/// `<root>/.venv/bin/python`. Errors with the command to run when it is missing.
pub fn interpreter() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EMBATCH_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/python");
    if venv.exists() {
        Ok(venv)
    } else {
        anyhow::bail!(
            "no Python environment at {}: run `scripts/setup` first (it installs the pinned tools from requirements.txt)",
            venv.display()
        )
    }
}
