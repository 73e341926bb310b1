//! Listing the input prefixes: every page of ListObjectsV2, the prefixes and the key ranges of
//! large prefixes ([`crate::key_ranges`]) listed at once, each object handed on as its page
//! arrives. Which objects are images ([`ExtensionFilter`]) and what was kept
//! ([`ListingStats`]) are defined here and applied by [`crate::plan::Planner`].

use std::collections::VecDeque;

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

use aws_sdk_s3::types::EncodingType;
use embatch_aws::sdk_error::describe;
use embatch_formats::s3uri::{decode_listed_key, S3Uri};

use crate::key_ranges::{split_points, KeyRange};

/// Extensions listed as images unless `--extensions` says otherwise.
pub const DEFAULT_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// ListObjectsV2 page size. Set explicitly: AWS never returns more than 1000 keys a page,
/// and the emulator returns more when asked to, which would hide pagination bugs.
pub const PAGE_SIZE: i32 = 1000;

/// ListObjectsV2 requests in flight at once by default.
const LIST_CONCURRENCY: usize = 16;

/// Chooses image objects by extension, case-insensitively.
#[derive(Clone, Debug)]
pub struct ExtensionFilter {
    extensions: Vec<String>,
}

impl ExtensionFilter {
    /// A filter for these extensions (with or without a leading dot, any case).
    pub fn new<S: AsRef<str>>(extensions: &[S]) -> Self {
        Self {
            extensions: extensions
                .iter()
                .map(|e| e.as_ref().trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    /// Whether `key`'s file name ends in one of the extensions.
    ///
    /// ```
    /// use embatch_submitter::listing::ExtensionFilter;
    /// let f = ExtensionFilter::new(&["jpg", ".PNG"]);
    /// assert!(f.matches("a/B.JPG") && f.matches("c.png"));
    /// assert!(!f.matches("jpg") && !f.matches("a.jpg/x") && !f.matches("a.jpgx"));
    /// ```
    pub fn matches(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        match name.rsplit_once('.') {
            Some((_, ext)) => self.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)),
            None => false,
        }
    }
}

impl Default for ExtensionFilter {
    fn default() -> Self {
        Self::new(DEFAULT_EXTENSIONS)
    }
}

/// One listed image object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedImage {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
}

/// What the listing saw and skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListingStats {
    /// ListObjectsV2 pages requested, over all prefixes.
    pub pages: u64,
    /// Key ranges listed (one per prefix, more where a large prefix was split to be listed
    /// at once).
    pub ranges: u64,
    /// S3 Inventory files read instead of listing (`--inventory`).
    pub inventory_files: u64,
    /// Distinct objects listed.
    pub objects: u64,
    /// Objects listed more than once by overlapping prefixes (counted once in `objects`).
    pub duplicates: u64,
    /// Keys ending in `/` (folder placeholders), skipped.
    pub directory_markers: u64,
    /// Objects whose extension is not an image extension, skipped.
    pub not_images: u64,
    /// Zero-byte images, skipped.
    pub empty: u64,
    /// Images kept.
    pub images: u64,
}

/// How a listing is run.
#[derive(Clone, Debug)]
pub struct ListOptions {
    /// Keys asked for per ListObjectsV2 page.
    pub page_size: i32,
    /// ListObjectsV2 requests in flight at once, over all roots.
    pub concurrency: usize,
    /// Pages a key range yields one after the other before its rest may be split into
    /// ranges listed at once (only while fewer than `concurrency` requests have work).
    pub split_after_pages: u32,
}

impl Default for ListOptions {
    /// 1000 keys a page, 16 requests in flight, a range split after 2 pages: a prefix of up
    /// to 2,000 keys is listed exactly as a paginator would.
    fn default() -> Self {
        ListOptions {
            page_size: PAGE_SIZE,
            concurrency: LIST_CONCURRENCY,
            split_after_pages: 2,
        }
    }
}

/// A key range of one root, and how many pages it has yielded.
struct Work {
    root: usize,
    range: KeyRange,
    pages: u32,
}

