#!/usr/bin/env bats
# pim's answer files against the real tools, for the default profile and a
# demanding one (a non-root ssh_user other than username, two keys, packages,
# a password, hostname and domain):
#   - every preseed through debconf-set-selections --checkonly (debconf);
#   - every cloud-config (Ubuntu autoinstall user-data, builder: cloud-init
#     user-data) through `cloud-init schema` (Debian's cloud-init package);
#   - the autoinstall section through subiquity's autoinstall-schema.json
#     (test/fixtures/subiquity);
#   - the Debian late_command and the Ubuntu late-commands run as the installers
#     run them (`sh -c`; `in-target CMD` and `curtin in-target -- CMD` are
#     `chroot /target CMD`) in a real bookworm root made with mmdebstrap
#     (test/testbed/debian-root.sh, cached), then the result checked with the
#     target's own tools: id, stat, visudo -cf, sudo -l, passwd -S, sshd -T.
load helper

# Debian's python3: the one cloud-init's own modules (and python3-jsonschema, python3-yaml) are for
PY=/usr/bin/python3

setup_file() {
  # the root is cached in the real cache dir (~/.cache/pim), before pim_isolate changes it
  DEBIAN_ROOT="$(bash "$REPO/test/testbed/debian-root.sh")/root"
  export DEBIAN_ROOT
  pim_isolate
  export PIM_TMP
  ssh-keygen -q -t ed25519 -N '' -C one@host -f "$PIM_TMP/k1"
  ssh-keygen -q -t ed25519 -N '' -C two@host -f "$PIM_TMP/k2"
  local k1 k2
  k1=$(cat "$PIM_TMP/k1.pub") k2=$(cat "$PIM_TMP/k2.pub")
  mkdir -p "$XDG_CONFIG_HOME/pim/profiles.d" "$PIM_TMP/out"
  cat >"$XDG_CONFIG_HOME/pim/profiles.d/answers.yml" <<EOF
hard:
  hostname: web1
  domain: example.org
  username: alice
  fullname: Alice Doe
  ssh_user: deploy
  password: "s3cret pass'word"
  ssh_keys: ["$k1", "$k2"]
  packages: [nginx, htop]
ubuntu: {distro: ubuntu, iso: x}
hardu:
  distro: ubuntu
  iso: x
  hostname: web2
  username: alice
  ssh_user: deploy
  password: "s3cret pass'word"
  ssh_keys: ["$k1", "$k2"]
  packages: [nginx]
# builder: cloud-init, as pim-build serves it (its own key added)
cloud: {builder: cloud-init, image: x, ssh_keys: ["$k1"]}
hardc:
  builder: cloud-init
  image: x
  hostname: web3
  domain: example.org
  ssh_user: deploy
  password: "s3cret pass'word"
  ssh_keys: ["$k1", "$k2"]
  packages: [nginx]
EOF
}
teardown_file() {
  pim_cleanup
}
setup() {
  rm -rf "$PIM_TMP/di" # each test starts from the cached root
}
teardown() {
  stop_serve
}

# serve PROFILE: pim-serve on a free loopback port; sets URL
serve() {
  pim-serve "$1" --port 0 >"$PIM_TMP/url" 2>"$PIM_TMP/serve.log" 3>&- </dev/null &
  echo $! >"$PIM_TMP/serve.pid"
  for _ in $(seq 100); do [ -s "$PIM_TMP/url" ] && break; sleep 0.1; done
  URL=$(cat "$PIM_TMP/url")
  [ -n "$URL" ]
}
stop_serve() {
  [ -f "$PIM_TMP/serve.pid" ] || return 0
  kill "$(cat "$PIM_TMP/serve.pid")" 2>/dev/null || true
  rm -f "$PIM_TMP/serve.pid" "$PIM_TMP/url"
}
# fetch PROFILE ROUTE: what pim-serve answers, into $PIM_TMP/out/PROFILE.ROUTE
fetch() {
  serve "$1"
  curl -fsS "$URL/$2" >"$PIM_TMP/out/$1.$2"
  stop_serve
}

