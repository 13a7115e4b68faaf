#!/usr/bin/env bats
# pim-deploy against a real libvirtd (Debian's libvirt 9, no systemd), started
# here with its own sockets, and reached both as qemu:///system (the full
# matrix) and as qemu+ssh:// through an sshd on loopback with its own host key
# and authorized key (fresh deploy, no-op, upgrade). Domains are type='qemu'
# (TCG: KVM fails here). The builds are the test bed's guest-full image (and a
# resized copy, so another sha256) registered as pim builds, an empty disk
# that never boots (the broken build), and 160 MiB of random data whose upload
# over qemu+ssh:// is long enough to kill it, or damage the far volume, while it runs.
# libvirtd and sshd: test/bats/libvirt.bash.
load helper
load libvirt
load deploy

LV_CONNECT() { lv_uri "$PIM_TMP"; }

setup_file() {
  pim_isolate
  need_testbed
  command -v libvirtd >/dev/null || skip "libvirtd is not installed (libvirt-daemon-system)"
  export XDG_STATE_HOME="$PIM_TMP/state"
  libvirt_up "$PIM_TMP"

  local c="$XDG_CONFIG_HOME/pim/targets.d"
  mkdir -p "$c"
  cat >"$c/test.yml" <<EOF
default: {type: libvirt, virt_type: qemu, network: user, pool: pimt, pool_path: "$PIM_TMP/pool", health_timeout: 60, shutdown_timeout: 20}
loc: {uri: "$(LV_CONNECT)"}
rem: {uri: "qemu+ssh://root@127.0.0.1:$SSHD_PORT/system?socket=$PIM_TMP/lv/libvirt-sock"}
box: {type: ssh, host: root@127.0.0.1, port: $SSHD_PORT}
EOF
  # the builds: the test bed's guest, the same guest with another sha256, and a disk that never boots
  cp "$TESTBED/guest-full.qcow2" "$PIM_TMP/two.qcow2"
  qemu-img resize -q "$PIM_TMP/two.qcow2" +1M
  qemu-img create -q -f qcow2 "$PIM_TMP/broken.qcow2" 64M
  B1=$(register web one "$TESTBED/guest-full.qcow2")
  B2=$(register web two "$PIM_TMP/two.qcow2")
  B3=$(register web three "$PIM_TMP/broken.qcow2")
  printf 'B1=%s\nB2=%s\nB3=%s\n' "$B1" "$B2" "$B3" >"$PIM_TMP/builds"
}

teardown_file() {
  [ -n "${PIM_TMP:-}" ] || return 0
  libvirt_down "$PIM_TMP"
  pim_cleanup
}

setup() {
  # shellcheck disable=SC1091
  . "$PIM_TMP/builds"
  export PATH="$PIM_TMP/bin:$PATH"
}

V() { virsh -q -c "$(LV_CONNECT)" "$@"; }
agent_ping() { V qemu-agent-command "$1" '{"execute":"guest-ping"}' --timeout 5; }
meta_build() { V dumpxml --inactive "$1" | sed -n 's/.*<pim:deploy .* build="\([^"]*\)".*/\1/p'; }
vols() { V vol-list pimt | awk '{print $1}' | sort; }

@test "a fresh deploy uploads the volume named after the hash, defines the domain from the build and the guest agent answers" {
  run --separate-stderr pim-deploy "$B1" loc --dry-run
  [ "$status" -eq 0 ]
  [[ "$output" == *$'web\tpool\tcreate'* ]]
  [[ "$output" == *$'web\tupload\tupload\tweb-'* ]]
  [[ "$output" == *$'web\tdomain\tdefine'* ]]
  ! V dominfo web 2>/dev/null # the dry run changed nothing
  sha=$(sha256sum "$TESTBED/guest-full.qcow2" | cut -c1-12)
  run --separate-stderr pim-deploy "$B1" loc
  [ "$status" -eq 0 ]
  [ "$output" = "$(printf 'web\tloc\t%s\tweb-%s.qcow2\tuploaded\tdefined' "$B1" "$sha")	${output##*defined	}" ]
  agent_ping web | grep -q '"return"'
  [ "$(meta_build web)" = "$B1" ]
  V dumpxml web | grep -q "<domain type='qemu'"
  V dumpxml web | grep -q "<memory unit='KiB'>262144</memory>"
  [ "$(sha256sum "$PIM_TMP/pool/web-$sha.qcow2" | cut -c1-12)" = "$sha" ]
  [ "$(vols)" = "web-$sha.qcow2" ] # the upload marker is gone
  run pim-deploy list loc
  [ "$status" -eq 0 ]
  [ "$output" = "$(printf 'web\t%s\tweb\tweb-%s.qcow2\trunning' "$B1" "$sha")" ]
}

