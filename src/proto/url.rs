//! `quic://HOST:PORT[/STREAM][?weight=N]`: how nodes and streams are named in commands and
//! configs. A parent's `weight` (1 by default) says how many of a tier's streams it takes,
//! relative to its siblings, when a relay spreads its streams over its parents.

use std::fmt;

use super::check_path;

/// A `quic://` URL that cannot be taken, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad URL {url:?}: {what}")]
pub struct UrlError {
    pub url: String,
    pub what: &'static str,
}

fn url_error(url: &str, what: &'static str) -> UrlError {
    UrlError {
        url: url.to_string(),
        what,
    }
}

type Result<T> = std::result::Result<T, UrlError>;

/// `quic://HOST:PORT[/STREAM]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// How many streams this node takes, relative to its siblings (1 unless given).
    pub weight: u32,
}

impl QuicUrl {
    pub fn parse(s: &str) -> Result<QuicUrl> {
        let rest = s
            .strip_prefix("quic://")
            .ok_or_else(|| url_error(s, "must start with quic://"))?;
        let (rest, weight) = match rest.split_once('?') {
            None => (rest, 1),
            Some((rest, query)) => {
                let w = query
                    .strip_prefix("weight=")
                    .and_then(|w| w.parse::<u32>().ok())
                    .filter(|w| (1..=1000).contains(w))
                    .ok_or_else(|| url_error(s, "the only query is ?weight=N, N from 1 to 1000"))?;
                (rest, w)
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h
                .split_once("]:")
                .ok_or_else(|| url_error(s, "IPv6 host needs [ADDR]:PORT"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| url_error(s, "missing :PORT"))?
        };
        if host.is_empty() {
            return Err(url_error(s, "missing host"));
        }
        let port = port.parse::<u16>().map_err(|_| url_error(s, "bad port"))?;
        if !path.is_empty() {
            check_path(path).map_err(|_| url_error(s, "bad stream path"))?;
        }
        Ok(QuicUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
            weight,
        })
    }

    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn stream(&self) -> Result<&str> {
        if self.path.is_empty() {
            return Err(url_error(
                &format!("quic://{}", self.authority()),
                "no stream path in URL",
            ));
        }
        Ok(&self.path)
    }
}

impl std::str::FromStr for QuicUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<QuicUrl> {
        QuicUrl::parse(s)
    }
}

impl fmt::Display for QuicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quic://{}/{}", self.authority(), self.path)?;
        if self.weight != 1 {
            write!(f, "?weight={}", self.weight)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights() {
        assert_eq!(QuicUrl::parse("quic://h:1").unwrap().weight, 1);
        let u = QuicUrl::parse("quic://h:1?weight=3").unwrap();
        assert_eq!((u.port, u.weight, u.path.as_str()), (1, 3, ""));
        assert_eq!(u.to_string(), "quic://h:1/?weight=3");
        assert!(QuicUrl::parse("quic://h:1?weight=0").is_err());
        assert!(QuicUrl::parse("quic://h:1?w=2").is_err());
    }

    #[test]
    fn urls() {
        let u = QuicUrl::parse("quic://127.0.0.1:4433/spaces/town-hall").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 4433, "spaces/town-hall")
        );
        let u = QuicUrl::parse("quic://[::1]:9/x").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority(), "[::1]:9");
        assert_eq!(QuicUrl::parse("quic://h:1").unwrap().path, "");
        assert!(QuicUrl::parse("http://h:1/x").is_err());
        assert!(QuicUrl::parse("quic://h/x").is_err());
        assert!(QuicUrl::parse("quic://h:99999/x").is_err());
        assert!(QuicUrl::parse("quic://h:1/../etc").is_err());
    }
}
