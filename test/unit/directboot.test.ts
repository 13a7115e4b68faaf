import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { directBoot, grubDefault } from '../../lib/builder/directboot.ts';
import { openDisk, partitions } from '../../lib/image/diskread.ts';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimdb-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const PATH = `${process.env.PATH}:/usr/sbin:/sbin`;
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { env: { ...process.env, PATH }, stdio: 'pipe' });
const UUID = '8631113f-b61f-440b-9281-dac6c41e0f28';
const BOOT_UUID = '11111111-2222-4333-8444-555555555555';

/** Debian's grub.cfg, as update-grub writes it for a cloud image (the parts the reader looks at). */
const debianCfg = (uuid: string, prefix = '/boot') => `
if [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "\${next_entry}" ] ; then
   set default="\${next_entry}"
   set next_entry=
else
   set default="0"
fi
function load_video {
  insmod all_video
}
### BEGIN /etc/grub.d/10_linux ###
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-${uuid}' {
	load_video
	insmod ext2
	set root='hd0,msdos1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 ${uuid}
	else
	  search --no-floppy --fs-uuid --set=root ${uuid}
	fi
	echo	'Loading Linux 6.1.0-1-cloud-amd64 ...'
	linux	${prefix}/vmlinuz-1 root=UUID=${UUID} ro console=tty0 console=ttyS0,115200 quiet
	echo	'Loading initial ramdisk ...'
	initrd	${prefix}/initrd.img-1
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-${uuid}' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-1-cloud-amd64' --class debian {
		linux	${prefix}/vmlinuz-1 root=UUID=${UUID} ro single
		initrd	${prefix}/initrd.img-1
	}
}
`;

describe('grubDefault', () => {
  it("reads entry 0 of Debian's grub.cfg: the kernel, its arguments, the initrd and the searched file system", () => {
    expect(grubDefault(debianCfg(UUID))).toEqual({
      linux: '/boot/vmlinuz-1',
      args: `root=UUID=${UUID} ro console=tty0 console=ttyS0,115200 quiet`,
      initrd: ['/boot/initrd.img-1'],
      uuid: UUID,
    });
  });

  it("drops Ubuntu's $vt_handoff and keeps every initrd of the line, in order", () => {
    const cfg = `set default="0"\nmenuentry 'Ubuntu' {\n\tlinux\t/boot/vmlinuz root=LABEL=cloudimg-rootfs ro console=ttyS0 $vt_handoff\n\tinitrd\t/boot/microcode.cpio /boot/initrd.img\n}\n`;
    expect(grubDefault(cfg)).toEqual({
      linux: '/boot/vmlinuz',
      args: 'root=LABEL=cloudimg-rootfs ro console=ttyS0',
      initrd: ['/boot/microcode.cpio', '/boot/initrd.img'],
      uuid: null,
    });
  });

  it.each([
    [
      'a saved default',
      'set default="${saved_entry}"\nmenuentry \'x\' {\n linux /vmlinuz\n}\n',
      /default is \$\{saved_entry\}/,
    ],
    ['no menuentry (BLS)', 'set default="0"\nblscfg\n', /no menuentry/],
    ['a submenu first', "submenu 'a' {\n menuentry 'b' {\n linux /vmlinuz\n }\n}\n", /submenu/],
    ['a GRUB variable', "menuentry 'f' {\n linux /vmlinuz $kernelopts\n}\n", /variables or quoting/],
    ['quoting', "menuentry 'f' {\n linux /vmlinuz 'a b'\n}\n", /variables or quoting/],
    ['a device in the path', "menuentry 'f' {\n linux (hd0,1)/vmlinuz ro\n}\n", /another device/],
    ['two linux lines', "menuentry 'f' {\n if x; then\n linux /a\n else\n linux /b\n fi\n}\n", /2 linux/],
    ['a terminal escape', "menuentry 'f' {\n linux /vmlinuz ro \x1b[31mred\n}\n", /not printable/],
    [
      "a command line over the kernel's limit",
      `menuentry 'f' {\n linux /vmlinuz ${'a'.repeat(2000)}\n}\n`,
      /over 1900 bytes/,
    ],
  ])('refuses %s (the VM boots through its firmware)', (_what, cfg, why) => {
    expect(grubDefault(cfg)).toMatch(why);
  });
});

