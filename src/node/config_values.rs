//! The types of a node's configuration values, each carrying its unit and bounds or its
//! grammar: how a flag's text (`FromStr`) and a TOML value (`Deserialize`) become one,
//! refused with words that say what was wrong. The keys that use them are in `config`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::proto::QuicUrl;
use crate::transport::Fingerprint;

/// Whole seconds, within `LO..=HI`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secs<const LO: u64, const HI: u64>(u64);
/// Whole milliseconds, within `LO..=HI`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Millis<const LO: u64, const HI: u64>(u64);
/// A count, within `LO..=HI`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Count<const LO: u64, const HI: u64>(u64);
/// Mebibytes, within `LO..=HI`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mib<const LO: u64, const HI: u64>(u64);

macro_rules! bounded {
    ($t:ident, $unit:literal) => {
        impl<const LO: u64, const HI: u64> $t<LO, HI> {
            /// The value as given in the key's unit (code and tests may set any).
            pub const fn new(v: u64) -> Self {
                $t(v)
            }

            pub fn value(self) -> u64 {
                self.0
            }

            fn checked(v: u64) -> Result<Self, String> {
                if (LO..=HI).contains(&v) {
                    Ok($t(v))
                } else {
                    Err(format!("{v} is outside {LO}..={HI}{}", $unit))
                }
            }
        }

        impl<const LO: u64, const HI: u64> FromStr for $t<LO, HI> {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let v: u64 = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not a whole number"))?;
                Self::checked(v)
            }
        }

        impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for $t<LO, HI> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = d.deserialize_i64(WholeNumber)?;
                let v = u64::try_from(v)
                    .map_err(|_| serde::de::Error::custom(format!("{v} is negative")))?;
                Self::checked(v).map_err(serde::de::Error::custom)
            }
        }

        impl<const LO: u64, const HI: u64> fmt::Debug for $t<LO, HI> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", self.0, $unit)
            }
        }

        impl<const LO: u64, const HI: u64> fmt::Display for $t<LO, HI> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

/// A TOML integer, or the words for what else was given ("expected a whole number").
struct WholeNumber;

impl<'de> serde::de::Visitor<'de> for WholeNumber {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }
}

bounded!(Secs, " s");
bounded!(Millis, " ms");
bounded!(Count, "");
bounded!(Mib, " MiB");

impl<const LO: u64, const HI: u64> Secs<LO, HI> {
    pub fn get(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl<const LO: u64, const HI: u64> Millis<LO, HI> {
    pub fn get(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl<const LO: u64, const HI: u64> Count<LO, HI> {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl<const LO: u64, const HI: u64> Mib<LO, HI> {
    /// In bytes.
    pub fn bytes(self) -> u64 {
        self.0 << 20
    }
}

/// Parses from a TOML string with `FromStr`, naming what was wrong.
macro_rules! from_toml_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// How a relay picks a stream's parent (see `parent-choice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentChoice {
    Auto,
    Ordered,
    Hash,
}

impl FromStr for ParentChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ParentChoice::Auto),
            "ordered" => Ok(ParentChoice::Ordered),
            "hash" => Ok(ParentChoice::Hash),
            _ => Err(format!("{s:?} is not auto, ordered or hash")),
        }
    }
}
from_toml_str!(ParentChoice);

/// On, off, or decided by the node (`auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Auto,
    On,
    Off,
}

impl FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Switch::Auto),
            "on" | "true" => Ok(Switch::On),
            "off" | "false" => Ok(Switch::Off),
            _ => Err(format!("{s:?} is not auto, on or off")),
        }
    }
}
from_toml_str!(Switch);

/// A node's name: 1 to 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub String);

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > crate::proto::MAX_NAME {
            return Err("a name is 1 to 128 bytes".into());
        }
        Ok(Name(s.to_string()))
    }
}
from_toml_str!(Name);

/// A secret (a token, a password): never empty, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty".into());
        }
        Ok(Secret(s.to_string()))
    }
}
from_toml_str!(Secret);

from_toml_str!(Fingerprint);

/// A stream name announced ahead, or a prefix of names ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce(pub String);

impl FromStr for Announce {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.strip_suffix('/').unwrap_or(s);
        crate::proto::check_path(name).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Announce(s.to_string()))
    }
}
from_toml_str!(Announce);

impl<'de> Deserialize<'de> for QuicUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        QuicUrl::parse(&s).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}
