#!/usr/bin/env bats
# Completions and shell helpers in real shells: bash (completion functions
# called with COMP_WORDS set, and fzf's real completion.bash in `bash -i`), zsh
# (an interactive zsh in a pseudo-terminal, TAB pressed: test/shell/zcomplete.zsh,
# and what it shows: test/shell/zlist.zsh), readline's own fallbacks in an
# interactive bash in a pseudo-terminal (test/shell/bcomplete.zsh), and fish
# (`complete -C`). No VMs: completion reads the runtime dir only, so fake
# entries in a private XDG_RUNTIME_DIR are enough; profile and ISO names come
# from fake catalog files, build ids from a fake build record. fzf is replaced
# by a stub that skips --header-lines, picks the lines matching $FAKE_FZF_PICK
# and logs its arguments and input; pim-ps by one that lists the fake VMs (the
# real one drops stale entries).

load helper
bats_require_minimum_version 1.5.0

FZF_BASH=/usr/share/bash-completion/completions/fzf
FZF_ZSH=/usr/share/doc/fzf/examples/completion.zsh

setup_file() {
  pim_isolate
  export PIM_TMP
  # stubs for the fzf tests
  mkdir -p "$PIM_TMP/stub"
  cat >"$PIM_TMP/stub/fzf" <<'STUB'
#!/bin/bash
skip=0
for a in "$@"; do case $a in --header-lines=*) skip=${a#*=} ;; esac; done
echo "fzf $*" >>"$PIM_TMP/fzf.log"
tee -a "$PIM_TMP/fzf.log" | tail -n +$((skip + 1)) | grep -- "${FAKE_FZF_PICK:-.}"
STUB
  cat >"$PIM_TMP/stub/pim-ps" <<'STUB'
#!/bin/sh
if [ "${1-}" = --table ]; then
  printf 'NAME  STATE    PID\nweb1  running  101\ndb2   running  102\n'
else
  printf 'web1\trunning\t101\ndb2\trunning\t102\n'
fi
STUB
  chmod +x "$PIM_TMP/stub/fzf" "$PIM_TMP/stub/pim-ps"
  # catalogs and a build for name completion (files only: nothing is parsed at TAB time)
  mkdir -p "$XDG_CONFIG_HOME/pim/profiles.d" "$XDG_CONFIG_HOME/pim/isos.d"
  printf 'dev:\n  iso: myiso\nweb:\n  hostname: w\n' >"$XDG_CONFIG_HOME/pim/profiles.d/mine.yml"
  printf 'myiso:\n  url: https://example.org/my.iso\n  insecure: true\n' >"$XDG_CONFIG_HOME/pim/isos.d/mine.yml"
  local id=dev-0123456789ab
  mkdir -p "$XDG_DATA_HOME/pim/builds/$id"
  printf '{"id":"%s","key":"0123456789ab%052d","profile":"dev","created":"2026-01-01T00:00:00Z","disk":{"file":"disk.qcow2"}}\n' "$id" 0 >"$XDG_DATA_HOME/pim/builds/$id/build.json"
  # files for path completion
  mkdir -p "$PIM_TMP/files/subdir"
  touch "$PIM_TMP/files/disk.qcow2" "$PIM_TMP/files/vmlinuz-test"
  # a PATH without fzf: pim's commands and node only
  mkdir -p "$PIM_TMP/nofzf"
  local t
  for t in node zsh bash env sort mktemp rm cat sleep sed awk grep tr; do
    ln -s "$(type -P "$t")" "$PIM_TMP/nofzf/$t"
  done
}

# fresh fake VMs for each test (a real pim-stop removes stale entries)
setup() {
  mkdir -p "$XDG_RUNTIME_DIR/pim"
  touch "$XDG_RUNTIME_DIR/pim/web1.json" "$XDG_RUNTIME_DIR/pim/db2.json"
}

teardown_file() {
  pim_cleanup
}

zcomplete() { zsh -f "$REPO/test/shell/zcomplete.zsh" "$@"; }
zlist() { zsh -f "$REPO/test/shell/zlist.zsh" "$@"; }
bcomplete() { zsh -f "$REPO/test/shell/bcomplete.zsh" "$@"; }

# --- the generated files -----------------------------------------------------

