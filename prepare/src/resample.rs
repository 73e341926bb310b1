//! Pillow's resize (`Image.resize`, libImaging `ImagingResample` at 8 bits per channel) computed
//! only where the centre crop keeps it: the same filter taps, the same 22-bit fixed-point
//! weights and rounding, the same horizontal-then-vertical passes with the intermediate rows
//! rounded to u8. Each output pixel depends only on its own taps, so computing the crop alone
//! gives exactly the pixels of resize-then-crop: our tensors are the Python reference's, bit for
//! bit, whenever the decoded pixels are (`engine/tests/engine/parity.rs` checks it).
//!
//! Nearest neighbour is not Pillow's (its affine scaler accumulates the step in floating
//! point): source pixel `floor((x + 0.5) * in / out)`, which can differ from it by one pixel.

use std::cell::RefCell;

use crate::jpeg::KEEP_BYTES;
use crate::spec::Interpolation;

thread_local! {
    /// The intermediate rows of this thread's last resize, kept for its next one as the JPEG
    /// pixel buffer is (`jpeg::recycle`): fresh megabytes would cost page faults every image.
    static ROWS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Fractional bits of the fixed-point weights: 32 - 8 (the pixel) - 2 (headroom for filters
/// whose partial sums leave [0, 1]), as Pillow's `PRECISION_BITS`.
const PRECISION_BITS: u32 = 22;
/// Rounding term every sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// The part of a resize to compute along one axis: the source length, the full resized length
/// and the window of it that the crop keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Axis {
    /// Source pixels along this axis.
    pub source: u32,
    /// Length after the resize (may exceed `u32` for extreme aspect ratios).
    pub resized: u64,
    /// First kept output position.
    pub first: u64,
    /// Kept output positions.
    pub count: u32,
}

/// The taps of one axis: for output `i`, source `start[i]..start[i] + len[i]` weighted by
/// `weights[i * ksize..][..len[i]]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Taps {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the kept outputs.
    fn new(axis: Axis, Filter { kernel, support }: Filter) -> Taps {
        // Pillow passes the box edges as C floats.
        let in_size = f64::from(axis.source as f32);
        let scale = in_size / axis.resized as f64;
        let filterscale = scale.max(1.0);
        let support = support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let n = axis.count as usize;
        let mut taps = Taps {
            start: Vec::with_capacity(n),
            len: Vec::with_capacity(n),
            ksize,
            weights: vec![0; n * ksize],
        };
        let mut k = vec![0f64; ksize];
        for (i, out) in (axis.first..axis.first + u64::from(axis.count)).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(axis.source)) - xmin;
            let len = xmax.max(0) as usize;
            let mut ww = 0.0;
            for (x, w) in k[..len].iter_mut().enumerate() {
                *w = kernel(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                ww += *w;
            }
            for (w, fixed) in k[..len].iter_mut().zip(&mut taps.weights[i * ksize..]) {
                if ww != 0.0 {
                    *w /= ww;
                }
                *fixed = to_fixed(*w);
            }
            taps.start.push(xmin as usize);
            taps.len.push(len);
        }
        taps
    }

    #[inline(always)]
    fn of(&self, i: usize) -> (usize, &[i32]) {
        (
            self.start[i],
            &self.weights[i * self.ksize..][..self.len[i]],
        )
    }

    /// Source positions `first..end` that any kept output reads: from the first output's
    /// first tap to the last one's last (both ends only grow with the output position).
    fn span(&self) -> (usize, usize) {
        let n = self.start.len();
        match n {
            0 => (0, 0),
            _ => (self.start[0], self.start[n - 1] + self.len[n - 1]),
        }
    }
}

/// A convolution filter: Pillow's kernel and its support (half-width at scale 1).
#[derive(Clone, Copy)]
struct Filter {
    kernel: fn(f64) -> f64,
    support: f64,
}

impl Filter {
    /// Pillow's filter for `interpolation`; none for nearest neighbour.
    fn of(interpolation: Interpolation) -> Option<Filter> {
        let (kernel, support): (fn(f64) -> f64, f64) = match interpolation {
            Interpolation::Nearest => return None,
            Interpolation::Bilinear => (bilinear, 1.0),
            Interpolation::Bicubic => (bicubic, 2.0),
            Interpolation::Lanczos3 => (lanczos, 3.0),
        };
        Some(Filter { kernel, support })
    }
}

fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// Pillow's `clip8`: the fixed-point sum back to a pixel, saturating.
#[inline(always)]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Resizes the interleaved RGB `src` (`width` x `height`) and returns the kept window,
/// `x.count` x `y.count` RGB pixels, row-major.
pub(crate) fn resize_rgb(src: &[u8], axes: (Axis, Axis), interpolation: Interpolation) -> Vec<u8> {
    let Some(filter) = Filter::of(interpolation) else {
        return nearest(src, axes);
    };
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above), all the function requires.
        return unsafe { convolve_avx2(src, axes, filter) };
    }
    convolve::<false>(src, axes, filter)
}

/// [`convolve`] compiled for AVX2: the same integer arithmetic, eight sums at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn convolve_avx2(src: &[u8], axes: (Axis, Axis), filter: Filter) -> Vec<u8> {
    convolve::<true>(src, axes, filter)
}

