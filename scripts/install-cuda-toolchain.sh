#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc + ptxas + NVVM + headers) from PyPI into a Python venv
# and prints the path of nvcc on the last line of stdout.
#
# The pins match the driver (>= 580) of the GPU machines lorafleet targets. nvidia-nvvm must be
# pinned too: without it pip picks a newer NVVM whose PTX the 13.0 ptxas rejects.
# Do not symlink nvcc elsewhere: it finds its nvcc.profile (and so cicc, ptxas, the headers)
# relative to its own real path.
#
# Usage: scripts/install-cuda-toolchain.sh [VENV_DIR]
#   VENV_DIR defaults to $LORAFLEET_CUDA_VENV, else ~/.cache/lorafleet/cuda-13.0-venv.
# Re-running is cheap: an existing venv with a working nvcc is reused.
set -euo pipefail
venv=${1:-${LORAFLEET_CUDA_VENV:-$HOME/.cache/lorafleet/cuda-13.0-venv}}
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
py=${PYTHON:-python3}

find_nvcc() {
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || return 1
  [[ -x "$site/nvidia/cu13/bin/nvcc" ]] && echo "$site/nvidia/cu13/bin/nvcc"
}

if nvcc=$(find_nvcc) && "$nvcc" --version 2>/dev/null | grep -q 'release 13.0'; then
  echo "install-cuda-toolchain: reusing $venv" >&2
else
  echo "install-cuda-toolchain: installing CUDA 13.0 nvcc into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" >&2
  nvcc=$(find_nvcc) || { echo "install-cuda-toolchain: nvcc not found under $venv after install" >&2; exit 1; }
  "$nvcc" --version >&2
fi
echo "$nvcc"
