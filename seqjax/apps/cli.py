"""The ``seqjax`` commands: ``seqjax train-charlm``, ``seqjax sample`` and ``seqjax bench``.

The options and their checks live in ``seqjax_cli`` (outside the package, so that
``--help`` needs no JAX); this module runs a command once its options are known to be good.

Exit status: 0 on success; 2 for a bad option or input (a one-line message, no traceback);
1 when training diverges or the library fails unexpectedly (one line; ``SEQJAX_DEBUG=1``
re-raises for the traceback); 130 after Ctrl-C (SIGINT) and 143 after SIGTERM, once the
run is saved.

In a run of several processes (``--coordinator``, ``--num-processes``, ``--process-id``, or
``--distributed``) every process runs the same command; process 0 alone prints, evaluates
the held-out text and samples (on a host copy of the parameters), and a signal to any
process stops all of them after the same call, saved; each then exits with that signal's
status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import seqjax_cli

__all__ = [
    "main",
    "run",
]

DEBUG_VARIABLE = "SEQJAX_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run the ``seqjax`` command with ``argv`` (the process's arguments when None) and
    return its exit status (see the module docstring); a bad option exits with status 2
    through argparse."""
    args, explicit = seqjax_cli.parse(argv)
    return run(args, explicit)


def run(args: argparse.Namespace, explicit: frozenset[str] = frozenset()) -> int:
    """Run the parsed command; every failure becomes one line on stderr and an exit status."""
    command = {"train-charlm": _train, "sample": _sample, "bench": _run_bench}[args.command]
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")

    def fail(kind: str, err: BaseException, status: int, hint: str = "") -> int:
        if debug:
            raise err
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"seqjax {args.command}: {kind}: {message}{hint}", file=sys.stderr, flush=True)
        return status

    from seqjax.apps import char_lm  # imports JAX: only now that the options are good

    try:
        return command(args, explicit) or 0
    except char_lm.DivergedError as err:
        return fail("stopped", err, 1)
    except (ValueError, OSError) as err:
        return fail("error", err, 2)
    except KeyboardInterrupt as err:
        return fail("interrupted", err, 128 + signal.SIGINT)
    except Exception as err:  # noqa: BLE001 -- one line, not a traceback; SEQJAX_DEBUG shows it
        hint = f" (run again with {DEBUG_VARIABLE}=1 for the traceback)"
        return fail(f"internal error: {type(err).__name__}", err, 1, hint)


class _Output:
    """Whether this process prints: all but processes 1.. of a multi-process run."""

    quiet = False


def _say(line: str) -> None:
    if not _Output.quiet:
        print(line, flush=True)  # at once, also into a pipe (a CI log, `| tee`)


# --------------------------------------------------------------------------- signals


class _StopRequests:
    """SIGINT and SIGTERM handlers for a training run.

    The first signal asks the run to stop after the current compiled call (it is then
    saved); a second one exits at once, with the conventional status (128 + the signal's
    number). The previous handlers come back on exit, so that ``main`` can be called again
    in the same process.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Callable[[str], None], exit_now: Callable[[int], None] = os._exit):
        self.say, self.exit_now = say, exit_now
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum, frame=None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            self.say(f"{name} again: exiting at once, without saving")
            sys.stdout.flush()
            sys.stderr.flush()
            self.exit_now(128 + signum)
            return
        self.signum = signum
        self.say(
            f"{name}: stopping after the current call, then saving (Ctrl-C again quits at once)"
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only there can Python
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- train-charlm


class _Plan:
    """A train-charlm run resolved from the options and, on resume, the saved run."""

    def __init__(self, values: dict, resumed_step: int | None, notes: list[str]):
        self.values, self.resumed_step, self.notes = values, resumed_step, notes


def _resolve(args: argparse.Namespace, explicit: frozenset[str]) -> _Plan:
    """The options of the run: the given ones for a new run; for a resumed run the saved
    ones, with the run options given explicitly in their place. Raises ValueError for a
    model option given with another value than the saved run's, or --resume with no run."""
    from seqjax import checkpoint
    from seqjax.apps import char_lm

    given = {
        name: getattr(args, name) for name in (*seqjax_cli.MODEL_OPTIONS, *seqjax_cli.RUN_OPTIONS)
    }
    directory = args.checkpoint_dir
    step = None if directory is None else checkpoint.latest_step(directory)
    if step is None:
        if args.resume:
            raise ValueError(
                f"--resume: {directory!r} holds no run to resume (no checkpoint with a valid "
                "manifest); leave out --resume to start a new run there"
            )
        return _Plan(given, None, [])
    meta = checkpoint.read_meta(directory)
    try:
        saved_config = char_lm.CharLMConfig(**meta)
    except TypeError as err:
        raise ValueError(
            f"{directory!r} holds a checkpoint that is not a seqjax char-LM's (its meta "
            f"record: {sorted(meta)}); use another --checkpoint-dir"
        ) from err
    saved = {name: getattr(saved_config, name) for name in seqjax_cli.MODEL_OPTIONS}
    settings = char_lm.read_settings(directory)
    notes = []
    if args.quick:
        notes.append("--quick applies to new runs: the resumed run keeps its saved sizes")
    refused = {
        name: (saved[name], given[name])
        for name in seqjax_cli.MODEL_OPTIONS
        if name in explicit and given[name] != saved[name]
    }
    if refused:
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in refused)
        raise checkpoint.IncompatibleCheckpointError(
            f"{flags}: the run in {directory!r} was saved with other values, which a resumed "
            f"run cannot change (saved vs given: {refused}); leave {flags} out to continue "
            "that run, or use another --checkpoint-dir for a new one"
        )
    values = dict(saved)
    overridden = []
    for name in seqjax_cli.RUN_OPTIONS:
        recorded = settings.get(name)
        if name == "prompt" and isinstance(recorded, str):
            recorded = os.fsencode(recorded)
        if name in explicit:
            values[name] = given[name]
            # A changed learning rate is reported by train_char_lm, against the saved state's.
            if name in settings and name != "learning_rate" and given[name] != recorded:
                flag = "--" + name.replace("_", "-")
                overridden.append(f"{flag} {_show(recorded)} -> {_show(given[name])}")
        else:
            values[name] = recorded if name in settings else given[name]
    if "steps" not in settings and "steps" not in explicit:
        notes.append(
            f"no record of the run's --steps in {directory}: training to {values['steps']}"
        )
    if overridden:
        notes.append("overriding the saved run's " + ", ".join(overridden))
    return _Plan(values, step, notes)


