"""Small archs of the four backbones for fast tests: stages of 1-2
blocks, narrow widths, every layout feature (CoTNet: deep stem,
average-pool shortcuts, SE blocks)."""

from nommer_mm import CoTNet, GCViT, NomMer, Visformer

SMALL = {
    NomMer: dict(
        arch=dict(
            embed_dims=16,
            depths=[1, 2, 2, 1],
            num_heads=[1, 1, 2, 2],
            bottleneck_ratios=[2, 2],
        )
    ),
    GCViT: dict(
        arch=dict(
            embed_dims=16,
            depths=[1, 2, 2, 1],
            num_heads=[1, 1, 2, 2],
            mlp_ratio=2,
            layer_scale=None,
        )
    ),
    Visformer: dict(
        arch=dict(stem_channels=8, embed_dims=32, depths=[2, 1, 2], num_heads=2)
    ),
    CoTNet: dict(
        arch=dict(
            depths=[1, 2, 1, 1],
            cardinality=1,
            base_width=8,
            stem='deep',
            stem_width=16,
            avg_down=True,
            se_blocks=[[0], [1], [], []],
        )
    ),
}
