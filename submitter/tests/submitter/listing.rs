//! Listing a large prefix in key ranges at once lists exactly the objects a sequential
//! paginator lists: hash-named keys, folders, keys that sit exactly on split points, and keys
//! whose UTF-8 bytes sort differently from their look (non-ASCII, spaces, `~`).

use std::collections::BTreeSet;
use std::time::Duration;

use embatch_aws::client;
use embatch_formats::image_id::ImageIdMode;
use embatch_formats::manifest::parse_jsonl;
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::emulator;
use embatch_localaws::fixture::{list_keys, put_bytes, Cloud};
use embatch_localaws::listing_server::{ListingServer, SyntheticBucket};
use embatch_submitter::listing::{list, ExtensionFilter, ListOptions, ListingStats};
use embatch_submitter::plan::Planner;
use futures::StreamExt;

/// The keys: 240 hash-like names, folders, and edge cases.
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..240u64)
        .map(|i| format!("mix/flat/{:08x}.jpg", (i * 17_891_237) % (1 << 32)))
        .collect();
    // Flat hash-like names, and keys on the points the first split of flat/ cuts at
    // ("flat/1", "flat/01", …: see key_ranges::split_points).
    keys.extend((0..240u64).map(|i| format!("flat/{:08x}.jpg", (i * 17_891_237) % (1 << 32))));
    for c in "0123456789abcdef".chars() {
        keys.push(format!("flat/{c}"));
        keys.push(format!("flat/0{c}"));
    }
    keys.extend((0..30).map(|i| format!("mix/a/{i}.jpg")));
    keys.extend((0..30).map(|i| format!("mix/b/{i:03}.png")));
    for key in [
        "mix/a/",
        "mix/1",
        "mix/f",
        "mix/flat/1",
        "mix/flat/01",
        "mix/flat/0",
        "mix/flat/f.jpg",
        "mix/é/1.jpg",
        "mix/é.jpg",
        "mix/日本/2.jpg",
        "mix/😀.jpg",
        "mix/a b+c%.jpg",
        "mix/~x.jpg",
        "mix/~",
        "mix/notes.txt",
        "other/1.jpg",
        "other/2.jpg",
    ] {
        keys.push(key.to_string());
    }
    keys
}

/// What the submitter keeps of a listing: its images' keys, sorted, and the counts.
struct Listed {
    images: Vec<String>,
    stats: ListingStats,
}

/// `roots` listed with `options` into the submitter's own plan (one manifest).
async fn list_images(
    s3: &aws_sdk_s3::Client,
    roots: &[S3Uri],
    filter: &ExtensionFilter,
    options: &ListOptions,
) -> anyhow::Result<Listed> {
    let mut planner = Planner::new(roots, filter, ImageIdMode::Key, usize::MAX)?;
    let requests = list(s3, roots, options, &mut |root, object| {
        planner.offer(root, object)
    })
    .await?;
    let planned = planner.finish(&requests)?;
    let mut images = Vec::new();
    for n in 0..planned.manifests {
        let lines = parse_jsonl(&planned.manifest(n)?, "manifest")?;
        images.extend(lines.into_iter().map(|l| l.key));
    }
    // Key ranges arrive in any order.
    images.sort();
    Ok(Listed {
        images,
        stats: planned.stats,
    })
}

