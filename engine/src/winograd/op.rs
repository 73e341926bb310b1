//! The Winograd convolution as an op of the tract plan: NCHW f32 in, NCHW f32 out, weights
//! transformed once when the op is made.

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::gemm::{self, PackedW, MR};
use super::transform::{Lane, TileKind, LANES};
use super::transpose::Transpose;
use crate::rewrite::eval_f32;

/// Bytes of one block's transformed inputs and products together: small enough to stay in L2
/// between the input transform, the GEMMs and the output transform (L2 is 512 KB here). Not
/// tuned further: 192 KB to 1.5 MB gave whole-model medians within the machine's noise (±15 %).
const BLOCK_BYTES: usize = 384 * 1024;

/// Shape of one convolution: 3×3, stride 1, dilation 1, one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Images per run.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub k: usize,
    /// Zero rows above and columns left of the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

/// A 3×3 stride-1 convolution computed by Winograd F(m×m, 3×3). Input and output channels
/// are multiples of [`LANES`].
#[derive(Debug, Clone)]
pub struct WinogradConv {
    /// The tile size.
    pub tile: &'static TileKind,
    /// The convolution's shape.
    pub geo: Geometry,
    /// `U = G g Gᵀ`, packed for the GEMMs.
    w: Arc<PackedW>,
    /// One bias per output channel.
    bias: Arc<Vec<f32>>,
}

impl PartialEq for WinogradConv {
    fn eq(&self, other: &Self) -> bool {
        self.tile == other.tile
            && self.geo == other.geo
            && Arc::ptr_eq(&self.w, &other.w)
            && Arc::ptr_eq(&self.bias, &other.bias)
    }
}
impl Eq for WinogradConv {}

/// Reused buffers of one thread: the padded channels-last input, the channels-last output, one
/// block's transformed inputs and products.
#[derive(Default)]
struct Scratch {
    xp: Vec<f32>,
    yb: Vec<f32>,
    v: Vec<f32>,
    mm: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `len` values of `buf`, starting 64-byte aligned (so that no vector load or store of the
/// transforms and kernels splits across cache lines); `buf` grows as needed, never shrinks.
fn at_least(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let offset = buf.as_ptr().align_offset(64);
    &mut buf[offset..][..len]
}

#[inline(always)]
fn load(buf: &[f32], at: usize) -> Lane {
    buf[at..at + LANES]
        .try_into()
        .expect("a lane is LANES values")
}

#[inline(always)]
fn store(buf: &mut [f32], at: usize, v: &Lane) {
    buf[at..at + LANES].copy_from_slice(v);
}

/// Tiles and buffer sizes of one convolution.
struct Layout {
    tiles_y: usize,
    tiles_x: usize,
    /// Height and width of the zero-padded input: every tile's α×α window fits.
    hp: usize,
    wp: usize,
    /// Tiles per block, a multiple of [`MR`].
    block: usize,
}

impl WinogradConv {
    /// The op for OIHW `weights` (K×C×3×3) and `bias` (K values).
    pub fn new(tile: &'static TileKind, geo: Geometry, weights: &[f32], bias: Vec<f32>) -> Self {
        let u = tile.transform_weights(weights, geo.k, geo.c);
        let w = PackedW::new(&u, tile.positions(), geo.k, geo.c);
        WinogradConv {
            tile,
            geo,
            w: Arc::new(w),
            bias: Arc::new(bias),
        }
    }

    fn layout(&self) -> Layout {
        let (g, m) = (&self.geo, self.tile.m);
        let (tiles_y, tiles_x) = (g.out_h.div_ceil(m), g.out_w.div_ceil(m));
        let per_tile = self.tile.positions() * (g.c + self.w.ld()) * 4;
        let tiles = g.n * tiles_y * tiles_x;
        // Each block reads all of W: where W outweighs the transformed tiles (the deep layers,
        // at small batches), one block of every tile reads it once; elsewhere L2-sized blocks.
        let block = if self.w.bytes() >= tiles * per_tile {
            tiles.next_multiple_of(MR)
        } else {
            (BLOCK_BYTES / per_tile / MR).max(1) * MR
        };
        Layout {
            tiles_y,
            tiles_x,
            hp: tiles_y * m + 2,
            wp: tiles_x * m + 2,
            block,
        }
    }

    /// The convolution of `input` (N×C×H×W) into `output` (N×K×out_h×out_w).
    fn convolve(&self, input: &[f32], output: &mut [f32]) {
        let lay = self.layout();
        SCRATCH.with_borrow_mut(|s| {
            #[cfg(target_arch = "x86_64")]
            if gemm::has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { self.run_avx2(input, output, &lay, s) };
                return;
            }
            self.run(input, output, &lay, s)
        });
    }

    /// [`Self::run`] compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, input: &[f32], output: &mut [f32], lay: &Layout, s: &mut Scratch) {
        self.run(input, output, lay, s)
    }

