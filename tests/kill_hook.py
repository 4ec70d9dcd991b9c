"""Test doubles that configs load through ``custom_imports``: hooks that
kill or stop a training process (stand-ins for a crash, a preemption or a
hung peer), and detectors / segmentors whose predictions are known (the
ground truth on some images), so that a metric's exact value is known."""

import os
import signal
from pathlib import Path

import torch
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


def answers(img_path: str) -> bool:
    """Whether an oracle model answers the ground truth on this image
    (file stems of even number) or a fixed wrong answer (odd)."""
    return int(Path(img_path).stem) % 2 == 0


def _register_oracles() -> None:
    """OracleCascadeRCNN (mmdet) and OracleEncoderDecoder (mmseg): the real
    model runs, then its predictions are replaced: on the images that
    ``answers``, the ground truth of the test pipeline (score 1); on the
    others, no detections, or every pixel class 0."""
    from mmdet.models import CascadeRCNN
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.structures import InstanceData, PixelData
    from mmseg.models import EncoderDecoder
    from mmseg.registry import MODELS as SEG_MODELS

    @DET_MODELS.register_module()
    class OracleCascadeRCNN(CascadeRCNN):
        def predict(self, batch_inputs, batch_data_samples, rescale=True):
            samples = super().predict(batch_inputs, batch_data_samples, rescale)
            for sample in samples:
                # the test pipeline loads annotations after its Resize:
                # boxes and masks are at the original size, as predictions
                gt, pred = sample.gt_instances, InstanceData()
                keep = answers(sample.img_path)
                boxes = getattr(gt.bboxes, 'tensor', gt.bboxes)
                n = len(boxes) if keep else 0
                pred.bboxes = boxes[:n].float()
                pred.labels = gt.labels[:n]
                pred.scores = torch.ones(n)
                masks = torch.from_numpy(gt.masks.to_ndarray()).bool()
                pred.masks = masks[:n]
                if sample.metainfo.get('flip_direction'):
                    # a test-time flipped view (InstanceSegTTAModel hides its
                    # `flip` from the detector): answer as a model that sees
                    # the flipped image; the TTA model flips back
                    assert sample.flip_direction == 'horizontal'
                    width = sample.ori_shape[1]
                    pred.bboxes[:, [0, 2]] = width - pred.bboxes[:, [2, 0]]
                    pred.masks = pred.masks.flip(-1)
                sample.pred_instances = pred
            return samples

    @SEG_MODELS.register_module()
    class OracleEncoderDecoder(EncoderDecoder):
        def predict(self, inputs, data_samples=None):
            samples = super().predict(inputs, data_samples)
            for sample in samples:
                truth = sample.gt_sem_seg.data
                if answers(sample.img_path):
                    pred = truth.clone()
                else:
                    pred = torch.zeros_like(truth)
                sample.pred_sem_seg = PixelData(data=pred.long())
            return samples


_register_oracles()
