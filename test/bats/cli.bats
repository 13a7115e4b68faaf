#!/usr/bin/env bats
# The command-line frame of every executable in dist/bin (issue 9, defect 1):
# no arguments, an unknown flag and a bad value for each enum option are exit
# 64 with exactly one clean line on stderr (no stack, no ANSI colour, also in
# a pipe and with a colour terminal in TERM), --help and --version answer on
# stdout, subcommands parse their own flags, and the umbrella lists commands
# with their summaries. No VMs: every case fails before anything starts.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
}

teardown_file() {
  pim_cleanup
}

# The executables, from dist/bin: a new one is checked without editing this file.
executables() {
  local f
  for f in "$REPO"/dist/bin/*; do basename "$f"; done
}

# What no arguments means for each: 64, 0 (valid), or "runs" (a valid call that
# starts a server or boots the host's kernel; serve.bats and kboot.bats cover them).
declare -gA NOARGS=(
  [pim]=0 [pim-ps]=0
  [pim-serve]=runs [pim-kboot]=runs
  [pim-build]=64 [pim-config]=64 [pim-console]=64 [pim-ga]=64 [pim-ip]=64 [pim-iso]=64
  [pim-os]=64 [pim-profile]=64 [pim-qmp]=64 [pim-run]=64 [pim-status]=64
  # with no names they read names from stdin: empty stdin is nothing to do (issue 19, defect 9)
  [pim-stop]=0 [pim-rm]=0
  # pim doctor with no arguments is valid; it exits 1 where a check fails (vmcare.bats)
  [pim-doctor]=runs [pim-log]=64 [pim-snapshot]=64
  [pim-ctl]=64 [pim-exec]=64 [pim-forward]=64 [pim-wait]=64
  [pim-ssh]=64 [pim-cp]=64 [pim-vm]=64 [pim-gdb]=64 [pim-deploy]=64 [pim-ventoy]=64
)

# usage_error CMD ARGS...: exit 64, nothing on stdout, one line on stderr that
# names the executable, no stack, no escape codes; run with a colour terminal
# in TERM, NO_COLOR unset, stdout a pipe and stdin empty.
usage_error() {
  local err="$PIM_TMP/err" out status
  out=$(env -u NO_COLOR TERM=xterm-256color "$@" 2>"$err" </dev/null | cat; exit "${PIPESTATUS[0]}") && status=0 || status=$?
  local n
  n=$(wc -l <"$err")
  if [ "$status" -ne 64 ] || [ -n "$out" ] || [ "$n" -ne 1 ] || grep -q $'\x1b' "$err" || grep -q '^ *at ' "$err" || ! grep -q "^$(basename "$1"): " "$err"; then
    echo "FAILED: $* -> status $status, stdout [$out], stderr:" >&2
    cat -A "$err" >&2
    return 1
  fi
}

# Subcommands listed under "Commands:" in a command's help.
subcommands() {
  "$@" --help | awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1; next } on && !/^  / { on = 0 }'
}

# The enum options in a command's help: "--flag a|b|c" -> "--flag".
enum_flags() {
  "$@" --help | sed -nE 's/^  (-[a-z], )?(--[a-z-]+) [a-z0-9]+(\|[a-z0-9]+)+ .*/\2/p'
}

@test "every executable is in the table of what no arguments means" {
  local e missing=()
  for e in $(executables); do [ -n "${NOARGS[$e]-}" ] || missing+=("$e"); done
  [ "${#missing[@]}" -eq 0 ] || { echo "add to NOARGS: ${missing[*]}"; false; }
}

@test "no arguments: 64 with one clean line, or 0 where that is valid" {
  local e failed=0 n=0
  for e in $(executables); do
    case ${NOARGS[$e]-} in
      64) usage_error "$e" || failed=1; n=$((n + 1)) ;;
      0)
        run --separate-stderr env -u NO_COLOR "$e" </dev/null
        [ "$status" -eq 0 ] && [ -z "$stderr" ] || { echo "$e: $status [$stderr]"; failed=1; } ;;
    esac
  done
  [ "$failed" -eq 0 ]
  [ "$n" -ge 12 ]
}

@test "an unknown flag is 64 with one clean line, for every executable and every subcommand" {
  local e s failed=0 n=0
  for e in $(executables); do
    usage_error "$e" --no-such-flag || failed=1
    usage_error "$e" -Z || failed=1
    for s in $(subcommands "$e"); do
      [ "$e" = pim ] && continue # the umbrella's commands are the executables themselves
      usage_error "$e" "$s" --no-such-flag || failed=1
      n=$((n + 1))
    done
  done
  [ "$failed" -eq 0 ]
  [ "$n" -ge 18 ] # pim-iso 7, pim-config 3, pim-profile 2, pim-build 6
}

