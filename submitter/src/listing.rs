//! Listing the input prefixes: every page of ListObjectsV2, the prefixes concurrently, each
//! object kept once, images chosen by extension.

use std::collections::BTreeMap;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use aws_sdk_s3::types::EncodingType;
use embatch_aws::sdk_error::describe;
use embatch_formats::s3uri::{decode_listed_key, S3Uri};

/// Extensions listed as images unless `--extensions` says otherwise.
pub const DEFAULT_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// ListObjectsV2 page size. Set explicitly: AWS never returns more than 1000 keys a page,
/// and the emulator returns more when asked to, which would hide pagination bugs.
pub const PAGE_SIZE: i32 = 1000;

/// How many prefixes are listed at once.
const LIST_CONCURRENCY: usize = 8;

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

/// The images under the prefixes, sorted by bucket and key, each once.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// The images.
    pub images: Vec<ListedImage>,
    /// Counts.
    pub stats: ListingStats,
}

/// Lists every prefix in `roots` (concurrently, every page) and keeps the images.
pub async fn list_images(
    s3: &aws_sdk_s3::Client,
    roots: &[S3Uri],
    filter: &ExtensionFilter,
) -> anyhow::Result<Listing> {
    let per_root: Vec<(Vec<ListedImage>, u64)> = futures::stream::iter(roots.iter())
        .map(|root| list_prefix(s3, root))
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect()
        .await?;

    let mut stats = ListingStats::default();
    let mut unique: BTreeMap<(String, String), ListedImage> = BTreeMap::new();
    for (objects, pages) in per_root {
        stats.pages += pages;
        for object in objects {
            let id = (object.bucket.clone(), object.key.clone());
            if unique.insert(id, object).is_some() {
                stats.duplicates += 1;
            }
        }
    }
    stats.objects = unique.len() as u64;

    let mut images = Vec::with_capacity(unique.len());
    for object in unique.into_values() {
        if object.key.ends_with('/') {
            stats.directory_markers += 1;
        } else if !filter.matches(&object.key) {
            stats.not_images += 1;
        } else if object.size == 0 {
            stats.empty += 1;
        } else {
            images.push(object);
        }
    }
    stats.images = images.len() as u64;
    Ok(Listing { images, stats })
}

/// Every object under one prefix, and the number of pages it took. Keys are listed
/// URL-encoded (`EncodingType=url`) and decoded here: one key with a character XML cannot
/// carry would otherwise make its whole page unparseable.
async fn list_prefix(
    s3: &aws_sdk_s3::Client,
    root: &S3Uri,
) -> anyhow::Result<(Vec<ListedImage>, u64)> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(&root.bucket)
        .prefix(&root.key)
        .max_keys(PAGE_SIZE)
        .encoding_type(EncodingType::Url)
        .into_paginator()
        .send();
    let mut objects = Vec::new();
    let mut count = 0u64;
    let mut siblings = Siblings::default();
    while let Some(page) = pages.next().await {
        let page = page
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))
            .with_context(|| format!("listing {root}"))?;
        count += 1;
        for object in page.contents() {
            let Some(encoded) = object.key() else {
                continue;
            };
            let key = decode_listed_key(encoded).with_context(|| {
                format!("listing {root}: key {encoded:?} is not URL-encoded UTF-8")
            })?;
            siblings.see(root, &key);
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
        tracing::debug!(%root, page = count, objects = objects.len(), "listed a page");
    }
    tracing::info!(%root, objects = objects.len(), pages = count, "listed");
    siblings.warn(root);
    Ok((objects, count))
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
