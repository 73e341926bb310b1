//! The per-position GEMMs `M = V · W` of the Winograd convolution: V (tiles × C, the
//! transformed input) and M (tiles × K) row-major; W (C × K, the transformed weights) packed
//! once at load into strips of [`NR`] output channels. An AVX2+FMA 6×16 micro-kernel (the BLIS
//! Haswell shape) where the CPU has it, a portable loop elsewhere.

/// Tiles per micro-kernel call; the tiles of a block are padded to a multiple of this.
pub const MR: usize = 6;
/// Output channels per strip of W (two AVX2 vectors).
pub const NR: usize = 16;

/// W for every position, packed: `[ξ][strip][c][NR]`, K padded with zero columns to whole
/// strips.
#[derive(Debug)]
pub struct PackedW {
    /// The packed values start at `data[offset]`, 64-byte aligned: each row of a strip is then
    /// one cache line, and no load of the kernel splits across two.
    data: Vec<f32>,
    offset: usize,
    c: usize,
    strips: usize,
}

impl PackedW {
    /// Packs `u` (`[ξ][k][c]`: U = G g Gᵀ per position, output channel, input channel).
    pub fn new(u: &[f32], positions: usize, k: usize, c: usize) -> Self {
        let strips = k.div_ceil(NR);
        let len = positions * strips * c * NR;
        let mut data = vec![0f32; len + NR];
        let offset = data.as_ptr().align_offset(64);
        let packed = &mut data[offset..][..len];
        for xi in 0..positions {
            for kk in 0..k {
                for cc in 0..c {
                    let (s, lane) = (kk / NR, kk % NR);
                    packed[((xi * strips + s) * c + cc) * NR + lane] = u[(xi * k + kk) * c + cc];
                }
            }
        }
        PackedW {
            data,
            offset,
            c,
            strips,
        }
    }

    /// Size of the packed weights in bytes.
    pub fn bytes(&self) -> usize {
        (self.data.len() - NR) * 4
    }

    /// Row stride of M: K rounded up to whole strips.
    pub fn ld(&self) -> usize {
        self.strips * NR
    }

    fn position(&self, xi: usize) -> &[f32] {
        let len = self.strips * self.c * NR;
        &self.data[self.offset + xi * len..][..len]
    }
}

/// Whether the AVX2+FMA code paths can run here.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `m[p][k] = Σ_c v[p][c] · W[ξ][c][k]` for the `rows` tiles (a multiple of [`MR`]) of `v`
/// (row stride C) into `m` (row stride [`PackedW::ld`]).
pub fn multiply(w: &PackedW, xi: usize, v: &[f32], m: &mut [f32], rows: usize) {
    assert!(rows.is_multiple_of(MR) && v.len() >= rows * w.c && m.len() >= rows * w.ld());
    let strips = w.position(xi);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the slices hold every index the
        // kernel touches (asserted above).
        unsafe { avx2::multiply(strips, w.c, w.ld(), v, m, rows) };
        return;
    }
    portable(strips, w.c, w.ld(), v, m, rows);
}

/// The same product without SIMD intrinsics.
fn portable(strips: &[f32], c: usize, ld: usize, v: &[f32], m: &mut [f32], rows: usize) {
    for p in 0..rows {
        let out = &mut m[p * ld..][..ld];
        out.fill(0.0);
        for (s, ws) in strips.chunks_exact(c * NR).enumerate() {
            let out = &mut out[s * NR..][..NR];
            for (cc, wrow) in ws.chunks_exact(NR).enumerate() {
                let x = v[p * c + cc];
                for (o, wv) in out.iter_mut().zip(wrow) {
                    *o += x * wv;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// See [`super::multiply`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn multiply(
        strips: &[f32],
        c: usize,
        ld: usize,
        v: &[f32],
        m: &mut [f32],
        rows: usize,
    ) {
        // Tiles outer: one panel of V stays in L1 while W's strips stream from L2.
        for p in (0..rows).step_by(MR) {
            for (s, ws) in strips.chunks_exact(c * NR).enumerate() {
                kernel(
                    ws.as_ptr(),
                    c,
                    v.as_ptr().add(p * c),
                    m.as_mut_ptr().add(p * ld + s * NR),
                    ld,
                );
            }
        }
    }

    /// One MR × NR block of M.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel(w: *const f32, c: usize, v: *const f32, out: *mut f32, ld: usize) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for cc in 0..c {
            let w0 = _mm256_loadu_ps(w.add(cc * NR));
            let w1 = _mm256_loadu_ps(w.add(cc * NR + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*v.add(r * c + cc));
                a[0] = _mm256_fmadd_ps(x, w0, a[0]);
                a[1] = _mm256_fmadd_ps(x, w1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * ld), a[0]);
            _mm256_storeu_ps(out.add(r * ld + 8), a[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable loop and the dispatched product (AVX2 where the CPU has it) agree with a
    /// plain triple loop, K not a multiple of a strip.
    #[test]
    fn products_match_a_plain_matrix_multiplication() {
        let (xis, k, c, rows) = (2, 24, 9, 12);
        let u: Vec<f32> = (0..xis * k * c)
            .map(|i| (i % 17) as f32 * 0.25 - 2.0)
            .collect();
        let v: Vec<f32> = (0..xis * rows * c)
            .map(|i| (i % 13) as f32 * 0.5 - 3.0)
            .collect();
        let w = PackedW::new(&u, xis, k, c);
        for xi in 0..xis {
            let vx = &v[xi * rows * c..][..rows * c];
            let mut fast = vec![f32::NAN; rows * w.ld()];
            let mut slow = vec![f32::NAN; rows * w.ld()];
            multiply(&w, xi, vx, &mut fast, rows);
            portable(w.position(xi), c, w.ld(), vx, &mut slow, rows);
            for p in 0..rows {
                for kk in 0..k {
                    let want: f32 = (0..c)
                        .map(|cc| vx[p * c + cc] * u[(xi * k + kk) * c + cc])
                        .sum();
                    for (name, got) in [("dispatched", &fast), ("portable", &slow)] {
                        let got = got[p * w.ld() + kk];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{name} [{xi}][{p}][{kk}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
