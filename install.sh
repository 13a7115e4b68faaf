#!/usr/bin/env bash
# Installs pim for the current user and boots the built-in demo VM.
#
#   ./install.sh            install, then boot the demo guest and ask its guest agent
#   ./install.sh --no-demo  install only
#
# What it does, on Debian/Ubuntu (apt-get as root, or through sudo):
#  1. installs QEMU, socat and what the demo guest is built from, where missing;
#  2. uses Node >= 22 if `node` is one, else fetches Node 22 from the npm registry
#     (package "node") into ~/.local/share/pim/node;
#  3. installs the npm dependencies, builds dist/, and links every pim executable
#     into ~/.local/bin (PIM_BIN_DIR to change);
#  4. builds the demo image from Debian packages (a kernel, busybox, qemu-guest-agent,
#     dropbear: about 100 MB of downloads, cached) as ~/.local/share/pim/images/pim-demo.qcow2,
#     boots it with pim-run, waits for the guest agent, prints what pim-os and pim-ip say,
#     and stops it with pim-stop.
set -euo pipefail
cd "$(dirname "$0")"
repo="$PWD"
say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need=(qemu-system-x86 qemu-utils socat busybox-static syslinux syslinux-common mtools dosfstools cpio xz-utils gzip openssh-client)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${missing[*]}; install them with your package manager (on macOS: brew install qemu socat node)"
  say "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

share="${XDG_DATA_HOME:-$HOME/.local/share}/pim"
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
NODE="$(command -v node || true)"
if [ -z "$NODE" ] || [ "$(node_major "$NODE")" -lt 22 ]; then
  if [ ! -x "$share/node/node_modules/node/bin/node" ]; then
    say "node ${NODE:+$("$NODE" --version) }is older than 22: fetching Node 22 from the npm registry into $share/node"
    mkdir -p "$share/node"
    npm install --prefix "$share/node" --no-audit --no-fund --loglevel=error node@22 >/dev/null
  fi
  NODE="$share/node/node_modules/node/bin/node"
fi
say "using node $("$NODE" --version) ($NODE)"

npm ci --no-audit --no-fund --loglevel=error
# the executables' #! line names this Node, so they run on it whatever PATH says
PIM_NODE="$NODE" "$NODE" build.mjs

bindir="${PIM_BIN_DIR:-$HOME/.local/bin}"
mkdir -p "$bindir"
for f in dist/bin/*; do ln -sfn "$repo/dist/$(basename "$f").cjs" "$bindir/$(basename "$f")"; done
say "linked $(ls dist/bin | wc -l) executables into $bindir"
case ":$PATH:" in *":$bindir:"*) ;; *) say "add $bindir to your PATH: export PATH=\"$bindir:\$PATH\""; export PATH="$bindir:$PATH" ;; esac
say "shell helpers: source $repo/shell/pim.zsh (zsh) or $repo/shell/pim.bash (bash)"

[ "$demo" -eq 1 ] || exit 0

# The built-in default: a small guest made from Debian packages.
bash test/testbed/build.sh
testbed="${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}"
mkdir -p "$share/images"
[ -f "$share/images/pim-demo.qcow2" ] || cp "$testbed/guest-full.qcow2" "$share/images/pim-demo.qcow2"

say "booting the demo VM: pim-run pim-demo --snapshot --mem 256M"
pim-run pim-demo --snapshot --mem 256M >/dev/null
trap 'pim-stop pim-demo --timeout 10 >/dev/null 2>&1 || true' EXIT
pim-console pim-demo --ro --replay --until 'pim-testbed ready' --timeout 300 >/dev/null
pim-ps
pim-os pim-demo
pim-ip pim-demo
pim-ga pim-demo guest-ping >/dev/null && say "the guest agent answers"
pim-stop pim-demo
trap - EXIT
say "done: pim works. Try: pim-run pim-demo && pim-ip pim-demo && pim-stop pim-demo"
