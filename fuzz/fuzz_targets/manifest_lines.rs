//! Arbitrary bytes as a manifest: the worker's `Manifest::parse` (checks every JSON line,
//! finds duplicate image ids) and `embatch_records::manifest::parse_jsonl` (what the submitter's
//! tests and readers use). Must never panic. Checked besides: a UTF-8 manifest the worker
//! accepts is accepted by `parse_jsonl` with the same lines, and accepted lines survive a
//! `to_jsonl` round trip.
//!
//! Not UTF-8 is where the two differ, by design of serde_json: `parse_jsonl` refuses the whole
//! manifest, the worker parses each line with `serde_json::from_slice`, which checks the UTF-8
//! of the strings it keeps but not of an unknown field's string it skips. So the worker
//! accepts `{"bucket":"b",...,"extra":"\x98"}` (found by this target); every string it uses
//! is still valid UTF-8, and the submitter only writes UTF-8 (`to_jsonl`).

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
            if std::str::from_utf8(data).is_ok() {
                let records = records.expect("parse_jsonl accepts what the worker accepts");
                assert_eq!(records, lines);
            }
        }
        Err(error) => {
            assert!(error.line >= 1);
            assert!(!error.to_string().is_empty());
        }
    }
});
