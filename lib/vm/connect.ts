/**
 * Open QMP or the guest agent of a running VM, with clear errors. A command
 * looks its VM up once (`runningVm`: name checked, metadata, pidfile and
 * /proc read) and hands the RunningVm down; the connectors below take it and
 * never look it up again. Only when a connection fails is the VM looked at
 * once more, so that one that stopped meanwhile says so (69), as a lookup would.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { requireRunning, type RunningVm } from './state.ts';
import { vmRef } from './ref.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { GaClient, GaSilent } from '../qemu/ga.ts';
import { parseTimeout, jsonArg } from '../cli/args.ts';
import { printJson } from '../cli/output.ts';

/** The running VM `name` (64 for a bad name, 69 when it does not run). */
export async function runningVm(name: string): Promise<RunningVm> {
  return requireRunning(vmRef(name));
}

/** `connect`, or, when it fails, requireRunning's word on a VM that has stopped since it was looked up. */
async function open<C>(vm: RunningVm, connect: () => Promise<C>): Promise<C> {
  try {
    return await connect();
  } catch (e) {
    await requireRunning(vm);
    throw e;
  }
}

export async function withQmp<T>(vm: RunningVm, timeoutMs: number, fn: (q: QmpClient) => Promise<T>): Promise<T> {
  const q = await open(vm, () => QmpClient.connect(vm.files.qmp, { timeoutMs }));
  try {
    return await fn(q);
  } finally {
    q.close();
  }
}

export async function withGa<T>(vm: RunningVm, timeoutMs: number, fn: (g: GaClient) => Promise<T>): Promise<T> {
  if (vm.meta && !vm.meta.agent)
    throw new PimError(EXIT.UNAVAILABLE, `${vm.name} was started without a guest-agent channel`);
  const g = await open(vm, () => GaClient.connect(vm.files.ga, timeoutMs));
  // A VM that is not running inside QEMU (paused, stopped on an error) cannot
  // answer, and waiting out the whole timeout says nothing: while the agent has
  // not answered its first sync, QMP is asked after a second, and then every two.
  let done = false;
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    const look = async () => {
      if (done || g.synced) return;
      const why = await notRunning(vm);
      if (why) reject(why);
      else if (!done) timer = setTimeout(look, 2_000);
    };
    timer = setTimeout(look, 1_000);
  });
  stalled.catch(() => undefined); // raced below; never unhandled
  try {
    return await Promise.race([fn(g), stalled]);
  } catch (e) {
    if (!(e instanceof GaSilent)) throw e;
    g.close();
    throw (await whySilent(vm)) ?? e;
  } finally {
    done = true;
    clearTimeout(timer);
    g.close();
  }
}

/** 69 with the reason when the VM is not running inside QEMU (QMP query-status); null otherwise or when QMP does not say. */
async function notRunning(vm: RunningVm): Promise<PimError | null> {
  try {
    return await withQmp(vm, 2_000, async (q) => {
      const st = (await q.execute('query-status')) as { status: string; running: boolean };
      if (st.running) return null;
      const how = st.status === 'paused' ? `resume it (pim-ctl ${vm.name} resume)` : 'see pim-status and pim-log';
      return new PimError(
        EXIT.UNAVAILABLE,
        `${vm.name} is not running inside QEMU (status ${st.status}), so its guest agent cannot answer; ${how}`,
      );
    });
  } catch {
    return null;
  }
}

/**
 * The agent did not answer: say what pim sees, through QMP. A VM that is not
 * running (paused, stopped by an error) cannot answer; the agent's socket
 * takes one client at a time, so another client that holds it (our own
 * connection is closed by now) blocks every other. Null when QMP sees
 * nothing wrong: then the agent itself is silent.
 */
async function whySilent(vm: RunningVm): Promise<PimError | null> {
  try {
    const why = await notRunning(vm);
    if (why) return why;
    return await withQmp(vm, 3_000, async (q) => {
      const chardevs = (await q.execute('query-chardev')) as Array<{ label: string; filename: string }>;
      const ga = chardevs.find((c) => c.label === 'ga0');
      if (ga && !ga.filename.startsWith('disconnected:')) {
        return new PimError(
          EXIT.TEMPFAIL,
          `another client holds ${vm.name}'s guest-agent socket (${vm.files.ga}); it takes one at a time: try again when that one is done`,
        );
      }
      return null;
    });
  } catch {
    return null;
  }
}

/** One guest-agent command's `return`, for a VM by name, within `timeout` (the --timeout flag, default `dflt` seconds). */
export async function gaQuery<T>(name: string, command: string, timeout: string | undefined, dflt: number): Promise<T> {
  const ms = parseTimeout(timeout, dflt);
  return (await withGa(await runningVm(name), ms, (g) => g.execute(command, undefined, ms))) as T;
}

/** pim-qmp and pim-ga: one raw command, its `return` value printed as JSON. */
export async function rawCommand(
  kind: 'qmp' | 'ga',
  name: string,
  command: string,
  rawArgs: string | undefined,
  timeoutMs: number,
): Promise<void> {
  const a = jsonArg(rawArgs);
  const vm = await runningVm(name);
  const ret =
    kind === 'qmp'
      ? await withQmp(vm, timeoutMs, (q) => q.execute(command, a, timeoutMs))
      : await withGa(vm, timeoutMs, (g) => g.execute(command, a, timeoutMs));
  printJson(ret ?? {});
}
