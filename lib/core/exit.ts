/**
 * The one table of exit codes (sysexits-style), shared by every executable.
 * See README "Exit codes". Plumbing promises these numbers.
 */
export const EXIT = {
  OK: 0,
  NO: 1, // a yes/no check said no
  USAGE: 64,
  DATAERR: 65,
  NOINPUT: 66,
  UNAVAILABLE: 69, // VM not running, agent not connected
  SOFTWARE: 70, // internal error
  CANTCREAT: 73,
  TEMPFAIL: 75, // busy, timed out
  NOPERM: 77, // permission (sudo refused)
  CONFIG: 78,
  /** pim-deploy: the new guest failed its health check; the previous definition was restored (or the new one removed) */
  ROLLBACK: 79,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** An error meant for the user: one line on stderr, a fixed exit code. */
export class PimError extends Error {
  readonly code: ExitCode;
  constructor(code: ExitCode, message: string) {
    super(message);
    this.name = 'PimError';
    this.code = code;
  }
}

export const usage = (msg: string) => new PimError(EXIT.USAGE, msg);
export const unavailable = (msg: string) => new PimError(EXIT.UNAVAILABLE, msg);
export const tempfail = (msg: string) => new PimError(EXIT.TEMPFAIL, msg);
