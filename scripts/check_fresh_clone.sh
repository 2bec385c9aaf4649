#!/usr/bin/env bash
# A fresh clone with no ../shared beside it: the README's test command must exit 0, skipping (with a reason)
# the tests that need the local TOFU copy, the TOFU authors' eval logs or headless Chromium; with CI=true those
# same tests must fail instead. Usage: bash scripts/check_fresh_clone.sh   (about as long as the test suite)
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
env -u CI bash -c 'bash scripts/setup.sh && .venv/bin/python -m pytest -q'
plain=$?
CI=true .venv/bin/python -m pytest -q -m "needs_tofu or needs_tofu_logs or needs_chromium"
with_ci=$?
echo "README test command in a clone without ../shared: exit $plain (want 0)"
echo "the same tests' prerequisites with CI=true: exit $with_ci (want non-zero)"
[ "$plain" -eq 0 ] && [ "$with_ci" -ne 0 ]
