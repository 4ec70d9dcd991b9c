import json
import subprocess
import sys
from pathlib import Path

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
    saved = [r for r in rows if r['mode'] == 'saved']
    rows = [r for r in rows if r['mode'] != 'saved']
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
        return json.loads(out.read_text())[0]['peak_mib']

    first, second = peak('a'), peak('b')
    assert first > 5 and abs(first - second) < 3


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
