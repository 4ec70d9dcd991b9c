"""A hook that kills the training process abruptly (no cleanup) right after
iteration ``at`` and its checkpoint: a stand-in for a crash or preemption."""

import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAtIterHook(Hook):
    priority = 'LOWEST'  # after CheckpointHook has written iteration `at`

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ) -> None:
        if runner.iter + 1 == self.at:
            os._exit(17)


@HOOKS.register_module()
class StopRankHook(Hook):
    """Stops (SIGSTOP) process ``rank`` after iteration ``at``: a peer that
    hangs without dying. Its pid goes to ``pid_file`` for the test's
    clean-up."""

    def __init__(self, rank: int, at: int, pid_file: str) -> None:
        self.rank, self.at, self.pid_file = rank, at, pid_file

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ) -> None:
        if runner.rank == self.rank and runner.iter + 1 == self.at:
            with open(self.pid_file, 'w') as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
