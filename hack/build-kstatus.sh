#!/usr/bin/env bash
# Builds hack/kstatus (the kstatus checker the GitOps-health tests run) from the Go module proxy,
# once per machine: $GLOWPLUG_CACHE/bin/kstatus-$CLI_UTILS_VERSION/kstatus. Prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${GLOWPLUG_CACHE:-$HOME/.cache/glowplug}
out="$cache/bin/kstatus-$CLI_UTILS_VERSION"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
if [[ ! -f "$out/.complete" ]]; then
  mod=$(mktemp -d)
  trap 'rm -rf "$mod"' EXIT
  printf '[build-kstatus] building kstatus (sigs.k8s.io/cli-utils %s) in %s\n' "$CLI_UTILS_VERSION" "$mod" >&2
  cp "$here/kstatus/main.go" "$mod/"
  (
    cd "$mod"
    go mod init glowplug.dev/kstatus >/dev/null 2>&1
    go mod edit -require "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION"
    go mod tidy >/dev/null
    mkdir -p "$out"
    go build -trimpath -ldflags "-s -w" -o "$out/kstatus" .
  )
  touch "$out/.complete"
fi
echo "$out/kstatus"
