//! The `modelgate` binary: parse the command line, hand it to [`modelgate::cli::run`],
//! and turn the outcome into an exit code (0 pass, 1 a gate failed, 2 usage or input error).

use std::process::ExitCode;

fn main() -> ExitCode {
    modelgate::cli::main()
}