interface Tree {
  [path: string]: string | Buffer | { link: string };
}

/** A file system image of `size` made by mke2fs -d from `tree`. */
function mkfs(name: string, tree: Tree, opts: string[], uuid: string, size = '16M'): string {
  const dir = join(tmp, `${name}.d`);
  for (const [p, v] of Object.entries(tree)) {
    fs.mkdirSync(join(dir, p, '..'), { recursive: true });
    if (typeof v === 'object' && 'link' in v) fs.symlinkSync(v.link, join(dir, p));
    else fs.writeFileSync(join(dir, p), v);
  }
  const img = join(tmp, `${name}.img`);
  sh('mke2fs', ['-q', '-F', ...opts, '-U', uuid, '-d', dir, img, size]);
  return img;
}

/** A raw disk: an MBR (or, with gpt, a protective MBR and a GPT) and the images as partitions from 1 MiB. */
function disk(parts: string[], gpt = false): string {
  const out = join(tmp, 'disk.raw');
  const head = Buffer.alloc(1 << 20);
  let lba = 2048;
  parts.forEach((p, i) => {
    const sectors = fs.statSync(p).size / 512;
    if (gpt) {
      const e = head.subarray(1024 + i * 128, 1024 + (i + 1) * 128);
      randomBytes(16).copy(e, 0);
      e.writeBigUInt64LE(BigInt(lba), 32);
      e.writeBigUInt64LE(BigInt(lba + sectors - 1), 40);
    } else {
      const e = head.subarray(446 + 16 * i, 462 + 16 * i);
      e[4] = 0x83;
      e.writeUInt32LE(lba, 8);
      e.writeUInt32LE(sectors, 12);
    }
    lba += sectors;
  });
  if (gpt) {
    head[446 + 4] = 0xee;
    head.write('EFI PART', 512, 'latin1');
    head.writeBigUInt64LE(2n, 512 + 72);
    head.writeUInt32LE(128, 512 + 80);
    head.writeUInt32LE(128, 512 + 84);
  }
  head.writeUInt16LE(0xaa55, 510);
  fs.writeFileSync(out, head);
  for (const p of parts) fs.appendFileSync(out, fs.readFileSync(p));
  return out;
}

const kernel = randomBytes(700 * 1024);
const initrd = randomBytes(300 * 1024);
const rootTree = (): Tree => ({
  'boot/grub/grub.cfg': debianCfg(UUID),
  'boot/vmlinuz-1': kernel,
  'boot/initrd.img-1': initrd,
  'etc/passwd': 'root:x:0:0:the image:/root:/bin/sh\n',
});

function bootsFrom(image: string): void {
  const out = join(tmp, `out-${Math.random().toString(36).slice(2)}`);
  fs.mkdirSync(out);
  const d = directBoot(image, out);
  if (typeof d === 'string') throw new Error(d);
  expect(d.append).toBe(`BOOT_IMAGE=/boot/vmlinuz-1 root=UUID=${UUID} ro console=tty0 console=ttyS0,115200 quiet`);
  expect(fs.readFileSync(d.kernel).equals(kernel)).toBe(true);
  expect(fs.readFileSync(d.initrd!).equals(initrd)).toBe(true);
  expect(fs.statSync(d.kernel).mode & 0o777).toBe(0o600);
  expect(fs.readdirSync(out).sort()).toEqual(['initrd', 'vmlinuz']);
}

