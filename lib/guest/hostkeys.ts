/**
 * A guest's SSH host keys, read through its guest agent before the first SSH
 * connection (guest-file-open/read/close), so that pim pins them instead of
 * trusting the first key it is shown. pim-ssh and pim-cp (lib/guest/reach.ts)
 * and pim-build's provisioning use this.
 *
 * Two places are read: OpenSSH's public key files (`/etc/ssh/ssh_host_*_key.pub`),
 * and dropbear's host key files (`/etc/dropbear/dropbear_*_host_key`), which
 * hold the private key with its public half in SSH wire format: the public
 * blob is taken out of them (dropbearPublicBlob) and the rest is dropped at
 * once. A dropbear guest with no .pub files is pinned that way too.
 */
import { GaClient } from '../qemu/ga.ts';

export const HOST_KEY_FILES = [
  '/etc/ssh/ssh_host_ed25519_key.pub',
  '/etc/ssh/ssh_host_ecdsa_key.pub',
  '/etc/ssh/ssh_host_rsa_key.pub',
  '/etc/dropbear/dropbear_ed25519_host_key.pub',
];
export const DROPBEAR_KEY_FILES = [
  '/etc/dropbear/dropbear_ed25519_host_key',
  '/etc/dropbear/dropbear_ecdsa_host_key',
  '/etc/dropbear/dropbear_rsa_host_key',
];

/** The base64 body of an OpenSSH public key line, as bytes (what ssh2's host verifier gets). */
export function keyBlob(line: string): Buffer | null {
  const parts = line.trim().split(/\s+/);
  const b64 =
    parts.find((p, i) => i > 0 && /^AAAA[0-9A-Za-z+/=]+$/.test(p)) ??
    (/^AAAA/.test(parts[0] ?? '') ? parts[0] : undefined);
  return b64 ? Buffer.from(b64, 'base64') : null;
}

/** The key type named at the start of a wire-format key blob ("ssh-ed25519"), or null. */
export function blobType(blob: Buffer): string | null {
  if (blob.length < 4) return null;
  const n = blob.readUInt32BE(0);
  if (n < 1 || n > 64 || 4 + n > blob.length) return null;
  const t = blob.toString('latin1', 4, 4 + n);
  return /^[a-z0-9@.-]+$/.test(t) ? t : null;
}

/** An OpenSSH public key line ("TYPE BASE64") for a wire-format blob. */
export function keyLine(blob: Buffer): string | null {
  const t = blobType(blob);
  return t ? `${t} ${blob.toString('base64')}` : null;
}

/**
 * The public key blob inside a dropbear host key file (SSH wire format:
 * ed25519: string type, string priv32+pub32; ecdsa: string type, string
 * curve, string Q, mpint d; rsa: string type, mpint e, mpint n, mpint d,
 * mpint p, mpint q). Null when it is not one of those.
 */
export function dropbearPublicBlob(file: Buffer): Buffer | null {
  let at = 0;
  const field = (): Buffer | null => {
    if (at + 4 > file.length) return null;
    const n = file.readUInt32BE(at);
    if (n > file.length - at - 4) return null;
    const b = file.subarray(at + 4, at + 4 + n);
    at += 4 + n;
    return b;
  };
  const str = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  const type = field();
  if (!type) return null;
  const t = type.toString('latin1');
  if (t === 'ssh-ed25519') {
    const k = field();
    return k && k.length === 64 ? Buffer.concat([str(type), str(k.subarray(32))]) : null;
  }
  if (/^ecdsa-sha2-nistp(256|384|521)$/.test(t)) {
    const curve = field();
    const q = field();
    return curve && q && q.length > 0 && q[0] === 4 ? Buffer.concat([str(type), str(curve), str(q)]) : null;
  }
  if (t === 'ssh-rsa') {
    const e = field();
    const n = field();
    return e && n && n.length >= 64 ? Buffer.concat([str(type), str(e), str(n)]) : null;
  }
  return null;
}

/** The bytes of a small guest file through the agent, or null when it cannot be read. */
export async function readGuestBytes(
  ga: GaClient,
  path: string,
  timeoutMs: number,
  max = 65536,
): Promise<Buffer | null> {
  let handle: number;
  try {
    handle = (await ga.execute('guest-file-open', { path, mode: 'r' }, timeoutMs)) as number;
  } catch {
    return null;
  }
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for (;;) {
      const r = (await ga.execute('guest-file-read', { handle, count: 4096 }, timeoutMs)) as {
        count: number;
        'buf-b64': string;
        eof: boolean;
      };
      const b = Buffer.from(r['buf-b64'] ?? '', 'base64');
      chunks.push(b);
      total += b.length;
      if (r.eof || r.count === 0 || total >= max) break;
    }
  } catch {
    return null;
  } finally {
    await ga.execute('guest-file-close', { handle }, timeoutMs).catch(() => undefined);
  }
  return Buffer.concat(chunks);
}

/** The text of a small guest file through the agent, or null when it cannot be read. */
export async function readGuestFile(
  ga: GaClient,
  path: string,
  timeoutMs: number,
  max = 65536,
): Promise<string | null> {
  const b = await readGuestBytes(ga, path, timeoutMs, max);
  return b === null ? null : b.toString('utf8');
}

export interface HostKeys {
  /** wire-format blobs, each once */
  keys: Buffer[];
  /** the same as OpenSSH lines "TYPE BASE64" */
  lines: string[];
}

/** Every host key an answering agent `ga` can read in the guest (OpenSSH .pub files, then dropbear's key files). */
export async function readHostKeys(ga: GaClient, timeoutMs = 5_000): Promise<HostKeys | null> {
  const keys: Buffer[] = [];
  const add = (b: Buffer | null) => {
    if (b && blobType(b) && !keys.some((k) => k.equals(b))) keys.push(b);
  };
  for (const f of HOST_KEY_FILES) {
    const text = await readGuestFile(ga, f, timeoutMs);
    if (text) for (const l of text.split('\n')) add(keyBlob(l));
  }
  for (const f of DROPBEAR_KEY_FILES) {
    const raw = await readGuestBytes(ga, f, timeoutMs, 16384);
    if (!raw) continue;
    add(dropbearPublicBlob(raw));
    raw.fill(0); // the private half is not kept
  }
  return keys.length ? { keys, lines: keys.map((k) => keyLine(k)!) } : null;
}

/**
 * Wait (until `deadline`) for the guest agent on `socket` to answer, then read
 * the host keys. Returns the keys, or null when no agent answered or no key
 * file was there.
 */
export async function hostKeysViaAgent(
  socket: string,
  deadline: number,
  signal?: AbortSignal,
): Promise<HostKeys | null> {
  while (Date.now() < deadline) {
    if (signal?.aborted) throw signal.reason;
    let ga: GaClient | null = null;
    try {
      ga = await GaClient.connect(socket, 2_000);
      // guest-sync-delimited is the readiness check: it answers once qemu-ga runs
      await ga.execute('guest-ping', undefined, Math.min(3_000, Math.max(500, deadline - Date.now())));
      return await readHostKeys(ga);
    } catch {
      // not up yet: the sync timed out (bounded above), or the socket is not there yet; try again
      await new Promise((r) => setTimeout(r, Math.min(200, Math.max(0, deadline - Date.now()))));
    } finally {
      ga?.close();
    }
  }
  return null;
}