@test "checked-in completions equal a fresh generation, twice (deterministic)" {
  run "$REPO/completions/generate.sh" --check
  [ "$status" -eq 0 ] || { echo "$output"; false; }
  run "$REPO/completions/generate.sh" --check
  [ "$status" -eq 0 ]
}

@test "generated bash scripts have no readonly globals and need no bash-completion" {
  run grep -l 'readonly \|eval "\$requestComp"' "$REPO"/completions/bash/*
  [ "$status" -eq 1 ]
}

# --- the completion callback -------------------------------------------------

@test "pim-stop complete -- '' lists VM names and never stops anything" {
  run --separate-stderr pim-stop complete -- ''
  [ "$status" -eq 0 ]
  [ "$stderr" = "" ]
  [ "$output" = $'db2\tVM\nweb1\tVM\n:4' ]
  # web1 is not running: the real pim-stop would fail with exit 69
  run --separate-stderr pim-stop complete -- web1 ''
  [ "$status" -eq 0 ]
  [ "$stderr" = "" ]
  [[ "$output" == *web1* ]]
  run pim-stop web1
  [ "$status" -eq 69 ]
}

@test "completion: option values are not VM names; one-name commands stop after one" {
  run pim-stop complete -- --timeout ''
  [ "$output" = ":4" ]
  run pim-stop complete -- --timeout 5 w
  [ "$output" = $'web1\tVM\n:4' ]
  run pim-console complete -- web1 ''
  [ "$output" = ":4" ]
  run pim-stop complete -- -- ''
  [ "$output" = ":4" ]
}

@test "pim complete: commands with their summaries, then what pim-<sub> answers" {
  run pim complete -- st
  [ "$output" = $'status\tShow a VM\'s state from QMP: NAME, status, pid, uptime.\nstop\tStop VMs: guest agent, then ACPI powerdown, then SIGTERM, then SIGKILL.\n:4' ]
  run pim complete -- stop ''
  [ "$output" = $'db2\tVM\nweb1\tVM\n:4' ]
  run pim complete -- help sto
  [ "$(cut -f1 <<<"$output")" = $'stop\n:4' ]
  run pim complete -- iso download my
  [ "$output" = $'myiso\tISO\n:4' ]
}

@test "subcommands complete their names, then their own options and arguments" {
  run pim-iso complete -- ''
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "list show add download verify path rm :4 " ]
  run pim-iso complete -- list --
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "--json --quiet --help :4 " ]
  run pim-iso complete -- download --
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "--insecure --help :4 " ]
  run pim-iso complete -- download ''
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "debian-netinst-amd64 myiso ubuntu-24.04-server-amd64 :4 " ]
  run pim-profile complete -- show ''
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "default dev web :4 " ]
  run pim-profile complete -- show dev ''
  [ "$output" = ":4" ]
  run pim-build complete -- run w
  [ "$output" = $'web\tprofile\n:4' ]
  run pim-build complete -- show ''
  [ "$output" = $'dev-0123456789ab\tdev, 2026-01-01T00:00:00Z\n:4' ]
  run pim-config complete -- ''
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "init show path :4 " ]
  run pim-serve complete -- d
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "default dev :4 " ]
}

@test "paths: pim-run's image and pim-kboot's files answer 'files allowed' (0), directories 16, other values none (4)" {
  run pim-run complete -- ./di
  [ "$output" = ":0" ]
  run pim-kboot complete -- --kernel ''
  [ "$output" = ":0" ]
  run pim-kboot complete -- --initrd=''
  [ "$output" = ":0" ]
  run pim-kboot complete -- --share ''
  [ "$output" = ":16" ]
  run pim-kboot complete -- --exec ''
  [ "$output" = ":4" ]
  run pim-kboot complete -- --fs ''
  [ "$output" = $'auto\n9p\nvirtiofs\n:4' ]
}

# --- bash --------------------------------------------------------------------

@test "bash: pim.bash sourced twice under set -u: no errors, options restored, completes VM names" {
  run --separate-stderr bash --norc -c '
    set -u; shopt -s extglob; before="$(set +o; shopt -p)"
    source "$1"; source "$1"
    [ "$before" = "$(set +o; shopt -p)" ] || { echo "options changed"; exit 1; }
    complete -p pim-stop pim
    COMP_WORDS=(pim-stop ""); COMP_CWORD=1; __pim_stop_complete 2>/dev/null; echo "A: ${COMPREPLY[*]}"
    COMP_WORDS=(pim-stop w); COMP_CWORD=1; __pim_stop_complete 2>/dev/null; echo "stop w: ${COMPREPLY[*]}"
    COMP_WORDS=(pim-console web1 ""); COMP_CWORD=2; __pim_console_complete 2>/dev/null; echo "console web1: ${COMPREPLY[*]-}"
    COMP_WORDS=(pim st); COMP_CWORD=1; __pim_complete 2>/dev/null; echo "pim st: ${COMPREPLY[*]}"
    COMP_WORDS=(pim stop ""); COMP_CWORD=2; __pim_complete 2>/dev/null; echo "pim stop: ${COMPREPLY[*]}"
  ' bash "$REPO/shell/pim.bash"
  echo "$output" "$stderr"
  [ "$status" -eq 0 ]
  [ "$stderr" = "" ]
  [[ "$output" == *"complete -o default -F __pim_stop_complete pim-stop"* ]]
  [[ "$output" == *"A: db2 web1"* ]]
  [[ "$output" == *"stop w: web1"* ]]
  [[ "$output" == *"console web1: "$'\n'* ]]
  [[ "$output" == *"pim st: status stop"* ]]
  [[ "$output" == *"pim stop: db2 web1"* ]]
}

@test "bash: without fzf, pim.bash loads, completes, and pim-pick says fzf is missing" {
  run --separate-stderr env PATH="$REPO/dist/bin:$PIM_TMP/nofzf" /usr/bin/bash --norc -i -c '
    source "$1"
    complete -p pim-stop
    COMP_WORDS=(pim-stop ""); COMP_CWORD=1; __pim_stop_complete 2>/dev/null; echo "A: ${COMPREPLY[*]}"
    pim-pick; echo "pick=$?"
  ' bash "$REPO/shell/pim.bash"
  echo "$output"
  [[ "$output" == *"complete -o default -F __pim_stop_complete pim-stop"* ]]
  [[ "$output" == *"A: db2 web1"* ]]
  [[ "$output" == *"pick=127"* ]]
  [[ "$stderr" == *"pim-pick: fzf is not installed"* ]]
}

@test "bash: fzf's completion.bash: pim-stop w**<TAB> inserts the picked name, plain TAB still completes" {
  [ -f "$FZF_BASH" ] || skip "no $FZF_BASH"
  run env PATH="$PIM_TMP/stub:$PATH" FAKE_FZF_PICK=web bash --norc -i -c '
    source "$1"; source "$2"; source "$2"
    complete -p pim-stop
    COMP_WORDS=(pim-stop "w**"); COMP_CWORD=1; _fzf_complete_pim-stop pim-stop "w**" pim-stop; echo "fzf: ${COMPREPLY[*]}"
    COMP_WORDS=(pim-stop ""); COMP_CWORD=1; _fzf_complete_pim-stop pim-stop "" pim-stop 2>/dev/null; echo "plain: ${COMPREPLY[*]}"
    COMP_WORDS=(pim stop "**"); COMP_CWORD=2; _fzf_complete_pim pim "**" stop; echo "pim stop: ${COMPREPLY[*]}"
    COMP_WORDS=(pim-ssh "**"); COMP_CWORD=1; _fzf_complete_pim-ssh pim-ssh "**" pim-ssh; echo "pim-ssh: ${COMPREPLY[*]}"
  ' bash "$FZF_BASH" "$REPO/shell/pim.bash"
  echo "$output"
  [[ "$output" == *"-F _fzf_complete_pim-stop pim-stop"* ]]
  [[ "$output" == *"fzf: web1"* ]]
  [[ "$output" == *"plain: db2 web1"* ]]
  [[ "$output" == *"pim stop: web1"* ]]
  [[ "$output" == *"pim-ssh: web1"* ]]
}

@test "bash (readline in a terminal): subcommands, catalog and build names, file names for paths" {
  cd "$PIM_TMP/files"
  run bcomplete 'pim-iso downl' "$REPO/shell/pim.bash"
  [ "$output" = "pim-iso download " ]
  run bcomplete 'pim-iso download my' "$REPO/shell/pim.bash"
  [ "$output" = "pim-iso download myiso " ]
  run bcomplete 'pim-profile show w' "$REPO/shell/pim.bash"
  [ "$output" = "pim-profile show web " ]
  run bcomplete 'pim-build show d' "$REPO/shell/pim.bash"
  [ "$output" = "pim-build show dev-0123456789ab " ]
  run bcomplete 'pim-build run w' "$REPO/shell/pim.bash"
  [ "$output" = "pim-build run web " ]
  # paths: readline's file names (complete -o default), for an image and for --kernel
  run bcomplete 'pim-run ./di' "$REPO/shell/pim.bash"
  [ "$output" = "pim-run ./disk.qcow2 " ]
  run bcomplete 'pim run ./di' "$REPO/shell/pim.bash"
  [ "$output" = "pim run ./disk.qcow2 " ]
  run bcomplete 'pim-kboot --kernel vml' "$REPO/shell/pim.bash"
  [ "$output" = "pim-kboot --kernel vmlinuz-test " ]
  run bcomplete 'pim-kboot --share sub' "$REPO/shell/pim.bash"
  [[ "$output" == "pim-kboot --share subdir"* ]]
  # but not where a value is no path
  run bcomplete 'pim-stop --timeout di' "$REPO/shell/pim.bash"
  [ "$output" = "pim-stop --timeout di" ]
}

@test "fzf pickers: pim-ps --table (a header, aligned columns) and pim's commands with summaries" {
  run pim-ps --table
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "NAME  STATE  PID  SSH-PORT  UPTIME  IMAGE  BRIDGED  KIND  ACCEL  FORWARDS" ]
  run --separate-stderr pim-ps --table --json
  [ "$status" -eq 64 ]
  run bash --norc -c 'source "$1"; __pim_fzf_commands' bash "$REPO/shell/pim.bash"
  commands_aligned
  [[ "$output" == *$'\nconsole '*' Attach to a VM'* ]]
  run zsh -f -c 'source $1; __pim_fzf_commands' zsh "$REPO/shell/pim.zsh"
  commands_aligned
}

# the commands' picker: a header, and every summary in the header's SUMMARY column
# (as wide as the longest command name needs)
commands_aligned() {
  local col line
  [[ "${lines[0]}" =~ ^COMMAND\ +SUMMARY$ ]]
  col=$((${#lines[0]} - 7))
  [[ "$output" == *$'\nstop '*' Stop VMs: guest agent'* ]]
  for line in "${lines[@]:1}"; do
    [[ "${line:0:col}" =~ ^[a-z-]+\ +$ ]] && [ "${line:col:1}" != " " ] || { echo "not aligned at $col: $line"; return 1; }
  done
}

@test "bash: fzf's completion.bash: the picker gets pim-ps --table and --header-lines=1" {
  [ -f "$FZF_BASH" ] || skip "no $FZF_BASH"
  rm -f "$PIM_TMP/fzf.log"
  run env PATH="$PIM_TMP/stub:$PATH" FAKE_FZF_PICK=. bash --norc -i -c '
    source "$1"; source "$2"
    COMP_WORDS=(pim-stop "**"); COMP_CWORD=1; _fzf_complete_pim-stop pim-stop "**" pim-stop; echo "fzf: ${COMPREPLY[*]}"
    COMP_WORDS=(pim "**"); COMP_CWORD=1; FAKE_FZF_PICK="^stop " _fzf_complete_pim pim "**" pim; echo "pim: ${COMPREPLY[*]}"
  ' bash "$FZF_BASH" "$REPO/shell/pim.bash"
  echo "$output"; cat "$PIM_TMP/fzf.log"
  [[ "$output" == *"fzf: web1 db2"* ]]
  [[ "$output" == *"pim: stop"* ]]
  grep -q -- '--header-lines=1' "$PIM_TMP/fzf.log"
  grep -q '^NAME  STATE    PID$' "$PIM_TMP/fzf.log"
  grep -Eq '^COMMAND +SUMMARY$' "$PIM_TMP/fzf.log"
}

@test "bash: pim-cp w<TAB> gives web1: with no space; NAME:/path gets no host file names" {
  cd "$PIM_TMP/files"
  run bcomplete 'pim-cp w' "$REPO/shell/pim.bash"
  [ "$output" = "pim-cp web1:" ]
  run bcomplete 'pim-cp root@w' "$REPO/shell/pim.bash"
  [ "$output" = "pim-cp root@web1:" ]
  # bash splits the word at ':': the guest's /et is not the host's /etc/
  run bcomplete 'pim-cp web1:/et' "$REPO/shell/pim.bash"
  [ "$output" = "pim-cp web1:/et" ]
  # a local path still completes from the host
  run bcomplete 'pim-cp ./di' "$REPO/shell/pim.bash"
  [ "$output" = "pim-cp ./disk.qcow2 " ]
}

# --- zsh ---------------------------------------------------------------------

@test "zsh: pim-cp w<TAB> gives web1: with no space (the colon kept); NAME:/path gets no host file names" {
  cd "$PIM_TMP/files"
  run zcomplete -s 'pim-cp w' "$REPO/shell/pim.zsh"
  [ "$output" = "web1:|nospace" ]
  run zcomplete 'pim-cp web1:/et' "$REPO/shell/pim.zsh"
  [ "$output" = "" ]
  run zcomplete 'pim-cp ./di' "$REPO/shell/pim.zsh"
  [[ "$output" == *disk.qcow2* ]]
}

@test "zsh: pim-stop <TAB>, pim-stop --t<TAB>, pim st<TAB>, pim stop <TAB>" {
  run zcomplete 'pim-stop ' "$REPO/shell/pim.zsh"
  [ "$output" = $'db2\nweb1' ]
  run zcomplete 'pim-stop --t' "$REPO/shell/pim.zsh"
  [ "$output" = "--timeout" ]
  run zcomplete 'pim st' "$REPO/shell/pim.zsh"
  [ "$output" = $'status\nstop' ]
  run zcomplete 'pim stop w' "$REPO/shell/pim.zsh"
  [ "$output" = "web1" ]
}

@test "zsh: pim.zsh sourced twice: no errors, options kept, fpath entry and hooks once" {
  run --separate-stderr zsh -f -c '
    setopt ksh_arrays sh_word_split no_glob; before=$(setopt)
    autoload -Uz compinit && compinit -u -D
    source $1; source $1
    [[ $before == $(setopt) ]] || { print "options changed"; exit 1; }
    setopt no_ksh_arrays
    a=(${(M)fpath:#*/completions/zsh}); print fpath=$#a
    print comp=$_comps[pim-stop]
    (( $+functions[_fzf_complete_pim-stop] && $+functions[_fzf_complete_pim-stop_post] && $+functions[_fzf_complete_pim-ssh_post] )) && print hooks
  ' zsh "$REPO/shell/pim.zsh"
  echo "$output" "$stderr"
  [ "$status" -eq 0 ]
  [ "$stderr" = "" ]
  [[ "$output" == *"fpath=1"* ]]
  [[ "$output" == *"comp=_pim-stop"* ]]
  [[ "$output" == *hooks* ]]
}

