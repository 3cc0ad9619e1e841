#!/usr/bin/env bash
# Builds .venv-peers/: the runtimes a user would pick instead of ours (llama.cpp through
# llama-cpp-python, CTranslate2, OpenVINO through optimum-intel), kept out of the default install:
# optimum-intel 2.2 needs optimum 2.3 (the main environment has optimum 2.1 for optimum-onnx 0.1)
# and llama-cpp-python compiles llama.cpp. bench/run.py finds the venv and runs bench/peers.py in it.
#
#   bash bench/setup_peers.sh     # from anywhere; ~10-15 min on 2 cores, most of it compiling llama.cpp
#
# The venv sees the system site-packages, so torch 2.13 CPU is reused, never reinstalled
# (bench/peers-constraints.txt pins torch and transformers to the main environment's versions).
# llama.cpp is compiled for the host CPU (GGML_NATIVE=ON) but without AMX: on the build VM (Xeon
# with AMX, 2026-12-02) a native build's AMX kernel (ggml_backend_amx_mul_mat, `tileloadd`) dies with
# SIGILL in every quantized matmul of a prompt. Build the venv on the machine that benchmarks. For a
# portable AVX2 build instead:
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" bash bench/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-peers}
PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
"$PY" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__' \
  || { echo "setup_peers: $PY needs torch 2.13.0 (CPU) installed first" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
PIP=("$VENV/bin/python" -m pip install -c bench/peers-constraints.txt)
"${PIP[@]}" torch==2.13.0
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF"}
# gcc: an explicit -mno-* wins over what -march=native implies, whatever the order
export CFLAGS=${CFLAGS:-"-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"} CXXFLAGS=${CXXFLAGS:-"-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
"${PIP[@]}" --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
"${PIP[@]}" "ctranslate2==4.8.5" "optimum-intel[openvino,nncf]==2.2.0"
# optimum-intel pulls torchvision from PyPI, whose ops do not load against torch 2.13.0+cpu and
# break transformers' GPT-2 imports in the venv; nothing here needs it
"$VENV/bin/python" -m pip uninstall -y -q torchvision

# llama.cpp's HF -> GGUF converter ships inside the llama-cpp-python sdist, not in the installed
# package: unpack it (with its conversion/ and gguf-py/ beside it) into the venv.
SHARE="$VENV/share/llama.cpp"
if [ ! -f "$SHARE/convert_hf_to_gguf.py" ]; then
  TMP=$(mktemp -d)
  "$VENV/bin/python" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$TMP" -q
  SRC="llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
  tar xzf "$TMP/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$TMP" \
    "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py"
  mkdir -p "$SHARE" && cp -r "$TMP/$SRC/convert_hf_to_gguf.py" "$TMP/$SRC/conversion" "$TMP/$SRC/gguf-py" "$SHARE/"
  rm -rf "$TMP"
fi
"$VENV/bin/python" bench/peers.py --check
