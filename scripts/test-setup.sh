#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine: the package with its test extras, and
# the real programs some tests run (every scripts/install-*.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
for installer in scripts/install-*.sh; do
  [ -e "$installer" ] || continue
  bash "$installer"
done
