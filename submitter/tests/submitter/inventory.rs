//! `embatch submit --inventory`: an S3 Inventory report of the emulator's bucket, written as
//! AWS documents it (the emulator makes none), gives the same counts and the same manifests
//! as listing the same objects; a file whose MD5 differs from its manifest's is refused.

use crate::common;

use common::{Fixture, Output};
use embatch_formats::manifest::parse_jsonl;
use embatch_formats::run::RunLayout;
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::inventory_report::{self, Format, Row};
use serde_json::Value;

/// Writes a report of the bucket, plus rows a versioned bucket's inventory holds and a
/// listing does not show (a noncurrent version, a delete marker), under `folder`.
async fn write_report(f: &Fixture, format: Format, folder: &str, corrupt: bool) -> S3Uri {
    let mut rows = inventory_report::current_objects(&f.s3, &f.bucket).await;
    for (key, latest, delete_marker) in [
        ("photos/old.jpg", false, false),
        ("photos/gone.jpg", true, true),
    ] {
        rows.push(Row {
            key: key.into(),
            size: 10,
            etag: "0".into(),
            latest,
            delete_marker,
        });
    }
    let folder = S3Uri::new(&f.bucket, format!("inventories/{}/{folder}/", f.bucket));
    inventory_report::write(&f.s3, &f.bucket, &rows, format, &folder, corrupt).await
}

async fn submit(f: &Fixture, extra: &[String]) -> Output {
    let mut args = f.submit_args();
    args.extend(["--images-per-job".to_string(), "7".to_string()]);
    args.extend(extra.iter().cloned());
    args.push("photos/".into());
    f.embatch(&args, None).await
}

/// Every manifest line of a submitted run, in order.
async fn manifest_lines(f: &Fixture, summary: &Value) -> Vec<String> {
    let layout = RunLayout::from_root(S3Uri::parse(summary["run_uri"].as_str().unwrap()).unwrap());
    let mut lines = Vec::new();
    for i in 0..summary["manifests"].as_u64().unwrap() as usize {
        let uri = layout.manifest(i);
        for line in parse_jsonl(&f.get(&uri.bucket, &uri.key).await, &uri.to_string()).unwrap() {
            lines.push(format!(
                "{} {} {} {}",
                line.image_id, line.key, line.size, line.etag
            ));
        }
    }
    // A listing's order depends on how its ranges were split; the lines do not.
    lines.sort();
    lines
}

#[tokio::test]
async fn an_inventory_gives_the_listings_counts_and_manifests_and_a_bad_checksum_is_refused() {
    let f = Fixture::new().await;
    let mut keys: Vec<String> = (0..20).map(|i| format!("photos/{i:02}.jpg")).collect();
    keys.extend(
        [
            "photos/a b.png",
            "photos/ünï 日本.jpeg",
            "photos/a+b,c%.jpg",
            "photos/notes.txt",
            "elsewhere/x.jpg",
        ]
        .map(String::from),
    );
    f.put_all(&f.bucket, &keys, b"image bytes").await;
    f.put_all(
        &f.bucket,
        &["photos/".to_string(), "photos/empty.jpg".to_string()],
        b"",
    )
    .await;

    let listed = submit(&f, &[]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let listed = listed.json();
    let want = manifest_lines(&f, &listed).await;
    assert_eq!(want.len(), 23);
    for format in [Format::Csv, Format::Parquet] {
        let manifest = write_report(&f, format, "daily", false).await;
        let out = submit(&f, &["--inventory".into(), manifest.to_string()]).await;
        assert_eq!(out.code, 0, "{format:?}: {}", out.stderr);
        let summary = out.json();
        for count in [
            "objects",
            "duplicates",
            "directory_markers",
            "not_images",
            "empty",
            "images",
        ] {
            assert_eq!(
                summary["listing"][count], listed["listing"][count],
                "{format:?} {count}"
            );
        }
        assert_eq!(summary["listing"]["inventory_files"], 2);
        assert_eq!(summary["listing"]["pages"], 0, "{format:?}: listed instead");
        assert_eq!(manifest_lines(&f, &summary).await, want, "{format:?}");

        let bad = write_report(&f, format, "bad", true).await;
        let jobs = f.jobs_in_queue().await;
        let out = submit(&f, &["--inventory".into(), bad.to_string()]).await;
        assert_eq!(out.code, 2, "{format:?}: {}", out.stderr);
        let named = format!("bad/data/{}-1.", format.name());
        assert!(
            out.stderr.contains(&named) && out.stderr.contains("MD5"),
            "{}",
            out.stderr
        );
        assert_eq!(
            f.jobs_in_queue().await,
            jobs,
            "{format:?}: submitted despite a bad checksum"
        );
    }
}
