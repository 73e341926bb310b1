//! The sample image set of the local run: generated here, so it is licence-clean and needs no
//! download. Four visual families (discs, stripes, checks, gradients) in six formats and
//! several sizes; an image's nearest neighbours should mostly be of its own family, which the
//! local run reports as a sanity check of the whole pipeline.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A generated image: where it goes under the upload prefix, its bytes, and its family.
pub struct SampleImage {
    /// Relative key, e.g. `discs/03.png`.
    pub name: String,
    /// The encoded file.
    pub bytes: Vec<u8>,
    /// The visual family (the folder name).
    pub family: &'static str,
}

/// The families, in folder order.
pub const FAMILIES: [&str; 4] = ["discs", "stripes", "checks", "gradients"];

/// Every format the samples come in, with its file extension.
pub const FORMATS: [(ImageFormat, &str); 6] = [
    (ImageFormat::Jpeg, "jpg"),
    (ImageFormat::Png, "png"),
    (ImageFormat::WebP, "webp"),
    (ImageFormat::Gif, "gif"),
    (ImageFormat::Bmp, "bmp"),
    (ImageFormat::Tiff, "tiff"),
];

const SIZES: [(u32, u32); 4] = [(320, 240), (640, 480), (500, 375), (1200, 900)];

/// `per_family` images of each family, deterministic for a given seed.
pub fn generate(per_family: usize, seed: u64) -> Vec<SampleImage> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(per_family * FAMILIES.len());
    for (f, family) in FAMILIES.iter().enumerate() {
        for i in 0..per_family {
            let (w, h) = SIZES[(i + f) % SIZES.len()];
            let img = draw(family, w, h, &mut rng);
            let (format, ext) = FORMATS[(i + f) % FORMATS.len()];
            let mut bytes = Vec::new();
            DynamicImage::ImageRgb8(img)
                .write_to(&mut Cursor::new(&mut bytes), format)
                .expect("encoding a generated image in memory cannot fail");
            out.push(SampleImage {
                name: format!("{family}/{i:02}.{ext}"),
                bytes,
                family,
            });
        }
    }
    out
}

/// The family of a key produced by [`generate`] (its folder), if any.
pub fn family_of(key: &str) -> Option<&'static str> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| key.split('/').any(|part| part == *f))
}

fn jitter(rng: &mut StdRng, base: u8) -> u8 {
    base.saturating_add_signed(rng.random_range(-30..=30))
}

fn draw(family: &str, w: u32, h: u32, rng: &mut StdRng) -> RgbImage {
    let ink = Rgb([jitter(rng, 200), jitter(rng, 40), jitter(rng, 40)]);
    let paper = Rgb([jitter(rng, 235), jitter(rng, 235), jitter(rng, 225)]);
    match family {
        "discs" => {
            let discs: Vec<(f32, f32, f32)> = (0..rng.random_range(3..8))
                .map(|_| {
                    let r = rng.random_range(0.05..0.2) * w.min(h) as f32;
                    (
                        rng.random_range(0.0..w as f32),
                        rng.random_range(0.0..h as f32),
                        r,
                    )
                })
                .collect();
            RgbImage::from_fn(w, h, |x, y| {
                let inside = discs.iter().any(|&(cx, cy, r)| {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    dx * dx + dy * dy < r * r
                });
                if inside {
                    ink
                } else {
                    paper
                }
            })
        }
        "stripes" => {
            let period = rng.random_range(12..40);
            let blue = Rgb([jitter(rng, 30), jitter(rng, 60), jitter(rng, 200)]);
            RgbImage::from_fn(
                w,
                h,
                |_, y| if (y / period) % 2 == 0 { blue } else { paper },
            )
        }
        "checks" => {
            let cell = rng.random_range(16..64);
            let green = Rgb([jitter(rng, 30), jitter(rng, 160), jitter(rng, 50)]);
            let dark = Rgb([jitter(rng, 20), jitter(rng, 40), jitter(rng, 20)]);
            RgbImage::from_fn(w, h, |x, y| {
                if ((x / cell) + (y / cell)) % 2 == 0 {
                    green
                } else {
                    dark
                }
            })
        }
        _ => {
            let (a, b) = (
                [jitter(rng, 250), jitter(rng, 200), jitter(rng, 30)],
                [jitter(rng, 120), jitter(rng, 30), jitter(rng, 160)],
            );
            RgbImage::from_fn(w, h, |x, y| {
                let t = (x as f32 / w as f32 + y as f32 / h as f32) / 2.0;
                Rgb(std::array::from_fn(|c| {
                    (a[c] as f32 * (1.0 - t) + b[c] as f32 * t) as u8
                }))
            })
        }
    }
}

/// A PNG that declares `w` x `h` RGB pixels and carries one tiny (valid zlib) IDAT chunk: a
/// decompression bomb by its header, for tests of the pixel limit.
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_family_in_several_formats_and_decodes_back() {
        let set = generate(6, 1);
        assert_eq!(set.len(), 24);
        for family in FAMILIES {
            assert_eq!(set.iter().filter(|s| s.family == family).count(), 6);
        }
        let exts: std::collections::BTreeSet<_> = set
            .iter()
            .map(|s| s.name.rsplit('.').next().unwrap())
            .collect();
        assert_eq!(exts.len(), 6, "{exts:?}");
        for s in &set {
            assert_eq!(family_of(&format!("sample/{}", s.name)), Some(s.family));
            image::load_from_memory(&s.bytes).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let (a, b) = (generate(2, 9), generate(2, 9));
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.bytes == y.bytes && x.name == y.name));
    }
}
