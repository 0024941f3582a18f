fn main() -> std::process::ExitCode {
    basalt_cli::main()
}
