/**
 * `pim-build pull REF`: an image that pim pushed (push.ts), fetched, every
 * digest verified (the manifest's, the config's, the layer's as it streams,
 * and the disk's against the sha256 in pim's annotations), and registered
 * as the build it is, with the same id, key and record, by
 * lib/image/registry.ts's commitBuild: one rename, so a pull that fails
 * leaves nothing registered. A build already here is not fetched again.
 */
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Transform, pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { EXIT, PimError } from '../core/exit.ts';
import { buildsDir, STORE_FILES } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { buildByKey, buildId, commitBuild, type BuildRecord } from '../image/registry.ts';
import { imageFormat } from '../image/store.ts';
import { OciClient, MT, sha256of } from './client.ts';
import { LAYER_FORMAT, readLayer } from './layer.ts';
import { ANN, layerStamp, rememberLayer } from './push.ts';
import { formatRef, type OciRef } from './ref.ts';

export interface PullOpts {
  insecure?: boolean;
  credsEnv?: string | null;
  signal?: AbortSignal;
  label?: string;
  say?: (s: string) => void;
}

interface Manifest {
  mediaType?: string;
  config?: { digest?: string; size?: number };
  layers?: Array<{ mediaType?: string; digest?: string; size?: number }>;
  annotations?: Record<string, string>;
}

const SAFE_FILE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/** pim's record out of a manifest's annotations, checked; 65 when the image is not a pim build. */
export function recordOf(m: Manifest, what: string): { record: BuildRecord; sha256: string } {
  const a = m.annotations ?? {};
  const notPim = (why: string) =>
    new PimError(
      EXIT.DATAERR,
      `${what} is not a pim build (${why}); pim-build pull takes images that pim-deploy pushed to a type: oci target`,
    );
  if (!a[ANN.record] || !a[ANN.key]) throw notPim(`no ${ANN.record} annotation`);
  let r: BuildRecord;
  try {
    r = JSON.parse(a[ANN.record]!) as BuildRecord;
  } catch {
    throw notPim(`its ${ANN.record} annotation is not JSON`);
  }
  const sha = a[ANN.sha256] ?? '';
  if (
    !r ||
    typeof r !== 'object' ||
    typeof r.profile !== 'string' ||
    typeof r.key !== 'string' ||
    !r.disk ||
    typeof r.disk.file !== 'string'
  )
    throw notPim('its record lacks profile, key or disk');
  if (r.key !== a[ANN.key] || !/^[0-9a-f]{64}$/.test(r.key)) throw notPim('its record and its key annotation disagree');
  if (!SAFE_FILE.test(r.profile) || r.profile.length > 64 || r.id !== buildId(r.profile, r.key))
    throw notPim(`its build id ${JSON.stringify(r.id)} is not PROFILE-KEY12`);
  if (
    !SAFE_FILE.test(r.disk.file) ||
    !/\.(qcow2|raw)$/.test(r.disk.file) ||
    (r.disk.format !== 'qcow2' && r.disk.format !== 'raw')
  )
    throw notPim(`its disk file ${JSON.stringify(r.disk.file)} is not NAME.qcow2 or NAME.raw`);
  if (r.efivars !== null && (typeof r.efivars !== 'string' || !SAFE_FILE.test(r.efivars) || r.efivars === r.disk.file))
    throw notPim('its efivars file name is not a plain file name');
  if (!/^[0-9a-f]{64}$/.test(sha)) throw notPim(`no ${ANN.sha256} annotation`);
  return { record: { ...r, log: STORE_FILES.buildLog }, sha256: sha };
}

/** A digest check, as a Transform: the bytes pass, the digest is compared at the end. */
function verifier(want: string, size: number | undefined, what: string): Transform {
  const h = createHash('sha256');
  let n = 0;
  return new Transform({
    transform(b: Buffer, _e, cb) {
      h.update(b);
      n += b.length;
      if (size !== undefined && n > size)
        return cb(new PimError(EXIT.DATAERR, `${what} is larger than its descriptor says (${size} bytes)`));
      cb(null, b);
    },
    flush(cb) {
      const got = `sha256:${h.digest('hex')}`;
      if (got !== want)
        return cb(
          new PimError(
            EXIT.DATAERR,
            `${what} does not match its digest: got ${got}, want ${want}; nothing was registered`,
          ),
        );
      if (size !== undefined && n !== size)
        return cb(new PimError(EXIT.DATAERR, `${what} has ${n} bytes, its descriptor says ${size}`));
      cb();
    },
  });
}

/** The manifest of REF (a tag or digest), read and checked as a pim build's. */
export async function fetchPimManifest(
  c: OciClient,
  ref: OciRef,
  tagOrDigest: string,
): Promise<{ m: Manifest; record: BuildRecord; sha256: string; digest: string }> {
  const what = formatRef(ref, tagOrDigest);
  const got = await c.getManifest(tagOrDigest);
  let m: Manifest;
  try {
    m = JSON.parse(got.body.toString('utf8')) as Manifest;
  } catch {
    throw new PimError(EXIT.DATAERR, `${what}: its manifest is not JSON`);
  }
  const mt = m.mediaType ?? got.mediaType;
  if (mt === MT.index || mt === MT.dockerList)
    throw new PimError(
      EXIT.DATAERR,
      `${what} is an image index (several images), not a pim build; pim-build pull takes images that pim-deploy pushed`,
    );
  const { record, sha256 } = recordOf(m, what);
  return { m, record, sha256, digest: got.digest };
}

