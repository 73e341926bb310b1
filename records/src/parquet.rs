//! The table as Parquet files: one row per image, the vector as a fixed-size list of float32
//! and every provenance attribute its own column, named as in the table ([`attr`]). What
//! pyarrow, DuckDB, Spark and Athena load:
//!
//! ```python
//! import pyarrow.parquet as pq
//! table = pq.read_table("export/")                   # every part-*.parquet in the directory
//! vectors = table["Vector"].combine_chunks().flatten().to_numpy().reshape(len(table), -1)
//! ```
//!
//! An export is a directory (or S3 prefix) of `part-NNNNN.parquet` files of at most
//! [`ParquetOptions::rows_per_file`] rows, each in row groups of
//! [`ParquetOptions::rows_per_group`], and, written last, [`SUMMARY_FILE`] listing them. A file
//! appears under its final name only when complete (it is written as `….partial` and renamed),
//! so a reader never sees half a file, and memory holds one row group, whatever the table's size.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_array::{StringArray, StringViewArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde_json::json;

use crate::vector::{attr, VectorMetadata, VectorRecord};

/// The file an export's directory ends with: `{"rows", "dimension", "files": [names]}`. Its
/// leading `_` keeps it out of Hive-style readers (Athena, Spark) and of `*.parquet` globs.
pub const SUMMARY_FILE: &str = "_embatch-export.json";

/// The name of the element field of the `Vector` list (Arrow's default).
const ITEM: &str = "item";

/// How an export is cut into files and row groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParquetOptions {
    /// Rows per row group: what the writer holds in memory (about `rows × (4·D + 300)` bytes).
    pub rows_per_group: usize,
    /// Rows per file (a file is one PutObject when the export goes to S3).
    pub rows_per_file: u64,
}

impl Default for ParquetOptions {
    /// 8,192-row groups (16 MiB of 512-d vectors), 1,000,000-row files (about 2 GB).
    fn default() -> Self {
        Self {
            rows_per_group: 8192,
            rows_per_file: 1_000_000,
        }
    }
}

/// Writing or reading Parquet failed.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// A file could not be created, written, renamed or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The Parquet library refused a file.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The error.
        source: parquet::errors::ParquetError,
    },
    /// The directory already holds an export; parts of two exports must not mix.
    #[error("{0} already holds an export ({SUMMARY_FILE} or part-*.parquet): export to an empty directory")]
    NotEmpty(PathBuf),
    /// A record's vector has another length than the first one's.
    #[error("item {image_id:?} has {found} dimensions but earlier items have {expected}: the table mixes models; one export cannot hold both")]
    MixedDimensions {
        /// The record that differs.
        image_id: String,
        /// The export's dimension.
        expected: usize,
        /// Its dimension.
        found: usize,
    },
    /// A file's columns are not an export's.
    #[error("{path}: not an embatch export: {why}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The Arrow schema of an export of `dimension`-d vectors.
pub fn schema(dimension: usize) -> SchemaRef {
    let text = |name| Field::new(name, DataType::Utf8, true);
    let int = |name| Field::new(name, DataType::Int64, true);
    let item = Arc::new(Field::new(ITEM, DataType::Float32, false));
    Arc::new(Schema::new(vec![
        Field::new(attr::IMAGE_ID, DataType::Utf8, false),
        Field::new(
            attr::VECTOR,
            DataType::FixedSizeList(item, dimension as i32),
            false,
        ),
        text(attr::SOURCE_URI),
        text(attr::SOURCE_ETAG),
        int(attr::SOURCE_SIZE),
        int(attr::WIDTH),
        int(attr::HEIGHT),
        text(attr::MODEL),
        text(attr::MODEL_SHA256),
        text(attr::RUN_ID),
        text(attr::JOB_ID),
        int(attr::MANIFEST),
        text(attr::CREATED),
    ]))
}

/// A finished file of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Where it is.
    pub path: PathBuf,
    /// Its file name (`part-NNNNN.parquet`).
    pub name: String,
    /// Rows in it.
    pub rows: u64,
}

/// What an export holds, as written to [`SUMMARY_FILE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Rows in all files.
    pub rows: u64,
    /// The vectors' dimension (0 if there were none).
    pub dimension: usize,
    /// The files' names, in order.
    pub files: Vec<String>,
}

impl Summary {
    /// The summary as the JSON of [`SUMMARY_FILE`].
    pub fn to_json(&self) -> String {
        json!({"rows": self.rows, "dimension": self.dimension, "files": self.files}).to_string()
    }
}

