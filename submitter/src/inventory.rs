//! An S3 Inventory report instead of listing (`embatch submit --inventory URI`): at a hundred
//! million objects, listing costs hours and 100,000 requests; the daily inventory AWS already
//! wrote costs a few GETs.
//!
//! The report is read as AWS documents it: `manifest.json` (`sourceBucket`,
//! `destinationBucket`, `fileFormat`, `fileSchema`, and `files`, each with its `key` in the
//! destination bucket and its `MD5checksum`), verified against `manifest.checksum` beside it;
//! each file's MD5 is checked before it is read. CSV files are gzip, no header,
//! fields quoted, in `fileSchema`'s order, keys URL-encoded; Parquet files have the columns
//! `bucket`, `key`, `size`, `e_tag`, … with keys as they are. Rows of noncurrent versions and
//! delete markers are left out (a listing shows neither). The objects under the run's paths
//! then go through the same filters and counts as a listing's ([`crate::plan::Planner`]).

use std::io::Read;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DataType, Int64Type};
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use serde::Deserialize;

use embatch_aws::objects::get_if_exists;
use embatch_formats::s3uri::{decode_listed_key, S3Uri};

use crate::listing::{ListedImage, ListingStats};
use crate::InputError;

/// Inventory files read at once.
const FILE_CONCURRENCY: usize = 4;

/// `manifest.json`, the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    source_bucket: String,
    /// `arn:aws:s3:::bucket`.
    destination_bucket: String,
    file_format: String,
    file_schema: String,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Deserialize)]
struct ManifestFile {
    key: String,
    #[serde(rename = "MD5checksum")]
    md5: String,
}

/// One current object of the report.
struct Row {
    bucket: String,
    key: String,
    size: u64,
    etag: String,
}

/// Hands every current object of the inventory whose `manifest.json` is `manifest` that lies
/// under one of `roots` to `sink`, with that root's index (once per root that holds it), and
/// returns the counts (`inventory_files`).
pub async fn read_inventory(
    s3: &aws_sdk_s3::Client,
    manifest: &S3Uri,
    roots: &[S3Uri],
    sink: &mut dyn FnMut(usize, ListedImage) -> anyhow::Result<()>,
) -> anyhow::Result<ListingStats> {
    let report = read_manifest(s3, manifest).await?;
    if let Some(root) = roots.iter().find(|r| r.bucket != report.source_bucket) {
        return Err(InputError(format!(
            "path {root} is not in bucket {}, the one the inventory {manifest} lists",
            report.source_bucket
        ))
        .into());
    }
    let destination = destination_bucket(&report.destination_bucket)
        .with_context(|| format!("inventory manifest {manifest}"))?;
    let format = report.file_format.as_str();
    // A few files at once, handed on in the manifest's order (the same plan every time).
    let mut files = futures::stream::iter(&report.files)
        .map(|file| {
            read_file(
                s3,
                S3Uri::new(destination, &file.key),
                file,
                format,
                &report,
            )
        })
        .buffered(FILE_CONCURRENCY);
    while let Some(rows) = files.try_next().await? {
        for row in rows {
            for (i, root) in roots.iter().enumerate() {
                if row.bucket == root.bucket && row.key.starts_with(&root.key) {
                    sink(
                        i,
                        ListedImage {
                            bucket: row.bucket.clone(),
                            key: row.key.clone(),
                            size: row.size,
                            etag: row.etag.clone(),
                        },
                    )?;
                }
            }
        }
    }
    tracing::info!(%manifest, files = report.files.len(), "inventory read");
    Ok(ListingStats {
        inventory_files: report.files.len() as u64,
        ..ListingStats::default()
    })
}

