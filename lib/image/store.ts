/**
 * Resolving what `pim-run NAME|IMAGE` should boot: a name in the image store
 * (~/.local/share/pim/images/NAME.qcow2) or a path to an image file.
 */
import { accessSync, closeSync, constants, existsSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { imagesDir } from '../core/paths.ts';
import { checkName, nameProblem } from '../core/names.ts';

export const IMAGE_EXTS = ['.qcow2', '.img', '.raw'];

export interface ImageRef {
  name: string; // VM name
  path: string;
  format: 'qcow2' | 'raw';
  efivars: string | null; // UEFI vars next to the image, if any
}

const looksLikePath = (s: string) => s.includes('/') || IMAGE_EXTS.includes(extname(s));

export function imageFormat(path: string): 'qcow2' | 'raw' {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(4);
    readSync(fd, b, 0, 4, 0);
    return b.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? 'qcow2' : 'raw';
  } finally {
    closeSync(fd);
  }
}

/** EFI vars that come with an image: NAME.efivars.fd beside NAME.qcow2. */
export function efivarsFor(path: string): string | null {
  const base = path.slice(0, path.length - extname(path).length);
  for (const p of [`${base}.efivars.fd`, `${path}.efivars.fd`]) if (existsSync(p)) return p;
  return null;
}

/** A VM name made from a file name: invalid characters become '-'. */
export function nameFromPath(p: string): string {
  let n = basename(p, extname(p)).replace(/[^A-Za-z0-9._-]/g, '-').replace(/\.\.+/g, '.').replace(/^[-.]+/, '');
  if (n.length > 64) n = n.slice(0, 64);
  return n || 'vm';
}

export function resolveImage(target: string, nameOverride?: string): ImageRef {
  let path: string;
  let name: string;
  if (looksLikePath(target)) {
    path = resolve(target);
    name = nameOverride ?? nameFromPath(path);
    if (!existsSync(path)) throw new PimError(EXIT.NOINPUT, `image ${path} does not exist; check the path`);
  } else {
    name = nameOverride ?? target;
    const why = nameProblem(target);
    if (why) throw new PimError(EXIT.USAGE, `bad VM name ${JSON.stringify(target)}: ${why}`);
    const dir = imagesDir();
    const found = IMAGE_EXTS.map((e) => join(dir, target + e)).find((p) => existsSync(p));
    if (!found) {
      throw new PimError(EXIT.NOINPUT, `no image named ${target} in ${dir} (looked for ${IMAGE_EXTS.map((e) => target + e).join(', ')}); pass a path to an image file instead`);
    }
    path = found;
  }
  checkName(name);
  if (!statSync(path).isFile()) throw new PimError(EXIT.NOINPUT, `${path} is not a file`);
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new PimError(EXIT.NOPERM, `cannot read image ${path}; check its permissions`);
  }
  return { name, path, format: imageFormat(path), efivars: efivarsFor(path) };
}

/** Images in the store, by name. */
export function storeImages(): Array<{ name: string; path: string }> {
  const dir = imagesDir();
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return [];
  }
  return files
    .filter((f) => IMAGE_EXTS.includes(extname(f)) && !nameProblem(basename(f, extname(f))))
    .map((f) => ({ name: basename(f, extname(f)), path: join(dir, f) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}
