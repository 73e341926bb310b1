//! Cross-crate end-to-end tests live in tests/*.rs of this package.