@test "zsh: fzf's completion.zsh: pim-stop w**<TAB> and pim stop **<TAB> insert names" {
  [ -f "$FZF_ZSH" ] || skip "no $FZF_ZSH"
  PATH="$PIM_TMP/stub:$PATH" FAKE_FZF_PICK=web run zcomplete -b 'pim-stop w**' "$FZF_ZSH" "$REPO/shell/pim.zsh"
  [ "$output" = "pim-stop web1 " ]
  rm -f "$PIM_TMP/fzf.log"
  PATH="$PIM_TMP/stub:$PATH" FAKE_FZF_PICK=. run zcomplete -b 'pim stop **' "$REPO/shell/pim.zsh" "$FZF_ZSH"
  [ "$output" = "pim stop web1 db2 " ]
  # a header over aligned columns: pim-ps --table, and fzf told to keep its first line
  grep -q -- '--header-lines=1' "$PIM_TMP/fzf.log"
  grep -q '^NAME  STATE    PID$' "$PIM_TMP/fzf.log"
  # plain TAB goes on to the completion system
  run zcomplete 'pim-stop ' "$FZF_ZSH" "$REPO/shell/pim.zsh"
  [ "$output" = $'db2\nweb1' ]
}

@test "zsh: without fzf, pim.zsh loads, completes, and pim-pick says fzf is missing" {
  PATH="$REPO/dist/bin:$PIM_TMP/nofzf" run zcomplete 'pim-stop ' "$REPO/shell/pim.zsh"
  [ "$output" = $'db2\nweb1' ]
  run --separate-stderr env PATH="$REPO/dist/bin:$PIM_TMP/nofzf" zsh -f -c 'source $1; pim-pick; print pick=$?' zsh "$REPO/shell/pim.zsh"
  [ "$output" = "pick=127" ]
  [ "$stderr" = "pim-pick: fzf is not installed" ]
}

