//! `ringcast ctl`: a command-line client of the control socket (docs/control.md).
//!
//! Owns: turning command-line arguments into one request line, the connection to the control
//! address (`unix:PATH` or `tcp:HOST:PORT`), and printing replies either readably or as the raw
//! JSON lines. `ringcast ctl -` pipes NDJSON requests from standard input and prints every reply.
//!
//! Must not: depend on the server's internals (it speaks only the documented wire protocol, so
//! it works against any ringcast version that speaks it), or panic on any input or reply.
//!
//! Exit status: 0 when every reply was a result, 1 when the server replied an error (printed as
//! `error CODE: message` on stderr), 2 for usage errors and connection problems (the message
//! names the address tried and where it came from).

use base64::Engine;
use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the control address comes from when `--control` is not given.
pub const CONTROL_ENV: &str = "RINGCAST_CONTROL";
/// Where the token comes from when `--token` is not given.
pub const TOKEN_ENV: &str = "RINGCAST_CONTROL_TOKEN";
/// The server's default control address (docs/control.md).
pub const DEFAULT_CONTROL: &str = "unix:/tmp/ringcast.sock";
/// How long to wait for a reply (and for a blocked write or a TCP connect).
pub const REPLY_TIMEOUT_MS: u64 = 10_000;
/// Longest reply line accepted. A `presence` of a million connections is about 17 MB; past
/// this the reply is refused rather than buffered without bound.
pub const REPLY_BYTES_MAX: usize = 256 << 20;

/// Shown by `ringcast ctl --help` (the outer parser knows the methods only as words).
const METHODS_HELP: &str = "\
Methods:
  publish CHANNEL (JSON | --text S | --b64 B)     push to one channel's subscribers
  broadcast [--channel C]... (JSON | --text S | --b64 B)
                                                  to several channels, or every /ws connection
  send CONN (JSON | --text S | --b64 B)           push to one connection
  subscribe CONN CHANNEL                          server-side join
  unsubscribe CONN CHANNEL                        server-side leave
  disconnect CONN [--code N] [--reason S]         close a connection (default code 4003)
  presence CHANNEL                                the connection ids subscribed
  channels                                        channels with subscriber counts
  stats                                           counters: totals and per-shard open connections
  info                                            version, shards, uptime, limits
  -                                               NDJSON requests from stdin, one reply per line

Examples:
  ringcast ctl publish news '{\"title\":\"Hi\"}'
  ringcast ctl publish news --text hello
  RINGCAST_CONTROL=tcp:127.0.0.1:9081 ringcast ctl stats
  printf '%s\\n' '{\"method\":\"info\"}' | ringcast ctl -

Exit status: 0 success, 1 the server replied an error, 2 usage or connection problem.
The protocol: docs/control.md.";

/// Shown by `ringcast ctl METHOD --help`.
const EXIT_HELP: &str = "\
`ringcast ctl -` reads NDJSON requests from stdin, pipelines them, and prints each reply line.

Exit status: 0 success, 1 the server replied an error, 2 usage or connection problem.";

/// Arguments of `ringcast ctl`.
#[derive(clap::Args, Debug)]
#[command(after_help = METHODS_HELP)]
pub struct CtlArgs {
    /// Control address: unix:PATH or tcp:HOST:PORT
    /// [default: $RINGCAST_CONTROL, else unix:/tmp/ringcast.sock].
    #[arg(long, value_name = "ADDR")]
    pub control: Option<String>,
    /// Print raw JSON replies.
    #[arg(long)]
    pub json: bool,
    /// Send {"method":"auth","token":T} first [default: $RINGCAST_CONTROL_TOKEN].
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// The method and its arguments, or `-` to read NDJSON requests from stdin.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "METHOD"
    )]
    pub args: Vec<String>,
}

// The method and its arguments, parsed from `CtlArgs::args`. The options shared with
// `CtlArgs` are accepted after the method too (`ringcast ctl stats --json`).
#[derive(Parser, Debug)]
#[command(
    name = "ringcast ctl",
    about = "Talk to a running server's control socket (docs/control.md).",
    disable_version_flag = true,
    after_help = EXIT_HELP
)]
struct Invocation {
    /// Control address: unix:PATH or tcp:HOST:PORT.
    #[arg(long, global = true, value_name = "ADDR")]
    control: Option<String>,
    /// Print raw JSON replies.
    #[arg(long, global = true)]
    json: bool,
    /// Send {"method":"auth","token":T} first.
    #[arg(long, global = true, value_name = "T")]
    token: Option<String>,
    #[command(subcommand)]
    method: Option<MethodArgs>,
}

