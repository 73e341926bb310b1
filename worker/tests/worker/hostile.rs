//! Hostile input through the `embatch-worker` binary: broken and unusual files and awkward S3
//! keys in one manifest. Every line must end as exactly one stored vector equal to the engine's
//! on the same bytes, or one failure-report line of the expected kind whose message names the
//! S3 key; the worker exits 0 without a panic, and its peak RSS (`ru_maxrss` from `wait4`)
//! stays within a bound of a baseline run of ordinary images through the same worker. A third
//! run, the control, shows the measure sees one large legitimate decode. The
//! `RELIABILITY hostile ...` lines on stderr are the numbers for RELIABILITY.md:
//! `cargo test --release -p embatch-worker --locked --test worker hostile:: -- --nocapture`.
//!
//! All three runs pass `--max-encoded-bytes 1048576` (1 MiB instead of the 64 MiB default) so
//! that the oversized files stay cheap: ~1.4 MB of noise is "oversized" here.

use std::collections::BTreeMap;
use std::time::Instant;

use embatch_engine::{Engine, Limits};
use embatch_formats::manifest::ManifestLine;
use embatch_formats::run::exit;
use embatch_localaws::sample::png_declaring;
use embatch_records::reader::TableReader;
use embatch_testkit::peak_memory::run_measured;
use image::ImageFormat;

use crate::common;
use common::hostile::*;
use common::*;

/// The worker's `--max-encoded-bytes` in every run.
const MAX_ENCODED_BYTES: u64 = 1 << 20;
const MIB: u64 = 1 << 20;
/// How far above the baseline run's peak RSS the hostile run may go: less than decoding one
/// legitimate 81 Mpixel image adds (the control at the end: ~180 MiB), against 30 GB to decode
/// the 100,000 x 100,000 PNG and 12.9 GB the 65,535 x 65,535 JPEG.
const RSS_HEADROOM: u64 = 64 * MIB;
/// And in absolute terms.
const RSS_CEILING: u64 = 1024 * MIB;

/// One manifest line of the hostile corpus.
struct Case {
    /// The ImageId (and, but for a newline, the S3 key).
    id: String,
    bytes: Vec<u8>,
    /// The manifest's `size` when it is not the object's.
    listed_size: Option<u64>,
    /// `None`: stored; else the failure kind.
    failure: Option<&'static str>,
}

fn stored(id: impl Into<String>, bytes: Vec<u8>) -> Case {
    Case {
        id: id.into(),
        bytes,
        listed_size: None,
        failure: None,
    }
}

fn failed(id: impl Into<String>, bytes: Vec<u8>, kind: &'static str) -> Case {
    Case {
        failure: Some(kind),
        ..stored(id, bytes)
    }
}

/// A 1,024-byte key (S3's maximum) of 1-, 2-, 3- and 4-byte UTF-8 characters.
fn key_of_1024_bytes() -> String {
    let (head, tail) = ("hostile/1024-bytes ", ".jpg");
    let mut key = head.to_string();
    for c in ['é', '日', '🦀', ' ', 'a'].iter().cycle() {
        if key.len() + c.len_utf8() + tail.len() > 1024 - 4 {
            break;
        }
        key.push(*c);
    }
    while key.len() + tail.len() < 1024 {
        key.push('z');
    }
    key.push_str(tail);
    assert_eq!(key.len(), 1024);
    key
}