/// Both passes of Pillow's convolution resize over the kept window. `AVX2`: only from
/// [`convolve_avx2`], on a CPU that has it.
#[inline(always)]
fn convolve<const AVX2: bool>(src: &[u8], (x, y): (Axis, Axis), filter: Filter) -> Vec<u8> {
    let width = x.source as usize;
    let stride = x.count as usize * 3;
    let vertical = Taps::new(y, filter);
    let (row_first, row_end) = vertical.span();
    // Pillow skips a pass whose size does not change; an identity pass would round to the
    // same pixels, so skipping only saves the work.
    let mut rows = ROWS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    rows.clear();
    rows.resize((row_end - row_first) * stride, 0);
    if x.resized == u64::from(x.source) {
        let left = x.first as usize * 3;
        for (r, out) in (row_first..row_end).zip(rows.chunks_exact_mut(stride)) {
            out.copy_from_slice(&src[r * width * 3 + left..][..stride]);
        }
    } else {
        let horizontal = Taps::new(x, filter);
        let line = |r: usize| &src[r * width * 3..][..width * 3];
        // Rows done two at a time with AVX2; the rest (all of them without it) one at a time.
        // Only the x86_64 AVX2 loop below advances it.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut paired = 0;
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            for (pair, r) in rows
                .chunks_exact_mut(2 * stride)
                .zip((row_first..).step_by(2))
            {
                let (o0, o1) = pair.split_at_mut(stride);
                // SAFETY: `convolve_avx2` is the only caller with AVX2 set, and it is only
                // called on a CPU that has AVX2.
                unsafe { x86::horizontal_rows([line(r), line(r + 1)], &horizontal, [o0, o1]) };
                paired += 2;
            }
        }
        let rest = rows[paired * stride..].chunks_exact_mut(stride);
        for (out, r) in rest.zip(row_first + paired..) {
            horizontal_row(line(r), &horizontal, out);
        }
    }
    let out = if y.resized == u64::from(y.source) {
        let top = y.first as usize - row_first;
        rows[top * stride..][..y.count as usize * stride].to_vec()
    } else {
        vertical_pass(&rows, row_first, &vertical, stride)
    };
    if rows.capacity() <= KEEP_BYTES {
        ROWS.with(|r| *r.borrow_mut() = rows);
    }
    out
}

/// The vertical taps over the horizontally resized `rows` (source rows from `row_first`).
#[inline(always)]
fn vertical_pass(rows: &[u8], row_first: usize, vertical: &Taps, stride: usize) -> Vec<u8> {
    let mut out = vec![0u8; vertical.start.len() * stride];
    let mut sums = vec![0i32; stride];
    for (i, line) in out.chunks_exact_mut(stride).enumerate() {
        let (start, weights) = vertical.of(i);
        sums.fill(HALF);
        for (r, &w) in weights.iter().enumerate() {
            let row = &rows[(start + r - row_first) * stride..][..stride];
            for (s, &p) in sums.iter_mut().zip(row) {
                *s += i32::from(p) * w;
            }
        }
        for (o, &s) in line.iter_mut().zip(&sums) {
            *o = clip8(s);
        }
    }
    out
}

/// One source row through the horizontal taps into `out` (one RGB pixel per output).
#[inline(always)]
fn horizontal_row(line: &[u8], taps: &Taps, out: &mut [u8]) {
    for (i, o) in out.chunks_exact_mut(3).enumerate() {
        let (start, weights) = taps.of(i);
        let px = &line[start * 3..][..weights.len() * 3];
        let mut s = [HALF; 3];
        for (p, &w) in px.chunks_exact(3).zip(weights) {
            s[0] += i32::from(p[0]) * w;
            s[1] += i32::from(p[1]) * w;
            s[2] += i32::from(p[2]) * w;
        }
        o[0] = clip8(s[0]);
        o[1] = clip8(s[1]);
        o[2] = clip8(s[2]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Taps, HALF, PRECISION_BITS};
    use std::arch::x86_64::*;

    /// [`super::horizontal_row`] for two rows at once, each output pixel's six sums in one
    /// vector: each tap loads the pixel's bytes from both rows as four lanes each (the fourth,
    /// the next pixel's red, is ignored) and multiplies them by the tap's weight. The same
    /// products and sums, so the same pixels.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal_rows(lines: [&[u8]; 2], taps: &Taps, outs: [&mut [u8]; 2]) {
        let [out0, out1] = outs;
        for (i, (o0, o1)) in out0
            .chunks_exact_mut(3)
            .zip(out1.chunks_exact_mut(3))
            .enumerate()
        {
            let (start, weights) = taps.of(i);
            let mut sum = _mm256_set1_epi32(HALF);
            for (t, &w) in weights.iter().enumerate() {
                let px = _mm256_cvtepu8_epi32(_mm_set_epi32(
                    0,
                    0,
                    pixel(lines[1], start + t),
                    pixel(lines[0], start + t),
                ));
                sum = _mm256_add_epi32(sum, _mm256_mullo_epi32(px, _mm256_set1_epi32(w)));
            }
            // clip8 on each lane: shift, then saturate to i16 and to u8 (the sums' range,
            // -640..639 after the shift, fits i16).
            let shifted = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(sum);
            let halves = _mm_packs_epi32(
                _mm256_castsi256_si128(shifted),
                _mm256_extracti128_si256::<1>(shifted),
            );
            let bytes = _mm_packus_epi16(halves, halves);
            let rgb = (_mm_cvtsi128_si64(bytes) as u64).to_le_bytes();
            o0.copy_from_slice(&rgb[..3]);
            o1.copy_from_slice(&rgb[4..7]);
        }
    }

    /// Pixel `x` of an RGB row as four bytes, the fourth one past it (0 after the last).
    #[inline(always)]
    fn pixel(line: &[u8], x: usize) -> i32 {
        let at = x * 3;
        let b = match line.get(at..at + 4) {
            Some(b) => [b[0], b[1], b[2], b[3]],
            None => [line[at], line[at + 1], line[at + 2], 0],
        };
        i32::from_le_bytes(b)
    }
}

