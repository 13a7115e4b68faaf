#!/usr/bin/env bash
# Benchmark: `pim-kboot --exec true` to exit, against the same QEMU command line
# run by hand (foreground, output port to a file, same kernel/initrd/append), and
# pim-kboot's time to a shell (headless: until it prints the name). Median of N.
#   bench/kboot.sh [N]       env: PIM_ACCEL (default tcg), KERNEL (test bed generic kernel)
set -euo pipefail
N=${1:-5}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TESTBED="${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}"
KERNEL=${KERNEL:-$TESTBED/generic/vmlinuz}
export PIM_ACCEL=${PIM_ACCEL:-tcg} PIM_BUSYBOX=${PIM_BUSYBOX:-$TESTBED/busybox} PATH="$REPO/dist/bin:$PATH"
T=$(mktemp -d /tmp/pimb.XXXXXX)
trap 'pim-ps -q 2>/dev/null | pim-stop --force --timeout 5 >/dev/null 2>&1 || true; rm -rf "$T"' EXIT
export XDG_RUNTIME_DIR=$T/run XDG_CACHE_HOME=$T/cache
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# warm the caches (vmlinux extraction, pim's base archive), and keep one boot's initrd and argv
PIM_LOG=debug PIM_KBOOT_SAVE_INITRD=$T/initrd pim-kboot --kernel "$KERNEL" --exec true 2>"$T/debug.log" ||
	{ echo "bench: the warm-up boot failed:" >&2; cat "$T/debug.log" >&2; exit 1; }
trap 'echo "bench: failed at line $LINENO" >&2' ERR
argv=$(grep -o 'exec: \[.*\]' "$T/debug.log" | sed 's/^exec: //')
# the same command line, by hand: foreground, output port to a plain file, the saved initrd
node -e '
const a = JSON.parse(process.argv[1]); const T = process.argv[2]; const out = [];
for (let i = 0; i < a.length; i++) {
  if (a[i] === "-daemonize") continue;
  if (a[i] === "-initrd") { out.push("-initrd", T + "/initrd"); i++; continue; }
  if (a[i] === "-pidfile") { out.push("-pidfile", T + "/hand.pid"); i++; continue; }
  if (a[i].startsWith("socket,id=pimout,")) { out.push("file,id=pimout,path=" + T + "/hand.out"); continue; } // the output port, to a file
  out.push(a[i].replace(/\/run\/pim\/kboot\./g, "/hand."));
}
process.stdout.write(out.map((w) => w + "\0").join(""));' "$argv" "$T" >"$T/hand.argv"

for i in $(seq "$N"); do
	t0=$(now); pim-kboot --kernel "$KERNEL" --exec true; t1=$(now)
	awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}'
done | median >"$T/pim"
for i in $(seq "$N"); do
	rm -f "$T"/hand.*.sock "$T/hand.out"
	t0=$(now); xargs -0 -a "$T/hand.argv" timeout 120 >/dev/null 2>&1; t1=$(now)
	grep -q PIM-EXIT "$T/hand.out" || { echo "hand-run boot failed" >&2; exit 1; }
	awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}'
done | median >"$T/hand"
for i in $(seq "$N"); do
	t0=$(now); pim-kboot kb --kernel "$KERNEL" >/dev/null 2>&1; t1=$(now)
	pim-stop kb --force --timeout 5 >/dev/null
	awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}'
done | median >"$T/shell"
pim=$(cat "$T/pim") hand=$(cat "$T/hand") shell=$(cat "$T/shell")
printf 'accel=%s kernel=%s runs=%s (medians)\n' "$PIM_ACCEL" "$KERNEL" "$N"
printf 'pim-kboot --exec true     %.2f s\n' "$pim"
printf 'same QEMU line by hand    %.2f s\n' "$hand"
printf 'overhead                  %+.1f %%\n' "$(awk -v p="$pim" -v h="$hand" 'BEGIN{print (p-h)*100/h}')"
printf 'pim-kboot to shell        %.2f s\n' "$shell"