/** Pull REF into the registry of builds; the record of the build (a hit when it was here already). */
export async function pullBuild(
  ref: OciRef,
  o: PullOpts = {},
): Promise<{ record: BuildRecord; hit: boolean; digest: string }> {
  const c = new OciClient(ref, { insecure: o.insecure, credsEnv: o.credsEnv, signal: o.signal, label: o.label });
  try {
    const tagOrDigest = ref.digest ?? ref.tag ?? 'latest';
    const got = await fetchPimManifest(c, ref, tagOrDigest);
    return await pullManifest(c, ref, got, o);
  } finally {
    await c.close();
  }
}

export async function pullManifest(
  c: OciClient,
  ref: OciRef,
  got: Awaited<ReturnType<typeof fetchPimManifest>>,
  o: PullOpts,
): Promise<{ record: BuildRecord; hit: boolean; digest: string }> {
  const { m, record: r, sha256 } = got;
  const what = formatRef(ref, got.digest);
  const here = buildByKey(r.profile, r.key);
  if (here) return { record: here, hit: true, digest: got.digest };
  const layers = m.layers ?? [];
  if (layers.length !== 1 || !layers[0]!.digest || !/^sha256:[0-9a-f]{64}$/.test(layers[0]!.digest))
    throw new PimError(
      EXIT.DATAERR,
      `${what}: a pim build has one layer with a sha256 digest; this one has ${layers.length}`,
    );
  const layer = layers[0]! as { mediaType?: string; digest: string; size?: number };
  if (
    layer.mediaType !== MT.layer &&
    layer.mediaType !== MT.layerGzip &&
    layer.mediaType !== 'application/vnd.docker.image.rootfs.diff.tar.gzip'
  )
    throw new PimError(EXIT.DATAERR, `${what}: its layer is ${layer.mediaType ?? 'of no media type'}, not a tar`);
  // the config: small, verified, and its diff_id must be the layer's (uncompressed) digest
  if (m.config?.digest && /^sha256:[0-9a-f]{64}$/.test(m.config.digest)) {
    const cr = await c.getBlob(m.config.digest);
    const body = await cr.body.buffer();
    if (sha256of(body) !== m.config.digest)
      throw new PimError(
        EXIT.DATAERR,
        `${what}: its config blob does not match its digest ${m.config.digest}; nothing was registered`,
      );
  }
  const dir = ensurePrivateDir(buildsDir());
  const tmp = join(dir, `.tmp-${r.id}-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  ensurePrivateDir(tmp);
  let ok = false;
  try {
    o.say?.(`pulling ${r.id} from ${what} (${layer.size ?? '?'} bytes)`);
    const res = await c.getBlob(layer.digest);
    const want = new Map<string, string>([[`disk/${r.disk.file}`, join(tmp, r.disk.file)]]);
    if (r.efivars) want.set(`pim/${r.efivars}`, join(tmp, r.efivars));
    // errors anywhere in the chain (the connection, the digest) end the iteration readLayer does
    const verified = pipeline(
      res.body.stream,
      verifier(layer.digest, layer.size, `${what}: the layer ${layer.digest}`),
      () => {},
    );
    const stream: AsyncIterable<Buffer> =
      layer.mediaType === MT.layer ? verified : pipeline(verified, createGunzip(), () => {});
    const files = await readLayer(stream, want);
    const diskSha = files.get(`disk/${r.disk.file}`);
    if (!diskSha)
      throw new PimError(EXIT.DATAERR, `${what}: its layer has no disk/${r.disk.file}; nothing was registered`);
    if (diskSha !== sha256)
      throw new PimError(
        EXIT.DATAERR,
        `${what}: disk/${r.disk.file} hashes to ${diskSha}, pim's record says ${sha256}; nothing was registered`,
      );
    if (r.efivars && !files.has(`pim/${r.efivars}`))
      throw new PimError(
        EXIT.DATAERR,
        `${what}: its layer has no pim/${r.efivars} (the build's UEFI variables); nothing was registered`,
      );
    const disk = join(tmp, r.disk.file);
    if (imageFormat(disk) !== r.disk.format && r.disk.format === 'qcow2')
      throw new PimError(EXIT.DATAERR, `${what}: disk/${r.disk.file} is not a qcow2 image; nothing was registered`);
    fs.writeFileSync(
      join(tmp, STORE_FILES.buildLog),
      `pim-build pull: ${r.id} from ${what}, layer ${layer.digest}, disk sha256 ${diskSha}\n`,
      { mode: 0o600, flag: 'wx' },
    );
    const record: BuildRecord = { ...r, disk: { ...r.disk, bytes: fs.statSync(disk).blocks * 512 } };
    const stored = commitBuild(tmp, record);
    ok = true;
    // the layer is the one this pim would make of these files only when it was made the same way
    if (layer.mediaType === MT.layer && m.annotations?.[ANN.format] === String(LAYER_FORMAT))
      rememberLayer(stored, { digest: layer.digest, size: layer.size ?? 0 }, diskSha, layerStamp(stored));
    return { record: stored, hit: false, digest: got.digest };
  } finally {
    if (!ok) fs.rmSync(tmp, { recursive: true, force: true });
  }
}