#[derive(Subcommand, Debug, PartialEq)]
enum MethodArgs {
    /// Publish to one channel's subscribers.
    #[command(
        override_usage = "ringcast ctl publish [OPTIONS] CHANNEL (JSON | --text S | --b64 B)"
    )]
    Publish {
        /// Channel name (1 to 128 characters of [A-Za-z0-9_.:@/-]).
        channel: String,
        #[command(flatten)]
        payload: PayloadArgs,
        /// Wait for every shard and show how many connections got it (a delivery report).
        #[arg(long)]
        report: bool,
    },
    /// Show a channel's kept messages (namespaces with history_size).
    History {
        /// Channel name.
        channel: String,
        /// At most this many, the newest (1 to 5000) [default: 100].
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Publish to several channels (--channel, repeatable), or push to every /ws connection.
    #[command(
        override_usage = concat!(
            "ringcast ctl broadcast [OPTIONS] [--channel C]... ",
            "(JSON | --text S | --b64 B)"
        )
    )]
    Broadcast {
        /// A channel to publish to (repeatable); none: every open /ws connection.
        #[arg(long = "channel", value_name = "C")]
        channels: Vec<String>,
        #[command(flatten)]
        payload: PayloadArgs,
    },
    /// Push to one connection.
    #[command(override_usage = "ringcast ctl send [OPTIONS] CONN (JSON | --text S | --b64 B)")]
    Send {
        /// Connection id (from the client's welcome, or `presence`).
        conn: u64,
        #[command(flatten)]
        payload: PayloadArgs,
    },
    /// Subscribe a connection to a channel (server-side join).
    Subscribe {
        /// Connection id.
        conn: u64,
        /// Channel name.
        channel: String,
    },
    /// Unsubscribe a connection from a channel.
    Unsubscribe {
        /// Connection id.
        conn: u64,
        /// Channel name.
        channel: String,
    },
    /// Close a connection.
    Disconnect {
        /// Connection id.
        conn: u64,
        /// Close code: 1000 or 3000-4999 [server default: 4003].
        #[arg(long)]
        code: Option<u16>,
        /// Close reason (at most 123 bytes).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the connection ids subscribed to a channel, across all shards.
    Presence {
        /// Channel name.
        channel: String,
        /// Ids per page (1 to 5000) [default: 1000].
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this id (the `next` of the previous page).
        #[arg(long)]
        cursor: Option<u64>,
    },
    /// List channels with their subscriber counts (a page at a time).
    Channels {
        /// Channels per page (1 to 5000) [default: 1000].
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this name (the `next` of the previous page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Drain the server: stop accepting, close WebSocket clients with 1012 spread over the
    /// window (they reconnect to another instance), then exit.
    Drain {
        /// The window: 30s, 500ms, 2m [default: 30s].
        #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
        over: u64,
    },
    /// Show counters: totals and per-shard open connections.
    Stats,
    /// Show version, shards, uptime and limits.
    Info,
}

/// Exactly one payload: a JSON value (positional), `--text` or `--b64`.
#[derive(clap::Args, Debug, PartialEq)]
#[group(required = true, multiple = false)]
struct PayloadArgs {
    /// The payload as a JSON value (sent as "data"); e.g. '{"a":1}', '"a string"', 42.
    #[arg(value_name = "JSON", allow_hyphen_values = true)]
    data: Option<String>,
    /// A string payload, sent as is (as "text").
    #[arg(long, value_name = "STRING")]
    text: Option<String>,
    /// Binary payload, standard base64 (as "b64"); subscribers get a binary frame.
    #[arg(long, value_name = "BASE64")]
    b64: Option<String>,
}

/// One request line on the wire. Fields are written in declaration order, absent ones skipped;
/// `data` is the caller's JSON text verbatim (no float rounding of big numbers).
#[derive(Serialize, Default, Debug)]
struct Request<'a> {
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    report: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    over_ms: Option<u64>,
}

/// `30s`, `500ms`, `2m` or a bare number of seconds, in ms (1 ms to 1 hour).
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 30s, 500ms, 2m"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        _ => return Err(format!("{text:?}: the unit is ms, s or m")),
    };
    if !(1..=3_600_000).contains(&ms) {
        return Err(format!("{text:?}: a drain window is 1 ms to 1 hour"));
    }
    Ok(ms)
}

/// A control address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:PATH`.
    Unix(String),
    /// `tcp:HOST:PORT` (kept as written; resolved at connect time).
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{path}"),
            Address::Tcp(host_port) => write!(f, "tcp:{host_port}"),
        }
    }
}

/// Parses `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:9081` for IPv6).
pub fn parse_address(text: &str) -> Result<Address, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!(
                "{text:?}: unix: needs a socket path (unix:/tmp/ringcast.sock)"
            ));
        }
        return Ok(Address::Unix(path.to_string()));
    }
    if let Some(host_port) = text.strip_prefix("tcp:") {
        let host_port = host_port.strip_prefix("//").unwrap_or(host_port);
        let (host, port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: tcp: needs HOST:PORT (tcp:127.0.0.1:9081)"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!(
                "{text:?}: tcp: needs HOST:PORT (tcp:127.0.0.1:9081)"
            ));
        }
        return Ok(Address::Tcp(host_port.to_string()));
    }
    Err(format!(
        "{text:?} is not a control address: use unix:PATH or tcp:HOST:PORT"
    ))
}

/// Picks the address: `--control`, else `$RINGCAST_CONTROL` (when set and not empty), else
/// the default. Returns the address and where it came from, for error messages.
fn resolve_address(
    flag: Option<&str>,
    env: Option<&str>,
) -> Result<(Address, &'static str), String> {
    let (text, origin) = match (flag, env.filter(|e| !e.is_empty())) {
        (Some(flag), _) => (flag, "--control"),
        (None, Some(env)) => (env, CONTROL_ENV),
        (None, None) => (DEFAULT_CONTROL, "the default"),
    };
    parse_address(text)
        .map(|a| (a, origin))
        .map_err(|e| format!("{e} (from {origin})"))
}

/// A connected control socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(address: &Address) -> io::Result<Stream> {
        let timeout = Duration::from_millis(REPLY_TIMEOUT_MS);
        let stream = match address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            Address::Tcp(host_port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for host");
                let mut found = None;
                for addr in host_port.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let stream = found.ok_or(last)?;
                // Requests are small and a reply is awaited for each: no Nagle delay.
                stream.set_nodelay(true)?;
                Stream::Tcp(stream)
            }
        };
        stream.set_timeouts(Some(timeout))?;
        Ok(stream)
    }

    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        // Only ever called to end the conversation; an error means it is already over.
        let _ = match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A failure that ends the run, with its exit status.
#[derive(Debug)]
enum Failure {
    /// Bad arguments, or a connection problem: exit 2.
    Usage(String),
    /// Bad arguments, already explained by clap: exit 2.
    Explained,
    /// The server replied an error (already printed): exit 1.
    Replied,
}

impl Failure {
    fn status(&self) -> i32 {
        match self {
            Failure::Usage(_) | Failure::Explained => 2,
            Failure::Replied => 1,
        }
    }
}

