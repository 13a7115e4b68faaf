/**
 * A command's manual, made from its definition (the same meta, args and
 * subcommands that --help renders, lib/cli/command.ts): a man page in roff
 * (`man 1 pim-run`) and a Markdown page for readers on the web (docs/).
 * build.mjs writes them for every executable, as lima writes its CLI
 * reference from its command tree: one source for each fact.
 *
 * The roff is written here rather than converted from Markdown (marked-man,
 * remark-man): the definition is already structured (each option a tagged
 * paragraph, examples verbatim), so a converter would only parse back what
 * was just written, and the escaping roff needs is a few rules (below).
 *
 * A command's whole reference, too long for --help, is its manual:
 * cmds/NAME.md beside cmds/NAME.ts (the README only points to it). It is
 * Markdown of a few kinds of block (paragraphs, `## headings`, lists, tables,
 * fenced and indented code) with `code`, **bold** and [links](url) inline; the
 * man page gets it in roff after the details, docs/NAME.md as it is.
 */
import { existsSync, readFileSync } from 'node:fs';
import { argumentRows, optionRows, usageLine, VERSION } from './command.ts';
import { findSub, node, type AnyCommand, type Node } from './tree.ts';

/** Every exit status pim uses (lib/core/exit.ts), with what it means. */
export const EXIT_STATUS: Array<[number, string]> = [
  [0, 'success'],
  [1, 'a yes/no check said no'],
  [64, 'usage error: a bad flag or argument'],
  [65, 'bad data'],
  [66, 'missing input: no such VM, image, file or build'],
  [69, 'unavailable: the VM is not running, the agent does not answer, a tool is missing'],
  [70, 'internal error'],
  [73, 'cannot create a file or directory'],
  [75, 'temporary failure: busy, in use, or timed out'],
  [77, 'permission denied (sudo refused)'],
  [78, 'bad configuration'],
  [79, 'deploy rolled back'],
];

/** The node and every subcommand under it, depth first (a subcommand's name is `pim-vm list`). */
async function walk(n: Node): Promise<Node[]> {
  const out = [n];
  for (const k of Object.keys(n.subs ?? {})) {
    const s = await findSub(n, k);
    if (s) out.push(...(await walk(s)));
  }
  return out;
}

/** Paragraphs of a details text: plain ones (filled) and indented ones (kept as they are). */
function paragraphs(text: string): Array<{ pre: boolean; text: string }> {
  const out: Array<{ pre: boolean; text: string }> = [];
  for (const block of text.trim().split(/\n\s*\n/)) {
    let cur: { pre: boolean; lines: string[] } | null = null;
    for (const line of block.split('\n')) {
      const pre = /^\s/.test(line);
      if (!cur || cur.pre !== pre) {
        if (cur) out.push({ pre: cur.pre, text: cur.lines.join('\n') });
        cur = { pre, lines: [] };
      }
      cur.lines.push(line);
    }
    if (cur) out.push({ pre: cur.pre, text: cur.lines.join('\n') });
  }
  return out;
}

/** pim commands named in a text (for SEE ALSO), not `self`. */
function mentioned(texts: string[], known: Set<string>, self: string): string[] {
  const seen = new Set<string>();
  for (const t of texts)
    for (const m of t.matchAll(/\bpim-[a-z]+\b/g)) if (known.has(m[0]) && m[0] !== self) seen.add(m[0]);
  return [...seen].sort();
}

// --- roff --------------------------------------------------------------------

/**
 * Text for roff: a backslash is `\e`, every hyphen `\-` (a hyphen would be
 * typeset as U+2010 and break a flag copied from the page), and a line that
 * starts with `.` or `'` (a request) is protected with `\&`.
 */
export function roffEscape(s: string): string {
  return s
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/[^\x00-\x7f]/gu, (c) => `\\[u${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}]`)
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n');
}
const bold = (s: string) => `\\fB${roffEscape(s)}\\fR`;
const ital = (s: string) => `\\fI${roffEscape(s)}\\fR`;

function roffParas(text: string): string[] {
  const out: string[] = [];
  for (const p of paragraphs(text)) {
    if (out.length) out.push('.PP');
    if (p.pre) out.push('.RS 4', '.nf', roffEscape(p.text.replace(/^\s+/gm, '')), '.fi', '.RE');
    else
      out.push(
        roffEscape(
          p.text
            .split('\n')
            .map((l) => l.trim())
            .join('\n'),
        ),
      );
  }
  return out;
}

