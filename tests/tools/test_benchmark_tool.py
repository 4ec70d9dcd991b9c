import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_compares_two_models(tmp_path):
    """Two backbones, alternating, both modes, with the memory probe: the
    report has a row per model and mode and the ratio line."""
    out = tmp_path / 'bench.json'
    small = (
        "dict(type='NomMer', arch=dict(embed_dims=32, depths=[1, 1, 1, 1],"
        ' num_heads=[2, 2, 2, 4], bottleneck_ratios=[2, 2]){})'
    )
    models = [small.format(''), small.format(", contexts=('window',)")]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools/analysis_tools/benchmark.py'),
            '--models',
            *models,
            '--batch',
            '2',
            '--shape',
            '64',
            '64',
            '--warmup',
            '1',
            '--reps',
            '2',
            '--saved',
            '--profile',
            '3',
            '--mfu',
            '--json',
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'inference' in proc.stdout and 'training step' in proc.stdout
    assert proc.stdout.count('the throughput of') == 2
    rows = json.loads(out.read_text())
    run = rows[0]
    assert run['mode'] == 'run' and run['device'].startswith('CPU')
    assert (run['batch'], run['shape'], run['dtype']) == (2, [64, 64], 'fp32')
    assert 'live memory' in run['memory']
    saved = [r for r in rows if r['mode'] == 'saved']
    (peak,) = [r for r in rows if r['mode'] == 'peak']
    rows = [r for r in rows if r['mode'] not in ('run', 'saved', 'peak')]
    _check_mfu(rows, peak, models, batch=2, shape=(64, 64))
    assert proc.stdout.count('MFU: 2 FLOPs per multiply-add') == 2
    assert [r['mode'] for r in rows] == ['infer', 'infer', 'train', 'train']
    # three candidate contexts keep more for backward than the window alone
    assert len(saved) == 2 and saved[0]['saved_mib'] > saved[1]['saved_mib'] > 0
    assert proc.stdout.count('saved for backward') == 2
    assert proc.stdout.count('profile of one step') == 4  # 2 models x 2 modes
    assert proc.stdout.count('Self CPU time total') == 4
    for r in rows:
        assert r['images_per_s'] > 0 and r['min_ms'] <= r['median_ms']
        assert r['median_ms'] <= r['max_ms'] and r['peak_mib'] >= 0
    # the full mixer does more work than the window-only ablation
    assert rows[0]['peak_mib'] > 0
    # the Markdown table of that file: one line per model and mode, with the
    # figures as measured
    table = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools/analysis_tools/benchmark_table.py'),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith(f'**bench**: {run["device"]}; fp32, batch 2, 64x64')
    body = [ln for ln in table.stdout.splitlines() if ln.startswith('| dict(')]
    assert len(body) == 4
    for line, r in zip(body, rows):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[1] == {'infer': 'inference', 'train': 'training'}[r['mode']]
        assert cells[2] == f'{r["images_per_s"]:.1f}'
        assert cells[4] == f'{r["peak_mib"]:.0f}' and cells[5] == f'{r["mfu"]:.1%}'


def _check_mfu(rows, peak, models, batch, shape):
    """Each row's FLOPs are one image's traced count of that model, and its
    MFU is 2 x FLOPs x batch (x3 training) per second over the peak."""
    import torch
    from mmengine.registry import MODELS, init_default_scope

    from nommer_mm.analysis import count_flops

    # the CPU's peak: the largest of 512, 1024, 2048 that takes <= 0.5 s
    assert peak['flop_per_s'] > 0
    assert peak['matmul'] in {f'{n}x{n} fp32' for n in (512, 1024, 2048)}
    init_default_scope('mmpretrain')
    expected = [
        count_flops(
            MODELS.build(eval(m, {'__builtins__': {}, 'dict': dict})),
            torch.randn(1, 3, *shape),
        )
        for m in models
    ]
    # the window-only ablation computes less than the three candidates
    assert expected[0] > expected[1] > 0
    for r, flops in zip(rows, expected * 2):
        assert r['flops_per_image'] == flops
        steps = 3 if r['mode'] == 'train' else 1
        rate = 2 * flops * batch * steps / (r['median_ms'] / 1e3)
        assert abs(r['mfu'] - rate / peak['flop_per_s']) < 1e-9 * rate


