# A libvirtd and an sshd of their own, for deploy.bats and bench/deploy.sh (sourced).
#
# libvirt_up DIR: libvirtd with its sockets in DIR/lv, in a mount namespace where its
#   qemu.conf (DIR/qemu.conf) says user root: with Debian's libvirt-qemu user, who may
#   not open /dev/kvm (present here, but broken), libvirt 9 finds its capability cache
#   outdated at every new definition ("KVM was enabled when probing, but it is not
#   available now") and probes QEMU again, which took up to 90 s here. virtlogd and
#   virtlockd are started unless they run. Then an sshd on a free loopback port
#   (exported as SSHD_PORT) with its own host key and authorized key, and DIR/bin/ssh, a
#   wrapper that gives ssh this config (ssh reads ~/.ssh from the passwd entry, not
#   $HOME): put DIR/bin first on PATH and qemu+ssh://root@127.0.0.1:$SSHD_PORT/system
#   works for libvirt and pim-deploy alike. Its sessions have XDG_DATA_HOME=DIR/remote,
#   so an ssh deploy target's pim store is DIR/remote/pim, not root's own.
# libvirt_down DIR: every domain and the pool pimt removed, the daemons stopped.
# lv_uri DIR: the local URI of that libvirtd.

lv_uri() { echo "qemu:///system?socket=$1/lv/libvirt-sock"; }

libvirt_up() {
  local d=$1
  mkdir -p "$d/lv" "$d/bin"
  cat >"$d/libvirtd.conf" <<EOF
unix_sock_dir = "$d/lv"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$d/libvirtd.log"
EOF
  printf 'user = "root"\ngroup = "root"\n' >"$d/qemu.conf"
  pgrep -x virtlogd >/dev/null || { virtlogd -d -p "$d/virtlogd.pid"; }
  pgrep -x virtlockd >/dev/null || { virtlockd -d -p "$d/virtlockd.pid"; }
  unshare -m -- sh -c 'mount --bind "$1" /etc/libvirt/qemu.conf && exec libvirtd -d -f "$2" -p "$3"' sh "$d/qemu.conf" "$d/libvirtd.conf" "$d/libvirtd.pid"
  # its socket, waited for as long as the daemon lives (a busy machine starts it slowly;
  # one that cannot start, e.g. beside another root libvirtd, says why in its log)
  for _ in $(seq 1200); do
    [ -S "$d/lv/libvirt-sock" ] && break
    if [ -s "$d/libvirtd.pid" ] && ! kill -0 "$(cat "$d/libvirtd.pid")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  virsh -c "$(lv_uri "$d")" version >/dev/null || { tail -n 5 "$d/libvirtd.log" >&2; return 1; }
  sshd_up "$d"
}

# sshd_up DIR: the sshd alone (proxmox.bats uses it as a PVE node's SSH). Its sessions
# have XDG_DATA_HOME=DIR/remote, TMPDIR=DIR/remote-tmp and DIR/remote-bin first on PATH.
sshd_up() {
  local d=$1
  mkdir -p "$d/bin" "$d/remote-tmp" "$d/remote-bin"
  # an sshd on loopback for qemu+ssh://, with its own host key and authorized key
  local s="$d/ssh"
  mkdir -p "$s" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$s/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$s/id"
  cp "$s/id.pub" "$s/authorized_keys"
  SSHD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export SSHD_PORT
  cat >"$s/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $s/host_key
AuthorizedKeysFile $s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $s/sshd.pid
Subsystem sftp internal-sftp
SetEnv XDG_DATA_HOME=$d/remote TMPDIR=$d/remote-tmp PATH=$d/remote-bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
  /usr/sbin/sshd -f "$s/sshd_config" -E "$s/sshd.log"
  # ssh reads ~/.ssh from the passwd entry, not $HOME: this file's own config, through a
  # wrapper first on PATH (libvirt and pim-deploy both run "ssh")
  cat >"$s/config" <<EOF
Host 127.0.0.1
  UserKnownHostsFile $s/known_hosts
  StrictHostKeyChecking yes
  IdentityFile $s/id
  IdentitiesOnly yes
EOF
  echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1-2 "$s/host_key.pub")" >"$s/known_hosts"
  printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$s/config" >"$d/bin/ssh"
  chmod +x "$d/bin/ssh"
}

sshd_down() {
  [ -f "$1/ssh/sshd.pid" ] && kill "$(cat "$1/ssh/sshd.pid")" 2>/dev/null
  return 0
}

libvirt_down() {
  local d=$1 dom
  for dom in $(virsh -c "$(lv_uri "$d")" list --all --name 2>/dev/null); do
    virsh -c "$(lv_uri "$d")" destroy "$dom" >/dev/null 2>&1
    virsh -c "$(lv_uri "$d")" undefine "$dom" >/dev/null 2>&1
  done
  virsh -c "$(lv_uri "$d")" pool-destroy pimt >/dev/null 2>&1
  virsh -c "$(lv_uri "$d")" pool-undefine pimt >/dev/null 2>&1
  local p
  for p in ssh/sshd libvirtd virtlockd virtlogd; do
    [ -f "$d/$p.pid" ] && kill "$(cat "$d/$p.pid")" 2>/dev/null
  done
  return 0
}
