//! How an S3 object becomes the `ImageId` its vector is stored under.

use serde::{Deserialize, Serialize};

/// The mapping from an object to its `ImageId`, chosen per run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageIdMode {
    /// The object key, e.g. `images/cats/1.jpg` (default: unique within a bucket).
    #[default]
    Key,
    /// The full URI, e.g. `s3://bucket/images/cats/1.jpg` (unique across buckets).
    Uri,
    /// The file name without extension, e.g. `1`: the original AWS sample's choice, kept for
    /// compatibility. Collides easily across folders; the submitter refuses colliding runs.
    Stem,
}

impl ImageIdMode {
    /// Every mode, in the order the help lists them.
    pub const ALL: [ImageIdMode; 3] = [ImageIdMode::Key, ImageIdMode::Uri, ImageIdMode::Stem];

    /// The mode's name on the command line and in `run.json` (`key`, `uri`, `stem`).
    pub fn name(self) -> &'static str {
        match self {
            ImageIdMode::Key => "key",
            ImageIdMode::Uri => "uri",
            ImageIdMode::Stem => "stem",
        }
    }

    /// The `ImageId` of `s3://bucket/key` under this mapping.
    ///
    /// ```
    /// use embatch_formats::image_id::ImageIdMode;
    /// assert_eq!(ImageIdMode::Key.image_id("b", "a/1.jpg"), "a/1.jpg");
    /// assert_eq!(ImageIdMode::Uri.image_id("b", "a/1.jpg"), "s3://b/a/1.jpg");
    /// assert_eq!(ImageIdMode::Stem.image_id("b", "a/1.jpg"), "1");
    /// ```
    pub fn image_id(self, bucket: &str, key: &str) -> String {
        match self {
            ImageIdMode::Key => key.to_string(),
            ImageIdMode::Uri => format!("s3://{bucket}/{key}"),
            ImageIdMode::Stem => {
                let name = key.rsplit('/').next().unwrap_or(key);
                match name.rsplit_once('.') {
                    Some((stem, _)) if !stem.is_empty() => stem.to_string(),
                    _ => name.to_string(),
                }
            }
        }
    }
}

impl std::str::FromStr for ImageIdMode {
    type Err = String;

    /// A mode by [`ImageIdMode::name`]; the error lists the valid names.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|m| m.name()).collect();
                format!("unknown ImageId mode {s:?} (one of: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for ImageIdMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::ImageIdMode::{self, *};

    #[test]
    fn names_parse_back_and_match_the_serialised_form() {
        for mode in ImageIdMode::ALL {
            assert_eq!(mode.name().parse::<ImageIdMode>(), Ok(mode));
            assert_eq!(
                serde_json::to_string(&mode).unwrap(),
                format!("\"{}\"", mode.name())
            );
        }
        let err = "Key".parse::<ImageIdMode>().unwrap_err();
        assert!(
            err.contains("\"Key\"") && err.contains("key, uri, stem"),
            "{err}"
        );
    }

    #[test]
    fn stem_keeps_dotfiles_and_inner_dots() {
        assert_eq!(Stem.image_id("b", "x/.hidden"), ".hidden");
        assert_eq!(Stem.image_id("b", "x/a.b.jpg"), "a.b");
        assert_eq!(Stem.image_id("b", "noext"), "noext");
    }

    #[test]
    fn stem_collides_across_folders_but_key_does_not() {
        assert_eq!(Stem.image_id("b", "a/1.jpg"), Stem.image_id("b", "c/1.jpg"));
        assert_ne!(Key.image_id("b", "a/1.jpg"), Key.image_id("b", "c/1.jpg"));
        assert_ne!(Uri.image_id("b1", "1.jpg"), Uri.image_id("b2", "1.jpg"));
    }
}
