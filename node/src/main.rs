fn main() -> std::process::ExitCode {
    basalt_node::cli::main()
}
