//! Parsing and checking what the user points the generator at: `ws://` URLs, control socket
//! addresses, source address ranges and rate lists. Every target must be on loopback
//! (127.0.0.0/8 or ::1): this tool floods what it is aimed at, so it refuses anything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A parsed `ws://HOST:PORT/PATH?QUERY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Resolved loopback address.
    pub addr: SocketAddr,
    /// The Host header value (as written in the URL).
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

fn loopback_only(ip: IpAddr, what: &str) -> Result<IpAddr, String> {
    if ip.is_loopback() {
        Ok(ip)
    } else {
        Err(format!(
            "{what} {ip} is not a loopback address: ringcast-load only targets 127.0.0.0/8 or ::1"
        ))
    }
}

fn parse_host_port(hostport: &str, what: &str) -> Result<SocketAddr, String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad {what} address {hostport}"))?;
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        hostport.rsplit_once(':').unwrap_or((hostport, ""))
    };
    let ip: IpAddr = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h.parse().map_err(|_| {
            format!(
                "{what} host {h:?} must be a literal loopback address (127.x.y.z, ::1) or localhost"
            )
        })?,
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{what} {hostport}: missing or bad port"))?;
    Ok(SocketAddr::new(loopback_only(ip, what)?, port))
}

/// Splits what follows the scheme into `HOST:PORT` and the path (with query, starting with `/`).
fn split_authority(rest: &str) -> (&str, String) {
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    }
}

/// Parses a `ws://` URL with a loopback host and an explicit port.
pub fn parse_ws_url(url: &str) -> Result<WsUrl, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported (no TLS on loopback)"))?;
    let (hostport, path) = split_authority(rest);
    Ok(WsUrl {
        addr: parse_host_port(hostport, "URL")?,
        host: hostport.to_string(),
        path,
    })
}

/// Parses `--url` as a comma-separated list of `ws://` URLs (one URL: a list of one). A new
/// entry starts only at a comma followed by `ws://` (spaces allowed), so a single URL with a
/// comma in its query parses exactly as `parse_ws_url` parses it. Each entry is checked as
/// `parse_ws_url` checks it; all must have the same path and query, since the subscribers'
/// paths are built from the first, and none may repeat.
pub fn parse_ws_urls(s: &str) -> Result<Vec<WsUrl>, String> {
    let mut entries: Vec<String> = Vec::new();
    for part in s.split(',') {
        match entries.last_mut() {
            None => entries.push(part.to_string()),
            Some(last) if !part.trim_start().starts_with("ws://") => {
                last.push(',');
                last.push_str(part);
            }
            Some(_) => entries.push(part.trim().to_string()),
        }
    }
    let mut out: Vec<WsUrl> = Vec::new();
    for part in &entries {
        let u = parse_ws_url(part)?;
        if let Some(first) = out.first()
            && u.path != first.path
        {
            return Err(format!(
                "--url: every URL of the list needs the same path and query ({} has {}, the \
                 first {})",
                part, u.path, first.path
            ));
        }
        if out.iter().any(|o| o.addr == u.addr) {
            return Err(format!("--url: {} is in the list twice", u.addr));
        }
        out.push(u);
    }
    Ok(out)
}

/// A parsed `http://HOST:PORT/PATH?QUERY`: where an HTTP publisher sends its `POST`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Resolved loopback address.
    pub addr: SocketAddr,
    /// The Host header value (as written in the URL).
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses an `http://` URL with a loopback host and an explicit port.
pub fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url}: only http:// URLs are supported for --pub-http (no TLS on loopback)")
    })?;
    let (hostport, path) = split_authority(rest);
    Ok(HttpUrl {
        addr: parse_host_port(hostport, "--pub-http")?,
        host: hostport.to_string(),
        path,
    })
}

