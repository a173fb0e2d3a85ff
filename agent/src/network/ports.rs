//! Published ports: the `-p [HOSTIP:]HOST:CTR[/tcp|udp]` parser (ranges `8000-8002:80-82`
//! allowed) and the conflict rule between two publications. Pure.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{NetworkError, Result};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host port forwarded to one container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Only traffic to this host address is forwarded; `None` means every local address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// Two publications collide when they share protocol and host port and their host
    /// addresses overlap (an unspecified address overlaps every address).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// Parses one `-p` value into its mappings (several for a range).
pub fn parse_port_spec(spec: &str) -> Result<Vec<PortMapping>> {
    let err = |reason: String| NetworkError::port(spec, reason);
    let trimmed = spec.trim();
    if trimmed.is_empty() {
        return Err(err("empty".into()));
    }
    let (addr_part, protocol) = match trimmed.rsplit_once('/') {
        Some((a, p)) => {
            let proto = match p.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "" => return Err(err("protocol after '/' is empty".into())),
                _ => return Err(err(format!("protocol '{p}' is not tcp or udp"))),
            };
            (a, proto)
        }
        None => (trimmed, Protocol::Tcp),
    };
    if addr_part.starts_with('[') {
        return Err(err("IPv6 host addresses are not supported".into()));
    }
    let parts: Vec<&str> = addr_part.split(':').collect();
    let (host_ip, host, ctr) = match parts.as_slice() {
        [ctr] => {
            return Err(err(format!(
                "missing host port: write HOST:{ctr} (publishing on a random host port is not supported)"
            )))
        }
        [host, ctr] => (None, *host, *ctr),
        [ip, host, ctr] => {
            let ip = Ipv4Addr::from_str(ip)
                .map_err(|_| err(format!("host IP '{ip}' is not an IPv4 address")))?;
            (Some(ip), *host, *ctr)
        }
        _ => {
            return Err(err(
                "too many ':' (expected [HOSTIP:]HOST:CTR[/tcp|udp])".into()
            ))
        }
    };
    let (host_lo, host_hi) = parse_range(host, "host port").map_err(err)?;
    let (ctr_lo, ctr_hi) = parse_range(ctr, "container port").map_err(err)?;
    let host_len = host_hi - host_lo;
    let ctr_len = ctr_hi - ctr_lo;
    if host_len != ctr_len {
        return Err(err(format!(
            "host range '{host}' has {} ports but container range '{ctr}' has {}",
            host_len + 1,
            ctr_len + 1
        )));
    }
    Ok((0..=host_len)
        .map(|i| PortMapping {
            host_ip,
            host_port: host_lo + i,
            container_port: ctr_lo + i,
            protocol,
        })
        .collect())
}

/// Parses several `-p` values and rejects two that collide with each other.
pub fn parse_port_specs<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortMapping>> {
    let mut all: Vec<PortMapping> = Vec::new();
    for spec in specs {
        let spec = spec.as_ref();
        for m in parse_port_spec(spec)? {
            if let Some(prev) = all.iter().find(|p| p.conflicts_with(&m)) {
                return Err(NetworkError::port(
                    spec,
                    format!("host port {} is already published by '{prev}'", m.host_port),
                ));
            }
            all.push(m);
        }
    }
    Ok(all)
}

fn parse_range(s: &str, what: &str) -> std::result::Result<(u16, u16), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    match s.split_once('-') {
        Some((lo, hi)) => {
            let lo = parse_port(lo, what)?;
            let hi = parse_port(hi, what)?;
            if hi < lo {
                return Err(format!("{what} range '{s}' ends before it starts"));
            }
            Ok((lo, hi))
        }
        None => {
            let p = parse_port(s, what)?;
            Ok((p, p))
        }
    }
}

fn parse_port(s: &str, what: &str) -> std::result::Result<u16, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{what} '{s}' is not a number"))?;
    if n == 0 || n > 65535 {
        return Err(format!("{what} '{s}' is out of range 1-65535"));
    }
    Ok(n as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> PortMapping {
        let v = parse_port_spec(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v[0]
    }

    fn err(spec: &str) -> String {
        parse_port_spec(spec).unwrap_err().to_string()
    }

    #[test]
    fn parses_host_and_container_port() {
        let m = one("8080:80");
        assert_eq!(m.host_ip, None);
        assert_eq!((m.host_port, m.container_port), (8080, 80));
        assert_eq!(m.protocol, Protocol::Tcp);
    }

    #[test]
    fn parses_host_ip_and_protocol() {
        let m = one("127.0.0.1:5353:53/udp");
        assert_eq!(m.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((m.host_port, m.container_port), (5353, 53));
        assert_eq!(m.protocol, Protocol::Udp);
        assert_eq!(m.to_string(), "127.0.0.1:5353:53/udp");
        assert_eq!(one("1:2/TCP").protocol, Protocol::Tcp);
    }

    #[test]
    fn parses_ranges() {
        let v = parse_port_spec("8000-8002:80-82").unwrap();
        let pairs: Vec<_> = v.iter().map(|m| (m.host_port, m.container_port)).collect();
        assert_eq!(pairs, vec![(8000, 80), (8001, 81), (8002, 82)]);
    }

    #[test]
    fn errors_name_the_bad_part() {
        assert!(err("80:abc").contains("container port 'abc' is not a number"));
        assert!(err("x:80").contains("host port 'x' is not a number"));
        assert!(err("0:80").contains("host port '0' is out of range"));
        assert!(err("80:70000").contains("container port '70000' is out of range"));
        assert!(err("80:80/sctp").contains("protocol 'sctp' is not tcp or udp"));
        assert!(err("1.2.3:80:80").contains("host IP '1.2.3' is not an IPv4 address"));
        assert!(err("80").contains("missing host port"));
        assert!(err("1:2:3:4").contains("too many ':'"));
        assert!(err("8000-8001:80").contains("has 2 ports but container range '80' has 1"));
        assert!(err("90-80:90-80").contains("ends before it starts"));
        assert!(err("").contains("empty"));
        assert!(err(":80").contains("host port is empty"));
        assert!(err("[::1]:80:80").contains("IPv6"));
        // The spec itself is quoted so the user sees which -p was wrong.
        assert!(err("80:abc").starts_with("invalid port spec '80:abc'"));
    }

    #[test]
    fn conflicts_follow_protocol_port_and_address() {
        let a = one("8080:80");
        assert!(a.conflicts_with(&one("8080:81")));
        assert!(!a.conflicts_with(&one("8080:80/udp")));
        assert!(!a.conflicts_with(&one("8081:80")));
        assert!(a.conflicts_with(&one("127.0.0.1:8080:80")));
        assert!(!one("127.0.0.1:8080:80").conflicts_with(&one("127.0.0.2:8080:80")));
    }

    #[test]
    fn several_specs_must_not_collide() {
        assert_eq!(parse_port_specs(&["1:1", "2:2/udp"]).unwrap().len(), 2);
        let e = parse_port_specs(&["8000-8005:80-85", "8003:9"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'8003:9'") && e.contains("host port 8003"),
            "{e}"
        );
    }
}