/// Writes records into an export directory, file by file. [`PartWriter::push`] hands back each
/// file as it is finished (to upload it, for example), [`PartWriter::finish`] the last one and
/// the summary.
pub struct PartWriter {
    dir: PathBuf,
    options: ParquetOptions,
    dimension: Option<usize>,
    batch: Vec<VectorRecord>,
    open: Option<OpenPart>,
    files: Vec<String>,
    rows: u64,
}

struct OpenPart {
    writer: ArrowWriter<File>,
    partial: PathBuf,
    part: Part,
}

/// Rows converted to Arrow at a time (the writer buffers them into row groups).
const BATCH_ROWS: usize = 1024;

impl PartWriter {
    /// Starts an export in `dir` (created if missing), which must not hold one already.
    pub fn create(dir: &Path, options: ParquetOptions) -> Result<Self, ParquetError> {
        let io = |source| ParquetError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            if name == SUMMARY_FILE || (name.starts_with("part-") && name.ends_with(".parquet")) {
                return Err(ParquetError::NotEmpty(dir.to_path_buf()));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            options: ParquetOptions {
                rows_per_group: options.rows_per_group.max(1),
                rows_per_file: options.rows_per_file.max(1),
            },
            dimension: None,
            batch: Vec::with_capacity(BATCH_ROWS),
            open: None,
            files: Vec::new(),
            rows: 0,
        })
    }

    /// Adds a record; returns the file it completed, if any.
    pub fn push(&mut self, record: VectorRecord) -> Result<Option<Part>, ParquetError> {
        let expected = *self.dimension.get_or_insert(record.vector.len());
        if record.vector.len() != expected {
            return Err(ParquetError::MixedDimensions {
                image_id: record.image_id,
                expected,
                found: record.vector.len(),
            });
        }
        self.batch.push(record);
        self.rows += 1;
        let in_file = self.open.as_ref().map_or(0, |o| o.part.rows) + self.batch.len() as u64;
        if in_file >= self.options.rows_per_file {
            self.write_batch()?;
            return self.close_part();
        }
        if self.batch.len() >= BATCH_ROWS {
            self.write_batch()?;
        }
        Ok(None)
    }

    /// Writes what is buffered and the summary; returns the last file (if one was open) and
    /// the summary. An empty export is the summary alone.
    pub fn finish(mut self) -> Result<(Option<Part>, Summary), ParquetError> {
        self.write_batch()?;
        let last = self.close_part()?;
        let summary = Summary {
            rows: self.rows,
            dimension: self.dimension.unwrap_or(0),
            files: std::mem::take(&mut self.files),
        };
        let path = self.dir.join(SUMMARY_FILE);
        std::fs::write(&path, summary.to_json())
            .map_err(|source| ParquetError::Io { path, source })?;
        Ok((last, summary))
    }

    fn write_batch(&mut self) -> Result<(), ParquetError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let dimension = self.dimension.unwrap_or(0);
        let batch = to_batch(&self.batch, dimension);
        if self.open.is_none() {
            self.open = Some(self.open_part(dimension)?);
        }
        let open = self.open.as_mut().expect("opened above");
        let path = &open.partial;
        open.writer
            .write(&batch)
            .map_err(|source| ParquetError::Format {
                path: path.clone(),
                source,
            })?;
        open.part.rows += self.batch.len() as u64;
        self.batch.clear();
        Ok(())
    }

    fn open_part(&self, dimension: usize) -> Result<OpenPart, ParquetError> {
        let name = format!("part-{:05}.parquet", self.files.len());
        let path = self.dir.join(&name);
        let partial = self.dir.join(format!("{name}.partial"));
        let file = File::create(&partial).map_err(|source| ParquetError::Io {
            path: partial.clone(),
            source,
        })?;
        let writer = ArrowWriter::try_new(file, schema(dimension), Some(self.properties()))
            .map_err(|source| ParquetError::Format {
                path: partial.clone(),
                source,
            })?;
        Ok(OpenPart {
            writer,
            partial,
            part: Part {
                path,
                name,
                rows: 0,
            },
        })
    }

    /// Snappy (what Spark and Athena write by default); no dictionary for the float values,
    /// which never repeat enough for one to pay.
    fn properties(&self) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(self.options.rows_per_group))
            .set_column_dictionary_enabled(
                ColumnPath::new(vec![attr::VECTOR.into(), "list".into(), ITEM.into()]),
                false,
            )
            .build()
    }

    fn close_part(&mut self) -> Result<Option<Part>, ParquetError> {
        let Some(open) = self.open.take() else {
            return Ok(None);
        };
        let format = |source| ParquetError::Format {
            path: open.partial.clone(),
            source,
        };
        open.writer.close().map_err(format)?;
        std::fs::rename(&open.partial, &open.part.path).map_err(|source| ParquetError::Io {
            path: open.part.path.clone(),
            source,
        })?;
        self.files.push(open.part.name.clone());
        Ok(Some(open.part))
    }
}