/// The connection with its address, for messages.
struct Session {
    address: Address,
    origin: &'static str,
    reader: BufReader<Stream>,
    writer: Stream,
}

impl Session {
    fn open(address: Address, origin: &'static str) -> Result<Session, Failure> {
        let stream = Stream::connect(&address).map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    "; is `ringcast serve` running with this control address? \
                     Set it with --control or RINGCAST_CONTROL"
                }
                io::ErrorKind::PermissionDenied => {
                    "; the socket is mode 0660: run as its owner or a member of its group"
                }
                _ => "",
            };
            Failure::Usage(format!(
                "cannot connect to {address} (from {origin}): {e}{hint}"
            ))
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| Failure::Usage(format!("{address}: {e}")))?;
        Ok(Session {
            address,
            origin,
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn io_failure(&self, what: &str, e: &io::Error) -> Failure {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return Failure::Usage(format!(
                "{} (from {}): no {what} within {} s",
                self.address,
                self.origin,
                REPLY_TIMEOUT_MS / 1000
            ));
        }
        Failure::Usage(format!(
            "{} (from {}): {what}: {e}",
            self.address, self.origin
        ))
    }

    fn send(&mut self, line: &str) -> Result<(), Failure> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let result = self.writer.write_all(&bytes);
        result.map_err(|e| self.io_failure("sending the request", &e))
    }

    /// Reads one reply line (without its newline).
    fn receive(&mut self) -> Result<String, Failure> {
        match read_line(&mut self.reader) {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(Failure::Usage(format!(
                "{} (from {}): the server closed the connection without a reply",
                self.address, self.origin
            ))),
            Err(e) => Err(self.io_failure("reply", &e)),
        }
    }
}

/// Reads one line of at most `REPLY_BYTES_MAX` bytes; `None` at end of stream.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let limit = REPLY_BYTES_MAX as u64 + 1;
    let n = reader.take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > REPLY_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a reply line is longer than {REPLY_BYTES_MAX} bytes"),
        ));
    } else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed in the middle of a reply",
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a reply is not UTF-8"))
}

/// The request line for a method. Fails (a usage error) on a payload that is not valid JSON
/// or not valid base64, so that the mistake is reported before anything is sent.
fn request_line(method: &MethodArgs) -> Result<String, String> {
    // Holds a payload's JSON text with any line breaks turned into spaces: valid JSON has them
    // only as whitespace between tokens, and one raw newline would split the request in two.
    let data_text;
    let mut request = Request::default();
    let payload = match method {
        MethodArgs::Publish {
            channel,
            payload,
            report,
        } => {
            request.method = "publish";
            request.channel = Some(channel);
            request.report = *report;
            Some(payload)
        }
        MethodArgs::History { channel, limit } => {
            request.method = "history";
            request.channel = Some(channel);
            request.limit = *limit;
            None
        }
        MethodArgs::Broadcast { channels, payload } => {
            request.method = "broadcast";
            request.channels = (!channels.is_empty()).then_some(channels.as_slice());
            Some(payload)
        }
        MethodArgs::Send { conn, payload } => {
            request.method = "send";
            request.conn = Some(*conn);
            Some(payload)
        }
        MethodArgs::Subscribe { conn, channel } => {
            request.method = "subscribe";
            request.conn = Some(*conn);
            request.channel = Some(channel);
            None
        }
        MethodArgs::Unsubscribe { conn, channel } => {
            request.method = "unsubscribe";
            request.conn = Some(*conn);
            request.channel = Some(channel);
            None
        }
        MethodArgs::Disconnect { conn, code, reason } => {
            request.method = "disconnect";
            request.conn = Some(*conn);
            request.code = *code;
            request.reason = reason.as_deref();
            None
        }
        MethodArgs::Presence {
            channel,
            limit,
            cursor,
        } => {
            request.method = "presence";
            request.channel = Some(channel);
            request.limit = *limit;
            request.cursor = cursor.map(Value::from);
            None
        }
        MethodArgs::Channels { limit, cursor } => {
            request.method = "channels";
            request.limit = *limit;
            request.cursor = cursor.as_deref().map(Value::from);
            None
        }
        MethodArgs::Stats => {
            request.method = "stats";
            None
        }
        MethodArgs::Drain { over } => {
            request.method = "drain";
            request.over_ms = Some(*over);
            None
        }
        MethodArgs::Info => {
            request.method = "info";
            None
        }
    };
    if let Some(payload) = payload {
        if let Some(json) = &payload.data {
            data_text = json.replace(['\n', '\r'], " ");
            request.data = Some(serde_json::from_str::<&RawValue>(&data_text).map_err(|e| {
                format!(
                    "the payload {json:?} is not JSON ({e}); to send a plain string, use --text"
                )
            })?);
        }
        if let Some(b64) = &payload.b64 {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("--b64: not standard base64 ({e})"))?;
            request.b64 = Some(b64);
        }
        request.text = payload.text.as_deref();
    }
    serde_json::to_string(&request).map_err(|e| format!("cannot encode the request: {e}"))
}

/// The `auth` request line.
fn auth_line(token: &str) -> String {
    let request = Request {
        method: "auth",
        token: Some(token),
        ..Request::default()
    };
    // Serialising a struct of strings cannot fail; the fallback (a request the server refuses
    // with bad_params) only spares a panic path.
    serde_json::to_string(&request).unwrap_or_else(|_| String::from("{\"method\":\"auth\"}"))
}

/// A reply, classified.
#[derive(Debug, PartialEq)]
enum Reply {
    Result(Value),
    Error { code: String, message: String },
}

