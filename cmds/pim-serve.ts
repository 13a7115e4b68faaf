/**
 * pim-serve: serve a profile's preseed, autoinstall files and scripts over
 * HTTP. Prints its URL on stdout, then one line per request on stderr.
 * Runs until Ctrl-C or SIGTERM. The same server is a library call
 * (lib/install/serve.ts startServer) for builds that run it in-process.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';
import { loadRuntimeConfig } from '../lib/config/runtime.ts';
import { installerCmdline } from '../lib/builder/iso-boot.ts';

const profileNames = catalogCompleter('profiles', () => import('../lib/config/defaults.ts'));

export default defineCommand({
  meta: {
    name: 'pim-serve',
    version: VERSION,
    description: "Serve a profile's preseed.cfg, user-data/meta-data and scripts over HTTP.",
    details: `
Serves, for PROFILE (default: "default"):
  /preseed.cfg            rendered preseeds.d/PROFILE.cfg.*        (Debian preseed)
  /user-data, /meta-data  rendered preseeds.d/PROFILE.user-data.*, PROFILE.meta-data.*
                          (Ubuntu autoinstall, nocloud-net: ds=nocloud-net;s=URL/)
  /network-config         rendered PROFILE.network-config.* (built in: empty, so cloud-init
                          keeps its fallback; cloud-init 24.3+ asks, and retries a 404)
  /installs.d/FILE        late-command scripts;  /scripts.d/FILE  provisioning scripts
Files named after the profile fall back to default's, then to pim's built-in ones.
Templates use eta (<%= profile.hostname %>, <%= url %>); url is the address the
client used, so a QEMU user-mode guest sees http://10.0.2.2:PORT.
Binds to 127.0.0.1 by default (pim.yml serve.bind), which QEMU user-mode guests reach as
10.0.2.2; --bind 0.0.0.0 (or a LAN address) opens it to bare-metal or Ventoy installs.
Only GET and HEAD (other methods are 405); anything outside the files above is 404.
A template that fails to render is a 500 and a log line. A port in use exits 75.
--port 0 picks a free port.
The profile is read once at start; templates and scripts are re-read when they change.
In a bash script, run it as a coprocess and read the URL from it (last example).`,
    examples: [
      'pim-serve dev',
      'pim-serve dev --bind 0.0.0.0 --port 8080',
      'coproc pim-serve dev --port 0; read -r url <&"${COPROC[0]}"; curl -s "$url/preseed.cfg"; kill "$COPROC_PID"',
    ],
  },
  args: {
    profile: {
      type: 'positional',
      required: false,
      valueHint: 'PROFILE',
      description: 'the profile to serve (default: default)',
      complete: profileNames,
    },
    port: {
      type: 'string',
      description: 'TCP port (pim.yml serve.port, else 8080); 0 = any free port',
      valueHint: 'N',
    },
    bind: {
      type: 'string',
      description: 'address to listen on (pim.yml serve.bind, else 127.0.0.1)',
      valueHint: 'ADDR',
    },
  },
  async run({ args }) {
    const { startServer } = await import('../lib/install/serve.ts');
    const { log } = await import('../lib/core/log.ts');
    const rt = (await loadRuntimeConfig()).value;
    let port = rt.serve.port;
    if (args.port !== undefined) {
      if (!/^\d{1,5}$/.test(args.port) || Number(args.port) > 65535)
        throw new PimError(EXIT.USAGE, `--port must be a number from 0 to 65535, not ${JSON.stringify(args.port)}`);
      port = Number(args.port);
    }
    const bind = args.bind ?? rt.serve.bind;
    const profile = args.profile ?? 'default';
    const s = await startServer({ profile, port, bind, log: (l) => log.info(l) });
    writeOut(s.url + '\n');
    // what the installer's kernel command line needs (pim-build passes the same words)
    const layout = s.profile.value.distro === 'ubuntu' ? 'ubuntu' : 'debian';
    const guest = s.bind === '127.0.0.1' || s.bind === '0.0.0.0' ? `http://10.0.2.2:${s.port}` : s.url;
    const words = installerCmdline(layout, guest, '', false, s.profile.value).replace(/ ---$/, '');
    if (guest !== s.url) log.info(`profile ${profile}: a QEMU user-mode guest reaches this as ${guest}`);
    log.info(`profile ${profile}: boot the installer with: ${words}`);
    await new Promise<void>((resolve) => {
      const stop = () => resolve();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    await s.close();
    return 0;
  },
});
