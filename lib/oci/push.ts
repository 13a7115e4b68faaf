/**
 * A pim build pushed as an OCI image (KubeVirt's containerDisk layout, see
 * layer.ts), with pim's build record in the manifest's annotations, tagged
 * PROFILE-KEY12 (the build's id) and PROFILE (moved to the newest push).
 *
 *   1. the layer's digest, from ~/.cache/pim/oci/ID.json when this machine
 *      pushed or pulled the build before, and its files are still the ones
 *      it was taken of (layerStamp: inode, size, mtime and ctime);
 *   2. with a known digest, both tags HEADed: a tag holding this manifest
 *      vouches for the layer (an unchanged build ends here, nothing sent);
 *      else the layer HEADed, and a layer the registry has is not sent. Otherwise
 *      it goes up in chunks (PATCH with Content-Range, PIM_OCI_CHUNK bytes
 *      each, 64 MiB by default), hashed as it is read (layer.ts), and the
 *      upload is closed with pim's digest, which the registry checks and
 *      answers;
 *   3. the config and the manifest; each tag is PUT only when the registry
 *      does not already have this manifest under it.
 *
 * A push stopped by a signal finishes the chunk in flight and keeps the
 * registry's upload session (uploadSession below); the next push asks the
 * registry how far it got and sends only the rest. A push that dies
 * part-way (killed, the network gone) resumes from its last whole chunk
 * where the registry allows it, and otherwise starts a new upload; until
 * then it leaves blobs no tag names, and no tag.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { cacheDir } from '../core/paths.ts';
import { ensurePrivateDir, readRegular, writeFileAtomic } from '../core/fs.ts';
import { buildDisk, buildEfivars, type BuildRecord } from '../image/registry.ts';
import { OciClient, MT, sha256of } from './client.ts';
import { TRAPPED } from '../core/signals.ts';
import { LAYER_FORMAT, LayerSource, layerParts, type LayerFile } from './layer.ts';
import { formatRef, type OciRef } from './ref.ts';

/** The manifest's annotations: pim's record of the build. */
export const ANN = {
  id: 'dev.pim.build.id',
  profile: 'dev.pim.build.profile',
  key: 'dev.pim.build.key',
  sha256: 'dev.pim.build.disk.sha256',
  file: 'dev.pim.build.disk.file',
  settings: 'dev.pim.build.settings',
  record: 'dev.pim.build.record',
  format: 'dev.pim.layer.format',
} as const;

export interface Dest {
  ref: OciRef;
  insecure: boolean;
  credsEnv: string | null;
  /** the target's or the cache's name, for messages */
  label: string;
}

export interface Pushed {
  ref: string;
  tags: string[];
  digest: string;
  upload: 'uploaded' | 'skipped';
  /** bytes of the layer sent (less than its size when an upload was resumed) */
  sent: number;
  tagged: boolean;
  disk_sha256: string;
}

/**
 * What this machine knows of a build's layer, in ~/.cache/pim/oci/ID.json
 * (0600): its digest and size and the disk's sha256, under the stamp of the
 * files they were taken of (layerStamp). The config and the manifest are
 * not kept: they are made again from build.json on each push (well under a
 * millisecond), so an edited record can never reuse a stale digest either.
 */
interface Cached {
  stamp: string;
  layer: { digest: string; size: number };
  disk_sha256: string;
}

const cacheFile = (id: string) => join(cacheDir(), 'oci', `${id}.json`);

/**
 * Everything the layer's bytes are made of, short of reading them: the
 * tar's make (LAYER_FORMAT), the record's fields the tar holds (its id and
 * time), and each file's identity as the kernel keeps it (device, inode,
 * size, and mtime and ctime to the nanosecond). Any write to a file moves
 * its ctime, which no one can set back (touch -d resets mtime only), and a
 * file put in its place is another inode: a disk that changed in any way
 * is never matched by the digest of the one before.
 */
export function layerStamp(r: BuildRecord): string {
  const files = layerFiles(r).map((f) => {
    const st = fs.statSync(f.path, { bigint: true });
    return [f.name, st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].map(String);
  });
  return JSON.stringify({ format: LAYER_FORMAT, id: r.id, created: r.created, files });
}

