//! The whole table as files every vector tool loads: `vectors.npy`, a float32 matrix of
//! shape `[N, D]` (NumPy format 1.0, little-endian, C order), and `ids.jsonl`, whose line `i`
//! is the JSON string of row `i`'s `ImageId` (JSON so that ids holding newlines stay one
//! line). In Python:
//!
//! ```python
//! import json, numpy as np
//! vectors = np.load("export/vectors.npy")            # float32, shape (N, D)
//! ids = [json.loads(line) for line in open("export/ids.jsonl", encoding="utf-8")]
//! ```
//!
//! The `.npy` header is written by hand ([`NpyF32Writer`]): the format is a 10-byte preamble
//! and a Python dict literal, and a streamed export only knows `N` at the end, so we reserve
//! a fixed-size header and fill it in last. The crates for it (`npyz`, `ndarray-npy`) want
//! the shape up front or the whole matrix in memory.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::reader::{ReadError, TableReader};

/// The matrix file's name inside the export directory.
pub const VECTORS_FILE: &str = "vectors.npy";
/// The ids file's name inside the export directory.
pub const IDS_FILE: &str = "ids.jsonl";

/// Header size reserved in front of the data: preamble + dict, padded with spaces to a
/// multiple of 64 as the format asks. Room for any `u64` row count and dimension.
const HEADER_LEN: usize = 128;

/// Writes a float32 `[rows, columns]` `.npy` matrix one row at a time.
pub struct NpyF32Writer<W: Write + Seek> {
    out: W,
    /// Where the header goes: `out`'s position when the writer was made.
    start: u64,
    columns: Option<usize>,
    rows: u64,
}

/// A row's length differs from the first row's.
#[derive(Debug, thiserror::Error)]
#[error("row {row} has {found} values but earlier rows have {expected}")]
pub struct RaggedRow {
    /// The 0-based row number.
    pub row: u64,
    /// The matrix's column count.
    pub expected: usize,
    /// The row's length.
    pub found: usize,
}

impl<W: Write + Seek> NpyF32Writer<W> {
    /// Starts a matrix at the current position of `out` (reserving the header).
    pub fn new(mut out: W) -> io::Result<Self> {
        let start = out.stream_position()?;
        out.write_all(&[0u8; HEADER_LEN])?;
        Ok(Self {
            out,
            start,
            columns: None,
            rows: 0,
        })
    }

    /// Appends a row (all rows must have the same length). Bit-exact, NaN payloads included.
    pub fn push_row(&mut self, row: &[f32]) -> io::Result<Result<(), RaggedRow>> {
        let expected = *self.columns.get_or_insert(row.len());
        if row.len() != expected {
            return Ok(Err(RaggedRow {
                row: self.rows,
                expected,
                found: row.len(),
            }));
        }
        for value in row {
            self.out.write_all(&value.to_bits().to_le_bytes())?;
        }
        self.rows += 1;
        Ok(Ok(()))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The column count (0 if no row was written).
    pub fn columns(&self) -> usize {
        self.columns.unwrap_or(0)
    }

    /// Writes the header and returns the output, positioned after the last row.
    pub fn finish(mut self) -> io::Result<W> {
        let header = npy_header(self.rows, self.columns());
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(self.start))?;
        self.out.write_all(&header)?;
        self.out.seek(SeekFrom::Start(end))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The NumPy 1.0 header of a little-endian float32 C-order matrix, exactly `HEADER_LEN` bytes.
fn npy_header(rows: u64, columns: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}");
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"\x93NUMPY\x01\x00");
    header.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(HEADER_LEN - 1, b' ');
    header.push(b'\n');
    debug_assert_eq!(
        header.len(),
        HEADER_LEN,
        "the dict always fits: u64s have ≤ 20 digits"
    );
    header
}

/// What [`export`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows (vectors) written.
    pub rows: u64,
    /// The vectors' dimension (0 for an empty table).
    pub dimension: usize,
    /// The `.npy` matrix.
    pub vectors: PathBuf,
    /// The ids file.
    pub ids: PathBuf,
}

/// Exporting failed; no output file was left behind.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the table failed (including a corrupt item).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The table holds vectors of more than one dimension; one matrix cannot hold them.
    #[error("item {image_id:?} has {found} dimensions but earlier items have {expected}: the table mixes models; export cannot make one matrix")]
    MixedDimensions {
        /// The first item whose dimension differs.
        image_id: String,
        /// The dimension of the items before it.
        expected: usize,
        /// Its dimension.
        found: usize,
    },
}

