//! What a node says when it refuses a new QUIC client before any handshake: the reason
//! phrase of the CONNECTION_REFUSED it sends, so the client can act on it. Its form:
//!
//! ```text
//! WHY [; retry-after=SECONDS] [; alt=QUIC_URL]...
//! ```
//!
//! `WHY` is one word (`overloaded`, `full`, `draining`); `retry-after` is when the client may
//! come back (it adds its own jitter, so a refused crowd does not return in one instant);
//! each `alt` is another node to try first. The phrase travels in an Initial packet,
//! protected by keys anyone can derive: a client takes it as a hint, bounded (a wait of at
//! most `MAX_RETRY_AFTER`, and only `quic://` URLs, parsed again before use), never as proof.

use std::time::Duration;

use super::{MAX_ALTERNATIVES, MAX_URL};

/// Longest a refusal phrase is (it must fit an Initial packet beside its headers).
pub const MAX_REFUSAL: usize = 900;
/// Longest wait a client takes from a refusal.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A refusal, as said or understood.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refusal {
    pub why: String,
    pub retry_after: Option<Duration>,
    pub alternates: Vec<String>,
}

impl Refusal {
    /// The phrase: as many alternates as fit within `MAX_REFUSAL`.
    pub fn to_phrase(&self) -> String {
        let mut s = self.why.clone();
        if let Some(after) = self.retry_after {
            s.push_str(&format!("; retry-after={}", after.as_secs()));
        }
        for a in self.alternates.iter().take(MAX_ALTERNATIVES) {
            if s.len() + a.len() + 6 > MAX_REFUSAL {
                break;
            }
            s.push_str("; alt=");
            s.push_str(a);
        }
        s
    }

    /// Reads a phrase (from anyone: what is not understood is left out).
    pub fn parse(phrase: &[u8]) -> Refusal {
        let phrase = String::from_utf8_lossy(&phrase[..phrase.len().min(MAX_REFUSAL)]);
        let mut parts = phrase.split(';').map(str::trim);
        let mut r = Refusal {
            why: parts.next().unwrap_or_default().chars().take(32).collect(),
            ..Refusal::default()
        };
        for p in parts {
            if let Some(secs) = p.strip_prefix("retry-after=") {
                if let Ok(secs) = secs.parse::<u64>() {
                    r.retry_after = Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
                }
            } else if let Some(url) = p.strip_prefix("alt=") {
                if r.alternates.len() < MAX_ALTERNATIVES
                    && url.starts_with("quic://")
                    && url.len() <= MAX_URL
                    && !url.contains(char::is_whitespace)
                {
                    r.alternates.push(url.to_string());
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_why_when_and_where_and_reads_back() {
        let r = Refusal {
            why: "overloaded".into(),
            retry_after: Some(Duration::from_secs(5)),
            alternates: vec!["quic://b.example:4433/".into(), "quic://c.example/".into()],
        };
        let p = r.to_phrase();
        assert_eq!(
            p,
            "overloaded; retry-after=5; alt=quic://b.example:4433/; alt=quic://c.example/"
        );
        assert_eq!(Refusal::parse(p.as_bytes()), r);
        // An empty phrase (a node that says nothing, or quinn's default) is no hint at all.
        assert_eq!(Refusal::parse(b""), Refusal::default());
    }

    #[test]
    fn a_hostile_phrase_is_bounded() {
        let r = Refusal::parse(b"x; retry-after=99999999; alt=http://evil/; alt=nonsense; \xff");
        assert_eq!(r.retry_after, Some(MAX_RETRY_AFTER));
        assert!(r.alternates.is_empty());
        let many = (0..50)
            .map(|i| format!("; alt=quic://h{i}/"))
            .collect::<String>();
        let r = Refusal::parse(format!("full{many}").as_bytes());
        assert_eq!(r.alternates.len(), MAX_ALTERNATIVES);
        let long = Refusal {
            why: "draining".into(),
            retry_after: None,
            alternates: (0..8)
                .map(|i| format!("quic://{}{i}/", "h".repeat(200)))
                .collect(),
        };
        assert!(long.to_phrase().len() <= MAX_REFUSAL);
    }
}
