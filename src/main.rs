//! `breakwater`: thin entry point; the library does the work.

fn main() -> std::process::ExitCode {
    breakwater::cli::main()
}
