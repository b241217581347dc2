#!/usr/bin/env bash
# llama.cpp for GGUF export (python -m gpt.gguf), from the package registry: run it in the
# project's environment, from anywhere:
#
#   scripts/install_llama_cpp.sh
#
# 1. pip installs requirements-gguf.txt: llama-cpp-python, which builds llama.cpp from its source
#    distribution (about 8 minutes on 2 cores the first time; pip caches the built wheel, so a
#    fresh venv later installs it in seconds), and sentencepiece, which the converter imports.
# 2. The installed wheel holds the library, not llama.cpp's converter: the converter comes from
#    the same release's source distribution (pip download), of which only what it runs is kept
#    (convert_hf_to_gguf.py, its conversion/ package, gguf-py/ and the licence) in
#    GPT_LLAMA_CPP (default ~/.cache/gpt-alpha/llama.cpp-VERSION), where gpt/gguf.py looks.
# Idempotent: a second run finds both in place and returns in a few seconds.
set -euo pipefail
version=0.3.36 # the pin in requirements-gguf.txt; gpt/gguf.py's default folder names it too
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${GPT_LLAMA_CPP:-$HOME/.cache/gpt-alpha/llama.cpp-$version}"
sdist_cache="${XDG_CACHE_HOME:-$HOME/.cache}/gpt-alpha/sdist"

python -m pip install --quiet -r "$root/requirements-gguf.txt"

if [ -f "$dest/convert_hf_to_gguf.py" ] && [ -d "$dest/conversion" ] && [ -d "$dest/gguf-py" ]; then
    echo "llama.cpp $version's converter: $dest (already there)"
    exit 0
fi
mkdir -p "$sdist_cache" "$(dirname "$dest")"
python -m pip download --quiet --no-binary :all: --no-deps --dest "$sdist_cache" \
    "llama-cpp-python==$version"
sdist="$sdist_cache/llama_cpp_python-$version.tar.gz"
inside="llama_cpp_python-$version/vendor/llama.cpp"
# Extract beside the destination and rename into place: an interrupted run leaves no half folder.
tmp="$(mktemp -d "$dest.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$sdist" -C "$tmp" --strip-components=3 \
    "$inside/convert_hf_to_gguf.py" "$inside/conversion" "$inside/gguf-py" "$inside/LICENSE"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "llama.cpp $version's converter: $dest"
