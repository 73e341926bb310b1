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
/// use embatch_records::manifest::{parse_jsonl, to_jsonl, ManifestLine};
/// let line = ManifestLine { bucket: "b".into(), key: "a.jpg".into(), size: 3, etag: "e".into(), image_id: "a.jpg".into() };
/// assert_eq!(parse_jsonl(&to_jsonl(&[line.clone()]), "s3://b/m.jsonl").unwrap(), vec![line]);
/// ```
pub fn parse_jsonl(bytes: &[u8], source_name: &str) -> Result<Vec<ManifestLine>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError {
        source_name: source_name.to_string(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8".to_string(),
    })?;
    text.split('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ManifestError {
                source_name: source_name.to_string(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
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
        // From the manifest_lines fuzz target: serde_json's from_slice (the worker's per-line
        // parse) skips an unknown field's string without checking its UTF-8, so the worker
        // accepts this line; parse_jsonl refuses the manifest, naming the line.
        let line = b"{\"bucket\":\"b\",\"key\":\"k\",\"size\":1,\"etag\":\"e\",\"image_id\":\"i\",\"extra\":{\"a\":\"\x98\"}}\r\n";
        let err = parse_jsonl(line, "m").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (1, "not UTF-8"));
    }
}
