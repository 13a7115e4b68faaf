/**
 * A guest's SSH host keys, read through its guest agent before the first SSH
 * connection (guest-file-open/read/close of the public key files), so that
 * pim pins the key instead of trusting the first one it is shown.
 */
import type { GaClient } from '../qemu/ga.ts';
import { keyBlob } from './ssh.ts';

export const HOST_KEY_FILES = ['/etc/ssh/ssh_host_ed25519_key.pub', '/etc/ssh/ssh_host_ecdsa_key.pub', '/etc/ssh/ssh_host_rsa_key.pub', '/etc/dropbear/dropbear_ed25519_host_key.pub'];

/** The text of a small guest file through the agent, or null when it cannot be read. */
export async function readGuestFile(ga: GaClient, path: string, timeoutMs: number, max = 65536): Promise<string | null> {
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
      const r = (await ga.execute('guest-file-read', { handle, count: 4096 }, timeoutMs)) as { count: number; 'buf-b64': string; eof: boolean };
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
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Wait (until `deadline`) for the guest agent on `socket` to answer, then read
 * the host keys. Returns the key blobs, or null when no agent answered or no
 * key file was there.
 */
export async function hostKeysViaAgent(socket: string, deadline: number, signal?: AbortSignal): Promise<{ keys: Buffer[]; lines: string[] } | null> {
  const { GaClient } = await import('../qemu/ga.ts');
  while (Date.now() < deadline) {
    if (signal?.aborted) throw signal.reason;
    let ga: GaClient | null = null;
    try {
      ga = await GaClient.connect(socket, 2_000);
      // guest-sync-delimited is the readiness check: it answers once qemu-ga runs
      await ga.execute('guest-ping', undefined, Math.min(3_000, Math.max(500, deadline - Date.now())));
      const lines: string[] = [];
      for (const f of HOST_KEY_FILES) {
        const text = await readGuestFile(ga, f, 5_000);
        if (text) lines.push(...text.split('\n').filter((l) => keyBlob(l)));
      }
      const keys = lines.map((l) => keyBlob(l)!);
      return keys.length ? { keys, lines } : null;
    } catch {
      // not up yet: the sync timed out (bounded above); try again
    } finally {
      ga?.close();
    }
  }
  return null;
}
