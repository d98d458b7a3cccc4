//! Which vector instructions the CPU kernels use: AVX-512, AVX2 + FMA (x86-64-v3), or the
//! portable path (plain Rust over 8-lane arrays, which the compiler vectorises for the baseline
//! target: SSE2 on x86-64, NEON on aarch64). Chosen once per process: the best level the CPU has,
//! or the one `LORAFLEET_CPU_ISA=avx512|avx2|portable` names (lower levels let an AVX-512 machine
//! run and measure what an AVX2-only CPU runs). A level above what the CPU has is an error from
//! [`selected`] (the front-ends report it and exit); the kernels themselves never run above it.
//!
//! A [`Level`] can only be obtained for a level the CPU supports ([`current`], [`available`],
//! [`Level::portable`]), so `simd::dispatch!` may rely on it to run target-feature code.

use std::fmt;
use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that forces a level.
pub const ENV: &str = "LORAFLEET_CPU_ISA";

/// A kernel level, named as `LORAFLEET_CPU_ISA` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Scalar code the compiler may auto-vectorise for the baseline target.
    Portable,
    /// AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// AVX-512 F/BW/VL, 16 f32 lanes.
    Avx512,
}

impl Isa {
    /// Every level, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The level's name as `LORAFLEET_CPU_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// What the level runs, for `--version` and the `device:` line.
    pub fn describe(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512F",
            Isa::Avx2 => "AVX2 + FMA",
            Isa::Portable => "portable (compiler-vectorised)",
        }
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Parses a `LORAFLEET_CPU_ISA` value.
    pub fn parse(s: &str) -> std::result::Result<Isa, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" | "avx512f" => Ok(Isa::Avx512),
            "avx2" | "x86-64-v3" => Ok(Isa::Avx2),
            "portable" | "scalar" | "generic" => Ok(Isa::Portable),
            other => Err(format!("{other:?}: expected avx512, avx2 or portable")),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A level this CPU supports (the only way to construct one is through the functions of this
/// module, which check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level(Isa);

impl Level {
    /// The instruction-set level this token proves the CPU has.
    pub fn isa(self) -> Isa {
        self.0
    }
    /// The portable level, which every CPU has.
    pub fn portable() -> Level {
        Level(Isa::Portable)
    }
    /// `isa` if this CPU supports it.
    pub fn of(isa: Isa) -> Option<Level> {
        isa.supported().then_some(Level(isa))
    }
}

/// The best level this CPU has.
pub fn best() -> Level {
    Isa::ALL.into_iter().find_map(Level::of).unwrap_or(Level(Isa::Portable))
}

/// Every level this CPU supports, best first (what the parity tests run).
pub fn available() -> Vec<Level> {
    Isa::ALL.into_iter().filter_map(Level::of).collect()
}

/// The level `LORAFLEET_CPU_ISA` asks for (unset or empty: the best), or why it cannot be used.
fn from_env() -> std::result::Result<Level, String> {
    let Ok(v) = std::env::var(ENV) else { return Ok(best()) };
    if v.trim().is_empty() {
        return Ok(best());
    }
    let isa = Isa::parse(&v).map_err(|e| format!("{ENV}={e}"))?;
    Level::of(isa).ok_or_else(|| {
        let have: Vec<&str> = available().iter().map(|l| l.isa().name()).collect();
        format!("{ENV}={}: this CPU does not support {} (it supports: {})", isa.name(), isa.describe(), have.join(", "))
    })
}

static SELECTED: OnceLock<std::result::Result<Level, String>> = OnceLock::new();

/// The level the process runs, or the error a bad `LORAFLEET_CPU_ISA` gives. The front-ends
/// (`lorafleet`, `lorafleet-train`, the server) call this when they open the CPU backend and
/// stop with the error.
pub fn selected() -> Result<Level> {
    SELECTED.get_or_init(from_env).clone().map_err(Error::InvalidArgument)
}

/// The level the kernels run: [`selected`], or the best the CPU has where the variable is bad
/// (a library caller that never asked [`selected`] still never runs above the CPU).
#[inline]
pub fn current() -> Level {
    match SELECTED.get_or_init(from_env) {
        Ok(l) => *l,
        Err(_) => best(),
    }
}

/// One line for `--version` and logs: the level in use, and what the CPU has.
pub fn summary() -> String {
    let have: Vec<&str> = available().iter().map(|l| l.isa().name()).collect();
    match selected() {
        Ok(l) if l == best() => format!("CPU kernels: {} ({})", l.isa().name(), l.isa().describe()),
        Ok(l) => format!("CPU kernels: {} ({}; forced by {ENV}, the CPU has {})", l.isa().name(), l.isa().describe(), have.join(", ")),
        Err(e) => format!("CPU kernels: {} ({e})", best().isa().name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_levels_are_ordered() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert_eq!(Isa::parse(" AVX2 "), Ok(Isa::Avx2));
        assert!(Isa::parse("sse4").unwrap_err().contains("expected avx512, avx2 or portable"));
        assert!(Isa::Avx512 > Isa::Avx2 && Isa::Avx2 > Isa::Portable);
    }

    #[test]
    fn available_levels_are_supported_and_include_portable() {
        let a = available();
        assert_eq!(a.first(), Some(&best()));
        assert_eq!(a.last(), Some(&Level::portable()));
        for l in &a {
            assert!(l.isa().supported());
        }
        // An unsupported level cannot be made.
        for isa in Isa::ALL {
            assert_eq!(Level::of(isa).is_some(), isa.supported());
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            assert_eq!(best().isa(), Isa::Avx512);
        }
    }
}
