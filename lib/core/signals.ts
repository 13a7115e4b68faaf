/**
 * Signals as cancellation. A command that starts something (a VM, a build, a
 * download) traps SIGINT, SIGTERM and SIGHUP while it works: the first one
 * aborts an AbortSignal whose reason is an `Interrupted`, the work undoes what
 * it started, and the command exits 128+N (SIGINT: 130), as a shell expects.
 */
import { exitStatusOf } from './proc.ts';

export const TRAPPED = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export class Interrupted extends Error {
  readonly sig: NodeJS.Signals;
  constructor(sig: NodeJS.Signals) {
    super(`interrupted by ${sig}`);
    this.name = 'Interrupted';
    this.sig = sig;
  }
  /** 128 + the signal's number */
  get status(): number {
    return exitStatusOf(this.sig);
  }
}

export interface Trap {
  signal: AbortSignal;
  /** the signal that arrived, if one did */
  readonly caught: NodeJS.Signals | null;
  /** stop trapping: the default actions are back */
  dispose(): void;
}

/** Trap SIGINT/SIGTERM/SIGHUP until dispose(); the first one aborts `signal` with an Interrupted. */
export function trapSignals(): Trap {
  const ctl = new AbortController();
  let caught: NodeJS.Signals | null = null;
  const on = (sig: NodeJS.Signals) => {
    if (caught) return;
    caught = sig;
    ctl.abort(new Interrupted(sig));
  };
  for (const s of TRAPPED) process.on(s, on);
  return {
    signal: ctl.signal,
    get caught() {
      return caught;
    },
    dispose: () => {
      for (const s of TRAPPED) process.off(s, on);
    },
  };
}

/** Throw the signal's reason (an Interrupted) when it has been aborted. */
export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Interrupted('SIGINT');
}
