/**
 * Registry credentials, from where the container ecosystem keeps them, never
 * from pim's own files and never on a command line or in a log:
 *
 *   1. the environment variable a target names (`creds_env`), USER:PASSWORD;
 *   2. ~/.docker/config.json ($DOCKER_CONFIG/config.json): `credHelpers[REGISTRY]`
 *      or `credsStore` (a docker-credential-NAME program, asked with `get` and
 *      the registry on its stdin, its JSON answer on stdout), else
 *      `auths[REGISTRY].auth` (base64 of USER:PASSWORD);
 *   3. none: the registry is asked anonymously.
 */
import { spawn } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { readRegular } from '../core/fs.ts';

export interface Creds {
  user: string;
  password: string;
  /** where they came from, for messages (never the secret) */
  from: string;
}

/** The keys a registry may have in config.json: as written, with a scheme, and Docker Hub's legacy one. */
function keysFor(registry: string): string[] {
  if (registry === 'docker.io')
    return ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io'];
  return [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`, `https://${registry}/v2/`];
}

function splitUserPass(s: string, from: string): Creds {
  const i = s.indexOf(':');
  if (i <= 0) throw new PimError(EXIT.NOPERM, `${from} must hold USER:PASSWORD`);
  return { user: s.slice(0, i), password: s.slice(i + 1).replace(/\r?\n$/, ''), from };
}

/** Ask docker-credential-NAME for the registry's credentials (null when it has none). */
async function helper(name: string, registry: string): Promise<Creds | null> {
  if (!/^[A-Za-z0-9._-]+$/.test(name))
    throw new PimError(
      EXIT.CONFIG,
      `~/.docker/config.json names the credential helper ${JSON.stringify(name)}, which is not a program name`,
    );
  const prog = `docker-credential-${name}`;
  const out = await new Promise<{ code: number | null; stdout: string }>((resolve, reject) => {
    const c = spawn(prog, ['get'], { stdio: ['pipe', 'pipe', 'ignore'] });
    let stdout = '';
    c.stdout.on('data', (b: Buffer) => (stdout += b.toString('utf8')));
    c.on('error', (e) =>
      reject(
        new PimError(
          EXIT.NOPERM,
          `the credential helper ${prog} (from ~/.docker/config.json) cannot run: ${(e as NodeJS.ErrnoException).code ?? e.message}`,
        ),
      ),
    );
    c.on('close', (code) => resolve({ code, stdout }));
    c.stdin.end(registry);
  });
  if (out.code !== 0) return null; // "credentials not found in native keychain"
  try {
    const j = JSON.parse(out.stdout) as { Username?: string; Secret?: string };
    if (typeof j.Secret === 'string' && j.Secret) return { user: j.Username ?? '', password: j.Secret, from: prog };
  } catch {
    /* not JSON: no credentials */
  }
  throw new PimError(EXIT.NOPERM, `the credential helper ${prog} answered without credentials for ${registry}`);
}

/** The credentials for `registry`, or null (anonymous). */
export async function findCreds(registry: string, credsEnv?: string | null): Promise<Creds | null> {
  if (credsEnv) {
    const v = process.env[credsEnv];
    if (!v)
      throw new PimError(
        EXIT.NOPERM,
        `the environment variable ${credsEnv} (creds_env) is not set: export ${credsEnv}=USER:PASSWORD for ${registry}`,
      );
    return splitUserPass(v, `the environment variable ${credsEnv}`);
  }
  const dir = process.env.DOCKER_CONFIG || join(homedir(), '.docker');
  const file = join(dir, 'config.json');
  const text = readRegular(file);
  if (text === null) return null;
  let cfg: {
    auths?: Record<string, { auth?: string; username?: string; password?: string }>;
    credsStore?: string;
    credHelpers?: Record<string, string>;
  };
  try {
    cfg = JSON.parse(text);
  } catch {
    throw new PimError(EXIT.CONFIG, `${file} is not JSON; fix it or move it away`);
  }
  const keys = keysFor(registry);
  const named = keys.map((k) => cfg.credHelpers?.[k]).find((h) => typeof h === 'string');
  if (named) return helper(named, registry);
  if (cfg.credsStore) {
    const got = await helper(cfg.credsStore, registry);
    if (got) return got;
  }
  for (const k of keys) {
    const a = cfg.auths?.[k];
    if (!a) continue;
    if (a.auth) return splitUserPass(Buffer.from(a.auth, 'base64').toString('utf8'), `${file} (auths)`);
    if (a.username && a.password) return { user: a.username, password: a.password, from: `${file} (auths)` };
  }
  return null;
}
