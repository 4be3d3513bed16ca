"""Run a stage script in this process and kill -9 it at a point chosen by counting, not by time.

    python tests/kill_at.py POINT N pipeline/train.py ARGS...

POINT (the process SIGKILLs itself, as `kill -9` would, when the Nth event happens):
    step              right after the Nth optimizer step (counted over the whole run)
    checkpoint        right after the Nth checkpoint file (last.pt or best.pt) is in place
    checkpoint-write  inside the Nth checkpoint write: the temporary file is complete, the rename
                      into place has not happened
    validation        at the start of the Nth validation

Used by tests/test_resume_points.py; the training code itself is not changed, only observed.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def _die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _countdown(n: int):
    calls = [0]

    def tick() -> bool:
        calls[0] += 1
        return calls[0] == n

    return tick


def main() -> None:
    point, n, script, *args = sys.argv[1:]
    tick = _countdown(int(n))
    import cxr14.training.checkpoint as checkpoint
    import cxr14.training.engine as engine
    from cxr14.training.schedule import LearningRateSchedule

    if point == "step":
        real_after_step = LearningRateSchedule.after_step

        def after_step(self, *a, **k):
            result = real_after_step(self, *a, **k)
            if tick():
                _die()
            return result

        LearningRateSchedule.after_step = after_step
    elif point == "checkpoint":
        real_save = engine.save_checkpoint

        def save(*a, **k):
            real_save(*a, **k)
            if tick():
                _die()

        engine.save_checkpoint = save
    elif point == "checkpoint-write":
        real_write = checkpoint.atomic_write_bytes

        def write(path, payload, *a, **k):
            if not tick():
                return real_write(path, payload, *a, **k)
            real_replace = os.replace

            def replace(source, target):  # the temporary file is complete: die before the rename
                if str(target) == str(path):
                    _die()
                return real_replace(source, target)

            os.replace = replace
            return real_write(path, payload, *a, **k)

        checkpoint.atomic_write_bytes = write
    elif point == "validation":
        real_validate = engine._validate

        def validate(*a, **k):
            if tick():
                _die()
            return real_validate(*a, **k)

        engine._validate = validate
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script` would (pipeline/_checkout.py)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
