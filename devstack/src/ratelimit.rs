//! The Ingress's rate limits, enforced the way ingress-nginx enforces them, so a limit
//! that would refuse users in the cluster refuses them locally too. ingress-nginx turns
//! `limit-rps` into nginx's `limit_req` per client address with
//! `burst = limit-rps × limit-burst-multiplier` and `nodelay`, and `limit-connections`
//! into `limit_conn` per client address. nginx's `limit_req` is a leaky bucket: each
//! request adds one to the address's excess, which drains at `limit-rps` per second; a
//! request that would take the excess over the burst is refused and changes nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yaml_rust2::Yaml;

const RPS: &str = "nginx.ingress.kubernetes.io/limit-rps";
const BURST_MULTIPLIER: &str = "nginx.ingress.kubernetes.io/limit-burst-multiplier";
const CONNECTIONS: &str = "nginx.ingress.kubernetes.io/limit-connections";

/// Addresses idle this long have drained completely and are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second per client address; `None`: no request limit.
    pub rps: Option<f64>,
    /// How many requests beyond the steady rate may arrive at once.
    pub burst: f64,
    /// Requests in progress at once per client address; `None`: no limit.
    pub connections: Option<usize>,
}

impl Limits {
    /// What a gateway without rate limits applies: the Gateway API has no standard
    /// field for them.
    pub const NONE: Self = Self {
        rps: None,
        burst: 0.0,
        connections: None,
    };

    /// From an Ingress's `metadata.annotations`, with ingress-nginx's defaults (a burst
    /// multiplier of 5). Values ingress-nginx would not accept are errors here.
    pub fn from_annotations(annotations: &Yaml) -> Result<Self, String> {
        let number = |key: &str| -> Result<Option<u32>, String> {
            match &annotations[key] {
                Yaml::BadValue => Ok(None),
                Yaml::String(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("{key}: {text:?} is not a positive whole number")),
                other => Err(format!(
                    "{key}: annotations are strings, write \"{}\"",
                    other.as_i64().map_or("…".into(), |n| n.to_string())
                )),
            }
        };
        let rps = number(RPS)?;
        let multiplier = number(BURST_MULTIPLIER)?.unwrap_or(5);
        let connections = number(CONNECTIONS)?;
        Ok(Self {
            rps: rps.map(f64::from),
            burst: rps.map_or(0.0, |rps| f64::from(rps * multiplier)),
            connections: connections.map(|n| n as usize),
        })
    }
}

#[derive(Debug)]
struct Address {
    excess: f64,
    seen: Instant,
    in_progress: usize,
}

/// Why a request is refused, and when the client may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyRequests { retry_after: Duration },
    TooManyConnections,
}

impl Refusal {
    /// Whole seconds for `Retry-After`, at least one.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            Self::TooManyRequests { retry_after } => {
                retry_after.as_secs_f64().ceil().max(1.0) as u64
            }
            Self::TooManyConnections => 1,
        }
    }
}

pub struct Limiter {
    limits: Limits,
    addresses: Arc<Mutex<HashMap<IpAddr, Address>>>,
}

