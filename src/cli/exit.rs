//! How a command ends, and the one place that decides its exit code
//! (STYLE.md habit 4, after ripgrep's `main`).
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | every required check passed, every threshold held (or stdout was closed early: a broken pipe is not a failure) |
//! | 1    | a check or threshold failed, or the backend failed the run partway |
//! | 2    | usage error, bad scenario/profile/report file, unreachable backend |
//! | 130  | interrupted by the user (Ctrl-C, SIGTERM); `load` still wrote its partial report |

use std::path::{Path, PathBuf};

/// What a command that ran to its end found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// A check, a threshold (`--fail-if`) or a baseline comparison failed.
    Failed,
    /// The user stopped the run; what was measured was still reported.
    Interrupted,
}

impl Outcome {
    pub fn from_passed(passed: bool) -> Outcome {
        if passed {
            Outcome::Passed
        } else {
            Outcome::Failed
        }
    }
}

/// Why a command could not do its job. Each variant's doc says its class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong (a flag's value, a missing credential):
    /// exit 2, with a message that says how to fix it.
    #[error("{0}")]
    Usage(String),
    /// A file named on the command line cannot be read, parsed or written
    /// (scenario, profile, report, `--expect-fail`): exit 2.
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    /// The backend never answered before anything ran: exit 2 (nothing was
    /// measured, so it is not a failed check).
    #[error("{0}")]
    Unreachable(String),
    /// The harness could not start what it needs (the embedded edge-server,
    /// the async runtime): exit 2, like a usage error: nothing ran.
    #[error("{0}")]
    Setup(String),
    /// The run started and then could not finish (a task of the engine
    /// died): exit 1, the run failed, but not because of how it was called.
    #[error("{0}")]
    Runtime(String),
    /// stdout was closed by its reader (`edge-harness conform --list | head`):
    /// exit 0 and say nothing, as ripgrep does.
    #[error("broken pipe")]
    BrokenPipe,
}

impl Error {
    pub fn file(path: &Path, why: impl std::fmt::Display) -> Error {
        Error::File {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BrokenPipe => 0,
            Error::Runtime(_) => 1,
            Error::Usage(_) | Error::File { .. } | Error::Unreachable(_) | Error::Setup(_) => 2,
        }
    }
}

impl From<crate::load::LoadError> for Error {
    fn from(e: crate::load::LoadError) -> Error {
        use crate::load::LoadError;
        match e {
            LoadError::FileLimit(_) | LoadError::NoBackend => Error::Usage(e.to_string()),
            LoadError::Provision { .. } => Error::Usage(e.to_string()),
            LoadError::Engine(_) => Error::Runtime(e.to_string()),
        }
    }
}

impl From<crate::tls::TlsError> for Error {
    fn from(e: crate::tls::TlsError) -> Error {
        Error::Usage(e.to_string())
    }
}

/// The exit code of a command's result: the only place codes are chosen.
pub fn code(result: &Result<Outcome, Error>) -> u8 {
    match result {
        Ok(Outcome::Passed) => 0,
        Ok(Outcome::Failed) => 1,
        Ok(Outcome::Interrupted) => 130,
        Err(e) => e.exit_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_code() {
        assert_eq!(code(&Ok(Outcome::Passed)), 0);
        assert_eq!(code(&Ok(Outcome::Failed)), 1);
        assert_eq!(code(&Ok(Outcome::Interrupted)), 130);
        assert_eq!(code(&Err(Error::BrokenPipe)), 0);
        assert_eq!(code(&Err(Error::Usage("x".into()))), 2);
        assert_eq!(code(&Err(Error::Unreachable("x".into()))), 2);
        assert_eq!(code(&Err(Error::file(Path::new("a.toml"), "bad"))), 2);
        assert_eq!(code(&Err(Error::Runtime("x".into()))), 1);
    }
}