@test "a bad value for each enum option is 64 with one clean line" {
  local e s f failed=0 n=0
  for e in $(executables); do
    for f in $(enum_flags "$e"); do
      usage_error "$e" "$f" no-such-value || failed=1
      usage_error "$e" "$f=no-such-value" || failed=1
      n=$((n + 1))
    done
    [ "$e" = pim ] && continue
    for s in $(subcommands "$e"); do
      for f in $(enum_flags "$e" "$s"); do
        usage_error "$e" "$s" "$f" no-such-value || failed=1
        n=$((n + 1))
      done
    done
  done
  [ "$failed" -eq 0 ]
  # pim-run --accel, pim-kboot --fs --machine --compress --accel, pim-build run --accel
  [ "$n" -ge 6 ]
  run --separate-stderr pim-kboot --fs foo
  [ "$stderr" = 'pim-kboot: --fs must be one of auto, 9p, virtiofs, not "foo"' ]
}

@test "empty stdin is nothing to do: pim-stop and pim-rm exit 0 quietly (Esc in fzf, an empty pim-ps)" {
  local c
  for c in pim-stop pim-rm; do
    run --separate-stderr bash -c "printf '' | $c"
    [ "$status" -eq 0 ] && [ -z "$output" ] && [ -z "$stderr" ] || { echo "$c: $status [$output] [$stderr]"; false; }
    run --separate-stderr bash -c "printf '\\n  \\n' | $c"   # blank lines only
    [ "$status" -eq 0 ] && [ -z "$stderr" ] || { echo "$c (blank lines): $status [$stderr]"; false; }
    run --separate-stderr bash -c "pim-ps -q | $c"
    [ "$status" -eq 0 ] && [ -z "$stderr" ]
  done
}

@test "missing and extra arguments, an option without its value, words after -- where none are taken: 64" {
  usage_error pim-run
  usage_error pim-run a b
  usage_error pim-run dev --mem
  usage_error pim-console
  usage_error pim-qmp dev
  usage_error pim-ps extra
  usage_error pim-stop dev -- x
  usage_error pim-iso show
  usage_error pim-iso show a b
  usage_error pim-profile list extra
  usage_error pim-config path extra
  usage_error pim-build rm
}

@test "subcommands: each parses only its own flags; none or an unknown one lists them" {
  usage_error pim-iso list --url x
  usage_error pim-iso list --entry
  usage_error pim-iso download --url x
  usage_error pim-config init --json
  usage_error pim-profile list --explain
  usage_error pim-build list --force
  usage_error pim-build gc --accel kvm
  run --separate-stderr pim-iso
  [ "$status" -eq 64 ]
  [ "$stderr" = "pim-iso: a subcommand is needed: list, show, add, download, verify, path or rm; see pim-iso --help" ]
  run --separate-stderr pim-iso frob
  [ "$status" -eq 64 ]
  [ "$stderr" = 'pim-iso: unknown subcommand "frob"; use list, show, add, download, verify, path or rm (see pim-iso --help)' ]
  run --separate-stderr pim-iso list --url x
  [ "$stderr" = "pim-iso: unknown option --url; see pim-iso list --help" ]
  # the flags that do apply still work
  run --separate-stderr pim-iso list -q
  [ "$status" -eq 0 ]
  [[ "$output" == *debian-netinst-amd64* ]]
  run --separate-stderr pim-config path --json
  [ "$status" -eq 0 ]
  [[ "$output" == '{"config":'* ]]
}

@test "--help: usage on stdout, exit 0, no colour in a pipe; subcommands have their own" {
  local e
  for e in $(executables); do
    run --separate-stderr env -u NO_COLOR TERM=xterm-256color "$e" --help
    [ "$status" -eq 0 ] || { echo "$e: $status"; false; }
    [ -z "$stderr" ]
    [[ "${lines[0]}" == "Usage: $e "* ]] || { echo "$e: ${lines[0]}"; false; }
    [[ "$output" != *$'\x1b'* ]]
  done
  run --separate-stderr pim-iso download --help
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "Usage: pim-iso download NAME... [options]" ]
  [[ "$output" == *"--insecure"* ]]
  [[ "$output" != *"--url"* ]]
  run --separate-stderr pim-iso --help
  [[ "$output" == *$'Commands:\n  list '* ]]
  # --help after -- is a word for QEMU, not a help request
  run --separate-stderr pim-run --help -- -x
  [ "$status" -eq 0 ]
  run --separate-stderr pim-stop -- --help
  [ "$status" -eq 64 ]
}