/// Every case, in manifest order. `python` holds the files of [`python_images`].
fn corpus(python: &std::path::Path) -> Vec<Case> {
    let read = |name: &str| std::fs::read(python.join(name)).unwrap();
    let jpeg = encode(picture(160, 120, 3), ImageFormat::Jpeg);
    let png = encode(picture(160, 120, 4), ImageFormat::Png);
    let webp = encode(picture(160, 120, 5), ImageFormat::WebP);
    let still_gif = encode(picture(160, 120, 6), ImageFormat::Gif);
    let middle = |b: &[u8]| b.len() / 2;
    let huffman = jpeg_segment(&jpeg, 0xC4);
    let mut cases = vec![
        failed("hostile/empty.jpg", Vec::new(), "empty"),
        failed(
            "hostile/page.jpg",
            b"<!DOCTYPE html><html><body>404 Not Found</body></html>".to_vec(),
            "unknown_format",
        ),
        failed(
            "hostile/notes.jpg",
            b"just some text, not a picture\n".to_vec(),
            "unknown_format",
        ),
        failed("hostile/cut-in-half.jpg", cut(&jpeg, 0.5), "truncated"),
        failed("hostile/cut-in-half.png", cut(&png, 0.5), "truncated"),
        failed("hostile/cut-in-half.webp", cut(&webp, 0.5), "truncated"),
        failed("hostile/cut-in-half.gif", cut(&still_gif, 0.5), "truncated"),
        // JPEG entropy-coded data has no checksum, but 64 inverted bytes in the middle of the
        // scan make libjpeg warn ("Corrupt JPEG data: ..."), and a warning stops the decode:
        // the image fails instead of being embedded as a damaged picture.
        failed(
            "hostile/flipped-in-the-scan.jpg",
            flipped(&jpeg, middle(&jpeg), 64),
            "corrupt",
        ),
        // Damage in the Huffman table is detected.
        failed(
            "hostile/flipped-huffman-table.jpg",
            flipped(&jpeg, huffman + 4, 16),
            "corrupt",
        ),
        failed(
            "hostile/flipped-in-the-middle.png",
            flipped(&png, middle(&png), 16),
            "corrupt",
        ),
        failed(
            "hostile/flipped-in-the-middle.webp",
            flipped(&webp, middle(&webp), 16),
            "corrupt",
        ),
        // The gif crate reports LZW data that ends before the frame is full as "image
        // truncated", whatever the file's length.
        failed(
            "hostile/flipped-in-the-middle.gif",
            flipped(&still_gif, middle(&still_gif), 16),
            "truncated",
        ),
        failed(
            "hostile/bomb-100000x100000.png",
            png_declaring(100_000, 100_000),
            "too_many_pixels",
        ),
        // SOF fields are 16-bit: 65,535 x 65,535 is the largest a JPEG can declare.
        failed(
            "hostile/bomb-65535x65535.jpg",
            jpeg_declaring(u16::MAX, u16::MAX),
            "too_many_pixels",
        ),
        failed("hostile/oversized.png", noise_png(800, 600, 1), "too_large"),
        // Listed as 1,000 bytes: refused from the GET's Content-Length, not the manifest.
        Case {
            listed_size: Some(1000),
            ..failed(
                "hostile/oversized-listed-small.png",
                noise_png(800, 600, 2),
                "too_large",
            )
        },
        stored("hostile/cmyk.jpg", read("cmyk.jpg")),
        stored(
            "hostile/rgb16.png",
            sixteen_bit(&picture(160, 120, 7), ImageFormat::Png),
        ),
        stored(
            "hostile/rgb16.tiff",
            sixteen_bit(&picture(160, 120, 8), ImageFormat::Tiff),
        ),
        stored(
            "hostile/animated.gif",
            gif(&[picture(160, 120, 9), picture(160, 120, 40)]),
        ),
    ];
    // Extreme shapes and keys no image should trip on: (key, width, height, format).
    use ImageFormat::{Jpeg, Png};
    let plain = [
        ("hostile/1x1.png", 1, 1, Png),
        ("hostile/10000x10.png", 10_000, 10, Png),
        ("hostile/ünïcödé 日本語 🦀.jpg", 64, 48, Jpeg),
        ("hostile/with  spaces .jpg", 64, 48, Jpeg),
        ("hostile/100%25%.png", 64, 48, Png),
        ("hostile/a+b=c&d?.jpg", 64, 48, Jpeg),
        ("hostile/image id with a\nnewline.png", 64, 48, Png),
        (&key_of_1024_bytes(), 64, 48, Jpeg),
    ];
    for (seed, (key, w, h, format)) in (10..).zip(plain) {
        cases.push(stored(key, encode(picture(w, h, seed), format)));
    }
    cases.push(stored(
        "hostile/exif-6-stripped.jpg",
        read("exif_6_stripped.jpg"),
    ));
    for o in 1..=8 {
        cases.push(stored(
            format!("hostile/exif-{o}.jpg"),
            read(&format!("exif_{o}.jpg")),
        ));
    }
    cases
}

