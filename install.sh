#!/usr/bin/env bash
# Installs pim for the current user and boots the built-in demo VM.
#
#   ./install.sh            install, then boot the demo guest and ask its guest agent
#   ./install.sh --no-demo  install only
#   ./install.sh --update-rc  also add the line that loads pim's shell helpers to
#                           ~/.bashrc and ~/.zshrc (without it, the line is printed)
#
# What it does, on Debian/Ubuntu (apt-get as root, or through sudo):
#  1. installs QEMU, socat and what the demo guest is built from, where missing;
#  2. uses Node >= 22 if `node` is one, else fetches Node 22 from the npm registry
#     (package "node") into ~/.local/share/pim/node;
#  3. installs the npm dependencies (npm ci, skipped when node_modules already matches
#     package-lock.json), builds dist/ with that Node on the executables' #! line, copies
#     it to ~/.local/share/pim/dist (with the one package the bundles leave out, ssh2),
#     and links every pim executable there from ~/.local/bin (PIM_BIN_DIR to change).
#     The installed copy is the checkout's build at install time: a later build of the
#     checkout (./test.sh, npm run build, node build.mjs: #!/usr/bin/env node) changes
#     nothing installed, so the executables keep the Node they were installed with;
#     run ./install.sh again to install a newer build;
#     links the man pages into ~/.local/share/man/man1, the completions into
#     ~/.local/share/bash-completion/completions, ~/.local/share/zsh/site-functions and
#     ~/.config/fish/completions, and shell/pim.fish (fzf pickers) into ~/.config/fish/conf.d;
#  4. builds the demo image from Debian packages (a kernel, busybox, qemu-guest-agent,
#     dropbear: about 100 MB of downloads, cached) as ~/.local/share/pim/images/pim-demo.qcow2,
#     boots it with pim-run, waits for the guest agent, prints what pim-os and pim-ip say,
#     and stops it with pim-stop.
set -euo pipefail
cd "$(dirname "$0")"
repo="$PWD"
say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
demo=1 update_rc=0
for a in "$@"; do
  case $a in
    --no-demo) demo=0 ;;
    --update-rc) update_rc=1 ;;
    *) say "unknown option $a; use --no-demo or --update-rc"; exit 64 ;;
  esac
done

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

# npm writes node_modules/.package-lock.json when it installs: newer than the lock file, it
# is what the lock file says, and npm ci (which removes node_modules first) is not needed
hidden=node_modules/.package-lock.json
if [ -f "$hidden" ] && [ "$hidden" -nt package-lock.json ] && [ "$hidden" -nt package.json ]; then
  say "node_modules matches package-lock.json: no npm ci"
else
  npm ci --no-audit --no-fund --loglevel=error
fi
# the executables' #! line names this Node, so they run on it whatever PATH says
PIM_NODE="$NODE" "$NODE" build.mjs

# The installed copy: dist/ as just built, plus what the bundles require at run time
# (build.mjs leaves ssh2 out: it has an optional native add-on), in a new directory
# that the link $share/dist is switched to at once; older copies are removed.
mkdir -p "$share"
stamp="dist-$(date +%Y%m%d%H%M%S)-$$"
rm -rf "${share:?}/$stamp"
cp -a dist "$share/$stamp"
"$NODE" - "$repo" "$share/$stamp" ssh2 cpu-features <<'JS'
// copy each package and its dependencies (optional ones when present) from the
// checkout's node_modules, at the same relative paths
const fs = require('fs'), path = require('path');
const [repo, dest, ...roots] = process.argv.slice(2);
const seen = new Set();
const find = (name, from) => {
  for (let d = from; d.startsWith(repo); d = path.dirname(d)) {
    const p = path.join(d, 'node_modules', name);
    if (fs.existsSync(path.join(p, 'package.json'))) return p;
    if (d === repo) break;
  }
  return null;
};
const copy = (name, from, optional) => {
  const dir = find(name, from);
  if (!dir) { if (optional) return; throw new Error(`install.sh: ${name} is not in ${repo}/node_modules; run npm ci`); }
  if (seen.has(dir)) return;
  seen.add(dir);
  fs.cpSync(fs.realpathSync(dir), path.join(dest, path.relative(repo, dir)), { recursive: true, verbatimSymlinks: true });
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  for (const d of Object.keys(pkg.dependencies || {})) copy(d, dir, false);
  for (const d of Object.keys(pkg.optionalDependencies || {})) copy(d, dir, true);
};
for (const r of roots) copy(r, repo, r !== 'ssh2');
JS
[ ! -d "$share/dist" ] || [ -L "$share/dist" ] || rm -rf "${share:?}/dist"
ln -sfn "$stamp" "$share/dist.new-$$"
mv -T "$share/dist.new-$$" "$share/dist"
for old in "$share"/dist-*; do [ "$old" = "$share/$stamp" ] || rm -rf "$old"; done

