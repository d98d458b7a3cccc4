//! The kernel modules embedded at build time: `OUT_DIR/kernels.rs` lists each `kernels/*.cu` by
//! file stem with its fatbin bytes. Empty when the build found no nvcc (no `has_kernels` cfg).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Fatbin bytes of `kernels/<stem>.cu`, if it was built into this binary.
pub fn module(stem: &str) -> Option<&'static [u8]> {
    MODULES.iter().find(|(s, _)| *s == stem).map(|(_, bytes)| *bytes)
}

/// Whether this build embeds kernels at all (nvcc was found by build.rs).
pub fn built() -> bool {
    cfg!(has_kernels) && !MODULES.is_empty()
}
