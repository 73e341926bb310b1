//! S3 Inventory reports of an emulator bucket, written as AWS lays them out (the emulator
//! makes none): `manifest.json` with `fileSchema` and each file's `MD5checksum`,
//! `manifest.checksum` beside it, and the data files, gzip CSV with every field quoted and
//! keys URL-encoded, or Parquet with keys as they are.

use std::io::Write;
use std::sync::Arc;

use embatch_formats::s3uri::S3Uri;
use md5::{Digest, Md5};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DataType, Int64Type};
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::parser::parse_message_type;
use serde_json::json;

use crate::fixture::put_bytes;

/// The data files' format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Gzip CSV (`fileFormat: "CSV"`).
    Csv,
    /// Parquet (`fileFormat: "Parquet"`).
    Parquet,
}

impl Format {
    /// As `fileFormat` says it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::Parquet => "Parquet",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Row {
    /// The key, not encoded.
    pub key: String,
    /// Size in bytes.
    pub size: i64,
    /// ETag, quoted or not.
    pub etag: String,
    /// Whether this is the current version.
    pub latest: bool,
    /// Whether this version is a delete marker.
    pub delete_marker: bool,
}

/// The current objects of `bucket`, as rows (by the SDK's paginator).
pub async fn current_objects(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<Row> {
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    let mut rows = Vec::new();
    while let Some(page) = pages.next().await {
        for o in page.expect("listing the bucket").contents() {
            rows.push(Row {
                key: o.key().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0),
                etag: o.e_tag().unwrap_or_default().to_string(),
                latest: true,
                delete_marker: false,
            });
        }
    }
    rows
}

/// Writes a report of `rows` of `source_bucket` in two data files under `folder` (an
/// `s3://bucket/prefix/` whose bucket is the destination) and returns its `manifest.json`.
/// With `corrupt`, the manifest gives the second file a wrong MD5.
pub async fn write(
    s3: &aws_sdk_s3::Client,
    source_bucket: &str,
    rows: &[Row],
    format: Format,
    folder: &S3Uri,
    corrupt: bool,
) -> S3Uri {
    let (first, second) = rows.split_at(rows.len() / 2);
    let mut files = Vec::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let (bytes, ext) = match format {
            Format::Csv => (csv_file(source_bucket, part), "csv.gz"),
            Format::Parquet => (parquet_file(source_bucket, part), "parquet"),
        };
        let file = folder.join(&format!("data/{}-{i}.{ext}", format.name()));
        let md5 = if corrupt && i == 1 {
            "0".repeat(32)
        } else {
            md5_hex(&bytes)
        };
        files.push(json!({"key": file.key, "size": bytes.len(), "MD5checksum": md5}));
        put_bytes(s3, &file, &bytes).await;
    }
    let manifest = json!({
        "sourceBucket": source_bucket,
        "destinationBucket": format!("arn:aws:s3:::{}", folder.bucket),
        "version": "2016-11-30",
        "creationTimestamp": "1764547200000",
        "fileFormat": format.name(),
        "fileSchema": schema(format),
        "files": files,
    })
    .to_string();
    let report = folder.join("2026-12-01T00-00Z/");
    let checksum = md5_hex(manifest.as_bytes());
    put_bytes(s3, &report.join("manifest.checksum"), checksum.as_bytes()).await;
    let manifest_uri = report.join("manifest.json");
    put_bytes(s3, &manifest_uri, manifest.as_bytes()).await;
    manifest_uri
}

fn schema(format: Format) -> &'static str {
    match format {
        Format::Csv => "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass",
        Format::Parquet => "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); optional int64 size; optional binary e_tag (UTF8); optional boolean is_latest; optional boolean is_delete_marker; }",
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// A gzip CSV data file: every field quoted, keys URL-encoded.
fn csv_file(bucket: &str, rows: &[Row]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for r in rows {
        let key: String = form_urlencoded::byte_serialize(r.key.as_bytes()).collect();
        let size = if r.delete_marker {
            String::new()
        } else {
            r.size.to_string()
        };
        let etag = r.etag.trim_matches('"');
        writeln!(
            gz,
            "\"{bucket}\",\"{key}\",\"v1\",\"{}\",\"{}\",\"{size}\",\"2026-12-01T00:00:00.000Z\",\"{etag}\",\"STANDARD\"",
            r.latest, r.delete_marker
        )
        .expect("writing to memory");
    }
    gz.finish().expect("writing to memory")
}

/// A Parquet data file, in the schema `fileSchema` gives.
fn parquet_file(bucket: &str, rows: &[Row]) -> Vec<u8> {
    let schema = parse_message_type(schema(Format::Parquet)).expect("the inventory schema parses");
    let mut out = Vec::new();
    let mut file = SerializedFileWriter::new(&mut out, Arc::new(schema), Arc::default())
        .expect("a Parquet writer");
    let mut group = file.next_row_group().expect("writing to memory");
    let text = |f: &dyn Fn(&Row) -> &str| -> Vec<ByteArray> {
        rows.iter().map(|r| ByteArray::from(f(r))).collect()
    };
    let flags = |f: &dyn Fn(&Row) -> bool| -> Vec<bool> { rows.iter().map(f).collect() };
    // Every optional value present: each row at the columns' definition level 1.
    let present = Some(&vec![1; rows.len()][..]);
    let sizes: Vec<i64> = rows.iter().map(|r| r.size).collect();
    put::<ByteArrayType>(&mut group, &vec![ByteArray::from(bucket); rows.len()], None);
    put::<ByteArrayType>(&mut group, &text(&|r| &r.key), None);
    put::<Int64Type>(&mut group, &sizes, present);
    put::<ByteArrayType>(&mut group, &text(&|r| r.etag.trim_matches('"')), present);
    put::<BoolType>(&mut group, &flags(&|r| r.latest), present);
    put::<BoolType>(&mut group, &flags(&|r| r.delete_marker), present);
    group.close().expect("writing to memory");
    file.close().expect("writing to memory");
    out
}

/// Writes the next column of `group`, in the schema's order.
fn put<T: DataType>(
    group: &mut SerializedRowGroupWriter<'_, &mut Vec<u8>>,
    values: &[T::T],
    levels: Option<&[i16]>,
) {
    let mut column = group
        .next_column()
        .expect("writing to memory")
        .expect("a column the schema has");
    column
        .typed::<T>()
        .write_batch(values, levels, None)
        .expect("writing to memory");
    column.close().expect("writing to memory");
}