@test "--help on a terminal is coloured, unless NO_COLOR or TERM=dumb" {
  command -v script >/dev/null || skip "no script(1)"
  run env -u NO_COLOR TERM=xterm script -qec 'pim-ps --help' /dev/null
  [[ "$output" == *$'\x1b[1mUsage:'* ]]
  run env NO_COLOR=1 TERM=xterm script -qec 'pim-ps --help' /dev/null
  [[ "$output" != *$'\x1b['* ]]
  run env -u NO_COLOR TERM=dumb script -qec 'pim-ps --help' /dev/null
  [[ "$output" != *$'\x1b['* ]]
}

@test "--version: NAME VERSION (package.json) on stdout, exit 0, for every executable and pim" {
  local e v
  v=$(node -p 'require(process.argv[1]).version' "$REPO/package.json")
  for e in $(executables); do
    run --separate-stderr "$e" --version
    [ "$status" -eq 0 ] || { echo "$e: $status $stderr"; false; }
    [ "$output" = "$e $v" ] || { echo "$e: [$output]"; false; }
    [ -z "$stderr" ]
  done
  run --separate-stderr pim-iso list --version
  [ "$output" = "pim-iso $v" ]
}

@test "the umbrella: pim --help lists commands with summaries, not paths; errors name pim-COMMAND, not .cjs" {
  mkdir -p "$PIM_TMP/bin"
  printf '#!/bin/sh\necho "hello $*"\n' >"$PIM_TMP/bin/pim-hello"
  chmod +x "$PIM_TMP/bin/pim-hello"
  PATH="$PIM_TMP/bin:$PATH" run --separate-stderr pim --help
  [ "$status" -eq 0 ]
  [[ "$output" != *.cjs* ]]
  # (the column is as wide as the longest command name: pim-snapshot's, today)
  local re=$'\n  stop +Stop VMs: guest agent, then ACPI powerdown'
  [[ "$output" =~ $re ]]
  re=$'\n  hello +'"$PIM_TMP/bin/pim-hello"
  [[ "$output" =~ $re ]]
  # the manifest the summaries come from is the commands' own meta.description
  run node -e 'const m = require(process.argv[1]); if (Object.keys(m).length < 16 || !m["pim-iso"]) process.exit(1)' "$REPO/dist/commands.json"
  [ "$status" -eq 0 ]
  run --separate-stderr pim status ghost
  [ "$status" -eq 69 ]
  [[ "$stderr" == "pim-status: "* ]]
  run --separate-stderr pim iso frob
  [ "$status" -eq 64 ]
  [[ "$stderr" == "pim-iso: "* ]]
  run --separate-stderr pim help stop
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "Usage: pim-stop [NAME...] [options]" ]
  usage_error pim nosuch
  usage_error pim ../x
}

@test "pim-kboot --share is declared repeatable (unit tests check that every value is kept)" {
  run --separate-stderr pim-kboot --help
  [[ "$output" == *"--share DIR[:TAG]"*"(repeatable)"* ]]
}

@test "on a Node older than 22 every executable says in one line that pim needs Node 22 or newer, and how to get it (69)" {
  local old=/usr/bin/node
  [ -x "$old" ] || skip "no system node at $old"
  [ "$("$old" -p 'process.versions.node.split(".")[0]')" -lt 22 ] || skip "$old is Node 22 or newer"
  # the old Node first on PATH, where the executables' #!/usr/bin/env node finds it
  mkdir -p "$PIM_TMP/oldnode"
  ln -sf "$old" "$PIM_TMP/oldnode/node"
  local e
  for e in $(executables); do
    run --separate-stderr env PATH="$PIM_TMP/oldnode:$PATH" "$e" --help
    [ "$status" -eq 69 ] || { echo "$e: $status $stderr"; false; }
    [ -z "$output" ]
    [ "$(wc -l <<<"$stderr")" -eq 1 ]
    [[ "$stderr" == "$e: pim needs Node 22 or newer, and this is Node v"*"install Node 22 or newer (https://nodejs.org, or nvm install 22)"* ]] || { echo "$stderr"; false; }
  done
  # the one the issue names: pim-iso download, which failed with "Cannot read properties of undefined"
  run --separate-stderr env PATH="$PIM_TMP/oldnode:$PATH" pim-iso download debian-12
  [ "$status" -eq 69 ]
  [[ "$stderr" != *"Cannot read properties"* ]]
}
