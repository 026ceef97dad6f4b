//! Thin entry point: parse arguments, run, map the outcome to a documented exit code.

use clap::Parser;
use loopgate::error::{exit_code_for, one_line, EXIT_BAD_INPUT};

fn main() {
    let cli = match loopgate::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::exit(EXIT_BAD_INPUT);
        }
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // Usage errors, like every loopgate error, are one line on stderr.
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .map(|l| l.strip_prefix("error: ").unwrap_or(l))
                .collect();
            let line = parts.join("; ").replace(":;", ":");
            eprintln!("loopgate: error: {line} (see loopgate --help)");
            std::process::exit(EXIT_BAD_INPUT);
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