def test_dense_models_run_their_whole_training_step():
    """A detector or segmentor config runs the real step: mode='loss' on
    annotated images through the data preprocessor (RPN, the three Cascade
    stages' boxes and masks; UperNet's decode and auxiliary heads), and
    mode='predict' in inference."""
    import torch

    from cls_helpers import load_tool

    bench = load_tool('tools/analysis_tools/benchmark.py')
    cases = [
        (
            'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py',
            {'loss_rpn_cls', 's0.loss_cls', 's2.loss_bbox', 's2.loss_mask'},
        ),
        (
            'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py',
            {'decode.loss_ce', 'aux.loss_ce'},
        ),
    ]
    for config, parts in cases:
        step, name = bench.build(config, backbone_only=False)
        assert isinstance(step, bench.DenseStep), name
        # dtypes mmcv's RoI ops cannot take stop before the run, with the fix
        if 'det' in config:
            with pytest.raises(SystemExit, match='no bfloat16 CUDA kernel.*fp16'):
                bench.check_dense_dtype(step, 'bf16', 'cuda')
            with pytest.raises(SystemExit, match='float32 only; use --dtype fp32'):
                bench.check_dense_dtype(step, 'fp16', 'cpu')
            bench.check_dense_dtype(step, 'fp16', 'cuda')
        bench.check_dense_dtype(step, 'fp32', 'cpu')
        if 'seg' in config:
            # no RoI ops: autocast runs on the CPU too
            bench.check_dense_dtype(step, 'bf16', 'cpu')
            # pad to 32, not to the recipe's 512x512 crop
            step.model.data_preprocessor.size = None
            step.model.data_preprocessor.size_divisor = 32
        torch.manual_seed(0)
        x = step.example_input(2, (96, 128), 'cpu')
        step.train()
        loss = step(x)
        assert parts <= set(step.log_vars), sorted(step.log_vars)
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        grad = step.model.backbone.stem.conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        step.eval()
        with torch.no_grad():
            results = step(x)
        assert len(results) == 2
        if 'det' in config:
            assert results[0].pred_instances.masks.shape[-2:] == (96, 128)
        else:
            assert results[0].pred_sem_seg.data.shape[-2:] == (96, 128)


def test_live_memory_is_repeatable(tmp_path):
    """--memory live (the CPU default) counts live memory, so two identical
    runs give the same peak to a few MiB (the default allocator's resident
    set moves by tens of MiB between identical NomMer-T runs)."""
    spec = (
        "dict(type='NomMer', arch=dict(embed_dims=32, depths=[1, 1, 1, 1],"
        ' num_heads=[2, 2, 2, 4], bottleneck_ratios=[2, 2]))'
    )

    def peak(name):
        out = tmp_path / f'{name}.json'
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / 'tools/analysis_tools/benchmark.py'),
                '--models',
                spec,
                '--mode',
                'train',
                '--batch',
                '4',
                '--shape',
                '128',
                '128',
                '--warmup',
                '1',
                '--reps',
                '1',
                '--json',
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert 'live memory' in proc.stdout
        (row,) = [r for r in json.loads(out.read_text()) if r['mode'] == 'train']
        return row['peak_mib']

    first, second = peak('a'), peak('b')
    assert first > 5 and abs(first - second) < 3


