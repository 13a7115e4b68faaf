# pim.fish: fzf helpers for pim in fish. ./install.sh links it into
# ~/.config/fish/conf.d, which fish sources at start-up; or, by hand:
#
#   source /path/to/pim/shell/pim.fish
#
# - completions: fish loads them by command name from ~/.config/fish/completions
#   (./install.sh links ../completions/fish there); this file adds them from
#   ../completions/fish next to it when they are not there;
# - with fzf installed, `pim-stop **<TAB>` (and pim-console, pim-status, pim-ip,
#   pim-os, pim-qmp, pim-ga, pim-ssh, pim-exec, pim-wait, pim-ctl, pim-snapshot,
#   pim-forward, pim-log, pim-gdb, `pim stop **<TAB>`) picks VMs from
#   `pim-ps --table` and inserts their names, as fzf's ** does in bash and zsh;
#   any other TAB completes as usual;
# - `pim-pick [--all]` prints the names of the VMs picked in fzf.
#
# Safe to source twice; private names start with __pim_. Works without fzf.
#
# Settings (environment):
#   PIM_FZF_OPTS  extra fzf options for **<TAB> and pim-pick (default: none)

status is-interactive; or return 0

set -g __pim_vm_cmds pim-stop pim-status pim-console pim-ip pim-os pim-qmp pim-ga pim-ssh pim-exec pim-wait pim-ctl pim-snapshot pim-forward pim-log pim-gdb
set -g __pim_multi_cmds pim-stop pim-status

# completions next to this file, for a checkout sourced by hand
set -l __pim_dir (path dirname (status filename))/../completions/fish
for f in $__pim_dir/*.fish
    set -l b (path basename $f)
    set -l found
    for d in $fish_complete_path
        test -f $d/$b; and set found 1; and break
    end
    set -q found[1]; or source $f
end

# `pim-pick [--all]`: names of the VMs picked in fzf, one a line
function pim-pick --description 'pick pim VMs in fzf'
    if not type -q fzf
        echo 'pim-pick: fzf is not installed' >&2
        return 127
    end
    command pim-ps --table $argv | command fzf -m --header-lines=1 (string split -n ' ' -- "$PIM_FZF_OPTS") | string replace -r '\s.*' ''
end

# the command a word completes for: pim-stop, or pim-stop for `pim stop`
function __pim_fzf_cmd
    set -l toks (commandline -opc)
    test (count $toks) -ge 1; or return 1
    if test "$toks[1]" = pim; and test (count $toks) -ge 2
        echo pim-$toks[2]
    else
        echo $toks[1]
    end
end

# TAB: `CMD **` on a VM command picks VMs in fzf; anything else completes as usual
function __pim_fzf_tab
    set -l tok (commandline -ct)
    set -l cmd (__pim_fzf_cmd)
    if string match -q -- '*\*\*' $tok; and contains -- "$cmd" $__pim_vm_cmds; and type -q fzf
        set -l m +m
        contains -- $cmd $__pim_multi_cmds; and set m -m
        set -l q (string replace -r '\*\*$' '' -- $tok)
        set -l names (command pim-ps --table 2>/dev/null | command fzf $m --header-lines=1 --query=$q (string split -n ' ' -- "$PIM_FZF_OPTS") | string replace -r '\s.*' '')
        if test (count $names) -gt 0
            commandline -tr -- (string join ' ' -- $names)' '
        end
        commandline -f repaint
        return
    end
    commandline -f complete
end

bind \t __pim_fzf_tab
for mode in insert default
    bind -M $mode \t __pim_fzf_tab 2>/dev/null
end
