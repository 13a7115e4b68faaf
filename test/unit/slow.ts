/**
 * A bound a test waits under, scaled for a busy machine: PIM_TEST_SLOW when it
 * is set, else 1 + the 1-minute load average per core (at most 3), as
 * test/bats/helper.bash does. A bound only ends a wait that failed.
 */
import { availableParallelism, loadavg } from 'node:os';

const factor = Number(process.env.PIM_TEST_SLOW) || Math.min(3, 1 + Math.floor(loadavg()[0]! / availableParallelism()));

export const slow = (ms: number): number => ms * factor;
