//! Upright RGB image to the model's input tensor: resize the shorter side, centre crop,
//! scale, normalise, lay out as CHW (or HWC) f32.
//!
//! The geometry follows torchvision's `Resize(s)` + `CenterCrop(c)` on a PIL image: the
//! longer side becomes `floor(s * long / short)`, the crop offset is
//! `round_half_even((resized - c) / 2)`. Resize and crop are one pass ([`crate::resample`]):
//! Pillow's resampling, computed only for the crop's pixels, so the result equals PIL's
//! resize-then-crop bit for bit.

use crate::decode::{ImageError, RgbImage};
use crate::resample::{self, Axis};
use crate::spec::{ChannelOrder, Layout, ModelSpec};

/// One image, preprocessed for a model: ready for `embatch_engine::Engine::embed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The input tensor for this image without the batch axis: 3 x height x width (NCHW
    /// models) or height x width x 3 (NHWC models), f32.
    pub tensor: Vec<f32>,
    /// Width of the original image as displayed (after EXIF orientation).
    pub original_width: u32,
    /// Height of the original image as displayed (after EXIF orientation).
    pub original_height: u32,
}

/// Size of the shorter-side resize and the crop offset within it, torchvision style.
///
/// In `u64`: the resized longer side of an extreme aspect ratio does not fit a `u32`
/// (a 16,777,216 x 1 image, within the default pixel limit, resizes to 4,294,967,296 x 256).
pub(crate) fn geometry(w: u32, h: u32, spec: &ModelSpec) -> ResizeGeometry {
    let s = u64::from(spec.preprocess.resize_shorter_to);
    let (w, h) = (u64::from(w), u64::from(h));
    let (rw, rh) = if w <= h {
        (s, s * h / w)
    } else {
        (s * w / h, s)
    };
    let (cw, ch) = (
        u64::from(spec.preprocess.crop_width),
        u64::from(spec.preprocess.crop_height),
    );
    // The spec guarantees resize_shorter_to >= the crop, so neither difference is negative.
    let left = ((rw - cw) as f64 / 2.0).round_ties_even();
    let top = ((rh - ch) as f64 / 2.0).round_ties_even();
    ResizeGeometry {
        resized: (rw, rh),
        crop: (left as u64, top as u64, cw, ch),
    }
}

/// Where the shorter-side resize lands and which part of it the centre crop keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResizeGeometry {
    /// Size after the shorter-side resize.
    pub resized: (u64, u64),
    /// Crop box (left, top, width, height) in resized coordinates.
    pub crop: (u64, u64, u64, u64),
}

/// Resize, crop and normalise `img` into a tensor for `spec`.
pub(crate) fn preprocess(
    img: &RgbImage,
    spec: &ModelSpec,
    original: (u32, u32),
) -> Result<Prepared, ImageError> {
    let g = geometry(img.width, img.height, spec);
    let (left, top, _, _) = g.crop;
    let (cw, ch) = (spec.preprocess.crop_width, spec.preprocess.crop_height);
    let expected = img.width as usize * img.height as usize * 3;
    if img.data.len() != expected {
        return Err(ImageError::Corrupt(format!(
            "decoded image buffer: {} bytes for {}x{} RGB",
            img.data.len(),
            img.width,
            img.height
        )));
    }
    let axes = (
        Axis {
            source: img.width,
            resized: g.resized.0,
            first: left,
            count: cw,
        },
        Axis {
            source: img.height,
            resized: g.resized.1,
            first: top,
            count: ch,
        },
    );
    let rgb = resample::resize_rgb(&img.data, axes, spec.preprocess.interpolation);
    Ok(Prepared {
        tensor: normalise(&rgb, cw as usize, ch as usize, spec),
        original_width: original.0,
        original_height: original.1,
    })
}

/// u8 RGB pixels to normalised f32 in the model's layout and channel order, via one lookup
/// table per channel (256 entries each: `(v / scale - mean) / std`).
fn normalise(rgb: &[u8], w: usize, h: usize, spec: &ModelSpec) -> Vec<f32> {
    let p = &spec.preprocess;
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / p.scale - p.mean[c]) / p.std[c])
    });
    // Source channel for each output channel.
    let order = match spec.input.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let plane = w * h;
    let mut out = vec![0f32; 3 * plane];
    match spec.input.layout {
        Layout::Nchw => {
            for (oc, &sc) in order.iter().enumerate() {
                let dst = &mut out[oc * plane..(oc + 1) * plane];
                for (d, px) in dst.iter_mut().zip(rgb.chunks_exact(3)) {
                    *d = lut[sc][px[sc] as usize];
                }
            }
        }
        Layout::Nhwc => {
            for (d, px) in out.chunks_exact_mut(3).zip(rgb.chunks_exact(3)) {
                for (oc, &sc) in order.iter().enumerate() {
                    d[oc] = lut[sc][px[sc] as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The default model's spec (its file is never opened).
    fn spec() -> ModelSpec {
        let toml = include_str!("../../models/resnet18-v2-7.toml");
        ModelSpec::from_toml(toml, Path::new(".")).unwrap()
    }

    #[test]
    fn geometry_matches_torchvision() {
        let s = spec();
        // 500x375 -> 341x256 (floor), crop offset round((341-224)/2 = 58.5) = 58 (half to even).
        assert_eq!(
            geometry(500, 375, &s),
            ResizeGeometry {
                resized: (341, 256),
                crop: (58, 16, 224, 224)
            }
        );
        // Portrait 3000x4000 -> 256x341.
        assert_eq!(geometry(3000, 4000, &s).resized, (256, 341));
    }

    #[test]
    fn geometry_of_extreme_aspect_ratios_does_not_overflow() {
        let s = spec();
        // 2^24 x 1 resizes to 2^32 x 256: one past u32::MAX.
        assert_eq!(
            geometry(1 << 24, 1, &s),
            ResizeGeometry {
                resized: (1 << 32, 256),
                crop: ((1 << 31) - 112, 16, 224, 224)
            }
        );
        assert_eq!(
            geometry(1, u32::MAX, &s).resized,
            (256, 256 * u64::from(u32::MAX))
        );
    }

    #[test]
    fn normalise_uses_the_spec_mean_and_std_per_channel() {
        let s = spec();
        let rgb = [255u8, 0, 128].repeat(4);
        let t = normalise(&rgb, 2, 2, &s);
        assert!((t[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((t[4] - (0.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((t[8] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
    }
}