/** What this machine knows of a build's layer (null when its files are not the ones it was taken of). */
export function cachedLayer(r: BuildRecord): Cached | null {
  const text = readRegular(cacheFile(r.id));
  if (!text) return null;
  try {
    const c = JSON.parse(text) as Cached;
    return typeof c.stamp === 'string' &&
      c.stamp === layerStamp(r) &&
      /^sha256:[0-9a-f]{64}$/.test(c.layer?.digest) &&
      Number.isSafeInteger(c.layer.size) &&
      /^[0-9a-f]{64}$/.test(c.disk_sha256)
      ? c
      : null;
  } catch {
    return null;
  }
}

/** Remember a layer just hashed (pushed or pulled); `stamp` is the files' stamp taken before they were read. */
export function rememberLayer(
  r: BuildRecord,
  layer: { digest: string; size: number },
  diskSha: string,
  stamp: string,
): void {
  // a file that changed while it was read is not remembered (the next push reads it again)
  if (stamp !== layerStamp(r)) return;
  ensurePrivateDir(join(cacheDir(), 'oci'));
  writeFileAtomic(cacheFile(r.id), `${JSON.stringify({ stamp, layer, disk_sha256: diskSha } satisfies Cached)}\n`);
}

export function layerFiles(r: BuildRecord): LayerFile[] {
  const files: LayerFile[] = [{ name: `disk/${r.disk.file}`, path: buildDisk(r), hash: true }];
  const vars = buildEfivars(r);
  if (vars) files.push({ name: `pim/${r.efivars}`, path: vars });
  return files;
}

/** The image config: what a runtime needs to take the image (nothing runs in it). */
function imageConfig(r: BuildRecord, layerDigest: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      created: r.created,
      architecture: 'amd64',
      os: 'linux',
      config: { Labels: { [ANN.id]: r.id, [ANN.key]: r.key } },
      rootfs: { type: 'layers', diff_ids: [layerDigest] },
      history: [{ created: r.created, created_by: `pim-build (${r.id})` }],
    }),
  );
}

export function manifestFor(
  r: BuildRecord,
  config: { digest: string; size: number },
  layer: { digest: string; size: number },
  diskSha: string,
): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.manifest,
      config: { mediaType: MT.config, digest: config.digest, size: config.size },
      layers: [{ mediaType: MT.layer, digest: layer.digest, size: layer.size }],
      annotations: {
        'org.opencontainers.image.created': r.created,
        'org.opencontainers.image.title': r.id,
        [ANN.id]: r.id,
        [ANN.profile]: r.profile,
        [ANN.key]: r.key,
        [ANN.sha256]: diskSha,
        [ANN.file]: r.disk.file,
        [ANN.settings]: JSON.stringify(r.settings),
        [ANN.format]: String(LAYER_FORMAT),
        [ANN.record]: JSON.stringify(r),
      },
    }),
  );
}

/** The id of the build PROFILE's tag names when it is newer than `r`, else null (no tag, not pim's, or older). */
async function newerThere(c: OciClient, r: BuildRecord): Promise<string | null> {
  let body: Buffer;
  try {
    body = (await c.getManifest(r.profile)).body;
  } catch (e) {
    if (e instanceof PimError && e.code === EXIT.NOINPUT) return null;
    throw e;
  }
  try {
    const a = (JSON.parse(body.toString('utf8')) as { annotations?: Record<string, string> }).annotations ?? {};
    const created = a['org.opencontainers.image.created'];
    return a[ANN.id] && a[ANN.id] !== r.id && created && created > r.created ? a[ANN.id]! : null;
  } catch {
    return null;
  }
}

/**
 * The upload session a push left (~/.cache/pim/oci/uploads/ID-DEST.json,
 * 0600): the registry's Location after the last chunk it took, kept until
 * the blob is in, so that an interrupted push resumes there. It names the
 * destination and the disk it was made of; another disk, layer or
 * registry does not resume it.
 */
