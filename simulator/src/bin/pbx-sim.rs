//! `pbx-sim`: see [`pbx_simulator::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    pbx_simulator::cli::main(pbx_simulator::cli::Args::parse())
}
