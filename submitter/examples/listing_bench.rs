//! Listing speed: one flat prefix of hash-named keys (the three-hour case) listed page by page
//! and in key ranges at once, from the S3 listing stand-in (`embatch_localaws::listing_server`)
//! at S3's latency per page. Medians of `--runs`.
//!
//! ```text
//! cargo run --release --locked -p embatch-submitter --example listing_bench -- --objects 100000
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use embatch_aws::client;
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::emulator;
use embatch_localaws::listing_server::{ListingServer, SyntheticBucket};
use embatch_submitter::listing::{list, ListOptions};

#[derive(Parser)]
struct Args {
    /// Objects in the flat prefix.
    #[arg(long, default_value_t = 100_000)]
    objects: u64,
    /// Milliseconds per ListObjectsV2 page (S3: about 100).
    #[arg(long, default_value_t = 100)]
    latency_ms: u64,
    /// Runs of each setting (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Pages a range yields before it may be split.
    #[arg(long, default_value_t = ListOptions::default().split_after_pages)]
    split_after_pages: u32,
    /// Requests in flight, one setting per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    concurrency: Vec<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bucket = SyntheticBucket {
        bucket: "synthetic".into(),
        prefix: "images/".into(),
        objects: args.objects,
        latency: Duration::from_millis(args.latency_ms),
    };
    let server = ListingServer::start(bucket.clone())?;
    let s3 = client::s3(&emulator::sdk_config_for(&server.endpoint()).await);
    let root = [S3Uri::new(&bucket.bucket, &bucket.prefix)];
    println!(
        "{} objects, {} ms a page, median of {} runs",
        args.objects, args.latency_ms, args.runs
    );
    let mut baseline = None;
    for &concurrency in &args.concurrency {
        let options = ListOptions {
            concurrency,
            split_after_pages: args.split_after_pages,
            ..ListOptions::default()
        };
        let mut seconds = Vec::new();
        let mut stats = None;
        for _ in 0..args.runs {
            let started = Instant::now();
            let mut listed = 0u64;
            let counts = list(&s3, &root, &options, &mut |_, _| {
                listed += 1;
                Ok(())
            })
            .await?;
            seconds.push(started.elapsed().as_secs_f64());
            anyhow::ensure!(listed == args.objects, "lost objects");
            stats = Some(counts);
        }
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let stats = stats.expect("at least one run");
        let speedup = baseline.map_or(1.0, |b: f64| b / median);
        baseline.get_or_insert(median);
        println!(
            "concurrency {concurrency:>3}: {median:8.2} s  {:>7} pages  {:>5} ranges  {speedup:5.1}x",
            stats.pages, stats.ranges
        );
    }
    Ok(())
}
