//! The input: the event the original AWS sample's Lambda took, `{"Paths": ["images", "s3://b/p"]}`.

use serde::Deserialize;

use embatch_formats::s3uri::S3Uri;

use crate::InputError;

/// The list of prefixes to embed. Unknown fields are rejected so that a typo such as
/// `"paths"` is an error instead of an empty run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsEvent {
    /// Prefixes in the default bucket, or full `s3://bucket/prefix` URIs.
    #[serde(rename = "Paths")]
    pub paths: Vec<String>,
}

impl PathsEvent {
    /// Parses the event; `source` names where it came from (a file name or `stdin`) in errors.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self, InputError> {
        serde_json::from_slice(bytes).map_err(|e| {
            InputError(format!(
                "malformed event in {source}: {e} (expected {{\"Paths\": [\"prefix\", \"s3://bucket/prefix\"]}})"
            ))
        })
    }

    /// The S3 prefixes to list: a plain path is a prefix of `default_bucket`; an `s3://`
    /// path names its own bucket. Repeated paths are kept once, in order.
    ///
    /// ```
    /// use embatch_submitter::event::PathsEvent;
    /// let e = PathsEvent { paths: vec!["images".into(), "s3://other/more".into()] };
    /// let roots = e.resolve(Some("photos")).unwrap();
    /// assert_eq!(roots[0].to_string(), "s3://photos/images");
    /// assert_eq!(roots[1].to_string(), "s3://other/more");
    /// ```
    pub fn resolve(&self, default_bucket: Option<&str>) -> Result<Vec<S3Uri>, InputError> {
        if self.paths.is_empty() {
            return Err(InputError(
                "the event's Paths list is empty: name at least one prefix".to_string(),
            ));
        }
        let mut roots: Vec<S3Uri> = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let root = if path.starts_with("s3://") {
                S3Uri::parse(path).map_err(|e| InputError(format!("path {path:?}: {e}")))?
            } else if path.contains("://") {
                return Err(InputError(format!(
                    "path {path:?} is neither a prefix nor an s3:// URI"
                )));
            } else {
                let bucket = default_bucket.ok_or_else(|| {
                    InputError(format!(
                        "path {path:?} names no bucket: give --bucket or write s3://bucket/{path}"
                    ))
                })?;
                S3Uri::new(bucket, path.trim_start_matches('/'))
            };
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        Ok(roots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_samples_event() {
        let e = PathsEvent::from_json(br#"{"Paths": ["images", "more/images"]}"#, "x").unwrap();
        assert_eq!(e.paths, ["images", "more/images"]);
    }

    #[test]
    fn malformed_events_name_the_source() {
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"paths": ["a"]}"#,
            br#"{"Paths": "a"}"#,
            br#"{"Paths": [1]}"#,
            b"",
        ] {
            let err = PathsEvent::from_json(bad, "event.json").unwrap_err();
            assert!(err.0.contains("malformed event in event.json"), "{err}");
        }
    }

    #[test]
    fn empty_lists_and_bucketless_paths_are_errors() {
        let empty = PathsEvent { paths: vec![] };
        assert!(empty.resolve(Some("b")).unwrap_err().0.contains("empty"));
        let rel = PathsEvent {
            paths: vec!["images".into()],
        };
        assert!(rel.resolve(None).unwrap_err().0.contains("--bucket"));
        let bad = PathsEvent {
            paths: vec!["s3://".into()],
        };
        assert!(bad.resolve(Some("b")).is_err());
        let http = PathsEvent {
            paths: vec!["https://b/k".into()],
        };
        assert!(http.resolve(Some("b")).is_err());
    }

    #[test]
    fn repeated_paths_are_listed_once() {
        let e = PathsEvent {
            paths: vec!["a".into(), "s3://b/a".into(), "/a".into()],
        };
        assert_eq!(e.resolve(Some("b")).unwrap(), vec![S3Uri::new("b", "a")]);
    }
}
