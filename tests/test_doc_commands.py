# ruff: noqa: E501  (the documented commands, verbatim)
"""The commands and snippets of README.md and docs/ as a user runs them.

Every shell command of the documentation is checked as far as a CPU
allows: the tool's own argument parser takes its arguments and every config
it names loads (the fast tier). The commands a CPU can run at a small size
run as written, in a folder laid out like the repository, on generated
data and checkpoints, with the overrides stated here (the slow tier): the
converters, training at 224 and the hand-off of its checkpoint to the 384,
detection and segmentation configs, testing, the picture tools and the ONNX
export. The README's own-config snippet is executed for each backbone type
it names, with the weights file the documented converter writes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from cls_helpers import ROOT, failure_report, run_tool, save_random_weights
from test_docs import DESCRIPTIONS, FENCE, rel

# bash scripts and the Python tool whose parser takes their arguments:
# (tool, how many leading positional arguments the script consumes itself,
#  which of them go on to the tool)
SCRIPTS = {
    'tools/dist_train.sh': ('tools/train.py', 2, [0]),
    'tools/dist_test.sh': ('tools/test.py', 3, [0, 1]),
    'tools/slurm_train.sh': ('tools/train.py', 4, [2]),
    'tools/slurm_test.sh': ('tools/test.py', 4, [2, 3]),
    'tools/run_demo.sh': ('tools/demo.py', 0, []),
}
# Commands that are not a tool of this repository, and what checks them.
NOT_TOOLS = {
    'pip install -e .': 'the installer test (tests/tools/test_install.py)',
    "python3 -m pytest -m 'not slow'": 'CI',
    'bash tools/run_tests.sh': 'CI (.ci/run)',
    'pip install -r requirements-oldest.txt': 'CI (.ci/run, its oldest part)',
    "pip install -e '.[upstream]'": 'the extras test (tests/tools/test_install.py)',
    # OpenMMLab's wheel index: CI builds the same mmcv for the same torch
    "pip install openmim '&&' mim install mmcv==2.1.0": 'CI (.ci/run, its oldest part)',
}


def doc_commands() -> list[tuple[str, str]]:
    """(document, command) for every line of the shell blocks of the
    documentation, comments and environment assignments removed."""
    found = []
    for doc in DESCRIPTIONS:
        for block in FENCE.findall(doc.read_text()):
            if not block.startswith(('```bash', '```sh')):
                continue
            for line in block.splitlines()[1:-1]:
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r'[A-Z_]+=\S*', words[0]):
                    words = words[1:]
                if words:
                    found.append((rel(doc), shlex.join(words)))
    return found


COMMANDS = doc_commands()


def tool_and_args(command: str) -> tuple[str, list[str]]:
    """The Python tool a command runs and the arguments its parser gets."""
    words = shlex.split(command)
    if words[0] in ('python', 'python3'):
        return words[1], words[2:]
    assert words[0] == 'bash', command
    script, args = words[1], words[2:]
    tool, consumed, passed = SCRIPTS[script]
    return tool, [args[i] for i in passed] + args[consumed:]


@pytest.mark.parametrize(
    'doc, command', COMMANDS, ids=[f'{d}: {c[:60]}' for d, c in COMMANDS]
)
def test_every_documented_command_parses_and_its_configs_load(doc, command):
    from cls_helpers import cached_config
    from tool_parsers import parse_tool_args

    if command in NOT_TOOLS:
        return
    tool, args = tool_and_args(command)
    assert (ROOT / tool).is_file(), f'{doc}: {tool} does not exist'
    parse_tool_args(tool, args)  # argparse exits 2 on what it refuses
    for arg in args:
        if arg.startswith('configs/') and arg.endswith('.py'):
            cached_config(ROOT / arg)


# ------------------------------------------------------- run as written
def _find(command: str) -> str:
    """``command`` as the documentation writes it (spacing aside); a
    command that changed in the docs fails here, not silently."""
    want = shlex.split(command)
    for _, documented in COMMANDS:
        if shlex.split(documented) == want:
            return documented
    raise AssertionError(f'no document has the command {command!r} any more')


def _run(command: str, cwd: Path, *overrides: str, timeout: int = 900):
    """A documented command, run as written from ``cwd`` with the Python of
    the tests, and ``overrides`` appended."""
    return _tool(shlex.split(_find(command))[1:] + list(overrides), cwd, timeout)


def _tool(args: list[str], cwd: Path, timeout: int = 900):
    """``tools/...`` with ``args`` through the tests' bounded runner; it must
    succeed."""
    proc = run_tool(args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, failure_report(proc)
    return proc


# Training and testing at a small size: the ImageNet configs on 4 generated
# classes (ImageNet's layout with meta/{train,val}.txt), 2 images per step,
# one epoch, loading in the main process.
SMALL_IMAGENET = ['--cfg-options', 'train_cfg.max_epochs=1'] + [
    f'{split}_dataloader.{key}'
    for split in ('train', 'val', 'test')
    for key in ('batch_size=2', 'num_workers=0', 'persistent_workers=False')
]


@pytest.fixture(scope='module')
def sandbox(tmp_path_factory):
    """A folder laid out like the repository (configs, tools, demo), with
    generated ImageNet-layout data and the checkpoints the documented
    converter commands read, made from random weights of the reference
    implementations and timm."""
    import timm
    from cotnet_reference import ReferenceCoTNet
    from cotnet_reference import randomize_ as randomize_cotnet
    from demo_data import make_imagenet_layout
    from reference_layout import ReferenceLayoutNomMer, randomize_

    root = tmp_path_factory.mktemp('repo')
    for name in ('configs', 'tools', 'demo'):
        (root / name).symlink_to(ROOT / name)
    data = make_imagenet_layout(root / 'data/imagenet', {'train': 1, 'val': 1}, size=48)
    (data / 'meta').mkdir()
    for split in ('train', 'val'):
        folders = sorted(p for p in (data / split).iterdir())
        lines = [
            f'{img.relative_to(data / split)} {label}'
            for label, folder in enumerate(folders)
            for img in sorted(folder.iterdir())
        ]
        (data / 'meta' / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    torch.manual_seed(0)
    sources = {
        'nommer_tiny.pth': {'model': randomize_(ReferenceLayoutNomMer()).state_dict()},
        'gcvit_tiny_best_1k.pth.tar': {
            'state_dict': timm.create_model('gcvit_tiny').state_dict()
        },
        'visformer_small.pth': timm.create_model('visformer_small').state_dict(),
        'cotnet50.pth.tar': {
            'state_dict': randomize_cotnet(ReferenceCoTNet()).state_dict()
        },
    }
    for name, checkpoint in sources.items():
        torch.save(checkpoint, root / name)
    return root


CONVERTERS = [
    'python tools/model_converters/nommer2mm.py nommer_tiny.pth checkpoints/nommer-tiny_in1k-224.pth',
    'python tools/model_converters/nommer2mm.py nommer_tiny.pth checkpoints/nommer-tiny_backbone.pth --backbone-only',
    'python tools/model_converters/peer2mm.py gcvit gcvit_tiny_best_1k.pth.tar checkpoints/gcvit-tiny_in1k-224.pth',
    'python tools/model_converters/peer2mm.py visformer visformer_small.pth checkpoints/visformer-small_in1k-224.pth',
    'python tools/model_converters/peer2mm.py cotnet cotnet50.pth.tar checkpoints/cotnet-50_in1k-224.pth',
]


def _state(path: Path) -> dict:
    return torch.load(path, map_location='cpu')['state_dict']


@pytest.mark.slow
def test_the_converter_commands_write_what_the_configs_read(sandbox):
    """Each documented converter command with a named source, as written;
    the dense configs' Pretrained step then takes the classifier it wrote."""
    for command in CONVERTERS:
        out = _run(command, sandbox)
        (dst,) = [w for w in shlex.split(command) if w.startswith('checkpoints/')]
        assert f'to {dst}' in out.stdout and (sandbox / dst).is_file(), out.stdout
    for config, ckpt in [
        ('configs/det/cascade-mask-rcnn_gcvit-t_fpn_ms-3x_coco.py', 'gcvit-tiny'),
        (
            'configs/seg/upernet_visformer-s_8xb2-160k_ade20k-512x512.py',
            'visformer-small',
        ),
        ('configs/det/cascade-mask-rcnn_cotnet-50_fpn_ms-3x_coco.py', 'cotnet-50'),
    ]:
        _check_pretrained_fits(sandbox, config, f'checkpoints/{ckpt}_in1k-224.pth')


