import pytest

from bootleg.config import Config, build_config, flatten, load_config
from bootleg.errors import BootlegError


def test_root_params_is_valid_embedded_default():
    cfg = load_config("params.yaml")
    assert cfg.data.name == "embedded"
    assert cfg.model.size == "micro" and cfg.model.img_size == 32 and cfg.model.patch_size == 4
    assert cfg.run.device in ("auto", "cpu")


@pytest.mark.parametrize(
    "size,blocks,target_len,pred",
    [
        ("small", [1, 4, 8, 12], 1536, (10, 192, 16)),
        ("base", [1, 4, 8, 12], 3072, (10, 384, 16)),
        ("large", [1, 4, 8, 12, 16, 20, 24], 7168, (10, 512, 16)),
    ],
)
def test_bootleg_preset_matches_table7(size, blocks, target_len, pred):
    cfg = build_config({"method": "bootleg", "model": {"size": size}})
    assert cfg.targets.blocks == blocks
    assert cfg.target_dim() == target_len
    p = cfg.model.predictor
    assert (p.depth, p.embed_dim, p.num_heads) == pred
    assert p.reg_tokens == 4 and cfg.model.reg_tokens == 4 and cfg.model.cls_token
    o = cfg.optim
    assert o.lr_max == 3e-3 and o.ema_init == o.ema_final == 0.9985 and o.warmup_epochs == 105
    assert o.lr_init == (1e-4 if size == "small" else 3e-5)
    assert cfg.loss.name == "mse" and cfg.data.crop_scale == (0.35, 1.0) and cfg.data.hflip


def test_ijepa_and_mae_presets():
    ij = build_config({"method": "ijepa", "model": {"size": "base"}})
    assert ij.targets.blocks == [12] and ij.loss.name == "smooth_l1" and ij.masking.sampler == "ijepa"
    assert not ij.model.cls_token and ij.model.reg_tokens == 0
    assert (ij.optim.wd_init, ij.optim.wd_final, ij.optim.ema_init, ij.optim.ema_final) == (0.04, 0.4, 0.996, 1.0)
    assert ij.data.interpolation == "bilinear" and not ij.data.hflip
    mae = build_config({"method": "mae", "model": {"size": "base"}})
    assert mae.targets.kind == "pixels" and mae.target_dim() == 768 and mae.masking.sampler == "random"
    d2v = build_config({"method": "data2vec", "model": {"size": "base"}})
    assert d2v.targets.merge == "mean" and d2v.targets.blocks == list(range(3, 13)) and d2v.target_dim() == 768


def test_overrides_win_over_presets(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("method: bootleg\nmodel:\n  size: base\n")
    cfg = load_config(p, ["model.predictor.depth=4", "targets.blocks=[2, 6]", "optim.lr_max=1e-3"])
    assert cfg.model.predictor.depth == 4 and cfg.targets.blocks == [2, 6] and cfg.optim.lr_max == 1e-3
    assert cfg.model.embed_dim == 768


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"model": {"sise": "base"}}, "model.sise: unknown key"),
        ({"optim": {"lr_max": "fast"}}, "optim.lr_max"),
        ({"method": "byol"}, "method: 'byol' is not allowed"),
        ({"targets": {"blocks": [0, 13]}}, "targets.blocks: [0, 13] out of range"),
        ({"model": {"img_size": 30, "patch_size": 4}}, "model.img_size: 30 is not a multiple"),
    ],
)
def test_bad_config_one_line_error(raw, needle):
    with pytest.raises(BootlegError) as e:
        build_config(raw, "params.yaml")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("params.yaml: ")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(BootlegError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(BootlegError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(BootlegError, match="expected key.sub=value"):
        load_config(None, ["model.depth"])


def test_flatten_round_trip():
    cfg = build_config({})
    flat = flatten(cfg)
    assert flat["model.predictor.depth"] == cfg.model.predictor.depth
    assert flat["method"] == "bootleg"
    assert Config.model_validate(cfg.model_dump()) == cfg
