"""What the GPU path depends on, checked on a machine without a GPU.

Every backbone's forward on CUDA tensors: the tensors are FakeTensors
(shapes, dtypes and devices, no data), so the CUDA path runs as far as
device placement and CUDA autocast go. A tensor made on the CPU inside a
forward, or an op that mixes devices, fails here as it would on a GPU; the
values are left to ``tools/gpu_check.py``. And every attention call's
inputs fit a fused SDPA kernel (its ``attention`` section on the CPU)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from small_archs import SMALL

# FakeTensors on 'cuda' without a driver, and the device-type autocast
# setters, come with torch 2.4
pytestmark = pytest.mark.skipif(
    not hasattr(torch, 'get_autocast_dtype'),
    reason=f'torch {torch.__version__}: no fake CUDA tensors without a driver',
)


def fake_cuda(module: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer of ``module`` by a fake CUDA copy."""
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for key, tensor in table.items():
                if tensor is None:
                    continue
                fake = mode.from_tensor(tensor.detach())
                with mode:
                    fake = fake.to('cuda')
                if isinstance(tensor, torch.nn.Parameter):
                    fake = torch.nn.Parameter(fake, tensor.requires_grad)
                table[key] = fake


@pytest.mark.parametrize('dtype', [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('backbone', list(SMALL), ids=lambda c: c.__name__)
def test_forward_on_cuda_tensors(backbone, training, dtype):
    model = backbone(**SMALL[backbone], drop_path_rate=0.1).train(training)
    mode = FakeTensorMode()  # real tensors met inside the forward fail
    fake_cuda(model, mode)
    was = torch.is_autocast_enabled('cuda'), torch.get_autocast_dtype('cuda')
    with mode, torch.set_grad_enabled(training):
        x = torch.randn(2, 3, 70, 90, device='cuda')  # odd: padded windows
        # torch.autocast refuses 'cuda' without a GPU; its state is set
        # directly, so the CUDA autocast casts run on these tensors.
        torch.set_autocast_enabled('cuda', dtype is not None)
        torch.set_autocast_dtype('cuda', dtype or was[1])
        try:
            outs = model(x)
        finally:
            torch.set_autocast_enabled('cuda', was[0])
            torch.set_autocast_dtype('cuda', was[1])
    assert len(outs) == 4
    for out in outs:
        assert out.device.type == 'cuda'
        assert out.dtype in (torch.float32, dtype or torch.float32)
        assert out.shape[0] == 2


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('backbone', list(SMALL), ids=lambda c: c.__name__)
def test_attention_inputs_fit_the_fused_gpu_kernels(backbone, training):
    """Every F.scaled_dot_product_attention call's query, key, value and
    mask have a last dim of stride 1, which SDPA's fused GPU kernels
    (flash, memory-efficient) require of all four; the CPU requires it of
    q/k/v only, so on the CPU a strided mask passes unnoticed while a GPU
    runs such calls on the MATH backend. In inference each call also gets
    the CPU's fused kernel here (gpu_check.py's record; training with a
    learned bias as the mask is MATH on the CPU by design)."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    kwargs = dict(SMALL[backbone])
    if isinstance(kwargs['arch'].get('num_heads'), list):  # 2 heads: a
        # (heads, n, n) view's last-dim stride is 1 only with one head
        kwargs['arch'] = dict(kwargs['arch'], num_heads=[2] * 4)
    model = backbone(**kwargs).train(training)
    record = []
    with torch.set_grad_enabled(training), gpu_check.sdpa_backends(record):
        model(torch.randn(2, 3, 70, 90))
    strides = [s for _, _, s in record]
    assert all(len(s) in (3, 4) and s == [1] * len(s) for s in strides), record
    if backbone.__name__ != 'CoTNet':  # no attention there
        assert record
    if not training:
        assert all(backend != 'MATH' for _, backend, _ in record), record
