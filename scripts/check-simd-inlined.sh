#!/usr/bin/env bash
# Checks that lorafleet's CPU kernels compiled their vector intrinsics inline.
#
# The kernels are written once over `backend::cpu::simd::Simd` and compiled inside a
# `#[target_feature]` function per level (`simd::dispatch!`). That only works if every layer
# between the kernel and the intrinsic is inlined into that function: a helper the compiler keeps
# as a call (a closure passed to `std::array::from_fn`, say) is compiled without the level's
# features, and each intrinsic in it becomes a call to a function such as
# `core::core_arch::x86::avx512f::_mm512_fmadd_ps` (prefill ran 2.7x slower when that happened).
# So: no function of lorafleet's own may call into `core::core_arch`.
#
# usage: scripts/check-simd-inlined.sh [BINARY]   (default target/release/lorafleet)
set -euo pipefail
BIN="${1:-target/release/lorafleet}"
[[ -x "$BIN" ]] || { echo "error: $BIN not found (cargo build --release)" >&2; exit 2; }
command -v objdump >/dev/null || { echo "error: objdump not found (binutils)" >&2; exit 2; }
bad=$(objdump -d --no-show-raw-insn -C "$BIN" \
  | awk '/^[0-9a-f]+ <.*>:$/ {fn=$0} /call.*<core::core_arch::/ {print fn " -> " $NF}' \
  | grep 'lorafleet' | sort -u || true)
if [[ -n "$bad" ]]; then
  echo "error: lorafleet functions call vector intrinsics instead of inlining them:" >&2
  echo "$bad" | head -n 30 >&2
  exit 1
fi
echo "simd check: no lorafleet function calls into core::core_arch ($BIN)"
