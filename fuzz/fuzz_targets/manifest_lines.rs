//! Arbitrary bytes through the manifest reader (`embatch_formats::manifest::Lines`, what the
//! worker reads its manifest with, and `parse_jsonl` on it): must never panic; line numbers
//! rise and stay within the input's lines; what parses survives the `to_jsonl` round trip
//! unchanged.

#![no_main]

use embatch_formats::manifest::{parse_jsonl, to_jsonl, Lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    let mut last = 0;
    for line in Lines::new(data, "fuzz") {
        let Ok((line_no, _)) = line else { continue };
        assert!(line_no > last && line_no <= newlines + 1);
        last = line_no;
    }
    if let Ok(lines) = parse_jsonl(data, "fuzz") {
        assert_eq!(parse_jsonl(&to_jsonl(&lines), "round trip").unwrap(), lines);
    }
});
