#!/usr/bin/env bash
# Writes the checked-in completion scripts from the built executables: for
# every cmds/NAME.ts, `dist/bin/NAME complete SHELL` (made by @bomb.sh/tab
# through lib/cli/complete.ts; cmds/pim.ts answers for the umbrella) goes to
#   completions/zsh/_NAME   completions/bash/NAME   completions/fish/NAME.fish
#
#   completions/generate.sh          rewrite them
#   completions/generate.sh --check  exit 1 (and show a diff) when the checked-in
#                                    files are not what a fresh run would write
#
# Run `node build.mjs` first. The output depends only on cmds/ and lib/: re-runs
# are byte-identical.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

check=0
case ${1-} in
  --check) check=1 ;;
  '') ;;
  *) echo "usage: completions/generate.sh [--check]" >&2; exit 64 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/zsh" "$tmp/bash" "$tmp/fish"

for f in cmds/*.ts; do
  n=${f#cmds/}
  n=${n%.ts}
  exe=dist/bin/$n
  if [[ ! -x $exe ]]; then
    echo "generate.sh: $exe is missing; run node build.mjs first" >&2
    exit 66
  fi
  "$exe" complete zsh >"$tmp/zsh/_$n"
  "$exe" complete bash >"$tmp/bash/$n"
  "$exe" complete fish >"$tmp/fish/$n.fish"
done

if ((check)); then
  status=0
  for s in zsh bash fish; do
    diff -ruN "completions/$s" "$tmp/$s" || status=1
  done
  if ((status)); then
    echo "generate.sh: completions/ is stale; run node build.mjs && completions/generate.sh and commit completions/" >&2
  fi
  exit $status
fi

for s in zsh bash fish; do
  rm -rf "completions/$s"
  cp -R "$tmp/$s" "completions/$s"
done
