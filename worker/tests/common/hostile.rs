//! Hostile inputs for the worker's end-to-end tests.
//!
//! Small generators in Rust (cut, flipped, bombs declared in headers, 16-bit, animated GIF,
//! noise); CMYK JPEGs and EXIF orientations come from the engine tests' own Python generator
//! (`tests/reference/make_images.py`: `picture`, `stored_for`, `exif_bytes`), which the engine's
//! parity test checks against PIL.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use embatch_localaws::{python, run_ok};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{DynamicImage, Frame, ImageBuffer, ImageFormat, Rgb, RgbImage};

use super::{encode, picture};

/// A real 16 x 16 JPEG whose frame header (SOF0) is patched to declare `w` x `h`. The fields
/// are 16-bit: 65,535 x 65,535 is the most a JPEG can declare.
pub fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut jpeg = encode(picture(16, 16, 1), ImageFormat::Jpeg);
    let sof = jpeg_segment(&jpeg, 0xC0);
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

/// The first `fraction` of `bytes`.
pub fn cut(bytes: &[u8], fraction: f64) -> Vec<u8> {
    bytes[..(bytes.len() as f64 * fraction) as usize].to_vec()
}

/// Offset of the first `0xFF marker` in a JPEG (e.g. 0xC0 frame header, 0xC4 Huffman table).
pub fn jpeg_segment(jpeg: &[u8], marker: u8) -> usize {
    jpeg.windows(2)
        .position(|m| m == [0xFF, marker])
        .unwrap_or_else(|| panic!("no 0xFF{marker:02X} segment"))
}

/// `bytes` with the `len` bytes from offset `start` inverted: same length, damaged inside.
pub fn flipped(bytes: &[u8], start: usize, len: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for b in &mut out[start..start + len] {
        *b = !*b;
    }
    out
}

/// `picture` as 16 bits per channel (each 8-bit value v becomes v * 257, exactly v again
/// when reduced to 8 bits).
pub fn sixteen_bit(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let wide: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(image.width(), image.height(), |x, y| {
            Rgb(image.get_pixel(x, y).0.map(|v| u16::from(v) * 257))
        });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb16(wide)
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// A GIF of `frames`, looping forever.
pub fn gif(frames: &[RgbImage]) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.set_repeat(Repeat::Infinite).unwrap();
        encoder
            .encode_frames(
                frames
                    .iter()
                    .map(|f| Frame::new(DynamicImage::ImageRgb8(f.clone()).into_rgba8())),
            )
            .unwrap();
    }
    bytes
}

/// A `w` x `h` PNG of deterministic noise: about 3 bytes per pixel, it does not compress.
pub fn noise_png(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let image = RgbImage::from_fn(w, h, |_, _| {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [r, g, b, ..] = state.to_le_bytes();
        Rgb([r, g, b])
    });
    encode(image, ImageFormat::Png)
}

/// A one-colour `w` x `h` PNG, compressed hard: a small file that decodes into `3 w h` bytes.
pub fn flat_png(w: u32, h: u32) -> Vec<u8> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let image = RgbImage::from_pixel(w, h, Rgb([200, 120, 40]));
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, FilterType::Sub)
        .write_image(&image, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    bytes
}

/// Files made by the engine tests' Python generator (`tests/reference/make_images.py`) into
/// `dir`: `exif_<o>.jpg` for orientations 1-8 (one 400 x 300 picture, stored so that it
/// displays upright once `o` is applied), `exif_6_stripped.jpg` (the pixels of orientation 6
/// without the tag: the control), and `cmyk.jpg` (a 480 x 360 Adobe CMYK JPEG).
pub fn python_images(dir: &Path) {
    const SCRIPT: &str = r#"
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import make_images as m
out = Path(sys.argv[2])
upright = m.picture(400, 300, 10)
for o in range(1, 9):
    m.stored_for(upright, o).save(out / f"exif_{o}.jpg", quality=95, exif=m.exif_bytes(o))
m.stored_for(upright, 6).save(out / "exif_6_stripped.jpg", quality=95)
m.picture(480, 360, 8).convert("CMYK").save(out / "cmyk.jpg", quality=92)
"#;
    let mut python = Command::new(python::interpreter().expect("the project's Python"));
    python
        .arg("-c")
        .arg(SCRIPT)
        .arg(python::workspace_root().join("tests/reference"))
        .arg(dir);
    run_ok(&mut python, "make_images generators");
}
