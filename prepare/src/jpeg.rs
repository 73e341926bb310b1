//! JPEG through libjpeg-turbo: the TurboJPEG 3 API of the `turbojpeg` crate's bindings, built
//! from the crate's vendored source (cmake, nasm, SIMD required) and linked statically.
//!
//! - **Scale on decode**: TurboJPEG decodes at reduced scale in the DCT domain; [`scale_for`]
//!   picks the smallest of 1/8, 1/4 and 1/2 (PIL's `draft()` scales) whose shorter side is
//!   still at least the caller's minimum ([`crate::decode::DCT_SCALE_MARGIN`] times the resize
//!   target), so a 4000 x 3000 photo decodes as 1000 x 750.
//! - **Stop on warning**: libjpeg recovers from a cut or damaged file by filling the rest with
//!   grey; here any warning is an error, so a cut JPEG fails as `truncated` and a damaged one as
//!   `corrupt` instead of being embedded as a grey picture.
//! - **Limits**: the header's size is checked against [`Limits::max_pixels`] before anything is
//!   allocated (and TurboJPEG's own pixel and memory limits are set behind it), and a
//!   progressive file may hold at most [`Limits::max_scans`] scans.
//! - **Colour**: grayscale and YCbCr arrive as RGB; CMYK and YCCK arrive as CMYK (Adobe's
//!   inverted convention) and are converted here; EXIF orientation is read here (TurboJPEG does
//!   not parse EXIF) and applied by the caller.
//! - **Buffers**: each decode thread keeps one TurboJPEG instance and one pixel buffer and reuses
//!   them for the next image ([`recycle`]): a fresh multi-megabyte buffer costs page faults on
//!   every image. A buffer grown past [`KEEP_BYTES`] by a rare huge image is not kept.

use std::cell::RefCell;
use std::ffi::CStr;

use image::metadata::Orientation;
use turbojpeg::raw;

use crate::decode::{check_pixels, ImageError};
use crate::limits::Limits;

/// Largest pixel buffer a decode thread keeps for the next image (a 16-Mpixel RGB decode).
pub const KEEP_BYTES: usize = 48 << 20;

/// A decoded JPEG: pixels in the thread's reused buffer, before EXIF orientation.
pub(crate) struct Jpeg {
    /// Decoded width (after scaling).
    pub width: u32,
    /// Decoded height (after scaling).
    pub height: u32,
    /// RGB, 3 bytes a pixel, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// The file's size before scaling.
    pub full: (u32, u32),
    /// EXIF orientation (none when absent or unreadable).
    pub orientation: Orientation,
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    static PIXELS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decodes `bytes` at the smallest scale whose shorter side is at least `min_shorter_side`.
pub(crate) fn decode(
    bytes: &[u8],
    limits: &Limits,
    min_shorter_side: u32,
) -> Result<Jpeg, ImageError> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new()?);
        }
        let d = slot.as_mut().expect("just set");
        let result = decode_with(d, bytes, limits, min_shorter_side);
        if result.is_err() {
            // An instance that failed may keep state of the bad file (its Huffman tables, say):
            // the next image gets a fresh one.
            *slot = None;
        }
        result
    })
}

fn decode_with(
    d: &mut Decompressor,
    bytes: &[u8],
    limits: &Limits,
    min_shorter_side: u32,
) -> Result<Jpeg, ImageError> {
    {
        // Our own reading of the frame header first: the pixel limit holds whatever libjpeg
        // makes of the file (it refuses over 65,500 px a side, in its own words).
        let markers = Markers::read(bytes);
        if let Some((w, h)) = markers.frame {
            check_pixels(w.into(), h.into(), limits)?;
        }
        let header = d.header(bytes)?;
        check_pixels(header.width.into(), header.height.into(), limits)?;
        d.limit(limits)?;
        if header.precision > 8 {
            return Err(ImageError::Unsupported(format!(
                "{}-bit JPEG",
                header.precision
            )));
        }
        let scale = if header.lossless {
            Scale::ONE
        } else {
            scale_for(header.width, header.height, min_shorter_side)
        };
        let (w, h) = (scale.apply(header.width), scale.apply(header.height));
        let cmyk = matches!(header.colorspace, raw::TJCS_TJCS_CMYK | raw::TJCS_TJCS_YCCK);
        let (format, channels) = if cmyk {
            (raw::TJPF_TJPF_CMYK, 4)
        } else {
            (raw::TJPF_TJPF_RGB, 3)
        };
        let mut pixels = PIXELS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        pixels.clear();
        pixels.resize(w as usize * h as usize * channels, 0);
        d.decompress(bytes, scale, format, w, channels, &mut pixels)?;
        if cmyk {
            cmyk_to_rgb_in_place(&mut pixels);
        }
        Ok(Jpeg {
            width: w,
            height: h,
            rgb: pixels,
            full: (header.width, header.height),
            orientation: markers.orientation.unwrap_or(Orientation::NoTransforms),
        })
    }
}