def _show(value) -> str:
    return repr(value.decode("utf-8", "replace")) if isinstance(value, bytes) else str(value)


def _settings(values: dict, argv_command: list[str]) -> dict:
    """The run options to record beside the checkpoints (JSON: the prompt as text)."""
    settings = {name: values[name] for name in seqjax_cli.RUN_OPTIONS}
    settings["prompt"] = os.fsdecode(values["prompt"])
    settings["command"] = argv_command
    return settings


def _requested_devices(args: argparse.Namespace, explicit: frozenset[str]):
    """--devices as given, else as the resumed run recorded it (read without JAX)."""
    from seqjax.apps import char_lm

    if "devices" in explicit or args.checkpoint_dir is None:
        return args.devices
    return char_lm.read_settings(args.checkpoint_dir).get("devices", args.devices)


def _start_jax(args: argparse.Namespace, requested) -> None:
    """Before JAX initialises: join the run's processes when asked (``--coordinator`` ...
    or ``--distributed``), with ``--devices`` host devices in this process (auto: 1), and
    silence every process but 0; else set this process's host device count."""
    if args.coordinator is None and not args.distributed:
        _expose_devices(requested)
        return
    from seqjax import sharding

    with _signals_kill():  # waiting for the others: Ctrl-C or SIGTERM ends the wait at once
        sharding.initialize_distributed(
            args.coordinator,
            args.num_processes,
            args.process_id,
            cpu_devices=1 if requested == "auto" else requested,
        )
    _Output.quiet = not sharding.is_main_process()


