#!/usr/bin/env zsh
# Drives a real interactive zsh in a pseudo-terminal (zsh/zpty) and presses TAB.
#
#   zsh -f test/shell/zcomplete.zsh [-b|-s] LINE [FILE...]
#
# A fresh `zsh -f -i` runs compinit, sources each FILE, and gets LINE then TAB.
# Prints the candidates the completion system added (one a line, sorted), or
# with -b the command line (BUFFER) after the TAB, e.g. after fzf inserted names,
# or with -s each candidate and what follows it once inserted: `VALUE|nospace`
# when it was added with an empty suffix (compadd -S ''), else `VALUE|space`.
# No fixed sleeps: each wait ends on a condition (the completion's own end:
# comppostfuncs, or the TAB widget having returned), bounded by 30 s times
# PIM_TEST_SLOW (default 1) only to end a test that hangs. Exit 1 then.
emulate -L zsh
zmodload zsh/zpty || exit 1
local mode=cands
if [[ $1 == -b ]]; then mode=buffer; shift; fi
if [[ $1 == -s ]]; then mode=suffix; shift; fi
local line=$1; shift
local tmp=$(mktemp -d /tmp/pimz.XXXXXX)
local out=$tmp/out done=$tmp/done
: >$out
{
  print -r -- "PS1='' PROMPT='' RPROMPT=''"
  print -r -- "autoload -Uz compinit && compinit -u -D"
  local f
  for f in "$@"; do print -r -- "source ${(q)f}"; done
  if [[ $mode == cands ]]; then
    # record what completion functions add; exit when completion is done
    print -r -- 'compadd() {
      if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
      local -a __h; builtin compadd -A __h "$@"; builtin compadd "$@"; local r=$?
      (( $#__h )) && print -rl -- $__h >> '$out'; return r; }'
    print -r -- "__t_done() { : > $done; exit }; comppostfuncs=(__t_done)"
  elif [[ $mode == suffix ]]; then
    # the same, with the suffix each candidate was added with
    print -r -- 'compadd() {
      if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
      local -a __h; builtin compadd -A __h "$@"; builtin compadd "$@"; local r=$?
      local __s=space __i
      for (( __i = 1; __i < $#; __i++ )); do [[ ${@[__i]} == -S && -z ${@[__i+1]} ]] && __s=nospace; done
      (( $#__h )) && print -rl -- ${^__h}"|$__s" >> '$out'; return r; }'
    print -r -- "__t_done() { : > $done; exit }; comppostfuncs=(__t_done)"
  else
    # TAB runs what it is bound to (fzf-completion, say) and then writes the
    # line: done when that widget has returned, however long fzf took
    print -r -- "__t_orig=\${\$(bindkey '^I')[(w)2]}"
    print -r -- "__t_tab() { zle \$__t_orig; print -r -- \"\$BUFFER\" > $out; : > $done; exit }; zle -N __t_tab; bindkey '^I' __t_tab"
  fi
} >$tmp/rc
zpty z "ZDOTDIR=$tmp zsh -f -i"
zpty -w z "source $tmp/rc"
zpty -w -n z "$line"$'\t'
local x end=$(( SECONDS + 30 * ${PIM_TEST_SLOW:-1} ))
while (( SECONDS < end )); do
  [[ -e $done ]] && break
  zpty -r -t z x 2>/dev/null
  sleep 0.05
done
zpty -d z 2>/dev/null
if [[ ! -e $done ]]; then rm -rf $tmp; print -u2 "zcomplete: timed out"; exit 1; fi
if [[ $mode != buffer ]]; then sort -u $out; else cat $out; fi
rm -rf $tmp
