"""RNGStateHook: a run resumed from its iteration-3 checkpoint ends with the
weights of an uninterrupted run, on either OpenMMLab stack (upstream
mmengine replays the skipped batches through the iterator it made when the
loop was built; OneDL's makes it lazily and skips the sampler ahead). One
process, small model, a data loader worker with random augmentations."""

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

import nommer_mm  # noqa: F401  (registers the hooks)
from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin


class _NoisyData(Dataset):
    """Each sample draws from Python's and numpy's generators: the worker's
    streams advance with every sample it loads."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        jitter = random.random() + float(np.random.rand())
        return dict(inputs=torch.full((4,), float(i)) + jitter)


def _model():
    from mmengine.model import BaseModel

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)  # the main process's torch stream

        def forward(self, inputs, data_samples=None, mode='loss'):
            out = self.drop(self.fc(inputs))
            return dict(loss=((out - torch.rand_like(out)) ** 2).mean())

    return Model()


def _run(work_dir, max_iters: int, resume: str | None = None, name: str = 'run'):
    from mmengine.runner import Runner

    torch.manual_seed(0)  # the same initial weights in every run
    runner = Runner(
        model=_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_NoisyData(),
            sampler=dict(type='InfiniteSampler', shuffle=True),
            batch_size=2,
            num_workers=1,
            persistent_workers=True,
            collate_fn=dict(type='default_collate'),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(type='SafeCheckpointHook', interval=3, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1),
        ),
        custom_hooks=[dict(type='RNGStateHook')],
        randomness=dict(seed=0),
        resume=resume is not None,
        load_from=resume,
        default_scope='mmengine',
    )
    with mmengine_loads_through_plugin():  # as tools/train.py reads it
        runner.train()
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.mark.filterwarnings('ignore::UserWarning')
def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    full = _run(tmp_path / 'a', 6, name='full')
    _run(tmp_path / 'b', 3, name='first_half')  # its checkpoint: iter_3.pth
    resumed = _run(
        tmp_path / 'b', 6, resume=str(tmp_path / 'b/iter_3.pth'), name='rest'
    )
    differ = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differ, differ
    # and the second half did train
    half = torch.load(tmp_path / 'b/iter_3.pth')['state_dict']
    assert any(not torch.equal(half[k], full[k]) for k in full)
