/** Completion sources: read the runtime dir and the image store directly (fast, no QEMU). */
import type { Completer } from '../cli/command.ts';
import { runtimeDirPath } from '../core/paths.ts';
import { loggedNames, runtimeNames } from './state.ts';
import { storeImages } from '../image/store.ts';

export const completeVmNames: Completer = (complete) => {
  for (const n of runtimeNames(runtimeDirPath())) complete(n, 'VM');
};

export const completeImages: Completer = (complete) => {
  for (const i of storeImages()) complete(i.name, i.path);
};

/** VMs whose log is in the runtime dir: running ones, and stopped ones whose log is kept. */
export const completeLoggedNames: Completer = (complete) => {
  for (const n of loggedNames(runtimeDirPath())) complete(n, 'log');
};
