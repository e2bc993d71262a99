//! Load measurements, rerunnable: `cargo build --release --workspace` then
//! `target/release/loadtest figures` (what a user waits for, as the course's app was
//! measured, with the machine's floors), `… visibility` (its first two figures only), `… write`, `… replay [EVENTS…]`, `… flow`, `… bus`, `… rebuild`, `… backlog` or `… busy-post`. Each run starts its own PostgreSQL (durable settings)
//! and real service processes, reports figures, and removes everything it started.

mod backlog;
mod bus;
mod busy;
mod figures;
mod flow;
mod rebuild;
mod stack;
mod timeline;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let what = std::env::args().nth(1).unwrap_or_default();
    let result = match what.as_str() {
        "bus" => bus::run().await,
        "flow" => flow::run().await,
        "figures" => figures::run().await,
        "timeline" => timeline::run().await,
        "replay" => figures::replays().await,
        "visibility" => figures::visibility_only().await,
        "write" => figures::write_only().await,
        "read" => figures::read_only().await,
        "rebuild" => rebuild::run().await,
        "backlog" => backlog::run().await,
        "busy-post" => busy::run().await,
        _ => {
            eprintln!(
                "usage: loadtest figures|visibility|write|read|timeline|replay|flow|bus|rebuild|backlog|busy-post"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadtest {what}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
