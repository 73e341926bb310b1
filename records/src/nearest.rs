//! Exact nearest neighbours by cosine similarity, over vectors held in memory: the whole
//! table (read with [`crate::reader::TableReader::scan`]) or an export (`vectors.npy` +
//! `ids.jsonl`, or a Parquet export: [`Index::read_export`]).
//!
//! Every row is normalised once when the index is built; a query is then one pass of dot
//! products over all rows, split in blocks over rayon's threads, each block keeping its own
//! best `k`, merged at the end. Exact, not approximate: the cost of a query is reading the
//! matrix once (`N × D × 4` bytes), measured in BENCHMARKS.md.
//!
//! ```
//! use embatch_records::nearest::Index;
//!
//! let ids = vec!["a".to_string(), "b".to_string(), "c".to_string()];
//! let index = Index::from_matrix(ids, 2, vec![1.0, 0.0, 0.6, 0.8, 0.0, -1.0]).unwrap();
//! let nearest = index.nearest_to("a", 2).unwrap();
//! assert_eq!(nearest[0].image_id, "b");
//! assert!((nearest[0].similarity - 0.6).abs() < 1e-6);
//! assert_eq!(nearest[1].image_id, "c");
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::export::{IDS_FILE, VECTORS_FILE};
use crate::vector::VectorRecord;

/// Rows per block of work (each block keeps its own best `k`).
const BLOCK_ROWS: usize = 4096;

