/**
 * What a build is asked for and what it answers, below every builder:
 * build.ts runs a build with them, and the builders it hands a build to
 * (raw.ts, boot.ts's first boots, cloud.ts) take them without importing
 * build.ts back.
 */
import type { Status } from '../cli/status.ts';
import type { BuildRecord } from '../image/registry.ts';

export interface BuildOpts {
  profile: string;
  force?: boolean;
  keepFailed?: boolean;
  /** seconds for the whole build (else the profile's timeout, else 3600) */
  timeoutS?: number;
  /** seconds for the installer to fetch its answer file (default 300) */
  fetchTimeoutS?: number;
  accel?: string;
  signal: AbortSignal;
  status: Status;
  /** from: the profiles that led here (a cycle is 78) */
  chain?: string[];
}

export interface BuildOutcome {
  record: BuildRecord;
  hit: boolean;
  path: string;
}
