"""A hook that kills the training process abruptly (no cleanup) right after
iteration ``at`` and its checkpoint: a stand-in for a crash or preemption."""
import os

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAtIterHook(Hook):
    priority = 'LOWEST'  # after CheckpointHook has written iteration `at`

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if runner.iter + 1 == self.at:
            os._exit(17)
