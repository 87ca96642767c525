//! `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`: where the Redis server is and how to log in.
//! Percent-escapes in the user and password are decoded. `rediss://` (TLS) is refused with the
//! way round it: the bridge speaks plain TCP.

/// A parsed Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address (IPv6 without its brackets).
    pub host: String,
    /// TCP port (6379 unless given).
    pub port: u16,
    /// `AUTH` user (Redis 6 ACLs), if any.
    pub user: Option<String>,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// `SELECT` database (0 unless given).
    pub db: u32,
}

impl std::fmt::Debug for RedisUrl {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    "a % in the user or password must start an escape like %40".to_string()
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user or password is not UTF-8".to_string())
}

impl RedisUrl {
    /// Parses a `redis://` URL; the error says what to write instead.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        if text.starts_with("rediss://") {
            return Err(
                "rediss:// (TLS) is not supported: reach Redis over a private network or \
                 through a local TLS tunnel, with a redis:// URL"
                    .to_string(),
            );
        }
        let rest = text
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{text:?} is not a redis://HOST[:PORT][/DB] URL"))?;
        if rest.contains(['?', '#']) {
            return Err("query and fragment parts are not supported".to_string());
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let db = if path.is_empty() {
            0
        } else {
            path.parse::<u32>()
                .map_err(|_| format!("the database {path:?} is not a number"))?
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = (!user.is_empty())
                    .then(|| percent_decode(user))
                    .transpose()?;
                let password = password.map(percent_decode).transpose()?;
                match (user, password) {
                    // `redis://secret@host` is the password alone, as redis-cli reads it.
                    (Some(u), None) => (None, Some(u)),
                    other => other,
                }
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| "an IPv6 host needs its closing ]".to_string())?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("the URL names no host".to_string());
        }
        let port = match port {
            None => 6379,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("the port {p:?} is not 1 to 65535"))?,
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 0));
        assert_eq!((u.user, u.password), (None, None));
        let u = RedisUrl::parse("redis://app:p%40ss@redis.internal/3").unwrap();
        assert_eq!(u.host, "redis.internal");
        assert_eq!(u.port, 6379);
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.db, 3);
        let u = RedisUrl::parse("redis://:secret@[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!((u.user, u.password.as_deref()), (None, Some("secret")));
        let u = RedisUrl::parse("redis://secret@h").unwrap();
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert!(!format!("{u:?}").contains("secret"), "Debug hides it");
    }

    #[test]
    fn bad_urls_say_why() {
        for bad in [
            "http://x",
            "rediss://x",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/x",
            "redis://h?db=1",
            "redis://[::1",
            "redis://u:%zz@h",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(RedisUrl::parse("rediss://x").unwrap_err().contains("TLS"));
    }
}
