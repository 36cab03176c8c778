//! Settings shared by the property tests (compiled for tests only).

use proptest::test_runner::Config;

/// `PROPTEST_CASES` cases (or `default`), and no failure-persistence files: a failure
/// found is kept as a named regression test instead.
pub(crate) fn fuzz_config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
