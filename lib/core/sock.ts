import { createConnection, type Socket } from 'node:net';
import { EXIT, PimError } from './exit.ts';

/** Connect to a unix socket with a bounded wait; errors say what to do. */
export function connectUnix(path: string, timeoutMs: number, what: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ path });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new PimError(EXIT.TEMPFAIL, `${what} socket ${path} did not accept within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') {
        reject(
          new PimError(EXIT.UNAVAILABLE, `${what} socket ${path} is not answering (${e.code}); the VM is not running`),
        );
      } else if (e.code === 'EACCES' || e.code === 'EPERM') {
        reject(new PimError(EXIT.NOPERM, `no permission to open ${what} socket ${path}; it belongs to another user`));
      } else {
        reject(new PimError(EXIT.UNAVAILABLE, `cannot connect to ${what} socket ${path}: ${e.message}`));
      }
    });
  });
}