@test "re-deploying the same build is a no-op: no upload, no redefine, the guest keeps running" {
  pid=$(pgrep -f 'guest=web,' | head -1)
  uuid=$(V domuuid web)
  start=$(date +%s%N)
  run --separate-stderr env PIM_LOG=debug pim-deploy "$B1" loc
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tskipped\tkept\t'* ]]
  [[ "$stderr" != *vol-upload* && "$stderr" != *define* && "$stderr" != *start* ]]
  [ "$(( ($(date +%s%N) - start) / 1000000 ))" -lt "$(slow 2000)" ]
  [ "$(pgrep -f 'guest=web,' | head -1)" = "$pid" ]
  [ "$(V domuuid web)" = "$uuid" ]
}

@test "an upgrade to another build keeps the UUID, saves the old definition, and the new guest answers" {
  uuid=$(V domuuid web)
  run --separate-stderr pim-deploy "$B2" loc
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tupgraded\t'* ]]
  [ "$(V domuuid web)" = "$uuid" ]
  [ "$(meta_build web)" = "$B2" ]
  grep -q "$B1" "$XDG_STATE_HOME/pim/deploy/loc/web.prev.xml"
  agent_ping web | grep -q '"return"'
}

@test "a broken build fails its health check: the old definition is restored and running, exit 79" {
  uuid=$(V domuuid web)
  run --separate-stderr pim-deploy "$B3" loc --health-timeout 6
  [ "$status" -eq 79 ]
  [ -z "$output" ]
  [[ "$stderr" == *"no agent health within 6 s"*"previous definition ($B2) is back and running"* ]]
  [ "$(meta_build web)" = "$B2" ]
  [ "$(V domstate web)" = running ]
  [ "$(V domuuid web)" = "$uuid" ]
}

@test "a volume on the far side whose sha256 does not check out is uploaded again" {
  # the broken build's volume is left from the rollback: damage it, then deploy it under another name
  sha3=$(sha256sum "$PIM_TMP/broken.qcow2" | cut -c1-12)
  V vol-clone --pool pimt "web-$sha3.qcow2" "bad-$sha3.qcow2" >/dev/null
  printf 'garbage' | dd of="$PIM_TMP/pool/bad-$sha3.qcow2" bs=1 seek=100000 conv=notrunc status=none
  run --separate-stderr pim-deploy "$B3" loc --name bad --dry-run
  [ "$status" -eq 0 ]
  [[ "$output" == *$'bad\tclean\tdelete\tbad-'"$sha3"'.qcow2 (sha256 mismatch)'* ]]
  [[ "$output" == *$'bad\tupload\tupload'* ]]
  [[ "$stderr" == *"its sha256 is"* ]]
  run --separate-stderr pim-deploy "$B3" loc --name bad --health-timeout 1
  [ "$status" -eq 79 ] # it never boots; what matters is the volume
  [ "$(sha256sum "$PIM_TMP/pool/bad-$sha3.qcow2" | cut -c1-12)" = "$sha3" ]
  ! V dominfo bad 2>/dev/null # a new domain that failed is removed again
}