    /// Channels last and padded, then block by block: input transform, one GEMM per position,
    /// output transform; then channels first again.
    #[inline(always)]
    fn run(&self, input: &[f32], output: &mut [f32], lay: &Layout, s: &mut Scratch) {
        let g = &self.geo;
        let xp = at_least(&mut s.xp, g.n * lay.hp * lay.wp * g.c);
        self.to_padded_nhwc(input, xp, lay);
        let yb = at_least(&mut s.yb, g.n * g.out_h * g.out_w * g.k);
        let (xis, ld) = (self.tile.positions(), self.w.ld());
        let v = at_least(&mut s.v, xis * lay.block * g.c);
        let mm = at_least(&mut s.mm, xis * lay.block * ld);
        let total = g.n * lay.tiles_y * lay.tiles_x;
        for first in (0..total).step_by(lay.block) {
            let tiles = first..(first + lay.block).min(total);
            self.input_block(xp, tiles.clone(), lay, v);
            let rows = tiles.len().next_multiple_of(MR);
            for xi in 0..xis {
                let vx = &v[xi * lay.block * g.c..][..rows * g.c];
                let mx = &mut mm[xi * lay.block * ld..][..rows * ld];
                gemm::multiply(&self.w, xi, vx, mx, rows);
            }
            self.output_block(mm, tiles, lay, yb);
        }
        self.to_nchw(yb, output);
    }

    /// (image, tile row, tile column) of tile `p` of the batch.
    #[inline(always)]
    fn tile_at(lay: &Layout, p: usize) -> (usize, usize, usize) {
        let per_image = lay.tiles_y * lay.tiles_x;
        let (img, rest) = (p / per_image, p % per_image);
        (img, rest / lay.tiles_x, rest % lay.tiles_x)
    }

    /// `xp[img][y + pad_top][x + pad_left][c] = input[img][c][y][x]`, zero elsewhere (only
    /// the border is zeroed: the rest is overwritten).
    #[inline(always)]
    fn to_padded_nhwc(&self, input: &[f32], xp: &mut [f32], lay: &Layout) {
        let g = &self.geo;
        let (rows, cols) = (g.h.min(lay.hp - g.pad_top), g.w.min(lay.wp - g.pad_left));
        let row_len = lay.wp * g.c;
        let t = Transpose {
            rows: g.c,
            cols,
            src_stride: g.h * g.w,
            dst_stride: g.c,
        };
        for img in 0..g.n {
            for y in 0..lay.hp {
                let row = &mut xp[(img * lay.hp + y) * row_len..][..row_len];
                if !(g.pad_top..g.pad_top + rows).contains(&y) {
                    row.fill(0.0);
                    continue;
                }
                row[..g.pad_left * g.c].fill(0.0);
                row[(g.pad_left + cols) * g.c..].fill(0.0);
                let src = &input[(img * g.c * g.h + y - g.pad_top) * g.w..];
                t.run(src, &mut row[g.pad_left * g.c..]);
            }
        }
    }

    /// `output[img][k][y][x] = yb[img][y][x][k]`.
    #[inline(always)]
    fn to_nchw(&self, yb: &[f32], output: &mut [f32]) {
        let g = &self.geo;
        let plane = g.out_h * g.out_w;
        let t = Transpose {
            rows: plane,
            cols: g.k,
            src_stride: g.k,
            dst_stride: plane,
        };
        for img in 0..g.n {
            t.run(&yb[img * plane * g.k..], &mut output[img * g.k * plane..]);
        }
    }

    /// V[ξ][r][c] for the tiles of a block (r = tile − first tile).
    #[inline(always)]
    fn input_block(&self, xp: &[f32], tiles: std::ops::Range<usize>, lay: &Layout, v: &mut [f32]) {
        let (g, m) = (&self.geo, self.tile.m);
        let first = tiles.start;
        for p in tiles {
            let (img, ty, tx) = Self::tile_at(lay, p);
            let base = ((img * lay.hp + ty * m) * lay.wp + tx * m) * g.c;
            let r = p - first;
            for c in (0..g.c).step_by(LANES) {
                self.tile.input(
                    |i, j| load(xp, base + (i * lay.wp + j) * g.c + c),
                    |xi, val| store(v, (xi * lay.block + r) * g.c + c, val),
                );
            }
        }
    }

    /// yb[img][y][x][k] from M[ξ][r][k] for the tiles of a block, clipped at the edges.
    #[inline(always)]
    fn output_block(
        &self,
        mm: &[f32],
        tiles: std::ops::Range<usize>,
        lay: &Layout,
        yb: &mut [f32],
    ) {
        let (g, m, ld) = (&self.geo, self.tile.m, self.w.ld());
        let first = tiles.start;
        for p in tiles {
            let (img, ty, tx) = Self::tile_at(lay, p);
            let r = p - first;
            for k in (0..g.k).step_by(LANES) {
                let bias = load(&self.bias, k);
                self.tile.output(
                    |xi| load(mm, (xi * lay.block + r) * ld + k),
                    &bias,
                    |dy, dx, val| {
                        let (y, x) = (ty * m + dy, tx * m + dx);
                        if y < g.out_h && x < g.out_w {
                            store(yb, ((img * g.out_h + y) * g.out_w + x) * g.k + k, val);
                        }
                    },
                );
            }
        }
    }
}

impl Op for WinogradConv {
    fn name(&self) -> StaticName {
        format!("WinogradF{}x3", self.tile.m).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geo)])
    }

    op_as_typed_op!();
}

impl EvalOp for WinogradConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let g = &self.geo;
        ensure!(
            input.shape() == [g.n, g.c, g.h, g.w],
            "WinogradConv expects {:?}, got {:?}",
            [g.n, g.c, g.h, g.w],
            input.shape()
        );
        // `convolve` writes every output value (`to_nchw` fills each plane whole).
        eval_f32(&input, &[g.n, g.k, g.out_h, g.out_w], |x, y| {
            self.convolve(x, y)
        })
    }
}

impl TypedOp for WinogradConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = &self.geo;
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact([g.n, g.k, g.out_h, g.out_w])))
    }

    as_op!();
}