def _check_pretrained_fits(sandbox: Path, config: str, ckpt: str) -> None:
    """The config's backbone, initialised from its Pretrained file in the
    sandbox, holds that file's backbone weights."""
    from mmengine.registry import MODELS

    from nommer_mm.launch import load_config, setup_codebase

    cfg = load_config(str(ROOT / config))
    setup_codebase(cfg)
    assert cfg.model.backbone.init_cfg.checkpoint == ckpt, config
    backbone = MODELS.build(cfg.model.backbone)
    _init_weights_in(sandbox, backbone)
    saved = _state(sandbox / ckpt)
    _assert_holds(
        backbone, {k[len('backbone.') :]: v for k, v in saved.items()}, config
    )


def _init_weights_in(sandbox: Path, module) -> None:
    """``init_weights`` with relative paths read from ``sandbox``."""
    import os

    here = os.getcwd()
    os.chdir(sandbox)
    try:
        module.init_weights()
    finally:
        os.chdir(here)


def _assert_holds(backbone, saved: dict, name: str) -> None:
    """``backbone`` holds ``saved``'s weights: all but the dense output
    norms, which a classifier does not have."""
    got = backbone.state_dict()
    shared = [k for k in got if k in saved and saved[k].shape == got[k].shape]
    assert len(shared) > 0.9 * len(got), (name, len(shared), len(got))
    for k in shared:
        assert torch.equal(got[k], saved[k]), (name, k)


