# Parse a debconf preseed file: the subset pim's fake debian-installer needs.
#
#   busybox awk -v out=DIR -f preseed.awk preseed.cfg
#
# Every "OWNER QUESTION TYPE VALUE" line is stored as the file
# DIR/<QUESTION with each character outside [A-Za-z0-9._-] as _> holding VALUE
# (preseed/late_command -> DIR/preseed_late_command); a later line for the same
# question wins, as in debconf. As debconf-set-selections does, a line ending
# in a backslash goes on on the next line (the backslash and the newline are
# dropped, the next line's leading blanks kept), exactly one blank separates
# TYPE from VALUE, and lines starting with # are comments. CRs are dropped.

function store(line,    q, v, f) {
	if (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/) return
	if (!match(line, /^[ \t]*[^ \t]+[ \t]+[^ \t]+[ \t]+[^ \t]+/)) return
	v = substr(line, RSTART + RLENGTH)
	sub(/^[ \t]/, "", v)
	sub(/[ \t]+$/, "", v)
	q = line
	sub(/^[ \t]*[^ \t]+[ \t]+/, "", q) # drop the owner
	sub(/[ \t].*$/, "", q)
	gsub(/[^A-Za-z0-9._-]/, "_", q)
	sub(/^\.+/, "_", q)
	f = out "/" q
	printf "%s\n", v > f
	close(f)
	n++
}

{
	sub(/\r$/, "")
	line = buf $0
	if (line ~ /\\$/) {
		buf = substr(line, 1, length(line) - 1)
		next
	}
	buf = ""
	store(line)
}

END {
	if (buf != "") store(buf)
	if (n == 0) exit 1 # no question at all: not a preseed file
}
