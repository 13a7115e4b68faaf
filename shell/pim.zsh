# pim.zsh: completions and fzf helpers for pim in zsh. In ~/.zshrc, after compinit:
#
#   source /path/to/pim/shell/pim.zsh
#
# - completes every pim-* command and `pim <command> ...`, from the scripts in
#   ../completions/zsh next to this file (VM names come from the runtime dir);
# - with fzf's completion.zsh loaded (before or after this file),
#   `pim-stop **<TAB>` (and pim-console, pim-status, pim-ip, pim-os, pim-qmp,
#   pim-ga, pim-ssh, pim-exec, pim-wait, pim-ctl, pim-snapshot, pim-forward,
#   pim-log, pim-gdb, `pim stop **<TAB>`) picks VMs from `pim-ps --table` (aligned
#   columns under a fixed header) and inserts their names; `pim **<TAB>` picks
#   a command from a table of names and summaries;
# - `pim-pick [--all]` prints the names of the VMs picked in fzf.
#
# Safe to source twice; the user's options are left as they were; private names
# start with __pim_. Works without fzf (plain completion only).
#
# Settings (environment):
#   PIM_COMPLETIONS_DIR  where the completion scripts are (default: ../completions next to this file)
#   PIM_FZF_OPTS         extra fzf options for **<TAB> and pim-pick (default: none)

if (( ${+__pim_zsh_loaded} )); then 'builtin' 'return' 0; fi
typeset -g __pim_zsh_loaded=1
typeset -g __pim_zsh_dir=${${(%):-%x}:A:h}

# commands whose first argument is a VM name; those that take several get fzf -m
typeset -ga __pim_vm_cmds=(pim-stop pim-status pim-console pim-ip pim-os pim-qmp pim-ga pim-ssh pim-exec pim-wait pim-ctl pim-snapshot pim-forward pim-log pim-gdb)
typeset -ga __pim_multi_cmds=(pim-stop pim-status)

() {
  'builtin' 'emulate' '-L' 'zsh'
  local dir=${PIM_COMPLETIONS_DIR:-$__pim_zsh_dir/../completions}/zsh f
  dir=${dir:A}
  [[ -d $dir ]] || return 0
  # for a compinit that runs later
  (( ${fpath[(Ie)$dir]} )) || fpath=($dir $fpath)
  # compinit already ran: register now
  if (( ${+functions[compdef]} )); then
    for f in $dir/_pim(|-*)(N); do
      unfunction ${f:t} 2>/dev/null
      autoload -Uz -- ${f:t}
      compdef ${f:t} ${${f:t}#_}
    done
  fi
}

# `pim-pick [--all]`: names of the VMs picked in fzf, one a line
pim-pick() {
  'builtin' 'emulate' '-L' 'zsh'
  if (( ! ${+commands[fzf]} )); then
    print -ru2 -- 'pim-pick: fzf is not installed'
    return 127
  fi
  command pim-ps --table "$@" | command fzf -m --header-lines=1 ${(z)PIM_FZF_OPTS-} | command awk '{print $1}'
}

# the first field of each picked pim-ps line (and of pim's command list)
__pim_fzf_names() { command awk '{print $1}' }

# pim's commands for fzf: a header, then NAME and SUMMARY in aligned columns
__pim_fzf_commands() {
  command pim complete -- '' 2>/dev/null | command awk -F '\t' '
    /^:/ { next }
    { n[NR] = $1; d[NR] = $2; if (length($1) > w) w = length($1) }
    END { if (w < 7) w = 7; printf "%-" w "s  %s\n", "COMMAND", "SUMMARY"; for (i = 1; i <= NR; i++) if (i in n) printf "%-" w "s  %s\n", n[i], d[i] }'
}

# fzf's hooks: _fzf_complete_CMD feeds fzf, _fzf_complete_CMD_post turns the
# picked lines into what is inserted. fzf looks for them by name at TAB time.
() {
  'builtin' 'emulate' '-L' 'zsh'
  local c m
  for c in $__pim_vm_cmds; do
    (( ${__pim_multi_cmds[(Ie)$c]} )) && m=--multi || m=+m
    eval "_fzf_complete_$c() { 'builtin' 'emulate' '-L' 'zsh'; _fzf_complete $m --header-lines=1 \${(z)PIM_FZF_OPTS-} -- \"\$@\" < <(command pim-ps --table 2>/dev/null) }"
    eval "_fzf_complete_${c}_post() { __pim_fzf_names }"
  done
}

# `pim **<TAB>` picks a command, `pim stop **<TAB>` VMs
_fzf_complete_pim() {
  'builtin' 'emulate' '-L' 'zsh'
  local -a w
  w=(${(z)1})
  if (( $#w == 1 )); then
    _fzf_complete +m --header-lines=1 ${(z)PIM_FZF_OPTS-} -- "$@" < <(__pim_fzf_commands)
  elif (( ${__pim_vm_cmds[(Ie)pim-$w[2]]} )); then
    _fzf_complete --multi --header-lines=1 ${(z)PIM_FZF_OPTS-} -- "$@" < <(command pim-ps --table 2>/dev/null)
  fi
}
_fzf_complete_pim_post() { __pim_fzf_names }