README_SNIPPET_TYPES = {
    'NomMer': ('tiny', 'checkpoints/nommer-tiny_backbone.pth'),
    'GCViT': ('tiny', 'checkpoints/gcvit-tiny_backbone.pth'),
    'Visformer': ('small', 'checkpoints/visformer-small_backbone.pth'),
    'CoTNet': ('cotnet50', 'checkpoints/cotnet-50_backbone.pth'),
}


def readme_snippet() -> str:
    text = (ROOT / 'README.md').read_text()
    section = re.search(
        r'^## Using the backbones in your own config\n(.*?)^## ', text, re.S | re.M
    )
    assert section, 'README.md has no "Using the backbones in your own config"'
    return re.search(r'^```python\n(.*?)^```', section.group(1), re.S | re.M).group(1)


def test_the_readme_snippet_names_each_backbone_with_an_arch_of_its_own():
    snippet = readme_snippet()
    for name, (arch, _) in README_SNIPPET_TYPES.items():
        assert f"'{name}'" in snippet, name
        if name != 'NomMer':
            assert f"{name}: '{arch}'" in snippet, (name, arch)


@pytest.mark.slow
def test_the_readme_snippet_builds_every_backbone_it_names(sandbox):
    """The snippet as written for NomMer, and with the type and arch its
    comments give for the peers, with the backbone-only file of each (the
    documented --backbone-only converter command, and the same for the
    peers): the backbone holds the file's weights."""
    from mmengine.config import Config
    from mmengine.registry import MODELS

    import nommer_mm  # noqa: F401  (the snippet's custom_imports)

    _run(CONVERTERS[1], sandbox)
    peers = {
        'GCViT': ('gcvit', 'gcvit_tiny_best_1k.pth.tar'),
        'Visformer': ('visformer', 'visformer_small.pth'),
        'CoTNet': ('cotnet', 'cotnet50.pth.tar'),
    }
    snippet = readme_snippet()
    for name, (arch, weights) in README_SNIPPET_TYPES.items():
        if name in peers:
            model, src = peers[name]
            _tool(
                ['tools/model_converters/peer2mm.py', model, src]
                + [weights, '--backbone-only'],
                sandbox,
                timeout=300,
            )
        code = snippet.replace("type='NomMer'", f"type='{name}'")
        code = code.replace("arch='tiny'", f"arch='{arch}'")
        code = code.replace('checkpoints/nommer-tiny_backbone.pth', weights)
        cfg = Config.fromstring(code, file_format='.py')
        backbone = MODELS.build(cfg.model.backbone).eval()
        _init_weights_in(sandbox, backbone)
        _assert_holds(backbone, _state(sandbox / weights), name)
        assert len(backbone(torch.zeros(1, 3, 64, 96))) == 4, name


