//! `embatch-vectors nearest --image FILE`: a local image embedded by `embatch-worker embed`
//! (the worker's engine and the generated test model) and searched among vectors the same
//! engine computed, in the table and in an npy export; a wrong model and a bad file refused.

use std::path::{Path, PathBuf};
use std::process::Output;

use embatch_localaws::fixture::{record, Cloud};
use embatch_localaws::{bins, sample, test_model};
use embatch_records::nearest::Index;
use embatch_records::vector::VectorRecord;
use serde_json::Value;

use crate::common::{cli, stdout, store};

/// The sample images as files in `dir`, and what `embatch-worker embed` made of each.
struct Embedded {
    files: Vec<PathBuf>,
    records: Vec<VectorRecord>,
    model_sha256: String,
}

/// Embeds a generated sample set with `embatch-worker embed`; the ImageId is the file name.
fn embed_samples(dir: &Path, spec: &Path) -> Embedded {
    let mut files = Vec::new();
    for image in sample::generate(3, 11) {
        let file = dir.join(image.name.replace('/', "-"));
        std::fs::write(&file, &image.bytes).unwrap();
        files.push(file);
    }
    let mut embed = std::process::Command::new(bins::binary("embatch-worker").unwrap());
    embed
        .arg("embed")
        .arg("--model-spec")
        .arg(spec)
        .args(&files);
    let lines: Vec<Value> = stdout(&mut embed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len());
    let model_sha256 = lines[0]["model_sha256"].as_str().unwrap().to_string();
    let records = files
        .iter()
        .zip(&lines)
        .map(|(file, line)| {
            assert_eq!(line["file"].as_str(), file.to_str(), "{line}");
            let mut r = record(&file_id(file), 0, 0);
            r.vector = line["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            r.meta.model_sha256 = Some(model_sha256.clone());
            r
        })
        .collect();
    Embedded {
        files,
        records,
        model_sha256,
    }
}

fn file_id(file: &Path) -> String {
    file.file_name().unwrap().to_string_lossy().into_owned()
}

/// `(image_id, similarity)` of `--json` output.
fn neighbours(out: &Output) -> Vec<(String, f32)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let id = v["image_id"].as_str().unwrap().to_string();
            (id, v["similarity"].as_f64().unwrap() as f32)
        })
        .collect()
}

#[tokio::test]
async fn an_image_file_finds_itself_and_the_same_neighbours_as_its_stored_vector() {
    let s = Cloud::start().await;
    let spec = test_model::resnet18_spec().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let embedded = embed_samples(dir.path(), &spec);
    store(&s, embedded.records.clone()).await;
    let direct = Index::from_records(embedded.records.clone()).unwrap();
    let export = dir.path().join("export");
    stdout(cli(&s).arg("export").arg("--out").arg(&export));

    for query in [&embedded.files[1], &embedded.files[7]] {
        let id = file_id(query);
        // The worker is found beside embatch-vectors (both in target/<profile>/).
        let from_table = neighbours(
            &cli(&s)
                .args(["nearest", "-k", "4", "--json", "--image"])
                .arg(query)
                .arg("--model-spec")
                .arg(&spec)
                .output()
                .unwrap(),
        );
        assert_eq!(from_table[0].0, id, "{from_table:?}");
        assert!(from_table[0].1 > 0.9999, "{from_table:?}");
        // The rest are the stored vector's own neighbours.
        let by_id: Vec<String> = direct
            .nearest_to(&id, 3)
            .unwrap()
            .into_iter()
            .map(|n| n.image_id)
            .collect();
        let rest: Vec<&String> = from_table[1..].iter().map(|(id, _)| id).collect();
        assert_eq!(rest, by_id.iter().collect::<Vec<_>>());

        let out = cli(&s)
            .args(["nearest", "-k", "4", "--json", "--image"])
            .arg(query)
            .arg("--model-spec")
            .arg(&spec)
            .arg("--export")
            .arg(&export)
            .output()
            .unwrap();
        assert_eq!(neighbours(&out), from_table);
        // An npy export does not carry the model: said, not checked.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("do not say which model"), "{stderr}");
    }
    assert_refusals(&s, &embedded, &spec).await;
}

/// A file that is not an image, a missing worker, and vectors of another model.
async fn assert_refusals(s: &Cloud, embedded: &Embedded, spec: &Path) {
    let failed = |out: Output, needles: &[&str]| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    };
    let not_an_image = embedded.files[0].with_file_name("notes.txt");
    std::fs::write(&not_an_image, "not an image").unwrap();
    let nearest = |file: &Path| {
        let mut command = cli(s);
        command
            .args(["nearest", "--image"])
            .arg(file)
            .arg("--model-spec")
            .arg(spec);
        command
    };
    failed(
        nearest(&not_an_image).output().unwrap(),
        &["notes.txt", "unknown_format"],
    );
    // The worker alone: a line for every file, the refused one with its reason, exit 1.
    let out = std::process::Command::new(bins::binary("embatch-worker").unwrap())
        .arg("embed")
        .arg("--model-spec")
        .arg(spec)
        .args([&not_an_image, &embedded.files[2]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["error"], "unknown_format", "{}", lines[0]);
    assert_eq!(lines[1]["dimension"], 512, "{}", lines[1]);
    failed(
        nearest(&embedded.files[0])
            .args(["--worker", "/nonexistent/embatch-worker"])
            .output()
            .unwrap(),
        &["/nonexistent/embatch-worker", "--worker"],
    );

    // The same images, stored as if another model had computed them.
    let other = "cd".repeat(32);
    let mut records = embedded.records.clone();
    records
        .iter_mut()
        .for_each(|r| r.meta.model_sha256 = Some(other.clone()));
    store(s, records).await;
    failed(
        nearest(&embedded.files[0]).output().unwrap(),
        &[&other, &embedded.model_sha256, "--model-spec"],
    );
}
