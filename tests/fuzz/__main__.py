"""The long fuzz run: every target (or those named) for a time budget each.

    python -m tests.fuzz --seconds 60                # all targets, 60 s each
    python -m tests.fuzz --seconds 300 xmpp ksync.frame_reader

Prints one line per target (inputs run, inputs rejected with the documented error,
distinct failures, time, peak allocation) and, with ``--json``, writes the same figures.
A failure's input is printed by hypothesis as it is found; the run then carries on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import resource
import sys
import time
import traceback
from typing import Any

import tests.fuzz as package
from tests.fuzz._harness import TARGETS, run_target


def _load() -> None:
    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name.startswith("test_"):
            importlib.import_module("tests.fuzz." + mod.name)


def _signature(exc: BaseException) -> str:
    """One line naming a failure, so the same bug found twice counts once."""
    inner = exc
    while isinstance(inner, BaseExceptionGroup) and inner.exceptions:
        inner = inner.exceptions[0]
    tb = traceback.extract_tb(inner.__traceback__)
    where = "%s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno or 0) if tb else "?"
    return "%s at %s: %s" % (type(inner).__name__, where, str(inner).splitlines()[0][:160]
                             if str(inner) else "")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="targets or families (default: all)")
    p.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    p.add_argument("--batch", type=int, default=200, help="examples per hypothesis run")
    p.add_argument("--memory", type=int, default=2048, help="address-space cap, MiB")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    args = p.parse_args(argv)
    _load()
    chosen = [t for n, t in sorted(TARGETS.items())
              if not args.names or n in args.names or t.family in args.names]  # fmt: skip
    if args.list or not chosen:
        for t in chosen or TARGETS.values():
            print(t.name, "/".join(e.__name__ for e in t.errors) or "-")
        return 0 if chosen or args.list else 2
    # a decoder that allocates without bound hits MemoryError (a failure), not the OOM killer
    cap = args.memory << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    rows: list[dict[str, Any]] = []
    load0 = os.getloadavg()[0]
    started = time.monotonic()
    for t in chosen:
        failures: dict[str, int] = {}
        end = time.monotonic() + args.seconds
        t0 = time.monotonic()
        while time.monotonic() < end:
            try:
                run_target(t, args.batch, derandomize=False, shrink=False)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - a Hang too: every failure counts
                sig = _signature(e)
                failures[sig] = failures.get(sig, 0) + 1
                notes = "\n".join(getattr(e, "__notes__", []))  # hypothesis: the input
                print("FAIL %s: %s\n%s" % (t.name, sig, notes[:4000]), file=sys.stderr,
                      flush=True)  # fmt: skip
        row: dict[str, Any] = {"target": t.name, "inputs": t.stats.inputs, "rejected": t.stats.rejected,
               "failures": len(failures), "found": sorted(failures),
               "seconds": round(time.monotonic() - t0, 1),
               "peak_kib": t.stats.peak >> 10}  # fmt: skip
        rows.append(row)
        print("%-28s %9d inputs %9d rejected %3d failures %7.1f s %8d KiB peak"
              % (t.name, row["inputs"], row["rejected"], row["failures"], row["seconds"],
                 row["peak_kib"]), flush=True)  # fmt: skip
    summary = {"targets": rows, "seconds": round(time.monotonic() - started, 1),
               "load_start": load0, "load_end": os.getloadavg()[0],
               "inputs": sum(r["inputs"] for r in rows),
               "failures": sum(r["failures"] for r in rows)}  # fmt: skip
    print("total: %(inputs)d inputs, %(failures)d failures, %(seconds).0f s, load %(load_start).2f"
          " -> %(load_end).2f" % summary)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
