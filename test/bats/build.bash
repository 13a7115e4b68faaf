# The shared set-up of the build tests (build, layers, cloudbuild, realcloud.bats),
# loaded after helper.bash: a pim home of the test file's own, the test bed, and the
# installer ISOs or images served to pim's catalog from a loopback HTTP server.
#
# build_home: private XDG dirs (state too, for the build logs), the test bed, and the
#   config dirs a build reads; sets C, the config dir ($XDG_CONFIG_HOME/pim).
# build_www FILE...: FILEs linked into $PIM_TMP/www with their SHA256SUMS, served on
#   loopback; sets U, the server's URL.
# www_entry NAME FILE [SETTING...]: the catalog entry NAME for the served FILE, checked
#   against SHA256SUMS, with SETTINGs ("distro: debian", "kind: image") added.
# tb_defaults [SETTING...]: a profiles.d file's default: entry: root over SSH with the
#   test bed's key kept in ssh_keys (pim's own build key is removed at the end of each
#   build), 256M of memory, one CPU, then each SETTING on a line.
# boot_build PROFILE [NAME]: PROFILE's build booted with pim-run (as NAME), small; waits
#   for the test bed's "pim-testbed ready" on its console (120 s, times PIM_TEST_SLOW).
# build_teardown: the server stopped, every VM stopped, the test file's dirs removed.

build_home() {
  pim_isolate
  need_testbed
  export XDG_STATE_HOME="$PIM_TMP/state"
  C="$XDG_CONFIG_HOME/pim"
  mkdir -p "$C/isos.d" "$C/profiles.d" "$C/scripts.d" "$C/installs.d" "$C/sources.d" "$C/preseeds.d"
}

build_www() {
  local w="$PIM_TMP/www" f
  mkdir -p "$w"
  for f in "$@"; do ln -s "$f" "$w/${f##*/}"; done
  (cd "$w" && sha256sum -- "${@##*/}" >SHA256SUMS)
  U="http://127.0.0.1:$(serve_www "$w")"
}

www_entry() {
  local name="$1" file="$2"; shift 2
  local s
  printf '%s: {url: "%s/%s", checksum_url: "%s/SHA256SUMS"' "$name" "$U" "$file" "$U"
  for s in "$@"; do printf ', %s' "$s"; done
  printf '}\n'
}

tb_defaults() {
  printf 'default:\n  ssh_user: root\n  ssh_keys: ["%s"]\n  mem: 256M\n  cpus: 1\n' "$(cat "$TESTBED/id_ed25519.pub")"
  [ "$#" -eq 0 ] || printf '  %s\n' "$@"
}

boot_build() {
  local name="${2:-$1}"
  pim-run "$1" ${2:+--name "$2"} --mem 256M --cpus 1
  pim-console "$name" --ro --replay --until 'pim-testbed ready' --timeout "$(slow 120)" >/dev/null
}

build_teardown() {
  stop_www
  pim_cleanup
}

# said_or_ended FILE MARK PID: the pim-build in the background (PID, its stderr in FILE)
# has printed MARK, or has ended
said_or_ended() { grep -q "$2" "$1" || pid_gone "$3"; }

# ssh_vm NAME CMD...: CMD as root in the VM NAME over its forwarded SSH port, with the
# test bed's key (its host key not pinned: a built image's is new)
ssh_vm() {
  local name="$1"; shift
  local port
  port=$(pim-ps --json | jq -r --arg n "$name" 'select(.name==$n).ssh_port')
  ssh -i "$TESTBED/id_ed25519" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=20 root@127.0.0.1 "$@"
}