fn parse_reply(line: &str) -> Result<Reply, String> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| format!("the server sent a line that is not JSON ({e}): {line:.200}"))?;
    if let Some(error) = value.get("error") {
        let field = |name: &str| match error.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::from("?"),
        };
        return Ok(Reply::Error {
            code: field("code"),
            message: field("message"),
        });
    }
    match value {
        Value::Object(mut map) => match map.remove("result") {
            Some(result) => Ok(Reply::Result(result)),
            None => Err(format!("a reply has neither result nor error: {line:.200}")),
        },
        _ => Err(format!("a reply is not a JSON object: {line:.200}")),
    }
}

/// Renders a JSON value for a table cell: strings bare, `[[k,v],...]` pairs as `k:v k:v`,
/// anything else as compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if !items.is_empty() => {
            let pairs: Option<Vec<String>> = items
                .iter()
                .map(|item| match item.as_array().map(Vec::as_slice) {
                    Some([k, v]) => Some(format!("{}:{}", cell(k), cell(v))),
                    _ => None,
                })
                .collect();
            pairs.map_or_else(|| value.to_string(), |p| p.join(" "))
        }
        Value::Array(_) => String::from("-"),
        other => other.to_string(),
    }
}

/// Two aligned columns.
fn table(rows: &[(String, String)], out: &mut String) {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (key, value) in rows {
        out.push_str(&format!("{key:<width$}  {value}\n"));
    }
}

fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{:03}s", s, ms % 1000),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m {}s", s / 3600, s / 60 % 60, s % 60),
        _ => format!("{}d {}h {}m", s / 86400, s / 3600 % 24, s / 60 % 60),
    }
}

fn publish_line(channel: &str, result: &Value) -> String {
    let offset = result.get("offset").and_then(Value::as_u64);
    let epoch = result.get("epoch").and_then(Value::as_u64);
    if let Some(delivered) = result.get("delivered").and_then(Value::as_u64) {
        let field = |k: &str| result.get(k).and_then(Value::as_u64).unwrap_or(0);
        return format!(
            "published to {channel}: offset {} (epoch {}), queued to {delivered} connection(s) \
             on {} shard(s), {} slow, {} shard(s) not reached",
            offset.unwrap_or(0),
            epoch.unwrap_or(0),
            field("shards"),
            field("slow"),
            field("refused_shards"),
        );
    }
    match (offset, epoch) {
        (Some(0), _) => format!("published to {channel}: no subscribers (nothing sequenced)"),
        (Some(offset), Some(epoch)) => {
            format!("published to {channel}: offset {offset} (epoch {epoch})")
        }
        _ => format!("published to {channel}: {result}"),
    }
}

/// The readable form of a method's result.
fn render(method: &MethodArgs, result: &Value) -> String {
    let mut out = String::new();
    match method {
        MethodArgs::History { channel, .. } => {
            match result.get("messages").and_then(Value::as_array) {
                Some(msgs) => {
                    out = format!(
                        "{channel}: {} kept message(s), last offset {}\n",
                        msgs.len(),
                        result.get("offset").and_then(Value::as_u64).unwrap_or(0)
                    );
                    for m in msgs {
                        out.push_str(&format!("{m}\n"));
                    }
                }
                None => out = format!("{channel}: {result}\n"),
            }
        }
        MethodArgs::Publish { channel, .. } => {
            out = publish_line(channel, result);
            out.push('\n');
        }
        MethodArgs::Broadcast { channels, .. } => {
            if let Some(results) = result.get("results").and_then(Value::as_array) {
                for item in results {
                    let channel = item.get("channel").and_then(Value::as_str).unwrap_or("?");
                    out.push_str(&publish_line(channel, item));
                    out.push('\n');
                }
            } else if let Some(n) = result.get("connections").and_then(Value::as_u64) {
                out = format!("broadcast to {n} connection(s)\n");
            } else {
                out = format!("broadcast to {}: {result}\n", channels.join(", "));
            }
        }
        MethodArgs::Send { conn, .. } => out = format!("sent to connection {conn}\n"),
        MethodArgs::Subscribe { conn, channel } => {
            out = format!("connection {conn} subscribed to {channel}\n")
        }
        MethodArgs::Unsubscribe { conn, channel } => {
            out = format!("connection {conn} unsubscribed from {channel}\n")
        }
        MethodArgs::Disconnect { conn, code, .. } => {
            out = format!(
                "disconnecting connection {conn} (code {})\n",
                code.unwrap_or(4003)
            )
        }
        MethodArgs::Presence { channel, .. } => {
            match result.get("conns").and_then(Value::as_array) {
                Some(conns) => {
                    out = format!("{channel}: {} connection(s)\n", conns.len());
                    for conn in conns {
                        out.push_str(&format!("{conn}\n"));
                    }
                }
                None => out = format!("{channel}: {result}\n"),
            }
            more_pages(result, &mut out);
        }
        MethodArgs::Channels { .. } => {
            match result.get("channels").and_then(Value::as_object) {
                Some(channels) if channels.is_empty() => out.push_str("no channels\n"),
                Some(channels) => {
                    let mut rows = vec![(String::from("CHANNEL"), String::from("SUBSCRIBERS"))];
                    rows.extend(channels.iter().map(|(name, n)| (name.clone(), cell(n))));
                    table(&rows, &mut out);
                }
                None => out = format!("{result}\n"),
            }
            more_pages(result, &mut out);
        }
        MethodArgs::Stats => render_stats(result, &mut out),
        MethodArgs::Drain { over } => {
            out = format!("draining over {over} ms; the server exits after it\n");
        }
        MethodArgs::Info => render_info(result, &mut out),
    }
    out
}

/// Says how to get the next page when the reply has one.
fn more_pages(result: &Value, out: &mut String) {
    match result.get("next") {
        Some(Value::String(next)) => out.push_str(&format!("(more: --cursor {next})\n")),
        Some(Value::Number(next)) => out.push_str(&format!("(more: --cursor {next})\n")),
        _ => {}
    }
}

