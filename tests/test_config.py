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
    # data2vec 2.0: mean of the instance-normed MLP-branch outputs of the last 10 blocks, M = 16, conv decoder
    t = d2v.targets
    assert (t.merge, t.norm, t.post_norm, t.blocks, t.mlp_branch) == ("mean", "instance", True, [], list(range(3, 13)))
    assert d2v.target_dim() == 768 and d2v.mask_repeats == 16 and d2v.model.predictor.kind == "conv"
    assert d2v.masking.sampler == "inverse_block"


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


PRESET_SECTIONS = ("model", "masking", "targets", "loss", "optim", "data")


def _sections(cfg):
    d = cfg.model_dump(mode="json")
    return {k: d[k] for k in PRESET_SECTIONS}


@pytest.mark.parametrize("method", ["bootleg", "ijepa", "mae", "data2vec"])
def test_a_method_switch_gives_that_method(method):
    """--set method=X on the root params.yaml (and an ablation-style variant) is X's preset for the
    model size, plus only what the file or the run states on purpose."""
    root = "params.yaml"
    want = build_config({"method": method, "model": {"size": "micro", "img_size": 32, "patch_size": 4}})
    got = load_config(root, [f"method={method}"])
    a, b = flatten(_sections(want)), flatten(_sections(got))
    diff = {k for k in a if a[k] != b[k]}
    stated = {"optim.epochs", "optim.batch_size", "optim.lr_ref_batch", "optim.warmup_epochs"}
    if method == "bootleg":  # the root file's per_method.bootleg values
        stated |= {"optim.lr_init", "optim.lr_max", "optim.lr_final"}
    assert diff <= stated, f"{method}: unexpected differences {sorted(diff - stated)}"
    # a variant that changes the method through a mapping behaves the same
    from bootleg.config import read_params
    from bootleg.schema import deep_merge

    raw = deep_merge(read_params(root), {"method": method})
    assert build_config(raw).model_dump() == got.model_dump()


def test_a_kind_change_replaces_the_preset_section_and_blocks_follow_depth():
    cfg = build_config({"method": "bootleg", "model": {"size": "micro"}, "masking": {"sampler": "random"}})
    assert cfg.masking.sampler == "random"
    cfg = build_config({"method": "mae", "model": {"size": "base"}, "targets": {"kind": "latent"}})
    assert cfg.targets.blocks == [1, 4, 8, 12]  # every 4th block, from the model's depth
    cfg = build_config({"method": "mae", "model": {"size": "large"}, "targets": {"kind": "latent"}})
    assert cfg.targets.blocks == [1, 4, 8, 12, 16, 20, 24]
    with pytest.raises(BootlegError, match=r"targets.blocks: unknown key for targets.kind=pixels"):
        build_config({"method": "mae", "targets": {"blocks": [1]}})


def test_warmup_follows_the_runs_length_in_epochs():
    full = build_config({"method": "bootleg", "model": {"size": "base"}})
    assert (full.optim.epochs, full.optim.warmup_epochs) == (600, 105)
    half = build_config({"method": "bootleg", "model": {"size": "base"}, "optim": {"epochs": 300}})
    assert half.optim.warmup_epochs == pytest.approx(52.5)
    stated = build_config({"method": "bootleg", "optim": {"epochs": 300, "warmup_epochs": 10}})
    assert stated.optim.warmup_epochs == 10


def test_per_method_values_apply_only_to_their_method():
    raw = {"method": "mae", "per_method": {"bootleg": {"optim": {"lr_max": 0.5}}}}
    assert build_config(raw).optim.lr_max == 1.2e-3
    assert build_config({**raw, "method": "bootleg"}).optim.lr_max == 0.5
    with pytest.raises(BootlegError, match="per_method.dino: unknown method"):
        build_config({"per_method": {"dino": {}}})
