/**
 * pim-build's remote cache: a registry repository that holds builds by
 * their cache key (pim.yml `build.remote_cache: {ref, insecure, push,
 * creds_env}`). The key is computed here as runBuild computes it (the same
 * exported steps of lib/builder/plan.ts, raw.ts and the catalog), before
 * anything boots:
 *
 *   - a build with the key in the local registry: nothing to ask;
 *   - the tag PROFILE-KEY12 in the repository, whose annotated key is the
 *     whole key: pulled (every digest checked) and registered: a hit, no VM;
 *   - no such tag: a miss, the build runs here, and is pushed after when
 *     push: true;
 *   - the registry unreachable, refusing, or holding a broken entry: a
 *     warning, and the build goes on here.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { loadProfile, withEnvHook } from '../config/profile.ts';
import { loadRuntimeConfig } from '../config/runtime.ts';
import { configError } from '../config/tree.ts';
import { buildByKey, buildId, type BuildRecord } from '../image/registry.ts';
import { planKey } from '../builder/build.ts';
import { buildKey, planBuild } from '../builder/plan.ts';
import { rawInputs } from '../builder/raw.ts';
import { parseRef, type OciRef } from './ref.ts';
import { OciClient } from './client.ts';
import { fetchPimManifest, pullManifest } from './pull.ts';
import { pushBuild } from './push.ts';

export interface RemoteCache {
  ref: OciRef;
  insecure: boolean;
  push: boolean;
  credsEnv: string | null;
}

/** pim.yml's build.remote_cache, checked (78 at FILE:LINE), or null. */
export async function remoteCacheConfig(): Promise<RemoteCache | null> {
  const { value, origins } = await loadRuntimeConfig();
  const rc = value.build?.remote_cache;
  if (!rc) return null;
  const at = (k: string) =>
    origins[`build.remote_cache.${k}`] ?? origins['build.remote_cache'] ?? origins.build ?? 'pim.yml';
  if (!rc.ref)
    throw configError(
      at('ref'),
      'build.remote_cache needs ref: a registry repository, such as registry.example:5000/team/cache',
    );
  let ref: OciRef;
  try {
    ref = parseRef(rc.ref, { what: 'build.remote_cache.ref', code: EXIT.CONFIG, repoOnly: true });
  } catch (e) {
    throw configError(at('ref'), (e as Error).message);
  }
  if (rc.creds_env !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(rc.creds_env))
    throw configError(at('creds_env'), `creds_env names an environment variable, not ${JSON.stringify(rc.creds_env)}`);
  return { ref, insecure: rc.insecure === true, push: rc.push === true, credsEnv: rc.creds_env ?? null };
}

/** The cache key `pim-build run PROFILE` would build under, computed by runBuild's own planKey. */
export async function profileKey(name: string, signal?: AbortSignal): Promise<{ profile: string; key: string }> {
  const profile = await withEnvHook(await loadProfile(name));
  if (profile.value.builder === 'raw') {
    return { profile: profile.name, key: buildKey(rawInputs(profile)) };
  }
  const plan = await planBuild(profile);
  return { profile: plan.name, key: (await planKey(profile, plan, signal)).key };
}

const dest = (rc: RemoteCache) => ({
  ref: rc.ref,
  insecure: rc.insecure,
  credsEnv: rc.credsEnv,
  label: 'remote cache',
});

/** A failure of the cache is a warning, never the build's end (an interrupt still ends it). */
function soft(e: unknown, warn: (s: string) => void, what: string, then = 'building here'): null {
  if (!(e instanceof PimError)) throw e;
  warn(`remote cache: ${what}: ${e.message}; ${then}`);
  return null;
}

/**
 * A client of the remote cache whose ping (the scheme, the auth challenge,
 * a token) is already under way: opened before the profile's key is
 * computed, so that the two overlap and the hit's first request goes out
 * on a connection that is up. Its failure is the first request's (a
 * warning there); close() it.
 */
export async function openRemote(rc: RemoteCache, signal?: AbortSignal): Promise<OciClient> {
  const c = new OciClient(rc.ref, { insecure: rc.insecure, credsEnv: rc.credsEnv, signal, label: 'remote cache' });
  c.warm();
  return c;
}

/** Ask the remote cache (through `c`, from openRemote) for the build of `profile` with `key`: the registered build on a hit, else null. */
export async function fromRemote(
  profile: string,
  key: string,
  rc: RemoteCache,
  c: OciClient,
  o: { warn: (s: string) => void; say: (s: string) => void },
): Promise<BuildRecord | null> {
  if (buildByKey(profile, key)) return null; // a local hit: runBuild answers it
  const tag = buildId(profile, key);
  let got;
  try {
    got = await fetchPimManifest(c, rc.ref, tag);
  } catch (e) {
    if (e instanceof PimError && e.code === EXIT.NOINPUT) {
      o.say(`remote cache: no ${tag} (a miss)`);
      return null;
    }
    return soft(e, o.warn, `asking for ${tag}`);
  }
  if (got.record.key !== key || got.record.profile !== profile) {
    o.say(`remote cache: ${tag} holds another key (a miss)`);
    return null;
  }
  try {
    const pulled = await pullManifest(c, rc.ref, got, { say: o.say });
    return pulled.record;
  } catch (e) {
    return soft(e, o.warn, `pulling ${tag}`);
  }
}

/** Push a finished build to the remote cache (push: true); a failure is a warning. */
export async function toRemote(
  r: BuildRecord,
  rc: RemoteCache,
  o: { signal?: AbortSignal; warn: (s: string) => void; say: (s: string) => void },
): Promise<boolean> {
  try {
    const p = await pushBuild(r, dest(rc), { signal: o.signal, say: o.say });
    o.say(`remote cache: ${p.upload === 'uploaded' ? 'pushed' : 'already has'} ${p.ref}`);
    return true;
  } catch (e) {
    soft(e, o.warn, `pushing ${r.id}`, 'the build is kept here');
    return false;
  }
}
