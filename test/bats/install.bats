#!/usr/bin/env bats
# What a user gets from installing pim: the man pages (`man pim-run`), the
# completions where each shell finds them by itself, and the fish fzf helper,
# after ./install.sh --no-demo into a clean HOME, and the man pages after
# `npm install -g --prefix P .` with P's man path. No VMs.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  export PIM_TMP
  command -v man >/dev/null || skip "man (man-db) is not installed"
  # a copy of the checkout (as in everyday.bats), so that nothing here touches the real
  # dist/ or node_modules: its node_modules holds links to the real packages
  local t="$PIM_TMP/inst" e
  mkdir -p "$t/repo/node_modules" "$t/home" "$t/stub"
  tar -C "$REPO" --exclude=./node_modules --exclude=./dist --exclude='./dist.*' --exclude=./.git -cf - . | tar -C "$t/repo" -xf -
  for e in "$REPO"/node_modules/* "$REPO"/node_modules/.bin; do ln -s "$e" "$t/repo/node_modules/"; done
  # the hidden lock file that tells install.sh node_modules is current (no npm ci)
  cp "$REPO/node_modules/.package-lock.json" "$t/repo/node_modules/"
  # Node 22 first on PATH (install.sh would fetch it otherwise); no pim on PATH
  export INST_PATH="$REPO/node_modules/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  export INST_HOME="$t/home"
  env -i HOME="$INST_HOME" PATH="$INST_PATH" TERM=dumb bash "$t/repo/install.sh" --no-demo >"$t/install.log" 2>&1 || { cat "$t/install.log" >&2; return 1; }
  # an fzf that picks the lines matching $FAKE_FZF_PICK after its --header-lines
  cat >"$t/stub/fzf" <<'STUB'
#!/bin/bash
skip=0
for a in "$@"; do case $a in --header-lines=*) skip=${a#*=} ;; esac; done
tail -n +$((skip + 1)) | grep -- "${FAKE_FZF_PICK:-.}"
STUB
  cat >"$t/stub/pim-ps" <<'STUB'
#!/bin/sh
printf 'NAME  STATE    PID\nweb1  running  101\ndb2   running  102\n'
STUB
  chmod +x "$t/stub/fzf" "$t/stub/pim-ps"
}

teardown_file() {
  pim_cleanup
}

# the user's shell after install.sh: their HOME, ~/.local/bin on PATH
as_user() { env -i HOME="$INST_HOME" PATH="$INST_HOME/.local/bin:$INST_PATH" TERM=dumb XDG_RUNTIME_DIR="$XDG_RUNTIME_DIR" "$@"; }

@test "install.sh: man pim-run works (man finds ~/.local/share/man through ~/.local/bin on PATH)" {
  run as_user man -w pim-run
  [ "$status" -eq 0 ]
  # (man-db prints the file the link points to)
  [ "$output" = "$(readlink -f "$INST_HOME/.local/share/man/man1/pim-run.1")" ]
  as_user manpath | tr : '\n' | grep -qx "$INST_HOME/.local/share/man"
  run as_user man pim-run
  [ "$status" -eq 0 ]
  [[ "$output" == *"pim-run - Boot an image"* ]]
  [[ "$output" == *"--snapshot"* ]]
  [[ "$output" == *"EXIT STATUS"* ]]
  # every executable has its page
  local f
  for f in "$INST_HOME"/.local/bin/pim*; do as_user man -w "$(basename "$f")" >/dev/null; done
}

@test "install.sh: completions where bash-completion, zsh and fish find them; no rc file edited" {
  [ ! -e "$INST_HOME/.bashrc" ] && [ ! -e "$INST_HOME/.zshrc" ]
  grep -q "add to ~/.bashrc: .*shell/pim.bash" "$PIM_TMP/inst/install.log"
  # fish loads completions by command name from ~/.config/fish/completions
  run as_user fish -c 'complete -C "pim-stop --t"'
  [[ "$output" == "--timeout"* ]]
  # bash-completion's loader finds ~/.local/share/bash-completion/completions/NAME
  [ -r /usr/share/bash-completion/bash_completion ] || skip "bash-completion is not installed"
  run as_user bash --norc -c 'source /usr/share/bash-completion/bash_completion; __load_completion pim-stop; complete -p pim-stop'
  [[ "$output" == *"__pim_stop_complete pim-stop"* ]]
  # zsh: the _pim-* functions in ~/.local/share/zsh/site-functions
  [ -L "$INST_HOME/.local/share/zsh/site-functions/_pim-cp" ] && [ -r "$INST_HOME/.local/share/zsh/site-functions/_pim-cp" ]
  # the rc line it prints loads pim.zsh, which completes from the installed copy
  [ -r "$INST_HOME/.local/share/pim/dist/shell/pim.zsh" ] && [ -r "$INST_HOME/.local/share/pim/dist/completions/zsh/_pim-cp" ]
}

@test "install.sh --update-rc adds one line to ~/.bashrc and ~/.zshrc, once" {
  run env -i HOME="$INST_HOME" PATH="$INST_PATH" TERM=dumb bash "$PIM_TMP/inst/repo/install.sh" --no-demo --update-rc
  [ "$status" -eq 0 ]
  run env -i HOME="$INST_HOME" PATH="$INST_PATH" TERM=dumb bash "$PIM_TMP/inst/repo/install.sh" --no-demo --update-rc
  [ "$status" -eq 0 ]
  [ "$(grep -c 'shell/pim.bash' "$INST_HOME/.bashrc")" -eq 1 ]
  [ "$(grep -c 'shell/pim.zsh' "$INST_HOME/.zshrc")" -eq 1 ]
  # and that line works in bash
  run as_user bash -c 'source ~/.bashrc; complete -p pim-stop'
  [[ "$output" == *"pim-stop"* ]]
  rm -f "$INST_HOME/.bashrc" "$INST_HOME/.zshrc"
}

@test "fish: the conf.d helper gives pim-pick, and ** on a VM command is routed to fzf" {
  [ -L "$INST_HOME/.config/fish/conf.d/pim.fish" ]
  run as_user env PATH="$PIM_TMP/inst/stub:$INST_HOME/.local/bin:$INST_PATH" FAKE_FZF_PICK=db fish -i -c 'pim-pick; functions -q __pim_fzf_tab; and bind \t'
  echo "$output"
  [[ "${lines[0]}" == "db2" ]]
  [[ "$output" == *"__pim_fzf_tab"* ]]
}

@test "npm install -g --prefix P .: man pim-run with P's man path" {
  local p="$PIM_TMP/npmg"
  (cd "$REPO" && npm install -g --prefix "$p" . --no-audit --no-fund --loglevel=error)
  run env MANPATH="$p/share/man" man -w pim-run
  [ "$status" -eq 0 ]
  [ "$(readlink -f "$output")" = "$(readlink -f "$REPO/dist/man/man1/pim-run.1")" ]
  run env MANPATH="$p/share/man" man pim-vm
  [[ "$output" == *"pim-vm list"* ]]
}
