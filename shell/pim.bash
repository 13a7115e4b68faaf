# pim.bash: completions and fzf helpers for pim in bash. In ~/.bashrc, after
# fzf's completion script if you use fzf:
#
#   source /path/to/pim/shell/pim.bash
#
# - completes every pim-* command and `pim <command> ...`, from the scripts in
#   ../completions/bash next to this file (VM names come from the runtime dir);
#   bash-completion is not needed;
# - with fzf's completion loaded first, `pim-stop **<TAB>` (and pim-console,
#   pim-status, pim-ip, pim-os, pim-qmp, pim-ga, pim-ssh, pim-exec, pim-wait,
#   pim-ctl, pim-snapshot, pim-forward, pim-log, pim-gdb, `pim stop **<TAB>`) picks VMs
#   from `pim-ps --table` (aligned columns under a fixed header) and inserts
#   their names; `pim **<TAB>` picks a command from a table of names and
#   summaries (fzf loaded later: source this again);
# - `pim-pick [--all]` prints the names of the VMs picked in fzf.
#
# Safe to source twice; the user's shell options are restored; private names
# start with __pim_. Works without fzf (plain completion only).
#
# Settings (environment):
#   PIM_COMPLETIONS_DIR  where the completion scripts are (default: ../completions next to this file)
#   PIM_FZF_OPTS         extra fzf options for **<TAB> and pim-pick (default: none)

[ -n "${BASH_VERSION-}" ] || return 0

# options this file changes while it is sourced; restored at the end
__pim_saved_opts="$(shopt -po errexit nounset noglob)"
set +o errexit +o nounset +o noglob

# commands whose first argument is a VM name; those that take several get fzf -m
__pim_vm_cmds='pim-stop pim-status pim-console pim-ip pim-os pim-qmp pim-ga pim-ssh pim-exec pim-wait pim-ctl pim-snapshot pim-forward pim-log pim-gdb'
__pim_multi_cmds=' pim-stop pim-status '

if [ -z "${__pim_bash_loaded-}" ]; then
  __pim_bash_loaded=1
  case ${BASH_SOURCE[0]} in
    */*) __pim_dir=${BASH_SOURCE[0]%/*} ;;
    *) __pim_dir=. ;;
  esac
  __pim_dir=$(builtin cd -- "$__pim_dir" && builtin pwd -P)
  __pim_f=${PIM_COMPLETIONS_DIR:-$__pim_dir/../completions}/bash
  for __pim_f in "$__pim_f"/pim "$__pim_f"/pim-*; do
    [ -f "$__pim_f" ] && builtin source "$__pim_f"
  done
  unset __pim_f

  # `pim-pick [--all]`: names of the VMs picked in fzf, one a line
  pim-pick() {
    if ! type -P fzf >/dev/null; then
      echo 'pim-pick: fzf is not installed' >&2
      return 127
    fi
    # shellcheck disable=SC2086
    command pim-ps --table "$@" | command fzf -m --header-lines=1 ${PIM_FZF_OPTS-} | command awk '{print $1}'
  }

  # the first field of each picked pim-ps line (and of pim's command list)
  __pim_fzf_names() { command awk '{print $1}'; }

  # pim's commands for fzf: a header, then NAME and SUMMARY in aligned columns
  __pim_fzf_commands() {
    command pim complete -- '' 2>/dev/null | command awk -F '\t' '
      /^:/ { next }
      { n[NR] = $1; d[NR] = $2; if (length($1) > w) w = length($1) }
      END { if (w < 7) w = 7; printf "%-" w "s  %s\n", "COMMAND", "SUMMARY"; for (i = 1; i <= NR; i++) if (i in n) printf "%-" w "s  %s\n", n[i], d[i] }'
  }

  # fzf's hooks: _fzf_complete_CMD feeds fzf, _fzf_complete_CMD_post turns the
  # picked lines into what is inserted; `complete -F _fzf_complete_CMD` routes
  # TAB through fzf's code, which calls our completion unless the word ends in **.
  # Only when fzf's completion is loaded; idempotent, so sourcing again after
  # loading fzf adds them.
  __pim_fzf_hook() {
    declare -F _fzf_complete >/dev/null || return 0
    local c m fn
    for c in pim $__pim_vm_cmds; do
      fn=__${c//-/_}_complete
      declare -F "$fn" >/dev/null || continue
      if [ "$c" != pim ]; then
        case $__pim_multi_cmds in *" $c "*) m=--multi ;; *) m=+m ;; esac
        eval "_fzf_complete_$c() { _fzf_complete $m --header-lines=1 \${PIM_FZF_OPTS-} -- \"\$@\" < <(command pim-ps --table 2>/dev/null); }"
        eval "_fzf_complete_${c}_post() { __pim_fzf_names; }"
      fi
      # what fzf calls when the word does not end in its trigger: our completion
      printf -v "_fzf_orig_completion_${c//-/_}" '%s' "complete -F %s $c #$fn"
      complete -F "_fzf_complete_$c" -o default -o bashdefault "$c"
    done
  }

  # `pim **<TAB>` picks a command, `pim stop **<TAB>` VMs
  _fzf_complete_pim() {
    if [ "${COMP_CWORD-0}" -le 1 ]; then
      _fzf_complete +m --header-lines=1 ${PIM_FZF_OPTS-} -- "$@" < <(__pim_fzf_commands)
    elif [[ " $__pim_vm_cmds " = *" pim-${COMP_WORDS[1]} "* ]]; then
      _fzf_complete --multi --header-lines=1 ${PIM_FZF_OPTS-} -- "$@" < <(command pim-ps --table 2>/dev/null)
    else
      _fzf_path_completion "$@"
    fi
  }
  _fzf_complete_pim_post() { __pim_fzf_names; }
fi

__pim_fzf_hook

eval "$__pim_saved_opts"
unset __pim_saved_opts