/// Lists every prefix in `roots`, handing every object to `sink` with the root's index, page
/// by page (in no particular order; [`crate::plan::Planner::offer`] is the submitter's sink),
/// and returns the counts of `pages` and `ranges`.
///
/// Each root starts as one range. A range is listed page by page; when a page comes back
/// truncated, the rest of the range is queued again, or, after `split_after_pages` pages
/// and while requests are idle, split into ranges listed at once ([`key_ranges`]).
pub async fn list(
    s3: &aws_sdk_s3::Client,
    roots: &[S3Uri],
    options: &ListOptions,
    sink: &mut dyn FnMut(usize, ListedImage) -> anyhow::Result<()>,
) -> anyhow::Result<ListingStats> {
    let mut listed = vec![0u64; roots.len()];
    let mut siblings: Vec<Siblings> = roots.iter().map(|_| Siblings::default()).collect();
    let mut stats = ListingStats::default();
    let mut pending: VecDeque<Work> = (0..roots.len())
        .map(|root| Work {
            root,
            range: KeyRange::all(),
            pages: 0,
        })
        .collect();
    stats.ranges = pending.len() as u64;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < options.concurrency.max(1) {
            let Some(work) = pending.pop_front() else {
                break;
            };
            let root = &roots[work.root];
            in_flight.push(async move {
                let page = list_page(s3, root, &work.range, options.page_size).await;
                (work, page)
            });
        }
        let Some((work, page)) = in_flight.next().await else {
            break;
        };
        let page = page.with_context(|| format!("listing {}", roots[work.root]))?;
        stats.pages += 1;
        let root = &roots[work.root];
        let sample: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
        let mut beyond = false;
        for object in page.objects {
            if work.range.is_beyond(&object.key) {
                beyond = true;
                break;
            }
            siblings[work.root].see(root, &object.key);
            listed[work.root] += 1;
            sink(work.root, object)?;
        }
        let Some(last) = sample.last().filter(|_| page.truncated && !beyond) else {
            continue; // the range is done
        };
        let rest = Work {
            range: KeyRange {
                after: Some(last.clone()),
                upto: work.range.upto,
            },
            pages: work.pages + 1,
            root: work.root,
        };
        // Split only if requests would otherwise sit idle (the rest itself takes one).
        let idle = pending.len() + in_flight.len() + 1 < options.concurrency;
        if rest.pages < options.split_after_pages || !idle {
            // First in line: a range under way is the longest chain of pages left.
            pending.push_front(rest);
            continue;
        }
        let sample: Vec<&str> = sample.iter().map(String::as_str).collect();
        let points = split_points(last, rest.range.upto.as_deref(), &root.key, &sample);
        stats.ranges += points.len() as u64;
        tracing::debug!(%root, after = %last, ranges = points.len() + 1, "splitting a key range");
        let mut pieces = rest.range.split_at(points);
        // Wider pieces first: those cut one character past the stem span more keys than
        // those cut two past it, and the longest chains of pages should start soonest.
        pieces.sort_by_key(|piece| piece.after.as_ref().map_or(0, String::len));
        pending.extend(pieces.into_iter().map(|range| Work {
            root: rest.root,
            range,
            pages: rest.pages,
        }));
    }
    for ((root, listed), siblings) in roots.iter().zip(&listed).zip(&siblings) {
        tracing::info!(%root, objects = listed, "listed");
        siblings.warn(root);
    }
    Ok(stats)
}

/// One ListObjectsV2 page of a range.
struct Page {
    objects: Vec<ListedImage>,
    truncated: bool,
}

/// The page of `range` under `root` that starts after `range.after`. Keys are listed
/// URL-encoded (`EncodingType=url`) and decoded here: one key with a character XML cannot
/// carry would otherwise make its whole page unparseable.
async fn list_page(
    s3: &aws_sdk_s3::Client,
    root: &S3Uri,
    range: &KeyRange,
    page_size: i32,
) -> anyhow::Result<Page> {
    let page = s3
        .list_objects_v2()
        .bucket(&root.bucket)
        .prefix(&root.key)
        .set_start_after(range.after.clone())
        .max_keys(page_size)
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
    let mut objects = Vec::with_capacity(page.contents().len());
    for object in page.contents() {
        let Some(encoded) = object.key() else {
            continue;
        };
        let key = decode_listed_key(encoded)
            .with_context(|| format!("key {encoded:?} is not URL-encoded UTF-8"))?;
        objects.push(ListedImage {
            bucket: root.bucket.clone(),
            key,
            size: object.size().unwrap_or(0).max(0) as u64,
            etag: object
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
        });
    }
    let truncated = page.is_truncated().unwrap_or(false);
    Ok(Page { objects, truncated })
}

/// Keys a prefix without a trailing slash matched outside the folder of the same name
/// (`images` matches `images/a.jpg` and also `images-old/b.jpg`).
#[derive(Default)]
struct Siblings {
    in_folder: u64,
    outside: u64,
    example: Option<String>,
}

impl Siblings {
    fn see(&mut self, root: &S3Uri, key: &str) {
        if root.key.is_empty() || root.key.ends_with('/') {
            return;
        }
        match key.strip_prefix(&root.key) {
            Some(rest) if rest.starts_with('/') => self.in_folder += 1,
            Some(rest) if !rest.is_empty() => {
                self.outside += 1;
                self.example.get_or_insert_with(|| key.to_string());
            }
            _ => {}
        }
    }

    fn warn(&self, root: &S3Uri) {
        if self.in_folder > 0 && self.outside > 0 {
            tracing::warn!(
                "path {root} has no trailing slash: it is a key prefix, and besides the folder {root}/ it matched {} object(s) outside it (e.g. {:?}); write {root}/ to embed only that folder",
                self.outside,
                self.example.as_deref().unwrap_or_default()
            );
        }
    }
}
