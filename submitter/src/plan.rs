//! From listed images to manifests and jobs: ImageIds, chunking, and the split into array jobs
//! within AWS Batch's limits.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use embatch_formats::image_id::ImageIdMode;
use embatch_formats::manifest::{parse_jsonl, ManifestLine};
use embatch_formats::s3uri::S3Uri;

use crate::listing::{ExtensionFilter, ListedImage, ListingStats};
use crate::InputError;

/// The default number of images per manifest (the original sample's `image_batch_limit`).
pub const DEFAULT_IMAGES_PER_JOB: usize = 1000;

/// How many colliding ImageIds an error message shows.
const COLLISION_EXAMPLES: usize = 5;

/// Images streamed into manifests as the listing finds them: each object kept once (under the
/// first path that holds it), filtered and counted as [`ListingStats`] says, given its ImageId,
/// and appended to the manifest being filled; a full manifest is written to a local folder,
/// so memory does not grow with the listing. Where two images could share an ImageId (`stem`
/// mode; `key` mode over several buckets) each ImageId's 64-bit hash is kept (8 bytes an
/// image) and [`Planner::finish`] refuses a collision, naming examples, before anything is
/// written to S3.
pub struct Planner {
    roots: Vec<S3Uri>,
    filter: ExtensionFilter,
    mode: ImageIdMode,
    images_per_job: usize,
    dir: tempfile::TempDir,
    current: Vec<u8>,
    current_lines: usize,
    manifests: usize,
    stats: ListingStats,
    hashes: Option<Vec<u64>>,
}

/// The manifests of a plan, in a local folder until they are uploaded.
#[derive(Debug)]
pub struct Planned {
    dir: tempfile::TempDir,
    /// How many manifests.
    pub manifests: usize,
    /// What the listing saw and kept.
    pub stats: ListingStats,
}

impl Planned {
    /// Manifest `n`'s JSON Lines.
    pub fn manifest(&self, n: usize) -> std::io::Result<Vec<u8>> {
        std::fs::read(manifest_path(self.dir.path(), n))
    }
}

fn manifest_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{n}.jsonl"))
}

impl Planner {
    /// A plan of the objects under `roots`, `images_per_job` images a manifest.
    pub fn new(
        roots: &[S3Uri],
        filter: &ExtensionFilter,
        mode: ImageIdMode,
        images_per_job: usize,
    ) -> anyhow::Result<Planner> {
        let buckets: HashSet<&str> = roots.iter().map(|r| r.bucket.as_str()).collect();
        let may_collide =
            mode == ImageIdMode::Stem || (mode == ImageIdMode::Key && buckets.len() > 1);
        let dir = tempfile::Builder::new()
            .prefix("embatch-plan-")
            .tempdir()
            .context("making a local folder for the manifests")?;
        Ok(Planner {
            roots: roots.to_vec(),
            filter: filter.clone(),
            mode,
            images_per_job: images_per_job.max(1),
            dir,
            current: Vec::new(),
            current_lines: 0,
            manifests: 0,
            stats: ListingStats::default(),
            hashes: may_collide.then(Vec::new),
        })
    }

    /// Takes one object listed under `roots[root]`.
    pub fn offer(&mut self, root: usize, object: ListedImage) -> anyhow::Result<()> {
        let owner = self
            .roots
            .iter()
            .position(|r| r.bucket == object.bucket && object.key.starts_with(&r.key));
        if owner != Some(root) {
            self.stats.duplicates += 1;
            return Ok(());
        }
        self.stats.objects += 1;
        if object.key.ends_with('/') {
            self.stats.directory_markers += 1;
        } else if !self.filter.matches(&object.key) {
            self.stats.not_images += 1;
        } else if object.size == 0 {
            self.stats.empty += 1;
        } else {
            self.stats.images += 1;
            self.push(object)?;
        }
        Ok(())
    }

