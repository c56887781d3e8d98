//! Newtypes for identifiers and log positions, so a partition id is never passed where a
//! table id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }
    };
}

id_newtype!(
    /// Table id, assigned by the nameserver.
    Tid,
    u32
);
id_newtype!(
    /// Partition id within a table, `0..partitionnum`.
    Pid,
    u32
);
id_newtype!(
    /// Leadership generation of a partition. Raised on every leader change.
    Term,
    u64
);
id_newtype!(
    /// Position in a partition's binlog. Contiguous, the first entry is 1; 0 means "nothing".
    Offset,
    u64
);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

/// `host:port` of a server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint(pub String);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Endpoint {
    /// Accepts `host:port` with a non-empty host and a port in 1..=65535.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint `{text}` is not host:port"))?;
        if host.is_empty() {
            return Err(format!("endpoint `{text}` has no host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Endpoint(text.to_string())),
            _ => Err(format!("endpoint `{text}` has no valid port")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parse() {
        assert!(Endpoint::parse("127.0.0.1:9527").is_ok());
        assert!(Endpoint::parse("127.0.0.1").is_err());
        assert!(Endpoint::parse(":9527").is_err());
        assert!(Endpoint::parse("h:0").is_err());
        assert!(Endpoint::parse("h:70000").is_err());
    }
}
