#!/usr/bin/env bash
# Prints a command that runs Python 3.12, or explains what is missing and fails.
# jax 0.11 needs Python >= 3.12; the system python3 here is 3.11 and cannot install it.
set -u
if python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
  command -v python3.12
  exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V -r); do
    candidate="$(pyenv root)/versions/$version/bin/python3.12"
    if [ -x "$candidate" ]; then
      echo "$candidate"
      exit 0
    fi
  done
fi
echo "error: python3.12 was not found. minference-jax pins jax==0.11.2, which needs Python 3.12;" >&2
echo "       the system python3 (3.11) cannot install it. Install Python 3.12 (e.g. 'pyenv install 3.12')" >&2
echo "       or put python3.12 on PATH, then run make again." >&2
exit 1
