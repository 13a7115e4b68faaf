#!/usr/bin/env bash
# Benchmark: packing a directory as an initramfs (lib/archive/initramfs.ts cachedPack),
# cold and again unchanged (a cache hit: one lstat walk, target < 50 ms).
#   bench/initramfs.sh [DIR]   default: a tree of the test bed's busybox (with its
#   applet links) and the generic kernel's modules, made here
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TESTBED="${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}"
T=$(mktemp -d /tmp/pimb.XXXXXX)
trap 'rm -rf "$T"' EXIT
DIR=${1:-}
if [ -z "$DIR" ]; then
	DIR=$T/tree
	mkdir -p "$DIR/bin" "$DIR/lib/modules"
	cp "$TESTBED/busybox" "$DIR/bin/busybox"
	for a in $("$DIR/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$DIR/bin/$a"; done
	cp -r "$TESTBED"/generic/modules/* "$DIR/lib/modules/"
fi
(cd "$REPO" && npx --no-install esbuild --bundle --platform=node --format=esm --log-level=warning \
	--outfile="$T/bench.mjs" --sourcefile=bench-initramfs.ts --loader=ts) <<'JS'
import { cachedPack } from './lib/archive/initramfs.ts';
const dir = process.argv[2]!;
for (const compress of ['none', 'gzip'] as const) {
  for (const label of ['cold', 'unchanged', 'unchanged']) {
    const t0 = performance.now();
    const r = await cachedPack(dir, compress);
    const ms = performance.now() - t0;
    const { size } = (await import('node:fs')).statSync(r.path);
    console.log(`${compress.padEnd(5)} ${label.padEnd(10)} ${ms.toFixed(1).padStart(7)} ms  ${r.hit ? 'hit ' : 'pack'}  ${(size / 1e6).toFixed(2)} MB`);
  }
}
JS
echo "tree: $DIR ($(find "$DIR" | wc -l) entries, $(du -sh "$DIR" | cut -f1))"
XDG_CACHE_HOME=$T/cache node "$T/bench.mjs" "$DIR"
