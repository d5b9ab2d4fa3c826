//! `memctl`, installed with `cargo install memshift --features cli`: an operator's view
//! of an agent's memory from the shell. The program is `examples/memctl.rs` (one source,
//! also run as `cargo run --example memctl`), whose header lists the commands.

#[path = "../../examples/memctl.rs"]
mod memctl;

fn main() -> std::process::ExitCode {
    memctl::main()
}