/// An index cannot be built or asked.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Vectors of different lengths in one index.
    #[error("vector {image_id:?} has {found} values, the others {expected}")]
    Dimension {
        /// The vector that differs.
        image_id: String,
        /// The index's dimension.
        expected: usize,
        /// Its length.
        found: usize,
    },
    /// A matrix whose length is not rows × dimension.
    #[error("{values} values are not {rows} rows of {dimension}")]
    Shape {
        /// Values given.
        values: usize,
        /// Rows (ids) given.
        rows: usize,
        /// Values per row.
        dimension: usize,
    },
    /// A query vector of the wrong length.
    #[error("the query has {found} values, the vectors {expected}")]
    QueryDimension {
        /// The index's dimension.
        expected: usize,
        /// The query's length.
        found: usize,
    },
    /// No vector is stored under the ImageId asked about.
    #[error("no vector with ImageId {0:?}")]
    UnknownId(String),
    /// A Parquet export that cannot be read.
    #[cfg(feature = "parquet")]
    #[error(transparent)]
    Parquet(#[from] crate::parquet::ParquetError),
    /// An export file that cannot be read or is not what `embatch-vectors export` writes.
    #[error("{}: {message}", path.display())]
    Export {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// One neighbour of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbour {
    /// Its ImageId.
    pub image_id: String,
    /// Cosine similarity to the query, in [-1, 1] (0 for a zero vector).
    pub similarity: f32,
}

/// Unit-length rows and their ImageIds, ready to be searched.
#[derive(Clone, Debug)]
pub struct Index {
    ids: Vec<String>,
    positions: HashMap<String, usize>,
    dimension: usize,
    /// Row-major, each row of length 1 (or all zeros for a zero or non-finite vector).
    rows: Vec<f32>,
    /// The ModelSha256 of the records the rows came from.
    models: BTreeSet<String>,
}

impl Index {
    /// An index of stored records; all must have the same dimension.
    pub fn from_records(records: Vec<VectorRecord>) -> Result<Index, IndexError> {
        gather(None, records.into_iter().map(Ok))
    }

    /// An index of `ids.len()` rows of `dimension` values, row-major in `values`.
    pub fn from_matrix(
        ids: Vec<String>,
        dimension: usize,
        mut values: Vec<f32>,
    ) -> Result<Index, IndexError> {
        if Some(values.len()) != ids.len().checked_mul(dimension) {
            return Err(IndexError::Shape {
                values: values.len(),
                rows: ids.len(),
                dimension,
            });
        }
        if dimension > 0 {
            values.par_chunks_mut(dimension).for_each(normalise);
        }
        let positions = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Ok(Index {
            ids,
            positions,
            dimension,
            rows: values,
            models: BTreeSet::new(),
        })
    }

    /// The index of an export directory as `embatch-vectors export` writes it: `vectors.npy`
    /// and `ids.jsonl`, or (with the `parquet` feature) a Parquet export's files.
    pub fn read_export(dir: &Path) -> Result<Index, IndexError> {
        #[cfg(feature = "parquet")]
        if dir.join(crate::parquet::SUMMARY_FILE).exists() {
            return read_parquet_export(dir);
        }
        let (rows, dimension, values) = read_npy_f32(&dir.join(VECTORS_FILE))?;
        let ids = read_ids(&dir.join(IDS_FILE))?;
        if ids.len() != rows {
            return Err(IndexError::Export {
                path: dir.join(IDS_FILE),
                message: format!("{} ids for {rows} rows of {VECTORS_FILE}", ids.len()),
            });
        }
        Index::from_matrix(ids, dimension, values)
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the index holds no vector.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Values per vector.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The sha256 of each model that computed the vectors, from the records' `ModelSha256`:
    /// empty for an index of a matrix or an npy export, which do not carry it. A query vector
    /// is only comparable with vectors of the same model.
    pub fn models(&self) -> &BTreeSet<String> {
        &self.models
    }

    /// The `k` vectors most similar to the stored vector of `image_id`, itself left out.
    pub fn nearest_to(&self, image_id: &str, k: usize) -> Result<Vec<Neighbour>, IndexError> {
        let &i = self
            .positions
            .get(image_id)
            .ok_or_else(|| IndexError::UnknownId(image_id.to_string()))?;
        let row = &self.rows[i * self.dimension..(i + 1) * self.dimension];
        Ok(self.search(row, k, Some(i)))
    }

    /// The `k` vectors most similar to `query` (any length-`dimension` vector; it need not be
    /// normalised). Ties are broken by row order, so results are deterministic.
    pub fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<Neighbour>, IndexError> {
        if query.len() != self.dimension {
            return Err(IndexError::QueryDimension {
                expected: self.dimension,
                found: query.len(),
            });
        }
        let mut unit = query.to_vec();
        normalise(&mut unit);
        Ok(self.search(&unit, k, None))
    }

    fn search(&self, unit: &[f32], k: usize, skip: Option<usize>) -> Vec<Neighbour> {
        if k == 0 || self.dimension == 0 {
            return Vec::new();
        }
        let best = self
            .rows
            .par_chunks(self.dimension * BLOCK_ROWS)
            .enumerate()
            .map(|(block, rows)| {
                let mut best = Best::new(k);
                for (j, row) in rows.chunks_exact(self.dimension).enumerate() {
                    let index = block * BLOCK_ROWS + j;
                    if Some(index) != skip {
                        best.offer(Candidate {
                            similarity: dot(unit, row),
                            index,
                        });
                    }
                }
                best
            })
            .reduce(|| Best::new(k), Best::merge);
        best.into_sorted()
            .into_iter()
            .map(|c| Neighbour {
                image_id: self.ids[c.index].clone(),
                similarity: c.similarity,
            })
            .collect()
    }
}

/// Scales `v` to unit length; a zero or non-finite vector becomes all zeros (similarity 0 to
/// everything rather than NaN).
fn normalise(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    let scale = if norm.is_finite() && norm > 0.0 {
        1.0 / norm
    } else {
        0.0
    };
    v.iter_mut()
        .for_each(|x| *x = if scale == 0.0 { 0.0 } else { *x * scale });
}

/// Dot product in eight independent lanes (which the compiler vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A row and its similarity; ordered so that the *worse* candidate is the greater (the top of
/// a max-heap is the one to drop): lower similarity, then later row.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    similarity: f32,
    index: usize,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .similarity
            .total_cmp(&self.similarity)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// The best `k` candidates seen so far.
struct Best {
    k: usize,
    heap: BinaryHeap<Candidate>,
}

impl Best {
    fn new(k: usize) -> Best {
        Best {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    fn offer(&mut self, candidate: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if self.heap.peek().is_some_and(|worst| candidate < *worst) {
            self.heap.pop();
            self.heap.push(candidate);
        }
    }

    fn merge(mut self, other: Best) -> Best {
        for candidate in other.heap {
            self.offer(candidate);
        }
        self
    }

    /// Best first.
    fn into_sorted(self) -> Vec<Candidate> {
        self.heap.into_sorted_vec()
    }
}

/// A Parquet export (`--format parquet`), its vectors only: the provenance columns are read
/// and dropped a row group at a time.
#[cfg(feature = "parquet")]
fn read_parquet_export(dir: &Path) -> Result<Index, IndexError> {
    let dimension = crate::parquet::read_summary(dir)?.dimension;
    let records = crate::parquet::read_records(dir)?.map(|r| r.map_err(IndexError::from));
    gather(Some(dimension), records)
}

/// The index of `records`, which must all have `dimension` values (default: the first's).
fn gather(
    dimension: Option<usize>,
    records: impl Iterator<Item = Result<VectorRecord, IndexError>>,
) -> Result<Index, IndexError> {
    let mut dimension = dimension;
    let (mut ids, mut values, mut models) = (Vec::new(), Vec::new(), BTreeSet::new());
    for record in records {
        let record = record?;
        let expected = *dimension.get_or_insert(record.vector.len());
        if record.vector.len() != expected {
            return Err(IndexError::Dimension {
                image_id: record.image_id,
                expected,
                found: record.vector.len(),
            });
        }
        values.extend_from_slice(&record.vector);
        ids.push(record.image_id);
        models.extend(record.meta.model_sha256);
    }
    let mut index = Index::from_matrix(ids, dimension.unwrap_or(0), values)?;
    index.models = models;
    Ok(index)
}

/// A float32 C-order 2-D `.npy` file: `(rows, columns, values)`.
fn read_npy_f32(path: &Path) -> Result<(usize, usize, Vec<f32>), IndexError> {
    let err = |message: String| IndexError::Export {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(format!(".npy format version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| err("the header is cut or not text".into()))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(err(format!(
            "not a little-endian float32 C-order matrix: {}",
            header.trim()
        )));
    }
    let shape = header
        .split_once("'shape': (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(dims, _)| {
            dims.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::parse::<usize>)
                .collect::<Result<Vec<_>, _>>()
        });
    let (rows, columns) = match shape {
        Some(Ok(dims)) if dims.len() == 2 => (dims[0], dims[1]),
        _ => return Err(err(format!("not a 2-D shape: {}", header.trim()))),
    };
    let data = &bytes[start + header_len..];
    if Some(data.len()) != rows.checked_mul(columns).and_then(|n| n.checked_mul(4)) {
        return Err(err(format!(
            "{} data bytes for a {rows} x {columns} float32 matrix",
            data.len()
        )));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((rows, columns, values))
}

/// `ids.jsonl`: one JSON string per line.
fn read_ids(path: &Path) -> Result<Vec<String>, IndexError> {
    let err = |message: String| IndexError::Export {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str::<String>(line)
                .map_err(|e| err(format!("line {}: not a JSON string: {e}", n + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix.
    fn matrix(rows: usize, dimension: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..rows * dimension)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("img/{i:05}.jpg")).collect()
    }

    /// Every similarity by brute force in f64, sorted best first (ties by row).
    fn brute_force(
        values: &[f32],
        dimension: usize,
        query: &[f32],
        skip: Option<usize>,
    ) -> Vec<(usize, f64)> {
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let q = norm(query);
        let mut all: Vec<(usize, f64)> = values
            .chunks_exact(dimension)
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(i, row)| {
                let d: f64 = row
                    .iter()
                    .zip(query)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                (i, d / (norm(row) * q))
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }

    #[test]
    fn the_top_k_is_the_brute_force_top_k_across_blocks() {
        let (rows, dimension) = (BLOCK_ROWS * 2 + 37, 19);
        let values = matrix(rows, dimension, 42);
        let index = Index::from_matrix(ids(rows), dimension, values.clone()).unwrap();
        let query = &values[5 * dimension..6 * dimension];
        let want = brute_force(&values, dimension, query, Some(5));
        let got = index.nearest_to("img/00005.jpg", 25).unwrap();
        assert_eq!(got.len(), 25);
        for (g, (i, sim)) in got.iter().zip(&want) {
            assert_eq!(g.image_id, format!("img/{i:05}.jpg"));
            assert!((g.similarity as f64 - sim).abs() < 1e-5, "{g:?} vs {sim}");
        }
        // Asked by vector instead of by id: the query itself comes first, at similarity 1.
        let by_vector = index.nearest(query, 3).unwrap();
        assert_eq!(by_vector[0].image_id, "img/00005.jpg");
        assert!((by_vector[0].similarity - 1.0).abs() < 1e-5);
        assert_eq!(by_vector[1..], got[..2]);
    }

    #[test]
    fn k_beyond_the_rows_ties_zero_vectors_and_bad_input() {
        let values = vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, f32::NAN, 1.0];
        let index = Index::from_matrix(ids(4), 2, values).unwrap();
        let got = index.nearest(&[2.0, 0.0], 10).unwrap();
        // Equal similarities keep row order; zero and non-finite rows score 0.
        let order: Vec<&str> = got.iter().map(|n| n.image_id.as_str()).collect();
        assert_eq!(
            order,
            [
                "img/00000.jpg",
                "img/00001.jpg",
                "img/00002.jpg",
                "img/00003.jpg"
            ]
        );
        assert_eq!(got[2].similarity, 0.0);
        assert_eq!(got[3].similarity, 0.0);
        assert!(index.nearest(&[1.0], 1).is_err());
        assert!(
            matches!(index.nearest_to("nope", 1), Err(IndexError::UnknownId(id)) if id == "nope")
        );
        assert!(index.nearest(&[1.0, 0.0], 0).unwrap().is_empty());
        assert!(Index::from_matrix(ids(2), 3, vec![0.0; 5]).is_err());
    }

    #[test]
    fn an_export_reads_back_into_the_same_index() {
        use crate::export::NpyF32Writer;
        let dir = std::env::temp_dir().join(format!("embatch-nearest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rows, dimension) = (50, 8);
        let values = matrix(rows, dimension, 7);
        let mut npy =
            NpyF32Writer::new(std::fs::File::create(dir.join(VECTORS_FILE)).unwrap()).unwrap();
        for row in values.chunks_exact(dimension) {
            npy.push_row(row).unwrap().unwrap();
        }
        npy.finish().unwrap();
        let lines: String = ids(rows)
            .iter()
            .map(|id| format!("{}\n", serde_json::to_string(id).unwrap()))
            .collect();
        std::fs::write(dir.join(IDS_FILE), lines).unwrap();

        let exported = Index::read_export(&dir).unwrap();
        let direct = Index::from_matrix(ids(rows), dimension, values).unwrap();
        assert_eq!(exported.len(), rows);
        assert_eq!(
            exported.nearest_to("img/00003.jpg", 5).unwrap(),
            direct.nearest_to("img/00003.jpg", 5).unwrap()
        );

        std::fs::write(dir.join(IDS_FILE), "\"only one\"\n").unwrap();
        let err = Index::read_export(&dir).unwrap_err().to_string();
        assert!(
            err.contains(IDS_FILE) && err.contains("1 ids for 50 rows"),
            "{err}"
        );
        std::fs::write(dir.join(VECTORS_FILE), b"not numpy").unwrap();
        let err = Index::read_export(&dir).unwrap_err().to_string();
        assert!(
            err.contains(VECTORS_FILE) && err.contains("not a .npy"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_index_of_records_knows_their_models() {
        use crate::vector::VectorMetadata;
        let record = |id: &str, sha: Option<&str>| VectorRecord {
            image_id: id.to_string(),
            vector: vec![1.0, 0.0],
            meta: VectorMetadata {
                model_sha256: sha.map(str::to_string),
                ..VectorMetadata::default()
            },
        };
        let index = Index::from_records(vec![
            record("a", Some("aa")),
            record("b", None),
            record("c", Some("aa")),
        ])
        .unwrap();
        assert_eq!(index.models().iter().collect::<Vec<_>>(), ["aa"]);
        let mixed = Index::from_records(vec![record("a", Some("bb")), record("b", Some("aa"))]);
        assert_eq!(mixed.unwrap().models().len(), 2);
        assert!(Index::from_matrix(ids(1), 2, vec![1.0, 0.0])
            .unwrap()
            .models()
            .is_empty());
    }
}
