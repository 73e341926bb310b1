//! Arbitrary bytes as a manifest: the worker's `Manifest::parse` (checks every JSON line,
//! finds duplicate image ids) and `embatch_records::manifest::parse_jsonl` (what the submitter's
//! tests and readers use). Must never panic. Checked besides: a manifest the worker accepts
//! is accepted by `parse_jsonl` with the same lines, and accepted lines survive a
//! `to_jsonl` round trip.

#![no_main]

use embatch_records::manifest::{parse_jsonl, to_jsonl, ManifestLine};
use embatch_worker::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let worker = Manifest::parse(bytes::Bytes::copy_from_slice(data), "fuzz");
    let records = parse_jsonl(data, "fuzz");
    if let Ok(lines) = &records {
        assert_eq!(
            parse_jsonl(&to_jsonl(lines), "round trip").as_ref().ok(),
            Some(lines)
        );
    }
    match worker {
        Ok(manifest) => {
            let lines: Vec<ManifestLine> = manifest
                .lines()
                .map(|item| item.expect("a checked manifest's lines all parse").line)
                .collect();
            assert_eq!(manifest.images(), lines.len() as u64);
            let records = records.expect("parse_jsonl accepts what the worker accepts");
            assert_eq!(records, lines);
        }
        Err(error) => {
            assert!(error.line >= 1);
            assert!(!error.to_string().is_empty());
        }
    }
});
