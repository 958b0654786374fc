//! How a router keeps secrets: stretched with argon2id, a slow,
//! memory-hard hash, so that a stolen state (a checkpoint, a backup's
//! memory) costs an attacker real work per guess.
//!
//! Stretching takes tens of milliseconds, far too long for the event loop,
//! so the router never does it itself: it asks its driver with
//! [`RouterOutput::HashSecret`](super::RouterOutput::HashSecret) and carries
//! on; the driver runs [`stretch`] (on a blocking thread in production,
//! inline in the simulator) and hands the result back with
//! [`RouterInput::SecretHashed`](super::RouterInput::SecretHashed).

use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};

use crate::ids::Secret;

/// argon2id's cost parameters. Each registration stores the parameters its
/// hash was made with, so every replica verifies it the same way, and a
/// router configured with other parameters still checks old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The production default: OWASP's recommended argon2id setting
    /// (19 MiB, 2 passes, 1 lane).
    pub const DEFAULT: Self = Self {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };

    /// The cheapest setting argon2 allows, for simulations and tests that
    /// register thousands of peers. Never for real secrets.
    pub const CHEAPEST: Self = Self { m_kib: 8, t: 1, p: 1 };

    /// The most memory a setting may ask for: 1 GiB. A record from a peer
    /// router is trusted, but a bound keeps one corrupt record from taking
    /// every byte the machine has.
    pub const MAX_M_KIB: u32 = 1024 * 1024;

    /// Whether argon2 accepts these parameters and they are within
    /// [`KdfParams::MAX_M_KIB`], at most 10 passes and 16 lanes.
    pub fn is_valid(&self) -> bool {
        self.m_kib <= Self::MAX_M_KIB
            && (1..=10).contains(&self.t)
            && (1..=16).contains(&self.p)
            && Params::new(self.m_kib, self.t, self.p, Some(32)).is_ok()
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A stretched secret.
pub type SecretHash = [u8; 32];

/// A secret to stretch, as the router asks its driver for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashJob {
    /// Numbers the job; the answer names it.
    pub job: u64,
    /// The parameters.
    pub params: KdfParams,
    /// The salt.
    pub salt: [u8; 16],
    /// The secret.
    pub secret: Secret,
}

impl HashJob {
    /// Runs the job: slow, by design. Call it off the event loop.
    pub fn run(&self) -> SecretHash {
        self.run_in(&mut HashMemory::default())
    }

    /// Runs the job in `memory`, which keeps its size for the next job: a
    /// long-lived worker reuses one buffer instead of asking the allocator
    /// for the parameters' whole memory every time (which allocators tend
    /// to keep, per thread, long after).
    pub fn run_in(&self, memory: &mut HashMemory) -> SecretHash {
        stretch_in(self.params, &self.salt, &self.secret, memory)
    }
}

/// Working memory for [`HashJob::run_in`]: as large as the largest job run
/// in it so far.
#[derive(Debug, Default)]
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    /// Its size, in bytes.
    pub fn len_bytes(&self) -> usize {
        self.0.len() * Block::SIZE
    }
}

/// argon2id of `secret` with `salt` and `params`. Parameters that are not
/// [valid](KdfParams::is_valid) give all zeros; the router never compares
/// a hash with a record whose parameters are not valid.
pub fn stretch(params: KdfParams, salt: &[u8; 16], secret: &Secret) -> SecretHash {
    stretch_in(params, salt, secret, &mut HashMemory::default())
}

fn stretch_in(params: KdfParams, salt: &[u8; 16], secret: &Secret, memory: &mut HashMemory) -> SecretHash {
    let mut out = [0u8; 32];
    if !params.is_valid() {
        return out;
    }
    let Ok(argon_params) = Params::new(params.m_kib, params.t, params.p, Some(32)) else {
        return out;
    };
    let blocks = argon_params.block_count();
    if memory.0.len() < blocks {
        memory.0.resize(blocks, Block::new());
    }
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    if argon
        .hash_password_into_with_memory(secret.as_bytes(), salt, &mut out, &mut memory.0[..blocks])
        .is_err()
    {
        return [0u8; 32];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s).unwrap()
    }

    #[test]
    fn the_same_inputs_give_the_same_hash_and_any_change_another() {
        let p = KdfParams::CHEAPEST;
        let a = stretch(p, &[1; 16], &secret("hunter2"));
        assert_eq!(a, stretch(p, &[1; 16], &secret("hunter2")));
        assert_ne!(a, stretch(p, &[2; 16], &secret("hunter2")));
        assert_ne!(a, stretch(p, &[1; 16], &secret("hunter3")));
        assert_ne!(a, stretch(KdfParams { t: 2, ..p }, &[1; 16], &secret("hunter2")));
        assert_ne!(a, [0; 32]);
    }

    #[test]
    fn reused_memory_gives_the_same_hashes_and_keeps_its_size() {
        let mut memory = HashMemory::default();
        let job = |params, s: &str| HashJob {
            job: 1,
            params,
            salt: [3; 16],
            secret: secret(s),
        };
        let big = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        for (params, s) in [(big, "a"), (KdfParams::CHEAPEST, "b"), (big, "c")] {
            let job = job(params, s);
            assert_eq!(job.run_in(&mut memory), job.run(), "{params:?} {s}");
        }
        assert_eq!(memory.len_bytes(), 64 * 1024);
    }

    #[test]
    fn parameters_outside_the_bounds_are_invalid_and_match_nothing() {
        assert!(KdfParams::DEFAULT.is_valid());
        assert!(KdfParams::CHEAPEST.is_valid());
        for bad in [
            KdfParams {
                m_kib: KdfParams::MAX_M_KIB + 1,
                t: 1,
                p: 1,
            },
            KdfParams { m_kib: 8, t: 0, p: 1 },
            KdfParams {
                m_kib: 8,
                t: 11,
                p: 1,
            },
            KdfParams { m_kib: 8, t: 1, p: 0 },
            KdfParams {
                m_kib: 8,
                t: 1,
                p: 17,
            },
            // argon2 needs 8 KiB per lane.
            KdfParams { m_kib: 8, t: 1, p: 2 },
        ] {
            assert!(!bad.is_valid(), "{bad:?}");
            assert_eq!(stretch(bad, &[1; 16], &secret("s")), [0; 32]);
        }
    }
}
