//! The one integration-test binary. Modules share the small harness in
//! `harness.rs`: fixture paths, golden files, temp dirs and running the built
//! `transum` binary with side-by-side output on failure.

mod harness;

mod cli;
mod embed;
mod fuzz;
mod hub;
mod kernels;
mod lang;
mod limits;
mod m2m;
mod nightly;
mod parity;
mod quant;
mod run;
mod shards;
mod summary;
mod summary_eval;
mod units;
