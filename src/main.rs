//! Thin entry point: parse arguments, run, map the outcome to a documented exit code.

use clap::Parser;
use loopgate::error::{exit_code_for, one_line, EXIT_BAD_INPUT};

fn main() {
    let cli = match loopgate::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_BAD_INPUT } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match loopgate::run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("loopgate: error: {}", one_line(&err));
            std::process::exit(exit_code_for(&err));
        }
    }
}
