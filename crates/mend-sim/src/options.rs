//! How a simulator misbehaves: latency, a rate limit, and reproducible injected faults.
//!
//! Key types: [`SimOptions`] is given to each simulator; [`Fault`] is what
//! [`SimOptions::fault_for`] decides for the n-th admitted request.

use std::time::Duration;

use crate::SimError;

/// Misbehaviour applied to every request a simulator receives (except `/stats`).
///
/// In order: a request over the rate limit is answered `429` with `Retry-After: 1`; an
/// admitted request waits `latency`; then it may be answered `503` (share `fail_share`), or
/// be processed and have its answer held back for `hang` (share `timeout_share`), as a
/// server does whose response never reaches a client that gave up. Which admitted request
/// fails is decided by [`fault_for`](Self::fault_for) from `seed` and the request's
/// admission number, so a client sending the same requests one at a time sees the same
/// faults on every run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// Added to every admitted request before it is processed.
    pub latency: Duration,
    /// Requests per second; a bucket of this many tokens refills continuously, so a burst
    /// of up to one second's worth passes at once. `None` means no limit.
    pub rate_limit: Option<u32>,
    /// Share (0.0 to 1.0) of admitted requests answered `503` without being processed.
    pub fail_share: f64,
    /// Share (0.0 to 1.0) of admitted requests processed and then held for `hang` before
    /// the answer is sent. The write a held request carries is applied before the hold.
    pub timeout_share: f64,
    /// How long a held request hangs; 30 s by default, cut short when the simulator stops.
    pub hang: Duration,
    /// Seed of the fault injection.
    pub seed: u64,
}

impl Default for SimOptions {
    /// A well-behaved server: no latency, no limit, no faults, hangs of 30 s if enabled.
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            rate_limit: None,
            fail_share: 0.0,
            timeout_share: 0.0,
            hang: Duration::from_secs(30),
            seed: 0,
        }
    }
}

/// What happens to an admitted request, as decided by [`SimOptions::fault_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Processed and answered normally.
    None,
    /// Answered `503 Service Unavailable` without being processed.
    Unavailable,
    /// Processed, then answered only after [`SimOptions::hang`].
    Hang,
}

impl SimOptions {
    /// Checks that the shares are shares and a rate limit is at least 1 per second.
    /// `which` names the simulator in the error (`"source"`, `"target"`).
    pub fn validate(&self, which: &'static str) -> Result<(), SimError> {
        let invalid = |reason: String| Err(SimError::InvalidOptions { which, reason });
        for (name, share) in [
            ("fail_share", self.fail_share),
            ("timeout_share", self.timeout_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return invalid(format!(
                    "{name} is {share}, expected a share between 0.0 and 1.0"
                ));
            }
        }
        if self.fail_share + self.timeout_share > 1.0 {
            return invalid(format!(
                "fail_share + timeout_share is {}, expected at most 1.0",
                self.fail_share + self.timeout_share
            ));
        }
        if self.rate_limit == Some(0) {
            return invalid("rate_limit is 0/s; use None for no limit".to_owned());
        }
        Ok(())
    }

    /// The fault for the admitted request number `n` (counted from 0, requests over the
    /// rate limit and `/stats` excluded): a pure function of `seed` and `n`.
    pub fn fault_for(&self, n: u64) -> Fault {
        let draw = unit(mix(self.seed ^ mix(n)));
        if draw < self.fail_share {
            Fault::Unavailable
        } else if draw < self.fail_share + self.timeout_share {
            Fault::Hang
        } else {
            Fault::None
        }
    }
}

/// splitmix64's finaliser: a well-spread 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a hash to `[0, 1)` using its top 53 bits.
fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_reproducible_and_near_their_share() {
        let options = SimOptions {
            fail_share: 0.2,
            timeout_share: 0.1,
            seed: 11,
            ..SimOptions::default()
        };
        let run = |o: &SimOptions| (0..10_000).map(|n| o.fault_for(n)).collect::<Vec<_>>();
        let first = run(&options);
        assert_eq!(first, run(&options));
        assert_ne!(
            first,
            run(&SimOptions {
                seed: 12,
                ..options.clone()
            })
        );
        let count = |f: Fault| first.iter().filter(|x| **x == f).count();
        assert!((1_800..=2_200).contains(&count(Fault::Unavailable)));
        assert!((800..=1_200).contains(&count(Fault::Hang)));
        assert!(
            (0..1000).all(|n| SimOptions::default().fault_for(n) == Fault::None),
            "no faults by default"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SimOptions {
            fail_share: -0.1,
            ..SimOptions::default()
        };
        let err = bad.validate("target").expect_err("negative share");
        assert!(err.to_string().contains("target"));
        assert!(err.to_string().contains("fail_share is -0.1"));
        let over = SimOptions {
            fail_share: 0.6,
            timeout_share: 0.6,
            ..SimOptions::default()
        };
        assert!(over.validate("source").is_err());
        let zero = SimOptions {
            rate_limit: Some(0),
            ..SimOptions::default()
        };
        assert!(zero.validate("target").is_err());
        assert!(SimOptions::default().validate("target").is_ok());
    }
}
