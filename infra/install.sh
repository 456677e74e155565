#!/usr/bin/env bash
# Installs the real servers the tests, benchmarks and demo run against, at the versions pinned in
# infra/versions.env. Idempotent: what is already installed at the pinned version is skipped.
# Each failure prints one line naming the missing piece and the log to read.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/infra/versions.env"
bin="$root/.local/bin"
logs="$root/.local/log"
# Built binaries live in a per-user cache keyed by version, so a fresh clone does not rebuild them.
cache="${VA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voiceagents}/bin"
mkdir -p "$bin" "$logs" "$cache"

fail() { echo "install: $*" >&2; exit 1; }

apt_install() { # package... : installs Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install: Debian packages ${missing[*]}"
  { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"; } \
    >"$logs/apt.log" 2>&1 || fail "could not install Debian packages ${missing[*]} with apt-get (see $logs/apt.log)"
}

go_install() { # name module version binary-name-in-GOBIN
  local name=$1 module=$2 version=$3 built=$4
  local dir="$cache/$name-$version"
  if [ ! -x "$dir/$built" ]; then
    command -v go >/dev/null || fail "Go is not installed; $name $version is built with 'go install'"
    echo "install: $name $version (go install $module@$version, a few minutes the first time)"
    GOBIN="$dir" GOFLAGS=-mod=mod go install "$module@$version" >"$logs/$name.log" 2>&1 \
      || { rm -rf "$dir"; fail "could not install $name $version with 'go install $module@$version' (see $logs/$name.log): is the Go module proxy reachable and the version right?"; }
  fi
  ln -sfn "$dir/$built" "$bin/$name"
}

apt_install "postgresql-$POSTGRES_MAJOR" espeak-ng sox
go_install nats-server github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION" nats-server
go_install livekit-server github.com/livekit/livekit-server/cmd/server "$LIVEKIT_SERVER_VERSION" server
go_install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION" kustomize
if [ "${1:-}" = "--bench" ]; then
  # An HTTP load generator that needs far less CPU than the server it measures on the same cores.
  go_install bombardier github.com/codesenberg/bombardier "$BOMBARDIER_VERSION" bombardier
fi
