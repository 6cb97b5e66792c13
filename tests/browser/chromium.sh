#!/bin/sh
# Chromium for wasm-bindgen-test-runner: the runner asks chromedriver for plain `--headless`,
# which gives no WebGPU adapter here; the new headless mode has one (SwiftShader).
for a; do
  shift
  case "$a" in
    --headless) set -- "$@" --headless=new ;;
    *) set -- "$@" "$a" ;;
  esac
done
[ -n "$HONE_CHROMIUM_LOG" ] && echo "$@" >> "$HONE_CHROMIUM_LOG"
exec "${HONE_CHROMIUM:-/usr/bin/chromium}" "$@"
