"""The paper's experiments as data: ``experiments/*.yaml`` (format: ``experiments/README.md``).

Every file parses; every row resolves through ``build_config`` at micro scale (also through the
root ``params.yaml``, as the ablation flow runs it) and at the paper's scale; and every row's
resolved config differs from the row it builds on exactly as the paper's row says.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bootleg import presets
from bootleg.config import DISCRIMINATORS, Config, build_config, load_config
from bootleg.schema import apply_overrides, flatten, parse_override

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
FILES = [
    "table1-main.yaml",
    "table2-targets.yaml",
    "table3-editions.yaml",
    "table4-ijepa-to-bootleg.yaml",
    "table5-masking.yaml",
    "fig2-target-depth.yaml",
]
#: the `--set` items a laptop run adds last (the paper's scale adds nothing: the files state it)
SCALES: dict[str, list[str]] = {
    "micro": ["model.size=micro", "model.img_size=32", "model.patch_size=4"],
    "paper": [],
}
TOP_KEYS = {"title", "source", "columns", "findings", "base", "bases", "switches", "variants", "references"}
VARIANT_KEYS = {"name", "from", "after", "switch", "overrides", "paper", "note", "plot"}
#: the ablation flow's own check of an override item (flows/params.py)
OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=.*$", re.S)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXPERIMENTS / name).read_text())


DOCS = {name: load(name) for name in FILES}
ROWS = [(f, v["name"]) for f in FILES for v in DOCS[f]["variants"]]
ABLATIONS = [f for f in FILES if f != "table1-main.yaml"]


def variant(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in doc["variants"] if v["name"] == name)


def items(doc: dict[str, Any], v: dict[str, Any]) -> list[str]:
    """What the ablation flow applies for a row, in order: base, the named base, the row."""
    return [*doc.get("base", []), *doc.get("bases", {}).get(v.get("from"), []), *v["overrides"]]


def reference_items(doc: dict[str, Any], v: dict[str, Any]) -> list[str]:
    """What a row builds on: the row named by ``after``, else its base with the row's own
    method and model size (Table 1: a row is its method's preset at its size)."""
    if v.get("after"):
        return items(doc, variant(doc, v["after"]))
    own = [s for s in v["overrides"] if s.split("=", 1)[0] in ("method", "model.size")]
    return [*doc.get("base", []), *doc.get("bases", {}).get(v.get("from"), []), *own]


def resolve(overrides: list[str], params: str | None = None) -> Config:
    if params is not None:
        return load_config(params, overrides)
    return build_config(apply_overrides({}, overrides), "experiment")


def flat(cfg: Config) -> dict[str, Any]:
    return flatten(cfg)


def diff(a: Config, b: Config) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, object()) != fb.get(k, object())}


def touched(overrides: list[str]) -> set[str]:
    """Dotted prefixes an override list may change: a key and everything below it; a whole
    section when its kind changes; the warmup with the epochs (Appendix B's rule)."""
    out: set[str] = set()
    for item in overrides:
        parts, _ = parse_override(item)
        key = ".".join(parts)
        out.add(key)
        for path, field in DISCRIMINATORS.items():
            if tuple(parts) == (*path, field):
                out.add(".".join(path))
        if key == "optim.epochs":
            out.add("optim.warmup_epochs")
    return out


