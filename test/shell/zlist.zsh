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
  print -r -- "print -r -- READY"
} >$tmp/rc
zpty z "ZDOTDIR=$tmp COLUMNS=200 LINES=50 zsh -f -i"
zpty -w z "source $tmp/rc"
local x all= i
for i in {1..100}; do
  zpty -r -t z x 2>/dev/null && all+=$x
  [[ $all == *READY* ]] && break
  sleep 0.05
done
zpty -w -n z "$line"$'\t\t'
all=
local quiet=0
for i in {1..200}; do
  if zpty -r -t z x 2>/dev/null; then all+=$x; quiet=0; else (( quiet++ )); fi
  (( quiet > 10 && $#all )) && break
  sleep 0.05
done
zpty -d z 2>/dev/null
rm -rf $tmp
print -r -- "$all" | command sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1b[>=]//g' | command tr -d '\r\a'