/// Writes every record of the table to `dir`/[`VECTORS_FILE`] and `dir`/[`IDS_FILE`] (rows in
/// scan order), scanning with `segments` parallel segments. The files appear only when
/// complete: they are written under `.partial` names and renamed at the end.
pub async fn export(
    reader: &TableReader,
    segments: u32,
    dir: &Path,
) -> Result<ExportSummary, ExportError> {
    let vectors_path = dir.join(VECTORS_FILE);
    let ids_path = dir.join(IDS_FILE);
    let partial = |p: &Path| {
        p.with_extension(format!(
            "{}.partial",
            p.extension().unwrap_or_default().to_string_lossy()
        ))
    };
    let (vectors_tmp, ids_tmp) = (partial(&vectors_path), partial(&ids_path));
    let result = write_files(reader, segments, &vectors_tmp, &ids_tmp).await;
    let rows_and_dim = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&vectors_tmp);
            let _ = std::fs::remove_file(&ids_tmp);
            return Err(e);
        }
    };
    for (tmp, path) in [(&vectors_tmp, &vectors_path), (&ids_tmp, &ids_path)] {
        std::fs::rename(tmp, path).map_err(|source| ExportError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(ExportSummary {
        rows: rows_and_dim.0,
        dimension: rows_and_dim.1,
        vectors: vectors_path,
        ids: ids_path,
    })
}

async fn write_files(
    reader: &TableReader,
    segments: u32,
    vectors_path: &Path,
    ids_path: &Path,
) -> Result<(u64, usize), ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let mut vectors = NpyF32Writer::new(BufWriter::new(
        File::create(vectors_path).map_err(io(vectors_path))?,
    ))
    .map_err(io(vectors_path))?;
    let mut ids = BufWriter::new(File::create(ids_path).map_err(io(ids_path))?);

    let mut records = std::pin::pin!(reader.scan(segments));
    while let Some(record) = records.next().await {
        let record = record?;
        if let Err(ragged) = vectors.push_row(&record.vector).map_err(io(vectors_path))? {
            return Err(ExportError::MixedDimensions {
                image_id: record.image_id,
                expected: ragged.expected,
                found: ragged.found,
            });
        }
        let line = serde_json::to_string(&record.image_id).expect("a string serialises");
        writeln!(ids, "{line}").map_err(io(ids_path))?;
    }
    let (rows, dimension) = (vectors.rows(), vectors.columns());
    vectors
        .finish()
        .and_then(|mut w| w.flush())
        .map_err(io(vectors_path))?;
    ids.flush().map_err(io(ids_path))?;
    Ok((rows, dimension))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_128_bytes_and_names_the_shape() {
        let h = npy_header(10_000, 512);
        assert_eq!(h.len(), HEADER_LEN);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, HEADER_LEN - 10);
        let dict = std::str::from_utf8(&h[10..]).unwrap();
        assert!(
            dict.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (10000, 512), }")
        );
        assert!(dict.ends_with(" \n"));
        assert_eq!(npy_header(u64::MAX, usize::MAX).len(), HEADER_LEN);
    }

    #[test]
    fn rows_follow_the_header_and_ragged_rows_are_refused() {
        let mut w = NpyF32Writer::new(io::Cursor::new(Vec::new())).unwrap();
        w.push_row(&[1.0, -0.0]).unwrap().unwrap();
        let ragged = w.push_row(&[1.0]).unwrap().unwrap_err();
        assert_eq!((ragged.row, ragged.expected, ragged.found), (1, 2, 1));
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(bytes.len(), HEADER_LEN + 8);
        assert!(std::str::from_utf8(&bytes[10..HEADER_LEN])
            .unwrap()
            .contains("(1, 2)"));
        assert_eq!(&bytes[HEADER_LEN..], &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x80]);
    }

    #[test]
    fn a_matrix_starts_where_the_output_was_and_leaves_what_surrounds_it() {
        let mut out = io::Cursor::new(b"prefix|".to_vec());
        out.seek(SeekFrom::End(0)).unwrap();
        let mut w = NpyF32Writer::new(out).unwrap();
        w.push_row(&[2.0]).unwrap().unwrap();
        let mut out = w.finish().unwrap();
        out.write_all(b"|suffix").unwrap();
        let bytes = out.into_inner();
        assert_eq!(&bytes[..7], b"prefix|");
        let matrix = &bytes[7..7 + HEADER_LEN + 4];
        assert_eq!(&matrix[..HEADER_LEN], npy_header(1, 1).as_slice());
        assert_eq!(&matrix[HEADER_LEN..], &2.0f32.to_le_bytes());
        assert_eq!(&bytes[7 + HEADER_LEN + 4..], b"|suffix");
    }
}
