/** Completion sources: read the runtime dir and the image store directly (fast, no QEMU). */
import type { Completer } from './cli.ts';
import { runtimeDirPath } from './paths.ts';
import { runtimeNames } from './vm.ts';
import { storeImages } from './image.ts';

export const completeVmNames: Completer = (complete) => {
  for (const n of runtimeNames(runtimeDirPath())) complete(n, 'VM');
};

export const completeImages: Completer = (complete) => {
  for (const i of storeImages()) complete(i.name, i.path);
};
