//! Matrix transposes between the plan's channels-first tensors and the op's channels-last
//! buffers: 8×8 blocks in AVX registers where the CPU has AVX, scalar edges and fallback.

/// A `rows` × `cols` matrix read from `src` (row stride `src_stride`) and written transposed
/// into `dst` (row stride `dst_stride`): `dst[j * dst_stride + i] = src[i * src_stride + j]`.
#[derive(Debug, Clone, Copy)]
pub struct Transpose {
    /// Rows of the source.
    pub rows: usize,
    /// Columns of the source.
    pub cols: usize,
    /// Distance between two source rows.
    pub src_stride: usize,
    /// Distance between two destination rows (source columns).
    pub dst_stride: usize,
}

impl Transpose {
    /// Runs the transpose; panics if either slice is too short for the shape.
    pub fn run(&self, src: &[f32], dst: &mut [f32]) {
        let Transpose {
            rows,
            cols,
            src_stride,
            dst_stride,
        } = *self;
        if rows == 0 || cols == 0 {
            return;
        }
        assert!(src.len() >= (rows - 1) * src_stride + cols);
        assert!(dst.len() >= (cols - 1) * dst_stride + rows);
        let (rb, cb) = (rows / 8 * 8, cols / 8 * 8);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx") {
            for i in (0..rb).step_by(8) {
                for j in (0..cb).step_by(8) {
                    // SAFETY: AVX is present; rows i..i+8 and columns j..j+8 of both matrices
                    // lie inside the slices (asserted above).
                    unsafe {
                        avx::block(
                            src.as_ptr().add(i * src_stride + j),
                            src_stride,
                            dst.as_mut_ptr().add(j * dst_stride + i),
                            dst_stride,
                        )
                    };
                }
            }
            self.scalar(src, dst, 0..rb, cb..cols);
            self.scalar(src, dst, rb..rows, 0..cols);
            return;
        }
        self.scalar(src, dst, 0..rows, 0..cols);
    }

    fn scalar(
        &self,
        src: &[f32],
        dst: &mut [f32],
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        for i in rows {
            for j in cols.clone() {
                dst[j * self.dst_stride + i] = src[i * self.src_stride + j];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// One 8×8 block: unpack pairs of rows, shuffle quads, swap 128-bit halves.
    #[target_feature(enable = "avx")]
    pub unsafe fn block(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // Plain loads, not `array::from_fn`, whose closure LLVM may leave un-inlined here.
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, ri) in r.iter_mut().enumerate() {
            *ri = _mm256_loadu_ps(src.add(i * ss));
        }
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for q in 0..4 {
            _mm256_storeu_ps(
                dst.add(q * ds),
                _mm256_permute2f128_ps::<0x20>(s[q], s[q + 4]),
            );
            _mm256_storeu_ps(
                dst.add((q + 4) * ds),
                _mm256_permute2f128_ps::<0x31>(s[q], s[q + 4]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape around the 8×8 blocks, with strides wider than the rows, matches the plain
    /// definition and leaves the destination's gaps alone.
    #[test]
    fn transposes_match_the_definition() {
        for (rows, cols) in [(8, 8), (16, 24), (13, 7), (3, 17), (49, 64), (1, 1)] {
            let t = Transpose {
                rows,
                cols,
                src_stride: cols + 3,
                dst_stride: rows + 5,
            };
            let src: Vec<f32> = (0..rows * t.src_stride).map(|v| v as f32).collect();
            let mut dst = vec![-1.0; cols * t.dst_stride];
            t.run(&src, &mut dst);
            for j in 0..cols {
                for i in 0..t.dst_stride {
                    let want = if i < rows {
                        src[i * t.src_stride + j]
                    } else {
                        -1.0
                    };
                    assert_eq!(dst[j * t.dst_stride + i], want, "{rows}x{cols} at {i},{j}");
                }
            }
        }
    }
}
