//! The plan streams: `embatch submit --dry-run` over a million objects (one flat prefix of
//! hash-named keys, served by the S3 listing stand-in in front of the emulator) peaks at about
//! the memory of a dry run over a hundred thousand. By hand, other sizes (BENCHMARKS.md):
//! `EMBATCH_PLAN_OBJECTS=100000,1000000,10000000 [EMBATCH_PLAN_IMAGE_ID=stem] cargo test
//! --release --locked --workspace --test submitter memory -- --nocapture`.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Fixture;
use embatch_localaws::emulator;
use embatch_localaws::listing_server::{ListingServer, SyntheticBucket};
use embatch_testkit::peak_memory::run_measured;

/// Peak RSS in bytes and wall seconds of a dry run over `objects` synthetic objects.
fn dry_run_peak(f: &Fixture, objects: u64) -> (u64, f64) {
    let bucket = SyntheticBucket {
        bucket: format!("synthetic-{objects}"),
        prefix: "images/".into(),
        objects,
        latency: Duration::ZERO,
    };
    let server = ListingServer::in_front_of(bucket.clone(), &f.emulator.endpoint()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_embatch"));
    command
        .args(
            f.submit_args()
                .iter()
                .filter(|a| *a != &f.bucket && *a != "--bucket"),
        )
        .args(["--bucket", &bucket.bucket, "--dry-run", "images/"])
        // By hand: `stem` keeps an 8-byte hash an image to find ImageId collisions.
        .args([
            "--image-id",
            &std::env::var("EMBATCH_PLAN_IMAGE_ID").unwrap_or("key".into()),
        ])
        .env_clear()
        .envs(emulator::env_for(&server.endpoint()))
        .env("RUST_LOG", "embatch_submitter=info");
    let started = Instant::now();
    let (status, stderr, peak) = run_measured(command);
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "{stderr}");
    // The stats of "listing done": every object listed and kept.
    let kept = format!("objects: {objects}, duplicates: 0");
    assert!(
        stderr.contains(&kept) && stderr.contains(&format!("images: {objects} ")),
        "{stderr}"
    );
    (peak, seconds)
}

#[tokio::test]
async fn a_dry_run_over_a_million_objects_peaks_near_one_over_a_hundred_thousand() {
    let sizes: Vec<u64> = std::env::var("EMBATCH_PLAN_OBJECTS")
        .map(|v| v.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![100_000, 1_000_000]);
    let f = Fixture::new().await;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut peaks = Vec::new();
    for &objects in &sizes {
        let (peak, seconds) = dry_run_peak(&f, objects);
        eprintln!(
            "{objects} objects: peak RSS {:.1} MiB, {seconds:.1} s",
            mib(peak)
        );
        peaks.push(mib(peak));
    }
    // Held per object, 1.4 KB as before would add 1.2 GiB at 1M; allow 10 % and 4 MiB.
    let (first, last) = (peaks[0], peaks[peaks.len() - 1]);
    assert!(
        last <= first * 1.10 + 4.0,
        "{} objects {last:.1} MiB against {} {first:.1} MiB",
        sizes[sizes.len() - 1],
        sizes[0]
    );
}