describe('directBoot', () => {
  it('reads the kernel and initrd of entry 0 from ext4 on an MBR disk: raw, qcow2, compressed qcow2, and an overlay of it', () => {
    const raw = disk([mkfs('root', rootTree(), ['-t', 'ext4'], UUID)]);
    bootsFrom(raw);
    const q = join(tmp, 'disk.qcow2');
    sh('qemu-img', ['convert', '-O', 'qcow2', raw, q]);
    bootsFrom(q);
    const c = join(tmp, 'disk-c.qcow2');
    sh('qemu-img', ['convert', '-c', '-O', 'qcow2', raw, c]);
    bootsFrom(c);
    const ov = join(tmp, 'overlay.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'disk-c.qcow2', '-F', 'qcow2', ov]);
    bootsFrom(ov);
  });

  it("reads ext2's block maps (1 KiB blocks: single and double indirect) on a GPT disk", () => {
    bootsFrom(disk([mkfs('root', rootTree(), ['-t', 'ext2', '-b', '1024'], UUID)], true));
  });

  it('finds a separate /boot partition by the UUID its entry searches for', () => {
    const boot = mkfs(
      'boot',
      { 'grub/grub.cfg': debianCfg(BOOT_UUID, ''), 'vmlinuz-1': kernel, 'initrd.img-1': initrd },
      ['-t', 'ext4'],
      BOOT_UUID,
    );
    const root = mkfs('root', { 'etc/hostname': 'x\n' }, ['-t', 'ext4'], UUID);
    const out = join(tmp, 'out');
    fs.mkdirSync(out);
    const d = directBoot(disk([root, boot]), out);
    if (typeof d === 'string') throw new Error(d);
    expect(d.append).toBe(`BOOT_IMAGE=/vmlinuz-1 root=UUID=${UUID} ro console=tty0 console=ttyS0,115200 quiet`);
    expect(fs.readFileSync(d.kernel).equals(kernel)).toBe(true);
  });

  it("follows a symlink inside the image's file system, never the host's: an absolute link to /etc/passwd reads the image's", () => {
    const tree = { ...rootTree(), 'boot/vmlinuz-1': { link: '/etc/passwd' } };
    const out = join(tmp, 'out');
    fs.mkdirSync(out);
    const d = directBoot(disk([mkfs('root', tree, ['-t', 'ext4'], UUID)]), out);
    if (typeof d === 'string') throw new Error(d);
    expect(fs.readFileSync(d.kernel, 'utf8')).toBe('root:x:0:0:the image:/root:/bin/sh\n');
  });

  it.each([
    ['a symlink loop', { 'boot/vmlinuz-1': { link: 'vmlinuz-1' } }, /too many symlinks/],
    ['a missing initrd', { 'boot/initrd.img-1': { link: 'nothing' } }, /initrd.img-1 is not on the disk/],
    [
      'a saved default',
      { 'boot/grub/grub.cfg': debianCfg(UUID).replace('set default="0"', 'set default="${saved_entry}"') },
      /saved_entry/,
    ],
  ])('gives a reason for %s, and writes nothing', (_what, change, why) => {
    const out = join(tmp, 'out');
    fs.mkdirSync(out);
    const r = directBoot(disk([mkfs('root', { ...rootTree(), ...change } as Tree, ['-t', 'ext4'], UUID)]), out);
    expect(r).toMatch(why);
    expect(fs.readdirSync(out)).toEqual([]);
  });

  it('gives a reason for a broken or hostile image: garbage, a truncated qcow2, a partition past the end, no file system', () => {
    const out = join(tmp, 'out');
    fs.mkdirSync(out);
    const junk = join(tmp, 'junk.raw');
    fs.writeFileSync(junk, randomBytes(4 << 20));
    expect(directBoot(junk, out)).toBe('the disk has no ext2/3/4 file system');
    const raw = disk([mkfs('root', rootTree(), ['-t', 'ext4'], UUID)]);
    const q = join(tmp, 'cut.qcow2');
    sh('qemu-img', ['convert', '-O', 'qcow2', raw, q]);
    fs.truncateSync(q, 300 * 1024);
    expect(typeof directBoot(q, out)).toBe('string');
    // an MBR whose partition starts past the disk's end: not a partition
    const mbr = Buffer.alloc(1 << 20);
    mbr[446 + 4] = 0x83;
    mbr.writeUInt32LE(1 << 30, 446 + 8);
    mbr.writeUInt32LE(100, 446 + 12);
    mbr.writeUInt16LE(0xaa55, 510);
    const past = join(tmp, 'past.raw');
    fs.writeFileSync(past, mbr);
    const d = openDisk(past);
    expect(partitions(d)).toEqual([{ number: 0, start: 0, size: 1 << 20 }]);
    d.close();
    expect(directBoot(past, out)).toBe('the disk has no ext2/3/4 file system');
    expect(fs.readdirSync(out)).toEqual([]);
  });
});
