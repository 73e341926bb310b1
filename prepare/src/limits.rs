//! Input limits: refuse oversized or decompression-bomb inputs before they cost memory.

/// Limits applied to every input image by [`crate::prepare`].
///
/// Both are checked before any pixel buffer is allocated: the byte count first, then the
/// dimensions read from the image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of the encoded file in bytes. Default: 64 MiB ([`Limits::DEFAULT_MAX_ENCODED_BYTES`]).
    pub max_encoded_bytes: u64,
    /// Maximum width x height declared by the image header. Default: 100 megapixels
    /// ([`Limits::DEFAULT_MAX_PIXELS`]), e.g. 12,000 x 8,000 — larger than any camera photo
    /// we expect, small enough that a decoded RGBA image stays below ~400 MB per thread.
    pub max_pixels: u64,
    /// Most scans a progressive JPEG may have. Default: 500 ([`Limits::DEFAULT_MAX_SCANS`]).
    /// Encoders write about ten (libjpeg's default progression has 10, mozjpeg's optimised
    /// ones fewer than 20); a file of thousands of tiny scans costs minutes of CPU
    /// (libjpeg-turbo's "Two Issues with the JPEG Standard"; its fuzzers allow 500).
    pub max_scans: u32,
}

impl Limits {
    /// Default for [`Limits::max_encoded_bytes`]: 64 MiB.
    pub const DEFAULT_MAX_ENCODED_BYTES: u64 = 64 * 1024 * 1024;
    /// Default for [`Limits::max_pixels`]: 100,000,000 pixels.
    pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
    /// Default for [`Limits::max_scans`]: 500.
    pub const DEFAULT_MAX_SCANS: u32 = 500;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_encoded_bytes: Self::DEFAULT_MAX_ENCODED_BYTES,
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_scans: Self::DEFAULT_MAX_SCANS,
        }
    }
}