function roffSection(n: Node, sub: boolean): string[] {
  const l: string[] = [];
  const head = (t: string) => l.push(sub ? `.SS "${roffEscape(t).replace(/"/g, '\\(dq')}"` : `.SH ${t.toUpperCase()}`);
  if (sub) {
    head(`${n.name} ${usageLine(n)}`.trim());
    if (n.meta.description) l.push(roffEscape(n.meta.description));
    if (n.meta.details) l.push('.PP', ...roffParas(n.meta.details));
  }
  const args = argumentRows(n);
  if (args.length) {
    if (sub) l.push('.PP', 'Arguments:');
    else head('Arguments');
    for (const [w, t] of args) l.push('.TP', ital(w), roffEscape(t));
  }
  if (sub) l.push('.PP', 'Options:');
  else head('Options');
  for (const r of optionRows(n))
    l.push('.TP', r.flags.map(bold).join(', ') + (r.value ? ` ${ital(r.value)}` : ''), roffEscape(r.text));
  return l;
}

// --- the manual: cmds/NAME.md ----------------------------------------------------

/** cmds/NAME.md, the command's manual, or '' (read at build time, from the checkout). */
export function manualText(name: string, dir = 'cmds'): string {
  const f = `${dir}/${name}.md`;
  return existsSync(f) ? readFileSync(f, 'utf8') : '';
}

type Block =
  | { kind: 'head'; text: string }
  | { kind: 'para'; text: string }
  | { kind: 'code'; text: string }
  | { kind: 'list'; items: string[]; numbered: boolean }
  | { kind: 'table'; rows: string[][] };

