#!/usr/bin/env bats
# Builds through OCI registries, against Debian's docker-registry (the CNCF
# distribution registry) started here on loopback with htpasswd auth and a
# self-signed certificate made at test time; skopeo is the second opinion.
# Home A (this file's XDG dirs) has the test bed's guest registered as a
# build; home B (fresh XDG dirs under $PIM_TMP/b) pulls it, boots it, and
# uses the registry as its remote build cache.
load helper
load deploy
load oci

setup_file() {
  pim_isolate
  need_testbed
  export XDG_STATE_HOME="$PIM_TMP/state"
  export REGDIR="$PIM_TMP/reg"
  start_registry "$REGDIR" tls
  export REG REG_USER REG_PASS
  export PIM_REG="$REG_USER:$REG_PASS" PIM_BAD="$REG_USER:not-the-password"
  local c="$XDG_CONFIG_HOME/pim"
  mkdir -p "$c/targets.d"
  cat >"$c/targets.d/reg.yml" <<EOF
reg: {type: oci, ref: "$REG/team/images", insecure: true, creds_env: PIM_REG}
cache: {type: oci, ref: "$REG/team/cache", insecure: true, creds_env: PIM_REG}
bad: {type: oci, ref: "$REG/team/images", insecure: true, creds_env: PIM_BAD}
verified: {type: oci, ref: "$REG/team/images", creds_env: PIM_REG}
EOF
  export B1
  B1=$(register web one "$TESTBED/guest-full.qcow2")
  export SUM
  SUM=$(sha256sum <"$TESTBED/guest-full.qcow2" | cut -d' ' -f1)
}

