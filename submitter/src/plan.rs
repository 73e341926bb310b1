//! From listed images to manifests and jobs: ImageIds, chunking, and the split into array jobs
//! within AWS Batch's limits.

use std::collections::HashMap;

use serde::Serialize;

use embatch_formats::image_id::ImageIdMode;
use embatch_formats::manifest::ManifestLine;

use crate::listing::ListedImage;
use crate::InputError;

/// The default number of images per manifest (the original sample's `image_batch_limit`).
pub const DEFAULT_IMAGES_PER_JOB: usize = 1000;

/// How many colliding ImageIds an error message shows.
const COLLISION_EXAMPLES: usize = 5;

/// Gives every image its ImageId; two different objects with the same ImageId are an error
/// (one vector would silently overwrite the other).
pub fn assign_image_ids(
    images: Vec<ListedImage>,
    mode: ImageIdMode,
) -> Result<Vec<ManifestLine>, InputError> {
    let mut first: HashMap<String, usize> = HashMap::with_capacity(images.len());
    let mut collisions: Vec<(String, String, String)> = Vec::new();
    let mut collision_count = 0usize;
    let mut lines = Vec::with_capacity(images.len());
    for image in images {
        let image_id = mode.image_id(&image.bucket, &image.key);
        let line = ManifestLine {
            bucket: image.bucket,
            key: image.key,
            size: image.size,
            etag: image.etag,
            image_id,
        };
        if let Some(&i) = first.get(&line.image_id) {
            collision_count += 1;
            if collisions.len() < COLLISION_EXAMPLES {
                let other: &ManifestLine = &lines[i];
                collisions.push((line.image_id.clone(), other.uri(), line.uri()));
            }
            continue;
        }
        first.insert(line.image_id.clone(), lines.len());
        lines.push(line);
    }
    if collision_count > 0 {
        let examples: Vec<String> = collisions
            .iter()
            .map(|(id, a, b)| format!("  ImageId {id:?}: {a} and {b}"))
            .collect();
        return Err(InputError(format!(
            "{collision_count} images share an ImageId with another image under --image-id {}; \
             their vectors would overwrite each other. Examples:\n{}\n\
             Use --image-id key (unique per bucket) or uri (unique everywhere), or narrow the paths.",
            mode.name(),
            examples.join("\n")
        )));
    }
    Ok(lines)
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

    #[test]
    fn stem_collisions_list_both_objects() {
        let err = assign_image_ids(
            vec![
                image("b", "a/1.jpg"),
                image("b", "c/1.png"),
                image("b", "d/2.jpg"),
            ],
            ImageIdMode::Stem,
        )
        .unwrap_err();
        assert!(err.0.starts_with("1 images share"), "{err}");
        assert!(err.0.contains("s3://b/a/1.jpg and s3://b/c/1.png"), "{err}");
        assert!(err.0.contains("--image-id stem"), "{err}");
    }

    #[test]
    fn key_mode_keeps_same_keys_in_two_buckets_apart_only_under_uri() {
        let two = || vec![image("b1", "x.jpg"), image("b2", "x.jpg")];
        assert!(assign_image_ids(two(), ImageIdMode::Key).is_err());
        let lines = assign_image_ids(two(), ImageIdMode::Uri).unwrap();
        assert_eq!(lines[1].image_id, "s3://b2/x.jpg");
    }
}