function uploadSession(
  r: BuildRecord,
  d: Dest,
  size: number,
): { resume: string | null; save: (location: string | null, offset: number) => void } {
  const dest = `${d.ref.registry}/${d.ref.repo}`;
  const dir = join(cacheDir(), 'oci', 'uploads');
  const file = join(dir, `${r.id}-${sha256of(dest).slice(7, 19)}.json`);
  const stamp = layerStamp(r);
  let resume: string | null = null;
  try {
    const j = JSON.parse(readRegular(file) ?? 'null') as {
      dest?: string;
      location?: string;
      size?: number;
      stamp?: string;
    } | null;
    if (
      j?.dest === dest &&
      j.size === size &&
      j.stamp === stamp &&
      typeof j.location === 'string' &&
      /^https?:\/\//.test(j.location)
    )
      resume = j.location;
  } catch {
    /* not resumed */
  }
  return {
    resume,
    save: (location, offset) => {
      if (location === null) {
        fs.rmSync(file, { force: true });
        return;
      }
      ensurePrivateDir(dir);
      writeFileAtomic(file, `${JSON.stringify({ dest, location, offset, size, stamp })}\n`);
    },
  };
}

export const chunkSize = (): number => {
  const s = process.env.PIM_OCI_CHUNK;
  if (!s) return 64 << 20;
  const m = /^(\d+)([KMG]?)$/i.exec(s);
  if (!m || Number(m[1]) === 0)
    throw new PimError(EXIT.USAGE, `PIM_OCI_CHUNK must be a size such as 64M, not ${JSON.stringify(s)}`);
  return Number(m[1]) * ({ '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 } as Record<string, number>)[m[2]!.toUpperCase()]!;
};

export async function pushBuild(
  r: BuildRecord,
  d: Dest,
  o: { signal?: AbortSignal; dryRun?: boolean; say?: (s: string) => void } = {},
): Promise<Pushed> {
  const c = new OciClient(d.ref, {
    insecure: d.insecure,
    credsEnv: d.credsEnv,
    push: true,
    signal: o.signal,
    label: d.label,
  });
  // the registry's ping and auth under way while the layer's stamp is checked
  c.warm();
  const say = o.say ?? (() => {});
  try {
    const tags = [r.id, r.profile];
    const files = layerFiles(r);
    const mtime = Math.floor(Date.parse(r.created) / 1000) || 0;
    const { parts, size } = layerParts(files, mtime);
    const known = cachedLayer(r);
    let layer = known?.layer ?? null;
    let diskSha = known?.disk_sha256 ?? null;
    let upload: Pushed['upload'] = 'skipped';
    let newer: Promise<string | null> | null = null;
    let configAt: Promise<string> | undefined;
    let sent = 0;
    const made = () => {
      const cfg = imageConfig(r, layer!.digest);
      const manifest = manifestFor(r, { digest: sha256of(cfg), size: cfg.length }, layer!, diskSha!);
      return { cfg, manifest, digest: sha256of(manifest) };
    };
    // an unchanged build: both tags asked for at once (two HEADs, one round trip). A registry
    // takes a manifest only once it has every blob the manifest names, in that repository
    // (MANIFEST_BLOB_UNKNOWN otherwise): a tag holding this manifest means the layer is there,
    // and only when neither does is the layer asked for.
    let there: Array<string | null> = [null, null];
    let have = false;
    if (layer) {
      const m = made();
      there = (await Promise.all(tags.map((t) => c.manifestDigest(t)))).map((d) => (d === m.digest ? d : null));
      have = there.some((d) => d !== null) || (await c.hasBlob(layer.digest)) !== null;
    }
    if (!have) {
      if (o.dryRun)
        return {
          ref: formatRef(d.ref, r.id),
          tags,
          digest: '',
          upload: 'uploaded',
          sent: size,
          tagged: true,
          disk_sha256: diskSha ?? '',
        };
      const up = await sendLayer(c, r, d, { parts, size, known }, o, say);
      ({ layer, diskSha, sent, newer, configAt } = up);
      upload = 'uploaded';
      there = [null, null];
    }
    const { cfg, manifest, digest } = made();
    let move = tags.filter((_, i) => there[i] !== digest);
    // PROFILE names the newest build: a push of an older one leaves it where it is
    if (move.includes(r.profile)) {
      const newerId = await (newer ?? newerThere(c, r));
      if (newerId) {
        say(`${formatRef(d.ref, r.profile)} stays on ${newerId}, a newer build`);
        move = move.filter((t) => t !== r.profile);
      }
    }
    const tagged = move.length > 0;
    if (tagged && !o.dryRun) {
      await c.putSmallBlob(cfg, configAt);
      await Promise.all(move.map((tag) => c.putManifest(tag, manifest, MT.manifest)));
    }
    return { ref: formatRef(d.ref, r.id), tags, digest, upload, sent, tagged, disk_sha256: diskSha! };
  } finally {
    await c.close();
  }
}

/** The layer sent (resuming a session the last push left), hashed as it goes; the tag and config questions asked aside. */
async function sendLayer(
  c: OciClient,
  r: BuildRecord,
  d: Dest,
  l: { parts: ReturnType<typeof layerParts>['parts']; size: number; known: ReturnType<typeof cachedLayer> },
  o: { signal?: AbortSignal },
  say: (s: string) => void,
) {
  const { parts, size, known } = l;
  let layer: { digest: string; size: number } | null = null;
  let diskSha: string | null = null;
  let newer: Promise<string | null> | null = null;
  let configAt: Promise<string> | undefined;
  let sent = 0;
  // the files' stamp before they are read: a file changed while it was sent is not remembered
  const stamp = layerStamp(r);
  const sess = uploadSession(r, d, size);
  say(`pushing ${r.id} (${size} bytes) to ${formatRef(d.ref)}`);
  // the first signal stops the upload after the chunk in flight (the next push resumes
  // there); a second one aborts that chunk too
  const hard = new AbortController();
  const again = () => hard.abort(o.signal?.reason);
  const first = () => {
    say(`stopping after the chunk in flight; the next push resumes there (a second signal stops at once)`);
    for (const s of TRAPPED) process.once(s, again);
  };
  o.signal?.addEventListener('abort', first, { once: true });
  const src = new LayerSource(parts, size);
  // asked once the layer is going up (on a second connection): where PROFILE points, and a
  // session for the config, so that neither costs a round trip after the layer
  const aside = () => {
    if (newer) return;
    newer = newerThere(c, r);
    configAt = c.startUpload();
    newer.catch(() => undefined);
    configAt.catch(() => undefined);
  };
  try {
    const { resumedAt } = await c.uploadBlob({
      size,
      chunk: chunkSize(),
      resume: sess.resume,
      skip: (n) => src.skip(n),
      send: (w, n) => {
        aside();
        return src.send(w, n);
      },
      digest: () => {
        layer = { digest: `sha256:${src.layer.digest('hex')}`, size };
        diskSha = src.file.digest('hex');
        return layer.digest;
      },
      saved: sess.save,
      stop: o.signal,
      hard: hard.signal,
      say,
    });
    if (resumedAt) say(`resumed at byte ${resumedAt}: sent ${size - resumedAt} of ${size} bytes`);
    sent = size - resumedAt;
  } catch (e) {
    // the config's session is of no use now (a registry gone does not hold the push up)
    const cancel = (configAt ?? Promise.reject(new Error())).then(
      (l) => c.cancelUpload(l),
      () => undefined,
    );
    await Promise.race([cancel, new Promise((r) => setTimeout(r, 2000).unref())]);
    throw e;
  } finally {
    src.close();
    o.signal?.removeEventListener('abort', first);
    for (const s of TRAPPED) process.off(s, again);
  }
  if (known && known.layer.digest !== layer!.digest)
    throw new PimError(
      EXIT.DATAERR,
      `${r.id}: the layer hashed to ${layer!.digest} this time, ${known.layer.digest} before: the build's disk changed`,
    );
  rememberLayer(r, layer!, diskSha!, stamp);
  return { layer: layer!, diskSha: diskSha!, sent, newer, configAt };
}