@test "zsh: subcommands, their own options, catalog and build names, file names for paths" {
  cd "$PIM_TMP/files"
  run zcomplete 'pim-iso ' "$REPO/shell/pim.zsh"
  [ "$output" = $'add\ndownload\nlist\npath\nrm\nshow\nverify' ]
  run zcomplete 'pim-iso list --' "$REPO/shell/pim.zsh"
  [ "$output" = $'--help\n--json\n--quiet' ]
  run zcomplete 'pim-iso download ' "$REPO/shell/pim.zsh"
  [ "$output" = $'debian-netinst-amd64\nmyiso\nubuntu-24.04-server-amd64' ]
  run zcomplete 'pim-profile show ' "$REPO/shell/pim.zsh"
  [ "$output" = $'default\ndev\nweb' ]
  run zcomplete 'pim-build run ' "$REPO/shell/pim.zsh"
  [ "$output" = $'default\ndev\nweb' ]
  run zcomplete 'pim-build show ' "$REPO/shell/pim.zsh"
  [ "$output" = "dev-0123456789ab" ]
  run zcomplete 'pim-run ./di' "$REPO/shell/pim.zsh"
  [ "$output" = "disk.qcow2" ]
  run zcomplete 'pim-kboot --kernel ' "$REPO/shell/pim.zsh"
  [ "$output" = $'disk.qcow2\nsubdir\nvmlinuz-test' ]
  run zcomplete 'pim-kboot --share ' "$REPO/shell/pim.zsh"
  [ "$output" = "subdir" ]
}

