//! Every class of bad input ends as a typed error naming the reason, never a panic.

use crate::common;

use std::io::Cursor;
use std::sync::OnceLock;

use embatch_engine::{Engine, ImageError, Limits};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&common::resnet18()).expect("load the test model"))
}

fn picture(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    })
}

fn encode(format: image::ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    picture(w, h).write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn kind(bytes: &[u8], limits: &Limits) -> &'static str {
    match engine().prepare(bytes, limits) {
        Ok(_) => "ok",
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e.kind()
        }
    }
}

#[test]
fn valid_images_are_accepted() {
    // The controls for everything below.
    for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png] {
        assert_eq!(kind(&encode(format, 300, 200), &Limits::default()), "ok");
    }
}

#[test]
fn empty_input() {
    assert_eq!(
        engine().prepare(&[], &Limits::default()),
        Err(ImageError::Empty)
    );
}

#[test]
fn non_image_bytes() {
    let html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>";
    assert_eq!(kind(html, &Limits::default()), "unknown_format");
    assert_eq!(
        kind(b"hello, world\n", &Limits::default()),
        "unknown_format"
    );
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(kind(&noise, &Limits::default()), "unknown_format");
}

#[test]
fn recognised_but_unsupported_format() {
    // An ICO header: the `image` crate recognises it, we do not decode it.
    let ico = [
        0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0, 0, 0, 0, 0, 22, 0, 0, 0,
    ];
    assert_eq!(kind(&ico, &Limits::default()), "unsupported");
}

#[test]
fn over_the_byte_limit() {
    let jpeg = encode(image::ImageFormat::Jpeg, 300, 200);
    let limits = Limits {
        max_encoded_bytes: jpeg.len() as u64 - 1,
        ..Limits::default()
    };
    assert_eq!(
        engine().prepare(&jpeg, &limits),
        Err(ImageError::TooLarge {
            bytes: jpeg.len() as u64,
            max: jpeg.len() as u64 - 1
        })
    );
    let exact = Limits {
        max_encoded_bytes: jpeg.len() as u64,
        ..Limits::default()
    };
    assert_eq!(kind(&jpeg, &exact), "ok");
}

#[test]
fn over_the_pixel_limit() {
    let limits = Limits {
        max_pixels: 300 * 200 - 1,
        ..Limits::default()
    };
    for format in [
        image::ImageFormat::Jpeg,
        image::ImageFormat::Png,
        image::ImageFormat::Bmp,
    ] {
        let err = engine()
            .prepare(&encode(format, 300, 200), &limits)
            .unwrap_err();
        assert_eq!(
            err,
            ImageError::TooManyPixels {
                width: 300,
                height: 200,
                max: 59_999
            },
            "{format:?}"
        );
    }
}

#[test]
fn truncated_images() {
    for format in [
        image::ImageFormat::Jpeg,
        image::ImageFormat::Png,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
    ] {
        let full = encode(format, 300, 200);
        for cut in [full.len() / 10, full.len() / 2, full.len() * 9 / 10] {
            let r = engine().prepare(&full[..cut], &Limits::default());
            assert_eq!(
                r.as_ref().map_err(ImageError::kind).err(),
                Some("truncated"),
                "{format:?} cut to {cut} of {} bytes: {r:?}",
                full.len()
            );
        }
    }
    // Only the signature survives.
    assert_eq!(kind(&[0xFF, 0xD8, 0xFF], &Limits::default()), "truncated");
}

#[test]
fn corrupt_images() {
    // PNG whose IHDR checksum is wrong.
    let mut png = encode(image::ImageFormat::Png, 300, 200);
    png[29] ^= 0xFF; // a CRC byte of IHDR (8 signature + 4 length + 4 type + 13 data)
    assert_eq!(kind(&png, &Limits::default()), "corrupt");

    // PNG whose compressed pixel data is garbage.
    let mut png = encode(image::ImageFormat::Png, 300, 200);
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut png[idat + 4..idat + 64] {
        *b = 0x5A;
    }
    assert_eq!(kind(&png, &Limits::default()), "corrupt");

    // JPEG whose frame header declares 0 components.
    let mut jpeg = encode(image::ImageFormat::Jpeg, 300, 200);
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 9] = 0; // number of components
    assert_eq!(kind(&jpeg, &Limits::default()), "corrupt");

    // A JPEG signature followed by an HTML page.
    let mut fake = vec![0xFF, 0xD8, 0xFF, 0xE0];
    fake.extend_from_slice(b"<html><body>not really</body></html>");
    let k = kind(&fake, &Limits::default());
    assert!(k == "corrupt" || k == "truncated", "{k}");
}

