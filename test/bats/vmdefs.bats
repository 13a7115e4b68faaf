#!/usr/bin/env bats
# VM definitions (vms.d/*.yml, pim-vm): pim-run NAME boots a defined VM with its
# settings, its qemu_args expanded (${vars.X}, ${vm.*}, ${image.NAME}, ${runtime}),
# flags override the definition, an undefined variable is 78 at FILE:LINE with
# nothing started, pim-ps --all lists defined VMs. The test bed's full guest is
# the store image "base"; what QEMU was given is read from its command line.

load helper

setup_file() {
  pim_isolate
  need_testbed
  mkdir -p "$XDG_DATA_HOME/pim/images" "$XDG_CONFIG_HOME/pim/vms.d" "$PIM_TMP/disks"
  ln -s "$TESTBED/guest-full.qcow2" "$XDG_DATA_HOME/pim/images/base.qcow2"
  ln -s "$TESTBED/guest-full.qcow2" "$PIM_TMP/disks/other.qcow2"
  printf 'vars:\n  site: lab\n  serial: from-pim-yml\n' >"$XDG_CONFIG_HOME/pim/pim.yml"
  cat >"$XDG_CONFIG_HOME/pim/vms.d/lab.yml" <<'EOF'
default:
  mem: 128M
  cpus: 1
  snapshot: true
web:
  image: base
  vars:
    serial: web-1
  qemu_args:
    - -smbios
    - type=1,serial=${vars.serial},product=${vars.site}
    - -fw_cfg
    - name=opt/pim/port,string=${vm.ssh_port}:${vm.name}:${vm.mem}:${vm.cpus}
    - -fw_cfg
    - name=opt/pim/img,string=${image.base};cost $$5
rel:
  image: ../../../disks/other.qcow2
broken:
  image: base
  qemu_args:
    - -smbios
    - type=1,serial=${vars.nosuch}
EOF
}

teardown() { pim_stop_all; }
teardown_file() { pim_cleanup; }

# the QEMU command line of VM $1, one word a line
qemu_argv() { tr '\0' '\n' <"/proc/$(cat "$XDG_RUNTIME_DIR/pim/$1.pid")/cmdline"; }
ps_field() { pim-ps --json | jq -r --arg n "$1" "select(.name==\$n).$2"; }

@test "pim-run NAME boots the definition: its image, mem and cpus, and qemu_args with every kind of variable" {
  run --separate-stderr pim-run web
  [ "$status" -eq 0 ]
  [ "$output" = web ]
  [ "$(ps_field web image)" = "$XDG_DATA_HOME/pim/images/base.qcow2" ]
  port=$(ps_field web ssh_port)
  qemu_argv web >"$PIM_TMP/argv"
  grep -qx -- '-m' "$PIM_TMP/argv" && grep -A1 -x -- '-m' "$PIM_TMP/argv" | grep -qx 128M
  grep -A1 -x -- '-smp' "$PIM_TMP/argv" | grep -qx 1
  grep -qx 'type=1,serial=web-1,product=lab' "$PIM_TMP/argv" # the entry's var over pim.yml's; pim.yml's
  grep -qx "name=opt/pim/port,string=$port:web:128M:1" "$PIM_TMP/argv"
  grep -qx "name=opt/pim/img,string=$XDG_DATA_HOME/pim/images/base.qcow2;cost \$5" "$PIM_TMP/argv"
  # snapshot: true in default: the image is not written
  grep -q 'snapshot=on' "$PIM_TMP/argv"
  # and the guest really booted with it: the agent answers
  pim-wait web --for agent --timeout 120
}

@test "flags override the definition; words after -- come after qemu_args" {
  run --separate-stderr pim-run web --name web2 --mem 256M --cpus 2 -- -smbios type=11,value=extra
  [ "$status" -eq 0 ]
  [ "$output" = web2 ]
  qemu_argv web2 >"$PIM_TMP/argv"
  grep -A1 -x -- '-m' "$PIM_TMP/argv" | grep -qx 256M
  grep -A1 -x -- '-smp' "$PIM_TMP/argv" | grep -qx 2
  # ${vm.name} is the name it runs under
  grep -q ':web2:256M:2$' "$PIM_TMP/argv"
  defined=$(grep -n 'type=1,serial=web-1' "$PIM_TMP/argv" | cut -d: -f1)
  extra=$(grep -n 'type=11,value=extra' "$PIM_TMP/argv" | cut -d: -f1)
  [ "$defined" -lt "$extra" ]
}

@test "an image path is taken relative to the file that defines it" {
  run --separate-stderr pim-run rel
  [ "$status" -eq 0 ]
  [ "$(ps_field rel image)" = "$PIM_TMP/disks/other.qcow2" ]
}

@test "an undefined variable is 78 at the FILE:LINE of its string, and nothing starts" {
  run --separate-stderr pim-run broken
  [ "$status" -eq 78 ]
  [ "$(wc -l <<<"$stderr")" -eq 1 ]
  [[ "$stderr" == "pim-run: $XDG_CONFIG_HOME/pim/vms.d/lab.yml:22: qemu_args: undefined variable \${vars.nosuch}"* ]]
  [ -z "$(pim-ps -q)" ]
  [ -z "$(ls "$XDG_RUNTIME_DIR/pim" 2>/dev/null | grep -v '\.log$')" ]
}

@test "a broken vms.d is 78 for pim-run of a name, and does not stand in the way of a path" {
  printf 'web:\n  memory: 1G\n' >"$XDG_CONFIG_HOME/pim/vms.d/zz.yml"
  run --separate-stderr pim-run web
  [ "$status" -eq 78 ]
  [[ "$stderr" == *"zz.yml:2: unknown key \"memory\""* ]]
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name plain --snapshot --mem 128M --cpus 1
  rm "$XDG_CONFIG_HOME/pim/vms.d/zz.yml"
  [ "$status" -eq 0 ]
}

@test "pim-vm list and show --explain; pim-ps --all lists the defined VMs that do not run" {
  run --separate-stderr pim-vm list
  [ "$status" -eq 0 ]
  [ "$(cut -f1 <<<"$output" | tr '\n' ' ')" = "broken rel web " ]
  [[ "$(grep '^web' <<<"$output")" == $'web\tbase\t128M\t1\t-\t'* ]]
  run --separate-stderr pim-vm show web --explain
  [ "$status" -eq 0 ]
  [[ "$output" == *$'mem\t"128M"\t'"$XDG_CONFIG_HOME/pim/vms.d/lab.yml:2"* ]]
  [[ "$output" == *$'image\t"base"\t'"$XDG_CONFIG_HOME/pim/vms.d/lab.yml:6"* ]]
  run pim-vm show nosuch
  [ "$status" -eq 66 ]
  run --separate-stderr pim-ps --all --json
  [ "$status" -eq 0 ]
  [ "$(jq -r 'select(.name=="web") | .state + " " + .image' <<<"$output")" = "stopped base" ]
  [ "$(jq -r 'select(.name=="rel") | .state' <<<"$output")" = stopped ]
}
