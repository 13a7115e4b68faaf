#!/usr/bin/env zsh
# Drives a real interactive zsh in a pseudo-terminal (zsh/zpty), types LINE
# and presses TAB twice: prints the screen text zsh shows (the completion
# listing with its descriptions), without escape sequences or CRs.
#
#   zsh -f test/shell/zlist.zsh LINE [FILE...]
#
# A fresh `zsh -f -i` runs compinit and sources each FILE first. Unlike
# zcomplete.zsh (which records the candidates), this shows what the user sees,
# e.g. a stray `--` that zsh's _describe draws for an empty description.
emulate -L zsh
zmodload zsh/zpty || exit 1
local line=$1; shift
local tmp=$(mktemp -d /tmp/pimzl.XXXXXX)
{
  print -r -- "PS1='> ' PROMPT='> ' RPROMPT=''"
  print -r -- "autoload -Uz compinit && compinit -u -D"
  local f
  for f in "$@"; do print -r -- "source ${(q)f}"; done
  # TAB runs what it is bound to, then redraws (the listing is on the screen
  # then) and, the second time, says it is done: no waiting on a quiet spell
  print -r -- "__t_orig=\${\$(bindkey '^I')[(w)2]} __t_n=0"
  print -r -- "__t_tab() { zle \$__t_orig; zle -R; (( ++__t_n == 2 )) && : > $tmp/done }; zle -N __t_tab; bindkey '^I' __t_tab"
  print -r -- "print -r -- READY"
} >$tmp/rc
zpty z "ZDOTDIR=$tmp COLUMNS=200 LINES=50 zsh -f -i"
zpty -w z "source $tmp/rc"
# each wait ends on its condition; the bound (30 s times PIM_TEST_SLOW) only ends a hang
local x all= end=$(( SECONDS + 30 * ${PIM_TEST_SLOW:-1} ))
while (( SECONDS < end )); do
  zpty -r -t z x 2>/dev/null && all+=$x
  [[ $all == *READY* ]] && break
  sleep 0.05
done
zpty -w -n z "$line"$'\t\t'
all=
while (( SECONDS < end )); do
  zpty -r -t z x 2>/dev/null && all+=$x
  [[ -e $tmp/done ]] && break
  sleep 0.05
done
# what zsh drew before it said so
while zpty -r -t z x 2>/dev/null; do all+=$x; done
zpty -d z 2>/dev/null
rm -rf $tmp
print -r -- "$all" | command sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1b[>=]//g' | command tr -d '\r\a'
