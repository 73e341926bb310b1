//! Decompression bombs are refused from their header, before any pixel buffer is allocated.
//! This test binary counts every allocation (its own global allocator) and holds the peak
//! while the engine looks at a 100,000 x 100,000 PNG (30 GB as RGB) and a 65,000 x 65,000
//! JPEG. It is a separate binary with one test so no other test's allocations interfere.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use embatch_engine::{Engine, ImageError, Limits};
use embatch_testkit::sample::png_declaring;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A real JPEG whose frame header is patched to declare `w` x `h`.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([10, 20, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    let mut jpeg = out.into_inner();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

#[test]
fn bombs_are_refused_before_allocating() {
    let engine = Engine::load(&common::resnet18()).expect("load the test model");
    let png = png_declaring(100_000, 100_000);
    let jpeg = jpeg_header(65_000, 65_000);
    let limits = Limits::default();

    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let png_result = engine.prepare(&png, &limits);
    let jpeg_result = engine.prepare(&jpeg, &limits);
    let peak = PEAK.load(Ordering::SeqCst) - before;

    assert_eq!(
        png_result,
        Err(ImageError::TooManyPixels {
            width: 100_000,
            height: 100_000,
            max: Limits::DEFAULT_MAX_PIXELS
        })
    );
    assert_eq!(
        jpeg_result,
        Err(ImageError::TooManyPixels {
            width: 65_000,
            height: 65_000,
            max: Limits::DEFAULT_MAX_PIXELS
        })
    );
    assert!(
        peak < 4 << 20,
        "refusing the bombs allocated {peak} bytes at peak; the header check must come first"
    );

    // Control: the counter does see a decoder's image buffer. A 4,000 x 4,000 header within
    // the limits gets a 48 MB buffer before the (tiny) pixel data turns out to be missing.
    let small_bomb = png_declaring(4_000, 4_000);
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = engine.prepare(&small_bomb, &limits);
    let peak = PEAK.load(Ordering::SeqCst) - before;
    assert!(result.is_err(), "{result:?}");
    assert!(
        peak >= 48_000_000,
        "the control allocated only {peak} bytes"
    );
}
