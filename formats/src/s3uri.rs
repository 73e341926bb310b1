//! `s3://bucket/key` URIs.

use std::fmt;

/// A parsed `s3://bucket/key` location. The key may be empty (a whole bucket) or a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Uri {
    /// Bucket name.
    pub bucket: String,
    /// Object key or prefix, without a leading `/`.
    pub key: String,
}

/// A string that is not an `s3://bucket/key` URI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an S3 URI: {input:?} (expected s3://bucket/key)")]
pub struct S3UriError {
    /// The rejected input.
    pub input: String,
}

impl S3Uri {
    /// Makes a URI from a bucket and a key.
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    /// Parses `s3://bucket` or `s3://bucket/key`.
    ///
    /// ```
    /// use embatch_formats::s3uri::S3Uri;
    /// let u: S3Uri = "s3://photos/2024/a.jpg".parse().unwrap();
    /// assert_eq!((u.bucket.as_str(), u.key.as_str()), ("photos", "2024/a.jpg"));
    /// ```
    pub fn parse(input: &str) -> Result<Self, S3UriError> {
        let err = || S3UriError {
            input: input.to_string(),
        };
        let rest = input.strip_prefix("s3://").ok_or_else(err)?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err());
        }
        Ok(Self::new(bucket, key))
    }

    /// This URI with `suffix` appended to the key.
    pub fn join(&self, suffix: &str) -> Self {
        Self::new(self.bucket.clone(), format!("{}{}", self.key, suffix))
    }
}

/// A key as `ListObjectsV2` returns it with `EncodingType=url`: percent-encoded, with a space
/// as `+` (S3's form encoding). Listing in that mode is what keeps a key holding characters
/// XML 1.0 cannot carry (control characters, and CR, which XML parsers normalise) intact.
///
/// ```
/// use embatch_formats::s3uri::decode_listed_key;
/// assert_eq!(decode_listed_key("a+b%2B%25%0D%01.jpg").unwrap(), "a b+%\r\u{1}.jpg");
/// ```
pub fn decode_listed_key(encoded: &str) -> Result<String, S3UriError> {
    percent_encoding::percent_decode_str(&encoded.replace('+', " "))
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| S3UriError {
            input: encoded.to_string(),
        })
}

impl std::str::FromStr for S3Uri {
    type Err = S3UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_only_and_keys_with_odd_characters() {
        assert_eq!(S3Uri::parse("s3://b").unwrap(), S3Uri::new("b", ""));
        let u = S3Uri::parse("s3://b/a b/ü+%.jpg").unwrap();
        assert_eq!(u.key, "a b/ü+%.jpg");
        assert_eq!(u.to_string(), "s3://b/a b/ü+%.jpg");
    }

    #[test]
    fn rejects_non_s3_strings() {
        for bad in ["", "s3://", "s3:///key", "http://b/k", "b/k"] {
            assert!(S3Uri::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