/// `manifest.json`, checked against `manifest.checksum` beside it.
async fn read_manifest(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> anyhow::Result<Manifest> {
    let bytes = get_if_exists(s3, uri)
        .await?
        .ok_or_else(|| InputError(format!("no inventory manifest at {uri}")))?;
    let checksum_uri = S3Uri::new(
        &uri.bucket,
        format!("{}manifest.checksum", parent(&uri.key)),
    );
    // AWS writes it with every report; reading it needs only s3:GetObject on the report's
    // prefix (no s3:ListBucket to tell a missing object from a denied one).
    let checksum = get_if_exists(s3, &checksum_uri).await?.ok_or_else(|| {
        InputError(format!(
            "no {checksum_uri} beside the inventory manifest {uri} (S3 Inventory writes one with every report)"
        ))
    })?;
    let expected = String::from_utf8_lossy(&checksum)
        .trim()
        .to_ascii_lowercase();
    let actual = md5_hex(&bytes);
    if expected != actual {
        return Err(InputError(format!(
            "inventory manifest {uri} has MD5 {actual}, but {checksum_uri} says {expected}: refusing it"
        ))
        .into());
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| InputError(format!("{uri} is not an S3 Inventory manifest.json: {e}")))?;
    if !matches!(manifest.file_format.as_str(), "CSV" | "Parquet") {
        return Err(InputError(format!(
            "inventory {uri} is in {} format; embatch reads CSV and Parquet inventories",
            manifest.file_format
        ))
        .into());
    }
    Ok(manifest)
}

/// The folder part of a key, with its trailing slash (empty at the top).
fn parent(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

/// `bucket` of `arn:aws:s3:::bucket` (any partition), or a bare name.
fn destination_bucket(arn: &str) -> anyhow::Result<&str> {
    match arn.rsplit_once(":::") {
        Some((_, bucket)) if !bucket.is_empty() => Ok(bucket),
        None if !arn.is_empty() && !arn.contains(':') => Ok(arn),
        _ => bail!("destinationBucket {arn:?} is not an S3 bucket ARN"),
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// One inventory file's current objects, its MD5 checked first.
async fn read_file(
    s3: &aws_sdk_s3::Client,
    uri: S3Uri,
    file: &ManifestFile,
    format: &str,
    report: &Manifest,
) -> anyhow::Result<Vec<Row>> {
    let Some(bytes) = get_if_exists(s3, &uri).await? else {
        let missing = format!("inventory file {uri}, listed in its manifest, is missing");
        return Err(InputError(missing).into());
    };
    let actual = md5_hex(&bytes);
    if !actual.eq_ignore_ascii_case(&file.md5) {
        return Err(InputError(format!(
            "inventory file {uri} has MD5 {actual}, but its manifest says {}: refusing the inventory",
            file.md5
        ))
        .into());
    }
    let rows = match format {
        "CSV" => csv_rows(&bytes, &report.file_schema),
        _ => parquet_rows(Bytes::from(bytes)),
    };
    rows.with_context(|| format!("reading inventory file {uri}"))
}

/// The rows of a gzip CSV file whose columns `schema` names ("Bucket, Key, Size, …").
fn csv_rows(gzip: &[u8], schema: &str) -> anyhow::Result<Vec<Row>> {
    let columns: Vec<&str> = schema.split(',').map(str::trim).collect();
    let column = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(bucket), Some(key)) = (column("Bucket"), column("Key")) else {
        bail!("fileSchema {schema:?} has no Bucket and Key columns");
    };
    let (size, etag) = (column("Size"), column("ETag"));
    let (latest, deleted) = (column("IsLatest"), column("IsDeleteMarker"));
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(gzip)
        .read_to_end(&mut text)
        .context("not a gzip file")?;
    let mut rows = Vec::new();
    for (line, record) in csv_records(&text).into_iter().enumerate() {
        let field = |i: Option<usize>| i.and_then(|i| record.get(i)).map_or("", String::as_str);
        if field(latest) == "false" || field(deleted) == "true" {
            continue;
        }
        let encoded = field(Some(key));
        let key = decode_listed_key(encoded).with_context(|| {
            format!(
                "line {}: key {encoded:?} is not URL-encoded UTF-8",
                line + 1
            )
        })?;
        let size = match field(size) {
            "" => 0,
            s => s
                .parse()
                .with_context(|| format!("line {}: size {s:?}", line + 1))?,
        };
        rows.push(Row {
            bucket: field(Some(bucket)).to_string(),
            key,
            size,
            etag: field(etag).trim_matches('"').to_string(),
        });
    }
    Ok(rows)
}

/// The fields of every record of `text` (RFC 4180 quoting, as S3 Inventory writes it), by
/// `csv-core`'s parser.
fn csv_records(text: &[u8]) -> Vec<Vec<String>> {
    use csv_core::ReadRecordResult;
    let mut reader = csv_core::Reader::new();
    let (mut input, mut records) = (text, Vec::new());
    let (mut out, mut ends) = (vec![0u8; 4096], vec![0usize; 64]);
    let (mut out_len, mut ends_len) = (0, 0);
    loop {
        let (result, read, written, ended) =
            reader.read_record(input, &mut out[out_len..], &mut ends[ends_len..]);
        input = &input[read..];
        out_len += written;
        ends_len += ended;
        match result {
            // The whole text was given: the next call, with no input, ends the last record.
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::OutputFull => out.resize(out.len() * 2, 0),
            ReadRecordResult::OutputEndsFull => ends.resize(ends.len() * 2, 0),
            ReadRecordResult::Record => {
                let mut start = 0;
                let fields = ends[..ends_len]
                    .iter()
                    .map(|&end| {
                        let field = String::from_utf8_lossy(&out[start..end]).into_owned();
                        start = end;
                        field
                    })
                    .collect();
                records.push(fields);
                (out_len, ends_len) = (0, 0);
            }
            ReadRecordResult::End => return records,
        }
    }
}

/// The rows of a Parquet inventory file, its columns found by name (AWS may add columns, and
/// any of them may be optional).
fn parquet_rows(bytes: Bytes) -> anyhow::Result<Vec<Row>> {
    let file = SerializedFileReader::new(bytes).context("not a Parquet file")?;
    let schema = file.metadata().file_metadata().schema_descr_ptr();
    let index = |name: &str| {
        schema
            .columns()
            .iter()
            .position(|c| c.path().string() == name)
    };
    let (Some(bucket), Some(key)) = (index("bucket"), index("key")) else {
        bail!("no bucket and key columns");
    };
    let mut rows = Vec::new();
    for g in 0..file.num_row_groups() {
        let group = file.get_row_group(g)?;
        let text = |i| column::<ByteArrayType>(&*group, i);
        let (buckets, keys, etags) = (text(Some(bucket))?, text(Some(key))?, text(index("e_tag"))?);
        let sizes = column::<Int64Type>(&*group, index("size"))?;
        let latest = column::<BoolType>(&*group, index("is_latest"))?;
        let deleted = column::<BoolType>(&*group, index("is_delete_marker"))?;
        for i in 0..keys.len() {
            if at(&latest, i) == Some(&false) || at(&deleted, i) == Some(&true) {
                continue;
            }
            let utf8 = |v: &[Option<ByteArray>], name: &str| -> anyhow::Result<String> {
                at(v, i)
                    .map_or(Ok(""), ByteArray::as_utf8)
                    .map(str::to_string)
                    .with_context(|| format!("row group {g}: {name} is not UTF-8"))
            };
            rows.push(Row {
                bucket: utf8(&buckets, "bucket")?,
                key: utf8(&keys, "key")?,
                size: at(&sizes, i).map_or(0, |&s| s.max(0) as u64),
                etag: utf8(&etags, "e_tag")?.trim_matches('"').to_string(),
            });
        }
    }
    Ok(rows)
}

/// The value of `row` in a column read by [`column`].
fn at<T>(column: &[Option<T>], row: usize) -> Option<&T> {
    column.get(row).and_then(Option::as_ref)
}

/// Column `index` of `group`, one entry per row (`None` where the row has no value), or none
/// when the file has no such column.
fn column<T: DataType>(
    group: &dyn RowGroupReader,
    index: Option<usize>,
) -> anyhow::Result<Vec<Option<T::T>>> {
    let rows = usize::try_from(group.metadata().num_rows()).context("a negative row count")?;
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let descr = group.metadata().column(index).column_descr_ptr();
    let mut reader = T::get_column_reader(group.get_column_reader(index)?).with_context(|| {
        let (name, ty) = (descr.path(), descr.physical_type());
        format!(
            "column {name} has type {ty}, not {}",
            T::get_physical_type()
        )
    })?;
    // A row is present where its definition level is the column's maximum (always, when
    // the column is required and has no levels).
    let max_level = descr.max_def_level();
    // The row count is the file's word: reserve no more than a page's worth on it.
    let reserve = rows.min(1 << 16);
    let (mut levels, mut values) = (Vec::with_capacity(reserve), Vec::with_capacity(reserve));
    let mut read = 0;
    while read < rows {
        let wanted = (max_level > 0).then_some(&mut levels);
        let (records, _, _) = reader.read_records(rows - read, wanted, None, &mut values)?;
        if records == 0 {
            bail!("column {} ends after {read} of {rows} rows", descr.path());
        }
        read += records;
    }
    if max_level == 0 {
        return Ok(values.into_iter().map(Some).collect());
    }
    let mut values = values.into_iter();
    Ok(levels
        .iter()
        .map(|&level| {
            if level == max_level {
                values.next()
            } else {
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_csv_records() {
        let text = b"\"b\",\"a%2Cb+c.jpg\",\"12\",\"\"\"e\"\"\"\n\"b\",\"last\",\"\",\"\"";
        let records = csv_records(text);
        assert_eq!(records[0], ["b", "a%2Cb+c.jpg", "12", "\"e\""]);
        assert_eq!(records[1], ["b", "last", "", ""]);
        assert_eq!(records.len(), 2);
        assert_eq!(csv_records(&[b'x'; 10_000])[0][0].len(), 10_000);
    }

    /// Parquet files as pyarrow writes them (dictionary pages, Snappy or gzip, several row
    /// groups, nulls, and columns the reader does not use), read by the column reader.
    #[test]
    fn pyarrow_written_parquet_files() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
import sys, datetime, pyarrow as pa, pyarrow.parquet as pq
n = 7
t = pa.table({
    'bucket': ['b'] * n,
    'key': [f'photos/{i}.jpg' for i in range(n)],
    'version_id': ['v'] * n,
    'is_latest': [True, False, True, None, True, True, True],
    'is_delete_marker': [False, False, True, None, None, False, False],
    'size': pa.array([10, 11, None, 13, 14, 15, None], pa.int64()),
    'last_modified_date': [datetime.datetime(2026, 12, 1)] * n,
    'e_tag': ['"a"', 'b', None, 'd', None, 'f', 'ü'],
})
out = sys.argv[1]
pq.write_table(t, out + '/snappy.parquet', row_group_size=3)
pq.write_table(t, out + '/gzip.parquet', compression='gzip')
pq.write_table(t.set_column(5, 'size', pa.array([str(i) for i in range(n)])), out + '/text-size.parquet')
pq.write_table(t.drop(['key']), out + '/no-key.parquet')
"#;
        let python = embatch_testkit::python::interpreter().unwrap();
        embatch_testkit::run_ok(
            std::process::Command::new(python)
                .args(["-c", script])
                .arg(dir.path()),
            "writing Parquet files with pyarrow",
        );
        let read =
            |name: &str| parquet_rows(Bytes::from(std::fs::read(dir.path().join(name)).unwrap()));
        for name in ["snappy.parquet", "gzip.parquet"] {
            let rows: Vec<_> = read(name)
                .unwrap()
                .into_iter()
                .map(|r| format!("{} {} {} {}", r.bucket, r.key, r.size, r.etag))
                .collect();
            // Row 1 is a noncurrent version and row 2 a delete marker; nulls read as absent.
            let want = [
                "b photos/0.jpg 10 a",
                "b photos/3.jpg 13 d",
                "b photos/4.jpg 14 ",
                "b photos/5.jpg 15 f",
                "b photos/6.jpg 0 ü",
            ];
            assert_eq!(rows, want, "{name}");
        }
        let err = format!("{:#}", read("text-size.parquet").err().unwrap());
        assert!(err.contains("size") && err.contains("BYTE_ARRAY"), "{err}");
        let err = format!("{:#}", read("no-key.parquet").err().unwrap());
        assert!(err.contains("key"), "{err}");
        let err = format!(
            "{:#}",
            parquet_rows(Bytes::from_static(b"not parquet"))
                .err()
                .unwrap()
        );
        assert!(err.contains("not a Parquet file"), "{err}");
    }

    #[test]
    fn destination_buckets_and_parents() {
        assert_eq!(destination_bucket("arn:aws:s3:::inv").unwrap(), "inv");
        assert_eq!(destination_bucket("arn:aws-cn:s3:::inv").unwrap(), "inv");
        assert_eq!(destination_bucket("inv").unwrap(), "inv");
        assert!(destination_bucket("arn:aws:s3:::").is_err());
        assert_eq!(parent("a/b/manifest.json"), "a/b/");
        assert_eq!(parent("manifest.json"), "");
    }
}