/** The blocks of a manual's Markdown (the few kinds it uses). */
export function mdBlocks(md: string): Block[] {
  const lines = md.replace(/\r/g, '').split('\n');
  const out: Block[] = [];
  let i = 0;
  const cells = (l: string) =>
    l
      .trim()
      .replace(/^\|/, '')
      .replace(/\|$/, '')
      .split(/(?<!\\)\|/)
      .map((c) => c.trim().replace(/\\\|/g, '|'));
  while (i < lines.length) {
    const l = lines[i]!;
    if (!l.trim()) {
      i++;
      continue;
    }
    if (/^```/.test(l)) {
      const body: string[] = [];
      for (i++; i < lines.length && !/^```/.test(lines[i]!); i++) body.push(lines[i]!);
      i++;
      out.push({ kind: 'code', text: body.join('\n') });
    } else if (/^#{1,4} /.test(l)) {
      out.push({ kind: 'head', text: l.replace(/^#+ /, '') });
      i++;
    } else if (/^ {4}/.test(l)) {
      const body: string[] = [];
      for (
        ;
        i < lines.length && (/^ {4}/.test(lines[i]!) || (!lines[i]!.trim() && /^ {4}/.test(lines[i + 1] ?? '')));
        i++
      )
        body.push(lines[i]!.slice(4));
      out.push({ kind: 'code', text: body.join('\n') });
    } else if (/^\|/.test(l)) {
      const rows: string[][] = [];
      for (; i < lines.length && /^\|/.test(lines[i]!); i++)
        if (!/^\|[\s|:-]+\|?$/.test(lines[i]!)) rows.push(cells(lines[i]!));
      out.push({ kind: 'table', rows });
    } else if (/^(- |\d+\. )/.test(l)) {
      const items: string[] = [];
      const numbered = !l.startsWith('- ');
      for (; i < lines.length && lines[i]!.trim(); i++) {
        const m = /^(- |\d+\. )/.exec(lines[i]!);
        if (m) items.push(lines[i]!.slice(m[0].length));
        else items[items.length - 1] += `\n${lines[i]!.trim()}`;
      }
      out.push({ kind: 'list', items, numbered });
    } else {
      const body: string[] = [];
      for (; i < lines.length && lines[i]!.trim() && !/^(```|#{1,4} |\||- |\d+\. )/.test(lines[i]!); i++)
        body.push(lines[i]!.trim());
      out.push({ kind: 'para', text: body.join('\n') });
    }
  }
  return out;
}

/** Inline Markdown to roff: `code` and **bold** in bold, [text](url) as "text <url>", the rest escaped. */
function roffInline(s: string): string {
  const marked = s
    .replace(/\[([^\]]+)\]\(([^)]+)\)/g, (_, t: string, u: string) => (/^https?:/.test(u) ? `${t} <${u}>` : t))
    .replace(/`` (.+?) ``|`([^`]+)`/g, (_, a?: string, b?: string) => `\x01${a ?? b}\x02`)
    .replace(/\*\*(.+?)\*\*/gs, '\x01$1\x02');
  return roffEscape(marked).replace(/\x01/g, '\\fB').replace(/\x02/g, '\\fR');
}

/** A manual's blocks in roff: headings are subsections of DESCRIPTION, a table a tagged list by its first column. */
function roffManual(md: string): string[] {
  const l: string[] = [];
  for (const b of mdBlocks(md)) {
    if (b.kind === 'head') l.push(`.SS "${roffInline(b.text).replace(/"/g, '\\(dq')}"`);
    else if (b.kind === 'para') l.push('.PP', roffInline(b.text));
    else if (b.kind === 'code') l.push('.PP', '.RS 4', '.nf', roffEscape(b.text), '.fi', '.RE');
    else if (b.kind === 'list')
      for (const [j, it] of b.items.entries()) l.push(b.numbered ? `.IP ${j + 1}. 4` : '.IP \\(bu 2', roffInline(it));
    else {
      const [head, ...rows] = b.rows;
      for (const r of rows) {
        const rest = r.slice(1).map((c, j) => (r.length > 2 && head?.[j + 1] ? `${head[j + 1]}: ${c}` : c));
        l.push('.TP', `\\fB${roffInline(r[0] ?? '').replace(/\\f[BR]/g, '')}\\fR`, roffInline(rest.join('; ')));
      }
    }
  }
  return l;
}

/** A manual's Markdown for docs/NAME.md: as written, its headings one level below the page's. */
function mdManual(md: string): string {
  let fence = false;
  return md
    .trim()
    .split('\n')
    .map((l) => {
      if (/^```/.test(l)) fence = !fence;
      return !fence && /^#{1,3} /.test(l) ? `#${l}` : l;
    })
    .join('\n');
}

/** The man page (section 1) of `cmd`. `commands`: the umbrella's list (name -> summary), which build.mjs has; `manual`: cmds/NAME.md. */
export async function manPage(
  cmd: AnyCommand,
  opts: { commands?: Record<string, string>; manual?: string } = {},
): Promise<string> {
  const n = await node(cmd);
  const name = n.name;
  const l = [
    `.\\" Generated by build.mjs from cmds/${name}.ts (lib/cli/manpage.ts); do not edit.`,
    `.TH ${roffEscape(name.toUpperCase())} 1 "" "pim ${roffEscape(VERSION)}" "pim manual"`,
    '.nh',
    '.ad l',
    '.SH NAME',
    `${roffEscape(name)} \\- ${roffEscape(n.meta.description ?? '')}`,
    '.SH SYNOPSIS',
    `.B ${roffEscape(name)}`,
    roffEscape(usageLine(n)),
    '.SH DESCRIPTION',
    roffEscape(n.meta.description ?? ''),
  ];
  if (n.meta.details) l.push('.PP', ...roffParas(n.meta.details));
  if (opts.manual) l.push(...roffManual(opts.manual));
  l.push(...roffSection(n, false));
  const subs = (await walk(n)).slice(1);
  if (subs.length) {
    l.push('.SH COMMANDS');
    for (const s of subs) l.push(...roffSection(s, true));
  }
  if (n.meta.dispatch && opts.commands) {
    l.push('.SH COMMANDS');
    for (const [c, d] of Object.entries(opts.commands))
      if (c !== name) l.push('.TP', bold(c.replace(/^pim-/, '')), `${roffEscape(d)} See ${bold(c)}(1).`);
  }
  const examples = [n, ...subs].flatMap((x) => x.meta.examples ?? []);
  if (examples.length) l.push('.SH EXAMPLES', '.RS 4', '.nf', ...examples.map(roffEscape), '.fi', '.RE');
  l.push('.SH EXIT STATUS');
  for (const [c, t] of EXIT_STATUS) l.push('.TP', `.B ${c}`, roffEscape(t));
  const known = new Set(Object.keys(opts.commands ?? {}));
  const see = [
    ...new Set([
      ...(name === 'pim' ? [] : ['pim']),
      ...mentioned(
        [opts.manual ?? '', ...[n, ...subs].map((x) => `${x.meta.details ?? ''} ${x.meta.description ?? ''}`)],
        known,
        name,
      ),
    ]),
  ];
  if (see.length) l.push('.SH SEE ALSO', see.map((s) => `${bold(s)}(1)`).join(', '));
  return l.join('\n') + '\n';
}

// --- Markdown ------------------------------------------------------------------

/** Text for Markdown, outside code: the characters that would start markup are escaped. */
const mdEscape = (s: string) => s.replace(/([\\`*_[\]<>|])/g, '\\$1');
const code = (s: string) => (s.includes('`') ? `\`\` ${s} \`\`` : `\`${s}\``);

function mdParas(text: string): string[] {
  return paragraphs(text).map((p) =>
    p.pre
      ? '```\n' + p.text.replace(/^\s+/gm, '') + '\n```'
      : mdEscape(
          p.text
            .split('\n')
            .map((x) => x.trim())
            .join(' '),
        ),
  );
}

function mdSection(n: Node, level: string): string[] {
  const l: string[] = [];
  const args = argumentRows(n);
  if (args.length) l.push(`${level} Arguments`, args.map(([w, t]) => `- ${code(w)}: ${mdEscape(t)}`).join('\n'));
  l.push(
    `${level} Options`,
    optionRows(n)
      .map((r) => `- ${code(r.flags.join(', ') + (r.value ? ` ${r.value}` : ''))}: ${mdEscape(r.text)}`)
      .join('\n'),
  );
  return l;
}

/** The Markdown page of `cmd` (docs/NAME.md): the same sections as the man page. */
export async function markdownPage(
  cmd: AnyCommand,
  opts: { commands?: Record<string, string>; manual?: string } = {},
): Promise<string> {
  const n = await node(cmd);
  const name = n.name;
  const l = [
    `<!-- Generated by build.mjs from cmds/${name}.ts (lib/cli/manpage.ts); do not edit. -->`,
    `# ${name}`,
    mdEscape(n.meta.description ?? ''),
    '## Synopsis',
    '```\n' + `${name} ${usageLine(n)}`.trim() + '\n```',
  ];
  if (n.meta.details || opts.manual) l.push('## Description');
  if (n.meta.details) l.push(...mdParas(n.meta.details));
  if (opts.manual) l.push(mdManual(opts.manual));
  l.push(...mdSection(n, '##'));
  const subs = (await walk(n)).slice(1);
  if (subs.length) {
    l.push('## Commands');
    for (const s of subs) {
      l.push(`### ${s.name}`, '```\n' + `${s.name} ${usageLine(s)}`.trim() + '\n```');
      if (s.meta.description) l.push(mdEscape(s.meta.description));
      if (s.meta.details) l.push(...mdParas(s.meta.details));
      l.push(...mdSection(s, '####'));
    }
  }
  if (n.meta.dispatch && opts.commands) {
    l.push(
      '## Commands',
      Object.entries(opts.commands)
        .filter(([c]) => c !== name)
        .map(([c, d]) => `- [${c}](${c}.md): ${mdEscape(d)}`)
        .join('\n'),
    );
  }
  const examples = [n, ...subs].flatMap((x) => x.meta.examples ?? []);
  if (examples.length) l.push('## Examples', '```sh\n' + examples.join('\n') + '\n```');
  l.push('## Exit status', EXIT_STATUS.map(([c, t]) => `- ${c}: ${mdEscape(t)}`).join('\n'));
  const known = new Set(Object.keys(opts.commands ?? {}));
  const see = [
    ...new Set([
      ...(name === 'pim' ? [] : ['pim']),
      ...mentioned(
        [opts.manual ?? '', ...[n, ...subs].map((x) => `${x.meta.details ?? ''} ${x.meta.description ?? ''}`)],
        known,
        name,
      ),
    ]),
  ];
  if (see.length) l.push('## See also', see.map((s) => `[${s}](${s}.md)`).join(', '));
  return l.join('\n\n') + '\n';
}

/** docs/README.md: the index of the command pages. */
export function markdownIndex(commands: Record<string, string>): string {
  return (
    [
      '<!-- Generated by build.mjs from cmds/*.ts (lib/cli/manpage.ts); do not edit. -->',
      '# pim command reference',
      'One page per executable, made from its definition, as its man page is (`man pim-run`).',
      Object.entries(commands)
        .map(([c, d]) => `- [${c}](${c}.md): ${mdEscape(d)}`)
        .join('\n'),
    ].join('\n\n') + '\n'
  );
}