# big_build: a 160 MiB build of random data (it never boots), made once; prints its id.
# Over qemu+ssh:// its upload takes about a second here: long enough to act during it.
big_build() {
  if [ ! -f "$PIM_TMP/big.id" ]; then
    head -c 167772160 /dev/urandom >"$PIM_TMP/big.qcow2"
    register big four "$PIM_TMP/big.qcow2" >"$PIM_TMP/big.id"
    rm -f "$PIM_TMP/big.qcow2"
  fi
  cat "$PIM_TMP/big.id"
}

# mid_upload NAME SRC: wait (up to 2 min) until NAME's upload marker is there and the
# volume's bytes at 8 MiB are SRC's (random data: the upload has passed that point) while
# its last bytes are not yet; prints the volume's file. Its size on disk says nothing:
# libvirt may allocate the whole volume before vol-upload writes a byte.
mid_upload() {
  local f mark=$((8 * 1024 * 1024)) size tail
  size=$(stat -c %s "$2")
  tail=$((size - 4096))
  for _ in $(seq 2400); do
    f=$(compgen -G "$PIM_TMP/pool/$1-*.qcow2" || true)
    if [ -n "$f" ] && [ -e "$f.uploading" ] &&
      cmp -s -n 4096 -i "$mark:$mark" "$f" "$2" && ! cmp -s -n 4096 -i "$tail:$tail" "$f" "$2"; then
      echo "$f"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

@test "an upload killed part-way (kill -9 of pim-deploy and its virsh mid-upload) is cleaned up by the next run" {
  big=$(big_build)
  sha=$(sha256sum "$XDG_DATA_HOME/pim/builds/$big/big.qcow2" | cut -c1-64)
  # its own session, so that kill -9 takes pim-deploy and the virsh it runs, as a closed terminal does
  setsid pim-deploy "$big" rem --name killed >/dev/null 2>&1 3>&- &
  pid=$!
  f=$(mid_upload killed "$XDG_DATA_HOME/pim/builds/$big/big.qcow2")
  kill -9 -- -"$pid"
  wait "$pid" || true
  [ -e "$f.uploading" ]                                                # the marker is left
  [ "$(stat -c %s "$f")" -gt 0 ]
  [ "$(sha256sum "$f" | cut -c1-64)" != "$sha" ]                       # and the volume is not whole
  run --separate-stderr pim-deploy "$big" rem --name killed --dry-run
  [[ "$output" == *$'killed\tclean\tdelete\tkilled-'"${sha:0:12}"'.qcow2 (an upload that did not finish)'* ]]
  run --separate-stderr pim-deploy "$big" rem --name killed --health-timeout 1
  [ "$status" -eq 79 ] # random data never boots; what matters is the volume
  [[ "$stderr" == *"start failed"* || "$stderr" == *"no agent health"* ]]
  [ "$(sha256sum "$f" | cut -c1-64)" = "$sha" ]
  ! vols | grep -q uploading
}

@test "a fault injected into the far volume during the upload is caught by the far-side sha256: 65, the volume deleted, nothing defined" {
  big=$(big_build)
  # its own session, so that the whole upload (pim-deploy, virsh, ssh) can be held while
  # the fault goes in: on a loaded machine it could otherwise finish first
  setsid pim-deploy "$big" rem --name faulty >"$PIM_TMP/faulty.out" 2>"$PIM_TMP/faulty.err" 3>&- &
  pid=$!
  f=$(mid_upload faulty "$XDG_DATA_HOME/pim/builds/$big/big.qcow2")
  kill -STOP -- -"$pid"
  # bytes the upload has written already are overwritten under it
  printf 'a fault' | dd of="$f" bs=1 seek=4096 conv=notrunc,fsync status=none
  kill -CONT -- -"$pid"
  status=0
  wait "$pid" || status=$?
  [ "$status" -eq 65 ]
  grep -q "sha256 mismatch: the far side's copy hashes to" "$PIM_TMP/faulty.err"
  grep -q "the volume was deleted and nothing was defined" "$PIM_TMP/faulty.err"
  [ ! -s "$PIM_TMP/faulty.out" ]
  ! vols | grep -q faulty
  ! V dominfo faulty 2>/dev/null
}

@test "garbage collection keeps --keep volumes of the name and never one a domain uses" {
  sha1=$(sha256sum "$TESTBED/guest-full.qcow2" | cut -c1-12)
  sha2=$(sha256sum "$PIM_TMP/two.qcow2" | cut -c1-12)
  sha3=$(sha256sum "$PIM_TMP/broken.qcow2" | cut -c1-12)
  # web's volumes: one (old), two (current), three (the broken one); a stopped domain "holder" uses one
  V dumpxml web | sed -e "s/<name>web</<name>holder</" -e '/<uuid>/d' -e "s/web-$sha2/web-$sha1/" -e '/<metadata>/,/<\/metadata>/d' >"$PIM_TMP/holder.xml"
  V define "$PIM_TMP/holder.xml" >/dev/null
  run --separate-stderr pim-deploy "$B2" loc --keep 1
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tskipped\tkept\t'* ]]
  vols | grep -qx "web-$sha2.qcow2"      # the current one
  vols | grep -qx "web-$sha1.qcow2"      # in use by holder
  ! vols | grep -qx "web-$sha3.qcow2"    # old and unused: gone
  [[ "$stderr" == *"web-$sha1.qcow2 is still in use"* ]]
  V undefine holder >/dev/null
}

@test "qemu+ssh://: a fresh deploy comes up and a re-deploy of it is a no-op" {
  run --separate-stderr pim-deploy "$B1" rem --name rweb
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tdefined\t'* ]]
  agent_ping rweb | grep -q '"return"'
  uuid=$(V domuuid rweb)
  run --separate-stderr env PIM_LOG=debug pim-deploy "$B1" rem --name rweb
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tskipped\tkept\t'* ]]
  [[ "$stderr" != *vol-upload* && "$stderr" != *define* ]]
  [ "$(V domuuid rweb)" = "$uuid" ]
}

@test "qemu+ssh://: an upgrade keeps the UUID; list reads what pim deployed" {
  uuid=$(V domuuid rweb)
  run --separate-stderr pim-deploy "$B2" rem --name rweb
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tupgraded\t'* ]]
  [ "$(V domuuid rweb)" = "$uuid" ]
  run pim-deploy list rem -q
  [[ "$output" == *rweb* && "$output" == *web* ]]
  V destroy rweb >/dev/null
}

@test "an ssh host: the build is copied into the remote user's store, verified and registered; again, it is skipped" {
  run --separate-stderr pim-deploy "$B1" box
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tdefined\t'* ]]
  [ "$(sha256sum "$PIM_TMP/remote/pim/builds/$B1/web.qcow2" | cut -c1-64)" = "$(sha256sum "$TESTBED/guest-full.qcow2" | cut -c1-64)" ]
  XDG_DATA_HOME="$PIM_TMP/remote" run pim-build list -q
  [ "$output" = "$B1" ] # pim on that host sees it as a build
  run --separate-stderr pim-deploy "$B1" box
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tskipped\tkept\t'* ]]
  run pim-deploy list box -q
  [ "$output" = "$B1" ]
}

@test "bad input: an unknown target is 66, a broken targets.d is 78 at FILE:LINE, --keep 0 is 64" {
  run --separate-stderr pim-deploy "$B1" nosuch
  [ "$status" -eq 66 ]
  [[ "$stderr" == *'no deploy target named "nosuch"'* ]]
  run --separate-stderr pim-deploy "$B1" loc --keep 0
  [ "$status" -eq 64 ]
  run --separate-stderr pim-deploy nosuchbuild loc
  [ "$status" -eq 66 ]
  mkdir -p "$PIM_TMP/badcfg/pim/targets.d"
  printf 'x:\n  type: libvirt\n  health: sometimes\n' >"$PIM_TMP/badcfg/pim/targets.d/x.yml"
  XDG_CONFIG_HOME="$PIM_TMP/badcfg" run --separate-stderr pim-deploy "$B1" x
  [ "$status" -eq 78 ]
  [[ "$stderr" == *"x.yml:3"* ]]
}
