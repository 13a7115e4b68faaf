#!/usr/bin/env bash
# Benchmark: what a config file costs. `pim-profile show` of a profile with
# 10k/20k/40k keys (time should double with the keys: linear; it was quadratic,
# 20k took 14.7 s and 40k 56 s), and how fast and small the refusals of a
# hostile file are (a 500,000-item list aliased 99 times, a billion laughs, a
# 5 MiB file): exit 78 with FILE:LINE, in under a second and 200 MB.
# Prints wall time and peak RSS (GNU time) for the whole process.
# usage: bench/yaml.sh   (after node build.mjs)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PATH="$repo/node_modules/.bin:$PATH"
tmp=$(mktemp -d)
export XDG_CONFIG_HOME="$tmp/config" XDG_CACHE_HOME="$tmp/cache"
trap 'rm -rf "$tmp"' EXIT
d="$XDG_CONFIG_HOME/pim/profiles.d"
mkdir -p "$d"

# run CMD...: "<ms> ms  <MB> MB RSS  exit N"
measure() {
  local s e rc=0
  s=$(date +%s%N)
  /usr/bin/time -f '%M' -o "$tmp/rss" "$@" >/dev/null 2>"$tmp/err" || rc=$?
  e=$(date +%s%N)
  printf '%6d ms  %5d MB RSS  exit %d' $(((e - s) / 1000000)) $(($(tail -1 "$tmp/rss") / 1024)) "$rc"
}

for n in 10000 20000 40000; do
  node -e "let t='many:\n  vars:\n'; for (let i = 0; i < $n; i++) t += '    k' + i + ': ' + i + '\n'; process.stdout.write(t)" >"$d/many.yml"
  echo "pim-profile show, $n keys:           $(measure "$repo/dist/bin/pim-profile" show many --json)"
done
rm "$d/many.yml"

node -e "process.stdout.write('a: &x [' + Array(500000).fill('1').join(',') + ']\n' + Array.from({length: 99}, (_, i) => 'b' + i + ': *x\n').join(''))" >"$d/big.yml"
echo "500,000 items aliased 99 times:      $(measure "$repo/dist/bin/pim-profile" list)  $(cut -c1-80 "$tmp/err")"
node -e "process.stdout.write('a: &x [' + Array(100000).fill('1').join(',') + ']\n' + Array.from({length: 99}, (_, i) => 'b' + i + ': *x\n').join(''))" >"$d/big.yml"
echo "100,000 items aliased 99 times:      $(measure "$repo/dist/bin/pim-profile" list)  $(cut -c1-80 "$tmp/err")"
node -e "
  let t = 'a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n';
  const L = 'abcdefghi';
  for (let i = 1; i < L.length; i++) t += L[i] + ': &' + L[i] + ' [' + Array(9).fill('*' + L[i - 1]).join(',') + ']\n';
  process.stdout.write(t)" >"$d/big.yml"
echo "billion laughs:                      $(measure "$repo/dist/bin/pim-profile" list)  $(cut -c1-80 "$tmp/err")"
head -c $((5 * 1048576)) /dev/zero | tr '\0' '#' >"$d/big.yml"
echo "a 5 MiB file:                        $(measure "$repo/dist/bin/pim-profile" list)  $(cut -c1-80 "$tmp/err")"
rm "$d/big.yml"
echo "no config at all (baseline):         $(measure "$repo/dist/bin/pim-profile" list)"