/// Decodes `bytes` at `scale` exactly (one of TurboJPEG's factors), before EXIF orientation:
/// `(width, height, RGB pixels)`. For parity checks against other libjpeg-turbo users (PIL's
/// `draft()`) and tools; the engine itself uses [`scale_for`].
pub fn decode_scaled(
    bytes: &[u8],
    limits: &Limits,
    scale: Scale,
) -> Result<(u32, u32, Vec<u8>), ImageError> {
    let mut d = Decompressor::new()?;
    let header = d.header(bytes)?;
    check_pixels(header.width.into(), header.height.into(), limits)?;
    d.limit(limits)?;
    let (w, h) = (scale.apply(header.width), scale.apply(header.height));
    let mut pixels = vec![0; w as usize * h as usize * 3];
    d.decompress(bytes, scale, raw::TJPF_TJPF_RGB, w, 3, &mut pixels)?;
    Ok((w, h, pixels))
}

/// Gives a pixel buffer back to this thread for the next decode.
pub(crate) fn recycle(buffer: Vec<u8>) {
    if buffer.capacity() <= KEEP_BYTES {
        PIXELS.with(|p| {
            let mut slot = p.borrow_mut();
            if slot.capacity() < buffer.capacity() {
                *slot = buffer;
            }
        });
    }
}

/// A scaling factor `num/denom` of TurboJPEG's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Numerator.
    pub num: u32,
    /// Denominator.
    pub denom: u32,
}

impl Scale {
    /// No scaling.
    pub const ONE: Scale = Scale { num: 1, denom: 1 };

    /// A dimension after scaling, as TurboJPEG computes it (`TJSCALED`: rounded up).
    pub fn apply(self, dimension: u32) -> u32 {
        ((u64::from(dimension) * u64::from(self.num)).div_ceil(u64::from(self.denom))) as u32
    }
}

/// The smallest of 1/8, 1/4 and 1/2 under which the shorter side of a `width` x `height` JPEG
/// stays at least `min_shorter_side`; 1 when none does. These are the scales of PIL's
/// `draft()`, so our decoded pixels are the reference's and so are the vectors (cosine
/// 0.999999 over 409 photos, BENCHMARKS.md). TurboJPEG has every M/8, but measured they do not
/// pay: 3/8 cost parity (cosine 0.99978 to the reference on 3/8-decoded photos) and saved no
/// time (its 3x3 IDCT has no SIMD; 2560 x 1600 photos took the same at 3/8 as at 1/2), and 5/8
/// to 7/8 save little decoding (a 7/8 decode still has 77 % of the pixels) and cost parity
/// (cosine 0.9984 on a 7/8-decoded 812 x 642 photo against the full-decode reference).
pub fn scale_for(width: u32, height: u32, min_shorter_side: u32) -> Scale {
    let shorter = width.min(height);
    [8, 4, 2]
        .into_iter()
        .map(|denom| Scale { num: 1, denom })
        .find(|f| f.apply(shorter) >= min_shorter_side)
        .unwrap_or(Scale::ONE)
}

/// What [`Decompressor::header`] reads.
struct Header {
    width: u32,
    height: u32,
    colorspace: raw::TJCS,
    precision: i32,
    lossless: bool,
}

/// One TurboJPEG decompression instance (not `Send`: kept per thread).
struct Decompressor {
    handle: raw::tjhandle,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.handle) };
    }
}

