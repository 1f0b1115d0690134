//! Results of a run and their four renderings: the terminal summary
//! (`terminal.rs`), JUnit XML (`junit.rs`), JSON (`json.rs`) and one
//! self-contained HTML page (`html.rs`).

pub mod html;
pub mod json;
pub mod junit;
pub mod terminal;

use std::time::Duration;

use serde::Serialize;

use crate::scenario::Level;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// A SHOULD check failed; fails the run only with `--strict`.
    NonStrict,
    Skipped,
    /// Failed, and listed in `--expect-fail`: reported, not fatal.
    ExpectedFail,
    /// Listed in `--expect-fail` but passed: the list can shrink.
    UnexpectedPass,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::NonStrict => "non-strict",
            Status::Skipped => "skipped",
            Status::ExpectedFail => "expected fail",
            Status::UnexpectedPass => "fixed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub rule: String,
    pub name: String,
    pub group: String,
    pub level: Level,
    pub requirement: String,
    pub status: Status,
    /// Where the check lives: `file:line` (of the failing step when it failed).
    pub location: String,
    pub expected: Option<String>,
    pub observed: Option<String>,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// What crossed the wire, for a failure.
    pub transcript: Vec<String>,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    pub attempts: u32,
    /// Passed only after a retry.
    pub flaky: bool,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub target: String,
    pub seed: u64,
    pub strict: bool,
    pub results: Vec<CheckResult>,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub non_strict: usize,
    pub skipped: usize,
    pub expected_fail: usize,
    pub unexpected_pass: usize,
    pub flaky: usize,
}

impl RunReport {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.results {
            match r.status {
                Status::Pass => c.pass += 1,
                Status::Fail => c.fail += 1,
                Status::NonStrict => c.non_strict += 1,
                Status::Skipped => c.skipped += 1,
                Status::ExpectedFail => c.expected_fail += 1,
                Status::UnexpectedPass => c.unexpected_pass += 1,
            }
            c.flaky += usize::from(r.flaky);
        }
        c
    }

    /// Every required check passed (exit code 0), and at least one ran: a
    /// run whose checks were all skipped (a CI job whose `--admin-token`
    /// went missing) checked nothing and must not pass.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.status != Status::Fail) && !self.nothing_checked()
    }

    /// Every check of the run was skipped (or there were none).
    pub fn nothing_checked(&self) -> bool {
        self.results.iter().all(|r| r.status == Status::Skipped)
    }
}
