#!/usr/bin/env bats
# pim-iso against a real HTTP server on loopback started here: SUMS files, a resume
# after a cut connection, Ctrl-C, a bad checksum, a 404, the verify cache.
load helper

setup_file() {
  pim_isolate
  export PIM_TMP
  export W="$PIM_TMP/www"
  mkdir -p "$W"
  head -c 4000000 /dev/urandom > "$W/disk-1.0-amd64.iso"
  (cd "$W" && sha256sum disk-1.0-amd64.iso > SHA256SUMS)
  export SUM=$(cut -d' ' -f1 "$W/SHA256SUMS")
  # Range-aware server. /cut/F closes the connection after 1 MB on the first
  # request; /short/F after 100 kB on every request; /stall/F sends 1 MB and then
  # nothing (the connection stays open) on the first request; /norange/F
  # ignores Range (200, the whole file); /slow/F trickles; anything else
  # missing is 404.
  cat > "$PIM_TMP/srv.mjs" <<'JS'
import http from 'node:http'; import fs from 'node:fs';
const dir = process.argv[2]; let cut = 1; let stall = 1;
const srv = http.createServer((req, res) => {
  const [, mode, name] = /^\/(?:(cut|short|stall|norange|slow)\/)?(.*)$/.exec(req.url);
  let data; try { data = fs.readFileSync(`${dir}/${name}`); } catch { res.statusCode = 404; return res.end('no'); }
  const m = /bytes=(\d+)-/.exec(req.headers.range ?? ''); const start = m && mode !== 'norange' ? Number(m[1]) : 0;
  const part = data.subarray(start);
  res.writeHead(start ? 206 : 200, { 'content-length': part.length, ...(start ? { 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` } : {}) });
  if ((mode === 'cut' && cut-- > 0) || mode === 'short') return res.write(part.subarray(0, mode === 'short' ? 100000 : 1000000), () => setTimeout(() => res.socket.end(), 20));
  if (mode === 'stall' && stall-- > 0) return res.write(part.subarray(0, 1000000));
  if (mode === 'slow') { let i = 0; const t = setInterval(() => { if (res.destroyed || i >= part.length) { clearInterval(t); return res.end(); } res.write(part.subarray(i, i += 65536)); }, 50); return; }
  res.end(part);
});
srv.listen(0, '127.0.0.1', () => { fs.writeFileSync(`${dir}/../port`, String(srv.address().port)); });
JS
  setsid node "$PIM_TMP/srv.mjs" "$W" >"$PIM_TMP/srv.log" 2>&1 3>&- </dev/null &
  echo $! > "$PIM_TMP/srv.pid"
  for _ in $(seq 50); do [ -s "$PIM_TMP/port" ] && break; sleep 0.1; done
}
teardown_file() {
  kill "$(cat "$PIM_TMP/srv.pid")" 2>/dev/null || true
  pim_cleanup
}
teardown() {
  # the full-disk test mounts a small tmpfs
  if mountpoint -q "$PIM_TMP/small" 2>/dev/null; then umount "$PIM_TMP/small"; fi
}

base() { echo "http://127.0.0.1:$(cat "$PIM_TMP/port")"; }
I() { echo "$XDG_CACHE_HOME/pim/isos"; }

@test "the built-in catalog lists Debian and Ubuntu with real SUMS URLs" {
  run --separate-stderr pim-iso list
  [ "$status" -eq 0 ]
  [[ "$output" == *"debian-netinst-amd64	missing"* ]]
  run --separate-stderr pim-iso show ubuntu-24.04-server-amd64 --json
  [[ "$output" == *'"checksum_url":"https://releases.ubuntu.com/24.04/SHA256SUMS"'* ]]
}

@test "add refuses an entry without a checksum unless --insecure; bad names and checksums are usage errors" {
  run pim-iso add nosum --url "$(base)/disk-1.0-amd64.iso"
  [ "$status" -eq 64 ]
  run pim-iso add bad --url "$(base)/x.iso" --checksum sha256:1234
  [ "$status" -eq 64 ]
  run pim-iso add ../x --url "$(base)/x.iso" --insecure
  [ "$status" -eq 64 ]
  [ ! -e "$XDG_CONFIG_HOME/pim/isos.d/nosum.yml" ]
}

@test "download with a SUMS file and a * in the URL resumes after a cut connection" {
  pim-iso add sums --url "$(base)/cut/disk-*-amd64.iso" --checksum-url "$(base)/SHA256SUMS"
  run --separate-stderr pim-iso download sums
  [ "$status" -eq 0 ]
  [ "$output" = "sums	downloaded	$(I)/sums.iso" ]
  [[ "$stderr" == *"connection cut"* ]]
  cmp "$(I)/sums.iso" "$W/disk-1.0-amd64.iso"
  [ ! -e "$(I)/sums.iso.part" ]
  run pim-iso add sums --url "$(base)/x.iso" --insecure
  [ "$status" -eq 73 ]
}

@test "the ISO cache is private: the directory 0700, its files 0600" {
  [ "$(stat -c %a "$(I)")" = 700 ]
  for f in "$(I)"/*; do [ "$(stat -c %a "$f")" = 600 ] || { echo "$f"; false; }; done
}

@test "verify hashes once, then answers from the cache" {
  run --separate-stderr pim-iso verify sums
  [ "$status" -eq 0 ]
  [ "$output" = "sums	ok	sha256:$SUM	cached" ]
  touch "$(I)/sums.iso"
  run --separate-stderr pim-iso verify sums
  [ "$output" = "sums	ok	sha256:$SUM	hashed" ]
  run --separate-stderr pim-iso verify sums --json
  [[ "$output" == *'"how":"cached"'* ]]
  run pim-iso path sums
  [ "$output" = "$(I)/sums.iso" ]
}

@test "a checksum mismatch deletes the part file and exits 65" {
  pim-iso add wrong --url "$(base)/disk-1.0-amd64.iso" --checksum "sha256:$(printf '%064d' 0)"
  run --separate-stderr pim-iso download wrong
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"checksum mismatch"* ]]
  [ ! -e "$(I)/wrong.iso.part" ]
  [ ! -e "$(I)/wrong.iso" ]
  run pim-iso path wrong
  [ "$status" -eq 66 ]
}

@test "a 404 exits 69 and leaves nothing" {
  pim-iso add gone --url "$(base)/missing.iso" --checksum "sha256:$SUM"
  run --separate-stderr pim-iso download gone
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"HTTP 404"* ]]
  [ ! -e "$(I)/gone.iso" ] && [ ! -e "$(I)/gone.iso.part" ]
}

@test "Ctrl-C leaves a resumable part file, never a complete-looking one" {
  pim-iso add slow --url "$(base)/slow/disk-1.0-amd64.iso" --checksum "sha256:$SUM"
  # job control on: otherwise a background job starts with SIGINT ignored
  set -m
  pim-iso download slow 2>"$PIM_TMP/slow.err" &
  pid=$!
  set +m
  for _ in $(seq 100); do [ -s "$(I)/slow.iso.part" ] && break; sleep 0.1; done
  kill -INT "$pid"
  rc=0; wait "$pid" || rc=$?
  cat "$PIM_TMP/slow.err"; echo "rc=$rc"
  [ "$rc" -eq 130 ]
  [ -s "$(I)/slow.iso.part" ]
  [ ! -e "$(I)/slow.iso" ]
  [ ! -e "$(I)/slow.iso.lock" ]
  grep -q "run pim-iso download slow again to resume" "$PIM_TMP/slow.err"
  # resume from the part file, at full speed
  sed -i 's#/slow/#/#' "$XDG_CONFIG_HOME/pim/isos.d/slow.yml"
  run --separate-stderr pim-iso download slow
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"resuming at"* ]]
  cmp "$(I)/slow.iso" "$W/disk-1.0-amd64.iso"
}

@test "--insecure downloads are marked unverified" {
  pim-iso add open --url "$(base)/disk-1.0-amd64.iso" --insecure
  run --separate-stderr pim-iso download open
  [ "$status" -eq 0 ]
  run --separate-stderr pim-iso verify open
  [ "$output" = "open	unverified	-	no checksum in the entry" ]
  run --separate-stderr pim-iso list
  [[ "$output" == *"open	downloaded	unverified	4000000"* ]]
}

@test "rm deletes the files, --entry the catalog entry; unknown names are 66" {
  run --separate-stderr pim-iso rm open --entry
  [ "$status" -eq 0 ]
  [ ! -e "$(I)/open.iso" ]
  [ ! -e "$XDG_CONFIG_HOME/pim/isos.d/open.yml" ]
  run pim-iso show open
  [ "$status" -eq 66 ]
  run pim-iso download nosuch
  [ "$status" -eq 66 ]
}

@test "a second concurrent download of the same ISO exits 75; the first completes and verifies" {
  pim-iso add busy --url "$(base)/slow/disk-1.0-amd64.iso" --checksum "sha256:$SUM"
  pim-iso download busy >"$PIM_TMP/busy.out" 2>"$PIM_TMP/busy.err" &
  pid=$!
  # the first holds the lock once it says it is downloading
  for _ in $(seq 100); do grep -q "busy: downloading" "$PIM_TMP/busy.err" && break; sleep 0.1; done
  run --separate-stderr pim-iso download busy
  echo "$stderr"
  [ "$status" -eq 75 ]
  [ "$stderr" = 'pim-iso: the download of ISO "busy" is busy: another pim command holds it; try again when it is done' ]
  run pim-iso rm busy
  [ "$status" -eq 75 ]
  rc=0; wait "$pid" || rc=$?
  cat "$PIM_TMP/busy.err"
  [ "$rc" -eq 0 ]
  [ "$(cat "$PIM_TMP/busy.out")" = "busy	downloaded	$(I)/busy.iso" ]
  cmp "$(I)/busy.iso" "$W/disk-1.0-amd64.iso"
  run --separate-stderr pim-iso verify busy
  [ "$output" = "busy	ok	sha256:$SUM	cached" ]
}

@test "a body that stalls is a cut connection: resumed after PIM_DOWNLOAD_STALL seconds" {
  pim-iso add stalled --url "$(base)/stall/disk-1.0-amd64.iso" --checksum "sha256:$SUM"
  PIM_DOWNLOAD_STALL=1 run --separate-stderr pim-iso download stalled
  echo "$stderr"
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"stalled: connection cut (no data for 1 s); resuming, attempt 2"* ]]
  cmp "$(I)/stalled.iso" "$W/disk-1.0-amd64.iso"
}

@test "a server that ignores Range restarts the part file and says so once" {
  pim-iso add norange --url "$(base)/norange/disk-1.0-amd64.iso" --checksum "sha256:$SUM"
  head -c 5000 /dev/urandom > "$(I)/norange.iso.part"
  run --separate-stderr pim-iso download norange
  echo "$stderr"
  [ "$status" -eq 0 ]
  [ "$(grep -c 'server ignored the resume request; downloading from the start' <<<"$stderr")" -eq 1 ]
  cmp "$(I)/norange.iso" "$W/disk-1.0-amd64.iso"
}

@test "a body cut short every time exits 69 naming the URL; the part is kept, never renamed" {
  pim-iso add short --url "$(base)/short/disk-1.0-amd64.iso" --checksum "sha256:$SUM"
  run --separate-stderr pim-iso download short
  echo "$stderr"
  [ "$status" -eq 69 ]
  [[ "$(tail -1 <<<"$stderr")" == "pim-iso: $(base)/short/disk-1.0-amd64.iso: download cut off ("*") after 4 attempts; run again to resume" ]]
  [ -s "$(I)/short.iso.part" ]
  [ ! -e "$(I)/short.iso" ]
}

@test "a full disk exits 73 at once, naming the directory and the space needed; the part is kept" {
  mkdir -p "$PIM_TMP/small"
  mount -t tmpfs -o size=2m tmpfs "$PIM_TMP/small" 2>/dev/null || skip "cannot mount a tmpfs here (needs root)"
  pim-iso add full --url "$(base)/disk-1.0-amd64.iso" --checksum "sha256:$SUM"
  XDG_CACHE_HOME="$PIM_TMP/small" run --separate-stderr pim-iso download full
  echo "$stderr"
  [ "$status" -eq 73 ]
  [ -z "$output" ]
  d="$PIM_TMP/small/pim/isos"
  size=$(stat -c %s "$d/full.iso.part")
  [ "$size" -gt 0 ]
  [ ! -e "$d/full.iso" ]
  need=$(node -e "console.log(((4000000 - $size) / 1048576).toFixed(1))")
  [ "$(tail -1 <<<"$stderr")" = "pim-iso: $d: no space left: $need MiB more needed (4000000 bytes in all); free some space and run again to resume ($d/full.iso.part is kept)" ]
  # not a network error: no retries
  [[ "$stderr" != *"connection cut"* ]]
}
@test "a local ISO (issue 19): a path or file:// is verified like a download and used in place; --copy copies it; a mismatch leaves the file alone" {
  local src="$PIM_TMP/local/my disk.iso"
  mkdir -p "$PIM_TMP/local"
  cp "$W/disk-1.0-amd64.iso" "$src"
  # a plain path, used in place: the cache holds a symlink, verified against the pinned checksum
  run --separate-stderr pim-iso add localiso --url "$src" --checksum "sha256:$SUM"
  [ "$status" -eq 0 ]
  grep -q 'url: file:///' "$XDG_CONFIG_HOME/pim/isos.d/localiso.yml"
  run --separate-stderr pim-iso download localiso
  [ "$status" -eq 0 ]
  [ -L "$(I)/localiso.iso" ]
  [ "$(readlink "$(I)/localiso.iso")" = "$src" ]
  run pim-iso path localiso
  [ "$status" -eq 0 ]
  cmp "$output" "$src"
  run --separate-stderr pim-iso verify localiso
  [ "$status" -eq 0 ]
  # rm removes the link, never the user's file
  run pim-iso rm localiso
  [ "$status" -eq 0 ]
  [ -f "$src" ] && [ ! -e "$(I)/localiso.iso" ]
  # file:// with --copy and a SUMS file next to it: a private copy in the cache
  (cd "$PIM_TMP/local" && sha256sum "my disk.iso" >SHA256SUMS)
  run --separate-stderr pim-iso add copied --url "file://$PIM_TMP/local/my%20disk.iso" --checksum-url "$PIM_TMP/local/SHA256SUMS" --copy
  [ "$status" -eq 0 ]
  run --separate-stderr pim-iso download copied
  [ "$status" -eq 0 ]
  [ -f "$(I)/copied.iso" ] && [ ! -L "$(I)/copied.iso" ]
  [ "$(stat -c %a "$(I)/copied.iso")" = 600 ]
  cmp "$(I)/copied.iso" "$src"
  # a file that is not what the checksum says: 65, the file untouched, nothing in the cache
  run pim-iso add wronglocal --url "$src" --checksum "sha256:$(printf '0%.0s' $(seq 64))"
  [ "$status" -eq 0 ] || { echo "$output"; false; }
  run --separate-stderr pim-iso download wronglocal
  [ "$status" -eq 65 ]
  [ -f "$src" ] && [ ! -e "$(I)/wronglocal.iso" ] && [ ! -e "$(I)/wronglocal.iso.part" ]
  # a missing file is 66; --copy of a URL is 64
  run --separate-stderr pim-iso add gone --url "$PIM_TMP/nope.iso" --insecure
  [ "$status" -eq 66 ]
  run --separate-stderr pim-iso add web --url "$(base)/disk-1.0-amd64.iso" --insecure --copy
  [ "$status" -eq 64 ]
}
