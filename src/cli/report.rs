//! `report merge` (shards → one report, histograms added losslessly) and
//! `report html` (a saved JSON report → its page).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::output::{print, write_in_dir as write};
use super::{Error, Outcome};
use crate::load::html;
use crate::load::report::LoadReport;

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Merge shard reports losslessly into one (histograms are added).
    Merge {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where the merged JSON goes (its HTML goes beside it).
        #[arg(long, short, default_value = "reports/merged.json")]
        output: PathBuf,
    },
    /// Render a JSON report as a self-contained HTML page.
    Html {
        file: PathBuf,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// A saved report; one that cannot be read or is not a report is a bad
/// file (exit 2).
pub fn read_report(path: &Path) -> Result<LoadReport, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    LoadReport::from_json(&text).map_err(|e| Error::file(path, e))
}

pub fn report(command: ReportCommand) -> Result<Outcome, Error> {
    match command {
        ReportCommand::Merge { files, output } => {
            let reports = files
                .iter()
                .map(|f| read_report(f))
                .collect::<Result<Vec<_>, _>>()?;
            let merged = LoadReport::merge(reports).map_err(|e| Error::Usage(e.to_string()))?;
            write(&output, &merged.to_json())?;
            write(&output.with_extension("html"), &html::render(&merged))?;
            print(&format!(
                "{}\nwrote {} and {}\n",
                merged.summary(),
                output.display(),
                output.with_extension("html").display()
            ))?;
        }
        ReportCommand::Html { file, output } => {
            let report = read_report(&file)?;
            let output = output.unwrap_or_else(|| file.with_extension("html"));
            write(&output, &html::render(&report))?;
            print(&format!("wrote {}\n", output.display()))?;
        }
    }
    Ok(Outcome::Passed)
}
