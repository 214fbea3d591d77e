//! The `tickwire` command: see `tickwire --help`.

fn main() -> std::process::ExitCode {
    tickwire::cli::main()
}