fn image_keys(listing: &Listed) -> Vec<&str> {
    listing.images.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn key_ranges_listed_at_once_list_what_a_paginator_lists() {
    let s = Cloud::start().await;
    let keys = keys();
    futures::stream::iter(&keys)
        .map(|key| async { put_bytes(&s.s3, &S3Uri::new(&s.bucket, key.as_str()), b"x").await })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let roots = ["mix/", "flat/", "other/"].map(|prefix| S3Uri::new(&s.bucket, prefix));
    let filter = ExtensionFilter::default();

    let sequential = ListOptions {
        page_size: 7,
        concurrency: 1,
        split_after_pages: u32::MAX,
    };
    let parallel = ListOptions {
        page_size: 7,
        concurrency: 16,
        split_after_pages: 1,
    };
    let one_by_one = list_images(&s.s3, &roots, &filter, &sequential)
        .await
        .unwrap();
    let at_once = list_images(&s.s3, &roots, &filter, &parallel)
        .await
        .unwrap();

    let mut truth = BTreeSet::new();
    for root in &roots {
        truth.extend(list_keys(&s.s3, &s.bucket, &root.key).await);
    }
    assert_eq!(truth, keys.iter().cloned().collect::<BTreeSet<_>>());
    let images: Vec<&str> = truth
        .iter()
        .map(String::as_str)
        .filter(|k| filter.matches(k))
        .collect();
    assert_eq!(image_keys(&one_by_one), images);
    assert_eq!(image_keys(&at_once), images);
    assert_eq!(at_once.stats.objects, truth.len() as u64);
    assert_eq!(at_once.stats.duplicates, 0);
    assert_eq!(
        (at_once.stats.directory_markers, at_once.stats.not_images),
        (
            one_by_one.stats.directory_markers,
            one_by_one.stats.not_images
        )
    );
    // Page by page: ceil(n / 7) pages for each root, one range each.
    let pages =
        |prefix| (truth.iter().filter(|k| k.starts_with(prefix)).count() as u64).div_ceil(7);
    assert_eq!(one_by_one.stats.pages, pages("mix/") + pages("flat/") + 1);
    assert_eq!(one_by_one.stats.ranges, 3);
    assert_eq!(one_by_one.stats.objects, truth.len() as u64);
    // At once: the large prefixes were split (more ranges than roots).
    assert!(at_once.stats.ranges > 10, "{:?}", at_once.stats);
}

/// The listing stand-in's bucket: `objects` hash-like keys under `images/`.
fn synthetic(objects: u64) -> SyntheticBucket {
    SyntheticBucket {
        bucket: "synthetic".into(),
        prefix: "images/".into(),
        objects,
        latency: Duration::ZERO,
    }
}

#[tokio::test]
async fn fifty_thousand_hash_named_keys_listed_at_once_are_each_listed_once() {
    let bucket = synthetic(50_000);
    let server = ListingServer::start(bucket.clone()).unwrap();
    let s3 = client::s3(&emulator::sdk_config_for(&server.endpoint()).await);
    let root = [S3Uri::new(&bucket.bucket, &bucket.prefix)];
    let listing = list_images(
        &s3,
        &root,
        &ExtensionFilter::default(),
        &ListOptions::default(),
    )
    .await
    .unwrap();
    let want: Vec<String> = (0..bucket.objects).map(|i| bucket.key(i)).collect();
    assert_eq!(image_keys(&listing), want);
    assert_eq!(listing.stats.duplicates, 0);
    assert_eq!(listing.stats.pages, server.pages());
    assert!(listing.stats.ranges > 16, "{:?}", listing.stats);
    // Each range ends with a short or empty page: more pages than the 50 of one paginator,
    // fewer than twice as many.
    assert!(
        (51..100).contains(&listing.stats.pages),
        "{:?}",
        listing.stats
    );

    // The stand-in rolls keys up under a delimiter and pages by continuation token.
    let page = s3
        .list_objects_v2()
        .bucket(&bucket.bucket)
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let rolled: Vec<&str> = page
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!((rolled, page.contents().len()), (vec!["images/"], 0));
    let mut paginator = s3
        .list_objects_v2()
        .bucket(&bucket.bucket)
        .prefix("images/f")
        .max_keys(700)
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    while let Some(page) = paginator.next().await {
        keys.extend(
            page.unwrap()
                .contents()
                .iter()
                .map(|o| o.key().unwrap().to_string()),
        );
    }
    let under_f: Vec<&String> = want.iter().filter(|k| k.starts_with("images/f")).collect();
    assert_eq!(keys.iter().collect::<Vec<_>>(), under_f);
}
