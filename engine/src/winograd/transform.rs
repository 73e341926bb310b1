//! The Winograd transforms F(m×m, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016): `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for one m×m output tile `Y` of the
//! 3×3 cross-correlation of an α×α input tile `d` (α = m + 2) with a filter `g`.
//!
//! The input and output transforms work on [`LANES`] channels of one tile at a time, so every
//! operation is one vector operation. The matrices are `const`: once the transform is inlined,
//! the compiler sees every coefficient and drops the zero terms.

/// Channels per transform step: one AVX2 vector of f32.
pub const LANES: usize = 8;
/// One value per channel of a step.
pub type Lane = [f32; LANES];

/// One Winograd tile size.
#[derive(Debug)]
pub struct TileKind {
    /// Output tile side m.
    pub m: usize,
    /// Input tile side α = m + 2.
    pub alpha: usize,
}

/// Tile kinds are told apart by their output side.
impl PartialEq for TileKind {
    fn eq(&self, other: &Self) -> bool {
        self.m == other.m
    }
}
impl Eq for TileKind {}

/// F(2×2, 3×3): 4×4 input tiles, 16 products where direct convolution needs 36.
pub static F2: TileKind = TileKind { m: 2, alpha: 4 };
/// F(4×4, 3×3): 6×6 input tiles, 36 products where direct convolution needs 144
/// (interpolation points 0, ±1, ±2, ∞).
pub static F4: TileKind = TileKind { m: 4, alpha: 6 };

const BT2: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
const G2: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const AT2: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

const BT4: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const G4: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const AT4: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// `out[i] = Σ_j mat[i][j] · src[j]`, lane by lane; zero coefficients skipped. Plain loops
/// over `const` matrices (no closures, no `array::from_fn`): once inlined, LLVM unrolls them
/// and folds every coefficient, which it did not do through `from_fn`'s closures.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops: see the doc above
fn mix<const R: usize, const C: usize>(mat: &[[f32; C]; R], src: &[Lane; C], out: &mut [Lane; R]) {
    for i in 0..R {
        let mut o = [0.0; LANES];
        for j in 0..C {
            let coef = mat[i][j];
            if coef != 0.0 {
                for l in 0..LANES {
                    o[l] += coef * src[j][l];
                }
            }
        }
        out[i] = o;
    }
}

/// `Bᵀ d B` for one tile: `d(i, j)` gives element (i, j), `v(ξ, values)` takes position ξ.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // see `mix`
fn input<const A: usize>(
    bt: &[[f32; A]; A],
    d: impl Fn(usize, usize) -> Lane,
    mut v: impl FnMut(usize, &Lane),
) {
    // t[b][i] = Σ_j Bᵀ[b][j] d[i][j] (row transforms, stored transposed), then
    // V[a][b] = Σ_i Bᵀ[a][i] t[b][i].
    let mut t = [[[0.0; LANES]; A]; A];
    let mut row = [[0.0; LANES]; A];
    let mut mixed = [[0.0; LANES]; A];
    for i in 0..A {
        for j in 0..A {
            row[j] = d(i, j);
        }
        mix(bt, &row, &mut mixed);
        for b in 0..A {
            t[b][i] = mixed[b];
        }
    }
    for b in 0..A {
        mix(bt, &t[b], &mut mixed);
        for a in 0..A {
            v(a * A + b, &mixed[a]);
        }
    }
}

/// `Aᵀ M A + bias` for one tile: `mm(ξ)` gives position ξ, `y(r, q, values)` takes output (r, q).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // see `mix`
fn output<const A: usize, const M: usize>(
    at: &[[f32; A]; M],
    mm: impl Fn(usize) -> Lane,
    bias: &Lane,
    mut y: impl FnMut(usize, usize, &Lane),
) {
    // s[q][i] = Σ_j Aᵀ[q][j] M[i][j] (stored transposed), then Y[r][q] = Σ_i Aᵀ[r][i] s[q][i].
    let mut s = [[[0.0; LANES]; A]; M];
    let mut row = [[0.0; LANES]; A];
    let mut mixed = [[0.0; LANES]; M];
    for i in 0..A {
        for j in 0..A {
            row[j] = mm(i * A + j);
        }
        mix(at, &row, &mut mixed);
        for q in 0..M {
            s[q][i] = mixed[q];
        }
    }
    for q in 0..M {
        mix(at, &s[q], &mut mixed);
        for r in 0..M {
            let mut out = mixed[r];
            for l in 0..LANES {
                out[l] += bias[l];
            }
            y(r, q, &out);
        }
    }
}

/// `G g Gᵀ` of one 3×3 filter, row-major α×α.
fn filter<const A: usize>(g: &[[f32; 3]; A], w: &[f32]) -> Vec<f32> {
    let gg: [[f32; 3]; A] = std::array::from_fn(|i| {
        std::array::from_fn(|j| (0..3).map(|r| g[i][r] * w[r * 3 + j]).sum())
    });
    (0..A * A)
        .map(|ij| (0..3).map(|r| gg[ij / A][r] * g[ij % A][r]).sum())
        .collect()
}

impl TileKind {
    /// Number of element-wise products per tile and channel pair (α²): the GEMMs per block.
    pub fn positions(&self) -> usize {
        self.alpha * self.alpha
    }

    /// `U = G g Gᵀ` for every (output channel k, input channel c) of OIHW 3×3 `weights`,
    /// laid out `[ξ][k][c]` (ξ = the α² positions).
    pub fn transform_weights(&self, weights: &[f32], k: usize, c: usize) -> Vec<f32> {
        let xis = self.positions();
        let mut u = vec![0f32; xis * k * c];
        for (kc, w) in weights.chunks_exact(9).enumerate() {
            let t = if self.m == 2 {
                filter(&G2, w)
            } else {
                filter(&G4, w)
            };
            for (xi, v) in t.into_iter().enumerate() {
                u[xi * k * c + kc] = v;
            }
        }
        u
    }

    /// `V = Bᵀ d B` for [`LANES`] channels of one tile: `d(i, j)` loads element (i, j), `v(ξ,
    /// values)` stores position ξ.
    #[inline(always)]
    pub fn input(&self, d: impl Fn(usize, usize) -> Lane, v: impl FnMut(usize, &Lane)) {
        if self.m == 2 {
            input(&BT2, d, v)
        } else {
            input(&BT4, d, v)
        }
    }

    /// `Y = Aᵀ M A + bias` for [`LANES`] output channels of one tile: `mm(ξ)` loads position
    /// ξ, `y(r, q, values)` stores output (r, q).
    #[inline(always)]
    pub fn output(
        &self,
        mm: impl Fn(usize) -> Lane,
        bias: &Lane,
        y: impl FnMut(usize, usize, &Lane),
    ) {
        if self.m == 2 {
            output(&AT2, mm, bias, y)
        } else {
            output(&AT4, mm, bias, y)
        }
    }
}