/// Found by the decode fuzz target (2026-12-03): a palette PNG whose PLTE chunk is 53 bytes,
/// not whole RGB entries, made png 0.18.1 panic while expanding the palette. (The fuzz build
/// skips PNG checksums; here they are made right, as an attacker would.)
const PNG_RAGGED_PALETTE: [u8; 240] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08, 0x04, 0x03, 0x00, 0x00, 0x00, 0x36, 0x21, 0xa3,
    0xb8, 0x00, 0x00, 0x00, 0x35, 0x50, 0x4c, 0x54, 0x45, 0xb9, 0x4c, 0x54, 0x45, 0xb9, 0xd4, 0x1d,
    0xb9, 0x9f, 0xae, 0x5d, 0xba, 0x57, 0x45, 0x42, 0x50, 0x66, 0x94, 0x73, 0x57, 0x0d, 0xba, 0x66,
    0x0d, 0x73, 0x7e, 0xb9, 0x6a, 0xa4, 0xb9, 0x3e, 0x30, 0x5d, 0x54, 0x49, 0x0d, 0x54, 0x74, 0xb9,
    0x1f, 0x61, 0xb9, 0x00, 0x91, 0x5d, 0x1f, 0x83, 0x5d, 0x00, 0x49, 0x0d, 0x1f, 0x21, 0x64, 0xdf,
    0x2f, 0x3c, 0x00, 0x00, 0x00, 0x31, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x01, 0x28, 0x00, 0xd7,
    0xff, 0x01, 0xff, 0xde, 0xde, 0x01, 0x02, 0xef, 0xab, 0x0f, 0xad, 0x01, 0x99, 0xef, 0xde, 0xff,
    0x01, 0x44, 0xdc, 0x11, 0xfc, 0x04, 0x00, 0x01, 0xef, 0x04, 0x01, 0x00, 0x08, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0x02, 0xb8, 0x00, 0x00, 0x00, 0x1d, 0x50, 0x88, 0xc1, 0x7e, 0x91, 0x4c,
    0x54, 0x45, 0xb9, 0xd4, 0x1d, 0xb9, 0x9f, 0xae, 0x5d, 0xba, 0x66, 0x94, 0x73, 0x57, 0x0d, 0xba,
    0x66, 0x0d, 0x73, 0x33, 0x7e, 0xb9, 0x6a, 0xa4, 0xb9, 0x3e, 0x30, 0x5d, 0x54, 0x49, 0x0d, 0x54,
    0x74, 0xb9, 0x1f, 0x61, 0xb9, 0x00, 0x91, 0x5d, 0x1f, 0x83, 0x5d, 0x49, 0x00, 0x0d, 0x1f, 0xa2,
    0x57, 0x0d, 0x00, 0x4d, 0x3a, 0x00, 0x00, 0x33, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x01, 0x28,
    0x00, 0xd7, 0xff, 0x01, 0xff, 0xde, 0xde, 0x01, 0x02, 0xef, 0xab, 0x0f, 0xad, 0x01, 0x99, 0x82,
];

#[test]
fn a_png_whose_palette_is_not_whole_rgb_entries_is_corrupt() {
    let e = engine()
        .prepare(&PNG_RAGGED_PALETTE, &Limits::default())
        .unwrap_err();
    assert_eq!(e.kind(), "corrupt");
    assert!(e.to_string().contains("(PLTE chunk) of 53 bytes"), "{e}");
}

#[test]
fn error_kinds_are_stable() {
    let cases = [
        (ImageError::Empty, "empty"),
        (ImageError::TooLarge { bytes: 2, max: 1 }, "too_large"),
        (
            ImageError::TooManyPixels {
                width: 2,
                height: 2,
                max: 1,
            },
            "too_many_pixels",
        ),
        (ImageError::UnknownFormat, "unknown_format"),
        (ImageError::Unsupported("x".into()), "unsupported"),
        (ImageError::Truncated, "truncated"),
        (ImageError::Corrupt("x".into()), "corrupt"),
    ];
    for (e, k) in cases {
        assert_eq!(e.kind(), k);
    }
}

#[test]
fn extreme_aspect_ratios_within_the_pixel_limit() {
    // Found while choosing the fuzz target's limits (fuzz/README.md): a 2^24 x 1 image is
    // within the default pixel limit, but its resized longer side, 256 x 2^24 = 2^32, did not
    // fit the u32 of the resize geometry. It wrapped to 0 (release: a valid image reported
    // "corrupt"; with overflow checks: a panic). Uniform gray, so every crop gives the same
    // tensor.
    for (w, h) in [(1u32 << 24, 1u32), (1, 1 << 24)] {
        let mut png = Cursor::new(Vec::new());
        image::GrayImage::from_pixel(w, h, image::Luma([128]))
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let prepared = engine()
            .prepare(png.get_ref(), &Limits::default())
            .unwrap_or_else(|e| panic!("{w}x{h}: {e}"));
        assert_eq!((prepared.original_width, prepared.original_height), (w, h));
        let spec = engine().spec();
        let plane = prepared.tensor.len() / 3;
        for (c, values) in prepared.tensor.chunks_exact(plane).enumerate() {
            let p = &spec.preprocess;
            let expected = (128.0 / p.scale - p.mean[c]) / p.std[c];
            assert!(
                values.iter().all(|v| (v - expected).abs() < 1e-5),
                "{w}x{h} channel {c}"
            );
        }
    }
}
