//! Runnable examples of the raftline crates; see `README.md` beside this file. The examples
//! are the other `.rs` files here: `cargo run -p raftline-examples --example NAME`.
