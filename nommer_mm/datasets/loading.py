"""Loading images so that a broken one stops the run with its name: the
dataset's ``LoadImageFromFile`` lets an empty file fail inside OpenCV
(naming no file) and decodes a cut-short JPEG into grey pixels without a
word.

Training pipelines name :class:`CheckedLoadImageFromFile`. Evaluation
pipelines name mmcv's ``LoadImageFromFile``, since the mmpretrain, mmdet and
mmseg inferencers find the test pipeline's loading step by that name and
replace it; :func:`check_image_loading` swaps the checked loader into a
built dataset (``CheckedImageLoadingHook`` does so for the runner's
evaluation datasets)."""

from __future__ import annotations

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.registry import TRANSFORMS

VERIFY_HINT = 'check the whole dataset with: python tools/misc/verify_dataset.py CONFIG'


class BrokenImageError(ValueError):
    """An image of a dataset that is missing, empty, cut short or does not
    decode; the message names its path and its index in the dataset."""


def image_bytes_problem(data: bytes) -> str | None:
    """What is wrong with an image file's bytes that a decoder may not say:
    empty, or a JPEG / PNG whose end marker is missing (cut short). None
    when nothing is seen (decoding may still fail)."""
    if not data:
        return 'is empty (0 bytes)'
    if data.startswith(b'\xff\xd8'):
        # entropy-coded data cannot hold FF D9 (0xFF is stuffed), so the
        # end-of-image marker after the last start-of-scan ends the image
        if data.rfind(b'\xff\xd9') < max(data.rfind(b'\xff\xda'), 2):
            return f'is cut short ({len(data)} bytes, no JPEG end marker)'
    elif data.startswith(b'\x89PNG\r\n\x1a\n'):
        if b'IEND' not in data[-64:]:
            return f'is cut short ({len(data)} bytes, no PNG end chunk)'
    return None


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` (same arguments) that raises
    :class:`BrokenImageError` naming the image's path and dataset index,
    and pointing to ``tools/misc/verify_dataset.py``, when the file is
    missing, empty, cut short (a JPEG or PNG without its end marker) or
    does not decode, or when its segmentation label map
    (``seg_map_path``, read later by ``LoadAnnotations``) is. With
    ``ignore_empty=True`` such an image is skipped as mmcv skips it (the
    dataset draws another)."""

    def transform(self, results: dict) -> dict | None:
        filename = results['img_path']
        img, problem = self._load(filename, self.color_type)
        if problem is None and results.get('seg_map_path'):
            # the label map's decoder (LoadAnnotations) would fail naming no
            # file too, so it is read and decoded once here as well
            seg_map = results['seg_map_path']
            problem = self._load(seg_map, 'unchanged')[1]
            if problem is not None:
                problem = f'(its label map {seg_map}) {problem}'
        if problem is not None:
            if self.ignore_empty:
                return None
            index = results.get('sample_idx', '?')
            raise BrokenImageError(
                f'image {filename} (index {index} of the dataset) {problem}; '
                f'{VERIFY_HINT}'
            )
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def _load(self, filename: str, flag: str) -> tuple[np.ndarray | None, str | None]:
        """The decoded file, or None and what is wrong with it."""
        try:
            data = self._read(filename)
        except FileNotFoundError:
            return None, 'does not exist'
        problem = image_bytes_problem(data)
        if problem is not None:
            return None, problem
        try:
            img = mmcv.imfrombytes(data, flag=flag, backend=self.imdecode_backend)
        except Exception:  # the decoder's own error names no file
            img = None
        return img, None if img is not None else 'does not decode as an image'

    def _read(self, filename: str) -> bytes:
        if self.file_client_args is not None:
            client = fileio.FileClient.infer_client(self.file_client_args, filename)
            return client.get(filename)
        return fileio.get(filename, backend_args=self.backend_args)


def check_image_loading(dataset) -> int:
    """Swap every mmcv ``LoadImageFromFile`` step of a built dataset's
    pipelines (through dataset wrappers) for :class:`CheckedLoadImageFromFile`
    with the same settings; return how many were swapped."""
    swapped = 0
    pipeline = getattr(dataset, 'pipeline', None)
    for i, step in enumerate(getattr(pipeline, 'transforms', [])):
        if type(step) is LoadImageFromFile:
            checked = CheckedLoadImageFromFile.__new__(CheckedLoadImageFromFile)
            checked.__dict__.update(step.__dict__)
            pipeline.transforms[i] = checked
            swapped += 1
    inner = getattr(dataset, 'datasets', None) or [getattr(dataset, 'dataset', None)]
    for child in inner:
        if child is not None:
            swapped += check_image_loading(child)
    return swapped
