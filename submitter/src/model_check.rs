//! One model per table, checked before a run: the table is keyed by ImageId alone, so a run
//! with another model would overwrite (or, in the workers, refuse image by image as
//! `model_mismatch`) the vectors already there. The submitter samples the table's models and
//! refuses such a run up front unless `--replace-model`.
//!
//! The run's model is what `--model-spec` names inside the worker's container. The submitter
//! reads that file when it exists here too (a local run, or a copy of the image's spec at the
//! same path); else it knows the specs the image ships (`models/*.toml`, copied by
//! docker/Dockerfile into `/opt/embatch/models/`) by file name.

use std::path::Path;

use embatch_formats::spec::ModelSpec;
use embatch_records::reader::{StoredModel, TableReader};

use crate::InputError;

/// Items the check reads: one Scan page of model attributes only (about 10 read units).
pub const SAMPLE_ITEMS: i32 = 100;

/// The specs the image ships, by file name in `/opt/embatch/models/`.
const SHIPPED: [(&str, &str); 3] = [
    (
        "resnet18-v1-7.toml",
        include_str!("../../models/resnet18-v1-7.toml"),
    ),
    (
        "resnet18-v2-7.toml",
        include_str!("../../models/resnet18-v2-7.toml"),
    ),
    // The image's default spec: docker/Dockerfile links it to its build argument MODEL_SPEC,
    // resnet18-v2-7.toml unless the image was built with another.
    (
        "resnet18-v2.toml",
        include_str!("../../models/resnet18-v2-7.toml"),
    ),
];

/// The model the run's workers load: the spec at `path` on this machine, else the shipped
/// spec of that file name; `None` when neither exists (a spec of the user's own image).
pub fn run_model(path: &str) -> Result<Option<ModelSpec>, InputError> {
    let local = Path::new(path);
    if local.is_file() {
        return ModelSpec::from_path(local)
            .map(Some)
            .map_err(|e| InputError(format!("--model-spec {path}: {e}")));
    }
    let Some(name) = local.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let Some((_, text)) = SHIPPED.iter().find(|(file, _)| *file == name) else {
        return Ok(None);
    };
    let dir = local.parent().unwrap_or(Path::new("/"));
    ModelSpec::from_toml(text, dir)
        .map(Some)
        .map_err(|e| InputError(format!("the shipped spec {name}: {e}")))
}

/// Refuses a run of `model` on `table` when a sample of the table holds vectors of another
/// model, unless `replace` (`--replace-model`).
pub async fn check_table_model(
    reader: &TableReader,
    spec_path: &str,
    model: &ModelSpec,
    replace: bool,
) -> anyhow::Result<()> {
    let stored = reader.sample_models(SAMPLE_ITEMS).await?;
    let others: Vec<&StoredModel> = stored.iter().filter(|m| m.sha256 != model.sha256).collect();
    if others.is_empty() {
        return Ok(());
    }
    let described: Vec<String> = others.iter().map(|m| describe(m)).collect();
    let theirs = described.join(", ");
    if replace {
        tracing::warn!(
            table = reader.table(),
            "--replace-model: this run overwrites vectors of {theirs}"
        );
        return Ok(());
    }
    Err(InputError(format!(
        "table {} holds vectors of another model ({theirs}, seen in a sample of {SAMPLE_ITEMS} items) than this run's ({}: {}, sha256 {}, {}-d); the table is keyed by ImageId alone and holds one model's vectors. Use a table per model, or pass --replace-model to overwrite them{}",
        reader.table(),
        spec_path,
        model.name,
        model.sha256,
        model.dimension,
        alias_hint(spec_path),
    ))
    .into())
}

/// `resnet18-v2 (sha256 …, 512-d)`
fn describe(model: &StoredModel) -> String {
    let name = model.name.as_deref().unwrap_or("unnamed");
    match model.dimension {
        Some(d) => format!("{name}, sha256 {}, {d}-d", model.sha256),
        None => format!("{name}, sha256 {}", model.sha256),
    }
}

/// The default spec is a link whose target the image's build chose.
fn alias_hint(spec_path: &str) -> &'static str {
    if spec_path.ends_with("/resnet18-v2.toml") && !Path::new(spec_path).is_file() {
        " (resnet18-v2.toml is taken as the image's default, resnet18-v2-7.toml: for an image built with another MODEL_SPEC, pass --model-spec /opt/embatch/models/<that spec>)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_specs_are_found_by_file_name() {
        let v2 = run_model("/opt/embatch/models/resnet18-v2.toml")
            .unwrap()
            .unwrap();
        assert_eq!(v2.name, "resnet18-v2-7");
        assert_eq!(v2.dimension, 512);
        let v1 = run_model("/no/such/dir/resnet18-v1-7.toml")
            .unwrap()
            .unwrap();
        assert_eq!(v1.name, "resnet18-v1-7");
        assert_ne!(v1.sha256, v2.sha256);
        assert!(run_model("/opt/custom/mine.toml").unwrap().is_none());
    }

    #[test]
    fn a_local_spec_is_read_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet18-v2.toml");
        std::fs::write(&path, SHIPPED[0].1).unwrap();
        let spec = run_model(path.to_str().unwrap()).unwrap().unwrap();
        assert_eq!(
            spec.name, "resnet18-v1-7",
            "the local file wins over the shipped name"
        );
        std::fs::write(&path, "name = 3").unwrap();
        let err = run_model(path.to_str().unwrap()).unwrap_err();
        assert!(err.0.starts_with("--model-spec "), "{err}");
    }
}