teardown_file() {
  local f
  for f in "$PIM_TMP"/*/run/pim/*.pid; do   # the other homes' VMs
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  stop_registry "$REGDIR"
  stop_www
  pim_cleanup
}

# home NAME: another pim home on this machine, its own XDG dirs under $PIM_TMP/NAME
home() {
  local h="$PIM_TMP/$1"
  export XDG_CONFIG_HOME="$h/config" XDG_DATA_HOME="$h/data" XDG_CACHE_HOME="$h/cache" XDG_RUNTIME_DIR="$h/run" XDG_STATE_HOME="$h/state"
  mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CONFIG_HOME/pim"
  chmod 700 "$XDG_RUNTIME_DIR"
}

# requests of a method the registry logged so far
reg_requests() { grep -c "\"$1 " "$REGDIR/registry.log" || true; }

@test "pim-deploy BUILD reg pushes a KubeVirt containerDisk: skopeo sees both tags, one layer whose disk/ holds the qcow2 owned 107:107, pim's record in the annotations" {
  run --separate-stderr pim-deploy web reg
  [ "$status" -eq 0 ]
  [[ "$output" == *"$B1"*uploaded* ]]
  run skopeo_ list-tags "docker://$REG/team/images"
  [ "$status" -eq 0 ]
  [ "$(jq -r '.Tags | sort | join(" ")' <<<"$output")" = "web $B1" ]
  m=$(skopeo_ inspect --raw "docker://$REG/team/images:web")
  [ "$(jq -r .mediaType <<<"$m")" = application/vnd.oci.image.manifest.v1+json ]
  [ "$(jq '.layers | length' <<<"$m")" -eq 1 ]
  [ "$(jq -r '.annotations["dev.pim.build.key"]' <<<"$m")" = "$(pim-build show "$B1" --json | jq -r .key)" ]
  [ "$(jq -r '.annotations["dev.pim.build.profile"]' <<<"$m")" = web ]
  [ "$(jq -r '.annotations["dev.pim.build.disk.sha256"]' <<<"$m")" = "$SUM" ]
  [ "$(jq -r '.annotations["dev.pim.build.record"] | fromjson | .settings.mem' <<<"$m")" = 256M ]
  [ "$(skopeo_ inspect --raw "docker://$REG/team/images:$B1")" = "$m" ]
  # the layer, copied out by skopeo: disk/ with one qcow2, 107:107, the build's bytes
  skopeo copy -q --preserve-digests --dest-oci-accept-uncompressed-layers --src-tls-verify=false --src-creds "$PIM_REG" "docker://$REG/team/images:web" "oci:$PIM_TMP/layout:web" >/dev/null
  layer="$PIM_TMP/layout/blobs/sha256/$(jq -r '.layers[0].digest' <<<"$m" | cut -d: -f2)"
  run tar -tvf "$layer" --numeric-owner
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 2 ]
  [[ "${lines[0]}" == "dr-xr-xr-x 107/107 "*" disk/" ]]
  [[ "${lines[1]}" == "-r--r--r-- 107/107 "*" disk/web.qcow2" ]]
  [ "$(tar -xOf "$layer" disk/web.qcow2 | sha256sum | cut -d' ' -f1)" = "$SUM" ]
}

@test "pushing the unchanged build again sends nothing: no upload started, no blob asked for, no tag moved; two connections" {
  posts=$(reg_requests POST)
  puts=$(reg_requests PUT)
  heads=$(reg_requests HEAD)
  blobs=$(grep -c '"HEAD /v2/team/images/blobs/' "$REGDIR/registry.log" || true)
  run --separate-stderr env NODE_DEBUG=http pim-deploy web reg --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .upload <<<"$output")" = skipped ]
  [ "$(jq -r .domain <<<"$output")" = kept ]
  [ "$(reg_requests POST)" = "$posts" ]
  [ "$(reg_requests PUT)" = "$puts" ]
  # the two tags' manifests only: a tag that holds this manifest vouches for its layer
  [ "$(reg_requests HEAD)" -eq $((heads + 2)) ]
  [ "$(grep -c '"HEAD /v2/team/images/blobs/' "$REGDIR/registry.log" || true)" = "$blobs" ]
  # the ping's connection is taken again (its answer read to the end first): two TLS handshakes, not three
  [ "$(grep -c createConnection <<<"$stderr")" -eq 2 ]
  run pim-deploy list reg
  [ "$status" -eq 0 ]
  [[ "$output" == "$B1"*web*"$REG/team/images:$B1"*pushed* ]]
}

@test "a disk changed in place, its size and mtime put back, is never matched by the digest pushed before: its layer goes up again" {
  head -c 1M /dev/urandom >"$PIM_TMP/chg.qcow2"
  id=$(register chg six "$PIM_TMP/chg.qcow2")
  disk="$XDG_DATA_HOME/pim/builds/$id/chg.qcow2"
  run --separate-stderr pim-deploy "$id" reg --json
  [ "$(jq -r .upload <<<"$output")" = uploaded ]
  [ -f "$XDG_CACHE_HOME/pim/oci/$id.json" ]
  touch -r "$disk" "$PIM_TMP/chg.stamp"
  before=$(stat -c '%s %y' "$disk")
  printf 'changed' | dd of="$disk" bs=1 seek=4096 conv=notrunc status=none
  touch -m -r "$PIM_TMP/chg.stamp" "$disk"
  [ "$(stat -c '%s %y' "$disk")" = "$before" ]
  run --separate-stderr pim-deploy "$id" reg --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .upload <<<"$output")" = uploaded ]
  [ "$(skopeo_ inspect --raw "docker://$REG/team/images:$id" | jq -r '.annotations["dev.pim.build.disk.sha256"]')" = "$(sha256sum <"$disk" | cut -d' ' -f1)" ]
}

@test "insecure: true speaks plain http to a registry without TLS; without it, pim does not fall back to http (69)" {
  local plain="$PIM_TMP/plainreg"
  (start_registry "$plain" http && echo "$REG" >"$plain/addr.out")
  preg=$(cat "$plain/addr.out")
  echo "plain: {type: oci, ref: \"$preg/team/images\", insecure: true, creds_env: PIM_REG}" >"$XDG_CONFIG_HOME/pim/targets.d/plain.yml"
  echo "plainstrict: {type: oci, ref: \"$preg/team/images\", creds_env: PIM_REG}" >>"$XDG_CONFIG_HOME/pim/targets.d/plain.yml"
  run --separate-stderr pim-deploy web plainstrict
  st=$status
  run --separate-stderr pim-deploy web plain
  st2=$status
  stop_registry "$plain"
  rm -f "$XDG_CONFIG_HOME/pim/targets.d/plain.yml"
  [ "$st" -eq 69 ]
  [ "$st2" -eq 0 ]
  grep -q '"PUT /v2/team/images/manifests/web HTTP/1.1" 201' "$plain/registry.log"
}

@test "a wrong password is 77, a missing credentials variable 77, an untrusted certificate 69; the secret is never printed" {
  run --separate-stderr pim-deploy web bad
  [ "$status" -eq 77 ]
  [[ "$stderr" == *"refused the credentials"* ]]
  [[ "$stderr" != *not-the-password* ]]
  run --separate-stderr env -u PIM_REG pim-deploy web reg
  [ "$status" -eq 77 ]
  [[ "$stderr" == *PIM_REG* ]]
  run --separate-stderr pim-deploy web verified
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"certificate is not trusted"* ]]
}

@test "credentials from ~/.docker/config.json: auths, and a credential helper asked with get and the registry on stdin" {
  home creds
  mkdir -p "$PIM_TMP/docker" "$PIM_TMP/bin"
  printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$REG" "$(printf '%s' "$PIM_REG" | base64 -w0)" >"$PIM_TMP/docker/config.json"
  DOCKER_CONFIG="$PIM_TMP/docker" run --separate-stderr pim-build pull --insecure "$REG/team/images:web" --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .name <<<"$output")" = "$B1" ]
  pim-build rm "$B1" >/dev/null
  cat >"$PIM_TMP/bin/docker-credential-pimtest" <<EOF
#!/bin/sh
[ "\$1" = get ] || exit 1
read -r host
echo "\$host" >"$PIM_TMP/helper-asked"
printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}' "\$host" "$REG_USER" "$REG_PASS"
EOF
  chmod +x "$PIM_TMP/bin/docker-credential-pimtest"
  printf '{"credHelpers": {"%s": "pimtest"}}\n' "$REG" >"$PIM_TMP/docker/config.json"
  PATH="$PIM_TMP/bin:$PATH" DOCKER_CONFIG="$PIM_TMP/docker" run --separate-stderr pim-build pull --insecure "$REG/team/images:web"
  [ "$status" -eq 0 ]
  [ "$(cat "$PIM_TMP/helper-asked")" = "$REG" ]
  pim-build rm "$B1" >/dev/null
}

@test "a second pim home pulls the build: the same id, key and record, the same sha256; pim-run PROFILE boots it and the agent answers" {
  home b
  run --separate-stderr pim-build pull --insecure --creds-env PIM_REG "$REG/team/images:web"
  [ "$status" -eq 0 ]
  path="$output"
  [ "$path" = "$XDG_DATA_HOME/pim/builds/$B1/web.qcow2" ]
  [ "$(sha256sum <"$path" | cut -d' ' -f1)" = "$SUM" ]
  [ "$(stat -c %a "$path")" = 444 ]
  run pim-build list -q
  [ "$output" = "$B1" ]
  [ "$(pim-build show web --json | jq -c '.inputs, .settings, .key')" = "$(XDG_DATA_HOME="$PIM_TMP/data" pim-build show web --json | jq -c '.inputs, .settings, .key')" ]
  # again: already here, nothing fetched
  run --separate-stderr pim-build pull --insecure --creds-env PIM_REG "$REG/team/images:$B1"
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"already here"* ]]
  pim-run web --mem 256M --cpus 1
  pim-console web --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
  run pim-wait web --for agent --timeout 120
  [ "$status" -eq 0 ]
  run pim-ga web guest-ping
  [ "$status" -eq 0 ]
  pim-stop web --force --timeout 10 >/dev/null
}

@test "an unknown repository or tag is 66, an image that is not a pim build 65, and neither registers anything" {
  home missing
  run --separate-stderr pim-build pull --insecure --creds-env PIM_REG "$REG/team/nosuch:web"
  [ "$status" -eq 66 ]
  [[ "$stderr" == *"not found"* ]]
  run --separate-stderr pim-build pull --insecure --creds-env PIM_REG "$REG/team/images:nosuch"
  [ "$status" -eq 66 ]
  # the same image as docker's schema 2, which has no annotations: not a pim build
  skopeo copy -q --format v2s2 --src-tls-verify=false --src-creds "$PIM_REG" --dest-tls-verify=false --dest-creds "$PIM_REG" \
    "docker://$REG/team/images:web" "docker://$REG/team/plain:latest" >/dev/null
  run --separate-stderr pim-build pull --insecure --creds-env PIM_REG "$REG/team/plain:latest"
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"is not a pim build"* ]]
  run pim-build list -q
  [ -z "$output" ]
  [ -z "$(find "$XDG_DATA_HOME/pim/builds" -maxdepth 1 -name '.tmp-*' 2>/dev/null)" ]
}

@test "remote_cache: pim-build run in the second home is a hit from the registry (pinged while the key is computed), no QEMU started, the same sha256; --no-remote does not ask" {
  # a profile whose key is computed from a real catalog entry (an ISO served on loopback)
  W="$PIM_TMP/www"
  mkdir -p "$W/iso"
  echo "pim oci test" >"$W/iso/README"
  xorriso -as mkisofs -quiet -o "$W/tiny.iso" "$W/iso" 2>/dev/null
  port=$(serve_www "$W")
  conf() {
    mkdir -p "$XDG_CONFIG_HOME/pim/isos.d" "$XDG_CONFIG_HOME/pim/profiles.d"
    echo "tiny: {url: \"http://127.0.0.1:$port/tiny.iso\", checksum: \"sha256:$(sha256sum <"$W/tiny.iso" | cut -d' ' -f1)\", distro: debian}" >"$XDG_CONFIG_HOME/pim/isos.d/tiny.yml"
    echo "cached: {iso: tiny, disk_size: 64M, mem: 256M, cpus: 1}" >"$XDG_CONFIG_HOME/pim/profiles.d/cached.yml"
  }
  conf
  key=$(pim-build key cached)
  [[ "$key" =~ ^[0-9a-f]{64}$ ]]
  # home A: the test bed's guest registered as that build, pushed to the cache repository
  id="cached-${key:0:12}"
  tmpb=$(register cached seed-cached "$TESTBED/guest-full.qcow2")
  chmod 755 "$XDG_DATA_HOME/pim/builds/$tmpb"
  chmod 644 "$XDG_DATA_HOME/pim/builds/$tmpb"/*
  jq --arg k "$key" --arg id "$id" '.key=$k | .id=$id' "$XDG_DATA_HOME/pim/builds/$tmpb/build.json" >"$PIM_TMP/rec.json"
  cp "$PIM_TMP/rec.json" "$XDG_DATA_HOME/pim/builds/$tmpb/build.json"
  mv "$XDG_DATA_HOME/pim/builds/$tmpb" "$XDG_DATA_HOME/pim/builds/$id"
  pim-deploy "$id" cache >/dev/null
  # home B: the same profile, the cache in pim.yml, and a QEMU that only says it ran
  home cache
  conf
  [ "$(pim-build key cached)" = "$key" ]
  printf 'build:\n  remote_cache: {ref: "%s/team/cache", insecure: true, creds_env: PIM_REG}\n' "$REG" >"$XDG_CONFIG_HOME/pim/pim.yml"
  mkdir -p "$PIM_TMP/fakeqemu"
  for q in qemu-system-x86_64 qemu-img; do
    printf '#!/bin/sh\necho "$0 $*" >>"%s/qemu-ran"\nexit 1\n' "$PIM_TMP" >"$PIM_TMP/fakeqemu/$q"
    chmod +x "$PIM_TMP/fakeqemu/$q"
  done
  PATH="$PIM_TMP/fakeqemu:$PATH" run --separate-stderr env PIM_LOG=debug pim-build run cached
  [ "$status" -eq 0 ]
  [ "$output" = "$XDG_DATA_HOME/pim/builds/$id/cached.qcow2" ]
  [[ "$stderr" == *"pulled from the remote cache"* ]]
  # the registry's ping is under way while the profile's key is computed, not after it
  ping=$(grep -n "GET https://$REG/v2/\$" <<<"$stderr" | head -1 | cut -d: -f1)
  resolving=$(grep -n "resolving profile cached" <<<"$stderr" | head -1 | cut -d: -f1)
  [ -n "$ping" ] && [ -n "$resolving" ] && [ "$ping" -lt "$resolving" ]
  [ ! -e "$PIM_TMP/qemu-ran" ]
  [ "$(sha256sum <"$output" | cut -d' ' -f1)" = "$SUM" ]
  [ "$(pim-build list -q)" = "$id" ]
  # a local hit now: the registry is not needed, and no one is asked for credentials (the ping
  # that went on while the key was computed does not look them up: a helper may prompt)
  printf 'build:\n  remote_cache: {ref: "%s/team/cache", insecure: true}\n' "$REG" >"$XDG_CONFIG_HOME/pim/pim.yml"
  mkdir -p "$PIM_TMP/hitdocker" "$PIM_TMP/hitbin"
  printf '{"credHelpers": {"%s": "pimhit"}}\n' "$REG" >"$PIM_TMP/hitdocker/config.json"
  printf '#!/bin/sh\necho asked >>"%s/hit-helper-asked"\nexit 1\n' "$PIM_TMP" >"$PIM_TMP/hitbin/docker-credential-pimhit"
  chmod +x "$PIM_TMP/hitbin/docker-credential-pimhit"
  PATH="$PIM_TMP/hitbin:$PIM_TMP/fakeqemu:$PATH" DOCKER_CONFIG="$PIM_TMP/hitdocker" run --separate-stderr pim-build run cached --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .hit <<<"$output")" = true ]
  [ ! -e "$PIM_TMP/hit-helper-asked" ]
  # --no-remote: the cache is not asked, the build runs here (and fails: the ISO holds no installer)
  pim-build rm cached >/dev/null
  gets=$(grep -c "manifests/$id" "$REGDIR/registry.log" || true)
  PATH="$PIM_TMP/fakeqemu:$PATH" run --separate-stderr pim-build run cached --no-remote
  [ "$status" -ne 0 ]
  [[ "$stderr" != *"remote cache"* ]]
  [ "$(grep -c "manifests/$id" "$REGDIR/registry.log" || true)" = "$gets" ]
  run pim-build list -q
  [ -z "$output" ]
}

@test "remote_cache: an unreachable registry is a warning and the build goes on; push: true pushes what was built" {
  home rawcache
  mkdir -p "$XDG_CONFIG_HOME/pim/profiles.d"
  echo "blank: {builder: raw, disk_size: 32M}" >"$XDG_CONFIG_HOME/pim/profiles.d/blank.yml"
  dead=$(free_port)
  printf 'build:\n  remote_cache: {ref: "127.0.0.1:%s/team/cache", insecure: true, push: true}\n' "$dead" >"$XDG_CONFIG_HOME/pim/pim.yml"
  run --separate-stderr pim-build run blank
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"warning: remote cache"*"cannot reach"* ]]
  [ -f "$output" ]
  pim-build rm blank >/dev/null
  printf 'build:\n  remote_cache: {ref: "%s/team/cache", insecure: true, push: true, creds_env: PIM_REG}\n' "$REG" >"$XDG_CONFIG_HOME/pim/pim.yml"
  run --separate-stderr pim-build run blank --json
  [ "$status" -eq 0 ]
  id=$(jq -r .name <<<"$output")
  [[ "$stderr" == *"remote cache: no $id (a miss)"* ]]
  [[ "$stderr" == *"remote cache: pushed"* ]]
  run skopeo_ list-tags "docker://$REG/team/cache"
  [[ "$output" == *"\"$id\""* ]]
  [ "$(skopeo_ inspect --raw "docker://$REG/team/cache:$id" | jq -r '.annotations["dev.pim.build.disk.sha256"]')" = "$(sha256sum <"$XDG_DATA_HOME/pim/builds/$id/blank.qcow2" | cut -d' ' -f1)" ]
}

@test "the registry dies mid-push: the push fails 69, no tag names a half image, nothing is remembered as pushed; the next push, refused the old session, starts a new upload and completes" {
  head -c 48M /dev/urandom >"$PIM_TMP/big.qcow2"
  big=$(register big four "$PIM_TMP/big.qcow2")
  patches=$(reg_requests PATCH)
  PIM_OCI_CHUNK=256K pim-deploy big reg >"$PIM_TMP/push.out" 2>"$PIM_TMP/push.err" &
  pid=$!
  for _ in $(seq 600); do [ "$(reg_requests PATCH)" -gt "$((patches + 2))" ] && break; sleep 0.05; done
  [ "$(reg_requests PATCH)" -gt "$((patches + 2))" ]
  port=${REG##*:}
  kill_registry "$REGDIR"
  st=0
  wait "$pid" || st=$?
  [ "$st" -eq 69 ]
  grep -q "cannot reach\|HTTP 5" "$PIM_TMP/push.err"
  [ ! -e "$XDG_CACHE_HOME/pim/oci/$big.json" ]
  REG_PORT=$port start_registry "$REGDIR" tls
  run skopeo_ list-tags "docker://$REG/team/images"
  [[ "$output" != *"\"big"* ]]
  run --separate-stderr pim-deploy big reg --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .upload <<<"$output")" = uploaded ]
  # the session the dead push kept is refused by the restarted registry: a new upload, cleanly
  [[ "$stderr" == *"cannot be resumed"*"starting a new one"* ]]
  [ -z "$(ls "$XDG_CACHE_HOME/pim/oci/uploads/" 2>/dev/null | grep "^$big-")" ]
  [ "$(skopeo_ inspect --raw "docker://$REG/team/images:big" | jq -r '.annotations["dev.pim.build.disk.sha256"]')" = "$(sha256sum <"$PIM_TMP/big.qcow2" | cut -d' ' -f1)" ]
}

@test "a push stopped by SIGTERM finishes its chunk and keeps the session; the next push resumes it and sends only the rest (counted at the registry); the image verifies" {
  head -c 12M /dev/urandom >"$PIM_TMP/res.qcow2"
  id=$(register res five "$PIM_TMP/res.qcow2")
  chunk=1048576
  patches=$(reg_requests PATCH)
  PIM_OCI_CHUNK=1M pim-deploy "$id" reg >/dev/null 2>"$PIM_TMP/res.err" &
  pid=$!
  for _ in $(seq 600); do [ "$(reg_requests PATCH)" -gt "$((patches + 2))" ] && break; sleep 0.05; done
  kill -TERM "$pid"
  st=0
  wait "$pid" || st=$?
  [ "$st" -eq 143 ]
  grep -q "stopping after the chunk in flight" "$PIM_TMP/res.err"
  # the session kept; the registry holds whole chunks of it
  sess=$(echo "$XDG_CACHE_HOME"/pim/oci/uploads/"$id"-*.json)
  [ -f "$sess" ]
  uuid=$(jq -r .location "$sess" | sed 's|.*/blobs/uploads/||; s|?.*||')
  held=$(stat -c %s "$REGDIR/storage/docker/registry/v2/repositories/team/images/_uploads/$uuid/data")
  [ "$held" -eq "$(jq -r .offset "$sess")" ]
  [ "$held" -gt 0 ]
  [ $((held % chunk)) -eq 0 ]
  size=$(jq -r .size "$sess")
  [ "$held" -lt "$size" ]
  run skopeo_ list-tags "docker://$REG/team/images"
  [[ "$output" != *"\"$id\""* ]]
  patches=$(reg_requests PATCH)
  run --separate-stderr env PIM_OCI_CHUNK=1M pim-deploy "$id" reg
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"the registry has $held of $size bytes"* ]]
  [[ "$stderr" == *"sent $((size - held)) of $size bytes"* ]]
  # the registry took only the chunks it lacked
  [ "$(($(reg_requests PATCH) - patches))" -eq $(((size - held + chunk - 1) / chunk)) ]
  [ ! -e "$sess" ]
  [ "$(skopeo_ inspect --raw "docker://$REG/team/images:$id" | jq -r '.annotations["dev.pim.build.disk.sha256"]')" = "$(sha256sum <"$PIM_TMP/res.qcow2" | cut -d' ' -f1)" ]
  # the bytes the registry stored, both runs' together, hash to the layer's digest
  d=$(skopeo_ inspect --raw "docker://$REG/team/images:$id" | jq -r '.layers[0].digest' | cut -d: -f2)
  [ "$(sha256sum <"$REGDIR/storage/docker/registry/v2/blobs/sha256/${d:0:2}/$d/data" | cut -d' ' -f1)" = "$d" ]
}