/// Nearest neighbour over the kept window.
fn nearest(src: &[u8], (x, y): (Axis, Axis)) -> Vec<u8> {
    let pick = |a: Axis, i: u64| {
        let s = ((i as f64 + 0.5) * f64::from(a.source) / a.resized as f64) as usize;
        s.min(a.source.saturating_sub(1) as usize)
    };
    let columns: Vec<usize> = (x.first..x.first + u64::from(x.count))
        .map(|i| pick(x, i) * 3)
        .collect();
    let width = x.source as usize * 3;
    let mut out = Vec::with_capacity(x.count as usize * y.count as usize * 3);
    for i in y.first..y.first + u64::from(y.count) {
        let row = &src[pick(y, i) * width..][..width];
        for &c in &columns {
            out.extend_from_slice(&row[c..c + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(source: u32, resized: u64) -> Axis {
        Axis {
            source,
            resized,
            first: 0,
            count: resized as u32,
        }
    }

    #[test]
    fn weights_of_each_output_sum_to_one_in_fixed_point() {
        for interpolation in [
            Interpolation::Bilinear,
            Interpolation::Bicubic,
            Interpolation::Lanczos3,
        ] {
            for (source, resized) in [(500, 341), (341, 500), (7, 3), (1000, 256)] {
                let taps = Taps::new(axis(source, resized), Filter::of(interpolation).unwrap());
                for i in 0..resized as usize {
                    let sum: i32 = taps.of(i).1.iter().sum();
                    // Each weight rounds by at most half a unit.
                    let slack = taps.ksize as i32;
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= slack,
                        "{interpolation:?} {source}->{resized} output {i}: {sum}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_an_identity_resize_copies() {
        let src: Vec<u8> = (0..40 * 30).flat_map(|_| [200, 17, 0]).collect();
        for interpolation in [Interpolation::Bilinear, Interpolation::Lanczos3] {
            let out = resize_rgb(&src, (axis(40, 13), axis(30, 9)), interpolation);
            assert_eq!(out.len(), 13 * 9 * 3);
            assert!(
                out.chunks(3).all(|p| p == [200, 17, 0]),
                "{interpolation:?}"
            );
        }
        let ramp: Vec<u8> = (0..40 * 30 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let same = resize_rgb(&ramp, (axis(40, 40), axis(30, 30)), Interpolation::Bicubic);
        assert_eq!(same, ramp);
    }

    #[test]
    fn the_avx2_path_gives_the_portable_paths_pixels() {
        // Down and up, odd sizes, both edges of the row read (where the four-byte loads stop);
        // on a CPU without AVX2 both sides are the portable path.
        for (w, h, rw, rh) in [(61, 47, 29, 22), (500, 375, 341, 256), (13, 7, 40, 21)] {
            let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 97 % 253) as u8).collect();
            let axes = (axis(w, rw), axis(h, rh));
            for interpolation in [
                Interpolation::Bilinear,
                Interpolation::Bicubic,
                Interpolation::Lanczos3,
            ] {
                assert_eq!(
                    resize_rgb(&src, axes, interpolation),
                    convolve::<false>(&src, axes, Filter::of(interpolation).unwrap()),
                    "{w}x{h} -> {rw}x{rh} {interpolation:?}"
                );
            }
        }
    }

    #[test]
    fn a_window_equals_the_same_part_of_the_full_resize() {
        let src: Vec<u8> = (0..61 * 47 * 3).map(|i| (i * 31 % 251) as u8).collect();
        let (x, y) = (axis(61, 29), axis(47, 22));
        let full = resize_rgb(&src, (x, y), Interpolation::Bilinear);
        let window = (
            Axis {
                first: 5,
                count: 20,
                ..x
            },
            Axis {
                first: 2,
                count: 17,
                ..y
            },
        );
        let part = resize_rgb(&src, window, Interpolation::Bilinear);
        for r in 0..17 {
            assert_eq!(
                part[r * 60..][..60],
                full[((r + 2) * 29 + 5) * 3..][..60],
                "row {r}"
            );
        }
    }
}