bindir="${PIM_BIN_DIR:-$HOME/.local/bin}"
mkdir -p "$bindir"
for f in "$share"/dist/bin/*; do ln -sfn "$share/dist/$(basename "$f").cjs" "$bindir/$(basename "$f")"; done
say "installed pim into $share/dist (#!$NODE) and linked $(ls "$share"/dist/bin | wc -l) executables into $bindir"
case ":$PATH:" in *":$bindir:"*) ;; *) say "add $bindir to your PATH: export PATH=\"$bindir:\$PATH\""; export PATH="$bindir:$PATH" ;; esac
# Man pages, completions and shell helpers, where each tool looks for them for this user,
# as links into $share/dist (so that installing again updates them). No rc file is edited
# unless --update-rc is given (as fzf's installer does); what to add is printed.
data="${XDG_DATA_HOME:-$HOME/.local/share}"
config="${XDG_CONFIG_HOME:-$HOME/.config}"
link_all() { # link_all DIR FILE... : each FILE linked into DIR under its own name
  local dir=$1 f
  shift
  mkdir -p "$dir"
  for f in "$@"; do ln -sfn "$f" "$dir/$(basename "$f")"; done
}
cp -a shell completions "$share/$stamp/"
link_all "$data/man/man1" "$share"/dist/man/man1/*.1
link_all "$data/bash-completion/completions" "$share"/dist/completions/bash/*
link_all "$data/zsh/site-functions" "$share"/dist/completions/zsh/_*
link_all "$config/fish/completions" "$share"/dist/completions/fish/*.fish
link_all "$config/fish/conf.d" "$share/dist/shell/pim.fish"
say "man pages: $data/man/man1 (man pim-run); completions: $data/bash-completion/completions, $data/zsh/site-functions, $config/fish/completions"
# man-db finds $data/man through $bindir on PATH (DIR/../share/man); else MANPATH must name it
if command -v manpath >/dev/null 2>&1 && ! manpath 2>/dev/null | tr : '\n' | grep -qx "$data/man"; then
  say "add $data/man to your MANPATH: export MANPATH=\"$data/man:\$(manpath)\""
fi
bashrc_line="[ -f \"$share/dist/shell/pim.bash\" ] && source \"$share/dist/shell/pim.bash\"  # pim: completions, fzf pickers"
zshrc_line="[ -f \"$share/dist/shell/pim.zsh\" ] && source \"$share/dist/shell/pim.zsh\"  # pim: completions, fzf pickers (after compinit)"
if [ "$update_rc" -eq 1 ]; then
  for rc in "$HOME/.bashrc" "$HOME/.zshrc"; do
    line=$bashrc_line
    [ "$rc" = "$HOME/.zshrc" ] && line=$zshrc_line
    grep -qF "$line" "$rc" 2>/dev/null || { printf '%s\n' "$line" >>"$rc"; say "added to $rc: $line"; }
  done
else
  say "bash: for completions and the fzf pickers (pim-stop **<TAB>, pim-pick), add to ~/.bashrc: $bashrc_line"
  say "zsh: add to ~/.zshrc, after compinit: $zshrc_line"
  say "fish: nothing to add ($config/fish/conf.d/pim.fish); ./install.sh --update-rc adds the lines above for you"
fi

[ "$demo" -eq 1 ] || exit 0

# The built-in default: a small guest made from Debian packages.
bash test/testbed/build.sh
testbed="${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}"
mkdir -p "$share/images"
# the test bed's full guest with pim's own SSH key in it (made again each time: an older demo gains the key)
bash test/testbed/demo.sh "$share/images/pim-demo.qcow2"

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
say "done: pim works. Try: pim-run pim-demo --wait ssh && pim-ssh pim-demo -- uname -a && pim-stop pim-demo"