def covered(key: str, prefixes: set[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("name", FILES)
def test_file_follows_the_format(name):
    doc = DOCS[name]
    assert set(doc) <= TOP_KEYS, set(doc) - TOP_KEYS
    assert doc["title"] and doc["variants"] and doc["columns"]
    names = [v["name"] for v in doc["variants"]] + [r["name"] for r in doc.get("references", [])]
    assert len(names) == len(set(names)), "duplicate row names"
    lists = [doc.get("base", []), *doc.get("bases", {}).values()]
    for v in doc["variants"]:
        assert set(v) <= VARIANT_KEYS, (v["name"], set(v) - VARIANT_KEYS)
        assert isinstance(v["overrides"], list)
        lists.append(v["overrides"])
        if v.get("from") is not None:
            assert v["from"] in doc["bases"], (v["name"], v["from"])
        if v.get("after"):
            prev = variant(doc, v["after"])
            assert prev.get("from") == v.get("from")
            assert v["overrides"][: len(prev["overrides"])] == prev["overrides"], f"{v['name']}: not cumulative"
        for key, value in (v.get("paper") or {}).items():
            assert key.removesuffix("_range") in doc["columns"], (v["name"], key)
            values = value if isinstance(value, list) else [value]
            assert all(x is None or 0 <= x <= 100 for x in values), (v["name"], key, value)
    for items_ in lists:
        for item in items_:
            assert isinstance(item, str) and OVERRIDE.match(item), item
            parse_override(item)
    for col in doc["columns"].values():
        assert {"label", "probe", "data"} <= set(col)


def test_every_table_row_has_its_paper_numbers():
    counts = {f: sum("paper" in v for v in DOCS[f]["variants"]) for f in FILES}
    sizes = {f: len(DOCS[f]["variants"]) for f in FILES}
    assert counts == {**sizes, "fig2-target-depth.yaml": 0}  # the figure's values are not in the text
    assert sizes["table1-main.yaml"] == 15 and len(DOCS["table1-main.yaml"]["references"]) == 6
    assert (sizes["table2-targets.yaml"], sizes["table3-editions.yaml"]) == (8, 15)
    assert (sizes["table4-ijepa-to-bootleg.yaml"], sizes["table5-masking.yaml"]) == (18, 8)
    assert all("plot" in v for v in DOCS["fig2-target-depth.yaml"]["variants"])


def test_numbers_the_paper_repeats_agree_across_tables():
    """Bootleg at 300 epochs is a row of Tables 2, 4 and 5; I-JEPA unmodified of Tables 3 and 4."""
    t2 = variant(DOCS["table2-targets.yaml"], "Blocks 1,4,8,12 (spaced), concat")["paper"]
    t5 = variant(DOCS["table5-masking.yaml"], "Multi-block (ours)")["paper"]
    t4 = variant(DOCS["table4-ijepa-to-bootleg.yaml"], "Bootleg (= with all)")["paper"]
    assert {k: t5[k] for k in t2} == t2
    assert t4 == {"attentive": t2["attentive"], "seg_linear": t2["seg_linear"]}
    t3 = variant(DOCS["table3-editions.yaml"], "I-JEPA: unmodified")["paper"]
    t4i = variant(DOCS["table4-ijepa-to-bootleg.yaml"], "I-JEPA (= with none)")["paper"]
    assert t4i == {"attentive": t3["attentive"], "seg_linear": t3["seg_linear"]}


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize("name,row", ROWS)
def test_row_resolves_at_micro_scale_through_params_yaml(name, row):
    doc = DOCS[name]
    cfg = resolve([*items(doc, variant(doc, row)), *SCALES["micro"]], str(ROOT / "params.yaml"))
    assert (cfg.model.size, cfg.model.img_size, cfg.model.patch_size) == ("micro", 32, 4)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name,row", ROWS)
def test_row_differs_from_what_it_builds_on_as_its_row_says(name, row, scale):
    doc = DOCS[name]
    v = variant(doc, row)
    cfg = resolve([*items(doc, v), *SCALES[scale]])
    ref = resolve([*reference_items(doc, v), *SCALES[scale]])
    if scale == "paper" and name != "table1-main.yaml":
        assert (cfg.model.img_size, cfg.model.patch_size, cfg.model.depth) == (224, 16, 12)
    if v.get("after"):
        own = v["overrides"][len(variant(doc, v["after"])["overrides"]) :]
    else:
        own = [s for s in v["overrides"] if s.split("=", 1)[0] not in ("method", "model.size")]
    changed = diff(cfg, ref)
    allowed = touched(own)
    assert all(covered(k, allowed) for k in changed), sorted(k for k in changed if not covered(k, allowed))
    if name in ABLATIONS:
        assert bool(changed) == bool(own), f"{row}: overrides {own} change {sorted(changed)}"


@pytest.mark.parametrize("name", ABLATIONS)
def test_scale_pins_are_no_ops_at_the_papers_scale(name):
    """The files state model.depth and targets.blocks so that block numbers keep their meaning at
    other scales; at ViT-S they must equal the method's own preset."""
    doc = DOCS[name]
    pins = ("model.depth=", "targets.blocks=")
    for key, extra in (doc.get("bases") or {None: []}).items():
        stated = [*doc["base"], *extra]
        plain = [s for s in stated if not s.startswith(pins)]
        assert diff(resolve(stated), resolve(plain)) == set(), key


# ---------------------------------------------------------------- Table 1


@pytest.mark.parametrize("row", [v["name"] for v in DOCS["table1-main.yaml"]["variants"]])
def test_table1_row_is_the_method_preset_at_its_size(row):
    v = variant(DOCS["table1-main.yaml"], row)
    cfg = resolve(items(DOCS["table1-main.yaml"], v))
    epochs = int(re.search(r"\((\d+) ep\)", row).group(1))
    size = {"S": "small", "B": "base", "L": "large"}[row[4]]
    assert (cfg.model.size, cfg.optim.epochs, cfg.model.img_size, cfg.model.patch_size) == (size, epochs, 224, 16)
    method = cfg.method
    preset = build_config({"method": method, "model": {"size": size}})
    changed = diff(cfg, preset)
    if "CrossMAE" in row:
        assert method == "mae" and cfg.model.predictor.kind == "cross" and cfg.model.predictor.depth == 12
        assert cfg.optim.warmup_epochs == 40
        assert {k for k in changed if not k.startswith("model.predictor")} <= {"optim.epochs", "optim.warmup_epochs"}
    else:
        assert changed <= {"optim.epochs", "optim.warmup_epochs"}, changed


# ---------------------------------------------------------------- Table 4

T4 = DOCS["table4-ijepa-to-bootleg.yaml"]
#: what each of Table 4's rows changes at ViT-S (flattened config keys), as the paper names it
SWITCH_FIELDS = {
    "transforms": {"data.hflip", "data.crop_scale", "data.interpolation"},
    "cls_token": {"model.cls_token"},
    "registers": {"model.reg_tokens", "model.predictor.reg_tokens"},
    "predictor": {"model.predictor.depth", "model.predictor.num_heads"},
    # Appendix C.2: the fixed sampler also narrows the block scale and changes the aspect range
    "masking": {"masking.sampler", "masking.block_scale", "masking.block_aspect"},
    "targets": {"targets.blocks", "targets.norm"},
    "loss": {"loss.name", "loss.beta"},
    "hyperparams": {
        *(f"optim.{k}" for k in ("lr_init", "lr_max", "lr_final", "warmup_epochs", "wd_init", "wd_final")),
        *(f"optim.{k}" for k in ("betas", "ema_init", "ema_final")),
        "model.init",
    },
}


def t4_base(which: str) -> list[str]:
    return [*T4["base"], *T4["bases"][which]]


def test_table4_has_a_switch_per_row_and_one_variant_each_way():
    assert list(T4["switches"]) == list(SWITCH_FIELDS)  # the paper's eight ablation rows, in order
    for name, sw in T4["switches"].items():
        with_rows = [v for v in T4["variants"] if v.get("switch") == name and v["from"] == "ijepa"]
        without_rows = [v for v in T4["variants"] if v.get("switch") == name and v["from"] == "bootleg"]
        assert [v["overrides"] for v in with_rows] == [sw["with"]]
        assert [v["overrides"] for v in without_rows] == [sw["without"]]


@pytest.mark.parametrize("switch", SWITCH_FIELDS)
def test_table4_only_with_and_only_without_change_that_switch_alone(switch):
    sw = T4["switches"][switch]
    ijepa, bootleg = resolve(t4_base("ijepa")), resolve(t4_base("bootleg"))
    assert diff(resolve([*t4_base("ijepa"), *sw["with"]]), ijepa) == SWITCH_FIELDS[switch]
    assert diff(resolve([*t4_base("bootleg"), *sw["without"]]), bootleg) == SWITCH_FIELDS[switch]


@pytest.mark.parametrize("scale", SCALES)
def test_table4_all_switches_turn_ijepa_into_bootleg_and_back(scale):
    every_with = [s for sw in T4["switches"].values() for s in sw["with"]]
    every_without = [s for sw in T4["switches"].values() for s in sw["without"]]
    ijepa = resolve([*t4_base("ijepa"), *SCALES[scale]])
    bootleg = resolve([*t4_base("bootleg"), *SCALES[scale]])
    to_bootleg = resolve([*t4_base("ijepa"), *every_with, *SCALES[scale]])
    to_ijepa = resolve([*t4_base("bootleg"), *every_without, *SCALES[scale]])
    # `method` only names the preset the run started from; the predictor switch states ViT-S's
    # predictor shape, which the micro presets (not in the paper) do not share
    shape = {f"model.predictor.{k}" for k in ("depth", "embed_dim", "num_heads")}
    ignore = {"method"} | (shape if scale == "micro" else set())
    assert diff(to_bootleg, bootleg) - ignore == set()
    assert diff(to_ijepa, ijepa) - ignore == set()


def test_table4_bases_are_the_presets_at_300_epochs():
    ijepa = resolve(t4_base("ijepa"))
    assert diff(ijepa, build_config({"method": "ijepa", "optim": {"epochs": 300, "warmup_epochs": 40}})) == set()
    bootleg = resolve(t4_base("bootleg"))
    assert diff(bootleg, build_config({"method": "bootleg", "optim": {"epochs": 300}})) == set()
    assert bootleg.optim.warmup_epochs == 52.5  # Appendix B: 105 of 600 epochs, scaled


# ---------------------------------------------------------------- Tables 3 and 5, Figure 2


def test_table3_rows_are_cumulative_within_each_method():
    doc = DOCS["table3-editions.yaml"]
    for base in doc["bases"]:
        rows = [v for v in doc["variants"] if v["from"] == base]
        assert rows[0].get("after") is None and rows[0]["overrides"] == []
        assert [v.get("after") for v in rows[1:]] == [v["name"] for v in rows[:-1]]
    last = resolve(items(doc, variant(doc, "MAE: +change targets")))
    assert last.targets.kind == "latent" and last.targets.blocks == [1, 4, 8, 12] and last.masking.sampler == "bootleg"


@pytest.mark.parametrize("row", [v["name"] for v in DOCS["table5-masking.yaml"]["variants"]])
def test_table5_rows_change_only_the_masks(row):
    doc = DOCS["table5-masking.yaml"]
    changed = diff(resolve(items(doc, variant(doc, row))), resolve(doc["base"]))
    assert all(k.startswith("masking") or k == "mask_repeats" for k in changed), changed


def test_fig2_sweeps_every_depth_of_each_line():
    rows = DOCS["fig2-target-depth.yaml"]["variants"]
    lines: dict[tuple[str, str], list[int]] = {}
    for v in rows:
        lines.setdefault((v["plot"]["panel"], v["plot"]["line"]), []).append(v["plot"]["x"])
    for (panel, line), xs in lines.items():
        assert xs == sorted(set(xs)), (panel, line)
        assert set(range(1, 12)) <= set(xs), (panel, line)
    assert lines[("Fig. 2 left (ViT-S, I-JEPA)", "blue")] == list(range(13))
    assert lines[("Fig. 2 left (ViT-S, I-JEPA)", "red")] == list(range(1, 12))


# ---------------------------------------------------------------- a method switch gives that method

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("route", ["--set", "params file", "experiment row"])
@pytest.mark.parametrize("size", ["micro", "small", "large"])
@pytest.mark.parametrize("method", presets.METHODS)
def test_method_switch_is_that_methods_preset_plus_only_what_was_asked(method, size, route, tmp_path):
    """Issue 8: `method=ijepa` on the root params.yaml is I-JEPA (its sampler, targets, loss,
    predictor, optimiser, augmentation for the model size), plus only what the file states
    outside `per_method` and what it scopes to that method."""
    sets = [f"method={method}", f"model.size={size}"]
    if route == "--set":
        cfg = load_config(ROOT / "params.yaml", sets)
    elif route == "params file":
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({**PARAMS, "method": method, "model": {**PARAMS["model"], "size": size}}))
        cfg = load_config(path)
    else:
        doc = {"base": [], "variants": [{"name": method, "overrides": sets}]}
        cfg = load_config(ROOT / "params.yaml", items(doc, doc["variants"][0]))
    size_of = {"size": size, "img_size": PARAMS["model"]["img_size"], "patch_size": PARAMS["model"]["patch_size"]}
    preset = build_config({"method": method, "model": size_of})
    stated = {k: v for k, v in PARAMS.items() if k not in ("method", "per_method")}
    allowed = set(flatten(stated)) | set(flatten((PARAMS.get("per_method") or {}).get(method) or {}))
    allowed |= {"optim.warmup_epochs", "model.size"}
    changed = diff(cfg, preset)
    assert changed <= allowed, sorted(changed - allowed)
    for section in (
        "masking",
        "targets",
        "loss",
        "model.predictor",
        "data.crop_scale",
        "data.hflip",
        "data.interpolation",
    ):
        assert all(not covered(k, {section}) for k in changed), section
    if "warmup_epochs" not in ((PARAMS.get("per_method") or {}).get(method) or {}).get("optim", {}):
        scaled = preset.optim.warmup_epochs * cfg.optim.epochs / preset.optim.epochs
        assert cfg.optim.warmup_epochs == pytest.approx(scaled)
