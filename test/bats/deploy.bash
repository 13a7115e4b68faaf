# Shared by deploy.bats, proxmox.bats and bench/deploy.sh (sourced).
# register PROFILE SEED IMAGE: IMAGE as a finished pim build of PROFILE (its key made from SEED); prints the id
register() {
  local profile=$1 seed=$2 img=$3 key id dir
  key=$(printf '%s' "$seed" | sha256sum | cut -c1-64)
  id="$profile-${key:0:12}"
  dir="$XDG_DATA_HOME/pim/builds/$id"
  mkdir -p "$dir"
  cp "$img" "$dir/$profile.qcow2"
  cat >"$dir/build.json" <<EOF
{"id":"$id","profile":"$profile","key":"$key","created":"$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)","recipe":1,
 "inputs":{"recipe":1,"profile":{},"answers":{},"files":{},"iso":null,"disk":{"size":"64M","format":"qcow2"},"firmware":"bios","boot":null},
 "iso":null,"disk":{"file":"$profile.qcow2","format":"qcow2","virtual_size":67108864,"bytes":0},"efivars":null,
 "settings":{"mem":"256M","cpus":1,"firmware":"bios","machine":"q35","disk_bus":"virtio","net":"virtio-net","ssh_user":"root"},
 "times":{"install":0,"provision":0,"total":0},"log":"build.log"}
EOF
  : >"$dir/build.log"
  chmod 444 "$dir"/*
  chmod 555 "$dir"
  echo "$id"
}