/// The engine's vector for `bytes`.
fn embed(engine: &Engine, bytes: &[u8]) -> Vec<f32> {
    let prepared = engine.prepare(bytes, &Limits::default()).unwrap();
    engine.embed(&[prepared]).unwrap().remove(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_and_keys_each_end_as_a_vector_or_a_named_failure() {
    let fx = Fixture::new().await;
    let engine = fx.engine();
    let limit = MAX_ENCODED_BYTES.to_string();
    // Child `n` to its end, exit 0 asserted: its stderr, peak RSS, seconds and summary.
    let run_child = async |n: usize| {
        let mut command = fx.worker(n);
        command.args(["--max-encoded-bytes", &limit]);
        let started = Instant::now();
        let (status, stderr, peak) = run_measured(command);
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
        (stderr, peak, seconds, fx.summary(n).await)
    };

    // Baseline: ordinary 400 x 300 JPEGs and PNGs through the same worker and flags.
    let mut baseline_lines = Vec::new();
    let mut baseline_images = Vec::new();
    for i in 0..36u32 {
        let format = [ImageFormat::Jpeg, ImageFormat::Png][i as usize % 2];
        let bytes = encode(picture(400, 300, 100 + i), format);
        let line = fx
            .put(
                &format!("baseline/{i:02}.{}", format.extensions_str()[0]),
                &bytes,
            )
            .await;
        baseline_images.push((line.image_id.clone(), bytes));
        baseline_lines.push(line);
    }
    fx.put_manifest(0, &baseline_lines).await;
    let (stderr, baseline_peak, baseline_seconds, summary) = run_child(0).await;
    eprintln!(
        "RELIABILITY hostile baseline: lines={} -> written={} failed={} seconds={baseline_seconds:.1} peak_rss_mib={:.1}",
        baseline_lines.len(),
        summary.written,
        summary.failed,
        mib(baseline_peak)
    );
    assert_eq!(
        (summary.written, summary.skipped, summary.failed),
        (baseline_lines.len() as u64, 0, 0),
        "{stderr}"
    );

    // The hostile manifest.
    let dir = tempfile::tempdir().unwrap();
    python_images(dir.path());
    let cases = corpus(dir.path());
    let mut lines: Vec<ManifestLine> = Vec::new();
    for case in &cases {
        // moto cannot store an S3 key with a newline (its router answers 404 to the PUT), so
        // that case carries the newline in the ImageId, the table's key, with a plain S3 key.
        let mut line = fx
            .put(&case.id.replace('\n', "-newline-"), &case.bytes)
            .await;
        line.image_id = case.id.clone();
        if let Some(size) = case.listed_size {
            line.size = size;
        }
        lines.push(line);
    }
    fx.put_manifest(1, &lines).await;
    let (stderr, peak, seconds, summary) = run_child(1).await;
    assert!(!stderr.contains("panicked"), "{stderr}");
    let expected_failures: BTreeMap<&str, &str> = cases
        .iter()
        .filter_map(|c| Some((c.id.as_str(), c.failure?)))
        .collect();
    let valid: Vec<(String, Vec<u8>)> = cases
        .iter()
        .filter(|c| c.failure.is_none())
        .map(|c| (c.id.clone(), c.bytes.clone()))
        .collect();
    eprintln!(
        "RELIABILITY hostile: lines={} -> written={} skipped={} failed={} seconds={seconds:.1} \
         peak_rss_mib={:.1} baseline_peak_rss_mib={:.1} max_encoded_bytes={MAX_ENCODED_BYTES}",
        lines.len(),
        summary.written,
        summary.skipped,
        summary.failed,
        mib(peak),
        mib(baseline_peak)
    );

    // Every line ends exactly once: the counts, then each failure line, then each vector.
    assert_eq!(summary.images, lines.len() as u64);
    assert_eq!(
        summary.written + summary.failed,
        lines.len() as u64,
        "nothing lost"
    );
    assert_eq!(
        (summary.written, summary.skipped, summary.failed),
        (valid.len() as u64, 0, expected_failures.len() as u64),
        "{stderr}"
    );
    let failures = fx.failures(1).await;
    assert_eq!(failures.len(), expected_failures.len(), "{failures:?}");
    let mut reported = BTreeMap::new();
    for f in &failures {
        eprintln!(
            "RELIABILITY hostile case: {:?} -> failed {} ({})",
            f.image_id, f.kind, f.message
        );
        let expected = expected_failures
            .get(f.image_id.as_str())
            .unwrap_or_else(|| panic!("unexpected failure {f:?}"));
        assert_eq!(f.kind, *expected, "{f:?}");
        assert!(
            f.message.contains(&f.key) && f.key == f.image_id.replace('\n', "-newline-"),
            "the message names the S3 key: {f:?}"
        );
        assert!(
            reported.insert(f.image_id.clone(), f).is_none(),
            "reported twice: {f:?}"
        );
    }
    // The manifest's size, then the object's Content-Length: each refusal names the size it saw.
    let real = |id: &str| cases.iter().find(|c| c.id == id).unwrap().bytes.len();
    let too_large = |id: &str, size: usize| {
        let message = &reported[id].message;
        let expected = format!("input is {size} bytes, over the limit of {MAX_ENCODED_BYTES}");
        assert!(message.contains(&expected), "{message}");
    };
    too_large("hostile/oversized.png", real("hostile/oversized.png"));
    too_large(
        "hostile/oversized-listed-small.png",
        real("hostile/oversized-listed-small.png"),
    );

    assert_eq!(fx.stored().await, baseline_lines.len() + valid.len());
    fx.assert_vectors(&engine, &baseline_images).await;
    fx.assert_vectors(&engine, &valid).await;
    let reader = TableReader::new(fx.dynamodb.clone(), fx.table.clone());
    let ids: Vec<&str> = valid.iter().map(|(id, _)| id.as_str()).collect();
    let records = reader.get(&ids).await.unwrap();
    for id in &ids {
        let meta = &records.record(id).unwrap().meta;
        eprintln!(
            "RELIABILITY hostile case: {id:?} -> written {}x{}",
            meta.width.unwrap(),
            meta.height.unwrap()
        );
    }
    let vector = |id: &str| records.vector(id).unwrap();
    let size = |id: &str| {
        let meta = &records.record(id).unwrap().meta;
        (meta.width.unwrap(), meta.height.unwrap())
    };

    // EXIF orientation is applied: every orientation gives the upright picture (400 x 300 as
    // displayed). With the random-weight test model, vectors of the same picture turned by 90°
    // still have cosine ~0.995 (the stripped control below), so the bar is 0.999, not 0.99.
    let upright = vector("hostile/exif-1.jpg");
    for o in 1..=8 {
        let id = format!("hostile/exif-{o}.jpg");
        let c = cosine(vector(&id), upright);
        eprintln!("RELIABILITY hostile exif: orientation {o} cosine to upright {c:.6}");
        assert!(
            c >= 0.999,
            "orientation {o}: cosine {c} to the upright picture"
        );
        assert_eq!(size(&id), (400, 300), "orientation {o}");
    }
    // Control: the pixels of orientation 6 without the tag are not the upright picture.
    let c = cosine(vector("hostile/exif-6-stripped.jpg"), upright);
    eprintln!("RELIABILITY hostile exif: orientation 6 pixels without the tag, cosine {c:.6}");
    assert!(c < 0.999, "the bar cannot tell orientations apart: {c}");
    assert_eq!(size("hostile/exif-6-stripped.jpg"), (300, 400));

    // Animated GIF: the first frame, not the second.
    let animated = vector("hostile/animated.gif");
    let first = cosine(animated, &embed(&engine, &gif(&[picture(160, 120, 9)])));
    let second = cosine(animated, &embed(&engine, &gif(&[picture(160, 120, 40)])));
    eprintln!("RELIABILITY hostile gif: cosine to frame 1 {first:.6}, to frame 2 {second:.6}");
    assert!(first >= 0.9999 && second < 0.999, "{first} {second}");

    // 16 bits per channel: the same vector as the 8-bit picture (v * 257 reduces to v).
    for (id, seed) in [("hostile/rgb16.png", 7), ("hostile/rgb16.tiff", 8)] {
        let eight = embed(&engine, &encode(picture(160, 120, seed), ImageFormat::Png));
        let c = cosine(vector(id), &eight);
        assert!(c >= 0.9999, "{id}: cosine {c} to the 8-bit picture");
    }
    assert_eq!(size("hostile/cmyk.jpg"), (480, 360));
    assert_eq!(size("hostile/1x1.png"), (1, 1));
    assert_eq!(size("hostile/10000x10.png"), (10_000, 10));

    // Peak memory: the bombs were refused from their headers, the oversized files before
    // their bodies were read.
    assert!(
        peak < baseline_peak + RSS_HEADROOM && peak < RSS_CEILING,
        "peak RSS {:.1} MiB on hostile input vs {:.1} MiB on the baseline",
        mib(peak),
        mib(baseline_peak)
    );

    // Control: the measure sees a decoded image. One legitimate 9,000 x 9,000 PNG (81
    // Mpixel, within the limits; one colour, so small encoded) decodes into 243 MB of RGB.
    let big = flat_png(9000, 9000);
    let line = fx.put("control/9000x9000.png", &big).await;
    fx.put_manifest(2, &[line]).await;
    let (stderr, control_peak, _, summary) = run_child(2).await;
    eprintln!(
        "RELIABILITY hostile control: one 9000x9000 PNG ({} bytes) -> written={} peak_rss_mib={:.1}",
        big.len(),
        summary.written,
        mib(control_peak)
    );
    assert_eq!(summary.written, 1, "{stderr}");
    assert!(
        control_peak > baseline_peak + 128 * MIB,
        "decoding 243 MB of pixels raised the peak RSS only to {:.1} MiB (baseline {:.1} MiB)",
        mib(control_peak),
        mib(baseline_peak)
    );
}
