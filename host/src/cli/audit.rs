//! `mcpg audit verify`: checks audit files against their hash chain and reports by exit code.

use std::process::ExitCode;

use super::args::AuditCommand;

/// Runs `mcpg audit …`. Exit 0: intact; 1: problems, each printed; 2: a file could not be read.
pub(super) fn run(cmd: AuditCommand) -> ExitCode {
    let AuditCommand::Verify { files } = cmd;
    match crate::audit::verify(&files) {
        Ok(report) => {
            println!("OK: {report}");
            ExitCode::SUCCESS
        }
        Err(crate::audit::VerifyError::Invalid { summary, problems }) => {
            for p in &problems {
                println!("{p}");
            }
            println!("FAILED: {} problem(s) in {summary}", problems.len());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mcpg: {e}");
            ExitCode::from(2)
        }
    }
}