@test "a corrupted blob on pull is 65 and registers nothing" {
  home corrupt
  d=$(skopeo_ inspect --raw "docker://$REG/team/images:web" | jq -r '.layers[0].digest' | cut -d: -f2)
  data="$REGDIR/storage/docker/registry/v2/blobs/sha256/${d:0:2}/$d/data"
  cp "$data" "$PIM_TMP/blob.bak"
  printf 'X' | dd of="$data" bs=1 seek=1000000 conv=notrunc status=none
  run --separate-stderr pim-build pull --insecure --creds-env PIM_REG "$REG/team/images:web"
  cp "$PIM_TMP/blob.bak" "$data"
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"does not match its digest"* ]]
  run pim-build list -q
  [ -z "$output" ]
  [ -z "$(find "$XDG_DATA_HOME/pim/builds" -maxdepth 1 -name '.tmp-*' 2>/dev/null)" ]
}

@test "the PROFILE tag follows the newest build: a newer build moves it, pushing an older one again leaves it" {
  B2=$(register web two "$TESTBED/guest-bare.qcow2")
  run --separate-stderr pim-deploy "$B2" reg
  [ "$status" -eq 0 ]
  tagged() { skopeo_ inspect --raw "docker://$REG/team/images:$1" | jq -r '.annotations["dev.pim.build.id"]'; }
  [ "$(tagged web)" = "$B2" ]
  run --separate-stderr pim-deploy "$B1" reg
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"stays on $B2, a newer build"* ]]
  [ "$(tagged web)" = "$B2" ]
  [ "$(tagged "$B1")" = "$B1" ]
}