impl WsUrl {
    /// The path with every `channel=` query value replaced by `channel`, or `channel=` appended
    /// when the query has none. Used to spread subscribers over several channels.
    pub fn path_with_channel(&self, channel: &str) -> String {
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let mut params: Vec<String> = Vec::new();
        let mut replaced = false;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            if kv.starts_with("channel=") {
                if !replaced {
                    params.push(format!("channel={channel}"));
                    replaced = true;
                }
            } else {
                params.push(kv.to_string());
            }
        }
        if !replaced {
            params.insert(0, format!("channel={channel}"));
        }
        format!("{path}?{}", params.join("&"))
    }

    /// The first `channel=` value of the query, if any.
    pub fn channel(&self) -> Option<&str> {
        let query = self.path.split_once('?')?.1;
        query.split('&').find_map(|kv| kv.strip_prefix("channel="))
    }
}

/// The server's control socket address syntax: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// A Unix stream socket path.
    Unix(String),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

/// Parses `unix:PATH` or `tcp:ADDR` (loopback only).
pub fn parse_control(s: &str) -> Result<ControlAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("--control unix: needs a path".into());
        }
        Ok(ControlAddr::Unix(path.to_string()))
    } else if let Some(addr) = s.strip_prefix("tcp:") {
        Ok(ControlAddr::Tcp(parse_host_port(addr, "control")?))
    } else {
        Err(format!(
            "--control {s}: expected unix:PATH or tcp:HOST:PORT"
        ))
    }
}

/// Parses `--src`: a comma list of loopback addresses or IPv4 ranges `A-B` (same /24 not
/// required; at most 256 addresses in all), e.g. `127.0.0.2-127.0.0.9`.
pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    const SOURCES_MAX: usize = 256;
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("--src: bad address {a:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("--src: bad address {b:?}"))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if lo > hi {
                return Err(format!("--src: range {part} is reversed"));
            }
            if (hi - lo) as usize >= SOURCES_MAX {
                return Err(format!(
                    "--src: range {part} has more than {SOURCES_MAX} addresses"
                ));
            }
            for v in lo..=hi {
                out.push(loopback_only(IpAddr::V4(Ipv4Addr::from(v)), "--src")?);
            }
        } else {
            let ip: IpAddr = part
                .parse()
                .map_err(|_| format!("--src: bad address {part:?}"))?;
            out.push(loopback_only(ip, "--src")?);
        }
        if out.len() > SOURCES_MAX {
            return Err(format!("--src: more than {SOURCES_MAX} addresses"));
        }
    }
    if out.is_empty() {
        return Err("--src: no address given".into());
    }
    Ok(out)
}

/// Whether a source address can reach `dst` (same family; ::1 only talks to ::1).
pub fn source_matches(src: &IpAddr, dst: &SocketAddr) -> bool {
    match (src, dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => true,
        (IpAddr::V6(s), IpAddr::V6(_)) => *s == Ipv6Addr::LOCALHOST,
        _ => false,
    }
}

