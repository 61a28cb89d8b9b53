//! Checks a history saved as JSON (a failing fault test names the file it left):
//!
//! ```text
//! cargo run --example check_history -- HISTORY.json [TIMEOUT_SECONDS]
//! ```
//!
//! Prints the summary and the result, and exits 1 when the history is not
//! linearizable or the checker ran out of time.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: check_history HISTORY.json [TIMEOUT_SECONDS]")?;
    let timeout = Duration::from_secs(match args.next() {
        Some(t) => t.parse()?,
        None => 600,
    });
    let history = sealkv_linearizability::History::read_file(&path)?;
    println!("{}", history.summary());
    let started = Instant::now();
    let result = sealkv_linearizability::check(&history, timeout);
    println!("{result}");
    println!("checked in {:?}", started.elapsed());
    if !result.is_linearizable() {
        std::process::exit(1);
    }
    Ok(())
}
