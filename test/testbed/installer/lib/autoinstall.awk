# Parse cloud-init user-data holding an Ubuntu autoinstall config: the subset
# of YAML that pim's fake subiquity needs.
#
#   busybox awk -v out=DIR -f autoinstall.awk user-data
#
# Mappings by indentation ("key:" alone opens a mapping or a list, "key: value"
# is a scalar), block lists ("- item", one line each), one-line flow lists
# (["a", 'b', c]), plain, 'single' and "double" quoted scalars, comments.
# Anchors, multi-line scalars, flow mappings and lists of mappings are not read.
# A scalar at path a/b/c is stored as DIR/a_b_c, the Nth item of a list as
# DIR/a_b_c.NNN (001, 002...). Exit status: 2 when the first line is not
# "#cloud-config" (cloud-init would not read it as a config), 0 otherwise.

function unquote_double(s,    r, c, i) {
	r = ""
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (c == "\\" && i < length(s)) {
			i++
			c = substr(s, i, 1)
			if (c == "n") c = "\n"
			else if (c == "t") c = "\t"
		}
		r = r c
	}
	return r
}

# scalar(s): the value of the scalar that starts s; sets REST to what follows it.
function scalar(s,    i, c, r) {
	sub(/^[ \t]+/, "", s)
	c = substr(s, 1, 1)
	if (c == "\"") {
		for (i = 2; i <= length(s); i++) {
			c = substr(s, i, 1)
			if (c == "\\") { i++; continue }
			if (c == "\"") break
		}
		REST = substr(s, i + 1)
		return unquote_double(substr(s, 2, i - 2))
	}
	if (c == "'") {
		r = ""
		for (i = 2; i <= length(s); i++) {
			c = substr(s, i, 1)
			if (c == "'") {
				if (substr(s, i + 1, 1) == "'") { r = r "'"; i++; continue }
				break
			}
			r = r c
		}
		REST = substr(s, i + 1)
		return r
	}
	REST = ""
	sub(/[ \t]+#.*$/, "", s)
	sub(/[ \t]+$/, "", s)
	return s
}

function put(name, v,    f) {
	f = out "/" name
	printf "%s\n", v > f
	close(f)
}

function item(path, v,    name) {
	name = path
	gsub(/\//, "_", name)
	count[name]++
	put(sprintf("%s.%03d", name, count[name]), v)
}

# flow(path, s): s is "[a, 'b', "c"]"
function flow(path, s,    v, c, i) {
	s = substr(s, 2)
	while (1) {
		sub(/^[ \t,]+/, "", s)
		if (s == "" || substr(s, 1, 1) == "]") return
		c = substr(s, 1, 1)
		if (c == "\"" || c == "'") {
			v = scalar(s)
			s = REST
		} else {
			for (i = 1; i <= length(s); i++) {
				c = substr(s, i, 1)
				if (c == "," || c == "]") break
			}
			v = substr(s, 1, i - 1)
			sub(/[ \t]+$/, "", v)
			s = substr(s, i)
		}
		item(path, v)
	}
}

NR == 1 {
	sub(/\r$/, "")
	if ($0 !~ /^#cloud-config[ \t]*$/) { bad = 1; exit 2 }
	next
}

{
	sub(/\r$/, "")
	if ($0 ~ /^[ \t]*(#.*)?$/) next
	line = $0
	match(line, /^ */)
	ind = RLENGTH
	body = substr(line, ind + 1)
	if (body ~ /^-([ \t]|$)/) {
		# list item: it belongs to the last "key:" that opened something
		if (open_path != "" && ind >= open_ind) {
			v = substr(body, 2)
			if (v ~ /^[ \t]*[A-Za-z0-9_-]+:([ \t]|$)/) next # a mapping: not read
			item(open_path, scalar(v))
		}
		next
	}
	if (!match(body, /^[A-Za-z0-9_.-]+:([ \t]|$)/)) next
	key = substr(body, 1, index(body, ":") - 1)
	val = substr(body, index(body, ":") + 1)
	sub(/^[ \t]+/, "", val)
	# close the mappings this line is not inside
	while (depth > 0 && kind[depth] >= ind) depth--
	depth++
	kind[depth] = ind
	name[depth] = key
	path = name[1]
	for (i = 2; i <= depth; i++) path = path "/" name[i]
	if (val == "" || val ~ /^#/) {
		open_path = path
		open_ind = ind
	} else {
		open_path = ""
		if (substr(val, 1, 1) == "[") flow(path, val)
		else {
			flat = path
			gsub(/\//, "_", flat)
			put(flat, scalar(val))
		}
	}
}
