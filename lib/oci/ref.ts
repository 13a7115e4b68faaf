/**
 * Image references as the distribution spec and docker name them:
 * `[REGISTRY/]REPO[:TAG][@sha256:DIGEST]`. The first component is a
 * registry when it has a "." or a ":" or is "localhost" (docker's rule);
 * otherwise the reference is Docker Hub's, and a one-component repository
 * is under library/. A deploy target's or a remote cache's ref is a
 * repository (no tag): pim names the tags itself.
 */
import { EXIT, PimError } from '../core/exit.ts';

export interface OciRef {
  /** as written: the key of ~/.docker/config.json's auths (docker.io for Docker Hub) */
  registry: string;
  /** where the API is: host[:port] */
  host: string;
  repo: string;
  tag: string | null;
  digest: string | null;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
export const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
export const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

/** Parse REF; `what` names it in a message (64 by default, 78 for a config value). */
export function parseRef(s: string, opts: { what?: string; code?: 64 | 78; repoOnly?: boolean } = {}): OciRef {
  const what = opts.what ?? 'image reference';
  const bad = (why: string) =>
    new PimError(
      opts.code ?? EXIT.USAGE,
      `${what} ${JSON.stringify(s)}: ${why}; write it as REGISTRY[:PORT]/REPOSITORY${opts.repoOnly ? '' : '[:TAG|@sha256:DIGEST]'}`,
    );
  let rest = s.trim();
  if (!rest || /\s/.test(rest)) throw bad('it is empty or has spaces');
  rest = rest.replace(/^(?:docker|oci):\/\//, '');
  if (/^[a-z]+:\/\//i.test(rest)) throw bad('a reference has no scheme');
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) throw bad('the digest must be sha256: and 64 hex digits');
  }
  let tag: string | null = null;
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(`${JSON.stringify(tag)} is not a tag`);
  }
  const parts = rest.split('/');
  let registry = 'docker.io';
  if (parts.length > 1 && (parts[0]!.includes('.') || parts[0]!.includes(':') || parts[0] === 'localhost'))
    registry = parts.shift()!;
  if (!/^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9a-fA-F:]+\](?::\d{1,5})?$/.test(registry))
    throw bad(`${JSON.stringify(registry)} is not a registry host`);
  if (registry === 'docker.io' && parts.length === 1) parts.unshift('library');
  for (const p of parts)
    if (!COMPONENT.test(p))
      throw bad(`${JSON.stringify(p)} is not a repository name component (lowercase letters, digits, ".", "_", "-")`);
  if (opts.repoOnly && (tag || digest))
    throw bad('it names a repository: pim names the tags itself (PROFILE-KEY12 and PROFILE)');
  const host = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
  return { registry, host, repo: parts.join('/'), tag, digest };
}

/** REGISTRY/REPO[:TAG|@DIGEST] */
export const formatRef = (r: { registry: string; repo: string }, tagOrDigest?: string | null) =>
  `${r.registry}/${r.repo}${tagOrDigest ? (tagOrDigest.startsWith('sha256:') ? `@${tagOrDigest}` : `:${tagOrDigest}`) : ''}`;
