//! Manifests: the list of images one Batch array child embeds.
//!
//! A manifest is JSON Lines, one [`ManifestLine`] per image, written by the submitter to
//! `<run>/manifests/<n>.jsonl` (see [`crate::run`]) and read by the worker.

use serde::{Deserialize, Serialize};

/// One image to embed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestLine {
    /// Bucket holding the image.
    pub bucket: String,
    /// Object key (any UTF-8, including spaces, `+`, `%` and newlines: JSON escapes it).
    pub key: String,
    /// Object size in bytes, as listed.
    pub size: u64,
    /// Object ETag as listed, without surrounding quotes.
    pub etag: String,
    /// The table key the vector is stored under (see [`crate::image_id`]).
    pub image_id: String,
}

impl ManifestLine {
    /// `s3://bucket/key` of the image.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("manifest {source_name} line {line}: {message}")]
pub struct ManifestError {
    /// Where the manifest came from (an S3 URI or a path).
    pub source_name: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Serialises lines as JSON Lines (each line ends in `\n`).
pub fn to_jsonl(lines: &[ManifestLine]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() * 128);
    for line in lines {
        serde_json::to_writer(&mut out, line).expect("a ManifestLine always serialises");
        out.push(b'\n');
    }
    out
}

/// Parses JSON Lines; blank lines are ignored. `source_name` names the manifest in errors.
///
/// ```
/// use embatch_formats::manifest::{parse_jsonl, to_jsonl, ManifestLine};
/// let line = ManifestLine { bucket: "b".into(), key: "a.jpg".into(), size: 3, etag: "e".into(), image_id: "a.jpg".into() };
/// assert_eq!(parse_jsonl(&to_jsonl(&[line.clone()]), "s3://b/m.jsonl").unwrap(), vec![line]);
/// ```
pub fn parse_jsonl(bytes: &[u8], source_name: &str) -> Result<Vec<ManifestLine>, ManifestError> {
    Lines::new(bytes, source_name)
        .map(|line| line.map(|(_, line)| line))
        .collect()
}

/// The one reader of manifest bytes (the worker's, the submitter's tests', the fuzz
/// target's): each non-blank line parsed as it is pulled, with its 1-based line number.
///
/// A line is split at `\n` only (keys with newlines are JSON-escaped); it is blank if it holds
/// only JSON whitespace (space, tab, `\r`): anything else, `\x0b` or U+00A0 included, must
/// parse. A line must be UTF-8 throughout, unknown fields included.
#[derive(Clone, Debug)]
pub struct Lines<'a> {
    bytes: &'a [u8],
    source_name: &'a str,
    line_no: usize,
}

impl<'a> Lines<'a> {
    /// The lines of `bytes`; `source_name` names the manifest in errors.
    pub fn new(bytes: &'a [u8], source_name: &'a str) -> Self {
        Self {
            bytes,
            source_name,
            line_no: 0,
        }
    }

    fn error(&self, message: String) -> ManifestError {
        ManifestError {
            source_name: self.source_name.to_string(),
            line: self.line_no,
            message,
        }
    }
}

impl Iterator for Lines<'_> {
    type Item = Result<(usize, ManifestLine), ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.bytes.is_empty() {
            let end = self.bytes.iter().position(|&b| b == b'\n');
            let raw = &self.bytes[..end.unwrap_or(self.bytes.len())];
            self.bytes = &self.bytes[end.map_or(self.bytes.len(), |e| e + 1)..];
            self.line_no += 1;
            if raw.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                continue;
            }
            let parsed = match std::str::from_utf8(raw) {
                Ok(text) => serde_json::from_str(text).map_err(|e| self.error(e.to_string())),
                Err(_) => Err(self.error("not UTF-8".to_string())),
            };
            return Some(parsed.map(|line| (self.line_no, line)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(key: &str) -> ManifestLine {
        ManifestLine {
            bucket: "bucket".into(),
            key: key.into(),
            size: 10,
            etag: "abc".into(),
            image_id: key.into(),
        }
    }

    #[test]
    fn keys_with_newlines_and_unicode_round_trip_one_per_line() {
        let lines = vec![line("a\nb.jpg"), line("ü +%.png"), line("plain.jpg")];
        let bytes = to_jsonl(&lines);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 3);
        assert_eq!(parse_jsonl(&bytes, "m").unwrap(), lines);
    }

    #[test]
    fn a_bad_line_is_named_by_number_and_source() {
        let mut bytes = to_jsonl(&[line("a.jpg")]);
        bytes.extend_from_slice(b"{\"bucket\": 1}\n");
        let err = parse_jsonl(&bytes, "s3://b/run/manifests/0.jsonl").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.to_string()
                .contains("s3://b/run/manifests/0.jsonl line 2"),
            "{err}"
        );
    }

    #[test]
    fn not_utf8_inside_an_unknown_field_is_refused() {
        // Found by the manifest_lines fuzz target when the worker had a parser of its own:
        // serde_json's from_slice skips an unknown field's string without checking its UTF-8.
        // The one reader refuses the line, naming it.
        let line = b"{\"bucket\":\"b\",\"key\":\"k\",\"size\":1,\"etag\":\"e\",\"image_id\":\"i\",\"extra\":{\"a\":\"\x98\"}}\r\n";
        let err = parse_jsonl(line, "m").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (1, "not UTF-8"));
    }

    #[test]
    fn only_json_whitespace_is_blank() {
        let good = to_jsonl(&[line("a.jpg")]);
        for blank in [&b" \t\r"[..], b"", b"\r"] {
            let mut bytes = blank.to_vec();
            bytes.push(b'\n');
            bytes.extend_from_slice(&good);
            assert_eq!(parse_jsonl(&bytes, "m").unwrap(), vec![line("a.jpg")]);
        }
        for not_blank in [&b"\x0b"[..], "\u{a0}".as_bytes(), b"\x0c"] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(not_blank);
            bytes.push(b'\n');
            let err = parse_jsonl(&bytes, "m").unwrap_err();
            assert_eq!(err.line, 2, "{not_blank:?}: {err}");
        }
    }

    #[test]
    fn line_numbers_count_blank_lines_and_a_last_line_without_newline() {
        let mut bytes = b"\n  \n".to_vec();
        bytes.extend_from_slice(&to_jsonl(&[line("a.jpg")]));
        bytes.extend_from_slice(to_jsonl(&[line("b.jpg")]).trim_ascii_end());
        let numbers: Vec<usize> = Lines::new(&bytes, "m").map(|l| l.unwrap().0).collect();
        assert_eq!(numbers, vec![3, 4]);
    }
}
