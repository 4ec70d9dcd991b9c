"""Test-time augmentation for the detection configs, masks included (the
detection configs import this module; it needs mmdet)."""

from __future__ import annotations

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.registry import MODELS
from mmengine.structures import InstanceData

_FLIP_DIMS = {'horizontal': [-1], 'vertical': [-2], 'diagonal': [-2, -1]}


@MODELS.register_module()
class InstanceSegTTAModel(DetTTAModel):
    """mmdet's ``DetTTAModel`` (the boxes of every flip and scale, flipped
    back, merged by NMS) that also keeps each kept box's mask, flipped
    back; ``DetTTAModel`` itself refuses predictions with masks. Without
    masks it is ``DetTTAModel``."""

    def test_step(self, data: dict) -> list[DetDataSample]:
        """Each view through the detector with its flip hidden, then merged
        with it: mmdet's cascade mask head merges its stages' masks with
        ``merge_aug_masks``, which flips them where the meta says ``flip``
        (and fails on tensors); the merge below flips them back once."""
        views = [
            {key: value[i] for key, value in data.items()}
            for i in range(len(data['inputs']))
        ]
        predictions = []
        for view in views:
            flips = [
                sample.metainfo.get('flip', False) for sample in view['data_samples']
            ]
            for sample in view['data_samples']:
                sample.set_metainfo({'flip': False})
            predicted = self.module.test_step(view)
            for sample, flip in zip(predicted, flips):
                sample.set_metainfo({'flip': flip})
            predictions.append(predicted)
        return self.merge_preds(list(zip(*predictions)))

    def _merge_single_sample(self, data_samples: list[DetDataSample]) -> DetDataSample:
        views = [sample.pred_instances for sample in data_samples]
        if views[0].get('masks', None) is None:
            return super()._merge_single_sample(data_samples)
        metas = [sample.metainfo for sample in data_samples]
        bboxes, scores = self.merge_aug_bboxes(
            [v.bboxes for v in views], [v.scores for v in views], metas
        )
        labels = torch.cat([v.labels for v in views])
        masks = torch.cat([_unflip(v.masks, m) for v, m in zip(views, metas)])
        merged = data_samples[0]
        if bboxes.numel() == 0:
            return merged
        dets, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[: self.tta_cfg.max_per_img]
        merged.pred_instances = InstanceData(
            bboxes=dets[: len(keep), :-1],
            scores=dets[: len(keep), -1],
            labels=labels[keep],
            masks=masks[keep],
        )
        return merged


def _unflip(masks: torch.Tensor, meta: dict) -> torch.Tensor:
    if not meta.get('flip', False):
        return masks
    return masks.flip(_FLIP_DIMS[meta['flip_direction']])