fn render_stats(result: &Value, out: &mut String) {
    match result.get("total").and_then(Value::as_object) {
        Some(total) => {
            let rows: Vec<(String, String)> =
                total.iter().map(|(k, v)| (k.clone(), cell(v))).collect();
            table(&rows, out);
        }
        None => out.push_str(&format!("{result}\n")),
    }
    if let Some(shards) = result.get("shards").and_then(Value::as_array) {
        out.push('\n');
        let mut rows = vec![(String::from("SHARD"), String::from("OPEN"))];
        for (i, shard) in shards.iter().enumerate() {
            let id = shard.get("shard").map_or_else(|| i.to_string(), cell);
            let open = shard.get("open").map_or_else(|| String::from("?"), cell);
            rows.push((id, open));
        }
        table(&rows, out);
    }
}

fn render_info(result: &Value, out: &mut String) {
    let Some(info) = result.as_object() else {
        out.push_str(&format!("{result}\n"));
        return;
    };
    let mut rows = Vec::new();
    for (key, value) in info {
        match (key.as_str(), value) {
            ("limits", Value::Object(_)) => {}
            ("uptime_ms", v) => match v.as_u64() {
                Some(ms) => rows.push((String::from("uptime"), duration_text(ms))),
                None => rows.push((key.clone(), cell(v))),
            },
            (_, v) => rows.push((key.clone(), cell(v))),
        }
    }
    table(&rows, out);
    if let Some(Value::Object(limits)) = info.get("limits") {
        out.push_str("\nlimits:\n");
        let rows: Vec<(String, String)> = limits
            .iter()
            .map(|(k, v)| (format!("  {k}"), cell(v)))
            .collect();
        table(&rows, out);
    }
}

/// Settings gathered from both levels of options and the environment.
struct Settings {
    address: Address,
    origin: &'static str,
    json: bool,
    token: Option<String>,
}

/// Runs the client; returns the process exit status.
pub fn run(args: CtlArgs) -> i32 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(failure) => {
            if let Failure::Usage(message) = &failure {
                eprintln!("ringcast ctl: {message}");
            }
            failure.status()
        }
    }
}

fn run_inner(args: CtlArgs) -> Result<(), Failure> {
    let stdin_mode = args.args.first().map(String::as_str) == Some("-");
    let rest = if stdin_mode {
        &args.args[1..]
    } else {
        &args.args[..]
    };
    let invocation = match Invocation::try_parse_from(
        std::iter::once("ringcast ctl").chain(rest.iter().map(String::as_str)),
    ) {
        Ok(invocation) => invocation,
        Err(e) => {
            // Help goes to stdout with status 0; a usage error to stderr with status 2.
            let _ = e.print();
            return if e.exit_code() == 0 {
                Ok(())
            } else {
                Err(Failure::Explained)
            };
        }
    };
    let method = match (&invocation.method, stdin_mode) {
        (Some(_), true) => {
            return Err(Failure::Usage(String::from(
                "`-` reads requests from stdin and takes no method",
            )));
        }
        (None, false) => {
            eprintln!("{}", Invocation::command().render_help());
            return Err(Failure::Usage(String::from(
                "no method given (or `-` to read requests from stdin)",
            )));
        }
        (method, _) => method.as_ref(),
    };
    let control = invocation.control.as_deref().or(args.control.as_deref());
    let env = std::env::var(CONTROL_ENV).ok();
    let (address, origin) = resolve_address(control, env.as_deref()).map_err(Failure::Usage)?;
    let token = invocation
        .token
        .or(args.token)
        .or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()));
    let settings = Settings {
        address,
        origin,
        json: invocation.json || args.json,
        token,
    };
    match method {
        Some(method) => {
            let line = request_line(method).map_err(Failure::Usage)?;
            one_request(&settings, method, &line)
        }
        None => pipe_stdin(&settings),
    }
}

/// Prints an error reply; under `--json` its raw line goes to stdout as well.
fn report_error(settings: &Settings, line: &str, code: &str, message: &str) -> Failure {
    if settings.json {
        println!("{line}");
    }
    eprintln!("error {code}: {message}");
    if code == "unauthorized" && settings.token.is_none() {
        eprintln!("ringcast ctl: the server wants a token: --token T or {TOKEN_ENV}");
    }
    Failure::Replied
}

fn authenticate(settings: &Settings, session: &mut Session) -> Result<(), Failure> {
    let Some(token) = &settings.token else {
        return Ok(());
    };
    session.send(&auth_line(token))?;
    let line = session.receive()?;
    match parse_reply(&line).map_err(Failure::Usage)? {
        Reply::Result(_) => Ok(()),
        Reply::Error { code, message } => Err(report_error(settings, &line, &code, &message)),
    }
}

fn one_request(settings: &Settings, method: &MethodArgs, line: &str) -> Result<(), Failure> {
    let mut session = Session::open(settings.address.clone(), settings.origin)?;
    authenticate(settings, &mut session)?;
    session.send(line)?;
    let reply_line = session.receive()?;
    let reply = parse_reply(&reply_line).map_err(Failure::Usage)?;
    match reply {
        Reply::Error { code, message } => Err(report_error(settings, &reply_line, &code, &message)),
        Reply::Result(result) => {
            let text = if settings.json {
                format!("{reply_line}\n")
            } else {
                render(method, &result)
            };
            let mut stdout = io::stdout().lock();
            // A closed stdout (`| head`) is not the server's fault: the request succeeded.
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            Ok(())
        }
    }
}

/// Whether a request line gets a reply: every line does except a JSON object with
/// `"noreply": true` (docs/control.md; an unparsable line gets a `bad_json` reply).
fn expects_reply(line: &str) -> bool {
    !matches!(
        serde_json::from_str::<Value>(line),
        Ok(Value::Object(map)) if map.get("noreply") == Some(&Value::Bool(true))
    )
}