@test "zsh: no stray -- where a candidate has no description; descriptions after -- where they do" {
  run zlist 'pim-kboot --fs ' "$REPO/shell/pim.zsh"
  echo "$output"
  [[ "$output" == *virtiofs* ]]
  run ! grep -E '(auto|virtiofs|9p).* --( |$)' <<<"$output"
  run zlist 'pim-iso ' "$REPO/shell/pim.zsh"
  echo "$output"
  [[ "$output" == *"download  -- Download ISOs"* ]]
  [[ "$output" == *"verify    -- Hash downloaded ISOs"* ]]
}

# --- fish --------------------------------------------------------------------

@test "fish: complete -C 'pim-stop ' and 'pim stop w'" {
  run fish -N -c 'source $argv[1]/pim-stop.fish; source $argv[1]/pim.fish; complete -C "pim-stop "; complete -C "pim stop w"' "$REPO/completions/fish"
  [ "$output" = $'db2\tVM\nweb1\tVM\nweb1\tVM' ]
}

@test "fish: pim-cp w<TAB> gives web1: (fish adds no space after ':'); web1:/et<TAB> offers no host files" {
  cd "$PIM_TMP/files"
  run fish -N -c 'source $argv[1]/pim-cp.fish; complete -C "pim-cp w"; echo ---; complete -C "pim-cp web1:/et"; echo ---; complete -C "pim-cp ./di"' "$REPO/completions/fish"
  echo "$output"
  [ "$output" = $'web1:\tVM\n---\n---\n./disk.qcow2' ]
}

@test "fish: subcommands, catalog and build names, file names for paths" {
  cd "$PIM_TMP/files"
  run fish -N -c 'for f in $argv[1]/*.fish; source $f; end
    complete -C "pim-iso download my"; complete -C "pim-build show d"; complete -C "pim-profile show w"
    complete -C "pim-run ./di"; complete -C "pim-kboot --kernel vml"' "$REPO/completions/fish"
  echo "$output"
  [ "$output" = $'myiso\tISO\ndev-0123456789ab\tdev, 2026-01-01T00:00:00Z\nweb\tprofile\n./disk.qcow2\nvmlinuz-test' ]
}
