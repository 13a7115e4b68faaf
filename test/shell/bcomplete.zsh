#!/usr/bin/env zsh
# Drives a real interactive bash in a pseudo-terminal (zsh/zpty) and presses
# TAB, so that readline itself runs the completion, with its fallbacks
# (`complete -o default`: file names when the answer allows them).
#
#   zsh -f test/shell/bcomplete.zsh LINE [FILE...]
#
# A fresh `bash --norc -i` sources each FILE, gets LINE then TAB, and prints
# the command line (READLINE_LINE) after the TAB. No fixed sleeps: readline
# reads Ctrl-X Ctrl-D only once the TAB's completion has returned; each wait
# is bounded by 30 s times PIM_TEST_SLOW (default 1) only to end a hang.
# Exit 1 on a timeout.
emulate -L zsh
zmodload zsh/zpty || exit 1
local line=$1; shift
local tmp=$(mktemp -d /tmp/pimb.XXXXXX)
local out=$tmp/out
{
  print -r -- "PS1='> '"
  local f
  for f in "$@"; do print -r -- "source ${(q)f}"; done
  # Ctrl-X Ctrl-D writes the line as it is after the TAB
  print -r -- "bind -x '\"\\C-x\\C-d\": printf \"%s\\n\" \"\$READLINE_LINE\" >$out'"
  print -r -- "echo READY"
} >$tmp/rc
zpty z "bash --norc --noprofile -i"
zpty -w z "source $tmp/rc"
local x all= end=$(( SECONDS + 30 * ${PIM_TEST_SLOW:-1} ))
while (( SECONDS < end )); do
  zpty -r -t z x 2>/dev/null && all+=$x
  [[ $all == *READY* ]] && break
  sleep 0.05
done
zpty -w -n z "$line"$'\t'
zpty -w -n z $'\C-x\C-d'
while (( SECONDS < end )); do
  [[ -s $out ]] && break
  zpty -r -t z x 2>/dev/null
  sleep 0.05
done
zpty -d z 2>/dev/null
if [[ ! -s $out ]]; then rm -rf $tmp; print -u2 "bcomplete: timed out"; exit 1; fi
cat $out
rm -rf $tmp