impl Drop for PartWriter {
    /// A writer dropped before [`PartWriter::finish`] (an error) leaves no partial file.
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let _ = std::fs::remove_file(&open.partial);
        }
    }
}

fn to_batch(records: &[VectorRecord], dimension: usize) -> RecordBatch {
    let n = records.len();
    let mut vectors = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(n * dimension),
        dimension as i32,
        n,
    )
    .with_field(Arc::new(Field::new(ITEM, DataType::Float32, false)));
    for r in records {
        vectors.values().append_slice(&r.vector);
        vectors.append(true);
    }
    let text = |get: fn(&VectorMetadata) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        records.iter().for_each(|r| b.append_option(get(&r.meta)));
        Arc::new(b.finish())
    };
    let int = |get: fn(&VectorMetadata) -> Option<i64>| -> ArrayRef {
        let mut b = Int64Builder::with_capacity(n);
        records.iter().for_each(|r| b.append_option(get(&r.meta)));
        Arc::new(b.finish())
    };
    let ids = StringArray::from_iter_values(records.iter().map(|r| r.image_id.as_str()));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(vectors.finish()),
        text(|m| m.source_uri.as_deref()),
        text(|m| m.source_etag.as_deref()),
        int(|m| m.source_size.and_then(|v| i64::try_from(v).ok())),
        int(|m| m.width.map(i64::from)),
        int(|m| m.height.map(i64::from)),
        text(|m| m.model.as_deref()),
        text(|m| m.model_sha256.as_deref()),
        text(|m| m.run_id.as_deref()),
        text(|m| m.job_id.as_deref()),
        int(|m| m.manifest.and_then(|v| i64::try_from(v).ok())),
        text(|m| m.created.as_deref()),
    ];
    RecordBatch::try_new(schema(dimension), columns).expect("the columns follow the schema")
}

/// The files of the export in `dir`, in order, from its [`SUMMARY_FILE`].
pub fn read_summary(dir: &Path) -> Result<Summary, ParquetError> {
    let path = dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ParquetError::Io {
        path: path.clone(),
        source,
    })?;
    let bad = |why: &str| ParquetError::Schema {
        path: path.clone(),
        why: why.to_string(),
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let number = |key: &str| value[key].as_u64().ok_or_else(|| bad(&format!("no {key}")));
    let files = value["files"]
        .as_array()
        .and_then(|files| files.iter().map(|f| f.as_str().map(String::from)).collect())
        .ok_or_else(|| bad("no files list"))?;
    Ok(Summary {
        rows: number("rows")?,
        dimension: number("dimension")? as usize,
        files,
    })
}

