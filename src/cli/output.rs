//! Writing what a command produces: stdout (a closed pipe is not an
//! error) and report files.

use std::io::Write;
use std::path::Path;

use super::Error;

/// Prints `text` to stdout; a reader that went away (`| head`) ends the
/// command quietly with exit 0 instead of a panic.
pub fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Error::BrokenPipe),
        Err(e) => Err(Error::Runtime(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes a report file where the user said (`--json`, `--junit`, `--html`):
/// a missing directory is a usage error.
pub fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text)
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
}

/// Writes a report file into a directory of reports (`load --report DIR`,
/// `report merge -o`), making the directory first.
pub fn write_in_dir(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    write(path, text)
}
