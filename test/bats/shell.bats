#!/usr/bin/env bats
# Completions and shell helpers in real shells: bash (completion functions
# called with COMP_WORDS set, and fzf's real completion.bash in `bash -i`), zsh
# (an interactive zsh in a pseudo-terminal, TAB pressed: test/shell/zcomplete.zsh)
# and fish (`complete -C`). No VMs: completion reads the runtime dir only, so
# fake entries in a private XDG_RUNTIME_DIR are enough. fzf is replaced by a
# stub that picks the lines matching $FAKE_FZF_PICK, pim-ps by one that lists
# the fake VMs (the real one drops stale entries).

load helper
bats_require_minimum_version 1.5.0

FZF_BASH=/usr/share/bash-completion/completions/fzf
FZF_ZSH=/usr/share/doc/fzf/examples/completion.zsh

setup_file() {
  pim_isolate
  export PIM_TMP
  # stubs for the fzf tests
  mkdir -p "$PIM_TMP/stub"
  printf '#!/bin/sh\nexec grep -- "${FAKE_FZF_PICK:-.}"\n' >"$PIM_TMP/stub/fzf"
  printf '#!/bin/sh\nprintf "web1\\trunning\\t101\\ndb2\\trunning\\t102\\n"\n' >"$PIM_TMP/stub/pim-ps"
  chmod +x "$PIM_TMP/stub/fzf" "$PIM_TMP/stub/pim-ps"
  # a PATH without fzf: pim's commands and node only
  mkdir -p "$PIM_TMP/nofzf"
  local t
  for t in node zsh bash env sort mktemp rm cat sleep sed awk grep; do
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

@test "pim complete: subcommands, then what pim-<sub> answers" {
  run pim complete -- st
  [ "$output" = $'status\t\nstop\t\n:4' ]
  run pim complete -- stop ''
  [ "$output" = $'db2\tVM\nweb1\tVM\n:4' ]
  run pim complete -- help sto
  [ "$output" = $'stop\t\n:4' ]
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
  [[ "$output" == *"complete -F __pim_stop_complete pim-stop"* ]]
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
  [[ "$output" == *"complete -F __pim_stop_complete pim-stop"* ]]
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
  ' bash "$FZF_BASH" "$REPO/shell/pim.bash"
  echo "$output"
  [[ "$output" == *"-F _fzf_complete_pim-stop pim-stop"* ]]
  [[ "$output" == *"fzf: web1"* ]]
  [[ "$output" == *"plain: db2 web1"* ]]
  [[ "$output" == *"pim stop: web1"* ]]
}

# --- zsh ---------------------------------------------------------------------

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
    (( $+functions[_fzf_complete_pim-stop] && $+functions[_fzf_complete_pim-stop_post] )) && print hooks
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
  PATH="$PIM_TMP/stub:$PATH" FAKE_FZF_PICK=. run zcomplete -b 'pim stop **' "$REPO/shell/pim.zsh" "$FZF_ZSH"
  [ "$output" = "pim stop web1 db2 " ]
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

# --- fish --------------------------------------------------------------------

@test "fish: complete -C 'pim-stop ' and 'pim stop w'" {
  run fish -N -c 'source $argv[1]/pim-stop.fish; source $argv[1]/pim.fish; complete -C "pim-stop "; complete -C "pim stop w"' "$REPO/completions/fish"
  [ "$output" = $'db2\tVM\nweb1\tVM\nweb1\tVM' ]
}
