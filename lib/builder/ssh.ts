/**
 * Provisioning over SSH, in-process with ssh2: one connection for every
 * script, each script on an exec channel's stdin, its stdout and stderr
 * streamed as they come, its status taken from the channel's `close` (dropbear
 * never sends the optional `exit-status` before it on every path).
 *
 * The host key is pinned when the guest agent could read it from the guest
 * (lib/guest/hostkeys.ts); a guest that shows another key is refused. Where
 * the guest is (host, port) and who logs in come from lib/guest/reach.ts, the
 * one place that says how to reach a VM over SSH (pim-ssh and pim-cp use it too).
 */
import { EXIT, PimError } from '../core/exit.ts';
import type { Client, ClientChannel } from 'ssh2';
import { generateSoundKey } from '../guest/userkey.ts';

export interface SshTarget {
  host: string;
  port: number;
  user: string;
  privateKey: string;
  /** the guest's host keys (wire format) to accept; null: none known, any is taken (and said) */
  hostKeys: Buffer[] | null;
}

/** ssh2, loaded when a build gets to provisioning (it is kept out of the bundle: optional native parts). */
async function ssh2(): Promise<typeof import('ssh2')> {
  const m = (await import('ssh2')) as typeof import('ssh2') & { default?: typeof import('ssh2') };
  return m.default && 'Client' in m.default ? m.default : m;
}

/** An ed25519 key pair in OpenSSH format, made for one build. */
export async function newBuildKey(comment: string): Promise<{ private: string; public: string }> {
  const { utils } = await ssh2();
  return generateSoundKey(utils, comment);
}

// keyBlob moved down to lib/guest/hostkeys.ts (pim-ssh pins host keys too)
export { keyBlob } from '../guest/hostkeys.ts';

function connectOnce(t: SshTarget, timeoutMs: number, lib: typeof import('ssh2')): Promise<Client> {
  return new Promise((resolve, reject) => {
    const c = new lib.Client();
    let mismatch = false;
    let settled = false;
    c.once('ready', () => {
      settled = true;
      resolve(c);
    });
    // ssh2 may emit several errors for one failed attempt: every one is handled, the first decides
    c.on('error', (e: Error & { level?: string }) => {
      if (settled) return;
      settled = true;
      c.end();
      reject(
        mismatch
          ? new PimError(
              EXIT.DATAERR,
              `the guest at ${t.host}:${t.port} showed a host key that is not the one its guest agent reported; refusing to connect`,
            )
          : e,
      );
    });
    c.connect({
      host: t.host,
      port: t.port,
      username: t.user,
      privateKey: t.privateKey,
      readyTimeout: timeoutMs,
      keepaliveInterval: 15_000,
      hostVerifier: (key: Buffer) => {
        if (!t.hostKeys) return true;
        const ok = t.hostKeys.some((k) => k.equals(key));
        if (!ok) mismatch = true;
        return ok;
      },
    });
  });
}

/**
 * Connect once SSH answers: each attempt is a real handshake (QEMU's port
 * forward accepts TCP before the guest listens, so only the SSH banner and
 * authentication say the guest is ready), retried with a growing pause until
 * `deadline`. A host key mismatch or a refused key ends it at once.
 */
export async function connectWhenUp(
  t: SshTarget,
  deadline: number,
  opts: { signal?: AbortSignal; onAttempt?: (err: Error) => void } = {},
): Promise<Client> {
  const lib = await ssh2();
  let pause = 250;
  for (;;) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    const left = deadline - Date.now();
    if (left <= 0) throw new PimError(EXIT.TEMPFAIL, `SSH on ${t.host}:${t.port} did not answer in time`);
    try {
      return await connectOnce(t, Math.min(left, 20_000), lib);
    } catch (e) {
      if (e instanceof PimError) throw e;
      const msg = (e as Error).message;
      if (/All configured authentication methods failed/i.test(msg)) {
        throw new PimError(
          EXIT.NOPERM,
          `SSH to ${t.user}@${t.host}:${t.port} refused pim's build key: the answer file must install profile.ssh_keys for ${t.user} (man pim-build, and "Answer files" in man pim-profile)`,
        );
      }
      opts.onAttempt?.(e as Error);
      await new Promise((r) => setTimeout(r, Math.min(pause, Math.max(0, deadline - Date.now()))));
      pause = Math.min(pause * 2, 2_000);
    }
  }
}

// waitSshBanner moved down to lib/guest/wait.ts (pim-wait and pim-run --wait use it too)
export { waitSshBanner } from '../guest/wait.ts';

export interface ExecResult {
  code: number;
  signal: string | null;
}

/**
 * Run `command` on an exec channel with `input` on its stdin; stdout and
 * stderr go to the callbacks as they arrive. Resolves with the status from
 * the channel's close. An abort of `signal` kills the remote command (a KILL
 * over the channel where the server takes it, and the connection closed,
 * which ends its session) and rejects with the signal's reason.
 */
export function exec(
  conn: Client,
  command: string,
  input: string | Buffer,
  out: { stdout: (b: Buffer) => void; stderr: (b: Buffer) => void },
  signal?: AbortSignal,
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    conn.exec(command, (err: Error | undefined, ch: ClientChannel) => {
      if (err) return reject(new PimError(EXIT.UNAVAILABLE, `SSH exec failed: ${err.message}`));
      let code: number | null = null;
      let sig: string | null = null;
      const onAbort = () => {
        try {
          ch.signal('KILL');
        } catch {
          /* the server may not take signals */
        }
        conn.end();
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      ch.on('exit', (c: number | null, s?: string) => {
        if (typeof c === 'number') code = c;
        if (s) sig = s;
      });
      ch.on('data', (d: Buffer) => out.stdout(d));
      ch.stderr.on('data', (d: Buffer) => out.stderr(d));
      ch.once('close', (c?: number | null, s?: string) => {
        signal?.removeEventListener('abort', onAbort);
        if (typeof c === 'number') code = c;
        if (s) sig = s;
        resolve({ code: code ?? (sig ? 128 : 255), signal: sig });
      });
      ch.end(input);
    });
  });
}

/** Run a command and collect its output (for small housekeeping commands). */
export async function execText(
  conn: Client,
  command: string,
  input = '',
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const r = await exec(conn, command, input, { stdout: (b) => (stdout += b), stderr: (b) => (stderr += b) });
  return { code: r.code, stdout, stderr };
}