def test_a_run_stopped_while_writing_keeps_the_modes_it_finished(tmp_path, monkeypatch):
    """--json is rewritten after every mode; a stop in the middle of the
    last write (a time limit's kill, here an exception after half the text)
    leaves the file of the previous write whole: the run and the inference
    rows."""
    from cls_helpers import load_tool

    benchmark = load_tool('tools/analysis_tools/benchmark.py')
    out = tmp_path / 'bench.json'
    writes = []
    write_text = Path.write_text

    def stopped_third_time(self, text, *args, **kwargs):
        if self.name.startswith(out.name):
            writes.append(self.name)
            if len(writes) == 3:  # after the header, inference, training
                write_text(self, text[: len(text) // 2], *args, **kwargs)
                raise KeyboardInterrupt('stopped while writing')
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, 'write_text', stopped_third_time)
    spec = (
        "dict(type='NomMer', arch=dict(embed_dims=32, depths=[1, 1, 1, 1],"
        ' num_heads=[2, 2, 2, 4], bottleneck_ratios=[2, 2]))'
    )
    argv = ['benchmark.py', '--models', spec, '--batch', '1', '--shape', '64']
    argv += ['64', '--warmup', '1', '--reps', '1', '--no-memory']
    monkeypatch.setattr(sys, 'argv', [*argv, '--json', str(out)])
    with pytest.raises(KeyboardInterrupt):
        benchmark.main()
    monkeypatch.undo()
    assert len(writes) == 3
    rows = json.loads(out.read_text())
    assert [r['mode'] for r in rows] == ['run', 'infer']
    assert rows[1]['images_per_s'] > 0


def test_onednn_linear_all_swaps_the_other_models_linears():
    """--onednn-linear-all: a ViT's attention and mmcv-FFN linears (2 layers
    x 4) become oneDNN Linear, so the comparison can exclude that kernel."""
    vit = (
        "dict(type='VisionTransformer', arch=dict(embed_dims=32, "
        'num_layers=2, num_heads=2, feedforward_channels=64), '
        'img_size=64, patch_size=16)'
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools/analysis_tools/benchmark.py'),
            '--models',
            vit,
            '--mode',
            'infer',
            '--batch',
            '2',
            '--shape',
            '64',
            '64',
            '--warmup',
            '1',
            '--reps',
            '1',
            '--no-memory',
            '--onednn-linear-all',
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(
        ln for ln in proc.stdout.splitlines() if 'turned into oneDNN Linear' in ln
    )
    assert line.endswith(' 8'), line
    assert 'every nn.Linear through oneDNN' in proc.stdout


def test_gpu_figures_script_runs_valid_commands(tmp_path):
    """tools/gpu_figures.sh (the README's GPU rows) cannot run here; its
    commands must parse and name configs that exist, so that a GPU lease is
    not spent on a typo, and a wrong step name stops it before any run."""
    import shlex

    from cls_helpers import load_tool

    bench = load_tool('tools/analysis_tools/benchmark.py')
    script = str(ROOT / 'tools/gpu_figures.sh')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    proc = subprocess.run(
        ['bash', script, '--dry-run', str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 12
    jsons = []
    for line in lines:
        argv = shlex.split(line)
        # python3 as in dist_train.sh (an image may have no plain 'python')
        assert argv[:2] == ['python3', 'tools/analysis_tools/benchmark.py']
        args = bench.make_parser().parse_args(argv[2:])
        assert args.dtype in ('bf16', 'fp16', 'fp32')
        for spec in args.models:
            assert Path(bench.config_path(spec)).is_file(), spec
        jsons.append(Path(args.json))
    assert all(j.parent == tmp_path for j in jsons)
    assert len(set(jsons)) == len(jsons)
    proc = subprocess.run(
        ['bash', script, '--dry-run', str(tmp_path), 't128'],
        capture_output=True,
        text=True,
        env={**env, 'PYTHON': sys.executable},
    )
    assert shlex.split(proc.stdout)[0] == sys.executable
    proc = subprocess.run(
        ['bash', script, str(tmp_path), 't128', 'b512'], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown step 'b512'" in proc.stderr
    assert proc.stdout == '' and not list(tmp_path.iterdir())
    # a step cut short by STEP_LIMIT is reported, the tables are still
    # written, and the exit status says that something was not measured
    proc = subprocess.run(
        ['bash', script, str(tmp_path), 't128'],
        capture_output=True,
        text=True,
        env={**os.environ, 'STEP_LIMIT': '1'},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert '== t128: exit 124' in proc.stdout
    assert 'failed or timed out: t128' in proc.stdout
    figures = (tmp_path / 'figures.md').read_text()
    assert (
        '| MFU >= 25%, bf16 training, batch 128 (t128) | not measured | - |' in figures
    )


def test_benchmark_table_checks_the_gpu_targets(tmp_path, capsys):
    """--targets: each of issue 13's targets is met, missed or not measured
    from the step files of gpu_figures.sh, a miss gives exit status 1, and a
    file that is not benchmark.py's JSON is named and skipped."""
    from cls_helpers import load_tool

    tool = load_tool('tools/analysis_tools/benchmark_table.py')

    def run(batch, dtype='bf16'):
        return dict(
            mode='run',
            device='GPU X',
            torch='2.11.0',
            batch=batch,
            shape=[224, 224],
            dtype=dtype,
            options='',
            backbone_only=False,
            warmup=5,
            reps=20,
            memory='peak MiB: torch.cuda.max_memory_allocated over the step',
        )

    def row(mode, model, ips, mfu=None, peak=1000.0):
        return dict(
            mode=mode,
            model=model,
            images_per_s=ips,
            median_ms=1.0,
            min_ms=1.0,
            max_ms=1.0,
            throughput_vs_first=1.0,
            peak_mib=peak,
            mfu=mfu,
        )

    files = {
        't128': [
            run(128),
            row('infer', 'nommer-tiny_8xb128_in1k', 1200.0, 0.2),
            row('infer', 'swin-tiny_16xb64_in1k', 1000.0, 0.2),
            row('train', 'nommer-tiny_8xb128_in1k', 300.0, 0.31),
            row('train', 'swin-tiny_16xb64_in1k', 400.0, 0.3),
        ],
        'cascade-fp16': [
            run(2),
            row(
                'train', 'cascade-mask-rcnn_nommer-b_fpn_ms-3x_coco', 3.0, peak=31000.0
            ),
        ],
        'cascade-fp32': [run(2, 'fp32'), row('train', 'cascade', 2.0, peak=30600.0)],
    }
    for name, rows in files.items():
        (tmp_path / f'{name}.json').write_text(json.dumps(rows))
    (tmp_path / 'broken.json').write_text('[{"mode": "infer"')
    assert tool.main([str(tmp_path), '--targets']) == 1
    out, err = capsys.readouterr()
    assert 'skipped' in err and 'broken.json' in err
    checks = {
        ln.split(' | ')[0][2:]: ln
        for ln in out.splitlines()
        if '>=' in ln or 'within' in ln
    }
    assert checks['NomMer-T >= 1.0x Swin-T, inference (t128)'].endswith(
        '| 1.20x | yes |'
    )
    assert checks['NomMer-T >= 1.0x Swin-T, training (t128)'].endswith(
        '| 0.75x | **no** |'
    )
    assert (
        '31.0% (nommer-tiny_8xb128_in1k) | yes'
        in checks['MFU >= 25%, bf16 training, batch 128 (t128)']
    )
    assert checks['MFU >= 25%, bf16 training, batch 128 (s128)'].endswith(
        '| not measured | - |'
    )
    # 32 GB = 30518 MiB: 31000 MiB is over it, 30600 MiB too, 30000 is not
    assert checks[
        'Cascade Mask R-CNN NomMer-B iteration within 32 GB (cascade-fp16)'
    ].endswith('**no** |')
    files['t128'][4]['images_per_s'] = 250.0
    files['cascade-fp16'][1]['peak_mib'] = 30000.0
    files['cascade-fp32'][1]['peak_mib'] = 30000.0
    for name, rows in files.items():
        (tmp_path / f'{name}.json').write_text(json.dumps(rows))
    assert (
        tool.main(
            [
                str(tmp_path / 't128.json'),
                str(tmp_path / 'cascade-fp16.json'),
                str(tmp_path / 'cascade-fp32.json'),
                '--targets',
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count('| yes |') == 5 and '**no**' not in out
