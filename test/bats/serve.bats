#!/usr/bin/env bats
# pim-serve from the shell: URL on stdout, a line per request on stderr, busy port 75,
# and a real guest of the test bed fetching the preseed through 10.0.2.2.
load helper

setup_file() {
  pim_isolate
  export PIM_TMP
  mkdir -p "$XDG_CONFIG_HOME/pim/profiles.d"
  printf 'guest:\n  hostname: from-the-guest\n' > "$XDG_CONFIG_HOME/pim/profiles.d/guest.yml"
  pim-serve guest --port 0 >"$PIM_TMP/url" 2>"$PIM_TMP/serve.log" 3>&- </dev/null &
  echo $! > "$PIM_TMP/serve.pid"
  for _ in $(seq 50); do [ -s "$PIM_TMP/url" ] && break; sleep 0.1; done
}
teardown_file() {
  kill "$(cat "$PIM_TMP/serve.pid")" 2>/dev/null || true
  pim_cleanup
}

url() { cat "$PIM_TMP/url"; }

@test "prints its URL, binds to loopback, logs each request on stderr" {
  [[ "$(url)" =~ ^http://127\.0\.0\.1:[0-9]+$ ]]
  run curl -fsS "$(url)/preseed.cfg"
  [ "$status" -eq 0 ]
  [[ "$output" == *"d-i netcfg/get_hostname string from-the-guest"* ]]
  run curl -fsS "$(url)/installs.d/guest.sh"
  [[ "$output" == *"install finished"* ]]
  grep -q 'GET "/preseed.cfg" 200' "$PIM_TMP/serve.log"
  run curl -s -o /dev/null -w '%{http_code}' --path-as-is "$(url)/installs.d/../profiles.d/guest.yml"
  [ "$output" = 404 ]
}

@test "a busy port exits 75; an unknown profile 66; a bad port 64" {
  port=$(url); port=${port##*:}
  run --separate-stderr pim-serve guest --port "$port"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"port $port on 127.0.0.1 is in use"* ]]
  run pim-serve nope --port 0
  [ "$status" -eq 66 ]
  run pim-serve --port 99999
  [ "$status" -eq 64 ]
}

@test "the --help example runs as written: the URL read from a coprocess, the server stopped after" {
  printf 'dev:\n  hostname: from-the-example\n' > "$XDG_CONFIG_HOME/pim/profiles.d/dev.yml"
  line=$(pim-serve --help | grep -m1 '^  coproc ')
  line=${line#  }
  echo "$line"
  # wait: the script ends only once the server has exited (no orphan)
  run --separate-stderr timeout 20 bash -c "$line"'; wait "$COPROC_PID"; echo "server exited: $?"'
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"d-i netcfg/get_hostname string from-the-example"* ]]
  [[ "$output" == *"server exited: 0" ]]   # SIGTERM is its clean stop
  rm "$XDG_CONFIG_HOME/pim/profiles.d/dev.yml"
}

@test "POST and other methods are 405 with Allow: GET, HEAD" {
  run curl -s -o /dev/null -w '%{http_code}' -X POST -d x "$(url)/preseed.cfg"
  [ "$output" = 405 ]
  run curl -s -D - -o /dev/null -X DELETE "$(url)/preseed.cfg"
  [[ "$output" == *"Allow: GET, HEAD"* ]]
}

@test "a test-bed guest fetches the preseed with busybox wget through 10.0.2.2" {
  need_testbed
  boot_guest full srv
  port=$(url); port=${port##*:}
  ssh_port=$(pim-ps --json | node -e 'for (const l of require("fs").readFileSync(0,"utf8").trim().split("\n")) { const r = JSON.parse(l); if (r.name === "srv") console.log(r.ssh_port) }')
  run ssh -i "$TESTBED/id_ed25519" -p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=30 \
    root@127.0.0.1 "busybox wget -qO- http://10.0.2.2:$port/preseed.cfg"
  [ "$status" -eq 0 ]
  [[ "$output" == *"d-i netcfg/get_hostname string from-the-guest"* ]]
  # the template saw the URL the guest used
  [[ "$output" == *"http://10.0.2.2:$port/installs.d/guest.sh"* ]]
  grep -q 'GET "/preseed.cfg" 200' "$PIM_TMP/serve.log"
  pim-stop srv --force --timeout 5 >/dev/null 2>&1 || true
}

@test "a profile's env_hook sets vars that its templates use; a failing hook stops the server before it binds (78)" {
  c="$XDG_CONFIG_HOME/pim"
  mkdir -p "$c/hooks.d" "$c/preseeds.d"
  printf 'hooked: {env_hook: stamp.sh}\nbroken: {env_hook: fails.sh}\n' >"$c/profiles.d/hooked.yml"
  printf '#!/bin/sh\necho "stamp=made for $PIM_PROFILE"\n' >"$c/hooks.d/stamp.sh"
  printf '#!/bin/sh\necho "cannot reach the vault" >&2\nexit 2\n' >"$c/hooks.d/fails.sh"
  chmod +x "$c/hooks.d/stamp.sh" "$c/hooks.d/fails.sh"
  printf '# <%%= profile.vars.stamp %%>\n' >"$c/preseeds.d/hooked.cfg.eta"
  coproc SRV { exec pim-serve hooked --port 0 2>/dev/null; }
  read -r u <&"${SRV[0]}"
  run curl -fsS "$u/preseed.cfg"
  kill "$SRV_PID"
  [ "$output" = "# made for hooked" ]
  run --separate-stderr pim-serve broken --port 0
  [ "$status" -eq 78 ]
  [[ "$stderr" == *"env_hook hooks.d/fails.sh failed with status 2: cannot reach the vault"* ]]
}