    fn push(&mut self, image: ListedImage) -> anyhow::Result<()> {
        let image_id = self.mode.image_id(&image.bucket, &image.key);
        if let Some(hashes) = &mut self.hashes {
            hashes.push(hash(&image_id));
        }
        let line = ManifestLine {
            bucket: image.bucket,
            key: image.key,
            size: image.size,
            etag: image.etag,
            image_id,
        };
        serde_json::to_writer(&mut self.current, &line).expect("a ManifestLine always serialises");
        self.current.push(b'\n');
        self.current_lines += 1;
        if self.current_lines == self.images_per_job {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.current_lines == 0 {
            return Ok(());
        }
        let path = manifest_path(self.dir.path(), self.manifests);
        std::fs::write(&path, &self.current)
            .with_context(|| format!("writing {}", path.display()))?;
        self.manifests += 1;
        self.current.clear();
        self.current_lines = 0;
        Ok(())
    }

    /// The finished plan, `listing`'s request counts added to its stats; an [`InputError`]
    /// if two images share an ImageId.
    pub fn finish(mut self, listing: &ListingStats) -> anyhow::Result<Planned> {
        self.flush()?;
        self.stats.pages = listing.pages;
        self.stats.ranges = listing.ranges;
        self.stats.inventory_files = listing.inventory_files;
        if let Some(mut hashes) = self.hashes.take() {
            hashes.sort_unstable();
            let repeated: HashSet<u64> = hashes
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            drop(hashes);
            if !repeated.is_empty() {
                self.refuse_collisions(&repeated)?;
            }
        }
        Ok(Planned {
            dir: self.dir,
            manifests: self.manifests,
            stats: self.stats,
        })
    }

    /// Reads the manifests back for the lines whose ImageId hash is `repeated`, and refuses
    /// the ImageIds that more than one image has (a 64-bit hash can repeat without them).
    fn refuse_collisions(&self, repeated: &HashSet<u64>) -> anyhow::Result<()> {
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for n in 0..self.manifests {
            let path = manifest_path(self.dir.path(), n);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            for line in parse_jsonl(&bytes, &path.display().to_string())? {
                if repeated.contains(&hash(&line.image_id)) {
                    let uri = line.uri();
                    by_id.entry(line.image_id).or_default().push(uri);
                }
            }
        }
        let mut shared: Vec<(String, Vec<String>)> = by_id
            .into_iter()
            .filter(|(_, uris)| uris.len() > 1)
            .collect();
        if shared.is_empty() {
            return Ok(());
        }
        // Listing order varies from run to run; the message does not.
        shared.iter_mut().for_each(|(_, uris)| uris.sort());
        shared.sort();
        let count: usize = shared.iter().map(|(_, uris)| uris.len() - 1).sum();
        let examples: Vec<String> = shared
            .iter()
            .take(COLLISION_EXAMPLES)
            .map(|(id, uris)| format!("  ImageId {id:?}: {} and {}", uris[0], uris[1]))
            .collect();
        Err(InputError(format!(
            "{count} images share an ImageId with another image under --image-id {}; \
             their vectors would overwrite each other. Examples:\n{}\n\
             Use --image-id key (unique per bucket) or uri (unique everywhere), or narrow the paths.",
            self.mode.name(),
            examples.join("\n")
        ))
        .into())
    }
}

/// A 64-bit hash of an ImageId (the same for the same text within one process).
fn hash(image_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    image_id.hash(&mut hasher);
    hasher.finish()
}

/// One Batch job to submit: manifests `manifest_offset .. manifest_offset + manifests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct JobSpec {
    /// The manifest number of the job's index 0.
    pub manifest_offset: usize,
    /// How many manifests the job covers.
    pub manifests: usize,
}

impl JobSpec {
    /// The array size to submit, or `None` for a plain job (AWS rejects arrays of size 1).
    pub fn array_size(&self) -> Option<usize> {
        (self.manifests > 1).then_some(self.manifests)
    }
}

