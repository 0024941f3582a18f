//! The `basalt` entry point, built inside the tests package so its tests can spawn it.
fn main() -> std::process::ExitCode {
    basalt_cli::main()
}
