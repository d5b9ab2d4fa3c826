//! `backfill`, installed with `cargo install memshift --features cli`: moves every legacy
//! SQLite database under an agents path into PostgreSQL. The program is
//! `examples/backfill.rs` (one source, also run as `cargo run --example backfill`), whose
//! header lists the options.

#[path = "../../examples/backfill.rs"]
mod backfill;

fn main() -> std::process::ExitCode {
    backfill::main()
}