@contextlib.contextmanager
def _signals_kill():
    """SIGINT and SIGTERM with the system's default action (the process ends) while JAX
    waits, in one call, for every process to join: a Python handler would run only once that
    call returns (JAX's initialization timeout, 5 minutes by default), and there is nothing
    to save yet."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_DFL) for signum in _StopRequests.SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _expose_devices(requested) -> None:
    """Set the host device count before JAX initialises (reading a checkpoint's meta record
    with orbax initialises it): the count asked for, or for auto the most that auto may
    use on this machine (idle host devices cost nothing)."""
    from seqjax import sharding
    from seqjax.apps import char_lm

    count = requested
    if requested == "auto":
        count = min(char_lm.usable_cores(), char_lm.MAX_HOST_DEVICES)
    try:
        sharding.use_cpu_devices(count)
    except RuntimeError as err:
        if requested != "auto":  # JAX started earlier in this process with fewer devices
            raise ValueError(str(err)) from err


def _devices(requested, batch_size: int) -> int:
    """The devices to train on (in each process of a multi-process run): for auto,
    :func:`seqjax.apps.char_lm.auto_devices` over the host devices JAX has (one on a GPU or
    TPU, and one per process in a run of several)."""
    import jax

    from seqjax.apps import char_lm

    if requested != "auto":
        return requested
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return 1  # several processes: one device each (one process per core or chip)
    return char_lm.auto_devices(batch_size, cores=len(jax.devices("cpu")))


def _train(args: argparse.Namespace, explicit: frozenset[str]) -> int:
    from seqjax.apps import char_lm

    # Before the handlers: a signal while the processes join (or JAX starts) ends this one.
    _start_jax(args, _requested_devices(args, explicit))
    with _StopRequests(_say) as stop:  # from here on: a signal at any point stops cleanly
        config, values, devices = _plan(args, explicit)
        steps = values["steps"]
        model, state, _ = char_lm.train_char_lm(
            config,
            steps,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=values["checkpoint_every"],
            devices=devices,
            learning_rate=values["learning_rate"] if "learning_rate" in explicit else None,
            stop=stop.requested,
            log=_say,
            settings=_settings(values, ["seqjax", *args.argv]),
        )
        signum = _run_stopped_by(stop.signum)
        if signum is not None:
            return _stopped(signum, int(state.step), steps, args.checkpoint_dir)
    if _Output.quiet:  # process 0 of several evaluates and samples, on its own device
        return 0
    params = char_lm.host_copy(state.params)
    held_out = char_lm.load(config).held_out
    bpc = char_lm.evaluate(model, params, held_out)
    _say(f"held-out bits per character: {bpc:.3f}")
    _print_sample(model, params, values, config.seed)
    return 0


def _plan(args: argparse.Namespace, explicit: frozenset[str]):
    """The run's configuration, option values and device count, checked; prints what the
    run will do (and, on resume, what it changes). Call after :func:`_start_jax`."""
    plan = _resolve(args, explicit)
    values = plan.values
    problem = seqjax_cli.check_combination(values, args.num_processes)
    if problem is not None:
        raise ValueError(problem)
    devices = _devices(values["devices"], values["batch_size"])
    import jax

    from seqjax.apps import char_lm

    processes = f"{jax.process_count()} processes x " if jax.process_count() > 1 else ""
    model_options = {name: values[name] for name in seqjax_cli.MODEL_OPTIONS}
    config = char_lm.CharLMConfig(learning_rate=values["learning_rate"], **model_options)
    directory = args.checkpoint_dir
    action = (
        f"resuming the run in {directory} from step {plan.resumed_step}"
        if plan.resumed_step is not None
        else "seqjax char-LM"
    )
    _say(
        f"{action}: {config.cell.upper()} {config.num_layers}x{config.hidden_size} on "
        f"{config.corpus or 'the Python standard library source'}, {values['steps']} updates "
        f"of {config.batch_size} streams x {config.window} steps, on {jax.default_backend()} "
        f"({processes}{devices} device{'s' if devices > 1 else ''}); saving to "
        + (directory or "nothing (no --checkpoint-dir)")
    )
    for note in plan.notes:
        _say(note)
    if plan.resumed_step is not None and plan.resumed_step >= values["steps"]:
        _say(
            f"the run is at step {plan.resumed_step}, >= --steps {values['steps']}: nothing "
            "to train"
        )
    return config, values, devices


def _run_stopped_by(signum: int | None) -> int | None:
    """The signal that stopped the run: this process's (None when none came), or in a run of
    several processes the first process's that got one. A signal to any process stops every
    process after the same call, so each must report the stop, not only those signalled (one
    that was not would go on to evaluate and exit 0 as if the run were complete). In a run of
    several processes this is a collective: every process calls it after training returns."""
    import jax

    if jax.process_count() == 1:
        return signum
    import numpy as np
    from jax.experimental import multihost_utils

    received = multihost_utils.process_allgather(np.asarray([signum or 0], np.int32))
    signals = [int(s) for s in np.ravel(received) if s]
    return signals[0] if signals else None


def _stopped(signum: int, done: int, steps: int, directory: str | None) -> int:
    """Say where a stopped run stands and how to resume it; return the exit status."""
    from seqjax import checkpoint

    name = signal.Signals(signum).name
    line = f"{name}: stopped at update {done} of {steps}; "
    saved = None if directory is None else checkpoint.latest_step(directory)
    if directory is None:
        line += "nothing was saved (no --checkpoint-dir)"
    elif saved is None:
        line += f"nothing was saved in {directory} yet"
    else:
        resume = ["seqjax", "train-charlm", "--checkpoint-dir", directory, "--resume"]
        line += (
            f"checkpoint step {saved} is saved in {directory}; resume with: {shlex.join(resume)}"
        )
        import jax

        if jax.process_count() > 1:
            line += " (in every process, adding its --coordinator ... or --distributed)"
    _say(line)
    return 128 + signum


def _print_sample(model, params, values: dict, seed: int) -> None:
    import jax

    from seqjax.apps import char_lm

    raw = char_lm.sample_bytes(
        model,
        params,
        values["prompt"],
        values["length"],
        jax.random.key(seed),
        temperature=values["temperature"],
        top_k=values["top_k"],
    )
    text = char_lm.printable(values["prompt"] + raw)
    print(f"--- sample (temperature {values['temperature']}) ---\n{text}\n---", flush=True)


# --------------------------------------------------------------------------- sample, bench


def _sample(args: argparse.Namespace, explicit: frozenset[str]) -> int:
    from seqjax.apps import char_lm

    model, state = char_lm.load_trained(args.checkpoint_dir, log=_say)
    values = {name: getattr(args, name) for name in ("prompt", "length", "temperature", "top_k")}
    _print_sample(model, state.params, values, args.seed)
    return 0


def _run_bench(args: argparse.Namespace, explicit: frozenset[str]) -> int:
    from seqjax.apps import bench

    bench.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