/// Parses `--rate`: a comma list of positive rates per second, e.g. `1000,2000,5000`; `k`
/// suffix for thousands (`2k`).
pub fn parse_rates(s: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (num, mult) = match part.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1000.0),
            None => (part, 1.0),
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("--rate: bad rate {part:?}"))?;
        let v = v * mult;
        if !(v.is_finite() && v > 0.0 && v <= 10_000_000.0) {
            return Err(format!("--rate: {part} must be within (0, 10M] per second"));
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        let u = parse_http_url("http://127.0.0.1:8080/publish?channel=a").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.host, "127.0.0.1:8080");
        assert_eq!(u.path, "/publish?channel=a");
        assert_eq!(parse_http_url("http://[::1]:80").unwrap().path, "/");
        assert!(parse_http_url("http://10.0.0.1:80/publish").is_err());
        assert!(parse_http_url("http://example.com:80/").is_err());
        assert!(parse_http_url("https://127.0.0.1:443/").is_err());
        assert!(parse_http_url("http://127.0.0.1/publish").is_err());
    }

    #[test]
    fn urls() {
        let u = parse_ws_url("ws://127.0.0.1:9000/ws?channel=bench&format=raw").unwrap();
        assert_eq!(u.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(u.host, "127.0.0.1:9000");
        assert_eq!(u.path, "/ws?channel=bench&format=raw");
        assert_eq!(u.channel(), Some("bench"));
        assert_eq!(
            u.path_with_channel("bench3"),
            "/ws?channel=bench3&format=raw"
        );
        let bare = parse_ws_url("ws://localhost:80").unwrap();
        assert_eq!(bare.path, "/");
        assert_eq!(bare.path_with_channel("c"), "/?channel=c");
        assert_eq!(parse_ws_url("ws://[::1]:81?x=1").unwrap().path, "/?x=1");
        assert!(
            parse_ws_url("ws://10.0.0.1:80/")
                .unwrap_err()
                .contains("not a loopback")
        );
        assert!(parse_ws_url("ws://example.com:80/").is_err());
        assert!(parse_ws_url("wss://127.0.0.1:80/").is_err());
        assert!(parse_ws_url("ws://127.0.0.1/").is_err());
    }

    #[test]
    fn url_lists() {
        let one = parse_ws_urls("ws://127.0.0.1:9000/ws?format=raw").unwrap();
        assert_eq!(
            one,
            vec![parse_ws_url("ws://127.0.0.1:9000/ws?format=raw").unwrap()]
        );
        let two =
            parse_ws_urls("ws://127.0.0.1:9000/ws?format=raw, ws://127.0.0.2:9001/ws?format=raw")
                .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].addr, "127.0.0.2:9001".parse().unwrap());
        assert_eq!(two[1].host, "127.0.0.2:9001");
        assert_eq!(two[1].path, "/ws?format=raw");
        assert!(
            parse_ws_urls("ws://127.0.0.1:9000/ws?format=raw,ws://127.0.0.1:9001/ws")
                .unwrap_err()
                .contains("same path")
        );
        assert!(parse_ws_urls("ws://127.0.0.1:9000/ws,ws://127.0.0.1:9000/ws").is_err());
        // A comma not followed by ws:// belongs to the URL, as before lists.
        let comma = parse_ws_urls("ws://127.0.0.1:9000/ws?channel=a,b").unwrap();
        assert_eq!(comma.len(), 1);
        assert_eq!(comma[0].path, "/ws?channel=a,b");
        assert!(parse_ws_urls("ws://127.0.0.1:9000/ws,ws://10.0.0.1:9000/ws").is_err());
    }

    #[test]
    fn control_addresses() {
        assert_eq!(
            parse_control("unix:/tmp/c.sock"),
            Ok(ControlAddr::Unix("/tmp/c.sock".into()))
        );
        assert_eq!(
            parse_control("tcp:127.0.0.1:7000"),
            Ok(ControlAddr::Tcp("127.0.0.1:7000".parse().unwrap()))
        );
        assert!(parse_control("tcp:192.168.1.1:7000").is_err());
        assert!(parse_control("/tmp/c.sock").is_err());
    }

    #[test]
    fn source_ranges() {
        let v = parse_sources("127.0.0.2-127.0.0.9").unwrap();
        assert_eq!(v.len(), 8);
        assert_eq!(v[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[7], "127.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            parse_sources("127.0.0.5, 127.1.0.0-127.1.0.1")
                .unwrap()
                .len(),
            3
        );
        assert_eq!(parse_sources("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert_eq!(
            parse_sources("::1").unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("127.0.0.1-127.0.9.0").is_err());
        assert!(parse_sources("127.0.0.254-128.0.0.1").is_err());
        assert!(parse_sources("10.0.0.1").is_err());
        assert!(parse_sources("").is_err());
    }

    #[test]
    fn rate_lists() {
        assert_eq!(
            parse_rates("1000,2000, 5000").unwrap(),
            vec![1000.0, 2000.0, 5000.0]
        );
        assert_eq!(parse_rates("2k,0.5").unwrap(), vec![2000.0, 0.5]);
        assert!(parse_rates("0").is_err());
        assert!(parse_rates("-5").is_err());
        assert!(parse_rates("1,,2").is_err());
        assert!(parse_rates("fast").is_err());
    }
}