impl Decompressor {
    fn new() -> Result<Self, ImageError> {
        // SAFETY: plain constructor; a null handle is checked below.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        if handle.is_null() {
            return Err(ImageError::Unsupported(
                "libjpeg-turbo could not be initialised".into(),
            ));
        }
        let mut d = Decompressor { handle };
        d.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        Ok(d)
    }

    fn set(&mut self, param: raw::TJPARAM, value: libc::c_int) -> Result<(), ImageError> {
        // SAFETY: a valid handle; an unknown parameter is reported as -1.
        if unsafe { raw::tj3Set(self.handle, param as libc::c_int, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn get(&self, param: raw::TJPARAM) -> libc::c_int {
        // SAFETY: a valid handle.
        unsafe { raw::tj3Get(self.handle, param as libc::c_int) }
    }

    /// The scan limit, and TurboJPEG's own limits behind our header check: pixels, and memory
    /// for the coefficient buffers of progressive files (about 6 bytes a pixel at full size).
    fn limit(&mut self, limits: &Limits) -> Result<(), ImageError> {
        let scans = libc::c_int::try_from(limits.max_scans).unwrap_or(libc::c_int::MAX);
        self.set(raw::TJPARAM_TJPARAM_SCANLIMIT, scans)?;
        let pixels = libc::c_int::try_from(limits.max_pixels).unwrap_or(libc::c_int::MAX);
        let megabytes = (limits.max_pixels.saturating_mul(8) >> 20).saturating_add(16);
        self.set(raw::TJPARAM_TJPARAM_MAXPIXELS, pixels)?;
        self.set(
            raw::TJPARAM_TJPARAM_MAXMEMORY,
            libc::c_int::try_from(megabytes).unwrap_or(libc::c_int::MAX),
        )
    }

    fn header(&mut self, bytes: &[u8]) -> Result<Header, ImageError> {
        // SAFETY: `bytes` is valid for its length; TurboJPEG only reads it.
        let r = unsafe {
            raw::tj3DecompressHeader(self.handle, bytes.as_ptr(), bytes.len() as raw::size_t)
        };
        if r != 0 {
            return Err(self.error());
        }
        let dimension = |p| u32::try_from(self.get(p)).unwrap_or(0);
        Ok(Header {
            width: dimension(raw::TJPARAM_TJPARAM_JPEGWIDTH),
            height: dimension(raw::TJPARAM_TJPARAM_JPEGHEIGHT),
            colorspace: self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS,
            precision: self.get(raw::TJPARAM_TJPARAM_PRECISION),
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0,
        })
    }

    fn decompress(
        &mut self,
        bytes: &[u8],
        scale: Scale,
        format: raw::TJPF,
        width: u32,
        channels: usize,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let factor = raw::tjscalingfactor {
            num: scale.num as libc::c_int,
            denom: scale.denom as libc::c_int,
        };
        // SAFETY: a valid handle; TurboJPEG refuses (non-zero) a factor it does not support.
        if unsafe { raw::tj3SetScalingFactor(self.handle, factor) } != 0 {
            return Err(self.error());
        }
        let pitch = width as usize * channels;
        let pitch = libc::c_int::try_from(pitch)
            .map_err(|_| ImageError::Unsupported(format!("a {width} px wide JPEG")))?;
        // SAFETY: `out` holds pitch x scaled height bytes, the size TurboJPEG writes for this
        // header and scale (the caller sized it from the same header); `bytes` is only read.
        let r = unsafe {
            raw::tj3Decompress8(
                self.handle,
                bytes.as_ptr(),
                bytes.len() as raw::size_t,
                out.as_mut_ptr(),
                pitch,
                format as libc::c_int,
            )
        };
        if r != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// The last error, as a failure kind: libjpeg's "Corrupt JPEG data: ..." warnings are
    /// `corrupt` (even "premature end of data segment": damage, not a cut file), running out of
    /// data ("Premature end of JPEG file") is `truncated`, and so on (with TurboJPEG's message).
    fn error(&self) -> ImageError {
        // SAFETY: a valid handle; the string is owned by the handle and copied at once.
        let message = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle)) }
            .to_string_lossy()
            .into_owned();
        if message.starts_with("Corrupt JPEG data") {
            return ImageError::Corrupt(message);
        }
        crate::decode::classify_message(message)
    }
}

/// Adobe CMYK/YCCK JPEGs hold inverted values (255 - ink), and libjpeg passes them through:
/// `R = (255 - C)(255 - K) / 255` is `c * k / 255` in the stored values. Four bytes a pixel
/// in, three out, in place.
fn cmyk_to_rgb_in_place(pixels: &mut Vec<u8>) {
    let n = pixels.len() / 4;
    for i in 0..n {
        let (c, m, y, k) = (
            u32::from(pixels[4 * i]),
            u32::from(pixels[4 * i + 1]),
            u32::from(pixels[4 * i + 2]),
            u32::from(pixels[4 * i + 3]),
        );
        let ch = |v: u32| ((v * k + 127) / 255) as u8;
        pixels[3 * i] = ch(c);
        pixels[3 * i + 1] = ch(m);
        pixels[3 * i + 2] = ch(y);
    }
    pixels.truncate(3 * n);
}