@pytest.mark.slow
def test_train_at_224_then_publish_then_384_and_dense_configs_read_it(sandbox):
    """README's training command at a small size; its checkpoint published
    as documented; the 384 config fine-tunes from it (load_from), the test
    command evaluates it, the dense configs' Pretrained step takes it."""
    train = 'python tools/train.py configs/cls/nommer-tiny_8xb128_in1k.py'
    _run(train, sandbox, *SMALL_IMAGENET, 'model.backbone.drop_path_rate=0.0')
    work = sandbox / 'work_dirs/nommer-tiny_8xb128_in1k'
    assert (work / 'epoch_1.pth').is_file()
    publish = (
        'python tools/model_converters/publish_model.py '
        'work_dirs/nommer-tiny_8xb128_in1k/epoch_300.pth '
        'checkpoints/nommer-tiny_in1k-224.pth'
    )
    # the run above is 1 epoch long, not 300
    (work / 'epoch_300.pth').symlink_to(work / 'epoch_1.pth')
    _run(publish, sandbox)
    published = _state(sandbox / 'checkpoints/nommer-tiny_in1k-224.pth')
    trained = _state(work / 'epoch_1.pth')
    assert published.keys() == trained.keys()
    assert all(torch.equal(published[k], trained[k]) for k in trained)

    test = (
        'python tools/test.py configs/cls/nommer-tiny_8xb128_in1k.py '
        'checkpoints/nommer-tiny_in1k-224.pth'
    )
    out = _run(test, sandbox, *SMALL_IMAGENET)
    assert 'accuracy/top1' in out.stdout + out.stderr

    fine_tune = 'bash tools/dist_train.sh configs/cls/nommer-tiny_8xb64_in1k-384px.py 8'
    _find(fine_tune)  # as documented on 8 GPUs; here one process
    proc = _tool(
        ['tools/train.py', 'configs/cls/nommer-tiny_8xb64_in1k-384px.py']
        + SMALL_IMAGENET,
        sandbox,
    )
    assert (
        'Load checkpoint from checkpoints/nommer-tiny_in1k-224.pth'
        in proc.stdout + proc.stderr
    )
    for config in (
        'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py',
        'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py',
    ):
        _check_pretrained_fits(sandbox, config, 'checkpoints/nommer-tiny_in1k-224.pth')


@pytest.mark.slow
def test_the_picture_and_export_commands_run_as_written(sandbox):
    """image_demo.py for the three tasks, visualize_nomination.py and the
    classifier's ONNX export, as the documents write them, on the shipped
    picture; a detection and a segmentation run's checkpoints are random
    weights saved where those commands read them."""
    _run(CONVERTERS[0], sandbox)
    for command, scope, ckpt in [
        (
            'python tools/image_demo.py demo/demo.jpg configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py --weights work_dirs/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco/epoch_36.pth --out-dir outputs',
            'mmdet',
            'work_dirs/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco/epoch_36.pth',
        ),
        (
            'python tools/image_demo.py demo/demo.jpg configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py --weights work_dirs/upernet_nommer-t_8xb2-160k_ade20k-512x512/iter_160000.pth --out-dir outputs',
            'mmseg',
            'work_dirs/upernet_nommer-t_8xb2-160k_ade20k-512x512/iter_160000.pth',
        ),
    ]:
        config = shlex.split(command)[3]
        (sandbox / ckpt).parent.mkdir(parents=True, exist_ok=True)
        save_random_weights(ROOT / config, scope, sandbox / ckpt)
        out = _run(command, sandbox)
        assert (sandbox / 'outputs/demo.png').is_file(), out.stdout
        (sandbox / 'outputs/demo.png').unlink()
    out = _run(
        'python tools/image_demo.py demo/demo.jpg configs/cls/nommer-tiny_8xb128_in1k.py --weights checkpoints/nommer-tiny_in1k-224.pth',
        sandbox,
    )
    assert 'top-5' in out.stdout
    _run(
        'python tools/visualization/visualize_nomination.py configs/cls/nommer-tiny_8xb128_in1k.py checkpoints/nommer-tiny_in1k-224.pth demo/demo.jpg --out nominations.png',
        sandbox,
    )
    assert (sandbox / 'nominations.png').is_file()
    _run(
        'python tools/deployment/pytorch2onnx.py configs/cls/nommer-tiny_8xb128_in1k.py checkpoints/nommer-tiny_in1k-224.pth --out nommer-t.onnx --verify',
        sandbox,
    )
    assert (sandbox / 'nommer-t.onnx').is_file()
