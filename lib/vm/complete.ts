/** Completion sources: read the runtime dir and the image store directly (fast, no QEMU). */
import type { Completer } from '../cli/command.ts';
import { runtimeDirPath } from '../core/paths.ts';
import { runtimeNames } from './state.ts';
import { storeImages } from '../image/store.ts';

export const completeVmNames: Completer = (complete) => {
  for (const n of runtimeNames(runtimeDirPath())) complete(n, 'VM');
};

export const completeImages: Completer = (complete) => {
  for (const i of storeImages()) complete(i.name, i.path);
};