/// Every record of the export in `dir`, file by file in the summary's order, a row group in
/// memory at a time.
pub fn read_records(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<VectorRecord, ParquetError>>, ParquetError> {
    let summary = read_summary(dir)?;
    let dir = dir.to_path_buf();
    // A file or row group that cannot be read is one `Err` in the sequence, in its place.
    let groups = summary.files.into_iter().flat_map(move |file| {
        let (groups, error) = match read_part(&dir.join(file)) {
            Ok(groups) => (Some(groups), None),
            Err(e) => (None, Some(Err(e))),
        };
        groups.into_iter().flatten().chain(error)
    });
    Ok(groups.flat_map(|group| {
        let (records, error) = match group {
            Ok(records) => (records, None),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        records.into_iter().map(Ok).chain(error)
    }))
}

/// Reads one export file back, a row group at a time.
pub fn read_part(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Vec<VectorRecord>, ParquetError>>, ParquetError> {
    let format = |source| ParquetError::Format {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| ParquetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(format)?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(format)?;
    let path = path.to_path_buf();
    Ok(reader.map(move |batch| {
        let batch = batch.map_err(|e| ParquetError::Format {
            path: path.clone(),
            source: e.into(),
        })?;
        from_batch(&batch).map_err(|why| ParquetError::Schema {
            path: path.clone(),
            why,
        })
    }))
}

fn from_batch(batch: &RecordBatch) -> Result<Vec<VectorRecord>, String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let ids = strings(column(attr::IMAGE_ID)?)?;
    let vectors = column(attr::VECTOR)?
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or("Vector is not a fixed-size list")?;
    let values = vectors
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or("Vector's items are not float32")?;
    let d = vectors.value_length() as usize;
    let text = |name: &str| column(name).and_then(strings);
    let int = |name: &str| column(name).and_then(ints);
    let (uri, etag, size) = (
        text(attr::SOURCE_URI)?,
        text(attr::SOURCE_ETAG)?,
        int(attr::SOURCE_SIZE)?,
    );
    let (width, height) = (int(attr::WIDTH)?, int(attr::HEIGHT)?);
    let (model, sha) = (text(attr::MODEL)?, text(attr::MODEL_SHA256)?);
    let (run, job, manifest) = (
        text(attr::RUN_ID)?,
        text(attr::JOB_ID)?,
        int(attr::MANIFEST)?,
    );
    let created = text(attr::CREATED)?;
    (0..batch.num_rows())
        .map(|i| {
            let start = vectors.value_offset_at(i);
            Ok(VectorRecord {
                image_id: ids[i].clone().ok_or("a null ImageId")?,
                vector: values.values()[start..start + d].to_vec(),
                meta: VectorMetadata {
                    created: created[i].clone(),
                    source_uri: uri[i].clone(),
                    source_etag: etag[i].clone(),
                    source_size: size[i].map(|v| v as u64),
                    width: width[i].map(|v| v as u32),
                    height: height[i].map(|v| v as u32),
                    model: model[i].clone(),
                    model_sha256: sha[i].clone(),
                    run_id: run[i].clone(),
                    job_id: job[i].clone(),
                    manifest: manifest[i].map(|v| v as u64),
                },
            })
        })
        .collect()
}

/// A string column as owned values (Utf8, or Utf8View as some writers store it).
fn strings(array: &ArrayRef) -> Result<Vec<Option<String>>, String> {
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        return Ok(a.iter().map(|v| v.map(String::from)).collect());
    }
    if let Some(a) = array.as_any().downcast_ref::<StringViewArray>() {
        return Ok(a.iter().map(|v| v.map(String::from)).collect());
    }
    Err(format!(
        "a {} column where text was expected",
        array.data_type()
    ))
}

fn ints(array: &ArrayRef) -> Result<Vec<Option<i64>>, String> {
    let a = array
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| format!("a {} column where int64 was expected", array.data_type()))?;
    Ok((0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, dimension: usize) -> VectorRecord {
        VectorRecord {
            image_id: format!("img/{i:05}.jpg"),
            vector: (0..dimension)
                .map(|j| (i * dimension + j) as f32 * 0.5)
                .collect(),
            meta: VectorMetadata {
                source_uri: Some(format!("s3://b/img/{i:05}.jpg")),
                source_size: i.is_multiple_of(2).then_some(i as u64 * 1000),
                width: Some(640),
                model: Some("resnet18".into()),
                manifest: Some(i as u64 / 10),
                ..VectorMetadata::default()
            },
        }
    }

    #[test]
    fn files_fill_to_the_row_limit_and_read_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let options = ParquetOptions {
            rows_per_group: 100,
            rows_per_file: 1500,
        };
        let mut writer = PartWriter::create(dir.path(), options).unwrap();
        let written: Vec<_> = (0..3200).map(|i| record(i, 8)).collect();
        let mut finished = Vec::new();
        for r in written.clone() {
            finished.extend(writer.push(r).unwrap());
        }
        let (last, summary) = writer.finish().unwrap();
        finished.extend(last);
        let rows: Vec<u64> = finished.iter().map(|p| p.rows).collect();
        assert_eq!(rows, [1500, 1500, 200]);
        assert_eq!(
            summary.files,
            [
                "part-00000.parquet",
                "part-00001.parquet",
                "part-00002.parquet"
            ]
        );
        assert_eq!(read_summary(dir.path()).unwrap(), summary);
        let mut read = Vec::new();
        for name in &summary.files {
            for batch in read_part(&dir.path().join(name)).unwrap() {
                read.extend(batch.unwrap());
            }
        }
        assert_eq!(read, written);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            4,
            "three parts and the summary, no partial file: {names:?}"
        );
    }

    #[test]
    fn a_second_export_into_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let writer = PartWriter::create(dir.path(), ParquetOptions::default()).unwrap();
        let (last, summary) = writer.finish().unwrap();
        assert_eq!((last, summary.rows, summary.files.len()), (None, 0, 0));
        let refused = PartWriter::create(dir.path(), ParquetOptions::default());
        assert!(matches!(refused, Err(ParquetError::NotEmpty(_))));
    }

    #[test]
    fn mixed_dimensions_are_refused_and_leave_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = PartWriter::create(dir.path(), ParquetOptions::default()).unwrap();
        for i in 0..BATCH_ROWS + 1 {
            writer.push(record(i, 4)).unwrap();
        }
        let err = writer.push(record(9, 5)).unwrap_err();
        assert!(
            matches!(
                err,
                ParquetError::MixedDimensions {
                    expected: 4,
                    found: 5,
                    ..
                }
            ),
            "{err}"
        );
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
