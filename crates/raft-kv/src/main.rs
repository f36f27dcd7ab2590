//! The `raft-kv` server binary. Run `raft-kv --help` for its flags.

use clap::Parser;
use raftline_kv::config::{Flags, ServerConfig};

fn main() {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "raftline_kv={0},raftline_tcp={0},raftline_core={0}",
        flags.log_level
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let config = match ServerConfig::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            let e = raftline_kv::error_chain(&e);
            eprintln!("raft-kv: {e}\n\nRun raft-kv --help for the flags.");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let running = match raftline_kv::run(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("raft-kv: {}", raftline_kv::error_chain(&e));
                std::process::exit(1);
            }
        };
        tokio::select! {
            () = wait_for_signal() => tracing::info!("shutting down"),
            // Logged by the member; like etcd, it exits (with status 0).
            () = running.removed() => {}
        }
        running.shutdown().await;
    });
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