/// What the markers before the first scan say: the frame's size (SOFn) and the EXIF
/// orientation (APP1). Read by walking the segments, each bounded by its length.
#[derive(Debug, Default, PartialEq)]
struct Markers {
    frame: Option<(u32, u32)>,
    orientation: Option<Orientation>,
}

impl Markers {
    fn read(bytes: &[u8]) -> Markers {
        let mut markers = Markers::default();
        let mut pos = 2; // after SOI
        while pos + 4 <= bytes.len() {
            if bytes[pos] != 0xFF {
                break;
            }
            let marker = bytes[pos + 1];
            match marker {
                0xFF => {
                    pos += 1; // fill byte
                    continue;
                }
                0xD8 | 0x01 | 0xD0..=0xD7 => {
                    pos += 2; // no length
                    continue;
                }
                0xD9 | 0xDA => break, // end of image, start of scan
                _ => {}
            }
            let length = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            let Some(segment) = bytes.get(pos + 4..pos + 2 + length.max(2)) else {
                break;
            };
            match marker {
                // SOF0-15 but DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
                0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) && segment.len() >= 5 => {
                    let h = u16::from_be_bytes([segment[1], segment[2]]);
                    let w = u16::from_be_bytes([segment[3], segment[4]]);
                    markers.frame.get_or_insert((w.into(), h.into()));
                }
                0xE1 if markers.orientation.is_none() => {
                    if let Some(tiff) = segment.strip_prefix(b"Exif\0\0") {
                        markers.orientation = Orientation::from_exif_chunk(tiff);
                    }
                }
                _ => {}
            }
            pos += 2 + length.max(2);
        }
        markers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_scale_that_keeps_the_shorter_side() {
        // 4000 x 3000 for a 512 px shorter side: 1/4 (750); 2000 x 1500: 1/2 (750; 1/4 would
        // leave 375).
        assert_eq!(scale_for(4000, 3000, 512), Scale { num: 1, denom: 4 });
        assert_eq!(scale_for(2000, 1500, 512), Scale { num: 1, denom: 2 });
        assert_eq!(scale_for(8000, 4096, 512), Scale { num: 1, denom: 8 });
        assert_eq!(scale_for(6000, 4000, 512), Scale { num: 1, denom: 4 });
        assert_eq!(scale_for(500, 375, 512), Scale::ONE);
        // Above 1/2 nothing: an 812 x 642 photo decodes whole, not at 7/8.
        assert_eq!(scale_for(812, 642, 512), Scale::ONE);
        assert_eq!(scale_for(1200, 1024, 512), Scale { num: 1, denom: 2 });
        assert!(
            Scale { num: 1, denom: 8 }.apply(4097) == 513,
            "rounded up, as TJSCALED"
        );
    }

    #[test]
    fn cmyk_in_adobes_inverted_convention_becomes_rgb() {
        // Stored inverted: c = 255 - C. No ink (255, 255, 255, 255) is white; full K is black.
        let mut px = vec![255, 255, 255, 255, 255, 255, 255, 0, 0, 255, 255, 255];
        cmyk_to_rgb_in_place(&mut px);
        assert_eq!(px, vec![255, 255, 255, 0, 0, 0, 0, 255, 255]);
    }

    #[test]
    fn the_frame_size_and_exif_orientation_are_read_before_the_first_scan() {
        let tiff = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, // header, IFD at 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation (SHORT) = 6
            0, 0, 0, 0,
        ];
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xE1];
        jpeg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        jpeg.extend_from_slice(&app1);
        // SOF2 (progressive): 8-bit, 65535 high, 65534 wide, 1 component.
        jpeg.extend_from_slice(&[0xFF, 0xC2, 0, 11, 8, 0xFF, 0xFF, 0xFF, 0xFE, 1, 1, 0x11, 0]);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 2]);
        let m = Markers::read(&jpeg);
        assert_eq!(m.orientation, Some(Orientation::Rotate90));
        assert_eq!(m.frame, Some((65534, 65535)));
        assert_eq!(
            Markers::read(&jpeg[..12]),
            Markers::default(),
            "cut inside a segment"
        );
        assert_eq!(
            Markers::read(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]),
            Markers::default()
        );
        assert_eq!(
            Markers::read(&[0xFF, 0xD8, 0x00, 0x00, 0x00]),
            Markers::default()
        );
        assert_eq!(
            Markers::read(&[0xFF, 0xD8, 0xFF, 0xC4, 0, 0]),
            Markers::default(),
            "a zero length"
        );
    }
}
