"""``mmseg::`` bases resolve through the tools' config reader on either
OpenMMLab stack (OneDL's mmengine names a package ``mmsegmentation`` for the
scope, which that stack does not have), and mmengine's table is left as it
was."""

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.config import utils as config_utils

from nommer_mm.config_scope import config_bases_resolve, unresolved_scopes
from nommer_mm.launch import load_config

ROOT = Path(__file__).resolve().parents[2]
UPERNET_T = ROOT / 'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py'


def test_seg_config_reads_through_the_tools_on_this_stack():
    before = dict(config_utils.MODULE2PACKAGE)
    cfg = load_config(str(UPERNET_T))
    assert cfg.default_scope == 'mmseg'
    # the bases' contents: mmseg's UPerNet and ADE20K
    assert cfg.model.decode_head.type == 'UPerHead'
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert config_utils.MODULE2PACKAGE == before


@pytest.fixture
def table_names_a_missing_package(monkeypatch):
    """mmengine's scope table as OneDL's has it: the mmseg entry names a
    package that is not installed."""
    monkeypatch.setitem(
        config_utils.MODULE2PACKAGE, 'mmseg', 'mmsegmentation-not-installed'
    )


def test_a_missing_scope_package_is_resolved_while_reading(
    table_names_a_missing_package,
):
    assert unresolved_scopes() == {'mmseg': 'mmsegmentation-not-installed'}
    with pytest.raises(ModuleNotFoundError, match='mmsegmentation-not-installed'):
        Config.fromfile(str(UPERNET_T))  # mmengine alone
    cfg = load_config(str(UPERNET_T))
    assert cfg.model.decode_head.type == 'UPerHead'
    # put back: the fix holds while a config is read, not after
    assert config_utils.MODULE2PACKAGE['mmseg'] == 'mmsegmentation-not-installed'


def test_the_table_is_put_back_when_reading_fails(
    table_names_a_missing_package, tmp_path
):
    bad = tmp_path / 'bad.py'
    bad.write_text("_base_ = ['mmseg::_base_/no/such/base.py']\n")
    with pytest.raises(FileNotFoundError), config_bases_resolve():
        Config.fromfile(str(bad))
    assert config_utils.MODULE2PACKAGE['mmseg'] == 'mmsegmentation-not-installed'


def test_scopes_that_resolve_are_left_alone():
    before = dict(config_utils.MODULE2PACKAGE)
    with config_bases_resolve():
        for scope in ('mmdet', 'mmpretrain'):
            assert config_utils.MODULE2PACKAGE[scope] == before[scope]
    assert config_utils.MODULE2PACKAGE == before
