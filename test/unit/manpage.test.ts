// The manuals made from the command definitions (lib/cli/manpage.ts): every
// section from the definition, roff that groff reads without a warning, and
// docs/ as build.mjs writes it (a stale docs/ page fails here).
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { manPage, manualText, markdownPage, roffEscape } from '../../lib/cli/manpage.ts';
import type { AnyCommand } from '../../lib/cli/command.ts';

const names = fs
  .readdirSync('cmds')
  .filter((f) => f.endsWith('.ts'))
  .map((f) => f.slice(0, -3))
  .sort();
const load = async (n: string) => (await import(`../../cmds/${n}.ts`)).default as AnyCommand;
const commands = async () => {
  const m: Record<string, string> = {};
  for (const n of names) m[n] = ((await load(n)).meta as { description: string }).description;
  return m;
};
const hasGroff = (() => {
  try {
    execFileSync('groff', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('man pages', () => {
  it('roff escaping: backslashes, hyphens, lines that would be requests', () => {
    expect(roffEscape('a\\b --x')).toBe('a\\eb \\-\\-x');
    expect(roffEscape(".TH x\n'y")).toBe("\\&.TH x\n\\&'y");
  });

  it('pim-run: name, synopsis, every option, details, examples, exit status', async () => {
    const page = await manPage(await load('pim-run'), { commands: await commands() });
    expect(page).toMatch(/^\.TH PIM\\-RUN 1 /m);
    expect(page).toContain('pim\\-run \\- Boot an image');
    expect(page).toMatch(/^\.SH SYNOPSIS\n\.B pim\\-run\nNAME\|IMAGE \[options\] \[\\-\\- qemu args\]$/m);
    for (const f of ['\\-\\-name', '\\-\\-snapshot', '\\-\\-forward', '\\-\\-wait', '\\-\\-help'])
      expect(page).toContain(`\\fB${f}\\fR`);
    expect(page).toContain('Ctrl\\-C while the VM starts');
    expect(page).toMatch(/^\.SH EXAMPLES\n\.RS 4\n\.nf\npim\\-run dev$/m);
    expect(page).toMatch(/^\.SH EXIT STATUS\n\.TP\n\.B 0\nsuccess$/m);
    expect(page).toMatch(/^\.B 75\n/m);
    expect(page).toMatch(/^\.SH SEE ALSO\n.*\\fBpim\\-console\\fR\(1\)/m);
  });

  it("a command's manual (cmds/NAME.md): headings, lists, tables and code in roff, after the details", async () => {
    const manual = [
      'First `--flag` and **bold** [pim](https://example.org/pim) — done.',
      '',
      '## A section',
      '',
      '- one item',
      '  that goes on',
      '- two',
      '',
      '| exit | when |',
      '|---|---|',
      '| 65 | bad `data` |',
      '',
      '```sh',
      '.starts with a dot',
      '```',
    ].join('\n');
    const page = await manPage(await load('pim-rm'), { commands: await commands(), manual });
    expect(page).toContain('First \\fB\\-\\-flag\\fR and \\fBbold\\fR pim <https://example.org/pim> \\[u2014] done.');
    expect(page).toMatch(/^\.SS "A section"$/m);
    expect(page).toMatch(/^\.IP \\\(bu 2\none item\nthat goes on\n\.IP \\\(bu 2\ntwo$/m);
    expect(page).toMatch(/^\.TP\n\\fB65\\fR\nbad \\fBdata\\fR$/m);
    expect(page).toMatch(/^\.nf\n\\&\.starts with a dot\n\.fi$/m);
    // the manual comes after the details, before the options
    expect(page.indexOf('A section')).toBeGreaterThan(page.indexOf('NAME PATH'));
    expect(page.indexOf('A section')).toBeLessThan(page.indexOf('.SH OPTIONS'));
    const md = await markdownPage(await load('pim-rm'), { commands: await commands(), manual });
    expect(md).toContain('### A section');
    expect(md).toContain('| 65 | bad `data` |');
  });

  it("the README's reference moved into the manuals: facts once in README.md, now in the man pages", async () => {
    const m = await commands();
    const man = async (n: string) =>
      (await manPage(await load(n), { commands: m, manual: manualText(n) })).replace(/\\-/g, '-');
    expect(await man('pim-ssh')).toContain('ControlPersist 10m');
    expect(await man('pim-cp')).toContain('Setuid, setgid and sticky bits are dropped.');
    expect(await man('pim-build')).toContain('builder: cloud-init: from a cloud image');
    expect(await man('pim-deploy')).toContain('PVEAPIToken');
    expect(await man('pim-run')).toContain('A KVM that fails.');
    expect(await man('pim-profile')).toContain('PasswordAuthentication no');
    const readme = fs.readFileSync('README.md', 'utf8');
    expect(readme).not.toContain('ControlPersist 10m');
    expect(readme).not.toContain('PVEAPIToken');
  });

  it('a command with subcommands documents each (pim-vm list, show)', async () => {
    const page = await manPage(await load('pim-vm'), { commands: await commands() });
    expect(page).toMatch(/^\.SS "pim\\-vm list \[options\]"$/m);
    expect(page).toMatch(/^\.SS "pim\\-vm show NAME \[options\]"$/m);
    expect(page).toContain('\\fB\\-\\-explain\\fR');
  });

  it.skipIf(!hasGroff)(
    'every page renders with groff -man -ww and no warning',
    async () => {
      const m = await commands();
      for (const n of names) {
        const r = execFileSync('groff', ['-man', '-ww', '-z', '-Tutf8'], {
          input: await manPage(await load(n), { commands: m, manual: manualText(n) }),
          encoding: 'utf8',
          stdio: ['pipe', 'pipe', 'pipe'],
        });
        expect(r, n).toBe('');
      }
    },
    60_000,
  );
});

describe('docs/', () => {
  it('docs/NAME.md is what the definitions make (build.mjs writes it: run npm run build and commit docs/)', async () => {
    const m = await commands();
    for (const n of names)
      expect(fs.readFileSync(`docs/${n}.md`, 'utf8'), `docs/${n}.md`).toBe(
        await markdownPage(await load(n), { commands: m, manual: manualText(n) }),
      );
  }, 60_000);
});
