#!/usr/bin/env bats
# pim-config and pim-profile: the XDG tree, merging, and config errors (exit 78, file:line, nothing on stdout).
load helper
setup_file() { pim_isolate; }
teardown_file() { pim_cleanup; }

C() { echo "$XDG_CONFIG_HOME/pim"; }

@test "pim-config path prints the directories" {
  run --separate-stderr pim-config path
  [ "$status" -eq 0 ]
  [[ "$output" == *"config	$(C)"* ]]
  [[ "$output" == *"isos	$XDG_CACHE_HOME/pim/isos"* ]]
  pim-config path --json | node -e 'const j=JSON.parse(require("fs").readFileSync(0));if(!j["profiles.d"])process.exit(1)'
}

@test "pim-config show works with no config at all" {
  run --separate-stderr pim-config show --json
  [ "$status" -eq 0 ]
  [[ "$output" == *'"debian-netinst-amd64"'* ]]
  [[ "$output" == *'"ubuntu-24.04-server-amd64"'* ]]
}

@test "pim-config init writes the starter tree and never overwrites" {
  mkdir -p "$(C)"; echo 'serve: {port: 9999}' > "$(C)/pim.yml"
  run --separate-stderr pim-config init
  [ "$status" -eq 0 ]
  [[ "$output" == *"profiles.d/default.yml"* ]]
  [[ "$stderr" == *"exists, left alone: $(C)/pim.yml"* ]]
  grep -q 9999 "$(C)/pim.yml"
  [ -x "$(C)/scripts.d/default.sh" ]
  run --separate-stderr pim-config init
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  run pim-config show --json
  [[ "$output" == *'"port":9999'* ]]
}

@test "pim-config init with a broken pim.yml or profile exits 78 naming FILE:LINE and writes nothing" {
  export XDG_CONFIG_HOME="$PIM_TMP/broken"
  c="$XDG_CONFIG_HOME/pim"
  mkdir -p "$c"
  printf 'serve:\n  port: [8080\n' > "$c/pim.yml"
  run --separate-stderr pim-config init
  [ "$status" -eq 78 ]; [ -z "$output" ]
  [[ "$stderr" == "pim-config: $c/pim.yml:"[0-9]*": "* ]]
  [ "$(ls -A "$c")" = pim.yml ]
  printf 'serve:\n  port: 8080\n' > "$c/pim.yml"
  mkdir "$c/profiles.d"; printf 'dev:\n  firmware: efi\n' > "$c/profiles.d/dev.yml"
  run --separate-stderr pim-config init
  [ "$status" -eq 78 ]; [ -z "$output" ]
  [ "$stderr" = "pim-config: $c/profiles.d/dev.yml:2: \"firmware\" must be one of bios, uefi, not \"efi\"" ]
  [ "$(ls -A "$c" | tr '\n' ' ')" = "pim.yml profiles.d " ]
  [ "$(ls -A "$c/profiles.d")" = dev.yml ]
  rm "$c/profiles.d/dev.yml"
  run --separate-stderr pim-config init
  [ "$status" -eq 0 ]
  [ -e "$c/isos.d/default.yml" ]
}

@test "a billion-laughs profile is 78 with FILE:LINE on one line, never a stack (70)" {
  export XDG_CONFIG_HOME="$PIM_TMP/lol"
  f="$XDG_CONFIG_HOME/pim/profiles.d/lol.yml"
  mkdir -p "${f%/*}"
  node -e '
    let t = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n";
    const L = "abcdefghi";
    for (let i = 1; i < L.length; i++) t += `${L[i]}: &${L[i]} [${Array(9).fill("*" + L[i - 1]).join(",")}]\n`;
    process.stdout.write(t);' > "$f"
  run --separate-stderr pim-profile list
  echo "$stderr"
  [ "$status" -eq 78 ]; [ -z "$output" ]
  [[ "$stderr" == "pim-profile: $f:"[0-9]*": the alias *"?" makes this file expand to more than 1000000 values; "* ]]
  [ "$(wc -l <<<"$stderr")" -eq 1 ]
}

@test "profiles merge over default; --explain names file and line" {
  printf 'dev:\n  hostname: devbox\n  packages: [vim]\n' > "$(C)/profiles.d/dev.yml"
  run --separate-stderr pim-profile list
  [[ "$output" == *"dev	debian"* ]]
  run --separate-stderr pim-profile show dev --json
  [[ "$output" == *'"hostname":"devbox"'* ]]
  [[ "$output" == *'"packages":["openssh-server","qemu-guest-agent","sudo","cloud-init","vim"]'* ]] # added to pim's own
  [[ "$output" == *'"locale":"en_US.UTF-8"'* ]]
  run --separate-stderr pim-profile show dev --explain
  [[ "$output" == *"hostname	\"devbox\"	$(C)/profiles.d/dev.yml:2"* ]]
  [[ "$output" == *"locale	\"en_US.UTF-8\"	$(C)/profiles.d/default.yml:"* ]]
  run --separate-stderr pim-profile show nope
  [ "$status" -eq 66 ]
}

@test "broken YAML, a wrong type, __proto__, a missing file: exit 78 naming file:line, nothing on stdout" {
  f="$(C)/profiles.d/bad.yml"
  printf 'bad:\n  hostname: [x\n' > "$f"
  run --separate-stderr pim-config show
  [ "$status" -eq 78 ]; [ -z "$output" ]; [[ "$stderr" == *"$f:"* ]]
  printf 'bad:\n  hostname: x\n  mem: [1]\n' > "$f"
  run --separate-stderr pim-profile show bad
  [ "$status" -eq 78 ]; [ -z "$output" ]; [[ "$stderr" == *"$f:3: \"mem\" must be a string or number"* ]]
  printf 'bad:\n  __proto__: {x: 1}\n' > "$f"
  run --separate-stderr pim-config show --json
  [ "$status" -eq 78 ]; [ -z "$output" ]; [[ "$stderr" == *"$f:2: the key \"__proto__\" is not allowed"* ]]
  printf 'bad:\n  scripts: [nothere.sh]\n' > "$f"
  run --separate-stderr pim-config show
  [ "$status" -eq 78 ]; [ -z "$output" ]; [[ "$stderr" == *"$f:2: scripts: scripts.d/nothere.sh does not exist"* ]]
  rm "$f"
}

@test "usage errors are 64" {
  run pim-config frobnicate
  [ "$status" -eq 64 ]
  run pim-config show --jsno
  [ "$status" -eq 64 ]
  run pim-profile show
  [ "$status" -eq 64 ]
}