/// Splits `manifests` manifests into the fewest jobs of at most `max_array` children each,
/// with sizes differing by at most one, so no array job is left with a single child
/// (10,001 manifests become 5,001 + 5,000, not 10,000 + 1).
///
/// ```
/// use embatch_submitter::plan::split_jobs;
/// let jobs = split_jobs(10_001, 10_000);
/// assert_eq!(jobs.iter().map(|j| j.manifests).collect::<Vec<_>>(), [5001, 5000]);
/// assert_eq!(jobs[1].manifest_offset, 5001);
/// assert_eq!(split_jobs(1, 10_000)[0].array_size(), None);
/// ```
pub fn split_jobs(manifests: usize, max_array: usize) -> Vec<JobSpec> {
    assert!(max_array >= 2, "an array job holds at least 2 children");
    if manifests == 0 {
        return Vec::new();
    }
    let jobs = manifests.div_ceil(max_array);
    let (base, extra) = (manifests / jobs, manifests % jobs);
    let mut offset = 0;
    (0..jobs)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let spec = JobSpec {
                manifest_offset: offset,
                manifests: size,
            };
            offset += size;
            spec
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bucket: &str, key: &str) -> ListedImage {
        ListedImage {
            bucket: bucket.into(),
            key: key.into(),
            size: 1,
            etag: "e".into(),
        }
    }

    #[test]
    fn every_manifest_is_covered_once_and_no_array_has_size_one() {
        for max in [2usize, 3, 7, 10_000] {
            for n in (0..=3 * max + 2).chain([10_000, 10_001, 20_000, 20_001, 30_001]) {
                let jobs = split_jobs(n, max);
                let mut next = 0;
                for j in &jobs {
                    assert_eq!(j.manifest_offset, next, "n={n} max={max}");
                    assert!(
                        j.manifests >= 1 && j.manifests <= max,
                        "n={n} max={max} {j:?}"
                    );
                    assert_ne!(j.array_size(), Some(1));
                    next += j.manifests;
                }
                assert_eq!(next, n);
                assert_eq!(jobs.len(), n.div_ceil(max));
                // Sizes 1 only where unavoidable: a single manifest, or max 2 with odd n.
                if jobs.len() > 1 && max > 2 {
                    assert!(jobs.iter().all(|j| j.manifests >= 2), "n={n} max={max}");
                }
            }
        }
    }

    #[test]
    fn ten_thousand_and_one_manifests_make_two_arrays() {
        let jobs = split_jobs(10_001, 10_000);
        assert_eq!(
            jobs,
            [
                JobSpec {
                    manifest_offset: 0,
                    manifests: 5001
                },
                JobSpec {
                    manifest_offset: 5001,
                    manifests: 5000
                }
            ]
        );
        assert_eq!(split_jobs(10_000, 10_000).len(), 1);
        assert_eq!(split_jobs(2, 10_000)[0].array_size(), Some(2));
    }

    /// The plan of `images` (each listed under the first of `roots` in its bucket).
    fn plan(
        images: Vec<ListedImage>,
        roots: &[S3Uri],
        mode: ImageIdMode,
    ) -> anyhow::Result<Planned> {
        let filter = ExtensionFilter::default();
        let mut planner = Planner::new(roots, &filter, mode, 2).unwrap();
        for image in images {
            let root = roots.iter().position(|r| r.bucket == image.bucket).unwrap();
            planner.offer(root, image).unwrap();
        }
        planner.finish(&ListingStats::default())
    }

    #[test]
    fn stem_collisions_list_both_objects() {
        let images = vec![
            image("b", "a/1.jpg"),
            image("b", "c/1.png"),
            image("b", "d/2.jpg"),
        ];
        let err = plan(images, &[S3Uri::new("b", "")], ImageIdMode::Stem).unwrap_err();
        let err = err.downcast::<InputError>().unwrap();
        assert!(err.0.starts_with("1 images share"), "{err}");
        assert!(err.0.contains("s3://b/a/1.jpg and s3://b/c/1.png"), "{err}");
        assert!(err.0.contains("--image-id stem"), "{err}");
    }

    #[test]
    fn key_mode_keeps_same_keys_in_two_buckets_apart_only_under_uri() {
        let roots = [S3Uri::new("b1", ""), S3Uri::new("b2", "")];
        let two = || vec![image("b1", "x.jpg"), image("b2", "x.jpg")];
        assert!(plan(two(), &roots, ImageIdMode::Key).is_err());
        let planned = plan(two(), &roots, ImageIdMode::Uri).unwrap();
        let lines = parse_jsonl(&planned.manifest(0).unwrap(), "0").unwrap();
        assert_eq!(lines[1].image_id, "s3://b2/x.jpg");
    }

    #[test]
    fn manifests_fill_in_order_and_each_object_counts_once() {
        let roots = [S3Uri::new("b", "p/"), S3Uri::new("b", "p/sub/")];
        let filter = ExtensionFilter::default();
        let mut planner = Planner::new(&roots, &filter, ImageIdMode::Key, 2).unwrap();
        for key in ["p/1.jpg", "p/2.jpg", "p/3.jpg", "p/notes.txt", "p/dir/"] {
            planner.offer(0, image("b", key)).unwrap();
        }
        planner.offer(0, image("b", "p/sub/4.jpg")).unwrap();
        // Listed again under the second path: a duplicate, not a second line.
        planner.offer(1, image("b", "p/sub/4.jpg")).unwrap();
        let planned = planner.finish(&ListingStats::default()).unwrap();
        assert_eq!(planned.manifests, 2);
        let keys: Vec<String> = (0..2)
            .flat_map(|n| parse_jsonl(&planned.manifest(n).unwrap(), "m").unwrap())
            .map(|l| l.key)
            .collect();
        assert_eq!(keys, ["p/1.jpg", "p/2.jpg", "p/3.jpg", "p/sub/4.jpg"]);
        let s = &planned.stats;
        assert_eq!((s.objects, s.images, s.duplicates), (6, 4, 1));
        assert_eq!((s.not_images, s.directory_markers), (1, 1));
    }
}