# A late command as the installer runs it: the root as the installer's own
# system with a copy of it at /target (two overlays over the cached root, in a
# private mount namespace; their upper dirs keep what the command did), and the
# in-target and curtin shims on PATH. in_target CMD... runs CMD in the target.
in_installer() {
  local w="$PIM_TMP/di"
  mkdir -p "$w"/{env,target,eu,ew,tu,tw}
  cat >"$w/ns.sh" <<'EOF'
set -e
w=$1; shift
mount -t overlay overlay -o "lowerdir=$DEBIAN_ROOT,upperdir=$w/eu,workdir=$w/ew" "$w/env"
mount -t overlay overlay -o "lowerdir=$DEBIAN_ROOT,upperdir=$w/tu,workdir=$w/tw" "$w/target"
mount --bind "$w/target" "$w/env/target"
mkdir -p "$w/target/run/sshd"
printf '#!/bin/sh\n# d-i: in-target CMD runs CMD chrooted into /target\nexec chroot /target "$@"\n' >"$w/env/usr/local/bin/in-target"
printf '#!/bin/sh\n# curtin in-target -- CMD: CMD chrooted into /target\n[ "$1" = in-target ] || exit 2\nshift; [ "$1" = -- ] && shift\nexec chroot /target "$@"\n' >"$w/env/usr/local/bin/curtin"
chmod 755 "$w/env/usr/local/bin/in-target" "$w/env/usr/local/bin/curtin"
exec "$@"
EOF
  unshare -m bash "$w/ns.sh" "$w" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$w/env" "$@"
}
in_target() {
  in_installer chroot /target "$@"
}

# the value of a preseed question, its lines joined as debconf joins them
preseed_value() {
  sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | sed -n "s|^d-i $2 [a-z]* ||p"
}

@test "every preseed passes debconf-set-selections --checkonly, and starts with #_preseed_V1" {
  for p in default hard; do
    fetch "$p" preseed.cfg
    run debconf-set-selections --checkonly "$PIM_TMP/out/$p.preseed.cfg"
    echo "$output"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    [ "$(head -n 1 "$PIM_TMP/out/$p.preseed.cfg")" = '#_preseed_V1' ]
  done
}

@test "every cloud-config passes cloud-init schema: Ubuntu autoinstall and builder: cloud-init user-data" {
  for p in ubuntu hardu cloud hardc; do
    fetch "$p" user-data
    run cloud-init schema --config-file "$PIM_TMP/out/$p.user-data"
    echo "$p: $output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"Valid cloud-config"* ]]
  done
  # and the vendor-data pim-build puts on a generalized build's seed
  node --input-type=module -e "process.stdout.write((await import('$REPO/lib/builder/cloud.ts')).BUILD_VENDOR_DATA)" >"$PIM_TMP/out/vendor-data"
  grep -q '^ssh_genkeytypes: \[ed25519\]$' "$PIM_TMP/out/vendor-data"
  run cloud-init schema --config-file "$PIM_TMP/out/vendor-data"
  echo "vendor-data: $output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"Valid cloud-config"* ]]
}

@test "the Ubuntu autoinstall section passes subiquity's autoinstall-schema.json" {
  for p in ubuntu hardu; do
    fetch "$p" user-data
    run "$PY" -c '
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.validate(yaml.safe_load(open(sys.argv[2]))["autoinstall"], schema)
' "$REPO/test/fixtures/subiquity/autoinstall-schema.json" "$PIM_TMP/out/$p.user-data"
    echo "$p: $output"
    [ "$status" -eq 0 ]
  done
}

@test "network-config: cloud-init's own loader reads pim's as no config (its fallback), not an error" {
  fetch default network-config
  run "$PY" -c '
import sys
from cloudinit import util
print(repr(util.load_yaml(open(sys.argv[1]).read())))
' "$PIM_TMP/out/default.network-config"
  [ "$status" -eq 0 ]
  [ "$output" = None ]
}

@test "Debian late_command on a real bookworm root: a non-root ssh_user is created, its two keys installed, sudo works; the password's hash is set" {
  serve hard
  curl -fsS "$URL/preseed.cfg" >"$PIM_TMP/out/hard.cfg"
  # what d-i's user-setup does before it: username with the preseeded crypted password
  local hash
  hash=$(preseed_value "$PIM_TMP/out/hard.cfg" passwd/user-password-crypted)
  [[ "$hash" == '$6$'* ]]
  in_target useradd -m -s /bin/bash -c 'Alice Doe' alice
  in_target usermod -p "$hash" alice
  run in_installer sh -c "$(preseed_value "$PIM_TMP/out/hard.cfg" preseed/late_command)"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"pim: install finished"* ]] # installs.d/hard.sh (default's) came from pim-serve and ran in the target
  run in_target id -u deploy
  [ "$status" -eq 0 ]
  run in_target stat -c '%a %U:%G' /home/deploy/.ssh /home/deploy/.ssh/authorized_keys
  [ "${lines[0]}" = '700 deploy:deploy' ]
  [ "${lines[1]}" = '600 deploy:deploy' ]
  diff <(cat "$PIM_TMP/k1.pub" "$PIM_TMP/k2.pub") "$PIM_TMP/di/tu/home/deploy/.ssh/authorized_keys"
  run in_target visudo -cf /etc/sudoers.d/pim
  [ "$status" -eq 0 ]
  run in_target stat -c '%a %U' /etc/sudoers.d/pim
  [ "$output" = '440 root' ]
  run in_target sudo -l -U deploy
  [[ "$output" == *"(ALL) NOPASSWD: ALL"* ]]
  # a password is set: alice has its hash, sshd keeps Debian's default
  run in_target getent shadow alice
  [[ "$output" == "alice:$hash:"* ]]
  [ ! -e "$PIM_TMP/di/tu/etc/ssh/sshd_config.d/10-pim.conf" ]
  run grep -c "s3cret" "$PIM_TMP/out/hard.cfg"
  [ "$output" = 0 ]
}

