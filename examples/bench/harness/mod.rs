//! What every suite shares: the throwaway database and agents folder, the machine's
//! facts, timing and percentiles, workload values and the printed table.

mod env;
mod machine;
mod table;
mod timing;
mod wire;
mod workload;

pub use env::Env;
pub use machine::{Machine, quiet_down};
pub use table::{Table, markdown_table, ms, table};
pub use timing::{Latency, Samples, concurrently, median, settle, timed};
pub use wire::{Counters, Wire, relay, through_relay};
pub use workload::{AgentLoad, Rng, Values, memory_value};

/// Any failure; the bench prints it with its causes and exits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result with any failure.
pub type Result<T> = std::result::Result<T, BoxError>;
