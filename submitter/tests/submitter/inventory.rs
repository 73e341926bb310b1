//! `embatch submit --inventory`: an S3 Inventory report of the emulator's bucket, written as
//! AWS documents it (the emulator makes none), gives the same counts and the same manifests
//! as listing the same objects; a file whose MD5 differs from its manifest's is refused.

use crate::common;

use std::io::Write;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use common::{Fixture, Output};
use embatch_formats::manifest::parse_jsonl;
use embatch_formats::run::RunLayout;
use embatch_formats::s3uri::S3Uri;
use md5::{Digest, Md5};
use serde_json::{json, Value};

/// Where the report goes, as AWS lays it out: `<dest-prefix>/<source-bucket>/<config-id>/`.
const REPORT: &str = "inventories/src/daily";

/// One object as the inventory describes it.
struct Object {
    key: String,
    size: i64,
    etag: String,
    latest: bool,
    delete_marker: bool,
}

/// The bucket's objects (by the SDK's paginator), plus rows a versioned bucket's inventory
/// holds and a listing does not show: a noncurrent version and a delete marker.
async fn inventory_objects(f: &Fixture) -> Vec<Object> {
    let mut pages =
        f.s3.list_objects_v2()
            .bucket(&f.bucket)
            .into_paginator()
            .send();
    let mut objects = Vec::new();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            objects.push(Object {
                key: o.key().unwrap().to_string(),
                size: o.size().unwrap(),
                etag: o.e_tag().unwrap().to_string(),
                latest: true,
                delete_marker: false,
            });
        }
    }
    for (key, latest, delete_marker) in [
        ("photos/old.jpg", false, false),
        ("photos/gone.jpg", true, true),
    ] {
        objects.push(Object {
            key: key.into(),
            size: 10,
            etag: "\"0\"".into(),
            latest,
            delete_marker,
        });
    }
    objects
}

/// A gzip CSV inventory file: every field quoted, keys URL-encoded.
fn csv_file(bucket: &str, objects: &[Object]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for o in objects {
        let key: String = form_urlencoded::byte_serialize(o.key.as_bytes()).collect();
        let size = if o.delete_marker {
            String::new()
        } else {
            o.size.to_string()
        };
        let etag = o.etag.trim_matches('"');
        writeln!(
            gz,
            "\"{bucket}\",\"{key}\",\"v1\",\"{}\",\"{}\",\"{size}\",\"2026-12-01T00:00:00.000Z\",\"{etag}\",\"STANDARD\"",
            o.latest, o.delete_marker
        )
        .unwrap();
    }
    gz.finish().unwrap()
}

/// A Parquet inventory file: keys as they are.
fn parquet_file(bucket: &str, objects: &[Object]) -> Vec<u8> {
    let text = |f: &dyn Fn(&Object) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(objects.iter().map(f)))
    };
    let batch = RecordBatch::try_from_iter([
        ("bucket", text(&|_| bucket.to_string())),
        ("key", text(&|o| o.key.clone())),
        (
            "size",
            Arc::new(Int64Array::from_iter_values(objects.iter().map(|o| o.size))) as ArrayRef,
        ),
        ("e_tag", text(&|o| o.etag.trim_matches('"').to_string())),
        (
            "is_latest",
            Arc::new(BooleanArray::from_iter(
                objects.iter().map(|o| Some(o.latest)),
            )),
        ),
        (
            "is_delete_marker",
            Arc::new(BooleanArray::from_iter(
                objects.iter().map(|o| Some(o.delete_marker)),
            )),
        ),
    ])
    .unwrap();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// Writes the report (two data files, `manifest.json`, `manifest.checksum`) and returns the
/// manifest's URI. `corrupt` gives the second file a wrong MD5 in the manifest.
async fn write_report(f: &Fixture, format: &str, corrupt: bool) -> S3Uri {
    let objects = inventory_objects(f).await;
    let (first, second) = objects.split_at(objects.len() / 2);
    let mut files = Vec::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let (bytes, ext) = match format {
            "CSV" => (csv_file(&f.bucket, part), "csv.gz"),
            _ => (parquet_file(&f.bucket, part), "parquet"),
        };
        let key = format!("{REPORT}/data/{format}-{i}.{ext}");
        let md5 = if corrupt && i == 1 {
            "0".repeat(32)
        } else {
            md5_hex(&bytes)
        };
        files.push(json!({"key": key, "size": bytes.len(), "MD5checksum": md5}));
        f.put(&f.bucket, &key, bytes).await;
    }
    let schema = match format {
        "CSV" => "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass".to_string(),
        _ => "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); optional int64 size; optional binary e_tag (UTF8); optional boolean is_latest; optional boolean is_delete_marker; }".to_string(),
    };
    let manifest = json!({
        "sourceBucket": f.bucket,
        "destinationBucket": format!("arn:aws:s3:::{}", f.bucket),
        "version": "2016-11-30",
        "creationTimestamp": "1764547200000",
        "fileFormat": format,
        "fileSchema": schema,
        "files": files,
    })
    .to_string();
    let folder = format!(
        "{REPORT}/2026-12-01T00-00Z-{format}{}",
        if corrupt { "-bad" } else { "" }
    );
    f.put(
        &f.bucket,
        &format!("{folder}/manifest.checksum"),
        md5_hex(manifest.as_bytes()).into_bytes(),
    )
    .await;
    f.put(
        &f.bucket,
        &format!("{folder}/manifest.json"),
        manifest.into_bytes(),
    )
    .await;
    S3Uri::new(&f.bucket, format!("{folder}/manifest.json"))
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
    for format in ["CSV", "Parquet"] {
        let manifest = write_report(&f, format, false).await;
        let out = submit(&f, &["--inventory".into(), manifest.to_string()]).await;
        assert_eq!(out.code, 0, "{format}: {}", out.stderr);
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
                "{format} {count}"
            );
        }
        assert_eq!(summary["listing"]["inventory_files"], 2);
        assert_eq!(summary["listing"]["pages"], 0, "{format}: listed instead");
        assert_eq!(manifest_lines(&f, &summary).await, want, "{format}");

        let bad = write_report(&f, format, true).await;
        let jobs = f.jobs_in_queue().await;
        let out = submit(&f, &["--inventory".into(), bad.to_string()]).await;
        assert_eq!(out.code, 2, "{format}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("{format}-1.")) && out.stderr.contains("MD5"),
            "{}",
            out.stderr
        );
        assert_eq!(
            f.jobs_in_queue().await,
            jobs,
            "{format}: submitted despite a bad checksum"
        );
    }
}