/// Progress of a pipelined run, shared by the stdin writer and the reply reader.
#[derive(Default)]
struct Progress {
    /// Replies the requests sent so far will get.
    expected: u64,
    /// Replies read.
    received: u64,
    /// Error replies among them (and lines that are not replies).
    errors: u64,
    /// Standard input is exhausted (or writing failed).
    done: bool,
    /// Since when the oldest outstanding reply has been awaited.
    waiting_since: Option<Instant>,
}

/// How the reply reader ended: all replies read (as far as it knows), or why not.
type ReaderEnd = Result<(), String>;

/// `ringcast ctl -`: pipelines stdin's lines to the server while a second thread prints the
/// replies as they come. Blank lines are skipped (they are not requests).
fn pipe_stdin(settings: &Settings) -> Result<(), Failure> {
    let mut session = Session::open(settings.address.clone(), settings.origin)?;
    authenticate(settings, &mut session)?;
    let Session {
        address,
        origin,
        reader,
        writer,
    } = session;
    let closer = writer
        .try_clone()
        .map_err(|e| Failure::Usage(format!("{address}: {e}")))?;
    // The reader wakes every second to check the reply deadline itself: an idle pipe (a slow
    // producer on stdin, no request outstanding) is not a timeout.
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(1)));
    let progress = Mutex::new(Progress::default());
    let (write_result, end) = std::thread::scope(|scope| {
        let reader_thread = scope.spawn(|| read_replies(reader, &progress, &closer));
        let write_result = write_requests(writer, &progress, &closer);
        let end = reader_thread
            .join()
            .unwrap_or_else(|_| Err(String::from("the reply reader failed")));
        (write_result, end)
    });
    let p = lock(&progress);
    let problem = match (end, write_result) {
        (Err(why), _) => Some(why),
        // Checked again now that the writer is done: a request may have been on its way when
        // the server closed.
        (Ok(()), _) if p.received < p.expected => Some(format!(
            "the server closed the connection after {} of {} replies",
            p.received, p.expected
        )),
        (Ok(()), Err(e)) => Some(e),
        (Ok(()), Ok(())) => None,
    };
    let errors = p.errors;
    drop(p);
    if errors > 0 {
        // The server replied an error (and maybe closed, as after `unauthorized`): that error
        // is the story, a connection problem after it only its consequence.
        if let Some(problem) = problem {
            eprintln!("ringcast ctl: {address}: {problem}");
        }
        eprintln!("ringcast ctl: {errors} request(s) got an error reply");
        return Err(Failure::Replied);
    }
    match problem {
        Some(problem) => Err(Failure::Usage(format!(
            "{address} (from {origin}): {problem}"
        ))),
        None => Ok(()),
    }
}

fn lock(progress: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    // A poisoned lock means the other thread panicked; its counts are still plain integers.
    progress.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_requests(
    writer: Stream,
    progress: &Mutex<Progress>,
    closer: &Stream,
) -> Result<(), String> {
    let mut out = BufWriter::new(writer);
    let mut input = BufReader::with_capacity(64 << 10, io::stdin());
    let mut line = String::new();
    let result = loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(format!("reading stdin: {e}")),
        }
        let request = line.trim_end_matches(['\n', '\r']);
        if request.trim().is_empty() {
            continue;
        }
        if expects_reply(request) {
            let mut p = lock(progress);
            if p.expected == p.received {
                p.waiting_since = Some(Instant::now());
            }
            p.expected += 1;
        }
        let mut written = out
            .write_all(request.as_bytes())
            .and_then(|()| out.write_all(b"\n"));
        // Send what we have whenever stdin has nothing more buffered, so an interactive or slow
        // producer sees replies at once while a file is sent in large writes.
        if written.is_ok() && input.buffer().is_empty() {
            written = out.flush();
        }
        if let Err(e) = written {
            break Err(format!("sending requests: {e}"));
        }
    };
    let result = result.and_then(|()| out.flush().map_err(|e| format!("sending requests: {e}")));
    // No half-close here: a server may take the end of the requests as the end of the
    // conversation and drop replies still pending (ringcast 0.1.0 does). The connection is
    // closed once every reply is in.
    let mut p = lock(progress);
    p.done = true;
    if p.received >= p.expected || result.is_err() {
        // Every reply is in (or none will come): wake the reader blocked in read().
        closer.shutdown(Shutdown::Both);
    }
    result
}