@test "Debian late_command, default profile: the account locked, sshd with PasswordAuthentication no, the key installed" {
  serve default
  curl -fsS "$URL/preseed.cfg" >"$PIM_TMP/out/default.cfg"
  local hash
  hash=$(preseed_value "$PIM_TMP/out/default.cfg" passwd/user-password-crypted)
  [ "$hash" = '!' ]
  in_target useradd -m -s /bin/bash pim
  in_target usermod -p "$hash" pim
  run in_installer sh -c "$(preseed_value "$PIM_TMP/out/default.cfg" preseed/late_command)"
  echo "$output"
  [ "$status" -eq 0 ]
  run in_target passwd -S pim
  [[ "$output" == "pim L "* ]]
  run in_target sshd -T
  echo "$output" | grep -i authentication
  [ "$status" -eq 0 ]
  grep -qx 'passwordauthentication no' <<<"$output"
  grep -qx 'kbdinteractiveauthentication no' <<<"$output"
  grep -qx 'pubkeyauthentication yes' <<<"$output"
  run in_target stat -c '%a %U:%G' /home/pim/.ssh /home/pim/.ssh/authorized_keys
  [ "${lines[0]}" = '700 pim:pim' ]
  [ "${lines[1]}" = '600 pim:pim' ]
  run in_target visudo -cf /etc/sudoers.d/pim
  [ "$status" -eq 0 ]
}

@test "Ubuntu late-commands on a real root: ssh_user created with its keys, sudo, and without a password key-only sshd" {
  for p in hardu ubuntu; do
    rm -rf "$PIM_TMP/di"
    serve "$p"
    curl -fsS "$URL/user-data" >"$PIM_TMP/out/$p.ud"
    # what subiquity does first (create_users): useradd, then chpasswd -e with identity.password
    "$PY" -c 'import sys, yaml; i = yaml.safe_load(open(sys.argv[1]))["autoinstall"]["identity"]; print(i["username"]); print(i["password"])' "$PIM_TMP/out/$p.ud" >"$PIM_TMP/identity"
    local user pw
    user=$(sed -n 1p "$PIM_TMP/identity") pw=$(sed -n 2p "$PIM_TMP/identity")
    in_target useradd "$user" --shell /bin/bash --create-home
    echo "$user:$pw" | in_target chpasswd --encrypted
    # each late-command with sh -c, in order, as subiquity runs them
    "$PY" -c 'import sys, yaml; [print(c) for c in yaml.safe_load(open(sys.argv[1]))["autoinstall"]["late-commands"]]' "$PIM_TMP/out/$p.ud" >"$PIM_TMP/late"
    while IFS= read -r cmd; do
      run in_installer sh -c "$cmd"
      echo "$p: $cmd: $output"
      [ "$status" -eq 0 ]
    done <"$PIM_TMP/late"
    stop_serve
    run in_target visudo -cf /etc/sudoers.d/pim
    [ "$status" -eq 0 ]
    if [ "$p" = hardu ]; then
      run in_target stat -c '%a %U:%G' /home/deploy/.ssh /home/deploy/.ssh/authorized_keys
      [ "${lines[0]}" = '700 deploy:deploy' ]
      [ "${lines[1]}" = '600 deploy:deploy' ]
      diff <(cat "$PIM_TMP/k1.pub" "$PIM_TMP/k2.pub") "$PIM_TMP/di/tu/home/deploy/.ssh/authorized_keys"
      run in_target sudo -l -U deploy
      [[ "$output" == *"(ALL) NOPASSWD: ALL"* ]]
      run in_target passwd -S alice
      [[ "$output" == "alice P "* ]]
      run in_target sshd -T
      grep -qx 'passwordauthentication yes' <<<"$output"
    else
      run in_target passwd -S pim
      [[ "$output" == "pim L "* ]]
      run in_target sshd -T
      grep -qx 'passwordauthentication no' <<<"$output"
      grep -qx 'kbdinteractiveauthentication no' <<<"$output"
    fi
  done
}
