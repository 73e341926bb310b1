//! Splitting one prefix's key space into ranges that are listed at once.
//!
//! ListObjectsV2 pages are sequential (each needs the previous one's last key), so one large
//! prefix takes `keys / 1000` round trips one after the other: three hours for 100M keys at
//! 100 ms a page. But `StartAfter` can begin a listing anywhere: a range `(after, upto]` is
//! listed from `StartAfter = after` until a key beyond `upto`, and any sorted boundaries
//! `b1 < b2 < …` between `after` and `upto` partition it exactly into `(after, b1]`,
//! `(b1, b2]`, …, `(bn, upto]`, whatever the keys are. Only the speed depends on where the
//! boundaries fall: [`split_points`] puts them after the keys' common stem, one and two
//! characters deep, using the characters the keys just listed contain, so that hash-named
//! keys (the flat three-hour case) and folders alike spread over many ranges. Strings compare
//! by their UTF-8 bytes in Rust as in S3, so the ranges hold for any key.

use std::collections::BTreeSet;

/// Most distinct characters used to make boundaries (the rest still fall in some range).
const MAX_ALPHABET: usize = 96;

/// One piece of a prefix's key space: the keys `k` with `after < k <= upto` (`None`: no
/// bound on that side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Exclusive lower bound (`StartAfter`).
    pub after: Option<String>,
    /// Inclusive upper bound.
    pub upto: Option<String>,
}

impl KeyRange {
    /// The whole prefix.
    pub fn all() -> KeyRange {
        KeyRange {
            after: None,
            upto: None,
        }
    }

    /// Whether `key` is beyond this range's upper bound.
    pub fn is_beyond(&self, key: &str) -> bool {
        self.upto.as_deref().is_some_and(|upto| key > upto)
    }

    /// This range cut at `points` (sorted, strictly inside it), which cover it exactly.
    pub fn split_at(self, points: Vec<String>) -> Vec<KeyRange> {
        let mut ranges = Vec::with_capacity(points.len() + 1);
        let mut after = self.after;
        for point in points {
            ranges.push(KeyRange {
                after,
                upto: Some(point.clone()),
            });
            after = Some(point);
        }
        ranges.push(KeyRange {
            after,
            upto: self.upto,
        });
        ranges
    }
}

/// Boundaries strictly between `after` and `upto` (sorted, distinct), for the rest of a range
/// whose last listed key is `after`. `prefix` is the listed prefix (every key starts with it);
/// `sample` holds keys just listed, whose characters make the boundaries.
///
/// ```
/// use embatch_submitter::key_ranges::split_points;
/// let points = split_points("p/0a", None, "p/", &["p/03", "p/0a", "p/1f"]);
/// assert!(points.contains(&"p/1".to_string()) && points.contains(&"p/0f".to_string()));
/// assert!(points.iter().all(|p| p.as_str() > "p/0a"));
/// ```
pub fn split_points(after: &str, upto: Option<&str>, prefix: &str, sample: &[&str]) -> Vec<String> {
    // The part of `after` that every key up to `upto` shares: boundaries go just past it.
    let stem_len = match upto {
        Some(upto) => common_prefix_len(after, upto),
        None => common_prefix_len(after, prefix),
    };
    let stems = [
        &after[..stem_len],
        after[stem_len..]
            .chars()
            .next()
            .map_or(&after[..stem_len], |c| &after[..stem_len + c.len_utf8()]),
    ];
    let alphabet = alphabet(prefix, sample);
    let points: BTreeSet<String> = stems
        .iter()
        .flat_map(|stem| alphabet.iter().map(move |c| format!("{stem}{c}")))
        .filter(|b| b.as_str() > after && upto.is_none_or(|upto| b.as_str() < upto))
        .collect();
    points.into_iter().collect()
}

/// The characters of `sample`'s keys after `prefix`, or printable ASCII if they hold fewer
/// than two.
fn alphabet(prefix: &str, sample: &[&str]) -> BTreeSet<char> {
    let mut seen = BTreeSet::new();
    for key in sample {
        for c in key.strip_prefix(prefix).unwrap_or(key).chars() {
            if seen.len() == MAX_ALPHABET {
                return seen;
            }
            seen.insert(c);
        }
    }
    if seen.len() < 2 {
        seen = (' '..='~').collect();
    }
    seen
}

/// Bytes `a` and `b` share at the start, ending on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of `keys` in `range`, listed as S3 would: sorted, after `after`, up to `upto`.
    fn in_range<'k>(keys: &[&'k str], range: &KeyRange) -> Vec<&'k str> {
        keys.iter()
            .copied()
            .filter(|k| range.after.as_deref().is_none_or(|a| *k > a) && !range.is_beyond(k))
            .collect()
    }

    #[test]
    fn the_pieces_of_a_range_hold_each_key_once() {
        let mut keys = vec![
            "p/", "p/0", "p/00", "p/01", "p/0~", "p/1", "p/1/a", "p/a b", "p/é", "p/é/x", "p/日本",
            "p/😀", "p/\u{7f}", "p/\u{1}", "p/ff", "p/~~",
        ];
        let hex: Vec<String> = (0..300u32).map(|i| format!("p/{:04x}", i * 211)).collect();
        keys.extend(hex.iter().map(String::as_str));
        keys.sort();
        keys.dedup();
        for (after, upto) in [
            (Some("p/0"), None),
            (Some("p/0001"), Some("p/01")),
            (Some("p/a b"), Some("p/é/x")),
            (Some("p/ff"), None),
            (None, Some("p/1")),
        ] {
            let range = KeyRange {
                after: after.map(str::to_string),
                upto: upto.map(str::to_string),
            };
            let start = after.unwrap_or("p/");
            let points = split_points(start, upto, "p/", &keys[..40]);
            assert!(points.windows(2).all(|w| w[0] < w[1]), "{points:?}");
            let mut pieces: Vec<&str> = Vec::new();
            for piece in range.clone().split_at(points) {
                pieces.extend(in_range(&keys, &piece));
            }
            assert_eq!(pieces, in_range(&keys, &range), "{after:?}..{upto:?}");
        }
    }

    #[test]
    fn hash_named_keys_split_wide_at_the_first_truncated_page() {
        let sample: Vec<String> = (0..1000u32).map(|i| format!("flat/{i:08x}")).collect();
        let sample: Vec<&str> = sample.iter().map(String::as_str).collect();
        let points = split_points(sample[999], None, "flat/", &sample);
        // One level past the common stem "flat/" and one more: "flat/1" … "flat/f",
        // "flat/01" … "flat/0f".
        assert_eq!(points.len(), 30, "{points:?}");
        assert_eq!(points[0], "flat/01");
        assert_eq!(points.last().unwrap(), "flat/f");
        // A narrower range splits past its own stem.
        let points = split_points("flat/0003e7", Some("flat/01"), "flat/", &sample);
        assert!(
            points.iter().all(|p| p.starts_with("flat/00")),
            "{points:?}"
        );
        assert_eq!(points.len(), 15, "{points:?}");
    }

    #[test]
    fn stems_end_on_character_boundaries() {
        assert_eq!(common_prefix_len("a/é1", "a/é2"), "a/é".len());
        assert_eq!(common_prefix_len("a/é", "a/è"), 2);
        assert_eq!(common_prefix_len("ab", "abc"), 2);
        let points = split_points("a/日本", None, "a/", &["a/日本", "a/x"]);
        assert!(points.iter().all(|p| p.as_str() > "a/日本"), "{points:?}");
    }
}