fn read_replies(
    mut reader: BufReader<Stream>,
    progress: &Mutex<Progress>,
    closer: &Stream,
) -> ReaderEnd {
    let mut stdout = BufWriter::new(io::stdout().lock());
    let timeout = Duration::from_millis(REPLY_TIMEOUT_MS);
    let end = loop {
        match read_line(&mut reader) {
            Ok(Some(line)) => {
                let failed = matches!(parse_reply(&line), Ok(Reply::Error { .. }) | Err(_));
                // Replies are the output: a closed stdout ends the run like a closed socket.
                // Flushed whenever no further reply is already buffered, so a scripted
                // conversation sees each reply at once while a long stream is written in blocks.
                let mut written = writeln!(stdout, "{line}");
                if written.is_ok() && reader.buffer().is_empty() {
                    written = stdout.flush();
                }
                if let Err(e) = written {
                    break Err(format!("writing stdout: {e}"));
                }
                let mut p = lock(progress);
                p.received += 1;
                p.errors += u64::from(failed);
                p.waiting_since = (p.received < p.expected).then(Instant::now);
                if p.done && p.received >= p.expected {
                    break Ok(());
                }
            }
            Ok(None) => {
                // Complete so far; pipe_stdin checks again once the writer has finished, in
                // case a request was on its way when the server closed.
                let p = lock(progress);
                if p.received >= p.expected {
                    break Ok(());
                }
                break Err(format!(
                    "the server closed the connection after {} of {} replies",
                    p.received, p.expected
                ));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let p = lock(progress);
                if p.waiting_since.is_some_and(|t| t.elapsed() >= timeout)
                    && p.received < p.expected
                {
                    break Err(format!(
                        "no reply within {} s ({} of {} replies so far)",
                        REPLY_TIMEOUT_MS / 1000,
                        p.received,
                        p.expected
                    ));
                }
            }
            Err(e) => break Err(format!("reading replies: {e}")),
        }
    };
    let end = match (stdout.flush(), end) {
        (Err(e), Ok(())) => Err(format!("writing stdout: {e}")),
        (_, end) => end,
    };
    if end.is_err() {
        // Unblock a writer stuck on a full socket: the run is over.
        closer.shutdown(Shutdown::Both);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(args: &[&str]) -> Result<MethodArgs, clap::Error> {
        let args = std::iter::once("ringcast ctl").chain(args.iter().copied());
        Invocation::try_parse_from(args).map(|i| i.method.unwrap())
    }

    fn line(args: &[&str]) -> String {
        request_line(&method(args).unwrap()).unwrap()
    }

    #[test]
    fn arguments_map_to_request_lines() {
        assert_eq!(
            line(&["publish", "news", r#"{"a":1}"#]),
            r#"{"method":"publish","channel":"news","data":{"a":1}}"#
        );
        assert_eq!(
            line(&["publish", "news", "--text", "hello \"you\""]),
            r#"{"method":"publish","channel":"news","text":"hello \"you\""}"#
        );
        assert_eq!(
            line(&["publish", "--b64", "AP8=", "bin"]),
            r#"{"method":"publish","channel":"bin","b64":"AP8="}"#
        );
        assert_eq!(
            line(&[
                "broadcast",
                "--channel",
                "a",
                "--channel",
                "b",
                "--text",
                "x"
            ]),
            r#"{"method":"broadcast","channels":["a","b"],"text":"x"}"#
        );
        assert_eq!(
            line(&["broadcast", "[1,2]"]),
            r#"{"method":"broadcast","data":[1,2]}"#
        );
        assert_eq!(
            line(&["send", "42", "\"hi\""]),
            r#"{"method":"send","conn":42,"data":"hi"}"#
        );
        assert_eq!(
            line(&["subscribe", "7", "chat:a"]),
            r#"{"method":"subscribe","conn":7,"channel":"chat:a"}"#
        );
        assert_eq!(
            line(&["unsubscribe", "7", "chat:a"]),
            r#"{"method":"unsubscribe","conn":7,"channel":"chat:a"}"#
        );
        assert_eq!(
            line(&["disconnect", "9"]),
            r#"{"method":"disconnect","conn":9}"#
        );
        assert_eq!(
            line(&["disconnect", "9", "--code", "4000", "--reason", "bye"]),
            r#"{"method":"disconnect","conn":9,"code":4000,"reason":"bye"}"#
        );
        assert_eq!(
            line(&["presence", "news"]),
            r#"{"method":"presence","channel":"news"}"#
        );
        assert_eq!(
            line(&["publish", "news", "--report", "1"]),
            r#"{"method":"publish","channel":"news","data":1,"report":true}"#
        );
        assert_eq!(
            line(&["history", "h:x", "--limit", "3"]),
            r#"{"method":"history","channel":"h:x","limit":3}"#
        );
        assert_eq!(line(&["channels"]), r#"{"method":"channels"}"#);
        assert_eq!(line(&["stats"]), r#"{"method":"stats"}"#);
        assert_eq!(line(&["info"]), r#"{"method":"info"}"#);
        assert_eq!(auth_line("s\"t"), r#"{"method":"auth","token":"s\"t"}"#);
    }

    #[test]
    fn json_payloads_are_sent_verbatim_on_one_line() {
        // Big integers keep every digit (no float round trip); negative numbers are values.
        assert_eq!(
            line(&["publish", "n", "123456789012345678901234567890"]),
            r#"{"method":"publish","channel":"n","data":123456789012345678901234567890}"#
        );
        assert_eq!(
            line(&["publish", "n", "-1.5"]),
            r#"{"method":"publish","channel":"n","data":-1.5}"#
        );
        let pretty = line(&["publish", "n", "{\n  \"a\": 1\r\n}"]);
        assert!(!pretty.contains('\n') && !pretty.contains('\r'), "{pretty}");
        let v: Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(v["data"]["a"], 1);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        // Not JSON, bad base64: refused before anything is sent.
        let not_json = request_line(&method(&["publish", "n", "hello"]).unwrap()).unwrap_err();
        assert!(not_json.contains("--text"), "{not_json}");
        assert!(request_line(&method(&["publish", "n", "--b64", "!!"]).unwrap()).is_err());
        // clap: no payload, two payloads, a bad conn id, an unknown method.
        assert!(method(&["publish", "n"]).is_err());
        assert!(method(&["publish", "n", "1", "--text", "x"]).is_err());
        assert!(method(&["publish", "n", "--text", "x", "--b64", "AA=="]).is_err());
        assert!(method(&["send", "-3", "1"]).is_err());
        assert!(method(&["send", "abc", "1"]).is_err());
        assert!(method(&["disconnect", "1", "--code", "70000"]).is_err());
        assert!(method(&["fly"]).is_err());
    }

    #[test]
    fn options_after_the_method_are_read() {
        let i = Invocation::try_parse_from([
            "ringcast ctl",
            "stats",
            "--json",
            "--control",
            "tcp:127.0.0.1:1",
            "--token",
            "t",
        ])
        .unwrap();
        assert!(i.json);
        assert_eq!(i.control.as_deref(), Some("tcp:127.0.0.1:1"));
        assert_eq!(i.token.as_deref(), Some("t"));
        assert_eq!(i.method, Some(MethodArgs::Stats));
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("unix:/tmp/ringcast.sock"),
            Ok(Address::Unix("/tmp/ringcast.sock".into()))
        );
        assert_eq!(
            parse_address("unix:rel.sock"),
            Ok(Address::Unix("rel.sock".into()))
        );
        assert_eq!(
            parse_address("tcp:127.0.0.1:9081"),
            Ok(Address::Tcp("127.0.0.1:9081".into()))
        );
        assert_eq!(
            parse_address("tcp:[::1]:9081"),
            Ok(Address::Tcp("[::1]:9081".into()))
        );
        // PHP's spelling of the same address is accepted too.
        assert_eq!(
            parse_address("tcp://127.0.0.1:9081"),
            Ok(Address::Tcp("127.0.0.1:9081".into()))
        );
        assert_eq!(
            parse_address("tcp:localhost:9081"),
            Ok(Address::Tcp("localhost:9081".into()))
        );
        for bad in [
            "",
            "unix:",
            "tcp:",
            "tcp:host",
            "tcp::9081",
            "tcp:h:99999",
            "tcp:h:x",
            "/tmp/s",
            "udp:1:2",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Address::Tcp("[::1]:9081".into()).to_string(),
            "tcp:[::1]:9081"
        );
    }

    #[test]
    fn address_comes_from_flag_then_env_then_default() {
        let unix = |p: &str| Address::Unix(p.to_string());
        assert_eq!(
            resolve_address(Some("unix:/a"), Some("unix:/b")),
            Ok((unix("/a"), "--control"))
        );
        assert_eq!(
            resolve_address(None, Some("unix:/b")),
            Ok((unix("/b"), CONTROL_ENV))
        );
        assert_eq!(
            resolve_address(None, Some("")),
            Ok((unix("/tmp/ringcast.sock"), "the default"))
        );
        assert_eq!(
            resolve_address(None, None),
            Ok((unix("/tmp/ringcast.sock"), "the default"))
        );
        let err = resolve_address(None, Some("nonsense")).unwrap_err();
        assert!(err.contains(CONTROL_ENV), "{err}");
    }

    #[test]
    fn replies_classify() {
        assert_eq!(
            parse_reply(r#"{"id":1,"result":{"offset":3}}"#),
            Ok(Reply::Result(serde_json::json!({"offset":3})))
        );
        assert_eq!(
            parse_reply(r#"{"error":{"code":"bad_params","message":"m"}}"#),
            Ok(Reply::Error {
                code: "bad_params".into(),
                message: "m".into()
            })
        );
        assert!(parse_reply("not json").is_err());
        assert!(parse_reply("[1]").is_err());
        assert!(parse_reply("{}").is_err());
        assert!(expects_reply(r#"{"method":"stats"}"#));
        assert!(expects_reply(r#"{"method":"stats","noreply":false}"#));
        assert!(expects_reply("garbage"));
        assert!(!expects_reply(r#"{"method":"publish","noreply":true}"#));
    }

    #[test]
    fn results_render_readably() {
        let publish = method(&["publish", "news", "1"]).unwrap();
        assert_eq!(
            render(&publish, &serde_json::json!({"offset":3,"epoch":17})),
            "published to news: offset 3 (epoch 17)\n"
        );
        assert_eq!(
            render(
                &publish,
                &serde_json::json!({"offset":3,"epoch":17,"delivered":5,"slow":1,"shards":2,"refused_shards":0})
            ),
            "published to news: offset 3 (epoch 17), queued to 5 connection(s) on 2 shard(s), 1 slow, \
             0 shard(s) not reached\n"
        );
        let history = method(&["history", "h:x", "--limit", "2"]).unwrap();
        assert_eq!(
            render(
                &history,
                &serde_json::json!({"offset":9,"epoch":1,"messages":[{"op":"message","offset":9}]})
            ),
            "h:x: 1 kept message(s), last offset 9\n{\"offset\":9,\"op\":\"message\"}\n"
        );
        assert_eq!(
            render(&publish, &serde_json::json!({"offset":0,"epoch":0})),
            "published to news: no subscribers (nothing sequenced)\n"
        );
        let stats = render(
            &MethodArgs::Stats,
            &serde_json::json!({
                "total": {"open": 3, "accepted": 10, "closed_by_code": [[1000, 2], [4001, 1]]},
                "shards": [{"open": 1}, {"open": 2}]
            }),
        );
        assert!(stats.contains("accepted        10\n"), "{stats}");
        assert!(stats.contains("closed_by_code  1000:2 4001:1\n"), "{stats}");
        assert!(
            stats.contains("SHARD  OPEN\n0      1\n1      2\n"),
            "{stats}"
        );
        let presence = render(
            &MethodArgs::Presence {
                channel: "n".into(),
                limit: None,
                cursor: None,
            },
            &serde_json::json!({"conns": [5, 6]}),
        );
        assert_eq!(presence, "n: 2 connection(s)\n5\n6\n");
        // Unexpected shapes are shown, never a panic.
        for m in [
            publish,
            MethodArgs::Stats,
            MethodArgs::Info,
            MethodArgs::Channels {
                limit: None,
                cursor: None,
            },
            MethodArgs::Presence {
                channel: "n".into(),
                limit: None,
                cursor: None,
            },
        ] {
            for v in [
                Value::Null,
                serde_json::json!([1]),
                serde_json::json!({"total": 1}),
            ] {
                assert!(!render(&m, &v).is_empty());
            }
        }
        assert_eq!(duration_text(1_500), "1.500s");
        assert_eq!(duration_text(3_725_000), "1h 2m 5s");
    }

    #[test]
    fn reply_lines_are_bounded_and_complete() {
        let mut r = io::Cursor::new(b"{\"result\":{}}\n{\"res".to_vec());
        assert_eq!(
            read_line(&mut r).unwrap().as_deref(),
            Some("{\"result\":{}}")
        );
        assert!(read_line(&mut r).is_err());
        let mut empty = io::Cursor::new(Vec::new());
        assert!(read_line(&mut empty).unwrap().is_none());
    }
}
