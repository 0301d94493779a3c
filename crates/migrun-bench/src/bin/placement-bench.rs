//! The `placement-bench` binary: parse flags, run the placement benchmark (`migrun_bench::placement`), print its tables or JSON.

use clap::Parser;
use migrun_bench::placement::{run, Args, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    match Config::from_args(&args).and_then(|c| run(&c)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("placement-bench: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