/// A request in progress; dropping it (when its response has been sent) frees its slot.
pub struct InProgress {
    address: IpAddr,
    addresses: Arc<Mutex<HashMap<IpAddr, Address>>>,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if let Ok(mut addresses) = self.addresses.lock() {
            if let Some(state) = addresses.get_mut(&self.address) {
                state.in_progress = state.in_progress.saturating_sub(1);
            }
        }
    }
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            addresses: Arc::default(),
        }
    }

    /// Admits a request from `address` arriving at `now`, or says why not.
    pub fn admit(&self, address: IpAddr, now: Instant) -> Result<InProgress, Refusal> {
        let Ok(mut addresses) = self.addresses.lock() else {
            // A panic elsewhere poisoned the table: fail open, as a gateway without
            // limits would, rather than refuse every user.
            return Ok(self.in_progress(address));
        };
        if addresses.len() > 10_000 {
            addresses.retain(|_, a| a.in_progress > 0 || now.duration_since(a.seen) < FORGET_AFTER);
        }
        let state = addresses.entry(address).or_insert(Address {
            excess: -1.0,
            seen: now,
            in_progress: 0,
        });
        if let Some(max) = self.limits.connections {
            if state.in_progress >= max {
                return Err(Refusal::TooManyConnections);
            }
        }
        if let Some(rps) = self.limits.rps {
            let drained = rps * now.duration_since(state.seen).as_secs_f64();
            let excess = (state.excess - drained).max(-1.0) + 1.0;
            if excess > self.limits.burst {
                let retry_after = Duration::from_secs_f64((excess - self.limits.burst) / rps);
                return Err(Refusal::TooManyRequests { retry_after });
            }
            state.excess = excess;
            state.seen = now;
        }
        state.in_progress += 1;
        Ok(self.in_progress(address))
    }

    fn in_progress(&self, address: IpAddr) -> InProgress {
        InProgress {
            address,
            addresses: self.addresses.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use yaml_rust2::YamlLoader;

    fn limits(yaml: &str) -> Result<Limits, String> {
        Limits::from_annotations(&YamlLoader::load_from_str(yaml).unwrap()[0])
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn annotations_are_read_as_ingress_nginx_reads_them() {
        let read = limits(&format!(
            "{RPS}: \"10\"\n{BURST_MULTIPLIER}: \"3\"\n{CONNECTIONS}: \"4\""
        ))
        .unwrap();
        assert_eq!(
            read,
            Limits {
                rps: Some(10.0),
                burst: 30.0,
                connections: Some(4)
            }
        );
        assert_eq!(
            limits(&format!("{RPS}: \"10\"")).unwrap().burst,
            50.0,
            "the default multiplier is 5"
        );
        assert_eq!(
            limits("{}").unwrap(),
            Limits {
                rps: None,
                burst: 0.0,
                connections: None
            }
        );
        assert!(limits(&format!("{RPS}: 10"))
            .unwrap_err()
            .contains("strings"));
        assert!(limits(&format!("{RPS}: \"ten\"")).is_err());
        assert!(limits(&format!("{CONNECTIONS}: \"0\"")).is_err());
    }

    #[test]
    fn a_burst_passes_whole_then_the_next_request_waits_for_the_bucket_to_drain() {
        let limiter = Limiter::new(Limits {
            rps: Some(10.0),
            burst: 5.0,
            connections: None,
        });
        let start = Instant::now();
        // nginx lets burst + 1 through at once: the first request starts an empty bucket.
        for _ in 0..6 {
            drop(limiter.admit(HOME, start).unwrap());
        }
        let refused = limiter.admit(HOME, start).err().unwrap();
        assert_eq!(
            refused,
            Refusal::TooManyRequests {
                retry_after: Duration::from_millis(100)
            }
        );
        assert_eq!(refused.retry_after_seconds(), 1);
        assert!(
            limiter.admit(OTHER, start).is_ok(),
            "limits are per client address"
        );
        // A refused request changed nothing: after 1/rps one more passes, and only one.
        let later = start + Duration::from_millis(100);
        assert!(limiter.admit(HOME, later).is_ok());
        assert!(limiter.admit(HOME, later).is_err());
    }

    #[test]
    fn requests_at_the_steady_rate_are_never_refused() {
        let limiter = Limiter::new(Limits {
            rps: Some(10.0),
            burst: 0.0,
            connections: None,
        });
        let start = Instant::now();
        for n in 0..1000 {
            let at = start + Duration::from_millis(100 * n);
            assert!(limiter.admit(HOME, at).is_ok(), "request {n} refused");
        }
    }

    #[test]
    fn requests_in_progress_are_limited_until_they_finish() {
        let limiter = Limiter::new(Limits {
            rps: None,
            burst: 0.0,
            connections: Some(2),
        });
        let now = Instant::now();
        let first = limiter.admit(HOME, now).unwrap();
        let _second = limiter.admit(HOME, now).unwrap();
        assert_eq!(
            limiter.admit(HOME, now).err(),
            Some(Refusal::TooManyConnections)
        );
        drop(first);
        assert!(limiter.admit(HOME, now).is_ok());
    }
}
