//! `ringcast-load`: the bundled load generator for ringcast and other WebSocket push servers.
//!
//! Crate map:
//! - `sys`: the one seam to the OS (epoll, sockets, timerfd, rlimit, clocks);
//! - `ws`: the client side of RFC 6455, sans-IO (handshake check, masked frames out, frame
//!   reader in), written independently of the server's code on purpose;
//! - `payload`: the stamped benchmark payload and the loss/duplicate accounting;
//! - `delivery`: how a subscriber's messages carry the payload (raw frames or ringcast's JSON
//!   envelope), detected per connection;
//! - `envelope`: ringcast's JSON envelopes as a client reads them (offsets, `subscribed`
//!   replies, the welcome's connection id, join/leave news), and the URL and command that
//!   resume a channel with `since`;
//! - `token`: HS256 connection tokens (JWT, HMAC-SHA256) for user identities;
//! - `target`: URL, control address, `--src` and `--rate` parsing, loopback enforcement;
//! - `pool`: the connections and the single-threaded epoll loop that drives them;
//! - `procfs`: server RSS/CPU and kernel socket memory from /proc;
//! - `report`: progress line, tables, JSON;
//! - `plot`: the `--plot` SVG (latency percentiles against publish rate);
//! - `scenario`: one module per scenario (`idle`, `connect`, `fanout`, `slow`, `chat`,
//!   `reconnect`, `presence`, `events`), each driving a `Pool` with its own `Handler`; `slow`
//!   and `chat` run on the `fanout` engine; `scenario::control` is the control-socket client
//!   (publisher, timed requests, event-stream consumer).
//!
//! The generator is one thread on purpose: it is meant to be pinned to one core next to the
//! server under test, and it reports its own CPU use so a run where it saturates is flagged.

mod delivery;
mod envelope;
mod inflate;
mod payload;
mod plot;
mod pool;
mod procfs;
mod pusher;
mod report;
mod scenario;
mod sys;
mod target;
mod token;
mod ws;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// Load generator for WebSocket push servers (loopback targets only).
#[derive(Parser, Debug)]
#[command(name = "ringcast-load", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N connections, hold them, report the server's memory per connection.
    Idle(scenario::idle::IdleArgs),
    /// Open N connections as fast as possible: handshakes/s and handshake latency; with
    /// --storm, close and reopen them all while probe subscribers measure fan-out latency.
    Connect(scenario::connect::ConnectArgs),
    /// N subscribers, one publisher at a fixed rate or a sweep: delivery, loss, latency.
    Fanout(scenario::fanout::FanoutArgs),
    /// fanout with a fraction of subscribers that stop reading: the healthy ones' latency, how
    /// the server closed the slow ones, the server's RSS over time.
    Slow(scenario::slow::SlowArgs),
    /// Many small channels (groups of K members), messages published on the members' behalf
    /// through the control socket: delivery, loss, latency per total rate.
    Chat(scenario::chat::ChatArgs),
    /// Subscribers that drop and come back with `since` while a fan-out goes on: loss and
    /// duplicates across the reconnects, recoveries, and the other subscribers' latency with
    /// and without the churn.
    Reconnect(scenario::reconnect::ReconnectArgs),
    /// N connections as U users in one presence channel: presence_stats latency, and exactly
    /// one leave and one join per user when many users' connections close and reopen.
    Presence(scenario::presence::PresenceArgs),
    /// The backend event stream under a connect/close storm: every connect and close once, in
    /// each connection's order, per-shard seq contiguous, or the gaps stating what was dropped.
    Events(scenario::events::EventsArgs),
}

/// Flags every scenario shares.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Server URL (ws://127.x.y.z:PORT/PATH?QUERY or `ws://[::1]:PORT/...`; loopback only).
    /// fanout and slow take a comma-separated list of URLs with the same path and query:
    /// subscriber i connects to URL i mod K (a --pub-ws publisher and churn to the first).
    #[arg(long)]
    pub url: String,
    /// Number of connections (subscribers in fanout).
    #[arg(long, short = 'n', default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,
    /// Connects + handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Loopback source addresses to bind round-robin (IP_BIND_ADDRESS_NO_PORT), e.g.
    /// 127.0.0.2-127.0.0.9: each has its own ~28k ephemeral ports.
    #[arg(long)]
    pub src: Option<String>,
    /// Server process id: its RSS (VmRSS) and CPU (utime+stime) are reported.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write every figure and the exact parameters to this JSON file.
    #[arg(long)]
    pub json: Option<String>,
    /// Give up on connections not upgraded after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout_s: f64,
    /// No progress line even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Offer permessage-deflate (RFC 7692) as browsers do, and inflate the compressed messages
    /// the server sends (the first bytes of each, through a shared cache: see `inflate`).
    #[arg(long)]
    pub deflate: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Idle(a) => scenario::idle::run(a),
        Scenario::Connect(a) => scenario::connect::run(a),
        Scenario::Fanout(a) => scenario::fanout::run(a),
        Scenario::Slow(a) => scenario::slow::run(a),
        Scenario::Chat(a) => scenario::chat::run(a),
        Scenario::Reconnect(a) => scenario::reconnect::run(a),
        Scenario::Presence(a) => scenario::presence::run(a),
        Scenario::Events(a) => scenario::events::run(a),
    };
    if let Err(e) = result {
        eprintln!("ringcast-load: {e}");
        std::process::exit(1);
    }
}
