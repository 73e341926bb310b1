//! What we check in a PNG before the `png` crate decodes it. A palette (PLTE chunk) that is not
//! a whole number of RGB entries is an error by the PNG specification, and makes png 0.18.1
//! panic when it expands the palette (found by the decode fuzz target).

use crate::decode::ImageError;

/// The PNG signature's length: chunks start after it.
const SIGNATURE: usize = 8;

/// Walks the chunk headers of `bytes`, a PNG by its signature, to the end or to `IEND`, and
/// refuses a PLTE whose length is not a multiple of 3. What it cannot walk (a cut file) it
/// leaves to the decoder.
pub(crate) fn check_chunks(bytes: &[u8]) -> Result<(), ImageError> {
    let mut at = SIGNATURE;
    while let Some(&[a, b, c, d, ref kind @ ..]) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([a, b, c, d]);
        match kind {
            b"PLTE" if len % 3 != 0 => {
                return Err(ImageError::Corrupt(format!(
                    "PNG palette (PLTE chunk) of {len} bytes: not a whole number of RGB entries"
                )))
            }
            b"IEND" => break,
            _ => {}
        }
        // Length, type and CRC around the data.
        at += 12 + len as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&[0; 4]); // CRC, not read here
        c
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        chunks.iter().for_each(|c| p.extend_from_slice(c));
        p
    }

    #[test]
    fn a_palette_of_whole_rgb_entries_passes_and_a_ragged_one_is_corrupt() {
        let ihdr = chunk(b"IHDR", &[0; 13]);
        let good = png(&[ihdr.clone(), chunk(b"PLTE", &[1; 6]), chunk(b"IEND", &[])]);
        assert!(check_chunks(&good).is_ok());
        for len in [4, 53] {
            let bad = png(&[ihdr.clone(), chunk(b"PLTE", &vec![1; len])]);
            match check_chunks(&bad) {
                Err(ImageError::Corrupt(m)) => assert!(m.contains(&format!("{len} bytes")), "{m}"),
                other => panic!("PLTE of {len} bytes: {other:?}"),
            }
        }
        // After IEND nothing is read; a cut chunk list is the decoder's to report.
        let after_end = png(&[chunk(b"IEND", &[]), chunk(b"PLTE", &[1; 4])]);
        assert!(check_chunks(&after_end).is_ok());
        assert!(check_chunks(&good[..20]).is_ok());
    }
}
