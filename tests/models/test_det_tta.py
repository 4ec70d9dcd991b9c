"""InstanceSegTTAModel: the views' boxes and masks flipped back and merged
by NMS, each kept box with its own view's mask."""

import pytest
import torch
from mmengine.config import ConfigDict


class _Detector(torch.nn.Module):
    def test_step(self, data):  # not called: the views' predictions are given
        raise AssertionError


def _view(boxes, masks, flip: bool, width: int = 10):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    sample = DetDataSample(
        metainfo=dict(
            ori_shape=(6, width),
            flip=flip,
            flip_direction='horizontal' if flip else None,
        )
    )
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.tensor([0.9, 0.5][: len(boxes)]),
        labels=torch.zeros(len(boxes), dtype=torch.long),
    )
    if masks is not None:
        sample.pred_instances.masks = masks
    return sample


def test_a_flipped_view_is_flipped_back_and_its_mask_kept_with_its_box():
    from nommer_mm.models.det_tta import InstanceSegTTAModel

    tta = InstanceSegTTAModel(
        module=_Detector(),
        tta_cfg=ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100),
    )
    mask = torch.zeros(1, 6, 10, dtype=torch.bool)
    mask[0, 1:3, 1:4] = True  # the object at x 1..4 of the original image
    # the flipped view sees it at x 6..9 (width 10), scored higher
    flipped = _view([[6.0, 1.0, 9.0, 3.0]], mask.flip(-1), flip=True)
    plain = _view([[1.0, 1.0, 4.0, 3.0]], mask & False, flip=False)
    plain.pred_instances.scores = torch.tensor([0.4])
    (merged,) = tta.merge_preds([[flipped, plain]])
    got = merged.pred_instances
    assert got.bboxes.tolist() == [[1.0, 1.0, 4.0, 3.0]]  # one box, flipped back
    assert torch.equal(got.masks, mask)  # the flipped view's mask, flipped back
    assert got.scores.tolist() == pytest.approx([0.9])


def test_without_masks_it_is_mmdets_det_tta_model():
    from nommer_mm.models.det_tta import InstanceSegTTAModel

    tta = InstanceSegTTAModel(
        module=_Detector(),
        tta_cfg=ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100),
    )
    views = [_view([[6.0, 1.0, 9.0, 3.0]], None, True)]
    (merged,) = tta.merge_preds([views])
    assert merged.pred_instances.bboxes.tolist() == [[1.0, 1.0, 4.0, 3.0]]
    assert 'masks' not in merged.pred_instances
